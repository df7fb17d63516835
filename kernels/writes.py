"""The write phase after the fork, compiled for the CPU (spec section 11; the reference is :mod:`gpusim.writes`).

:func:`write_steps` runs the steps in order, one write at a time, as the reference does (a write may depend on the
one before it: the second writer of a shared page sees the first writer's copy), so that pages and folios are
numbered, and contents drawn, in the reference's order. Each process is a :data:`Proc` of arrays: its page-table
rows (sorted by table number, with rows reserved ahead for the tables a write may create: a PMD split, a fault where
there was no table), its huge PMDs, VMAs, rss and, per folio, how many of its PTEs map it (plus 512 per PMD:
``wp_can_reuse_anon_folio`` asks). The memory's arrays come with room for a new page per write. The reuse decisions
are :func:`gpusim.kernels.rules.wp_reuse_pte` and :func:`~gpusim.kernels.rules.wp_reuse_pmd`, shared with the
reference. Events are counted per writer in the order of ``gpusim.kernels.flags.WRITE_EVENTS``.
"""

from collections import namedtuple

import numpy as np
from numba import njit

from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels.flags import (
    BACKING_ANON,
    EV_ANON_FAULT,
    EV_COPY,
    EV_NONE,
    EV_PMD_REUSE,
    EV_PMD_SPLIT,
    EV_REUSE,
    EV_SEGV,
    EV_UNMODELLED,
    FOLIO_ANON,
    FOLIO_FREED,
    FOLIO_SWAPBACKED,
    MM_ANONPAGES,
    PAGE_ANON_EXCLUSIVE,
    PTRS_PER_TABLE,
    STEP_ALL,
    STEP_EXIT,
    VM_SHARED,
    VM_WRITE,
    mm_counter,
)
from gpusim.kernels.pte import (
    KIND_DEVICE_PRIVATE,
    KIND_NONE,
    KIND_PRESENT,
    KIND_SWAP,
    mk_pte,
    pte_dirty,
    pte_kind,
    pte_mkdirty,
    pte_mkwrite,
    pte_mkyoung,
    pte_pfn,
    pte_special,
    pte_write,
    pte_young,
    swp_offset,
)
from gpusim.kernels.rules import wp_reuse_pmd, wp_reuse_pte

Proc = namedtuple("Proc", "tix pte exists pmdix pmd pmdlive vstart vend vflags vbacking rss mapped")
WMem = namedtuple(
    "WMem",
    "page_folio page_mapcount page_flags page_content folio_order folio_refcount folio_pincount folio_true_pins "
    "folio_pmd_mapcount folio_flags folio_first_pfn swap_count used",  # used: pages, folios, next content
)


@njit(inline="always")
def _find(keys, k):
    i = np.searchsorted(keys, k)
    return i if i < keys.shape[0] and keys[i] == k else -1


@njit(inline="always")
def _vma(pr, a):
    i = np.searchsorted(pr.vstart, a, side="right") - 1
    return i if i >= 0 and a < pr.vend[i] else -1


@njit(inline="always")
def _new_anon_page(m, anon_exclusive):
    """A new order-0 anon folio, mapped once (the caller maps it), with new content: its pfn."""
    pfn, f = m.used[0], m.used[1]
    m.used[0] += 1
    m.used[1] += 1
    m.folio_order[f] = 0
    m.folio_refcount[f] = 1
    m.folio_pincount[f] = 0
    m.folio_true_pins[f] = 0
    m.folio_pmd_mapcount[f] = 0
    m.folio_flags[f] = FOLIO_ANON | FOLIO_SWAPBACKED
    m.folio_first_pfn[f] = pfn
    m.page_folio[pfn] = f
    m.page_mapcount[pfn] = 1
    m.page_flags[pfn] = PAGE_ANON_EXCLUSIVE if anon_exclusive else 0
    m.page_content[pfn] = m.used[2]
    m.used[2] += 1
    return pfn


@njit(inline="always")
def _put_mapping(m, pr, pfn, present):
    f = m.page_folio[pfn]
    m.page_mapcount[pfn] -= 1
    m.folio_refcount[f] -= 1
    if present:
        pr.mapped[f] -= 1
    if m.folio_refcount[f] == 0:
        m.folio_flags[f] |= FOLIO_FREED


@njit(inline="always")
def _folio_maps(m, f):
    """(largest, sum of) the map counts of folio ``f``'s pages, and its pages."""
    first = m.folio_first_pfn[f]
    nr = np.int64(1) << np.int64(m.folio_order[f])
    mx, total = np.int64(0), np.int64(0)
    for q in range(first, first + nr):
        c = np.int64(m.page_mapcount[q])
        mx = max(mx, c)
        total += c
    return mx, total, nr


@njit(inline="always")
def _do_wp_page(m, pr, row, i, v, rule, anon_exclusive):
    pfn = np.int64(pte_pfn(v))
    f = m.page_folio[pfn]
    if m.folio_flags[f] & FOLIO_ANON:
        mx, total, nr = _folio_maps(m, f)
        excl = (m.page_flags[pfn] & PAGE_ANON_EXCLUSIVE) != 0
        if wp_reuse_pte(
            rule,
            excl,
            m.folio_order[f],
            m.folio_refcount[f],
            m.page_mapcount[pfn],
            mx,
            total,
            m.folio_pmd_mapcount[f],
            nr,
            pr.mapped[f],
        ):
            pr.pte[row, i] = pte_mkdirty(pte_mkyoung(pte_mkwrite(v)))
            if anon_exclusive:
                m.page_flags[pfn] |= PAGE_ANON_EXCLUSIVE
            m.page_content[pfn] = m.used[2]
            m.used[2] += 1
            return EV_REUSE
    q = _new_anon_page(m, anon_exclusive)
    pr.pte[row, i] = mk_pte(q, True, True, True, False)
    pr.mapped[m.page_folio[q]] = 1
    if not m.folio_flags[f] & FOLIO_ANON:  # a page-cache page: the writer's rss moves to anon
        pr.rss[mm_counter(m.folio_flags[f])] -= 1
        pr.rss[MM_ANONPAGES] += 1
    _put_mapping(m, pr, pfn, True)
    return EV_COPY


@njit(inline="always")
def _split_huge_pmd(m, pr, k, t):
    pmd = pr.pmd[k]
    pr.pmdlive[k] = False
    head = np.int64(pte_pfn(pmd))
    f = m.page_folio[head]
    excl = m.page_flags[head] & PAGE_ANON_EXCLUSIVE
    row = _find(pr.tix, t)  # reserved ahead
    for j in range(PTRS_PER_TABLE):
        m.page_mapcount[head + j] += 1
        m.page_flags[head + j] = (m.page_flags[head + j] & ~np.uint8(PAGE_ANON_EXCLUSIVE)) | excl
        pr.pte[row, j] = mk_pte(head + j, False, pte_dirty(pmd), pte_young(pmd), False)
    pr.exists[row] = True
    m.folio_refcount[f] += PTRS_PER_TABLE - 1
    m.folio_pmd_mapcount[f] -= 1


@njit(inline="always")
def _huge_pmd_write(m, pr, k, t, rule, anon_exclusive):
    """A write to the PMD-mapped THP of table ``t``: its event (``EV_PMD_SPLIT``: the caller retries)."""
    pmd = pr.pmd[k]
    if pte_write(pmd):
        pr.pmd[k] = pte_mkdirty(pte_mkyoung(pmd))
        return EV_NONE
    f = m.page_folio[np.int64(pte_pfn(pmd))]
    mx, _, _ = _folio_maps(m, f)
    head = m.folio_first_pfn[f]
    excl = (m.page_flags[head] & PAGE_ANON_EXCLUSIVE) != 0
    if wp_reuse_pmd(rule, excl, m.folio_refcount[f], mx, m.folio_pmd_mapcount[f]):
        pr.pmd[k] = pte_mkdirty(pte_mkwrite(pmd))
        if anon_exclusive:
            m.page_flags[head] |= PAGE_ANON_EXCLUSIVE
        return EV_PMD_REUSE
    _split_huge_pmd(m, pr, k, t)
    return EV_PMD_SPLIT


@njit(inline="always")
def _write(m, pr, a, rule, anon_exclusive, counts):
    """One write of process ``pr`` to address ``a`` (``handle_mm_fault``), counted in ``counts``."""
    vi = _vma(pr, a)
    if vi < 0 or not pr.vflags[vi] & VM_WRITE:
        counts[EV_SEGV] += 1
        return
    t, i = a // PTRS_PER_TABLE, a % PTRS_PER_TABLE
    shared = (pr.vflags[vi] & VM_SHARED) != 0
    k = _find(pr.pmdix, t)
    if k >= 0 and pr.pmdlive[k]:
        if shared:
            counts[EV_NONE] += 1
            return
        ev = _huge_pmd_write(m, pr, k, t, rule, anon_exclusive)
        counts[ev] += 1
        if ev != EV_PMD_SPLIT:
            return
    row = _find(pr.tix, t)
    v = pr.pte[row, i] if row >= 0 and pr.exists[row] else np.uint64(0)
    kind = pte_kind(v)
    if shared or (kind == KIND_PRESENT and pte_special(v)):
        if kind == KIND_PRESENT and not pte_special(v):  # the page itself is written in place
            m.page_content[np.int64(pte_pfn(v))] = m.used[2]
            m.used[2] += 1
        counts[EV_NONE] += 1
    elif kind == KIND_NONE:
        if pr.vbacking[vi] != BACKING_ANON:
            counts[EV_UNMODELLED] += 1
            return
        if row < 0:
            raise ValueError("write phase: no table row was reserved for a fault")
        pr.exists[row] = True  # reserved ahead when there was no table
        q = _new_anon_page(m, anon_exclusive)
        pr.pte[row, i] = mk_pte(q, True, True, True, False)
        pr.mapped[m.page_folio[q]] = 1
        pr.rss[MM_ANONPAGES] += 1
        counts[EV_ANON_FAULT] += 1
    elif kind != KIND_PRESENT:
        counts[EV_UNMODELLED] += 1
    elif pte_write(v):
        pr.pte[row, i] = pte_mkdirty(pte_mkyoung(v))
        m.page_content[np.int64(pte_pfn(v))] = m.used[2]
        m.used[2] += 1
        counts[EV_NONE] += 1
    else:
        counts[_do_wp_page(m, pr, row, i, v, rule, anon_exclusive)] += 1


@njit
def _exit(m, pr):
    """``exit_mmap`` of the child: every entry drops what it holds; the child is left empty."""
    for row in range(pr.tix.shape[0]):
        if not pr.exists[row]:
            continue
        for i in range(PTRS_PER_TABLE):
            v = pr.pte[row, i]
            kind = pte_kind(v)
            if kind == KIND_PRESENT and not pte_special(v):
                _put_mapping(m, pr, np.int64(pte_pfn(v)), True)
            elif kind == KIND_DEVICE_PRIVATE:
                _put_mapping(m, pr, np.int64(swp_offset(v)), False)
            elif kind == KIND_SWAP:
                m.swap_count[np.int64(swp_offset(v))] -= 1
        pr.exists[row] = False
    for k in range(pr.pmdix.shape[0]):
        if pr.pmdlive[k]:
            f = m.page_folio[np.int64(pte_pfn(pr.pmd[k]))]
            m.folio_refcount[f] -= 1
            m.folio_pmd_mapcount[f] -= 1
            if m.folio_refcount[f] == 0:
                m.folio_flags[f] |= FOLIO_FREED
            pr.pmdlive[k] = False
    pr.rss[:] = 0


@njit
def _mapped_addresses(pr, buf):
    """``all``: the addresses where ``pr`` maps a page (a present PTE or a live PMD), ascending, into ``buf``; how
    many. Rows and PMDs are each sorted by table, and a table is one or the other."""
    n, r, k = 0, 0, 0
    nr, nk = pr.tix.shape[0], pr.pmdix.shape[0]
    while r < nr or k < nk:
        if k < nk and (r >= nr or pr.pmdix[k] < pr.tix[r]):
            if pr.pmdlive[k]:
                for j in range(PTRS_PER_TABLE):
                    buf[n] = pr.pmdix[k] * PTRS_PER_TABLE + j
                    n += 1
            k += 1
            continue
        if pr.exists[r]:
            for j in range(PTRS_PER_TABLE):
                if pte_kind(pr.pte[r, j]) == KIND_PRESENT:
                    buf[n] = pr.tix[r] * PTRS_PER_TABLE + j
                    n += 1
        r += 1
    return n


@njit(nogil=True, cache=True)
def write_steps(who, kind, lo, hi, rule, anon_exclusive, parent, child, m, counts, buf):
    """Run the steps (``who``: 0 parent, 1 child; ``kind``: STEP_*; ``lo``..``hi``) in order; ``counts[who, event]``.
    Returns whether the child exited."""
    exited = False
    for s in range(who.shape[0]):
        pr = parent if who[s] == 0 else child
        if kind[s] == STEP_EXIT:
            _exit(m, child)
            exited = True
            continue
        if kind[s] == STEP_ALL:
            n = _mapped_addresses(pr, buf)
            for j in range(n):
                _write(m, pr, buf[j], rule, anon_exclusive, counts[who[s]])
        else:
            for a in range(lo[s], hi[s] + 1):
                _write(m, pr, a, rule, anon_exclusive, counts[who[s]])
    return exited
