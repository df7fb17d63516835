"""The spec's scenario catalogue (7.2, 7.3, 10) for every variant: outcome and counts exactly as the tables give."""

import numpy as np
import pytest

import gpusim
from gpusim.inputs.catalogue import SCENARIOS
from gpusim.kernels import pte as P
from gpusim.kernels.flags import PAGE_ANON_EXCLUSIVE
from gpusim.model.state import pte_at

V58, V1, OLEG, V510, V618 = "linux-5.8", "xu-v1", "xu-v1-oleg", "linux-5.10", "linux-6.18"
ALL = (V58, V1, OLEG, V510, V618)
FIXED = (V1, OLEG, V510, V618)

# (id, variants, outcome, oops addr, passes, LB, alloc, free, copy, shared, (anon, file, swapents), swc)
# swc = (atomic, kernel) continuation calls, or None where the table does not say.
ROWS = [
    ("A", (V58,), "ok", None, 121, 120, 0, 0, 0, 481, (481, 0, 0), None),
    ("A", (V1,), "oops", 32, 2, 1, 1, 0, 1, 0, (1, 0, 0), None),
    ("A", (OLEG, V510, V618), "ok", None, 122, 120, 1, 0, 1, 480, (481, 0, 0), None),
    ("A'", FIXED, "ok", None, 2, 0, 1, 0, 1, 480, (481, 0, 0), None),
    ("B", (V1,), "oops", 512, 2, 0, 1, 0, 1, 510, (511, 0, 0), None),
    ("B", (OLEG, V510, V618), "ok", None, 2, 0, 1, 0, 1, 510, (511, 0, 0), None),
    ("B2", (V1,), "oops", 512, 2, 0, 1, 0, 1, 511, (512, 0, 0), None),
    ("B2", (OLEG, V510, V618), "ok", None, 2, 0, 1, 0, 1, 511, (512, 0, 0), None),
    ("B'", FIXED, "ok", None, 2, 0, 1, 0, 1, 511, (512, 0, 0), None),
    ("C", ALL, "ok", None, 2, 0, 0, 0, 0, 0, (0, 0, 1), (1, 1)),
    ("C'", ALL, "ok", None, 17, 15, 0, 0, 0, 0, (0, 0, 1), (1, 1)),
    ("D", (V58, V1), "ok", None, 2, 0, 0, 0, 0, 0, (0, 0, 0), (1, 2)),
    ("D", (OLEG, V510, V618), "ok", None, 2, 0, 0, 0, 0, 0, (0, 0, 0), (1, 1)),
    ("D'", (V58, V1), "ok", None, 17, 15, 0, 0, 0, 0, (0, 0, 0), (1, 5)),
    ("D'", (OLEG, V510, V618), "ok", None, 17, 15, 0, 0, 0, 0, (0, 0, 0), (1, 1)),
    ("E", (V1, OLEG), "ok", None, 2, 0, 1, 0, 1, 511, (512, 0, 0), None),
    ("E", (V510, V618), "ok", None, 2, 0, 1, 1, 0, 512, (512, 0, 0), None),
    ("F", (V1, OLEG), "ok", None, 3, 0, 2, 1, 1, 510, (511, 0, 0), None),
    ("F", (V510, V618), "ok", None, 2, 0, 1, 0, 1, 510, (511, 0, 0), None),
    ("F'", (V1,), "oops", 512, 3, 0, 2, 1, 1, 100, (101, 0, 0), None),
    ("F'", (OLEG,), "ok", None, 3, 0, 2, 1, 1, 100, (101, 0, 0), None),
    ("F'", (V510, V618), "ok", None, 2, 0, 1, 0, 1, 100, (101, 0, 0), None),
    ("G", FIXED, "ok", None, 9, 0, 8, 0, 8, 504, (512, 0, 0), None),
    ("G'", (V58,), "ok", None, 128, 127, 0, 0, 0, 512, (512, 0, 0), None),
    ("G'", (V1, OLEG), "ok", None, 134, 125, 8, 0, 8, 504, (512, 0, 0), None),
    ("G'", (V510, V618), "ok", None, 135, 126, 8, 0, 8, 504, (512, 0, 0), None),
    ("H-a", ALL, "ok", None, 1, 0, 0, 0, 0, 496, (496, 0, 0), None),
    ("H-a'", (V58, V1, OLEG, V510), "ok", None, 125, 124, 0, 0, 0, 496, (496, 0, 0), None),
    ("H-a'", (V618,), "ok", None, 121, 120, 0, 0, 0, 496, (496, 0, 0), None),
    ("H-b", FIXED, "ok", None, 17, 0, 16, 0, 16, 480, (496, 0, 0), None),
    ("H-c", (V1, OLEG, V510), "ok", None, 17, 0, 16, 0, 16, 480, (496, 0, 0), None),
    ("H-c", (V618,), "ok", None, 17, 0, 16, 1, 15, 481, (496, 0, 0), None),
    ("H-d", (V1,), "oops", 512, 17, 0, 16, 0, 16, 0, (16, 0, 0), None),
    ("H-d", (OLEG, V510, V618), "ok", None, 17, 0, 16, 0, 16, 0, (16, 0, 0), None),
    ("I-a", ALL, "ok", None, 128, 127, 0, 0, 0, 512, (512, 0, 0), None),
    ("I-b", ALL, "ok", None, 16, 15, 0, 0, 0, 0, (0, 0, 0), None),
    ("I-c", (V58, V1, OLEG, V510), "ok", None, 128, 127, 0, 0, 0, 512, (512, 0, 0), None),
    ("I-c", (V618,), "ok", None, 1, 0, 0, 0, 0, 512, (512, 0, 0), None),
    ("I-d", ALL, "ok", None, 64, 63, 0, 0, 0, 512, (512, 0, 0), None),
    ("J", (V58, V1, OLEG), "ok", None, 1, 0, 0, 0, 0, 512, (512, 0, 0), None),
    ("J", (V510, V618), "ok", None, 2, 0, 1, 0, 1, 511, (512, 0, 0), None),
    ("J'", (V58, V1, OLEG, V618), "ok", None, 1, 0, 0, 0, 0, 512, (512, 0, 0), None),
    ("J'", (V510,), "ok", None, 2, 0, 1, 0, 1, 511, (512, 0, 0), None),
    ("J''", (V58, V1, OLEG, V618), "ok", None, 1, 0, 0, 0, 0, 512, (0, 512, 0), None),
    ("J''", (V510,), "ok", None, 2, 0, 1, 0, 1, 511, (1, 511, 0), None),
    ("K-a", FIXED, "enomem", None, 1, 0, 0, 0, 0, 100, (100, 0, 0), None),
    ("K-b", ALL, "enomem", None, 0, 0, 0, 0, 0, 0, (0, 0, 0), None),
    ("K-c", ALL, "enomem", None, 1, 0, 0, 0, 0, 100, (100, 0, 0), (1, 1)),
    ("L-a", (V58, V510), "ok", None, 1, 0, 0, 0, 0, 512, (512, 0, 0), None),
    ("L-a", (V1, OLEG, V618), "ok", None, 2, 0, 1, 0, 1, 511, (512, 0, 0), None),
    ("L-b", FIXED, "ok", None, 2, 0, 1, 0, 1, 511, (512, 0, 0), None),
]
# linux-5.8 rows the spec omits: ok, 1 pass, nothing copied, shared = child anon rss = present normal PTEs.
DEFAULT_58 = {
    "A'": 481,
    "B": 511,
    "B2": 512,
    "B'": 512,
    "E": 512,
    "F": 512,
    "F'": 102,
    "G": 512,
    "H-b": 496,
    "H-c": 496,
    "H-d": 16,
    "K-a": 512,
    "L-b": 512,
}
for _id, _n in DEFAULT_58.items():
    ROWS.append((_id, (V58,), "ok", None, 1, 0, 0, 0, 0, _n, (_n, 0, 0), None))

CASES = [(row[0], v, row) for row in ROWS for v in row[1]]


def run(sid, variant, check=True):
    s = SCENARIOS[sid]
    return gpusim.fork(
        gpusim.parse_layout(s.layout, variant),
        variant,
        backend="reference",
        oracle=s.oracle,
        inject=s.inject,
        check=check,
    )


def test_every_scenario_and_variant_has_a_row():
    covered = {(sid, v) for sid, v, _ in CASES}
    for sid in SCENARIOS:
        if sid.startswith("M-"):
            continue
        for v in ALL:
            assert (sid, v) in covered, f"no expected row for {sid} under {v}"
    assert len(covered) == len(CASES), "a (scenario, variant) pair has two rows"


@pytest.mark.parametrize("sid,variant,row", CASES, ids=[f"{s}-{v}" for s, v, _ in CASES])
def test_scenario(sid, variant, row):
    _, _, outcome, oops_addr, passes, lb, alloc, free, copy, shared, rss, swc = row
    r = run(sid, variant)
    c = r.counts
    assert r.outcome == outcome
    if outcome == "oops":
        assert r.oops["function"] == "page_duplicate" and r.oops["reason"] == "OLD_PAGE_NULL"
        assert r.oops["addr"] == oops_addr
    else:
        assert r.oops is None
        assert r.invariants.ok, r.invariants.violations
    got = (c["passes"], c["lock_breaks"], c["allocations"], c["unused_frees"], c["installs"], c["shared"])
    assert got == (passes, lb, alloc, free, copy, shared)
    assert (r.child_rss["anon"], r.child_rss["file"], r.child_rss["swapents"]) == rss
    if swc is not None:
        assert (c["swapcont_atomic"], c["swapcont_kernel"]) == swc


def test_oleg_and_end_of_range_outcomes():
    """A, B, B2: oops@page_duplicate for xu-v1, ok for the three fixed designs."""
    for sid in ("A", "B", "B2"):
        assert run(sid, V1).outcome == "oops"
        for v in (OLEG, V510, V618):
            assert run(sid, v).outcome == "ok"


@pytest.mark.parametrize("variant", ALL)
def test_c_slot_and_range(variant):
    r = run("C", variant)
    assert (int(r.memory.swap_count[0]), int(r.memory.swap_levels[0])) == (63, 1)
    assert r.counts["levels_added"] == 1


@pytest.mark.parametrize("variant", ALL)
def test_d_stale_slot(variant):
    r = run("D", variant)
    assert (int(r.memory.swap_count[0]), int(r.memory.swap_levels[0])) == (61, 1)
    assert r.counts["swapcont.null"] == (1 if variant == V1 else 0)


@pytest.mark.parametrize("variant", FIXED)
def test_g_parent_keeps_write(variant):
    r = run("G", variant)
    for a in range(8):
        assert P.pte_write(pte_at(r.parent.mm, a))
    assert not any(P.pte_write(pte_at(r.parent.mm, a)) for a in range(8, 512))


# linux-5.8 has no copy allocation point: K-a is an ok fork there (covered by test_scenario).
TEARDOWN_CASES = [(s, v) for s in ("K-a", "K-b", "K-c") for v in ALL if (s, v) != ("K-a", V58)]


@pytest.mark.parametrize("sid,variant", TEARDOWN_CASES)
def test_teardown_restores_counts(sid, variant):
    s = SCENARIOS[sid]
    space = gpusim.parse_layout(s.layout, variant)
    r = gpusim.fork(space, variant, backend="reference", oracle=s.oracle, inject=s.inject)
    assert r.outcome == "enomem"
    m0, m1 = space.memory, r.memory
    n = m0.nr_folios
    assert np.array_equal(m1.folio_refcount[:n], m0.folio_refcount)
    assert np.array_equal(m1.page_mapcount[: m0.nr_pages], m0.page_mapcount)
    assert np.array_equal(m1.swap_count[: m0.nr_slots], m0.swap_count)
    assert r.child_rss_after_teardown == {"anon": 0, "file": 0, "shmem": 0, "swapents": 0}
    assert r.child.nr_tables == 0
    shared_before_failure = 100 if sid != "K-b" else 0
    for a in range(shared_before_failure):
        assert not P.pte_write(pte_at(r.parent.mm, a))
        if variant == V618:
            pfn = P.pte_pfn(pte_at(r.parent.mm, a))
            assert not m1.page_flags[pfn] & PAGE_ANON_EXCLUSIVE
    if sid == "K-c":
        assert (int(m1.swap_count[0]), int(m1.swap_levels[0])) == (62, 0)


def test_m_a_thp_shared():
    for v in ALL:
        r = run("M-a", v)
        assert r.outcome == "ok" and r.invariants.ok, r.invariants.violations
        assert (r.counts["passes"], r.counts["pmd.share"], r.counts["pmd.split"]) == (0, 1, 0)
        assert r.child_rss["anon"] == 512
        assert r.child.pmd_index.tolist() == [0]
        assert not P.pte_write(int(r.parent.mm.pmd[0]))


def test_m_b_pinned_thp():
    r = run("M-b", V58)
    assert r.outcome == "ok" and r.counts["pmd.share"] == 1 and r.counts["pmd.split"] == 0
    assert r.counts["pin_shared"] == 512
    r = run("M-b", V1)
    assert r.outcome == "oops" and r.oops["function"] == "page_duplicate" and r.oops["addr"] == 512
    assert r.counts["pmd.split"] == 1
    for v in (OLEG, V510, V618):
        r = run("M-b", v)
        assert r.outcome == "ok" and r.invariants.ok, r.invariants.violations
        c = r.counts
        assert (c["pmd.split"], c["passes"], c["allocations"], c["installs"]) == (1, 513, 512, 512)
        assert r.child_rss["anon"] == 512 and c["pin_shared"] == 0
