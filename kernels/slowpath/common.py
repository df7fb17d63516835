"""What every variant's compiled ``copy_pte_range`` shares (spec 2, ported from :mod:`gpusim.engines.reference.common`):
the count rows and their indices, the item's state row, passes, checks and windows, and the operations done with both
locks held: share, install a copy, non-present entries, swap counts and continuations, allocation from the item's
segment.
"""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable

from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels.flags import (
    FOLIO_ANON,
    FOLIO_FREED,
    FOLIO_SWAPBACKED,
    MM_ANONPAGES,
    MM_SWAPENTS,
    NULL_ENTRY,
    PAGE_ANON_EXCLUSIVE,
    RSS_COUNTS,
    RSS_NAMES,
    SWAP_MAP_MAX,
    VM_SHARED,
    VM_WRITE,
    events,
    is_cow_mapping,
    mm_counter,
    swap_cap,
)
from gpusim.kernels.folio import folio_maybe_dma_pinned
from gpusim.kernels.pte import (
    KIND_DEVICE_PRIVATE,
    KIND_MIGRATION,
    KIND_SWAP,
    as_u64,
    is_readable_exclusive_migration_entry,
    is_writable_device_private_entry,
    is_writable_migration_entry,
    make_readable_device_private_entry,
    make_readable_migration_entry,
    mk_pte,
    pte_kind,
    pte_pfn,
    pte_set_pfn,
    pte_special,
    pte_swp_clear_exclusive,
    pte_swp_exclusive,
    pte_write,
    pte_wrprotect,
    swp_offset,
)
from gpusim.kernels.rules import share_child_pte
from gpusim.kernels.table import lock_break_at


def inline(fn):
    """``register_jitable`` inlined by LLVM into its callers (as :func:`gpusim.kernels.table.entry_jitable`): the
    helpers below run once per entry or per pass, and a call would pass every array of the groups by value."""
    return register_jitable(forceinline=True)(fn)


# Columns of the per-table count rows of the slow path: cost events and summary counters by name, then the child's
# rss deltas and whether the child went on the swapoff list.
SLOW_COUNTS = (
    events(
        "table.call",
        "table.alloc",
        "pass",
        "restart.",
        "check",
        "pte.",
        "batch.",
        "copy.",
        "swapcont.",
        "pmd.",
        "lock_breaks",
        "shared",
        "pin_shared",
        but=("copy.alloc_fail",),
    )
    + RSS_COUNTS
    + ("swapoff",)
)


SLOW_INDEX = {name: i for i, name in enumerate(SLOW_COUNTS)}  # each constant below takes its number by name


S_CALL = SLOW_INDEX["table.call"]


S_FRAME_BREAK = SLOW_INDEX["pte.frame_break"]


S_ALLOC = SLOW_INDEX["table.alloc"]


S_PASS = SLOW_INDEX["pass"]


S_CHECK = SLOW_INDEX["check"]


S_LB = SLOW_INDEX["lock_breaks"]


S_RESTART_LB = SLOW_INDEX["restart.lb"]


S_RESTART_SC = SLOW_INDEX["restart.sc"]


S_RESTART_EC = SLOW_INDEX["restart.ec"]


S_NONE = SLOW_INDEX["pte.none"]


S_SHARE = SLOW_INDEX["pte.share"]


S_SPECIAL = SLOW_INDEX["pte.special"]


S_WRPROTECT = SLOW_INDEX["pte.wrprotect"]


S_EXCL_CLEAR = SLOW_INDEX["pte.excl_clear"]


S_SWAP = SLOW_INDEX["pte.swap"]


S_MIGRATION = SLOW_INDEX["pte.migration"]


S_DEVPRIV = SLOW_INDEX["pte.devpriv"]


S_BATCH_START = SLOW_INDEX["batch.start"]


S_BATCH_PTE = SLOW_INDEX["batch.pte"]


S_BATCH_REFUSED = SLOW_INDEX["batch.refused"]


S_COPY_ALLOC = SLOW_INDEX["copy.alloc"]


S_MEMCPY = SLOW_INDEX["copy.memcpy"]


S_INSTALL = SLOW_INDEX["copy.install"]


S_FREE_UNUSED = SLOW_INDEX["copy.free_unused"]


S_RECHECK = SLOW_INDEX["copy.recheck"]


S_DUPLICATE_CALL = SLOW_INDEX["copy.duplicate_call"]


S_CONT_ATOMIC = SLOW_INDEX["swapcont.atomic"]


S_CONT_KERNEL = SLOW_INDEX["swapcont.kernel"]


S_CONT_ATTACH = SLOW_INDEX["swapcont.attach"]


S_CONT_NULL = SLOW_INDEX["swapcont.null"]


S_PMD_SHARE = SLOW_INDEX["pmd.share"]


S_PMD_SPLIT = SLOW_INDEX["pmd.split"]


S_SHARED = SLOW_INDEX["shared"]


S_PIN_SHARED = SLOW_INDEX["pin_shared"]


S_RSS = SLOW_INDEX["rss.anon"]


S_SWAPOFF = SLOW_INDEX["swapoff"]


assert [SLOW_INDEX[f"rss.{k}"] for k in RSS_NAMES] == list(range(S_RSS, S_RSS + len(RSS_NAMES)))  # S_RSS + counter


NR_SLOW_COUNTS = len(SLOW_COUNTS)


ENOSPC = -28  # internal: no room for another early copy (the engine's bound was wrong)


# oops codes: (function, reason) of gpusim.engines.reference.Oops
OOPS_RANGE_OVERRUN, OOPS_CHILD_PTE_BUSY, OOPS_PUT_PAGE_UNDERFLOW, OOPS_OLD_PAGE_NULL, OOPS_BAD_ENTRY = 1, 2, 3, 4, 5


OOPS = {
    OOPS_RANGE_OVERRUN: ("copy_pte_range", "RANGE_OVERRUN"),
    OOPS_CHILD_PTE_BUSY: ("set_pte_at", "CHILD_PTE_BUSY"),
    OOPS_PUT_PAGE_UNDERFLOW: ("put_page", "UNDERFLOW"),
    OOPS_OLD_PAGE_NULL: ("page_duplicate", "OLD_PAGE_NULL"),
    OOPS_BAD_ENTRY: ("copy_nonpresent_pte", "BAD_ENTRY"),
}


# sp.state, one row per item (a table, or a THP) of the slow path: its allocator (the next folio and pfn of its
# segment of the new rows, and the segment's end), where its next log records go, an oops's address
ST_NEXT_FOLIO, ST_NEXT_PFN, ST_INSTALLS, ST_DUPLICATES, ST_OOPS_ADDR, ST_END_FOLIO = 0, 1, 2, 3, 4, 5


NR_STATE = 6


# why a pass ended (the window that follows it)
R_END, R_LB, R_SC, R_EC, R_HWPOISON = 0, 1, 2, 3, 4


# copy_one_pte's results (COPY_MM_*)
DONE, SWAP_CONT, BREAK_COW = 0, 1, 2


NONE = -2  # "no pfn / no slot" (NULL_ENTRY, -1, is a slot value of its own)


@inline
def oops(sp, code, a):
    """Record an oops at address ``a``; returns its code (for ``return oops(...)``)."""
    sp.state[ST_OOPS_ADDR] = a
    return code


@inline
def set_dst(r, base, a, v, tab, sp):
    """``set_pte_at`` on the child; 0, or the oops of a busy child entry."""
    if tab.cpte[r, a - base] != 0:
        return oops(sp, OOPS_CHILD_PTE_BUSY, a)
    tab.cpte[r, a - base] = as_u64(v)
    return 0


@inline
def begin_pass(r, a, e, tab, acc, sp):
    """Map or allocate the child table and take both locks (the allocation never fails here)."""
    if not tab.cexists[r]:
        tab.cexists[r] = True
        acc[S_ALLOC] += 1
    if a == e:
        return oops(sp, OOPS_RANGE_OVERRUN, a)
    acc[S_PASS] += 1
    return 0


@inline
def check(s, k, fork_seq, nb, acc):
    """The lock-break test: the oracle's answer at the ``k``-th check of the call starting at ``s``."""
    acc[S_CHECK] += 1
    brk = lock_break_at(s, k, nb, fork_seq)
    if brk:
        acc[S_LB] += 1
    return brk


@inline
def window(reason, acc):
    """The interval between two passes: count the restart (no events are injected here)."""
    if reason == R_LB:
        acc[S_RESTART_LB] += 1
    elif reason == R_SC:
        acc[S_RESTART_SC] += 1
    elif reason == R_EC:
        acc[S_RESTART_EC] += 1


@inline
def share_present(r, base, a, n, vmaflags, anon_exclusive, tab, mem, acc, sp):
    """Copy ``n`` present PTEs by reference (``n > 1`` only for a linux-6.18 batch)."""
    first = tab.ppte[r, a - base]
    w_any = False
    for j in range(n):
        w_any = w_any or pte_write(tab.ppte[r, a - base + j])
    child = share_child_pte(first, w_any, (vmaflags & VM_SHARED) != 0)
    special = pte_special(first)
    pfn0 = np.int64(pte_pfn(first))
    if not special:
        f = mem.page_folio[pfn0]
        mem.folio_refcount[f] += n
        acc[S_RSS + mm_counter(mem.folio_flags[f])] += n
        anon = (mem.folio_flags[f] & FOLIO_ANON) != 0
        for j in range(n):
            mem.page_mapcount[pfn0 + j] += 1
            if anon_exclusive and anon and (mem.page_flags[pfn0 + j] & PAGE_ANON_EXCLUSIVE) != 0:
                mem.page_flags[pfn0 + j] &= ~np.uint8(PAGE_ANON_EXCLUSIVE)
                acc[S_EXCL_CLEAR] += 1
        acc[S_SHARED] += n
        if mem.folio_true_pins[f] > 0:
            acc[S_PIN_SHARED] += n
    else:
        acc[S_SPECIAL] += 1
    if is_cow_mapping(vmaflags) and w_any:
        for j in range(n):
            tab.ppte[r, a - base + j] = pte_wrprotect(tab.ppte[r, a - base + j])
        child = pte_wrprotect(child)
        acc[S_WRPROTECT] += n
    for j in range(n):
        st = set_dst(r, base, a + j, child if special else pte_set_pfn(child, np.uint64(pfn0 + j)), tab, sp)
        if st != 0:
            return st
    return 0


@inline
def share_one(r, base, a, vmaflags, anon_exclusive, tab, mem, acc, sp):
    """The single-PTE share path of every variant: ``share_present`` and its count."""
    special = pte_special(tab.ppte[r, a - base])
    st = share_present(r, base, a, 1, vmaflags, anon_exclusive, tab, mem, acc, sp)
    if st == 0 and not special:
        acc[S_SHARE] += 1
    return st


@inline
def install_copy(r, base, a, q, src_pfn, vmaflags, anon_exclusive, tab, mem, acc, sp):
    """Map an early copy ``q`` (content already set) into the child, and log it (address, pfn, source pfn, the
    VMA's flags)."""
    f = mem.page_folio[q]
    mem.folio_flags[f] |= np.uint8(FOLIO_ANON | FOLIO_SWAPBACKED)
    mem.page_mapcount[q] = 1
    mem.page_flags[q] = PAGE_ANON_EXCLUSIVE if anon_exclusive else 0
    st = set_dst(r, base, a, mk_pte(q, (vmaflags & VM_WRITE) != 0, True, True, False), tab, sp)
    if st != 0:
        return st
    acc[S_RSS + MM_ANONPAGES] += 1
    acc[S_INSTALL] += 1
    i = sp.state[ST_INSTALLS]
    sp.installs[i, 0] = a
    sp.installs[i, 1] = q
    sp.installs[i, 2] = src_pfn
    sp.installs[i, 3] = vmaflags
    sp.state[ST_INSTALLS] = i + 1
    return 0


@inline
def add_swap_count_continuation(slot, kernel, mem, acc):
    """``swapcont.atomic`` under the locks, ``swapcont.kernel`` in a window; the allocation always succeeds here."""
    acc[S_CONT_KERNEL if kernel else S_CONT_ATOMIC] += 1
    if slot == NULL_ENTRY:  # xu-v1 stale call: no swap device resolves it
        acc[S_CONT_NULL] += 1
        return 0
    if mem.swap_count[slot] % (SWAP_MAP_MAX + 1) != SWAP_MAP_MAX:
        return 0  # first byte not full
    if mem.swap_count[slot] < swap_cap(mem.swap_levels[slot]):
        return 0
    mem.swap_levels[slot] += 1  # the page now belongs to the slot
    acc[S_CONT_ATTACH] += 1
    return 0


@inline
def swap_duplicate(slot, mem, acc):
    """Under the locks, with atomic continuations; True when the count was taken."""
    while True:
        if mem.swap_count[slot] < swap_cap(mem.swap_levels[slot]):
            mem.swap_count[slot] += 1
            return True
        if add_swap_count_continuation(slot, False, mem, acc) < 0:
            return False


@inline
def copy_nonpresent_pte(r, base, a, vmaflags, anon_exclusive, tab, mem, acc, sp):
    """Returns (status, the slot that needs a swap-count continuation or ``NONE``)."""
    e = tab.ppte[r, a - base]
    kind = pte_kind(e)
    cow = is_cow_mapping(vmaflags)
    if kind == KIND_SWAP:
        slot = np.int64(swp_offset(e))
        if not swap_duplicate(slot, mem, acc):
            return 0, slot
        acc[S_SWAPOFF] = 1
        if anon_exclusive and pte_swp_exclusive(e):
            tab.ppte[r, a - base] = pte_swp_clear_exclusive(e)
        st = set_dst(r, base, a, pte_swp_clear_exclusive(e), tab, sp)
        if st == 0:
            acc[S_RSS + MM_SWAPENTS] += 1
            acc[S_SWAP] += 1
        return st, NONE
    if kind == KIND_MIGRATION:  # no reference and no mapcount: the page is under migration
        f = mem.page_folio[np.int64(swp_offset(e))]
        acc[S_RSS + mm_counter(mem.folio_flags[f])] += 1
        if cow and (is_writable_migration_entry(e) or is_readable_exclusive_migration_entry(e)):
            tab.ppte[r, a - base] = make_readable_migration_entry(e)  # the parent is downgraded too
        st = set_dst(r, base, a, tab.ppte[r, a - base], tab, sp)
        if st == 0:
            acc[S_MIGRATION] += 1
        return st, NONE
    if kind == KIND_DEVICE_PRIVATE:
        pfn = np.int64(swp_offset(e))
        f = mem.page_folio[pfn]
        mem.folio_refcount[f] += 1
        mem.page_mapcount[pfn] += 1
        acc[S_RSS + mm_counter(mem.folio_flags[f])] += 1
        if anon_exclusive:
            mem.page_flags[pfn] &= ~np.uint8(PAGE_ANON_EXCLUSIVE)
        if cow and is_writable_device_private_entry(e):
            tab.ppte[r, a - base] = make_readable_device_private_entry(e)
        st = set_dst(r, base, a, tab.ppte[r, a - base], tab, sp)
        if st == 0:
            acc[S_DEVPRIV] += 1
            if mem.folio_true_pins[f] > 0:
                acc[S_PIN_SHARED] += 1
        return st, NONE
    return oops(sp, OOPS_BAD_ENTRY, a), NONE


@inline
def allocate_page(mem, acc, sp):
    """An early-copy page: a new order-0 folio, refcount 1, not yet anon (spec 1.4), the next of the item's
    segment. Returns its pfn, or ``NONE`` when the segment is full (the engine gives each item room for every early
    copy it can make: :func:`item_objects`)."""
    f = sp.state[ST_NEXT_FOLIO]
    pfn = sp.state[ST_NEXT_PFN]
    if f >= sp.state[ST_END_FOLIO] or f >= mem.folio_order.shape[0] or pfn >= mem.page_folio.shape[0]:
        return NONE  # no room left: the engine's bound was wrong (ENOSPC)
    acc[S_COPY_ALLOC] += 1
    sp.state[ST_NEXT_FOLIO] = f + 1
    sp.state[ST_NEXT_PFN] = pfn + 1
    mem.folio_order[f] = 0
    mem.folio_refcount[f] = 1
    mem.folio_pincount[f] = 0
    mem.folio_true_pins[f] = 0
    sp.folio_pmd_mapcount[f] = 0
    mem.folio_flags[f] = 0
    mem.folio_first_pfn[f] = pfn
    mem.page_folio[pfn] = f
    mem.page_mapcount[pfn] = 0
    mem.page_flags[pfn] = 0
    sp.page_content[pfn] = 0
    return pfn


@inline
def put_folio(f, a, mem, sp):
    if mem.folio_refcount[f] < 1:
        return oops(sp, OOPS_PUT_PAGE_UNDERFLOW, a)
    mem.folio_refcount[f] -= 1
    return 0


@inline
def free_unused(q, a, mem, acc, sp):
    """Free a never-installed early-copy page."""
    f = mem.page_folio[q]
    if mem.folio_flags[f] & FOLIO_FREED:
        return oops(sp, OOPS_PUT_PAGE_UNDERFLOW, a)
    st = put_folio(f, a, mem, sp)
    if st != 0:
        return st
    mem.folio_flags[f] |= np.uint8(FOLIO_FREED)
    acc[S_FREE_UNUSED] += 1
    return 0


@inline
def copy_content(q, src_pfn, acc, sp):
    """The copy moment: the new page takes the source page's content (``copy_user_highpage``)."""
    sp.page_content[q] = sp.page_content[src_pfn]
    acc[S_MEMCPY] += 1


@inline
def maybe_pinned(f, mem, large_order):
    """``page_maybe_dma_pinned`` / ``folio_maybe_dma_pinned`` (spec 1.6)."""
    return folio_maybe_dma_pinned(mem.folio_order[f], mem.folio_refcount[f], mem.folio_pincount[f], large_order)
