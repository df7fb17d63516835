"""Physical page order (issue 26): frames renumbered in a chosen or a real order, and the ``pte.frame_break`` event
every engine counts (spec section 8). The engines' equality on scattered frames is in the differential tests
(``test_engines.py`` draws frame orders); here: what the orders make, and that the count means what it says."""

import numpy as np
import pytest

import gpusim
from gpusim.inputs.regions import RegionSpace
from gpusim.jobs.sweep.spec import Region
from gpusim.kernels.flags import FOLIO_FREED, FRAME_NEAR
from gpusim.kernels.rules import call_frame_breaks
from gpusim.model.decode import maps_frame, offsets
from gpusim.model.frames import free_frames_between, parse_frame_order, place_by_frames, with_frame_order

DENSE = "normal*2048"
HASH_BEFORE_FRAME_ORDER = "80432696caed7910"  # sweep_hash of the sweep of the last test, at commit 4fa150e


def frame_breaks(space) -> int:
    """The ``pte.frame_break`` count of a walk of each of the parent's tables as one call over all its columns,
    counted with numpy apart from the engines' rule: what a fork counts when no VMA boundary splits a table."""
    n = 0
    for v in space.mm.pte:
        pfn = offsets(v[maps_frame(v)])
        brk = np.concatenate([[False], np.abs(pfn[1:] - pfn[:-1] - 1) >= FRAME_NEAR])
        n += int((brk | np.concatenate([[False], brk[:-1]])).sum())  # a break, or the page after one
    return n


def dense(variant="linux-6.18"):
    return gpusim.parse_layout(DENSE, variant)


def breaks(space, backend="cpu", variant="linux-6.18"):
    return gpusim.fork(space, variant, backend=backend).counts["pte.frame_break"]


@pytest.mark.parametrize("how,lo,hi", [("address", 0, 0), ("random", 0.95, 1.0), ("runs:8", 0.18, 0.3)])
def test_a_frame_order_scatters_as_it_says(how, lo, hi):
    space = with_frame_order(dense(), how, seed=5).validate()
    n = breaks(space)
    assert n == frame_breaks(space) == breaks(space, "reference")
    assert lo * 2044 <= n <= hi * 2044, n  # 4 tables of 511 counted entries


def test_the_count_follows_the_rule_entry_by_entry():
    """A page breaks the stream when its frame does not follow the frame of the call's previous page; the event is
    a page that breaks it or comes right after one that did. Entries without a page (none, swap, the zero page) in
    between do not break the run; the call's first page never breaks; a large folio's pages follow each other."""
    space = gpusim.parse_layout("normal*4 none normal*3 swap normal zero normal folio4 normal*490", "linux-6.18")
    assert breaks(space) == breaks(space, "reference") == frame_breaks(space) == 0
    size = 1 << space.memory.folio_order.astype(np.int64)
    real = 10_000 + np.cumsum(size) - size  # each folio's frames right after the one before
    assert breaks(place_by_frames(space, real)) == 0
    real[[2, 7]] = [50, 20_000]  # folios 2 and 7 elsewhere: each breaks, the next breaks, the one after follows
    placed = place_by_frames(space, real)
    assert breaks(placed) == breaks(placed, "reference") == frame_breaks(placed) == 6
    row = placed.mm.pte[0].tolist()
    assert call_frame_breaks(row, 0, 512) == 6 and call_frame_breaks(row, 3, 512) == 3  # from entry 3: folio 7's


def test_frames_in_real_order_keep_the_free_frames_between_them_up_to_frame_near():
    space = gpusim.parse_layout("normal*6", "linux-6.18")
    # real frames: 100, 101, 50, 51, 52, 104 (address order) -> sorted 50 51 52 | 100 101 | 104
    placed = place_by_frames(space, [100, 101, 50, 51, 52, 104]).validate()
    m = placed.memory
    assert m.nr_folios == 6 + FRAME_NEAR + 2 and m.nr_pages == m.nr_folios  # 47 free frames kept as 8, then 2
    assert free_frames_between([100, 101, 50, 51, 52, 104, 0]) == FRAME_NEAR + 2  # the estimate before building
    freed = np.flatnonzero(m.folio_flags & FOLIO_FREED)
    assert not m.folio_refcount[freed].any() and not m.page_mapcount[m.folio_first_pfn[freed]].any()
    pfns = [int(v) >> 12 & ((1 << 40) - 1) for v in placed.mm.pte[0][:6]]
    assert pfns == [11, 12, 0, 1, 2, 15]  # 50 51 52 at 0-2, 8 free, 100 101 at 11-12, 2 free, 104 at 15
    # the real sequence breaks at 50 (far from 102), 51 comes right after, and 104 (far from 53) breaks
    assert breaks(placed) == breaks(placed, "reference") == frame_breaks(placed) == 3
    near = place_by_frames(space, [100, 101, 102, 104, 105, 103])  # jumps of 2 and 3 frames: near, no break
    assert breaks(near) == breaks(near, "reference") == 0
    r = gpusim.fork(placed, "linux-6.18", backend="cpu")
    assert r.invariants.ok and r.digest == gpusim.fork(placed, "linux-6.18", backend="reference").digest


def test_frames_adjacent_in_real_memory_stay_adjacent():
    space = gpusim.parse_layout("normal*512", "linux-6.18")
    assert breaks(place_by_frames(space, np.arange(1000, 1512))) == 0
    assert place_by_frames(space, np.arange(1000, 1512)).memory.nr_pages == 512


def test_a_generated_region_takes_a_frame_order_and_a_chunk_renumbers_as_the_whole():
    region = Region(size=8 << 20, frame_order="random").model_dump()
    space = RegionSpace([region], "linux-6.18", 3)
    whole = space.whole().validate()
    assert frame_breaks(whole) > 0.9 * 4 * 511
    for c in space.chunks(1):
        lo, hi = c.page_base, c.page_base + c.space.memory.nr_pages
        assert np.array_equal(c.space.memory.page_content, whole.memory.page_content[lo:hi])
    assert frame_breaks(RegionSpace([dict(region, frame_order="address")], "linux-6.18", 3).whole()) == 0


@pytest.mark.parametrize("bad", ["", "shuffled", "runs:0", "runs:x", "runs:-2"])
def test_a_frame_order_that_is_not_one_is_refused(bad):
    with pytest.raises(ValueError, match="not a frame order"):
        parse_frame_order(bad)
    with pytest.raises(ValueError, match="frame_order"):
        Region(size=1 << 20, frame_order=bad)


def _snapshot_table(pfn):
    import json

    import pyarrow as pa

    n = len(pfn)
    cols = {
        "addr": pa.array(range(1024, 1024 + n), pa.int64()),
        "vma": pa.array([0] * n, pa.int32()),
        "present": pa.array([True] * n),
        "swapped": pa.array([False] * n),
        "pfn": pa.array(pfn, pa.int64()),
        "mapcount": pa.array([1] * n, pa.int64()),
        "anon": pa.array([True] * n),
        "thp": pa.array([False] * n),
        "exclusive": pa.array([True] * n),
    }
    vmas = json.dumps([{"start": 1024, "end": 1536, "perms": "rw-p", "backing": "anon"}])
    return pa.table(cols).replace_schema_metadata({b"gpusim.vmas": vmas.encode(), b"gpusim.capture": b"{}"})


def test_a_snapshot_keeps_the_captured_frames_order():
    from gpusim.inputs.snapshot import frames_known, snapshot_space

    rng = np.random.default_rng(2)
    real = np.concatenate([np.arange(5000, 5100), rng.permutation(np.arange(9000, 9300)), np.arange(7000, 7100)])
    brk = np.abs(np.diff(real) - 1) >= 8  # the real sequence's breaks (the call's first page never breaks)
    want = int((brk | np.concatenate([[False], brk[:-1]])).sum())  # a break, or the page right after one
    t = _snapshot_table(real.tolist())
    assert frames_known(t)
    space = snapshot_space(t, "linux-6.18")
    assert breaks(space) == breaks(space, "reference") == want > 250
    unread = _snapshot_table([0] * 500)  # a capture without root: address order
    assert not frames_known(unread) and breaks(snapshot_space(unread, "linux-6.18")) == 0


def test_frame_order_at_its_default_leaves_a_sweep_and_its_points_as_they_were():
    """A sweep written before frame_order existed keeps its identity (its results directory resumes) and its points
    their rows; another order is another point."""
    from gpusim.jobs.sweep.spec import config_hash, load_sweep, sweep_hash

    text = "name: t\nworkload: {kind: anon, size: 4MiB}\n"
    spec, points = load_sweep("t.yaml", text)
    spec2, points2 = load_sweep("t.yaml", text.replace("4MiB}", "4MiB, frame_order: address}"))
    assert sweep_hash(spec) == sweep_hash(spec2) and config_hash(points[0].config) == config_hash(points2[0].config)
    # the hash of this sweep before the key existed (commit 4fa150e)
    assert sweep_hash(spec) == HASH_BEFORE_FRAME_ORDER
    spec3, points3 = load_sweep("t.yaml", text.replace("4MiB}", "4MiB, frame_order: random}"))
    assert sweep_hash(spec3) != sweep_hash(spec) and config_hash(points3[0].config) != config_hash(points[0].config)
