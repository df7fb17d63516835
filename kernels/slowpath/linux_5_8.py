"""``copy_pte_range`` of linux-5.8 (spec 3.1), compiled: beside :mod:`gpusim.engines.reference.linux_5_8`."""

from __future__ import annotations

from numba.extending import register_jitable

from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels.flags import BREAK_AT, ENOMEM
from gpusim.kernels.pte import pte_none, pte_present
from gpusim.kernels.slowpath.common import (
    NONE,
    R_END,
    R_LB,
    R_SC,
    S_NONE,
    add_swap_count_continuation,
    begin_pass,
    check,
    copy_nonpresent_pte,
    share_one,
    window,
)

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
