"""The per-PTE functions compiled by numba equal their Python selves; the CUDA kernels compile to PTX."""

import json

import background
import numpy as np
import pytest
from budget import budget
from hypothesis import given
from hypothesis import strategies as st
from numba import njit

from gpusim.kernels import jit  # noqa: F401  (pte and rules compiled by the tests' own njit functions)
from gpusim.kernels import pte as P
from gpusim.kernels import rules as R
from gpusim.model.oracle import nb_hash

u64 = st.integers(0, (1 << 64) - 1)


def pte_ops(v, pfn):
    """The PTE helpers on one value: run as Python, and compiled by numba (``_jit_pte_ops``)."""
    return (
        P.pte_wrprotect(v),
        P.pte_mkold(v),
        P.pte_mkclean(v),
        P.pte_mkwrite(v),
        P.pte_set_pfn(v, pfn),
        P.pte_swp_clear_exclusive(v),
        P.pte_kind(v),
        P.pte_pfn(v),
        P.swp_offset(v),
        P.swp_type(v),
    )


_jit_pte_ops = njit(pte_ops)


@njit
def _jit_rules(v, w_any, shared, cow, is_618):
    after = R.nonpresent_parent(v, cow, is_618)
    return R.share_child_pte(v, w_any, shared), after, R.nonpresent_child(v, after)


@njit
def _jit_hash(seed, fork_seq, call_start, k):
    return R.nb_hash_u64(seed, fork_seq, call_start, k)


@budget(300)
@given(v=u64, pfn=st.integers(0, (1 << 40) - 1))
def test_pte_helpers_compiled_equal_python(v, pfn):
    got = _jit_pte_ops(np.uint64(v), np.uint64(pfn))
    want = pte_ops(v, pfn)
    assert tuple(int(x) & P.M64 for x in got) == tuple(x & P.M64 for x in want)  # bit patterns


@budget(300)
@given(v=u64, w=st.booleans(), shared=st.booleans(), cow=st.booleans(), is_618=st.booleans())
def test_rules_compiled_equal_python(v, w, shared, cow, is_618):
    got = _jit_rules(np.uint64(v), w, shared, cow, is_618)
    after = R.nonpresent_parent(v, cow, is_618)
    want = (R.share_child_pte(v, w, shared), after, R.nonpresent_child(v, after))
    assert tuple(int(x) & P.M64 for x in got) == tuple(int(x) & P.M64 for x in want)


def test_compiled_nb_hash_vectors():
    assert int(_jit_hash(1, 0, 0, 0)) == 0xE28195DDD9EE4956
    assert int(_jit_hash(1, 0, 0, 1)) == 0x3FA25E1657E024C1
    assert int(_jit_hash(1, 0, 512, 0)) == 0x8D98AC8191DE8798
    assert int(_jit_hash(42, 3, 1024, 7)) == 0x241810C795E93B5F


@budget(200)
@given(
    seed=st.integers(0, (1 << 63) - 1), fork_seq=st.integers(0, 1000), cs=st.integers(0, 1 << 40), k=st.integers(0, 600)
)
def test_compiled_nb_hash_equals_python(seed, fork_seq, cs, k):
    assert int(_jit_hash(seed, fork_seq, cs, k)) == nb_hash(seed, fork_seq, cs, k)


def test_cuda_kernels_compile_to_ptx():
    """Compiled in a fresh process without the simulator (``tests/background.py``): typing errors that cudasim
    cannot see fail here. Needs numba-cuda and NVVM (the ``ptx`` extra); no GPU."""
    p = background.result("ptx", background.PTX_ARGV, background.PTX_ENV)  # started with the run where it was
    assert p.returncode == 0, p.stderr[-3000:]
    atomics = json.loads(p.stdout.strip().splitlines()[-1])
    assert atomics["fork_tables_kernel"][0] > 0  # shared folios, pages and slots use atomics
    assert min(atomics["slow_claim_kernel"][1:]) > 0  # the slow path's items claim objects by atomic min / max
    assert atomics["slow_check_kernel"] == [0, 0, 0] and "slow_items_kernel" in atomics
    # the write phase's units touch folios no other running unit touches: no atomics
    assert all(atomics[k] == [0, 0, 0] for k in ("write_plan_kernel", "write_run_kernel", "write_fixup_kernel"))
    # the region generator's rows write disjoint pages, folios and slots
    assert atomics["generate_rows_kernel"] == [0, 0, 0]


def test_every_list_of_events_is_drawn_from_the_one_list_of_counts():
    """FAST_COUNTS, SLOW_COUNTS and TABLE_EVENTS name counts of COUNT_NAMES (or the rss deltas and swapoff), each
    once, in COUNT_NAMES' order; a group that names no count is refused."""
    from gpusim.kernels.flags import COUNT_NAMES, RSS_COUNTS, events
    from gpusim.kernels.rules import FAST_COUNTS
    from gpusim.kernels.slowpath.common import SLOW_COUNTS
    from gpusim.model.result import TABLE_EVENTS

    for names in (FAST_COUNTS, SLOW_COUNTS, TABLE_EVENTS):
        counted = [n for n in names if n not in (*RSS_COUNTS, "swapoff")]
        assert len(set(names)) == len(names)
        assert counted == sorted(counted, key=COUNT_NAMES.index)
    assert events("swapcont.") == ("swapcont.atomic", "swapcont.kernel", "swapcont.attach", "swapcont.null")
    assert events("copy.", but=("copy.alloc_fail",))[:2] == ("copy.alloc", "copy.memcpy")
    for bad in ("pte.nonee", "nothing."):
        with pytest.raises(ValueError, match="no count named"):
            events(bad)
