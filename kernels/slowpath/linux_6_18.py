"""``copy_pte_range`` of linux-6.18 (spec 3.5), compiled: beside :mod:`gpusim.engines.reference.linux_6_18`."""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable

from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
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
from gpusim.kernels.pte import pte_none, pte_pfn, pte_present, pte_special
from gpusim.kernels.slowpath.common import (
    ENOSPC,
    NONE,
    R_EC,
    R_END,
    R_HWPOISON,
    R_LB,
    R_SC,
    S_BATCH_PTE,
    S_BATCH_REFUSED,
    S_BATCH_START,
    S_NONE,
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
    share_one,
    share_present,
    window,
)
from gpusim.kernels.table import folio_pte_batch

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
