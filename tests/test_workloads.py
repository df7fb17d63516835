"""Workload generators: seeded and deterministic, valid states, and the fractions and counts asked for."""

import numpy as np
import pytest
from pydantic import TypeAdapter

import gpusim
from gpusim.inputs.workloads import build_workload
from gpusim.jobs.sweep.spec import Workload
from gpusim.kernels import pte as P
from gpusim.kernels.flags import PIN_BIAS, VM_DONTCOPY, VM_SHARED
from gpusim.model.decode import kinds as pte_kinds
from gpusim.model.state import digest
from gpusim.model.variants import EAGER_VARIANTS

W = TypeAdapter(Workload)


def build(variant="linux-6.18", seed=0, **keys):
    space, _, _ = build_workload(W.validate_python({"kind": "anon", **keys}), variant, seed)
    space.validate()
    return space


def state_digest(space):
    return digest(space.mm, space.mm, space.memory)


def test_same_seed_same_arrays_other_seed_other_arrays():
    keys = dict(size="64MiB", fill=0.7, pinned_fraction=0.05, swap_fraction=0.1, swap_count_max=100, thp_fraction=0.3)
    assert state_digest(build(seed=5, **keys)) == state_digest(build(seed=5, **keys))
    assert state_digest(build(seed=5, **keys)) != state_digest(build(seed=6, **keys))


def test_dense_anon_matches_the_benchmark_workload():
    from gpusim.inputs.workloads import dense_anon

    a, b = build(size="8MiB"), dense_anon(2048)
    assert np.array_equal(a.mm.pte, b.mm.pte) and np.array_equal(a.memory.folio_refcount, b.memory.folio_refcount)


@pytest.mark.parametrize("placement", ["scattered", "contiguous"])
def test_pinned_fraction_and_placement(placement):
    s = build(size="64MiB", pinned_fraction=0.1, pinned_placement=placement, pinned_regions=3)
    pinned = np.flatnonzero(s.memory.folio_true_pins > 0)
    assert len(pinned) == round(0.1 * 16384)
    assert (s.memory.folio_refcount[pinned] == 1 + PIN_BIAS).all() and s.mm.has_pinned
    runs = 1 + int((np.diff(pinned) > 1).sum())
    assert runs == 3 if placement == "contiguous" else runs > 100


def test_fill_swap_and_swap_counts():
    s = build(size="64MiB", fill=0.5, swap_fraction=0.2, swap_count_max=200)
    kinds = pte_kinds(s.mm.pte.reshape(-1))
    present = int((kinds == P.KIND_PRESENT).sum())
    swap = int((kinds == P.KIND_SWAP).sum())
    assert present + swap == round(0.5 * 16384)
    assert swap == round(0.2 * (present + swap))
    cnt, lv = s.memory.swap_count, s.memory.swap_levels
    assert cnt.min() >= 1 and cnt.max() <= 200 and (cnt > 62).any()
    assert ((cnt > 62) == (lv >= 1)).all()  # continuation past SWAP_MAP_MAX
    assert s.mm.rss[3] == swap and s.mm.on_swapoff_list


def test_thp_and_large_folios():
    s = build(size="64MiB", thp_fraction=0.25)
    assert len(s.mm.pmd_index) == 8 and s.mm.nr_tables == 24
    assert s.mm.rss[0] == 16384
    s = build(size="8MiB", folio_order=4, variant="linux-5.10")
    assert (s.memory.folio_order == 4).all() and len(s.memory.folio_order) == 2048 // 16
    assert (s.memory.folio_refcount == 16).all()


def test_mixed_regions_vmas_and_flags():
    w = W.validate_python(
        {
            "kind": "mixed",
            "regions": [
                {"size": "4MiB", "vmas": 4},
                {"size": "2MiB", "backing": "file"},
                {"size": "2MiB", "shared": True},
                {"size": "2MiB", "flags": ["dontcopy"]},
            ],
        }
    )
    s, _, _ = build_workload(w, "linux-6.18", 1)
    s.validate()
    assert s.mm.nr_vmas == 7
    assert (s.mm.vma_flags[5] & np.uint64(VM_SHARED)) and (s.mm.vma_flags[6] & np.uint64(VM_DONTCOPY))
    assert s.mm.rss[1] == 512 and s.mm.rss[2] == 512 and s.mm.rss[0] == 1024 + 512
    r = gpusim.fork(s, "linux-6.18", backend="cpu")
    assert r.outcome == "ok" and r.invariants.ok and r.counts["vma.skip"] == 1


@pytest.mark.parametrize("variant", EAGER_VARIANTS)
def test_generated_spaces_fork_equal_on_engines(variant):
    s = build(
        variant,
        seed=3,
        size="8MiB",
        fill=0.8,
        pinned_fraction=0.01,
        swap_fraction=0.1,
        swap_count_max=80,
        thp_fraction=0.25,
    )
    ref = gpusim.fork(s, variant, backend="reference")
    cpu = gpusim.fork(s, variant, backend="cpu")
    assert ref.digest == cpu.digest and ref.counts == cpu.counts
    assert ref.outcome == "oops" or ref.invariants.ok


def test_scenario_and_layout_kinds():
    s, oracle, inject = build_workload(W.validate_python({"kind": "scenario", "scenario": "A"}), "xu-v1", 0)
    assert s.nr_ptes == 512 and oracle is not None
    s, oracle, inject = build_workload(
        W.validate_python({"kind": "layout", "layout": "pinned normal*511"}), "linux-5.10", 0
    )
    assert oracle is None and s.mm.has_pinned
