"""The lazy fork designs of spec 12 (odf-paper, odf-cowpte, async-fork) on the reference: the scenarios Z-a ... Z-i
of spec 12.10 row by row, the equalities the spec derives (async-fork after the child's sync is linux-6.18's fork;
odf-cowpte leaves every page as linux-6.18 does), invariants L1-L7 on random layouts and write phases with one
mutation each, and what is refused with a clear error."""

import dataclasses

import numpy as np
import pytest
from budget import budget
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import LAZY_STEPS, layouts, oracles

import gpusim
from gpusim.analysis.costmodel import event_costs, load_profile, priced_events
from gpusim.analysis.lazyinv import LazyChecker, check_lazy_fork
from gpusim.engines.lazyfast import ReferenceOnly
from gpusim.engines.reference.lazy import Unsupported
from gpusim.engines.writes import WritesError
from gpusim.kernels import pte as P
from gpusim.kernels.flags import FOLIO_FREED, PAGE_ANON_EXCLUSIVE
from gpusim.model.state import digest
from gpusim.model.variants import ASYNC_FORK, COMPILED_VARIANTS, ODF_COWPTE, ODF_PAPER, VARIANTS

LAZY = (ODF_PAPER, ODF_COWPTE, ASYNC_FORK)


def fork(layout, variant, writes=None, **kw):
    return gpusim.fork(gpusim.parse_layout(layout), variant, backend="reference", writes=writes, **kw)


def nonzero(d):
    return {k: n for k, n in d.items() if n}


def has(counts, want):
    """``counts`` holds ``want``'s values (a subset)."""
    return {k: counts.get(k, 0) for k in want} == want


# --- spec 12.10, Z-a --------------------------------------------------------------------------------------------


def test_za_odf_paper_shares_the_table_with_no_page_work():
    r = fork("normal*512", ODF_PAPER)
    assert r.outcome == "ok" and r.invariants.ok and r.invariants.checked
    assert has(r.counts, {"table.share": 1, "table.alloc": 0, "pass": 0, "pte.share": 0, "pte.acct": 0})
    obj, wp = r.tables.of("child")
    assert obj.tolist() == [0] and wp.tolist() == [True] and r.tables.share.tolist() == [2]
    assert r.tables.of("parent")[1].tolist() == [True]  # the parent's PMD is write-protected
    assert (r.memory.folio_refcount == 1).all() and (r.memory.page_mapcount == 1).all()
    assert r.child.rss.tolist() == [0, 0, 0, 0]
    before = gpusim.parse_layout("normal*512").mm.pte
    assert np.array_equal(r.parent.mm.pte, before)  # W = 1 and young kept: the entries are untouched


def test_za_odf_cowpte_accounts_every_page_in_the_shared_table():
    r = fork("normal*512", ODF_COWPTE)
    assert r.invariants.ok
    assert has(r.counts, {"table.share": 1, "pte.acct": 512, "table.alloc": 0, "pass": 0})
    assert (r.memory.folio_refcount == 2).all() and (r.memory.page_mapcount == 2).all()
    assert not (r.memory.page_flags & PAGE_ANON_EXCLUSIVE).any()
    row = r.parent.mm.pte[0]
    assert np.array_equal(row, r.child.pte[0])  # one entry set, seen by both
    assert not any(P.pte_write(int(v)) or P.pte_young(int(v)) for v in row)
    assert r.child.rss.tolist() == [512, 0, 0, 0]


def test_za_async_fork_defers_and_the_sync_is_linux_6_18s_fork():
    r = fork("normal*512", ASYNC_FORK, writes="child:sync")
    assert nonzero({k: v for k, v in r.counts.items() if not k.startswith(("fork.", "vma.", "table.upper"))}) == {
        "async.defer": 1
    }
    assert r.child.nr_tables == 0 and r.tables.pending.tolist() == [0]
    w = r.write_phase
    assert w.invariants.ok and w.outcome == "ok" and w.tables.pending.size == 0
    assert has(w.table_counts["child_sync"], {"async.copy.child": 1, "pass": 1, "pte.share": 512})
    base = fork("normal*512", "linux-6.18")
    assert digest(w.parent.mm, w.child, w.memory) == digest(base.parent.mm, base.child, base.memory)


# --- spec 12.10, Z-b ... Z-i: (id, layout, writes, variant, fork counts, write events, table counts, rss, dma) -------

# fmt: off
ROWS = [
    ("Z-b", "normal*512", "parent:0; child:0", ODF_PAPER,
     {"table.share": 1},
     {"parent": {"copy": 1}, "child": {"reuse": 1}},
     {"parent": {"table.cow_copy": 1, "table.cow_pte": 512}, "child": {"table.cow_copy": 1, "table.free": 1}},
     ([1024, 0, 0, 0], [0, 0, 0, 0]), (0, 0)),
    ("Z-b", "normal*512", "parent:0; child:0", ODF_COWPTE,
     {"table.share": 1},
     {"parent": {"copy": 1}, "child": {"reuse": 1}},
     {"parent": {"table.cow_copy": 1}, "child": {"table.reuse": 1, "table.cow_copy": 0}},
     ([512, 0, 0, 0], [512, 0, 0, 0]), (0, 0)),
    ("Z-b", "normal*512", "parent:0; child:0", ASYNC_FORK,
     {"async.defer": 1},
     {"parent": {"copy": 1}, "child": {"reuse": 1}},
     {"parent": {"async.copy.fault": 1}, "child_sync": {"async.copy.child": 0}},
     ([512, 0, 0, 0], [512, 0, 0, 0]), (0, 0)),
    ("Z-c", "pinned*4 normal*4 none*504", "parent:all; child:all", ODF_PAPER,
     {"table.share": 1},
     {"parent": {"copy": 8}, "child": {"reuse": 8}},
     {"parent": {"table.cow_copy": 1}, "child": {"table.cow_copy": 1, "table.free": 1}},
     ([16, 0, 0, 0], [0, 0, 0, 0]), (4, 4)),
    ("Z-c", "pinned*4 normal*4 none*504", "parent:all; child:all", ODF_COWPTE,
     {"table.share_fallback": 1, "pass": 5, "copy.alloc": 4, "copy.install": 4, "pte.share": 4, "table.share": 0},
     {"parent": {"none": 4, "copy": 4}, "child": {"none": 4, "reuse": 4}},
     {},
     ([8, 0, 0, 0], [8, 0, 0, 0]), (0, 0)),
    ("Z-c", "pinned*4 normal*4 none*504", "parent:all; child:all", ASYNC_FORK,
     {"async.defer": 1, "pass": 0},
     {"parent": {"none": 4, "copy": 4}, "child": {"none": 4, "reuse": 4}},
     {"parent": {"async.copy.fault": 1, "pass": 5, "copy.install": 4, "pte.share": 4}},
     ([8, 0, 0, 0], [8, 0, 0, 0]), (0, 0)),
    ("Z-d", "pinned*4 normal*4 none*504", "child:exit; parent:all", ODF_PAPER,
     {"table.share": 1},
     {"parent": {"reuse": 8}, "child": {}},
     {"parent": {"table.cow_copy": 1, "table.free": 1}, "child": {"table.free": 0, "teardown.pte": 0}},
     ([8, 0, 0, 0], [0, 0, 0, 0]), (0, 0)),
    ("Z-d", "pinned*4 normal*4 none*504", "child:exit; parent:all", ODF_COWPTE,
     {"table.share_fallback": 1},
     {"parent": {"reuse": 4, "none": 4}},
     {},
     ([8, 0, 0, 0], [0, 0, 0, 0]), (0, 0)),
    ("Z-d", "pinned*4 normal*4 none*504", "child:exit; parent:all", ASYNC_FORK,
     {"async.defer": 1},
     {"parent": {"reuse": 4, "none": 4}},
     {"child_sync": {"async.copy.child": 1}},
     ([8, 0, 0, 0], [0, 0, 0, 0]), (0, 0)),
    ("Z-e", "normal*8 none*504", "child:exit; parent:all", ODF_PAPER,
     {"table.share": 1},
     {"parent": {"reuse": 8}},
     {"parent": {"table.cow_copy": 1, "table.free": 1}},
     ([8, 0, 0, 0], [0, 0, 0, 0]), (0, 0)),
    ("Z-e", "normal*8 none*504", "child:exit; parent:all", ODF_COWPTE,
     {"table.share": 1},
     {"parent": {"reuse": 8}},
     {"child": {"table.zap_shared": 1, "teardown.pte": 8}, "parent": {"table.reuse": 1, "table.cow_copy": 0}},
     ([8, 0, 0, 0], [0, 0, 0, 0]), (0, 0)),
    ("Z-e", "normal*8 none*504", "child:exit; parent:all", ASYNC_FORK,
     {"async.defer": 1},
     {"parent": {"reuse": 8}},
     {"child_sync": {"async.copy.child": 1, "async.sync": 1}},
     ([8, 0, 0, 0], [0, 0, 0, 0]), (0, 0)),
    ("Z-f", "normal*8 none*504", "parent:pin:0; parent:0; child:0", ODF_PAPER,
     {"table.share": 1},
     {"parent": {"none": 1, "copy": 1}, "child": {"reuse": 1}},
     {"parent": {"table.cow_copy": 1}, "child": {"table.cow_copy": 1, "table.free": 1}},
     ([16, 0, 0, 0], [0, 0, 0, 0]), (1, 1)),
    ("Z-f", "normal*8 none*504", "parent:pin:0; parent:0; child:0", ODF_COWPTE,
     {"table.share": 1},
     {"parent": {"copy": 1, "none": 1}, "child": {"reuse": 1}},
     {"parent": {"table.cow_copy": 1}, "child": {"table.reuse": 1}},
     ([8, 0, 0, 0], [8, 0, 0, 0]), (0, 0)),
    ("Z-f", "normal*8 none*504", "parent:pin:0; parent:0; child:0", ASYNC_FORK,
     {"async.defer": 1},
     {"parent": {"copy": 1, "none": 1}, "child": {"reuse": 1}},
     {"parent": {"async.copy.gup": 1}},
     ([8, 0, 0, 0], [8, 0, 0, 0]), (0, 0)),
    ("Z-f'", "normal*8 none*504", "parent:pin.fast:0; parent:0; child:0", ASYNC_FORK,
     {"async.defer": 1},
     {"parent": {"none": 2}, "child": {"none": 1}},
     {"parent": {"async.copy.fault": 1, "copy.install": 1}},
     ([8, 0, 0, 0], [8, 0, 0, 0]), (0, 0)),
    ("Z-g", "normal*100 swap normal*411", "child:sync", ODF_COWPTE,
     {"table.share": 1, "pte.swap": 1},
     {},
     {},
     ([511, 0, 0, 1], [511, 0, 0, 1]), (0, 0)),
    ("Z-g", "normal*100 swap normal*411", "child:sync", ASYNC_FORK,
     {"async.defer": 1},
     {},
     {"child_sync": {"pte.swap": 1, "async.copy.child": 1}},
     ([511, 0, 0, 1], [511, 0, 0, 1]), (0, 0)),
    ("Z-h", "thp:pin", "child:sync", ODF_PAPER,
     {"pmd.share": 1, "pmd.split": 0},
     {},
     {},
     ([512, 0, 0, 0], [512, 0, 0, 0]), (0, 0)),
    ("Z-h", "thp:pin", "child:sync", ODF_COWPTE,
     {"pmd.split": 1, "table.share_fallback": 1, "pass": 513, "copy.alloc": 512, "copy.install": 512},
     {},
     {},
     ([512, 0, 0, 0], [512, 0, 0, 0]), (0, 0)),
    ("Z-h", "thp:pin", "child:sync", ASYNC_FORK,
     {"pmd.split": 1, "async.defer": 1, "pass": 0},
     {},
     {"child_sync": {"pass": 513, "copy.alloc": 512, "copy.install": 512}},
     ([512, 0, 0, 0], [512, 0, 0, 0]), (0, 0)),
    ("Z-i", "gap*100 normal*300 gap*112", None, ODF_PAPER,
     {"pass": 1, "pte.share": 300, "table.alloc": 1, "table.share": 0},
     {},
     {},
     ([300, 0, 0, 0], [300, 0, 0, 0]), None),
    ("Z-i", "gap*100 normal*300 gap*112", None, ODF_COWPTE,
     {"table.share": 1, "pte.acct": 300, "table.alloc": 0},
     {},
     {},
     ([300, 0, 0, 0], [300, 0, 0, 0]), None),
    ("Z-i", "gap*100 normal*300 gap*112", None, ASYNC_FORK,
     {"async.defer": 0, "pass": 1, "pte.share": 300},
     {},
     {},
     ([300, 0, 0, 0], [300, 0, 0, 0]), None),
]
# fmt: on


@pytest.mark.parametrize("row", ROWS, ids=[f"{r[0]}-{r[3]}" for r in ROWS])
def test_scenario(row):
    _, layout, writes, variant, fork_counts, write_counts, table_counts, rss, dma = row
    r = fork(layout, variant, writes)
    assert r.outcome == "ok" and r.invariants.ok, r.invariants.violations
    assert has(r.counts, fork_counts)
    if writes is None:
        assert (r.parent.mm.rss.tolist(), r.child.rss.tolist()) == rss
        return
    w = r.write_phase
    assert w.outcome == "ok" and w.invariants.ok, w.invariants.violations
    for who, want in write_counts.items():
        assert nonzero(w.counts[who]) == want, who
    for who, want in table_counts.items():
        assert has(w.table_counts[who], want), (who, nonzero(w.table_counts[who]))
    assert (w.parent.mm.rss.tolist(), w.child.rss.tolist()) == rss
    assert (w.dma["parent_diverged"], w.dma["child_aliased"]) == dma


@pytest.mark.parametrize("row", ROWS, ids=[f"{r[0]}-{r[3]}" for r in ROWS])
def test_scenario_on_the_fast_engines(row, backend):
    """Each row of spec 12.10 forked on the fast engines (their write phases on the fork's result): the reference's
    fork, write phase and table objects, or (a pinned THP) a fork the fast engines leave to it."""
    _, layout, writes, variant, *_ = row
    ref = fork(layout, variant, writes)
    try:
        got = gpusim.fork(gpusim.parse_layout(layout), variant, backend=backend, writes=writes)
    except ReferenceOnly:
        assert "thp" in layout
        return
    assert got.backend == backend and got.digest == ref.digest and got.counts == ref.counts
    if writes is not None:
        a, b = ref.write_phase, got.write_phase
        assert a.counts == b.counts and a.table_counts == b.table_counts and a.dma == b.dma
        assert digest(a.parent.mm, a.child, a.memory, a.tables) == digest(b.parent.mm, b.child, b.memory, b.tables)


def test_zf_odf_paper_pin_lands_on_the_shared_page():
    """Z-f, odf-paper: the pin takes no fault (W = 1 in the shared table): page 0 has 1 + 1024 references and its
    table is still shared."""
    r = fork("normal*8 none*504", ODF_PAPER, "parent:pin:0")
    w = r.write_phase
    assert int(w.memory.folio_refcount[0]) == 1025 and w.tables.share.tolist() == [2]
    assert nonzero(w.table_counts["parent"]) == {}


def test_zg_odf_paper_rejects_a_swap_entry_in_a_shared_table():
    with pytest.raises(Unsupported, match="odfp:NONPRESENT"):
        fork("normal*100 swap normal*411", ODF_PAPER)


# --- the equalities spec 12.3 and 12.4 derive, on random layouts ------------------------------------------------


def whole_tables(layout: str, width: int) -> str:
    """The layout padded with empty entries to whole tables (one private anonymous VMA)."""
    return layout + f" none*{-width % 512}" if width % 512 else layout


@budget(40)
@given(layouts(max_width=1100, allow_vma=False), oracles())
def test_async_fork_then_sync_is_linux_6_18(lw, oracle):
    layout = whole_tables(*lw)
    space = gpusim.parse_layout(layout)
    base = gpusim.fork(space, "linux-6.18", backend="reference", oracle=oracle)
    assume(base.outcome == "ok")
    r = gpusim.fork(space, ASYNC_FORK, backend="reference", oracle=oracle, writes="child:sync")
    w = r.write_phase
    assert r.invariants.ok and w.invariants.ok, (r.invariants.violations, w.invariants.violations)
    assert w.outcome == "ok" and w.tables.pending.size == 0
    assert digest(w.parent.mm, w.child, w.memory) == digest(base.parent.mm, base.child, base.memory)


@pytest.fixture(scope="module")
def single_pte_6_18():
    """linux-6.18 that never batches (the copy rules odf-cowpte names, spec 12.0), registered for these tests."""
    v = dataclasses.replace(VARIANTS["linux-6.18"], name="test-6.18-single", summary="6.18, n = 1", batching=False)
    VARIANTS[v.name] = v
    yield v.name
    del VARIANTS[v.name]


@budget(40)
@given(lw=layouts(max_width=1100, allow_vma=False))
def test_odf_cowpte_leaves_every_page_as_linux_6_18(single_pte_6_18, lw):
    space = gpusim.parse_layout(whole_tables(*lw))
    base = gpusim.fork(space, single_pte_6_18, backend="reference")
    assume(base.outcome == "ok")
    r = gpusim.fork(space, ODF_COWPTE, backend="reference")
    assert r.outcome == "ok" and r.invariants.ok, r.invariants.violations
    for name in ("folio_refcount", "page_mapcount", "page_flags", "swap_count", "swap_levels", "page_content"):
        assert np.array_equal(getattr(r.memory, name), getattr(base.memory, name)), name
    assert r.child.rss.tolist() == base.child.rss.tolist()
    shared = r.tables.of("child")[0] >= 0
    assert np.array_equal(r.child.pte[shared], r.parent.mm.pte[r.tables.of("parent")[0] >= 0])


# --- invariants L1-L7 on random layouts and write phases --------------------------------------------------------

_STEPS = st.sampled_from([s for s in LAZY_STEPS if s != "child:exit"])


@budget(60)
@given(
    layouts(max_width=1100, allow_vma=False),
    st.sampled_from(LAZY),
    st.lists(_STEPS, min_size=1, max_size=4),
    st.booleans(),
)
def test_lazy_invariants_hold(lw, variant, steps, exits):
    layout = whole_tables(*lw) if variant != ODF_PAPER else lw[0]
    writes = "; ".join(steps + (["child:exit", "parent:all"] if exits else []))
    try:
        r = fork(layout, variant, writes)
    except Unsupported:
        assume(False)
    assert r.invariants.checked and r.invariants.ok, (layout, r.invariants.violations)
    if r.outcome == "ok":
        w = r.write_phase
        assert w.invariants.ok, (layout, writes, w.invariants.violations)


# --- one mutation per invariant: the checker sees it ------------------------------------------------------------


def _after(r):
    return {"parent": r.parent.mm, "child": r.child}, r.memory, r.tables


def _check(r, mms=None, memory=None, tables=None):
    space0 = gpusim.parse_layout(LAYOUT_OF[r.variant])
    a_mms, a_mem, a_tab = _after(r)
    after = (mms or a_mms, memory or a_mem, tables or a_tab)
    return LazyChecker(r.variant, ({"parent": space0.mm}, space0.memory, None), after).run().violations


LAYOUT_OF = {ODF_PAPER: "normal*8 none*504", ODF_COWPTE: "normal*8 none*504", ASYNC_FORK: "normal*8 none*504"}


def _mutant(a, i, value):
    a = a.copy()
    a[i] = value
    return a


@pytest.mark.parametrize(
    "variant, mutation, inv",
    [
        (ODF_COWPTE, "share", "L1"),
        (ODF_PAPER, "wp", "L2"),
        (ODF_PAPER, "refcount", "L3"),
        (ODF_COWPTE, "rss", "L4"),
        (ODF_PAPER, "anon_rss", "L4"),
        (ASYNC_FORK, "pending_child_table", "L5"),
        (ODF_COWPTE, "exclusive", "L6"),
        (ODF_COWPTE, "freed", "L7"),
    ],
)
def test_each_invariant_catches_its_mutation(variant, mutation, inv):
    r = fork(LAYOUT_OF[variant], variant)
    assert r.invariants.ok and not _check(r)
    mms, m, t = _after(r)
    if mutation == "share":
        t = dataclasses.replace(t, share=t.share + 1)
    elif mutation == "wp":
        t = dataclasses.replace(t, wp=(t.wp[0], _mutant(t.wp[1], 0, False)))
    elif mutation == "refcount":
        m = dataclasses.replace(m, folio_refcount=_mutant(m.folio_refcount, 3, 7))
    elif mutation in ("rss", "anon_rss"):
        mms = dict(mms, child=dataclasses.replace(mms["child"], rss=_mutant(mms["child"].rss, 0, 3)))
    elif mutation == "pending_child_table":
        mms = dict(mms, child=dataclasses.replace(mms["child"], table_index=np.array([0]), pte=mms["parent"].pte))
    elif mutation == "exclusive":
        m = dataclasses.replace(m, page_flags=_mutant(m.page_flags, 2, PAGE_ANON_EXCLUSIVE))
    elif mutation == "freed":
        m = dataclasses.replace(m, folio_flags=_mutant(m.folio_flags, 1, m.folio_flags[1] | FOLIO_FREED))
    got = _check(r, mms, m, t)
    assert any(v.startswith(inv + ":") for v in got), got


def test_a_fork_result_with_a_violation_is_reported():
    r = fork("normal*8 none*504", ODF_COWPTE)
    bad = dataclasses.replace(r.memory, folio_refcount=_mutant(r.memory.folio_refcount, 0, 9))
    r2 = dataclasses.replace(r, parent=gpusim.AddressSpace(r.parent.mm, bad))
    rep = check_lazy_fork(gpusim.parse_layout("normal*8 none*504"), r2)
    assert not rep.ok and rep.violations[0].startswith("L3:")


# --- what is refused ----------------------------------------------------------------------------------------------


def test_what_the_fast_engines_leave_to_the_reference():
    assert set(LAZY) <= set(VARIANTS) and set(LAZY) <= set(COMPILED_VARIANTS)
    assert gpusim.fork(gpusim.parse_layout("normal*8"), ODF_COWPTE, backend="cpu").backend == "cpu"
    for layout, variant, inject in (
        ("thp:pin", ASYNC_FORK, ()),
        ("thp:pin", ODF_COWPTE, ()),
        ("normal*8", ODF_COWPTE, ("fail@copy#1",)),
        ("normal*508 folio8:pin none*500", ODF_COWPTE, ()),  # a pinned folio across two tables
    ):
        space = gpusim.parse_layout(layout)
        with pytest.raises(ReferenceOnly, match="runs on the reference backend"):
            gpusim.fork(space, variant, backend="cpu", inject=list(inject))
        got = gpusim.fork(space, variant, inject=list(inject))  # auto: the reference's fork, checked
        assert got.backend == "reference" and got.invariants.ok, (layout, variant)


def test_steps_that_are_refused():
    with pytest.raises(WritesError, match="async-fork only"):
        fork("normal*8", ODF_COWPTE, "parent:pin.fast:0")
    with pytest.raises(WritesError, match="child2 is the child of a parent:fork"):
        fork("normal*8", ASYNC_FORK, "child2:0; parent:fork")
    with pytest.raises(WritesError, match="once"):
        fork("normal*8", ASYNC_FORK, "parent:fork; parent:fork")
    with pytest.raises(WritesError, match="reference backend only"):
        gpusim.fork(gpusim.parse_layout("normal*8"), "linux-6.18", backend="cpu", writes="parent:fork")
    with pytest.raises(Unsupported, match="odfc:MULTI_VMA"):
        fork("normal*8 vma normal*8", ODF_COWPTE)


def test_eager_variants_count_sync_steps_and_do_nothing():
    r = fork("normal*8", "linux-6.18", "child:sync; parent:pin:0")
    w = r.write_phase
    assert w.invariants.ok and nonzero(w.counts["parent"]) == {"copy": 1}
    assert w.dma["pinned"] == 1 and w.dma["parent_diverged"] == 0


# --- the lazy designs' forks on the fast engines, equal to the reference -----------------------------------------

FAST_LAZY = LAZY


@pytest.mark.parametrize("variant", FAST_LAZY)
def test_lazy_forks_on_the_fast_engines_equal_the_reference(backend, variant):
    from differential import compare
    from strategies import injections

    @budget(40, backend)
    @given(lw=st.one_of(layouts(max_width=1100), whole_table_layouts()), oracle=oracles(), data=st.data())
    def run(lw, oracle, data):
        layout, width = lw
        assume(small_enough(backend, layout))
        inject = data.draw(injections(width))
        try:
            gpusim.fork(gpusim.parse_layout(layout), variant, backend="reference", oracle=oracle, inject=inject)
        except Unsupported as e:
            with pytest.raises((Unsupported, ReferenceOnly)) as got:  # the same, or left to the reference
                gpusim.fork(gpusim.parse_layout(layout), variant, backend=backend, oracle=oracle, inject=inject)
            assert isinstance(got.value, ReferenceOnly) or got.value.reason == e.reason
            return
        except ValueError:
            return
        try:
            compare(layout, variant, oracle, inject, backend)
        except ReferenceOnly:
            pass  # a fork the fast engines leave to the reference (test_what_the_fast_engines_leave_to_the_reference)

    run()


_WHOLE_TOKENS = [
    "normal",
    "pinned",
    "normal:ro",
    "pinned:ro",
    "pinned:nonex",
    "normal:clean",
    "normal:ref=1024",
    "zero",
    "folio4:pin",
    "folio8",
    "none",
    "none*100",
    "normal*200",
    "pinned:hwpoison",
    "swap",
    "migw",
]


@st.composite
def whole_table_layouts(draw):
    """Layouts of whole tables in one private anonymous VMA (the tables the lazy designs share or defer), a THP
    first at times: (layout, width)."""
    tokens = ["thp"] if draw(st.integers(0, 4)) == 0 else []
    tokens += draw(st.lists(st.sampled_from(_WHOLE_TOKENS), min_size=1, max_size=12))
    width = sum(
        int(t.split("*")[1]) if "*" in t else 512 if t == "thp" else 4 if "folio4" in t else 8 if "folio8" in t else 1
        for t in tokens
    )
    return " ".join(tokens) + (f" none*{-width % 512}" if width % 512 else ""), width + (-width % 512)


def small_enough(backend, layout):
    return backend != "cudasim" or gpusim.parse_layout(layout).nr_ptes <= 4096


@pytest.mark.parametrize("variant", FAST_LAZY)
def test_writes_after_a_fast_lazy_fork_equal_the_reference(variant):
    layout, writes = "pinned*4 normal*4 none*1016 swap:cnt=62", "parent:pin:600; parent:all; child:sync:1; child:all"
    ref = fork(layout, variant, writes, oracle="every:3")
    got = gpusim.fork(gpusim.parse_layout(layout), variant, backend="cpu", writes=writes, oracle="every:3")
    assert got.backend == "cpu" and ref.digest == got.digest
    a, b = ref.write_phase, got.write_phase
    assert a.counts == b.counts and a.table_counts == b.table_counts and a.dma == b.dma
    assert digest(a.parent.mm, a.child, a.memory, a.tables) == digest(b.parent.mm, b.child, b.memory, b.tables)


# --- Z-j: a second fork (parent:fork, its child child2) ------------------------------------------------------------


@pytest.mark.parametrize(
    "variant, writes, share, refs, parent_tables",
    [
        # share 3; parent:0 unshares (3 -> 2) and copies page 0 away: page 1 keeps one reference per object (2)
        (ODF_PAPER, "parent:fork", [3], (1, 1), {"table.share": 1, "pmd.wrprotect": 0}),
        (ODF_PAPER, "parent:fork; parent:0", [2], (1, 2), {"table.cow_copy": 1}),
        # share 3, every page accounted three times; parent:0 unshares and copies (ref 3 at the copy)
        (ODF_COWPTE, "parent:fork", [3], (3, 3), {"table.share": 1, "pte.acct": 8}),
        (ODF_COWPTE, "parent:fork; parent:0", [2], (2, 3), {"table.cow_copy": 1}),
        # child 1 synced; the second fork defers again; parent:0 copies for child 2 first (ref 3), then copies
        (ASYNC_FORK, "child:sync; parent:fork; parent:0", [], (2, 3), {"async.defer": 1, "async.copy.fault": 1}),
        # without the sync (U): the first child's tables are copied first (trigger vma)
        (ASYNC_FORK, "parent:fork; parent:0", [], (2, 3), {"async.copy.vma": 1, "async.copy.fault": 1}),
    ],
)
def test_zj_a_second_fork(variant, writes, share, refs, parent_tables):
    r = fork("normal*8 none*504", variant, writes)
    w = r.write_phase
    assert w.outcome == "ok" and w.invariants.ok, w.invariants.violations
    assert w.tables.share.tolist() == share
    assert (int(w.memory.folio_refcount[0]), int(w.memory.folio_refcount[1])) == refs
    assert has(w.table_counts["parent"], {"fork.base": 1, **parent_tables})
    assert w.child2 is not None and w.child2.nr_vmas == 1


def test_a_second_fork_unshares_before_an_injected_zap():
    """odf-cowpte's ``parent:fork`` takes the fork's own rule for an injected zap in a window (the parent's table
    unshared first, spec 12.3): without it the zap changed a table child2 shares (found by the soak)."""
    layout, inject = "thp none none*7 normal:ref=1023 none*503", ["@EC#1: zap(0)"]
    r = fork(layout, ODF_COWPTE, "parent:all; parent:fork; child2:all; parent:all", inject=inject)
    assert r.write_phase.outcome == "ok" and r.write_phase.invariants.ok, r.write_phase.invariants.violations


def test_zj_children_write_and_exit_after_a_second_fork():
    for variant in (*LAZY, "linux-6.18", "linux-5.8"):
        r = fork("pinned*2 normal*6 none*504", variant, "parent:fork; parent:0; child2:all; child:all; child2:exit")
        w = r.write_phase
        assert w.outcome == "ok" and w.invariants.ok, (variant, w.invariants.violations)
        assert sum(w.counts["child2"].values()) == 8 and w.child2.nr_tables == 0


def sweep_designs(tmp_path, size: str, after: str) -> dict:
    """A sweep of linux-6.18 and the three designs over an anonymous heap of ``size`` with 5 % pinned, ``after`` the
    fork (a ``fork:`` key): its rows by variant."""
    from inproc import run_cli

    f = tmp_path / "designs.yaml"
    f.write_text(
        "name: designs\nseed: 1\nrepeat: 1\nbackend: auto\n"
        f"workload: {{kind: anon, size: {size}, pinned_fraction: 0.05}}\n"
        f"fork: {{variant: linux-6.18, {after}}}\n"
        "sweep:\n  grid:\n    fork.variant: [linux-6.18, odf-paper, odf-cowpte, async-fork]\n"
    )
    code, _, err = run_cli("sweep", f, "--out", tmp_path / "out")
    assert code == 0, err
    return {r["fork.variant"]: r for r in gpusim.load_results(tmp_path / "out").to_pylist()}


def test_a_sweep_over_the_designs(tmp_path):
    """A sweep file takes the lazy designs beside the others, with a write phase; each row has the design's counts
    and its write latency."""
    rows = sweep_designs(tmp_path, "2MiB", "writes: {parent: 1.0, child: 0.0, order: parent_first}")
    assert {v: r["outcome"] for v, r in rows.items()} == dict.fromkeys(("linux-6.18", *LAZY), "ok")
    assert rows["odf-paper"]["count.table.share"] >= 1 and rows["async-fork"]["count.async.defer"] >= 1
    assert all(r["write_latency_ns"] > 0 for r in rows.values())
    assert rows["odf-paper"]["write.table_ns.parent"] > 0 and rows["linux-6.18"]["write.table_ns.parent"] is None
    assert rows["odf-paper"]["page_table_bytes.child"] == 0 < rows["linux-6.18"]["page_table_bytes.child"]


def test_a_sweep_of_episodes_over_the_designs_and_its_plot(tmp_path):
    """Episodes after the designs' forks in a sweep: the table work and the child's sync as columns, and
    ``stall_vs_total.png`` drawn."""
    from gpusim.jobs.plots import plot_results

    rows = sweep_designs(tmp_path, "4MiB", "episode: {duration: 0.2s, rate: 20000, resolution: 0.1s}")
    assert all(r["episode.invariants_ok"] for r in rows.values())
    assert rows["odf-paper"]["episode.table_ns.parent"] > 0 and rows["async-fork"]["episode.child_sync_ns"] > 0
    assert rows["linux-6.18"]["episode.child_sync_ns"] is None
    assert "stall_vs_total.png" in [p.name for p in plot_results(tmp_path / "out")]


# --- episodes after a lazy fork (spec 11.6 with spec 12's table work) ----------------------------------------------

EPISODE_LAYOUT = "pinned*4 normal*1020 normal*1024"  # four tables, the first with pinned pages


@pytest.mark.parametrize("variant", LAZY)
def test_an_episode_that_writes_every_page_once_is_the_write_phase(variant):
    """A sequential episode writing each of the parent's pages once, the child exiting at its end, leaves the
    states of the write phase ``parent:all; child:exit`` (async-fork: after the child's sync), its table work the
    same cost events, and a request that did table work is priced with it."""
    r = fork(EPISODE_LAYOUT, variant, episode="duration=1s, rate=2048, pattern=sequential")
    ep = r.episode
    writes = ("child:sync; " if variant == ASYNC_FORK else "") + "parent:all; child:exit"
    w = fork(EPISODE_LAYOUT, variant, writes).write_phase
    assert ep.invariants.ok, ep.invariants.violations
    assert digest(ep.parent.mm, ep.child, ep.memory) == digest(w.parent.mm, w.child, w.memory)
    both = ("parent", "child_sync") if variant == ASYNC_FORK else ("parent",)
    total = [sum(ep.table_counts[x][e] for x in both) for e in ("table.cow_copy", "async.copy.child")]
    assert total == [sum(w.table_counts[x][e] for x in both) for e in ("table.cow_copy", "async.copy.child")]
    rep, work = ep.report, ep.table_work[0]
    assert rep["table_ns"]["parent"] > 0 or variant == ASYNC_FORK
    if variant != ASYNC_FORK:  # the first write to each table the fork shared carries its unshare
        assert len(work) == (r.tables.of("parent")[0] >= 0).sum() > 0
        cost = event_costs(load_profile(None))
        most = max(priced_events(c, cost) for _, c, _, _ in work)
        assert rep["write_latency_ns"]["max"] == pytest.approx(rep["write_latency_ns"]["p50"] + most)  # all copies


def test_async_fork_episode_child_sync_races_the_parent():
    """async-fork's child copies its deferred tables from the fork on, each taking its priced time: a parent that
    writes fast copies the tables the child has not reached yet (spec 12.4), one that writes slowly finds them
    copied; every table is copied once either way."""
    layout = "normal*8192"  # 16 tables
    fast = fork(layout, ASYNC_FORK, episode="duration=0.01s, rate=1000000, pattern=uniform").episode
    slow = fork(layout, ASYNC_FORK, episode="duration=1s, rate=100, pattern=sequential").episode
    for ep in (fast, slow):
        assert ep.invariants.ok, ep.invariants.violations
        copies = [ep.table_counts[x]["async.copy.fault"] + ep.table_counts[x]["async.copy.child"] for x in WHO]
        assert sum(copies) == 16
    assert fast.table_counts["parent"]["async.copy.fault"] > 0 and fast.report["table_ns"]["parent"] > 0
    assert slow.table_counts["parent"]["async.copy.fault"] == 0 and slow.report["child_sync_ns"] > 0


WHO = ("parent", "child_sync")


def test_the_cli_prints_an_episodes_table_work():
    from inproc import run_cli

    code, out, err = run_cli(
        "fork", "--layout", "pinned*4 normal*2044", "--variant", "odf-paper", "--episode", "duration=0.2s, rate=5000"
    )
    assert code == 0, err
    assert "table work: parent" in out and "L1-L7" in out


@pytest.mark.parametrize(
    "layout, runs",
    [
        ("normal*100 pinned normal*411", True),  # a fallback in a table of its own
        ("normal*504 folio8:pin none*504", True),  # a pinned large folio in the rest of one table
        ("normal*504 folio8:pin:nonex=0,1 none*504", True),  # ... two of its pages accounted before the fallback
        ("normal*508 folio8:pin none*500", False),  # ... across two tables: the reference's
    ],
)
def test_odf_cowpte_in_place_equals_its_fork_on_copies(layout, runs):
    """A space handed over to odf-cowpte's fast fork (its arrays the fork's to write) gives the fork on copies of
    them, and refuses what that refuses (the map counts it reads after the pass hold what the pass accounted)."""
    from gpusim.model.state import AddressSpace

    space = gpusim.parse_layout(layout)
    kw = dict(backend="cpu", check=False)
    mm = dataclasses.replace(space.mm, **{f: np.array(getattr(space.mm, f)) for f in ("pte", "table_index")})
    mem = dataclasses.replace(
        space.memory, **{f: np.array(a) for f, a in vars(space.memory).items() if hasattr(a, "shape")}
    )
    handed = AddressSpace.handed_over(mm, mem)
    if not runs:
        with pytest.raises(ReferenceOnly):
            gpusim.fork(space, ODF_COWPTE, **kw)
        with pytest.raises(ReferenceOnly):
            gpusim.fork(handed, ODF_COWPTE, **kw)  # (auto would not run it again on the written arrays)
        return
    want = gpusim.fork(space, ODF_COWPTE, **kw)
    got = gpusim.fork(handed, ODF_COWPTE, **kw)
    assert got.digest == want.digest and got.counts == want.counts and got.child_rss == want.child_rss
    assert got.counts["table.share_fallback"] == 1 and got.parent.mm.pte is mm.pte  # it ran in place
