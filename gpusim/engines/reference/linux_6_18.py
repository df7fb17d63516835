"""``copy_pte_range`` of linux-6.18 (spec 3.5): the anon-exclusive rule, ``folio_pte_batch`` (where the variant
batches), the preallocated page and -EHWPOISON.
"""

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
    share_present,
    window,
)
from gpusim.engines.reference.context import CopyContext
from gpusim.kernels import pte as P
from gpusim.kernels.flags import (
    BREAK_AT,
    EAGAIN,
    EHWPOISON,
    EIO,
    ENOMEM,
    FOLIO_ANON,
    FOLIO_DEVICE_PRIVATE,
    PAGE_ANON_EXCLUSIVE,
    PAGE_HWPOISON,
    VM_SHARED,
)

# --- 3.5 linux-6.18 --------------------------------------------------------------------------------------------


def needs_copy(c: CopyContext, f: int) -> bool:
    """Not device-private, and ``folio_needs_cow_for_dma``."""
    return c.fc.parent.has_pinned and not (c.m.folio_flags[f] & FOLIO_DEVICE_PRIVATE) and c.fc.maybe_pinned(f)


def folio_pte_batch(c: CopyContext, a: int, max_n: int) -> int:
    """Consecutive PTEs mapping consecutive pages of one folio (young ignored, write merged later)."""
    m = c.m
    first = c.src(a)
    pfn0 = P.pte_pfn(first)
    f = m.page_folio[pfn0]
    limit = min(max_n, (1 << m.folio_order[f]) - (pfn0 - m.folio_first_pfn[f]))
    n = 1
    while n < limit:
        e = c.src(a + n)
        if not P.pte_present(e) or P.pte_special(e) or P.pte_pfn(e) != pfn0 + n:
            break
        if not (c.vma.flags & VM_SHARED) and P.pte_dirty(e) != P.pte_dirty(first):
            break
        n += 1
    return n


def copy_present_ptes_6_18(c: CopyContext, a: int, max_n: int) -> int:
    m = c.m
    e = c.src(a)
    if P.pte_special(e):
        share_one(c, a, e)
        return 1
    pfn = P.pte_pfn(e)
    f = m.page_folio[pfn]
    anon = m.folio_flags[f] & FOLIO_ANON
    if c.v.batching and c.prealloc is None and m.folio_order[f] >= 1 and max_n != 1:
        n = folio_pte_batch(c, a, max_n)
        c.counts["batch.start"] += 1
        if anon and needs_copy(c, f) and any(m.page_flags[pfn + j] & PAGE_ANON_EXCLUSIVE for j in range(n)):
            c.counts["batch.refused"] += 1
            return EAGAIN  # whole batch refused; its references returned
        share_present(c, a, n)
        c.counts["batch.pte"] += n
        c.handled(a, "batch", n)
        return n
    m.folio_refcount[f] += 1  # single path: reference first, then test
    if anon and needs_copy(c, f) and m.page_flags[pfn] & PAGE_ANON_EXCLUSIVE:
        m.folio_refcount[f] -= 1
        if c.prealloc is None:
            return EAGAIN
        if m.page_flags[pfn] & PAGE_HWPOISON:
            return EHWPOISON  # prealloc not consumed
        q, c.prealloc = c.prealloc, None
        copy_content(c, q, pfn)
        install_copy(c, a, q, pfn)
        return 1
    m.folio_refcount[f] -= 1
    share_one(c, a, e)
    return 1


def copy_pte_range_linux_6_18(c: CopyContext, a: int, end: int) -> int:
    # long: spec 3.5's state machine in one function, as the kernel has it (passes, batches, restarts, prealloc)
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
            n = 1
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
                    ret = EIO
                    reason = "SC"
                    break
                ret = 0
                progress += 8
            else:
                ret = copy_present_ptes_6_18(c, a, end - a)
                if ret in (EAGAIN, EHWPOISON):
                    reason = "EC" if ret == EAGAIN else "HWPOISON"
                    break
                if c.prealloc is not None:
                    free_unused(c, c.prealloc, a)
                    c.prealloc = None
                n = ret
                progress += 8 * n  # no check inside a batch
            a += n
            if a == end:
                break
        c.end_pass(a, reason)
        if ret == EIO:  # locks dropped
            c.rec.sc_breaks += 1
            if add_swap_count_continuation(c, pending, "swapcont.kernel") < 0:
                ret = ENOMEM
                break
            pending = None
        elif ret == EHWPOISON:
            c.last_failed = ("hwpoison", 1)
            break  # the fork fails (reported as ENOMEM)
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
