"""``copy_pte_range`` of linux-5.10 (spec 3.4), compiled: beside :mod:`gpusim.engines.reference.linux_5_10`."""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable

from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels.flags import BREAK_AT, EAGAIN, ENOMEM, is_cow_mapping
from gpusim.kernels.pte import pte_none, pte_pfn, pte_present, pte_special
from gpusim.kernels.slowpath.common import (
    ENOSPC,
    NONE,
    R_EC,
    R_END,
    R_LB,
    R_SC,
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
    window,
)

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
