"""``copy_pte_range`` of linux-5.8 (spec 3.1): every present page shared and write-protected, pinned or not."""

from __future__ import annotations

from gpusim.engines.reference.common import (
    add_swap_count_continuation,
    begin_pass,
    check,
    copy_nonpresent_pte,
    handle_none,
    share_one,
    window,
)
from gpusim.engines.reference.context import CopyContext
from gpusim.kernels import pte as P
from gpusim.kernels.flags import BREAK_AT, ENOMEM

# --- 3.1 linux-5.8 ---------------------------------------------------------------------------------------------


def copy_pte_range_linux_5_8(c: CopyContext, a: int, end: int) -> int:
    progress = 0
    pending = None  # progress is not reset per pass; it is 0 there anyway
    while True:
        if not begin_pass(c, a):
            return ENOMEM
        reason = None
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
                pending = None
                share_one(c, a, e)
                progress += 8
            a += 1
            if a == end:
                break
        c.end_pass(a, reason)
        if reason == "SC":
            c.rec.sc_breaks += 1
        if pending is not None:  # locks dropped; may repeat on a later pass (stale)
            if add_swap_count_continuation(c, pending, "swapcont.kernel") < 0:
                return ENOMEM
            progress = 0
        if a == end:
            return 0
        window(c, reason)
