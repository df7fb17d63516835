"""``copy_pte_range`` of xu-v1 (spec 3.2) and xu-v1-oleg (spec 3.3), compiled: beside
:mod:`gpusim.engines.reference.xu`. The v1 patch's struct copy_mm_data is a small array ``d`` (``D_*``).
"""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable

from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels.flags import BREAK_AT, ENOMEM, NULL_ENTRY, is_cow_mapping
from gpusim.kernels.pte import as_u64, pte_none, pte_pfn, pte_present, pte_special, pte_write
from gpusim.kernels.slowpath.common import (
    BREAK_COW,
    DONE,
    ENOSPC,
    NONE,
    OOPS_OLD_PAGE_NULL,
    R_EC,
    R_END,
    R_LB,
    R_SC,
    S_DUPLICATE_CALL,
    S_NONE,
    S_RECHECK,
    ST_DUPLICATES,
    SWAP_CONT,
    add_swap_count_continuation,
    allocate_page,
    begin_pass,
    check,
    copy_content,
    copy_nonpresent_pte,
    free_unused,
    inline,
    install_copy,
    maybe_pinned,
    oops,
    put_folio,
    share_one,
    window,
)

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
