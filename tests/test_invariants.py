"""The invariant checker finds violations: each test breaks one fact of a correct fork and expects its number."""

import dataclasses

import pytest

import gpusim
from gpusim.analysis.invariants import check_invariants
from gpusim.kernels import pte as P
from gpusim.model.oracle import LockBreakOracle


def fork(layout, variant="linux-6.18", oracle="never", inject=()):
    space = gpusim.parse_layout(layout, variant)
    r = gpusim.fork(space, variant, backend="reference", oracle=oracle, inject=inject)
    assert r.invariants.ok, r.invariants.violations
    return space, r


def recheck(space, r, oracle="never"):
    rep = check_invariants(space, r, LockBreakOracle.parse(oracle), 0)
    return {v.split(":")[0] for v in rep.violations}


def test_1_coverage():
    space, r = fork("normal*40 none*40")
    r.trace.calls[0].passes[0].handled.pop(3)
    assert "1" in recheck(space, r)


def test_2_restart_position():
    space, r = fork("normal*100", oracle="always")
    r.trace.calls[0].passes[2].start += 1
    assert "2" in recheck(space, r, "always")


def test_3_shared_references():
    space, r = fork("normal*10 folio4 normal*10")
    r.memory.folio_refcount[2] += 1
    assert "3" in recheck(space, r)


def test_3_and_13_on_large_forks_through_the_compiled_passes():
    """Above 32 K entries invariants 3 and 13 read the state through kernels/scan.py: they still catch a bad count."""
    from gpusim.inputs.workloads import dense_anon

    space = dense_anon(40_000, pin_every=997).validate()
    r = gpusim.fork(space, "linux-5.8", backend="cpu")
    assert r.invariants.ok and r.counts["pin_shared"] > 0, r.invariants.violations
    r.memory.folio_refcount[39_000] += 1
    r.memory.page_mapcount[33_333] -= 1
    rep = check_invariants(space, r, LockBreakOracle.parse("never"), 0)
    assert any(v.startswith("3: folio 39000: refcount") for v in rep.violations), rep.violations
    assert any(v.startswith("3: page 33333: mapcount") for v in rep.violations), rep.violations
    r.counts["pin_shared"] += 1
    assert "13" in recheck(space, r)


def test_4_parent_of_early_copy_untouched():
    space, r = fork("normal*4 pinned normal*4")
    r.parent.mm.pte[0, 4] = P.pte_wrprotect(int(r.parent.mm.pte[0, 4]))
    assert "4" in recheck(space, r)


def test_5_child_copy_content():
    space, r = fork("normal*4 pinned normal*4")
    q = P.pte_pfn(int(r.child.pte[0, 4]))
    r.memory.page_content[q] += 1
    assert "5" in recheck(space, r)


def test_6_write_protection():
    space, r = fork("normal*4 pinned normal*4")
    r.child.pte[0, 1] = P.pte_mkwrite(int(r.child.pte[0, 1]))
    assert "6" in recheck(space, r)


def test_7_rss():
    space, r = fork("normal*4 swap normal*4")
    r.child.rss[3] += 1
    assert "7" in recheck(space, r)


def test_8_swap_counts():
    space, r = fork("normal*4 swap normal*4")
    r.memory.swap_count[0] += 1
    assert "8" in recheck(space, r)


def test_9_allocation_balance():
    space, r = fork("normal*4 pinned normal*4", "linux-5.10", inject=["@EC#1: unpin(4)"])
    r.counts["unused_frees"] += 1
    assert "9" in recheck(space, r)


def test_10_xu_protocol():
    space, r = fork("normal*4 pinned normal*4", "xu-v1-oleg")
    r.trace.calls[0].pd_calls += 1
    assert "10" in recheck(space, r)


def test_11_oracle_cadence():
    space, r = fork("normal*100", oracle="every:2")
    k, brk, a = r.trace.calls[0].checks[0]
    r.trace.calls[0].checks[0] = (k, not brk, a)
    assert "11" in recheck(space, r, "every:2")


def test_12_flags():
    space, r = fork("normal*4 pinned normal*4")
    r2 = dataclasses.replace(r, child=dataclasses.replace(r.child, has_pinned=True))
    assert "12" in recheck(space, r2)


def test_13_pin_hazard_count():
    space, r = fork("normal*4 pinned:nonex normal*4")
    assert r.counts["pin_shared"] == 1
    r.counts["pin_shared"] = 0
    assert "13" in recheck(space, r)


def test_13_pin_hazard_predicate():
    """A pinned exclusive page that a buggy engine shared is caught by re-evaluating the early-copy rule."""
    space, r = fork("normal*4 pinned:ro normal*4", "xu-v1")  # xu-v1 shares it legitimately (W=0)
    assert r.counts["pin_shared"] == 1 and not recheck(space, r)
    # pretend the parent PTE had been writable: the predicate then holds, so sharing it is a violation
    mm = space.mm
    pte = mm.pte.copy()
    pte[0, 4] = P.pte_mkwrite(int(pte[0, 4]))
    space2 = dataclasses.replace(space, mm=dataclasses.replace(mm, pte=pte))
    assert "13" in recheck(space2, r)


@pytest.mark.parametrize("variant", ["linux-5.8", "linux-6.18"])
def test_enomem_after_teardown_is_checked(variant):
    space, r = fork(
        "normal*100 swap:cnt=62 normal*411", variant, inject=["fail@swapcont.atomic#1", "fail@swapcont.kernel#1"]
    )
    assert r.outcome == "enomem" and r.invariants.checked
    r.memory.swap_count[0] += 1
    assert "8" in recheck(space, r)
