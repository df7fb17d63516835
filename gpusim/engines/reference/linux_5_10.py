"""``copy_pte_range`` of linux-5.10 (spec 3.4): one preallocated page, the copy made under the locks at the retry."""

from __future__ import annotations

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
from gpusim.engines.reference.context import CopyContext
from gpusim.kernels import pte as P
from gpusim.kernels.flags import BREAK_AT, EAGAIN, ENOMEM

# --- 3.4 linux-5.10 --------------------------------------------------------------------------------------------


def copy_present_pte_5_10(c: CopyContext, a: int) -> int:
    e = c.src(a)
    if not P.pte_special(e):
        pfn = P.pte_pfn(e)
        f = c.m.page_folio[pfn]
        if c.cow and c.fc.parent.has_pinned and c.fc.maybe_pinned(f):  # tested before any reference
            if c.prealloc is None:
                return EAGAIN
            q, c.prealloc = c.prealloc, None
            copy_content(c, q, pfn)  # copy moment: under the locks
            install_copy(c, a, q, pfn)
            return 0
    share_one(c, a, e)
    return 0


def copy_pte_range_linux_5_10(c: CopyContext, a: int, end: int) -> int:
    c.prealloc = None
    pending = None
    ret = 0
    while True:
        progress = 0
        reason = None
        if not begin_pass(c, a):
            ret = ENOMEM
            break
        while True:
            if progress >= BREAK_AT:
                progress = 0
                if check(c, a):
                    reason = "LB"
                    break
            e = c.src(a)
            if P.pte_none(e):
                handle_none(c, a)
                progress += 1
            elif not P.pte_present(e):
                pending = copy_nonpresent_pte(c, a)
                if pending is not None:
                    reason = "SC"
                    break
                progress += 8
            else:
                ret = copy_present_pte_5_10(c, a)
                if ret == EAGAIN:
                    reason = "EC"
                    break
                if c.prealloc is not None:  # not reused later (memory policy is per address)
                    free_unused(c, c.prealloc, a)
                    c.prealloc = None
                progress += 8
            a += 1
            if a == end:
                break
        c.end_pass(a, reason)
        if pending is not None:  # locks dropped
            c.rec.sc_breaks += 1
            if add_swap_count_continuation(c, pending, "swapcont.kernel") < 0:
                ret = ENOMEM
                break
            pending = None  # the stale-entry fix
        elif ret == EAGAIN:
            c.prealloc = allocate_page(c)
            if c.prealloc is None:
                return ENOMEM
            ret = 0
        if a == end:
            break
        window(c, reason)
    if c.prealloc is not None:
        free_unused(c, c.prealloc, a)
        c.prealloc = None
    return ret
