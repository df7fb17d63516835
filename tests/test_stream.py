"""Streamed forks (issue 12, item 6): a generated space forked chunk by chunk gives what the whole fork gives.

The generator's chunks concatenate to the whole space whatever their size; a streamed fork's counts, rss, modelled
latency (with the longest lock hold), outcome, invariants and digest equal the whole fork's, for every variant,
with pins (scattered and in runs), swap counts past SWAP_MAP_MAX, THPs, large folios, file and shmem VMAs and
VM_DONTCOPY; the digest is chunk-independent and changes with any field; a streamed fork's peak memory does not
grow with the space; what cannot be streamed is refused with one line.
"""

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from budget import budget
from hypothesis import given
from hypothesis import strategies as st
from sweeps import run_sweep, write

import gpusim
from gpusim import stream as streaming
from gpusim.analysis.costmodel import latency, load_profile
from gpusim.base.machine import NotEnoughMemory
from gpusim.inputs.regions import RegionSpace
from gpusim.jobs.sweep.spec import Workload
from gpusim.model.state import AddressSpace, DigestSums, digest
from gpusim.model.variants import EAGER_VARIANTS as VARIANTS
from gpusim.stream import fork_streamed, stream_rows

PROFILE = load_profile(None)
BASE = dict(
    size=3 << 20,
    vmas=2,
    backing="anon",
    shared=False,
    flags=[],
    folio_order=0,
    thp_fraction=0.2,
    fill=0.7,
    swap_fraction=0.1,
    swap_count_max=200,
    pinned_fraction=0.25,
    pinned_placement="scattered",
    pinned_regions=1,
)
# every kind of region the generator makes: anon with THPs, large folios with pinned runs and swap counts kept in
# continuation pages, private file, shared shmem, a VM_DONTCOPY and a VM_WIPEONFORK region, and swap counts at
# SWAP_MAP_MAX (the fork's dup needs a continuation)
REGIONS = [
    BASE,
    dict(BASE, folio_order=2, pinned_placement="contiguous", pinned_regions=3, swap_count_max=70000, thp_fraction=0),
    dict(BASE, backing="file", thp_fraction=0, swap_fraction=0),
    dict(BASE, backing="shmem", shared=True, thp_fraction=0, swap_fraction=0),
    dict(BASE, flags=["dontcopy"], size=1 << 20),
    dict(BASE, flags=["wipeonfork"], size=1 << 20, fill=0.3),
    dict(BASE, size=4 << 20, fill=1.0, thp_fraction=0, swap_fraction=0.5, swap_count_max=62),  # 62: at the cap
    dict(BASE, size=2 << 20, folio_order=1, frame_order="random"),  # scattered frames
    dict(BASE, size=2 << 20, frame_order="runs:5"),
]


def summary(r, variant):
    lat = latency(r.counts, variant, PROFILE, r.table_stats)
    return {
        "outcome": r.outcome,
        "oops": r.oops,
        "counts": r.counts,
        "child_rss": r.child_rss,
        "latency": lat,
        "invariants": (r.invariants.ok, r.invariants.checked),
        "nr_ptes": r.nr_ptes,
        "digest": r.digest,
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_streamed_fork_equals_the_whole_fork(variant):
    space = RegionSpace(REGIONS, variant, 11)
    whole = summary(gpusim.fork(space.whole(), variant, backend="cpu"), variant)
    assert whole["counts"]["installs"] or variant == "linux-5.8"  # early copies happen
    assert whole["counts"]["swapcont_kernel"] + whole["counts"]["swapcont_atomic"] or whole["outcome"] == "oops"
    for rows in (1, 3, 7, space.nr_rows):
        streamed = fork_streamed(space, variant, "cpu", chunk_rows=rows)
        assert streamed.chunks == (-(-space.nr_rows // rows) if whole["outcome"] == "ok" else streamed.chunks)
        assert summary(streamed, variant) == whole, rows


@pytest.mark.parametrize("variant", VARIANTS)
def test_without_the_check_chunks_fork_in_place_and_give_the_same_result(variant):
    """Without the invariant check a chunk's compiled fork writes the chunk's own arrays (handed over, not copied):
    the same counts, rss, outcome and digest as the whole fork."""
    space = RegionSpace(REGIONS, variant, 11)
    whole = summary(gpusim.fork(space.whole(), variant, backend="cpu", check=False), variant)
    assert summary(fork_streamed(space, variant, "cpu", check=False, chunk_rows=3), variant) == whole


def writeable_copy(state):
    """An MM or Memory with copies of its arrays (writeable)."""
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return dataclasses.replace(state, **{k: v.copy() for k, v in fields.items() if isinstance(v, np.ndarray)})


def test_a_space_handed_over_is_forked_in_place_once_and_only_without_the_check():
    rs = RegionSpace(REGIONS, "linux-6.18", 3)
    built = rs.whole()
    copy_fork = gpusim.fork(built, "linux-6.18", backend="cpu", check=False)
    given = lambda: AddressSpace.handed_over(*(writeable_copy(x) for x in (built.mm, built.memory)))  # noqa: E731

    checked = given()
    before = [a.copy() for a in checked.arrays()]
    r = gpusim.fork(checked, "linux-6.18", backend="cpu", check=True)
    assert r.invariants.ok and r.digest == copy_fork.digest
    assert all(np.array_equal(a, b) for a, b in zip(checked.arrays(), before))  # the check needs the input as it was

    space = given()
    r = gpusim.fork(space, "linux-6.18", backend="cpu", check=False)
    assert r.digest == copy_fork.digest
    assert r.parent.mm.pte is space.mm.pte  # the parent's final tables are the input's arrays, written in place
    assert not np.array_equal(space.mm.pte, built.mm.pte)
    parent = space.mm.pte.copy()
    again = gpusim.fork(space, "linux-6.18", backend="cpu", check=False)  # an ordinary space now: validated, copied
    assert np.array_equal(space.mm.pte, parent) and not space.mm.pte.flags.writeable
    assert again.digest != r.digest


def test_an_oops_stops_the_stream_where_it_stops_the_whole_fork():
    """xu-v1 oopses on a stale BREAK_COW (a pinned page where its copy is installed past the range): the chunks
    after the one that oopses are hashed unforked, as the whole fork leaves those tables."""
    regions = [
        dict(BASE, size=2 << 20, pinned_fraction=0, thp_fraction=0),
        dict(BASE, size=8 << 20, vmas=1, thp_fraction=0.5, pinned_fraction=0.5),
        dict(BASE, size=2 << 20, pinned_fraction=0, thp_fraction=0),  # after the oops: not forked
    ]
    space = RegionSpace(regions, "xu-v1", 1)
    whole = gpusim.fork(space.whole(), "xu-v1", backend="cpu")
    assert whole.outcome == "oops"
    streamed = fork_streamed(space, "xu-v1", "cpu", chunk_rows=1)
    assert summary(streamed, "xu-v1") == summary(whole, "xu-v1")
    assert streamed.chunks < space.nr_rows


def test_the_reference_engine_streams_too():
    space = RegionSpace([dict(BASE, size=1 << 20)], "linux-6.18", 4)
    whole = gpusim.fork(space.whole(), "linux-6.18", backend="reference")
    assert summary(fork_streamed(space, "linux-6.18", "reference", chunk_rows=2), "linux-6.18") == summary(
        whole, "linux-6.18"
    )


region_st = st.fixed_dictionaries(
    dict(
        BASE,
        size=st.integers(1, 3 << 20).map(lambda b: b - b % 4096 or 4096),
        vmas=st.integers(1, 3),
        backing=st.sampled_from(["anon", "file", "shmem"]),
        shared=st.booleans(),
        folio_order=st.sampled_from([0, 1, 4, 9]),
        thp_fraction=st.sampled_from([0.0, 0.5, 1.0]),
        fill=st.sampled_from([0.01, 0.5, 1.0]),
        swap_fraction=st.sampled_from([0.0, 0.3]),
        swap_count_max=st.sampled_from([1, 127, 70000]),
        pinned_fraction=st.sampled_from([0.0, 0.01, 0.5]),
        pinned_placement=st.sampled_from(["scattered", "contiguous"]),
        pinned_regions=st.integers(1, 4),
        flags=st.sampled_from([[], ["dontcopy"], ["wipeonfork"], ["ro"]]),
        frame_order=st.sampled_from(["address", "random", "runs:3"]),
    )
)


@budget(25)
@given(
    regions=st.lists(region_st, min_size=1, max_size=3),
    variant=st.sampled_from(list(VARIANTS)),
    seed=st.integers(0, 1000),
    rows=st.integers(1, 9),
)
def test_random_generated_spaces_stream_as_they_fork_whole(regions, variant, seed, rows):
    space = RegionSpace(regions, variant, seed)
    whole = space.whole().validate()
    chunks = list(space.chunks(rows))
    for ch in chunks:  # every chunk is a valid space, and the chunks are the whole space's rows
        ch.space.validate()
    cat = lambda get: np.concatenate([get(c) for c in chunks])  # noqa: E731
    assert np.array_equal(cat(lambda c: c.space.mm.table_index), whole.mm.table_index)
    assert np.array_equal(cat(lambda c: c.space.mm.pmd_index), whole.mm.pmd_index)
    assert np.array_equal(cat(lambda c: c.space.memory.folio_first_pfn + c.page_base), whole.memory.folio_first_pfn)
    assert np.array_equal(cat(lambda c: c.space.memory.page_folio + c.folio_base), whole.memory.page_folio)
    for name in ("folio_refcount", "folio_pincount", "page_flags", "page_content", "swap_count", "swap_content"):
        parts = [getattr(c.space.memory, name) for c in chunks]
        assert np.array_equal(np.concatenate(parts), getattr(whole.memory, name)), name
    assert sum(c.space.mm.rss for c in chunks).tolist() == whole.mm.rss.tolist()
    streamed = fork_streamed(space, variant, "cpu", chunk_rows=rows, validate=True)
    assert summary(streamed, variant) == summary(gpusim.fork(whole, variant, backend="cpu"), variant)


def test_digest_sums_do_not_depend_on_pieces_and_see_every_element():
    rng = np.random.default_rng(0)
    space = RegionSpace([BASE], "linux-6.18", 1).whole()
    r = gpusim.fork(space, "linux-6.18", backend="cpu")
    d = DigestSums()
    d.add_mm("parent", r.parent.mm)
    d.add_mm("child", r.child)
    for name in ("folio_refcount", "page_content"):
        a = getattr(r.memory, name)
        cut = int(rng.integers(1, a.shape[0]))
        d.add(f"memory.{name}", a[cut:], cut)  # in two pieces, out of order
        d.add(f"memory.{name}", a[:cut], 0)
    for name in ("folio_order", "folio_pincount", "folio_true_pins", "folio_pmd_mapcount", "folio_flags"):
        d.add(f"memory.{name}", getattr(r.memory, name))
    for name in ("folio_first_pfn", "page_folio", "page_mapcount", "page_flags", "swap_count", "swap_levels"):
        d.add(f"memory.{name}", getattr(r.memory, name))
    d.add("memory.swap_content", r.memory.swap_content)
    d.scalars["memory.next_content"] = r.memory.next_content
    assert d.hexdigest() == r.digest == digest(r.parent.mm, r.child, r.memory)
    # one element of any array changes the digest
    for name in ("pte", "table_index", "rss"):
        a = getattr(r.child, name).copy()
        a.reshape(-1)[int(rng.integers(0, a.size))] += 1
        child = type(r.child)(**{**r.child.__dict__, name: a})
        assert digest(r.parent.mm, child, r.memory) != r.digest, name
    for name in ("page_mapcount", "swap_count", "folio_refcount"):
        a = getattr(r.memory, name).copy()
        a[int(rng.integers(0, a.shape[0]))] += 1
        memory = type(r.memory)(**{**r.memory.__dict__, name: a})
        assert digest(r.parent.mm, r.child, memory) != r.digest, name


def test_peak_memory_of_a_streamed_fork_does_not_grow_with_the_space():
    """The same chunk size, spaces of 1 and 8 GiB: the 8 GiB fork holds no more than the 1 GiB one but for the
    plan (about a hundred bytes a table); forked whole, its state alone would be ~90 MiB more."""
    script = textwrap.dedent(
        """
        import resource, sys
        from gpusim.inputs.regions import RegionSpace
        from gpusim.stream import fork_streamed
        r = dict(size=int(sys.argv[1]), vmas=1, backing="anon", shared=False, flags=[], folio_order=0,
                 thp_fraction=0.0, fill=1.0, swap_fraction=0.0, swap_count_max=1, pinned_fraction=0.05,
                 pinned_placement="scattered", pinned_regions=1)
        res = fork_streamed(RegionSpace([r], "linux-6.18", 0), "linux-6.18", "cpu", chunk_rows=256)
        assert res.invariants.ok and res.chunks == int(sys.argv[1]) // (256 << 21)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    peak = {}
    for gib in (1, 8):
        out = subprocess.run([sys.executable, "-c", script, str(gib << 30)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        peak[gib] = int(out.stdout.split()[-1]) << 10
    assert peak[8] - peak[1] < 24 << 20, peak


def test_what_streams_and_what_is_refused(monkeypatch):
    monkeypatch.setattr("gpusim.base.machine.mem_available_bytes", lambda: 8 << 30)
    from pydantic import TypeAdapter

    def w(size):
        return TypeAdapter(Workload).validate_python({"kind": "anon", "size": size})

    assert stream_rows(w("64MiB"), "x") is None  # small: whole
    assert stream_rows(w("4TiB"), "x") == streaming.default_chunk_rows()
    for kw, why in (
        (dict(oracle="every:3"), "lock-break oracle"),
        (dict(inject=["window:pte_alloc"]), "injections"),
        (dict(chained=True), "chain"),
    ):
        with pytest.raises(NotEnoughMemory, match=f"not streamed: .*{why}"):
            stream_rows(w("4TiB"), "x", **kw)
    # a mid-size space that fits whole runs whole with an oracle, streamed without one
    assert stream_rows(w("64GiB"), "x", oracle="every:3") is None
    assert stream_rows(w("64GiB"), "x") is not None


def cli(*args):
    return subprocess.run([sys.executable, "-m", "gpusim.cli", *args], capture_output=True, text=True, timeout=300)


def test_the_cli_streams_a_workload_and_prints_what_the_whole_fork_prints():
    whole = cli("fork", "--workload", "anon", "--set", "size=8MiB", "--set", "pinned_fraction=0.1", "--json")
    streamed = cli(
        "fork", "--workload", "anon", "--set", "size=8MiB", "--set", "pinned_fraction=0.1", "--json",
        "--stream-tables", "3",
    )  # fmt: skip
    assert whole.returncode == streamed.returncode == 0, streamed.stderr
    a, b = json.loads(whole.stdout), json.loads(streamed.stdout)
    assert b["chunks"] == 2 and "chunks" not in a  # 4 tables, 3 a chunk
    for key in ("counts", "child_rss", "digest", "latency_ns", "lock_hold_max_ns", "invariants", "nr_ptes"):
        assert a[key] == b[key], key


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--layout", "normal*3", "--stream-tables", "2"], "--stream-tables goes with --workload"),
        (
            ["--workload", "anon", "--set", "size=4MiB", "--stream-tables", "2", "--oracle", "every:2"],
            "cannot be streamed: the lock-break oracle",
        ),
        (["--workload", "anon", "--set", "size=8TiB", "--oracle", "every:2"], "not streamed: the lock-break oracle"),
    ],
)
def test_the_cli_refuses_what_cannot_stream_with_one_line(args, needle):
    p = cli("fork", *args)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_a_sweep_streams_a_point_larger_than_a_chunk_and_its_row_is_the_whole_forks(tmp_path, monkeypatch):
    text = textwrap.dedent(
        """\
        name: s
        seed: 3
        backend: cpu
        workload:
          kind: anon
          size: 4MiB
          pinned_fraction: 0.1
          swap_fraction: 0.2
        fork:
          variant: linux-6.18
        """
    )
    from gpusim.jobs.sweep.point import run_point
    from gpusim.jobs.sweep.spec import load_sweep

    _, points = load_sweep(str(write(tmp_path, text)), text)
    whole = run_point(points[0], 0)[0]
    monkeypatch.setattr(streaming, "STREAM_ABOVE_BYTES", 64 << 10)  # streamed, in chunks of a few tables
    monkeypatch.setattr(streaming, "CHUNK_STATE_BYTES", 64 << 10)
    streamed = run_point(points[0], 0)[0]
    assert streamed["error"] is None and streamed["outcome"] == "ok"
    for key in whole:
        if not key.endswith(("wall_s", "ptes_per_s", "bytes_per_pte")):
            assert streamed[key] == whole[key], key
    # a chain of forks of a space that does not fit is refused up front
    big = text.replace("size: 4MiB", "size: 8TiB").replace("variant: linux-6.18", "variant: linux-6.18\n  chain: 2")
    p = run_sweep(write(tmp_path, big), "--out", tmp_path / "out")
    assert p.returncode == 2 and "not streamed: each fork of a chain" in p.stderr and "Traceback" not in p.stderr


def test_a_streamed_fork_shows_a_progress_bar_on_a_terminal_only():
    """In a process of its own: rich's live display and pytest's captured streams do not mix."""
    script = textwrap.dedent(
        """
        import sys
        from gpusim.cli import fork as cli
        from gpusim.inputs.regions import RegionSpace
        from gpusim.stream import fork_streamed
        r = dict(size=4 << 20, vmas=1, backing="anon", shared=False, flags=[], folio_order=0, thp_fraction=0.0,
                 fill=1.0, swap_fraction=0.0, swap_count_max=1, pinned_fraction=0.1, pinned_placement="scattered",
                 pinned_regions=1)
        space = RegionSpace([r], "linux-6.18", 0)
        with cli.chunk_progress(space.nr_rows, tty=False) as progress:
            assert progress is None  # a pipe or a file: no bar
        seen = []
        with cli.chunk_progress(space.nr_rows, tty=True) as progress:
            both = lambda done, total: (seen.append(done), progress(done, total))
            res = fork_streamed(space, "linux-6.18", "cpu", chunk_rows=1, progress=both)
        assert seen == list(range(1, space.nr_rows + 1)) and res.chunks == space.nr_rows, seen
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "fork, in chunks" in out.stderr and "tables" in out.stderr


# regions the lazy designs share or defer (no swap entries: odf-paper rejects them in a shared table; no pinned THP:
# async-fork's fast fork leaves it to the reference), beside regions they copy
LAZY_REGIONS = [
    dict(BASE, size=4 << 20, vmas=1, swap_fraction=0, thp_fraction=0),
    dict(BASE, size=4 << 20, vmas=1, swap_fraction=0, pinned_fraction=0, thp_fraction=0.3),
    dict(BASE, backing="file", thp_fraction=0, swap_fraction=0),
    dict(BASE, backing="shmem", shared=True, thp_fraction=0, swap_fraction=0),
    dict(BASE, flags=["dontcopy"], size=1 << 20, swap_fraction=0),
]


@pytest.mark.parametrize("variant", ["odf-paper", "odf-cowpte", "async-fork"])
def test_streamed_lazy_fork_equals_the_whole_fork(variant):
    """The lazy designs' fork streamed: the same counts, rss and digest (table objects included) as the whole fork,
    on the CPU engine and on the reference."""
    space = RegionSpace(LAZY_REGIONS, variant, 5)
    whole = summary(gpusim.fork(space.whole(), variant, backend="cpu"), variant)
    assert whole["counts"]["table.share"] + whole["counts"]["async.defer"] > 0 and whole["invariants"] == (True, True)
    assert summary(gpusim.fork(space.whole(), variant, backend="reference"), variant)["digest"] == whole["digest"]
    for rows in (1, 5, space.nr_rows):
        assert summary(fork_streamed(space, variant, "cpu", chunk_rows=rows), variant) == whole, rows
    streamed = fork_streamed(space, variant, "cpu", check=False, chunk_rows=4)
    assert summary(streamed, variant)["digest"] == whole["digest"]
    assert streamed.page_table_bytes() == gpusim.fork(space.whole(), variant).page_table_bytes()
