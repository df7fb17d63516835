"""The compiled slow path (kernels/slowpath/): pinned-heavy and swap-heavy address spaces fork exactly as on the
reference, with no table left to the Python loop; injected forks still go through that loop."""

import numpy as np
import pytest
from budget import budget
from conftest import SMALL
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter
from strategies import VARIANTS

import gpusim
from gpusim.base.backend import kernels
from gpusim.engines import earlycopy
from gpusim.inputs.workloads import build_workload
from gpusim.jobs.sweep.spec import Workload
from gpusim.kernels.args import SlowArrays, memory_arrays
from gpusim.kernels.cpu import number_in_address_order
from gpusim.kernels.fields import MEMORY_FIELDS
from gpusim.kernels.flags import PTRS_PER_TABLE
from gpusim.kernels.slowpath import ST_DUPLICATES, ST_INSTALLS, ST_NEXT_FOLIO
from gpusim.model import decode

W = TypeAdapter(Workload)
ORACLES = ["never", "always", "every:3", "bern:0.3:5"]

# pins at table boundaries, in large folios, on file and shmem pages; swap counts at every continuation level;
# folios and slots referenced from several tables; batches next to pinned folios; anon-exclusive pages mapped twice
LAYOUTS = [
    "normal*511 pinned pinned normal*511",
    "pinned*512 normal*100 pinned*3 none*409",
    "folio16:pin*4 normal*448 folio64:pin:nonex=0,5 normal*448",
    "vma:file file*100 file:pin*5 file*407 vma:shared:shmem shmem:pin*3 shmem*509",
    "swap:cnt=62*8 swap:cnt=8063:lv=1*4 swap:cnt=1032191:lv=2*2 normal*498 swap:cnt=64:lv=1*512",
    "folio32:pin normal*480 folio32:pin normal*480 pinned:ro*16 normal*496",
    "normal:ref=1023*4 normal:ref=1024*4 normal*504 pinned:clean*512",
    "folio8:pin:ro*8 folio8*8 normal*384 pinned:hwpoison normal*511",
    "thp:pin thp normal*100 pinned normal*411 thp:pin:ro thp:pin:nonex",
    "vma:dontcopy thp:pin vma thp:pin normal*512 vma:shared:shmem shmem*512",
    "pinned*100 normal*380 folio64:pin normal*480 pinned*512 folio16:pin*4 normal*448",  # SHARED_FOLIO
]
# a pinned folio across the first two tables: those run in order, the other two in parallel
SHARED_FOLIO = LAYOUTS[-1]


def compare(space, variant, oracle, backend):
    ref = gpusim.fork(space, variant, backend="reference", oracle=oracle)
    got = gpusim.fork(space, variant, backend=backend, oracle=oracle)
    assert (got.outcome, got.oops, got.enomem) == (ref.outcome, ref.oops, ref.enomem)
    diff = {k: (ref.counts[k], got.counts[k]) for k in ref.counts if ref.counts[k] != got.counts[k]}
    assert not diff, diff
    assert got.child_rss == ref.child_rss and got.digest == ref.digest
    if got.outcome != "oops":
        assert ref.invariants.ok, ref.invariants.violations
        assert got.invariants.ok, got.invariants.violations
    rows = lambda t: sorted(zip(t.table.tolist(), t.passes.tolist(), map(tuple, t.events.tolist())))  # noqa: E731
    assert rows(got.table_stats) == rows(ref.table_stats)
    return got


@pytest.mark.cudasim_subset(oracle=("bern:0.3:5",))  # breaks drawn anywhere (the CPU engine takes every oracle)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("oracle", ORACLES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_pinned_and_swap_heavy_layouts_equal_the_reference(backend, variant, oracle, layout):
    space = gpusim.parse_layout(layout, variant)
    assert space.nr_ptes <= SMALL  # small enough for cudasim
    got = compare(space, variant, oracle, backend)
    assert got.python_tables == 0


GENERATED = [
    {"kind": "anon", "size": "8MiB", "pinned_fraction": 0.25, "pinned_placement": "contiguous"},
    {"kind": "anon", "size": "8MiB", "pinned_fraction": 0.1, "pinned_placement": "scattered"},
    {"kind": "anon", "size": "4MiB", "folio_order": 4, "pinned_fraction": 0.3},
    {"kind": "anon", "size": "4MiB", "swap_fraction": 0.5, "swap_count_max": 20000, "pinned_fraction": 0.05},
    {"kind": "anon", "size": "16MiB", "thp_fraction": 0.5, "pinned_fraction": 0.3, "pinned_placement": "contiguous"},
    {
        "kind": "mixed",
        "regions": [
            {"size": "2MiB", "backing": "file", "pinned_fraction": 0.2},
            {"size": "2MiB", "shared": True, "pinned_fraction": 0.2},
            {"size": "4MiB", "fill": 0.3, "vmas": 5, "pinned_fraction": 0.2},
            {"size": "2MiB", "flags": ["dontcopy"], "pinned_fraction": 0.5},
            {"size": "2MiB", "flags": ["wipeonfork"]},
        ],
    },
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("i", range(len(GENERATED)))
def test_generated_pinned_workloads_run_compiled(variant, i):
    """Every table of a generator's workload, pins, large folios, THPs and swap included, runs compiled."""
    space, _, _ = build_workload(W.validate_python(GENERATED[i]), variant, np.random.SeedSequence([3, i]))
    got = compare(space, variant, "every:7", "cpu")
    assert got.python_tables == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_injections_still_take_the_python_host_loop(variant):
    space = gpusim.parse_layout("normal*100 pinned*2 normal*410 normal*512", variant)
    for inject, python in (
        (["fail@copy#1"], variant != "linux-5.8"),
        (["@EC#1: zap(100)"], True),
        (["fail@ptetable#1@512"], True),
    ):
        ref = gpusim.fork(space, variant, backend="reference", inject=inject)
        got = gpusim.fork(space, variant, backend="cpu", inject=inject)
        assert got.digest == ref.digest and got.counts == ref.counts and got.outcome == ref.outcome
        assert (got.python_tables > 0) == python  # linux-5.8 copies nothing early: its tables stay fast


def test_items_that_share_a_folio_run_in_order_the_others_in_parallel(backend, monkeypatch):
    plans = []

    def spy(*args):
        plans.append(real(*args))
        return plans[-1]

    module = kernels(backend)
    real = module.slow_plan
    monkeypatch.setattr(module, "slow_plan", spy)
    space = gpusim.parse_layout(SHARED_FOLIO, "linux-5.10")
    compare(space, "linux-5.10", "every:3", backend)
    (bounds, dependent), *_ = plans
    assert dependent.tolist() == [True, True, False, False]
    assert bounds.tolist() == [100 + 32, 32, 512, 64]


@budget(60)
@given(
    items=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)), max_size=8),
    form=st.sampled_from(["compiled", "arrays"]),
)
def test_new_rows_are_numbered_in_address_order(items, form):
    """Items allocate from segments of their bounds; closing them up numbers the rows as one walk in address
    order would have, and the child entries and logs follow: the CPU's pass, and its array form (what a fork of
    device-resident state runs, with CuPy)."""
    used = np.array([u for u, _, _ in items], np.int64)
    bounds = used + np.array([b for _, b, _ in items], np.int64)
    installed = np.minimum(used, np.array([k for _, _, k in items], np.int64))
    nf, npg, n = 3, 5, len(items)
    seg, states = earlycopy.item_states(bounds, nf, npg)
    room = int(bounds.sum())
    arrays = {f: np.zeros((npg if f.startswith("page_") else nf) + room, dt) for f, (dt, _) in MEMORY_FIELDS.items()}
    mem = memory_arrays(arrays)
    logs = (np.zeros((room, 4), np.int64), np.zeros((room, 2), np.int64))
    sp = SlowArrays(arrays["page_content"], arrays["folio_pmd_mapcount"], states, *logs, np.zeros((n, 4), np.int64))
    cpte, hcpte = np.zeros((n, PTRS_PER_TABLE), np.uint64), np.zeros((n, PTRS_PER_TABLE), np.uint64)
    order = np.array([i if i % 2 == 0 else -i - 1 for i in range(n)], np.int64)  # odd items: THPs (their tables)
    table = lambda i: cpte[i] if order[i] >= 0 else hcpte[-order[i] - 1]  # noqa: E731
    for i in range(n):  # what item i's run leaves: its used rows marked (i, k), the first ones installed at k
        for k in range(used[i]):
            f, p = nf + seg[i] + k, npg + seg[i] + k
            mem.folio_first_pfn[f], mem.page_folio[p] = p, f
            mem.folio_refcount[f], sp.page_content[p] = 100 * i + k, 100 * i + k
            sp.duplicates[seg[i] + k] = (p, 1)
            if k < installed[i]:
                sp.installs[seg[i] + k] = (i * PTRS_PER_TABLE + k, p, 1, 0)
                table(i)[k] = decode.with_offsets(np.uint64(1), p)
        states[i, ST_NEXT_FOLIO] += used[i]
        states[i, ST_INSTALLS] += installed[i]
        states[i, ST_DUPLICATES] += used[i]
    if form == "compiled":
        total, ni, nd = number_in_address_order(nf, npg, seg, order, mem, sp, cpte, hcpte)
    else:
        total, ni, nd = earlycopy.number_in_address_order(nf, npg, seg, order, mem, sp, cpte, hcpte, np)
    walk = [100 * i + k for i in range(n) for k in range(used[i])]  # one walk in address order
    assert total == len(walk) == nd
    assert mem.folio_refcount[nf : nf + total].tolist() == walk == sp.page_content[npg : npg + total].tolist()
    assert mem.page_folio[npg : npg + total].tolist() == list(range(nf, nf + total))
    assert mem.folio_first_pfn[nf : nf + total].tolist() == list(range(npg, npg + total))
    assert sp.duplicates[:nd, 0].tolist() == list(range(npg, npg + total))
    first = np.cumsum(used) - used
    expect = [(i * PTRS_PER_TABLE + k, npg + first[i] + k) for i in range(n) for k in range(installed[i])]
    assert list(map(tuple, sp.installs[:ni, :2].tolist())) == expect
    for a, p in expect:
        assert decode.offsets(table(a // PTRS_PER_TABLE)[a % PTRS_PER_TABLE]) == p
