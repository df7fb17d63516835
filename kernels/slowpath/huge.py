"""``copy_huge_pmd`` (spec 10), compiled: beside :mod:`gpusim.engines.reference.huge`."""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable

from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels.flags import MM_ANONPAGES, PAGE_ANON_EXCLUSIVE, PTRS_PER_TABLE, is_cow_mapping
from gpusim.kernels.pte import mk_pte, pte_dirty, pte_mkold, pte_pfn, pte_write, pte_wrprotect, pte_young
from gpusim.kernels.slowpath.common import S_ALLOC, S_PIN_SHARED, S_PMD_SHARE, S_PMD_SPLIT, S_RSS, maybe_pinned

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
