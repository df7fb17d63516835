"""The lazy fork designs of spec 12 at fork time, on the reference's containers: ``odf-paper`` shares a table with no
per-page work (``copy_page_range_tfork``), ``odf-cowpte`` shares it after accounting every page, or falls back to a
copy (``copy_cow_pte_range``, ``recover_pte_range``), ``async-fork`` defers its copy (``async_fork_cpr_fast``) and
copies it later (``async_copy``: the child's start, or the parent's first fault or pin on it).

A table object is a row list: two mms that share it hold the same list (:class:`TableStore` keeps the share counts),
so a write to a shared entry (``odf-cowpte``'s accounting pass) is seen by both, as the kernel's one table is. A
variant says what its fork does with a whole table (:attr:`gpusim.model.variants.Variant.table_fork`);
:data:`FORK_TABLE` maps that to the function here, and the write phase's unshares live beside them
(:func:`odfp_unshare`, :func:`odfc_unshare`, :func:`async_copy`).
"""

from __future__ import annotations

import numpy as np

from gpusim.engines.context import CopyFailed, ForkContext, MMState, Oops, VmaView
from gpusim.engines.reference.common import add_swap_count_continuation, allocate, swap_duplicate, window
from gpusim.engines.reference.context import CopyContext
from gpusim.engines.reference.huge import copy_huge_pmd_first
from gpusim.engines.reference.linux_6_18 import needs_copy
from gpusim.kernels import pte as P
from gpusim.kernels.flags import (
    BACKING_ANON,
    FOLIO_ANON,
    FOLIO_FREED,
    MM_SWAPENTS,
    PAGE_ANON_EXCLUSIVE,
    PTRS_PER_TABLE,
    VM_SHARED,
    VM_WRITE,
    is_cow_mapping,
    mm_counter,
)
from gpusim.model.tables import TableObjects


class Unsupported(ValueError):
    """A layout or a step that the spec's model of a lazy design rejects (spec 12.2, 12.3: "engines MUST reject"),
    named by the spec's reason (``odfp:NONPRESENT``)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class TableStore:
    """The share counts of the table objects (spec 12.1), keyed by their row list. A row that was never shared has
    none (its count is 1); a shared one keeps its count, down to 1, until its last slot goes."""

    def __init__(self):
        self.share: dict[int, int] = {}
        self.rows: dict[int, list] = {}  # keeps every counted row alive (its id is its key)

    def count(self, row: list) -> int:
        return self.share.get(id(row), 1)

    def add(self, row: list) -> int:
        """One more PMD slot points at ``row``: its new count."""
        n = self.count(row) + 1
        self.share[id(row)] = n
        self.rows[id(row)] = row
        return n

    def drop(self, row: list) -> int:
        """A slot stops pointing at ``row``: its new count (1: the table is one mm's again; 0: it is gone)."""
        n = self.count(row) - 1
        if n <= 1:
            self.share.pop(id(row), None)
            self.rows.pop(id(row), None)
        else:
            self.share[id(row)] = n
        return n


def objects_of(states: dict[str, MMState], store: TableStore) -> TableObjects:
    """The frozen :class:`~gpusim.model.tables.TableObjects` of the mms ``states`` (role -> state)."""
    ids: dict[int, int] = {}
    obj, wp = [], []
    for st in states.values():
        ts = sorted(st.tables)
        obj.append(
            np.array(
                [ids.setdefault(id(st.tables[t]), len(ids)) if id(st.tables[t]) in store.share else -1 for t in ts],
                np.int64,
            )
        )
        wp.append(np.array([t in st.wp for t in ts], bool))
    share = np.zeros(len(ids), np.int32)
    for key, k in ids.items():
        share[k] = store.share[key]
    pending = np.array(sorted(states["parent"].pending), np.int64)
    return TableObjects(tuple(states), tuple(obj), tuple(wp), share, pending)


def link(objs: TableObjects | None, states: dict[str, MMState]) -> TableStore:
    """Make the mms ``states`` (made from the frozen mms) share their rows as ``objs`` says, with its W bits and
    pending tables; the store of their share counts."""
    store = TableStore()
    if objs is None:
        return store
    rows: dict[int, list] = {}
    for role, st in states.items():
        if role not in objs.roles:
            continue
        o, w = objs.of(role)
        for t, k, wbit in zip(sorted(st.tables), o.tolist(), w.tolist()):
            if k >= 0:
                row = rows.setdefault(k, st.tables[t])
                st.tables[t] = row
                store.share[id(row)] = int(objs.share[k])
                store.rows[id(row)] = row
            if wbit:
                st.wp.add(t)
    states["parent"].pending = set(objs.pending.tolist())
    return store


# --- the layouts a design rejects --------------------------------------------------------------------------------


def whole_table(t: int, start: int, end: int) -> bool:
    """The call ``[start, end)`` covers all of table ``t``."""
    return start == PTRS_PER_TABLE * t and end == PTRS_PER_TABLE * (t + 1)


def odfp_shares(vma: VmaView, t: int, start: int, end: int, huge: bool) -> bool:
    """Whether ``odf-paper``'s fork shares table ``t`` of ``vma`` (``copy_page_range_tfork``): a whole table of a
    private anonymous VMA that the parent maps by a PTE table (the ``heap`` attribute is not modelled: False)."""
    return vma.backing == BACKING_ANON and not vma.flags & VM_SHARED and not huge and whole_table(t, start, end)


def check_layout(fc: ForkContext, plan) -> None:
    """Reject, before the fork, what the design's model does not cover (:class:`Unsupported`)."""
    parent, table_fork = fc.parent, fc.v.table_fork
    for k in range(plan.nr_calls):
        t, s, e = int(plan.call_table[k]), int(plan.call_start[k]), int(plan.call_end[k])
        vma = parent.vmas[int(plan.call_vma[k])]
        if table_fork == "share" and odfp_shares(vma, t, s, e, bool(plan.call_huge[k])):
            if not vma.flags & VM_WRITE:
                raise Unsupported("odfp:NO_VM_WRITE", f"table {t} would be shared from a VMA without VM_WRITE")
            row = parent.tables[t]
            bad = [i for i, v in enumerate(row) if v and P.pte_kind(v) != P.KIND_PRESENT]
            if bad:
                raise Unsupported(
                    "odfp:NONPRESENT",
                    f"table {t} would be shared and holds a non-present entry at {PTRS_PER_TABLE * t + bad[0]} "
                    "(odf-paper's code has no path for one)",
                )
        if table_fork == "share_accounted":
            lo, hi = PTRS_PER_TABLE * t, PTRS_PER_TABLE * (t + 1)
            if sum(1 for v in parent.vmas if v.start < hi and v.end > lo) > 1:
                raise Unsupported(
                    "odfc:MULTI_VMA", f"table {t} meets more than one VMA (spec 12.11 U-4: one VMA per table)"
                )


# --- odf-paper (spec 12.2) ---------------------------------------------------------------------------------------


def odfp_fork_table(fc: ForkContext, vma: VmaView, t: int, start: int, end: int, copy_table) -> None:
    """``copy_page_range_tfork`` for one table: share it, or copy it as linux-5.8 (``copy_table``)."""
    if not odfp_shares(vma, t, start, end, t in fc.parent.pmds):
        copy_table(fc, vma, t, start, end)
        return
    row = fc.parent.tables[t]
    if vma.flags & VM_WRITE and t not in fc.parent.wp:
        fc.parent.wp.add(t)
        fc.counts["pmd.wrprotect"] += 1
    fc.store.add(row)
    fc.child.tables[t] = row
    if t in fc.parent.wp:
        fc.child.wp.add(t)
    fc.note_child_table(t)
    fc.counts["table.share"] += 1
    count_pins_shared(fc, row)


def count_pins_shared(fc: ForkContext, row: list) -> None:
    """``pin_shared``: the entries of a table shared with the child that map a truly pinned page."""
    m = fc.m
    for v in row:
        if P.pte_kind(v) == P.KIND_PRESENT and not P.pte_special(v):
            if m.folio_true_pins[m.page_folio[P.pte_pfn(v)]] > 0:
                fc.counts["pin_shared"] += 1


# --- odf-cowpte (spec 12.3) --------------------------------------------------------------------------------------


def odfc_fork_table(fc: ForkContext, vma: VmaView, t: int, start: int, end: int, copy_table) -> None:
    """``copy_cow_pte_range``: the child's PMD points at the parent's table, every entry accounted in place; a page
    that must be copied early makes the rest of the table an ordinary copy (:func:`odfc_fallback`)."""
    c = CopyContext(fc, vma, t, start, end)
    if copy_huge_pmd_first(c):
        return
    row = fc.parent.tables[t]
    fc.store.add(row)
    fc.child.tables[t] = row  # pmd_install; no table allocated
    fc.note_child_table(t)
    a = start
    while a < end:  # no lock-break test in this loop
        i = a - PTRS_PER_TABLE * t
        v = row[i]
        if v == 0:
            a += 1
            continue
        kind = P.pte_kind(v)
        if kind == P.KIND_DEVICE_PRIVATE:  # unshareable (v3+ changelog; U): the rest is copied
            odfc_fallback(c, row, a, copy_table)
            return
        if kind != P.KIND_PRESENT:
            slot = copy_nonpresent_pte_into_self(c, a, row, i)
            if slot is not None:  # the locks dropped: a continuation in a window, then the same entry again
                if c.fc.plan.window_events(c.call_start, "SC", c.win_n.get("SC", 0) + 1, c.win_n.get("ANY", 0) + 1):
                    raise Unsupported("odfc:WINDOW_EVENT", "an event in a window of a shared table's accounting pass")
                window(c, "SC")
                if add_swap_count_continuation(c, slot, "swapcont.kernel") < 0:
                    raise Unsupported(
                        "odfc:SWAPCONT_ENOMEM", "ENOMEM in a swap continuation of a shared table (spec 12.3: U)"
                    )
                continue
            a += 1
            continue
        if not P.pte_special(v) and not odfc_account(c, v):
            odfc_fallback(c, row, a, copy_table)
            return
        w = P.pte_write(v) and not c.cow
        fc.counts["pte.wrprotect"] += int(bool(P.pte_write(v)) and bool(c.cow))
        e2 = P.pte_mkold(P.pte_mkwrite(v) if w else P.pte_wrprotect(v))
        row[i] = P.pte_mkclean(e2) if vma.flags & VM_SHARED else e2
        a += 1
    if t not in fc.parent.wp:
        fc.parent.wp.add(t)
        fc.counts["pmd.wrprotect"] += 1
    fc.child.wp.add(t)
    fc.counts["table.share"] += 1


def odfc_account(c: CopyContext, v: int) -> bool:
    """One present normal entry accounted for the child (``page_try_dup_anon_rmap``); False when the page must be
    copied early (the references taken are returned)."""
    m, fc = c.m, c.fc
    pfn = P.pte_pfn(v)
    f = m.page_folio[pfn]
    anon = m.folio_flags[f] & FOLIO_ANON
    m.folio_refcount[f] += 1
    if anon and needs_copy(c, f) and m.page_flags[pfn] & PAGE_ANON_EXCLUSIVE:
        m.folio_refcount[f] -= 1
        return False
    m.page_mapcount[pfn] += 1
    if anon and m.page_flags[pfn] & PAGE_ANON_EXCLUSIVE:
        m.page_flags[pfn] &= ~PAGE_ANON_EXCLUSIVE
        fc.counts["pte.excl_clear"] += 1
    fc.child.rss[mm_counter(m.folio_flags[f])] += 1
    fc.counts["pte.acct"] += 1
    fc.counts["shared"] += 1
    if m.folio_true_pins[f] > 0:
        fc.counts["pin_shared"] += 1
    return True


def copy_nonpresent_pte_into_self(c: CopyContext, a: int, row: list, i: int) -> int | None:
    """A swap or migration entry of a shared table accounted for the child in place (spec 2.2 with the child's
    entry the parent's); the slot that needs a continuation, else None."""
    m, child = c.m, c.fc.child
    v = row[i]
    if P.pte_kind(v) == P.KIND_SWAP:
        slot = P.swp_offset(v)
        if not swap_duplicate(c, slot):
            return slot
        child.on_swapoff_list = True
        row[i] = P.pte_swp_clear_exclusive(v)
        child.rss[MM_SWAPENTS] += 1
        c.counts["pte.swap"] += 1
        return None
    f = m.page_folio[P.swp_offset(v)]  # migration: no reference, no mapcount
    child.rss[mm_counter(m.folio_flags[f])] += 1
    if c.cow and (P.is_writable_migration_entry(v) or P.is_readable_exclusive_migration_entry(v)):
        row[i] = P.make_readable_migration_entry(v)
    c.counts["pte.migration"] += 1
    return None


def odfc_fallback(c: CopyContext, row: list, r: int, copy_table) -> None:
    """``recover_pte_range``: the child gets its own table after all, the entries before ``r`` (already accounted)
    copied verbatim, and the rest copied by linux-6.18's machine (never batched) from ``r``."""
    fc, t = c.fc, c.t
    if not allocate(c, "ptetable"):
        raise Unsupported("odfc:FALLBACK_ENOMEM", "ENOMEM allocating the fallback table (spec 12.3: U)")
    base = PTRS_PER_TABLE * t
    n = [v if base + j < r else 0 for j, v in enumerate(row)]
    fc.child.tables[t] = n
    fc.store.drop(row)  # the parent's PMD stays writable
    fc.counts["table.alloc"] += 1
    fc.counts["table.share_fallback"] += 1
    fc.counts["table.recover_pte"] += sum(1 for v in n if v)
    copy_table(fc, c.vma, t, r, c.end)


# --- async-fork (spec 12.4) --------------------------------------------------------------------------------------


def async_fork_table(fc: ForkContext, vma: VmaView, t: int, start: int, end: int, copy_table) -> None:
    """``async_fork_cpr_fast`` for one table: a whole table of an anonymous COW VMA is deferred (its PMD
    write-protected, the child given none), anything else copied now as linux-6.18."""
    if not (is_cow_mapping(vma.flags) and vma.backing == BACKING_ANON):
        copy_table(fc, vma, t, start, end)
        return
    if t in fc.parent.pmds and copy_huge_pmd_first(CopyContext(fc, vma, t, start, end)):
        return  # shared; a split THP's table is deferred as any other
    if not whole_table(t, start, end):
        copy_table(fc, vma, t, start, end)
        return
    fc.parent.wp.add(t)
    fc.parent.pending.add(t)
    fc.note_child_table(t)  # the child's upper levels are copied; its PMD stays empty
    fc.counts["async.defer"] += 1


def async_copy(fc: ForkContext, t: int, trigger: str, copy_table) -> bool:
    """``copy_pte_range(CPR_SLOW)`` of a deferred table: a linux-6.18 call of the fork (its number, oracle and
    injections) over the whole table, made now; False on ENOMEM. ``trigger``: child, fault, gup or vma."""
    parent = fc.parent
    if t not in parent.pending:
        return True
    a = PTRS_PER_TABLE * t
    vma = next(v for v in parent.vmas if v.start <= a < v.end)
    try:
        copy_table(fc, vma, t, a, a + PTRS_PER_TABLE)
    except CopyFailed:
        return False
    parent.pending.discard(t)
    parent.wp.discard(t)
    fc.counts[f"async.copy.{trigger}"] += 1
    fc.counts["pmd.restore"] += 1
    return True


def async_release(fc: ForkContext) -> None:
    """After a failed deferred copy: every pending table released without a copy (``async.abort``)."""
    parent = fc.parent
    fc.counts["async.abort"] += 1
    for t in sorted(parent.pending):
        parent.wp.discard(t)
        fc.counts["pmd.restore"] += 1
    parent.pending.clear()


# --- unshares: the first fault on a shared table (spec 12.2, 12.3) ----------------------------------------------


def odfp_unshare(fc: ForkContext, x: MMState, t: int, vma: VmaView) -> None:
    """``tfork_one_pte_table``: mm ``x`` gets its own copy of the table, every entry write-protected (in a COW
    mapping) and old, every page referenced and mapped once more and charged to ``x``; the object loses ``x``'s slot
    and is freed (charged to ``x`` too) when that was its last."""
    m, row = fc.m, x.tables[t]
    new = []
    for i, v in enumerate(row):
        if v == 0:
            new.append(0)
            continue
        a = PTRS_PER_TABLE * t + i
        if P.pte_kind(v) != P.KIND_PRESENT:
            raise Oops("odfp_unshare", a, "NONPRESENT")  # the layout check keeps these out of shared tables
        v2 = P.pte_mkold(v)
        if is_cow_mapping(vma.flags) and P.pte_write(v):
            v2 = P.pte_wrprotect(v2)
            fc.counts["pte.wrprotect"] += 1
        if not P.pte_special(v):
            pfn = P.pte_pfn(v)
            f = m.page_folio[pfn]
            if not m.folio_flags[f] & FOLIO_ANON:
                raise Oops("odfp_unshare", a, "NOT_ANON")  # BUG_ON(!PageAnon)
            m.folio_refcount[f] += 1
            m.page_mapcount[pfn] += 1
            x.rss[mm_counter(m.folio_flags[f])] += 1
            fc.counts["pte.acct"] += 1
        new.append(v2)
    x.tables[t] = new
    x.wp.discard(t)
    fc.counts["table.cow_copy"] += 1
    fc.counts["table.cow_pte"] += sum(1 for v in new if v)
    if fc.store.drop(row) == 0:
        odfp_free_table(fc, row, x.rss)


def odfc_unshare(fc: ForkContext, x: MMState, t: int) -> None:
    """``break_cow_pte``: the last sharer makes its PMD writable again (``table.reuse``); any other gets a verbatim
    copy of the table, with no change to a page, a slot or an rss counter."""
    row = x.tables[t]
    x.wp.discard(t)
    if fc.store.count(row) == 1:
        fc.counts["table.reuse"] += 1
        return
    x.tables[t] = list(row)
    fc.store.drop(row)
    fc.counts["table.cow_copy"] += 1
    fc.counts["table.cow_pte"] += sum(1 for v in row if v)


def watch_events(fc: ForkContext) -> None:
    """What a fork of the design does before an injected window event changes an entry (every fork's context,
    a write phase's ``parent:fork`` too): odf-cowpte unshares the parent's table first
    (:func:`odfc_unshare_if_shared`)."""
    if fc.v.table_fork == "share_accounted":
        fc.event_hook = lambda t: odfc_unshare_if_shared(fc, t)


def odfc_unshare_if_shared(fc: ForkContext, t: int) -> None:
    """Before an injected event changes the parent's entry in table ``t`` (a zap, reclaim's unmap, a pin): the
    parent's table is unshared first, as COW PTE breaks a shared table before a zap, an rmap walk or GUP (spec 12.3)."""
    row = fc.parent.tables.get(t)
    if row is not None and id(row) in fc.store.share:
        odfc_unshare(fc, fc.parent, t)


# --- the teardown of a child that holds shared tables ------------------------------------------------------------


def release_shared_tables(fc: ForkContext, child: MMState, rss: list) -> None:
    """Exit or ENOMEM teardown of ``child``, for its slots that the design treats as shared (spec 12.2, 12.3
    "Exit"): they are removed from ``child.tables``; what remains is torn down as private tables (spec 5.4).
    ``rss``: the counters the teardown debits. ``odf-paper``: a slot with W = 0 drops its object's count, and the
    last one frees it; ``odf-cowpte``: a slot of a table still shared de-accounts its entries in place."""
    paper = fc.v.table_fork == "share"
    for t in sorted(child.tables):
        row = child.tables[t]
        shared = t in child.wp if paper else id(row) in fc.store.share
        child.wp.discard(t)
        if not shared:
            continue
        del child.tables[t]
        if not paper:
            fc.counts["table.zap_shared"] += 1
            deaccount(fc, row, rss)
            fc.store.drop(row)
        elif fc.store.drop(row) == 0:
            odfp_free_table(fc, row, rss)


def deaccount(fc: ForkContext, row: list, rss: list) -> None:
    """Every entry of a table drops what it holds for one mm, the entries left as they are (``odf-cowpte``'s
    teardown of a shared table; ``odf-paper``'s free): a present page its mapping and reference (freed at 0), a swap
    entry its slot count, a migration entry its rss."""
    m = fc.m
    for v in row:
        if v == 0:
            continue
        fc.counts["teardown.pte"] += 1
        kind = P.pte_kind(v)
        if kind == P.KIND_PRESENT and not P.pte_special(v):
            pfn = P.pte_pfn(v)
            f = m.page_folio[pfn]
            m.page_mapcount[pfn] -= 1
            if m.folio_refcount[f] < 1:
                raise Oops("put_page", -1, "UNDERFLOW")
            m.folio_refcount[f] -= 1
            rss[mm_counter(m.folio_flags[f])] -= 1
            if m.folio_refcount[f] == 0:
                m.folio_flags[f] |= FOLIO_FREED
                fc.counts["teardown.free"] += 1
        elif kind == P.KIND_SWAP:
            m.swap_count[P.swp_offset(v)] -= 1
            rss[MM_SWAPENTS] -= 1
        elif kind == P.KIND_MIGRATION:
            rss[mm_counter(m.folio_flags[m.page_folio[P.swp_offset(v)]])] -= 1


def odfp_free_table(fc: ForkContext, row: list, rss: list) -> None:
    """``zap_one_pte_table`` and the free of an ``odf-paper`` table object whose last slot went (charged to the mm
    whose ``rss`` is given: a quirk of the code, spec 12.2)."""
    deaccount(fc, row, rss)
    fc.counts["table.free"] += 1


FORK_TABLE = {"share": odfp_fork_table, "share_accounted": odfc_fork_table, "defer": async_fork_table}
