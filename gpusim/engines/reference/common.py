"""What every variant's ``copy_pte_range`` shares: passes, progress and checks (spec 2.1), and the operations done with
both locks held (spec 2.2): share, install a copy, non-present entries, swap counts and their continuations,
allocation.
"""

from __future__ import annotations

from gpusim.engines.context import Oops, PassRecord
from gpusim.engines.reference.context import CopyContext
from gpusim.engines.reference.events import apply_event
from gpusim.kernels import pte as P
from gpusim.kernels.flags import (
    ENOMEM,
    FOLIO_ANON,
    FOLIO_FREED,
    FOLIO_SWAPBACKED,
    MM_ANONPAGES,
    MM_SWAPENTS,
    NULL_ENTRY,
    PAGE_ANON_EXCLUSIVE,
    PTRS_PER_TABLE,
    SWAP_MAP_MAX,
    VM_SHARED,
    VM_WRITE,
    mm_counter,
    swap_cap,
)

# --- spec 2.1: pass, progress and check ------------------------------------------------------------------------


def allocate(c: CopyContext, point: str) -> bool:
    """One allocation attempt at ``point``; consults the injection plan (spec 5.1)."""
    n = c.alloc_n.get(point, 0) + 1
    c.alloc_n[point] = n
    if c.fc.plan.alloc_fails(c.fc.fork_seq, c.call_start, point, n):
        c.last_failed = (point, n)
        return False
    return True


def begin_pass(c: CopyContext, a: int) -> bool:
    """Map or allocate the child table and take both locks."""
    if c.t not in c.fc.child.tables:
        if not allocate(c, "ptetable"):
            return False
        c.fc.child.tables[c.t] = [0] * PTRS_PER_TABLE
        c.counts["table.alloc"] += 1
        c.fc.note_child_table(c.t)
    if a == c.end:
        raise Oops("copy_pte_range", a, "RANGE_OVERRUN")
    c.counts["pass"] += 1
    c.cur = PassRecord(a)
    c.rec.passes.append(c.cur)
    return True


def check(c: CopyContext, a: int) -> bool:
    """The lock-break test; the caller has just reset progress to 0."""
    k = c.checks
    c.checks += 1
    brk = c.fc.oracle(c.fc.fork_seq, c.call_start, k)
    c.rec.checks.append((k, brk, a))
    c.counts["check"] += 1
    if brk:
        c.counts["lock_breaks"] += 1
    return brk


def window(c: CopyContext, reason: str) -> None:
    """The interval between two passes: count the restart and apply the events injected there (spec 5.2)."""
    c.counts["restart." + reason.lower()] += 1
    n = c.win_n[reason] = c.win_n.get(reason, 0) + 1
    n_any = c.win_n["ANY"] = c.win_n.get("ANY", 0) + 1
    c.rec.windows.append((reason, n))
    for _, ev in c.fc.plan.window_events(c.call_start, reason, n, n_any):
        apply_event(c.fc, c.call_start, reason, ev.name, ev.addr)


# --- spec 2.2: shared operations -------------------------------------------------------------------------------


def share_present(c: CopyContext, a: int, n: int = 1) -> None:
    """Copy ``n`` present PTEs by reference (``n > 1`` only for a linux-6.18 batch)."""
    m = c.m
    first = c.src(a)
    w_any = any(P.pte_write(c.src(a + j)) for j in range(n))
    child = P.pte_mkold(P.pte_mkwrite(first) if w_any else P.pte_wrprotect(first))
    if c.vma.flags & VM_SHARED:
        child = P.pte_mkclean(child)
    special = P.pte_special(first)
    pfn0 = P.pte_pfn(first)
    if not special:
        f = m.page_folio[pfn0]
        m.folio_refcount[f] += n
        c.fc.child.rss[mm_counter(m.folio_flags[f])] += n
        anon = m.folio_flags[f] & FOLIO_ANON
        for j in range(n):
            m.page_mapcount[pfn0 + j] += 1
            if c.v.anon_exclusive and anon and m.page_flags[pfn0 + j] & PAGE_ANON_EXCLUSIVE:
                m.page_flags[pfn0 + j] &= ~PAGE_ANON_EXCLUSIVE
                c.counts["pte.excl_clear"] += 1
        c.counts["shared"] += n
        if m.folio_true_pins[f] > 0:
            c.counts["pin_shared"] += n
    else:
        c.counts["pte.special"] += 1
    if c.cow and w_any:
        for j in range(n):
            c.set_src(a + j, P.pte_wrprotect(c.src(a + j)))
        child = P.pte_wrprotect(child)
        c.counts["pte.wrprotect"] += n
    for j in range(n):
        c.set_dst(a + j, child if special else P.pte_set_pfn(child, pfn0 + j))


def install_copy(c: CopyContext, a: int, q: int, src_pfn: int) -> None:
    """Map an early copy ``q`` (a pfn; content already set) into the child."""
    m = c.m
    f = m.page_folio[q]
    m.folio_flags[f] |= FOLIO_ANON | FOLIO_SWAPBACKED
    m.page_mapcount[q] = 1
    m.page_flags[q] = PAGE_ANON_EXCLUSIVE if c.v.anon_exclusive else 0
    c.set_dst(a, P.mk_pte(q, c.vma.flags & VM_WRITE, True, True, False))
    c.fc.child.rss[MM_ANONPAGES] += 1
    c.counts["copy.install"] += 1
    c.rec.installs.append((a, q, src_pfn, c.fc.trace.tick()))
    c.handled(a, "copy")


def copy_nonpresent_pte(c: CopyContext, a: int) -> int | None:
    """Returns None when done, else the slot that needs a swap-count continuation."""
    m, child = c.m, c.fc.child
    e = c.src(a)
    kind = P.pte_kind(e)
    if kind == P.KIND_SWAP:
        slot = P.swp_offset(e)
        if not swap_duplicate(c, slot):
            return slot
        child.on_swapoff_list = True
        if c.v.anon_exclusive and P.pte_swp_exclusive(e):
            c.set_src(a, P.pte_swp_clear_exclusive(e))
        c.set_dst(a, P.pte_swp_clear_exclusive(e))
        child.rss[MM_SWAPENTS] += 1
        c.counts["pte.swap"] += 1
        c.handled(a, "swap")
    elif kind == P.KIND_MIGRATION:  # no reference and no mapcount: the page is under migration
        f = m.page_folio[P.swp_offset(e)]
        child.rss[mm_counter(m.folio_flags[f])] += 1
        if c.cow and (P.is_writable_migration_entry(e) or P.is_readable_exclusive_migration_entry(e)):
            c.set_src(a, P.make_readable_migration_entry(e))  # the parent is downgraded too
        c.set_dst(a, c.src(a))
        c.counts["pte.migration"] += 1
        c.handled(a, "migration")
    elif kind == P.KIND_DEVICE_PRIVATE:
        pfn = P.swp_offset(e)
        f = m.page_folio[pfn]
        m.folio_refcount[f] += 1
        m.page_mapcount[pfn] += 1
        child.rss[mm_counter(m.folio_flags[f])] += 1
        if c.v.anon_exclusive:
            m.page_flags[pfn] &= ~PAGE_ANON_EXCLUSIVE
        if c.cow and P.is_writable_device_private_entry(e):
            c.set_src(a, P.make_readable_device_private_entry(e))
        c.set_dst(a, c.src(a))
        c.counts["pte.devpriv"] += 1
        if m.folio_true_pins[f] > 0:
            c.counts["pin_shared"] += 1
        c.handled(a, "devpriv")
    else:
        raise Oops("copy_nonpresent_pte", a, "BAD_ENTRY")
    return None


def swap_duplicate(c: CopyContext, slot: int) -> bool:
    """Under the locks; may try atomic continuations."""
    m = c.m
    while True:
        if m.swap_count[slot] < swap_cap(m.swap_levels[slot]):
            m.swap_count[slot] += 1
            return True
        if add_swap_count_continuation(c, slot, "swapcont.atomic") < 0:
            return False


def add_swap_count_continuation(c: CopyContext, slot: int, point: str) -> int:
    """``swapcont.atomic`` runs under the locks, ``swapcont.kernel`` in a window."""
    m = c.m
    c.counts[point] += 1
    if point == "swapcont.kernel":
        c.rec.kernel_calls += 1
    ok = allocate(c, point)  # always attempted first, then checked
    if slot == NULL_ENTRY:  # xu-v1 stale call: no swap device resolves it
        c.counts["swapcont.null"] += 1
        return 0
    if m.swap_count[slot] % (SWAP_MAP_MAX + 1) != SWAP_MAP_MAX:
        return 0  # first byte not full
    if not ok:
        return ENOMEM
    if m.swap_count[slot] < swap_cap(m.swap_levels[slot]):
        return 0
    m.swap_levels[slot] += 1  # the page now belongs to the slot
    c.counts["swapcont.attach"] += 1
    return 0


def allocate_page(c: CopyContext) -> int | None:
    """Allocate an early-copy page at the ``copy`` point: a new order-0 folio's pfn, or None."""
    if not allocate(c, "copy"):
        c.counts["copy.alloc_fail"] += 1
        return None
    c.counts["copy.alloc"] += 1
    return c.m.alloc_folio()


def free_unused(c: CopyContext, q: int, a: int) -> None:
    """Free a never-installed early-copy page."""
    f = c.m.page_folio[q]
    if c.m.folio_flags[f] & FOLIO_FREED:
        raise Oops("put_page", a, "UNDERFLOW")
    c.put_folio(f, a)
    c.m.folio_flags[f] |= FOLIO_FREED
    c.counts["copy.free_unused"] += 1


def copy_content(c: CopyContext, q: int, src_pfn: int) -> None:
    """The copy moment: the new page takes the source page's content (``copy_user_highpage``)."""
    c.m.page_content[q] = c.m.page_content[src_pfn]
    c.counts["copy.memcpy"] += 1


def share_one(c: CopyContext, a: int, e: int) -> None:
    """The single-PTE share path of every variant: ``share_present`` plus its count and trace."""
    share_present(c, a)
    c.counts["pte.share"] += not P.pte_special(e)
    c.handled(a, "special" if P.pte_special(e) else "share")


def handle_none(c: CopyContext, a: int) -> None:
    c.counts["pte.none"] += 1
    c.handled(a, "none")
