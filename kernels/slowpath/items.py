"""The items of a fork's slow path (a table, or a PMD-mapped THP): the dispatch of ``copy_pte_range`` to the variant's
state machine (``vp.machine``), the walk of an item's calls, the objects an item names (to find the items that must
run in address order), and :func:`run_item`, what the CPU and CUDA drivers run for each.
"""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable

from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels.args import SlowArrays
from gpusim.kernels.atomics import atomic_max, atomic_min
from gpusim.kernels.flags import M_5_8, M_5_10, M_6_18, M_XU_V1, PTRS_PER_TABLE
from gpusim.kernels.pte import (
    KIND_DEVICE_PRIVATE,
    KIND_MIGRATION,
    KIND_PRESENT,
    KIND_SWAP,
    pte_kind,
    pte_pfn,
    pte_present,
    pte_special,
    swp_offset,
)
from gpusim.kernels.rules import call_frame_breaks
from gpusim.kernels.slowpath.common import S_CALL, S_FRAME_BREAK, inline
from gpusim.kernels.slowpath.huge import copy_huge_pmd
from gpusim.kernels.slowpath.linux_5_8 import copy_pte_range_linux_5_8
from gpusim.kernels.slowpath.linux_5_10 import copy_pte_range_linux_5_10
from gpusim.kernels.slowpath.linux_6_18 import copy_pte_range_linux_6_18
from gpusim.kernels.slowpath.xu import copy_pte_range_xu_v1, copy_pte_range_xu_v1_oleg


@register_jitable
def copy_pte_range(r, c, vp, tab, calls, mem, nb, acc, sp):
    """One call over ``[calls.start[c], calls.end[c])`` of row ``r`` with the variant's state machine: 0, ENOMEM,
    EHWPOISON or an oops code."""
    acc[S_CALL] += 1
    base = tab.table_index[r] * PTRS_PER_TABLE
    s, e, vmaflags = calls.start[c], calls.end[c], calls.vmaflags[c]
    acc[S_FRAME_BREAK] += call_frame_breaks(tab.ppte[r], s - base, e - base)
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
# the engine numbers the new folios and pages in address order afterwards (gpusim.engines.earlycopy), as one walk would.

CLAIM, CHECK = 0, 1


# The claims hold item numbers (a fork has fewer than 2**31 tables and THPs); their fill values: no item names it.
CLAIM_DTYPE = np.dtype(np.int32)
CLAIM_LO, CLAIM_HI = np.iinfo(CLAIM_DTYPE).max, -1


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
