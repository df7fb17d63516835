"""The slow paths of ``copy_pte_range`` compiled: the per-table state machines of the five variants (spec 3), the
early copies of maybe-pinned pages with their passes and restarts, and swap-count continuations, as
``register_jitable`` functions that numba compiles (``gpusim.kernels.cpu.host_tables`` runs them over the tables
that need them: those that share no folio or swap slot with another in parallel, the others one after the other in
address order; see the last section).

Each function here is the compiled twin of the function of :mod:`gpusim.reference` with the same name, step for
step, with the same counts: the reference remains the spec in code, and the differential tests hold the two equal.
What they leave out: window events and allocation-failure injections (tests of those run the reference's state
machines in the Python host loop, :mod:`gpusim.hostloop`), so every allocation succeeds here; and the trace, of
which only the early copies are logged (``sp.installs``, ``sp.duplicates``) for the invariant checker.

Arrays come in the groups of :mod:`gpusim.kernels.args` (``tab``, ``calls``, ``mem``, ``nb``) and
:class:`gpusim.kernels.args.SlowArrays` (``sp``: the page contents, the state of the allocator and the logs). A
function returns 0, a negative errno (``ENOMEM``, ``EAGAIN``, ``EHWPOISON``) or an oops code (``OOPS_*``, the
address in ``sp.state[ST_OOPS_ADDR]``); counts go to the table's row ``acc`` (:data:`SLOW_COUNTS`).
"""

import numpy as np
from numba.extending import register_jitable

from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels.args import SlowArrays
from gpusim.kernels.atomics import atomic_max, atomic_min
from gpusim.kernels.flags import (
    BREAK_AT,
    EAGAIN,
    EHWPOISON,
    EIO,
    ENOMEM,
    FOLIO_ANON,
    FOLIO_DEVICE_PRIVATE,
    FOLIO_FREED,
    FOLIO_SWAPBACKED,
    M_5_8,
    M_5_10,
    M_6_18,
    M_XU_V1,
    MM_ANONPAGES,
    MM_SWAPENTS,
    NULL_ENTRY,
    PAGE_ANON_EXCLUSIVE,
    PAGE_HWPOISON,
    PTRS_PER_TABLE,
    RSS_NAMES,
    SWAP_MAP_MAX,
    VM_SHARED,
    VM_WRITE,
    is_cow_mapping,
    mm_counter,
    swap_cap,
)
from gpusim.kernels.folio import folio_maybe_dma_pinned
from gpusim.kernels.pte import (
    KIND_DEVICE_PRIVATE,
    KIND_MIGRATION,
    KIND_PRESENT,
    KIND_SWAP,
    as_u64,
    is_readable_exclusive_migration_entry,
    is_writable_device_private_entry,
    is_writable_migration_entry,
    make_readable_device_private_entry,
    make_readable_migration_entry,
    mk_pte,
    pte_dirty,
    pte_kind,
    pte_mkold,
    pte_none,
    pte_pfn,
    pte_present,
    pte_set_pfn,
    pte_special,
    pte_swp_clear_exclusive,
    pte_swp_exclusive,
    pte_write,
    pte_wrprotect,
    pte_young,
    swp_offset,
)
from gpusim.kernels.rules import share_child_pte
from gpusim.kernels.table import folio_pte_batch, lock_break_at


def inline(fn):
    """``register_jitable`` inlined by LLVM into its callers (as :func:`gpusim.kernels.table.entry_jitable`): the
    helpers below run once per entry or per pass, and a call would pass every array of the groups by value."""
    return register_jitable(forceinline=True)(fn)


# Columns of the per-table count rows of the slow path: cost events and summary counters by name, then the child's
# rss deltas and whether the child went on the swapoff list.
SLOW_COUNTS = (
    "table.call",
    "table.alloc",
    "pass",
    "check",
    "lock_breaks",
    "restart.lb",
    "restart.sc",
    "restart.ec",
    "pte.none",
    "pte.share",
    "pte.special",
    "pte.wrprotect",
    "pte.excl_clear",
    "pte.swap",
    "pte.migration",
    "pte.devpriv",
    "batch.start",
    "batch.pte",
    "batch.refused",
    "copy.alloc",
    "copy.memcpy",
    "copy.install",
    "copy.free_unused",
    "copy.recheck",
    "copy.duplicate_call",
    "swapcont.atomic",
    "swapcont.kernel",
    "swapcont.attach",
    "swapcont.null",
    "pmd.share",
    "pmd.split",
    "shared",
    "pin_shared",
    "rss.anon",
    "rss.file",
    "rss.shmem",
    "rss.swapents",
    "swapoff",
)
SLOW_INDEX = {name: i for i, name in enumerate(SLOW_COUNTS)}  # each constant below takes its number by name
S_CALL = SLOW_INDEX["table.call"]
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
# oops codes: (function, reason) of gpusim.reference.Oops
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


# --- 3.1 linux-5.8 ---------------------------------------------------------------------------------------------


@register_jitable
def copy_pte_range_linux_5_8(r, base, s, e, vmaflags, vp, tab, mem, nb, acc, sp):
    fork_seq = tab.fork_seq[r]
    a, progress, pending, k = s, 0, NONE, 0  # progress is not reset per pass; it is 0 there anyway
    while True:
        st = begin_pass(r, a, e, tab, acc, sp)
        if st != 0:
            return st
        reason = R_END
        while True:
            if progress >= BREAK_AT:
                progress = 0
                brk = check(s, k, fork_seq, nb, acc)
                k += 1
                if brk:
                    reason = R_LB
                    break
            v = tab.ppte[r, a - base]
            if pte_none(v):
                acc[S_NONE] += 1
                progress += 1
            elif not pte_present(v):
                st, pending = copy_nonpresent_pte(r, base, a, vmaflags, vp.anon_exclusive, tab, mem, acc, sp)
                if st != 0:
                    return st
                if pending != NONE:
                    reason = R_SC
                    break
                progress += 8
            else:
                pending = NONE
                st = share_one(r, base, a, vmaflags, vp.anon_exclusive, tab, mem, acc, sp)
                if st != 0:
                    return st
                progress += 8
            a += 1
            if a == e:
                break
        if pending != NONE:  # locks dropped; may repeat on a later pass (stale)
            if add_swap_count_continuation(pending, True, mem, acc) < 0:
                return ENOMEM
            progress = 0
        if a == e:
            return 0
        window(reason, acc)


# --- 3.2 xu-v1 and 3.3 xu-v1-oleg -------------------------------------------------------------------------------
# The v1 patch's struct copy_mm_data is carried as a small array ``d``: entry (a slot or NULL_ENTRY),
# cow_old_page (a pfn holding one folio reference, or NONE), cow_oldpte, cow_new_page (a pfn, or NONE).
D_ENTRY, D_OLD_PAGE, D_OLDPTE, D_NEW_PAGE = 0, 1, 2, 3


@inline
def wipe_copy_mm_data(d):
    d[D_ENTRY] = NULL_ENTRY
    d[D_OLD_PAGE] = NONE
    d[D_OLDPTE] = 0
    d[D_NEW_PAGE] = NONE


@inline
def copy_one_pte(r, base, a, vmaflags, vp, d, tab, mem, acc, sp):
    """The xu series' per-PTE function; returns (status, DONE / SWAP_CONT / BREAK_COW)."""
    v = tab.ppte[r, a - base]
    if not pte_present(v):
        st, slot = copy_nonpresent_pte(r, base, a, vmaflags, vp.anon_exclusive, tab, mem, acc, sp)
        if st != 0 or slot == NONE:
            return st, DONE
        d[D_ENTRY] = slot
        return 0, SWAP_CONT
    if not pte_special(v):
        pfn = np.int64(pte_pfn(v))
        f = mem.page_folio[pfn]
        mem.folio_refcount[f] += 1  # the child's reference is taken first
        if tab.has_pinned[r] and is_cow_mapping(vmaflags) and pte_write(v) and maybe_pinned(f, mem, vp.large_order):
            d[D_OLD_PAGE] = pfn  # the reference travels with it
            d[D_OLDPTE] = np.int64(v)
            return 0, BREAK_COW  # parent and child PTE untouched
        mem.folio_refcount[f] -= 1  # handed back; share_present takes it
    return share_one(r, base, a, vmaflags, vp.anon_exclusive, tab, mem, acc, sp), DONE


@inline
def page_duplicate(a, d, mem, acc, sp):
    """In the window, no locks: allocate the copy and fill it (the xu copy moment)."""
    acc[S_DUPLICATE_CALL] += 1
    old = d[D_OLD_PAGE]
    if old == NONE:
        return oops(sp, OOPS_OLD_PAGE_NULL, a)
    q = allocate_page(mem, acc, sp)
    if q == NONE:
        return ENOSPC
    copy_content(q, old, acc, sp)
    i = sp.state[ST_DUPLICATES]
    sp.duplicates[i, 0] = q
    sp.duplicates[i, 1] = old
    sp.state[ST_DUPLICATES] = i + 1
    d[D_NEW_PAGE] = q
    st = put_folio(mem.page_folio[old], a, mem, sp)  # always released
    d[D_OLD_PAGE] = NONE
    return st


@inline
def pte_install_copied_page(r, base, a, vmaflags, vp, d, tab, mem, acc, sp):
    """Both locks held: install the prepared copy if the parent PTE is unchanged, else drop it. Returns (status,
    installed)."""
    acc[S_RECHECK] += 1
    q = d[D_NEW_PAGE]
    d[D_NEW_PAGE] = NONE  # mapped or freed: the pointer is never read again
    oldpte = as_u64(d[D_OLDPTE])
    if tab.ppte[r, a - base] == oldpte:  # pte_same on the full value
        src = np.int64(pte_pfn(oldpte))
        return install_copy(r, base, a, q, src, vmaflags, vp.anon_exclusive, tab, mem, acc, sp), True
    return free_unused(q, a, mem, acc, sp), False


@register_jitable
def copy_pte_range_xu_v1(r, base, s, e, vmaflags, vp, tab, mem, nb, acc, sp):
    # long: spec 3.2's state machine in one function, as the patch has it (the stale BREAK_COW it can carry)
    fork_seq = tab.fork_seq[r]
    d = sp.copy_mm_data
    wipe_copy_mm_data(d)
    a, ret, wipe, k = s, DONE, True, 0
    while True:
        if wipe:
            wipe_copy_mm_data(d)  # the restart label wipes d (entry becomes NULL_ENTRY)
        st = begin_pass(r, a, e, tab, acc, sp)
        if st != 0:
            return st
        progress = 0
        reason = R_END
        while True:
            if progress >= BREAK_AT:
                progress = 0
                brk = check(s, k, fork_seq, nb, acc)
                k += 1
                if brk:
                    reason = R_LB
                    break
            installed = False
            if d[D_NEW_PAGE] != NONE:
                st, installed = pte_install_copied_page(r, base, a, vmaflags, vp, d, tab, mem, acc, sp)
                if st != 0:
                    return st
            if installed:
                progress += 1  # ret stays BREAK_COW
            elif pte_none(tab.ppte[r, a - base]):
                acc[S_NONE] += 1
                progress += 1
            else:
                st, ret = copy_one_pte(r, base, a, vmaflags, vp, d, tab, mem, acc, sp)
                if st != 0:
                    return st
                if ret != DONE:
                    reason = R_SC if ret == SWAP_CONT else R_EC
                    break
                progress += 8
            a += 1
            if a == e:
                break
        if ret == SWAP_CONT:  # locks dropped
            if add_swap_count_continuation(d[D_ENTRY], True, mem, acc) < 0:
                return ENOMEM
        elif ret == BREAK_COW:
            st = page_duplicate(a, d, mem, acc, sp)
            if st != 0:
                return st
            window(reason, acc)
            wipe = False
            continue  # no end test on this path
        if a == e:
            return 0
        window(reason, acc)
        wipe = True


@register_jitable
def copy_pte_range_xu_v1_oleg(r, base, s, e, vmaflags, vp, tab, mem, nb, acc, sp):
    # long: spec 3.3's state machine in one function, as Oleg restructured it (the install hoisted before the loop)
    fork_seq = tab.fork_seq[r]
    d = sp.copy_mm_data
    wipe_copy_mm_data(d)
    a, ret, k = s, DONE, 0
    while True:
        st = begin_pass(r, a, e, tab, acc, sp)
        if st != 0:
            return st
        progress = 0
        reason = R_END
        run = True
        if ret == BREAK_COW:
            ret = DONE
            st, installed = pte_install_copied_page(r, base, a, vmaflags, vp, d, tab, mem, acc, sp)
            if st != 0:
                return st
            if installed:
                progress += 1
                a += 1
                run = a != e  # jump to the loop's step
        while run:
            if progress >= BREAK_AT:
                progress = 0
                brk = check(s, k, fork_seq, nb, acc)
                k += 1
                if brk:
                    reason = R_LB
                    break
            if pte_none(tab.ppte[r, a - base]):
                acc[S_NONE] += 1
                progress += 1
            else:
                st, ret = copy_one_pte(r, base, a, vmaflags, vp, d, tab, mem, acc, sp)
                if st != 0:
                    return st
                if ret != DONE:
                    reason = R_SC if ret == SWAP_CONT else R_EC
                    break
                progress += 8
            a += 1
            if a == e:
                break
        if ret == SWAP_CONT:
            if add_swap_count_continuation(d[D_ENTRY], True, mem, acc) < 0:
                return ENOMEM
            ret = DONE
            window(reason, acc)
            continue  # safe: a break never advances a
        if ret == BREAK_COW:
            st = page_duplicate(a, d, mem, acc, sp)
            if st != 0:
                return st
            window(reason, acc)
            continue
        if a == e:
            return 0
        window(reason, acc)


# --- 3.4 linux-5.10 --------------------------------------------------------------------------------------------


@inline
def copy_present_pte_5_10(r, base, a, vmaflags, vp, prealloc, tab, mem, acc, sp):
    """Returns (status, 0 or EAGAIN, prealloc left)."""
    v = tab.ppte[r, a - base]
    if not pte_special(v):
        pfn = np.int64(pte_pfn(v))
        f = mem.page_folio[pfn]
        if is_cow_mapping(vmaflags) and tab.has_pinned[r] and maybe_pinned(f, mem, vp.large_order):  # before any ref
            if prealloc == NONE:
                return 0, EAGAIN, prealloc
            copy_content(prealloc, pfn, acc, sp)  # copy moment: under the locks
            return install_copy(r, base, a, prealloc, pfn, vmaflags, vp.anon_exclusive, tab, mem, acc, sp), 0, NONE
    return share_one(r, base, a, vmaflags, vp.anon_exclusive, tab, mem, acc, sp), 0, prealloc


@register_jitable
def copy_pte_range_linux_5_10(r, base, s, e, vmaflags, vp, tab, mem, nb, acc, sp):
    # long: spec 3.4's state machine in one function, as the kernel has it (one preallocated page, -EAGAIN restart)
    fork_seq = tab.fork_seq[r]
    a, prealloc, pending, ret, k = s, NONE, NONE, 0, 0
    while True:
        progress = 0
        reason = R_END
        st = begin_pass(r, a, e, tab, acc, sp)
        if st != 0:
            return st
        while True:
            if progress >= BREAK_AT:
                progress = 0
                brk = check(s, k, fork_seq, nb, acc)
                k += 1
                if brk:
                    reason = R_LB
                    break
            v = tab.ppte[r, a - base]
            if pte_none(v):
                acc[S_NONE] += 1
                progress += 1
            elif not pte_present(v):
                st, pending = copy_nonpresent_pte(r, base, a, vmaflags, vp.anon_exclusive, tab, mem, acc, sp)
                if st != 0:
                    return st
                if pending != NONE:
                    reason = R_SC
                    break
                progress += 8
            else:
                st, ret, prealloc = copy_present_pte_5_10(r, base, a, vmaflags, vp, prealloc, tab, mem, acc, sp)
                if st != 0:
                    return st
                if ret == EAGAIN:
                    reason = R_EC
                    break
                if prealloc != NONE:  # not reused later (memory policy is per address)
                    st = free_unused(prealloc, a, mem, acc, sp)
                    if st != 0:
                        return st
                    prealloc = NONE
                progress += 8
            a += 1
            if a == e:
                break
        if pending != NONE:  # locks dropped
            if add_swap_count_continuation(pending, True, mem, acc) < 0:
                ret = ENOMEM
                break
            pending = NONE  # the stale-entry fix
        elif ret == EAGAIN:
            prealloc = allocate_page(mem, acc, sp)
            if prealloc == NONE:
                return ENOSPC
            ret = 0
        if a == e:
            break
        window(reason, acc)
    if prealloc != NONE:
        st = free_unused(prealloc, a, mem, acc, sp)
        if st != 0:
            return st
    return ret


# --- 3.5 linux-6.18 --------------------------------------------------------------------------------------------


@inline
def needs_copy(r, f, large_order, tab, mem):
    """Not device-private, and ``folio_needs_cow_for_dma``."""
    return tab.has_pinned[r] and (mem.folio_flags[f] & FOLIO_DEVICE_PRIVATE) == 0 and maybe_pinned(f, mem, large_order)


@inline
def copy_present_ptes_6_18(r, base, a, max_n, vmaflags, vp, prealloc, tab, mem, acc, sp):
    """Returns (status, PTEs handled or EAGAIN / EHWPOISON, prealloc left)."""
    v = tab.ppte[r, a - base]
    if pte_special(v):
        return share_one(r, base, a, vmaflags, vp.anon_exclusive, tab, mem, acc, sp), 1, prealloc
    pfn = np.int64(pte_pfn(v))
    f = mem.page_folio[pfn]
    anon = (mem.folio_flags[f] & FOLIO_ANON) != 0
    if vp.batching and prealloc == NONE and mem.folio_order[f] >= 1 and max_n != 1:
        n, _ = folio_pte_batch(r, a - base, v, max_n, (vmaflags & VM_SHARED) != 0, tab, mem)
        acc[S_BATCH_START] += 1
        if anon and needs_copy(r, f, vp.large_order, tab, mem):
            for j in range(n):
                if mem.page_flags[pfn + j] & PAGE_ANON_EXCLUSIVE:
                    acc[S_BATCH_REFUSED] += 1
                    return 0, EAGAIN, prealloc  # whole batch refused; its references returned
        st = share_present(r, base, a, n, vmaflags, vp.anon_exclusive, tab, mem, acc, sp)
        if st == 0:
            acc[S_BATCH_PTE] += n
        return st, n, prealloc
    mem.folio_refcount[f] += 1  # single path: reference first, then test
    if anon and needs_copy(r, f, vp.large_order, tab, mem) and (mem.page_flags[pfn] & PAGE_ANON_EXCLUSIVE) != 0:
        mem.folio_refcount[f] -= 1
        if prealloc == NONE:
            return 0, EAGAIN, prealloc
        if mem.page_flags[pfn] & PAGE_HWPOISON:
            return 0, EHWPOISON, prealloc  # prealloc not consumed
        copy_content(prealloc, pfn, acc, sp)
        return install_copy(r, base, a, prealloc, pfn, vmaflags, vp.anon_exclusive, tab, mem, acc, sp), 1, NONE
    mem.folio_refcount[f] -= 1
    return share_one(r, base, a, vmaflags, vp.anon_exclusive, tab, mem, acc, sp), 1, prealloc


@register_jitable
def copy_pte_range_linux_6_18(r, base, s, e, vmaflags, vp, tab, mem, nb, acc, sp):
    # long: spec 3.5's state machine in one function, as the kernel has it (passes, batches, restarts, prealloc)
    fork_seq = tab.fork_seq[r]
    a, prealloc, pending, ret, k = s, NONE, NONE, 0, 0
    while True:
        progress = 0
        reason = R_END
        st = begin_pass(r, a, e, tab, acc, sp)
        if st != 0:
            return st
        while True:
            n = 1
            if progress >= BREAK_AT:
                progress = 0
                brk = check(s, k, fork_seq, nb, acc)
                k += 1
                if brk:
                    reason = R_LB
                    break
            v = tab.ppte[r, a - base]
            if pte_none(v):
                acc[S_NONE] += 1
                progress += 1
            elif not pte_present(v):
                st, pending = copy_nonpresent_pte(r, base, a, vmaflags, vp.anon_exclusive, tab, mem, acc, sp)
                if st != 0:
                    return st
                if pending != NONE:
                    ret = EIO
                    reason = R_SC
                    break
                ret = 0
                progress += 8
            else:
                st, ret, prealloc = copy_present_ptes_6_18(r, base, a, e - a, vmaflags, vp, prealloc, tab, mem, acc, sp)
                if st != 0:
                    return st
                if ret == EAGAIN or ret == EHWPOISON:
                    reason = R_EC if ret == EAGAIN else R_HWPOISON
                    break
                if prealloc != NONE:
                    st = free_unused(prealloc, a, mem, acc, sp)
                    if st != 0:
                        return st
                    prealloc = NONE
                n = ret
                progress += 8 * n  # no check inside a batch
            a += n
            if a == e:
                break
        if ret == EIO:  # locks dropped
            if add_swap_count_continuation(pending, True, mem, acc) < 0:
                ret = ENOMEM
                break
            pending = NONE
        elif ret == EHWPOISON:
            break  # the fork fails (reported as ENOMEM)
        elif ret == EAGAIN:
            prealloc = allocate_page(mem, acc, sp)
            if prealloc == NONE:
                return ENOSPC
        ret = 0
        if a == e:
            break
        window(reason, acc)
    if prealloc != NONE:
        st = free_unused(prealloc, a, mem, acc, sp)
        if st != 0:
            return st
    return ret


@register_jitable
def copy_pte_range(r, c, vp, tab, calls, mem, nb, acc, sp):
    """One call over ``[calls.start[c], calls.end[c])`` of row ``r`` with the variant's state machine: 0, ENOMEM,
    EHWPOISON or an oops code."""
    acc[S_CALL] += 1
    base = tab.table_index[r] * PTRS_PER_TABLE
    s, e, vmaflags = calls.start[c], calls.end[c], calls.vmaflags[c]
    m = vp.machine
    if m == M_5_8:
        return copy_pte_range_linux_5_8(r, base, s, e, vmaflags, vp, tab, mem, nb, acc, sp)
    if m == M_XU_V1:
        return copy_pte_range_xu_v1(r, base, s, e, vmaflags, vp, tab, mem, nb, acc, sp)
    if m == M_5_10:
        return copy_pte_range_linux_5_10(r, base, s, e, vmaflags, vp, tab, mem, nb, acc, sp)
    if m == M_6_18:
        return copy_pte_range_linux_6_18(r, base, s, e, vmaflags, vp, tab, mem, nb, acc, sp)
    return copy_pte_range_xu_v1_oleg(r, base, s, e, vmaflags, vp, tab, mem, nb, acc, sp)


HUGE_UNTOUCHED, HUGE_SHARED, HUGE_SPLIT = 0, 1, 2


@register_jitable
def copy_huge_pmd(h, vp, htab, huge, calls, mem, acc, sp):
    """Copy the huge PMD of THP row ``h`` (spec 10): share it, or split it, filling the row's parent table with the
    folio's pages, which :func:`copy_pte_range` then copies. Returns whether it split."""
    acc[S_ALLOC] += 1  # the table deposited with the child's PMD
    pmd = huge.pmd[h]
    head = np.int64(pte_pfn(pmd))
    f = mem.page_folio[head]
    vmaflags = calls.vmaflags[htab.row_lo[h]]
    cow = is_cow_mapping(vmaflags)
    pinned = htab.has_pinned[h] and maybe_pinned(f, mem, vp.large_order)
    excl = mem.page_flags[head] & PAGE_ANON_EXCLUSIVE
    if not vp.early_cow:
        copy = False
    elif vp.anon_exclusive:
        copy = pinned and excl != 0  # folio_try_dup_anon_rmap_pmd fails
    else:
        copy = pinned and cow
    if copy:  # __split_huge_pmd: the parent maps the folio's pages in order
        acc[S_PMD_SPLIT] += 1
        for j in range(PTRS_PER_TABLE):
            mem.page_mapcount[head + j] += 1
            mem.page_flags[head + j] = (mem.page_flags[head + j] & ~np.uint8(PAGE_ANON_EXCLUSIVE)) | excl
            htab.ppte[h, j] = mk_pte(head + j, pte_write(pmd), pte_dirty(pmd), pte_young(pmd), False)
        mem.folio_refcount[f] += PTRS_PER_TABLE - 1
        sp.folio_pmd_mapcount[f] -= 1
        huge.state[h] = HUGE_SPLIT
        return True
    mem.folio_refcount[f] += 1
    sp.folio_pmd_mapcount[f] += 1
    acc[S_RSS + MM_ANONPAGES] += PTRS_PER_TABLE
    child = pte_mkold(pmd)
    if cow:
        huge.pmd[h] = pte_wrprotect(pmd)
        child = pte_wrprotect(child)
    if vp.anon_exclusive:
        mem.page_flags[head] &= ~np.uint8(PAGE_ANON_EXCLUSIVE)
    huge.child_pmd[h] = child
    huge.state[h] = HUGE_SHARED
    acc[S_PMD_SHARE] += 1
    if mem.folio_true_pins[f] > 0:
        acc[S_PIN_SHARED] += PTRS_PER_TABLE
    return False


@register_jitable
def copy_table_slow(r, vp, tab, calls, mem, nb, acc, sp):
    """Every call of table row ``r`` in order. Returns (status, the call where it stopped or -1)."""
    for c in range(tab.row_lo[r], tab.row_hi[r]):
        st = copy_pte_range(r, c, vp, tab, calls, mem, nb, acc, sp)
        if st != 0:
            return st, c
    return 0, -1


# --- the items of a fork's slow path, in parallel ----------------------------------------------------------------
#
# An item is a table (``x >= 0``: row ``x`` of ``tab``) or a PMD-mapped THP (``x < 0``: row ``-x - 1`` of ``htab``
# / ``huge``) that the fast kernels left to the slow path. Items that share no object (a folio, a swap slot) with
# another item commute: each reads and writes only its own rows and the objects its entries name, so they run in
# parallel. Items that share one run after them, one after the other in address order, as the kernel would. Each
# item allocates from a segment of its own (its bound: every mapping it holds of a folio that may be pinned), and
# the engine numbers the new folios and pages in address order afterwards (gpusim.earlycopy), as one walk would.

CLAIM, CHECK = 0, 1
CLAIM_LO, CLAIM_HI = np.iinfo(np.int64).max, -1  # the fill values of the claims (no item names the object)


@inline
def entry_object(v, nr_folios, mem):
    """The object a parent entry names that an item's copy may change, if another entry can name it too: the folio
    of its page (present, migration, device-private), ``nr_folios + slot`` for a swap entry. -1 for none; for an
    object only this entry names (a swap slot of count 1; ``-2 - folio`` for an order-0 folio whose page is mapped
    once: the state checks hold every mapping to its mapcount), a negative value too."""
    k = pte_kind(v)
    if k == KIND_SWAP:
        o = np.int64(swp_offset(v))
        return nr_folios + o if mem.swap_count[o] > 1 else np.int64(-1)
    if (k == KIND_PRESENT and not pte_special(v)) or k == KIND_MIGRATION or k == KIND_DEVICE_PRIVATE:
        p = np.int64(pte_pfn(v))
        f = np.int64(mem.page_folio[p])
        if k != KIND_MIGRATION and mem.folio_order[f] == 0 and mem.page_mapcount[p] == 1:
            return -2 - f  # this entry's alone
        return f
    return np.int64(-1)


@register_jitable
def item_objects(i, x, step, maybe, tab, huge, calls, mem, lo, hi):
    """One step over the objects of item ``i`` (``x``: see above). ``CLAIM``: the item claims each object it names
    that another entry could name too (``lo`` / ``hi``, filled with ``CLAIM_LO`` / ``CLAIM_HI`` for the fork: the
    least / greatest item naming it); returns (its bound: the entries, or THP pages, of folios in ``maybe``;
    whether it claimed any). ``CHECK``, after every item claimed, for an item that did: returns (0, whether it
    shares an object with another item)."""
    nr_folios = maybe.shape[0]
    bound, found = 0, False
    if x < 0:
        f = np.int64(mem.page_folio[np.int64(pte_pfn(huge.pmd[-x - 1]))])
        if step == CHECK:
            return 0, lo[f] != hi[f]
        atomic_min(lo, f, i)
        atomic_max(hi, f, i)
        return PTRS_PER_TABLE if maybe[f] else 0, True
    base = tab.table_index[x] * PTRS_PER_TABLE
    last = np.int64(-1)
    for c in range(tab.row_lo[x], tab.row_hi[x]):
        for a in range(calls.start[c], calls.end[c]):
            v = tab.ppte[x, a - base]
            o = entry_object(v, nr_folios, mem)
            if step == CHECK:
                if o >= 0 and lo[o] != hi[o]:
                    return 0, True
                continue
            f = -2 - o if o <= -2 else o  # the folio, whoever names it
            if 0 <= f < nr_folios and maybe[f] and pte_present(v):
                bound += 1
            if o >= 0 and o != last:
                atomic_min(lo, o, i)
                atomic_max(hi, o, i)
                last = o
                found = True
    return bound, found


@register_jitable
def run_item(i, x, vp, tab, htab, huge, calls, mem, nb, sp, counts):
    """The slow path of item ``i`` with its own rows of ``sp.state`` (allocator, logs) and ``sp.copy_mm_data``, and
    its counts row. Returns (status, the call where it stopped or -1)."""
    own = SlowArrays(
        sp.page_content, sp.folio_pmd_mapcount, sp.state[i], sp.installs, sp.duplicates, sp.copy_mm_data[i]
    )
    if x >= 0:
        return copy_table_slow(x, vp, tab, calls, mem, nb, counts[i], own)
    if copy_huge_pmd(-x - 1, vp, htab, huge, calls, mem, counts[i], own):
        return copy_table_slow(-x - 1, vp, htab, calls, mem, nb, counts[i], own)
    return 0, -1
