"""``copy_pte_range`` of Peter Xu's v1 (spec 3.2) and of v1 with Oleg Nesterov's restructuring (spec 3.3):
``copy_one_pte`` answers BREAK_COW, ``page_duplicate`` copies outside the locks, ``pte_install_copied_page``
installs.
"""

from __future__ import annotations

from gpusim.engines.context import Oops
from gpusim.engines.reference.common import (
    add_swap_count_continuation,
    allocate_page,
    begin_pass,
    check,
    copy_content,
    copy_nonpresent_pte,
    free_unused,
    handle_none,
    install_copy,
    share_one,
    window,
)
from gpusim.engines.reference.context import CopyContext, CopyMmData
from gpusim.kernels import pte as P
from gpusim.kernels.flags import BREAK_AT, ENOMEM

# copy_one_pte results of the xu series (COPY_MM_*)
DONE, SWAP_CONT, BREAK_COW = "DONE", "SWAP_CONT", "BREAK_COW"


def copy_one_pte(c: CopyContext, a: int, d: CopyMmData) -> str:
    """The xu series' per-PTE function (shared by xu-v1 and xu-v1-oleg)."""
    m = c.m
    e = c.src(a)
    if not P.pte_present(e):
        slot = copy_nonpresent_pte(c, a)
        if slot is not None:
            d.entry = slot
            return SWAP_CONT
        return DONE
    if not P.pte_special(e):
        pfn = P.pte_pfn(e)
        f = m.page_folio[pfn]
        m.folio_refcount[f] += 1  # the child's reference is taken first
        if c.fc.parent.has_pinned and c.cow and P.pte_write(e) and c.fc.maybe_pinned(f):
            d.cow_old_page, d.cow_oldpte = pfn, e  # the reference travels with it
            c.rec.break_cow += 1
            return BREAK_COW  # parent and child PTE untouched
        m.folio_refcount[f] -= 1  # handed back; share_present takes it
    share_one(c, a, e)
    return DONE


def page_duplicate(c: CopyContext, a: int, d: CopyMmData) -> int:
    """Runs in the window, no locks: allocate the copy and fill it (the xu copy moment)."""
    c.counts["copy.duplicate_call"] += 1
    c.rec.pd_calls += 1
    if d.cow_old_page is None:
        raise Oops("page_duplicate", a, "OLD_PAGE_NULL")
    q = allocate_page(c)
    if q is not None:
        copy_content(c, q, d.cow_old_page)
        c.rec.duplicates.append((q, d.cow_old_page, c.fc.trace.tick()))
        d.cow_new_page = q
    c.put_folio(c.m.page_folio[d.cow_old_page], a)  # always released, success or failure
    d.cow_old_page = None
    return 0 if q is not None else ENOMEM


def pte_install_copied_page(c: CopyContext, a: int, d: CopyMmData) -> bool:
    """Both locks held: install the prepared copy if the parent PTE is unchanged, else drop it."""
    c.counts["copy.recheck"] += 1
    q = d.cow_new_page
    d.cow_new_page = None  # mapped or freed: the pointer is never read again
    if c.src(a) == d.cow_oldpte:  # pte_same on the full value
        install_copy(c, a, q, P.pte_pfn(d.cow_oldpte))
        return True
    free_unused(c, q, a)  # PTE changed: drop the copy, redo this index
    return False


def copy_pte_range_xu_v1(c: CopyContext, a: int, end: int) -> int:
    ret = DONE
    wipe = True
    d = CopyMmData()
    while True:
        if wipe:
            d = c.d = CopyMmData()  # the restart label wipes d (entry becomes NULL_ENTRY)
        if not begin_pass(c, a):
            if d.cow_new_page is not None:
                free_unused(c, d.cow_new_page, a)
                d.cow_new_page = None
            return ENOMEM
        progress = 0
        reason = None
        while True:
            if progress >= BREAK_AT:
                progress = 0
                if check(c, a):
                    reason = "LB"
                    break
            if d.cow_new_page is not None and pte_install_copied_page(c, a, d):
                progress += 1  # ret stays BREAK_COW
            elif P.pte_none(c.src(a)):
                handle_none(c, a)
                progress += 1
            else:
                ret = copy_one_pte(c, a, d)
                if ret != DONE:
                    reason = "SC" if ret == SWAP_CONT else "EC"
                    break
                progress += 8
            a += 1
            if a == end:
                break
        c.end_pass(a, reason)
        if reason == "SC":
            c.rec.sc_breaks += 1
        if ret == SWAP_CONT:  # locks dropped
            if add_swap_count_continuation(c, d.entry, "swapcont.kernel") < 0:
                return ENOMEM
        elif ret == BREAK_COW:
            if page_duplicate(c, a, d) < 0:
                return ENOMEM
            window(c, reason)
            wipe = False
            continue  # no end test on this path
        if a == end:
            return 0
        window(c, reason)
        wipe = True


def copy_pte_range_xu_v1_oleg(c: CopyContext, a: int, end: int) -> int:
    ret = DONE
    d = c.d = CopyMmData()
    while True:
        if not begin_pass(c, a):
            if ret == BREAK_COW and d.cow_new_page is not None:
                free_unused(c, d.cow_new_page, a)
                d.cow_new_page = None
            return ENOMEM
        progress = 0
        reason = None
        run = True
        if ret == BREAK_COW:
            ret = DONE
            if pte_install_copied_page(c, a, d):
                progress += 1
                a += 1
                run = a != end  # jump to the loop's step
        while run:
            if progress >= BREAK_AT:
                progress = 0
                if check(c, a):
                    reason = "LB"
                    break
            if P.pte_none(c.src(a)):
                handle_none(c, a)
                progress += 1
            else:
                ret = copy_one_pte(c, a, d)
                if ret != DONE:
                    reason = "SC" if ret == SWAP_CONT else "EC"
                    break
                progress += 8
            a += 1
            if a == end:
                break
        c.end_pass(a, reason)
        if reason == "SC":
            c.rec.sc_breaks += 1
        if ret == SWAP_CONT:
            if add_swap_count_continuation(c, d.entry, "swapcont.kernel") < 0:
                return ENOMEM
            ret = DONE
            window(c, reason)
            continue  # safe: a break never advances a
        if ret == BREAK_COW:
            if page_duplicate(c, a, d) < 0:
                return ENOMEM
            window(c, reason)
            continue
        if a == end:
            return 0
        window(c, reason)
