"""The compiled slow path (kernels/slowpath.py): pinned-heavy and swap-heavy address spaces fork exactly as on the
reference, with no table left to the Python host loop; injected forks still go through that loop."""

import numpy as np
import pytest
from conftest import SMALL
from pydantic import TypeAdapter
from strategies import VARIANTS

import gpusim
from gpusim.sweep.spec import Workload
from gpusim.workloads import build_workload

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
]


def compare(space, variant, oracle, backend):
    ref = gpusim.fork(space, variant, backend="reference", oracle=oracle)
    got = gpusim.fork(space, variant, backend=backend, oracle=oracle)
    assert (got.outcome, got.oops, got.enomem) == (ref.outcome, ref.oops, ref.enomem)
    diff = {k: (ref.counts[k], got.counts[k]) for k in ref.counts if ref.counts[k] != got.counts[k]}
    assert not diff, diff
    assert got.child_rss == ref.child_rss and got.digest == ref.digest
    if got.outcome != "oops":
        assert got.invariants.ok, got.invariants.violations
    rows = lambda t: sorted(zip(t.table.tolist(), t.passes.tolist(), map(tuple, t.events.tolist())))  # noqa: E731
    assert rows(got.table_stats) == rows(ref.table_stats)
    return got


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("oracle", ORACLES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_pinned_and_swap_heavy_layouts_equal_the_reference(backend, variant, oracle, layout):
    space = gpusim.parse_layout(layout, variant)
    assert space.nr_ptes <= SMALL  # small enough for cudasim
    got = compare(space, variant, oracle, backend)
    assert got.host_tables == 0


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
    assert got.host_tables == 0


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
        assert (got.host_tables > 0) == python  # linux-5.8 copies nothing early: its tables stay fast
