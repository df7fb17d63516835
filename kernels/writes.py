"""The write phase after the fork, compiled (spec section 11; the reference is :mod:`gpusim.engines.writes`), written
once for the CPU (``prange``) and CUDA (a thread per table) drivers.

A step of one writer (``parent:all``, ``child:0-99``) writes its addresses in ascending order. Its work comes in
*units*, one per page-table row of the writer that the step meets (rows are reserved ahead for every table a write
may need: a PMD split, a fault where there was no table); addresses in tables with no row only count events
(:func:`write_gaps`). A unit's writes run one after another (:func:`write_unit`), as the reference's do; two units
are independent when no folio is mapped by both: :func:`plan_unit` checks each unit's folios with the writer's
per-folio mapping counts (``mapped``: its PTEs that map the folio, plus 512 per PMD) and bounds the unit's new
pages. Independent units run in parallel; the others one after another in address order, after them.

New pages, folios and contents are numbered as the reference numbers them, in address order: during the step a unit
records what it allocates in its own slice of the step's scratch (the entry of each new page, the page of each new
content), and :func:`fixup_unit` numbers them once every unit is done, from the prefix sums of the units' counts
(the host's ``cumsum``). A writer, the memory and the scratch are groups of arrays (``Proc``, ``WMem``, ``Scratch``
of :mod:`gpusim.kernels.args`; their fields in :mod:`gpusim.kernels.fields`); the memory's arrays have room for a
new page per write. The reuse decisions are :func:`gpusim.kernels.rules.wp_reuse_pte` and
:func:`~gpusim.kernels.rules.wp_reuse_pmd`, shared with the reference; events are counted per unit in the order of
``gpusim.kernels.flags.WRITE_EVENTS``.
"""

import numpy as np
from numba.extending import register_jitable

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
    VM_SHARED,
    VM_WRITE,
    mm_counter,
    write_code,
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
from gpusim.kernels.table import entry_jitable


@entry_jitable
def _content(s, u, p):
    s.cpfn[s.base[u] + s.kc[u]] = p
    s.kc[u] += 1


@entry_jitable
def _new_page(s, u, i):
    """A new order-0 anon page for entry ``i``, mapped there by :func:`fixup_unit` (its number is known then)."""
    k = s.kp[u]
    s.newi[s.base[u] + k] = i
    s.kp[u] = k + 1
    _content(s, u, -k - 1)


@entry_jitable
def _put_mapping(m, pr, pfn, present):
    f = m.page_folio[pfn]
    m.page_mapcount[pfn] -= 1
    m.folio_refcount[f] -= 1
    if present:
        pr.mapped[f] -= 1
    if m.folio_refcount[f] == 0:
        m.folio_flags[f] |= FOLIO_FREED


@entry_jitable
def _folio_maps(m, f):
    """(largest, sum of) the map counts of folio ``f``'s pages, and its pages."""
    first = np.int64(m.folio_first_pfn[f])
    nr = np.int64(1) << np.int64(m.folio_order[f])
    mx, total = np.int64(0), np.int64(0)
    for q in range(first, first + nr):
        c = np.int64(m.page_mapcount[q])
        mx = max(mx, c)
        total += c
    return mx, total, nr


@entry_jitable
def _do_wp_page(m, pr, s, u, r, i, v, rule, anon_exclusive):
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
            pr.pte[r, i] = pte_mkdirty(pte_mkyoung(pte_mkwrite(v)))
            if anon_exclusive:
                m.page_flags[pfn] |= PAGE_ANON_EXCLUSIVE
            _content(s, u, pfn)
            return EV_REUSE
    _new_page(s, u, i)
    if not m.folio_flags[f] & FOLIO_ANON:  # a page-cache page: the writer's rss moves to anon
        s.rss[u, mm_counter(m.folio_flags[f])] -= 1
        s.rss[u, MM_ANONPAGES] += 1
    _put_mapping(m, pr, pfn, True)
    return EV_COPY


@entry_jitable
def _split_huge_pmd(m, pr, k, r):
    pmd = pr.pmd[k]
    pr.pmdlive[k] = False
    head = np.int64(pte_pfn(pmd))
    f = m.page_folio[head]
    excl = m.page_flags[head] & PAGE_ANON_EXCLUSIVE
    for j in range(PTRS_PER_TABLE):
        m.page_mapcount[head + j] += 1
        m.page_flags[head + j] = (m.page_flags[head + j] & ~np.uint8(PAGE_ANON_EXCLUSIVE)) | excl
        pr.pte[r, j] = mk_pte(head + j, False, pte_dirty(pmd), pte_young(pmd), False)
    pr.exists[r] = True
    m.folio_refcount[f] += PTRS_PER_TABLE - 1
    m.folio_pmd_mapcount[f] -= 1


@entry_jitable
def _huge_pmd_write(m, pr, k, r, rule, anon_exclusive):
    """A write to the PMD-mapped THP of row ``r``: its event (``EV_PMD_SPLIT``: the caller retries)."""
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
    _split_huge_pmd(m, pr, k, r)
    return EV_PMD_SPLIT


@entry_jitable
def _pte_write(m, pr, s, u, r, i, vi, rule, anon_exclusive):
    """A write at PTE level to entry ``i`` of row ``r`` in VMA ``vi``: its event."""
    v = pr.pte[r, i] if pr.exists[r] else np.uint64(0)
    kind = pte_kind(v)
    if (pr.vflags[vi] & VM_SHARED) != 0 or (kind == KIND_PRESENT and pte_special(v)):
        if kind == KIND_PRESENT and not pte_special(v):  # the page itself is written in place
            _content(s, u, np.int64(pte_pfn(v)))
        return EV_NONE
    if kind == KIND_NONE:
        if pr.vbacking[vi] != BACKING_ANON:
            return EV_UNMODELLED
        pr.exists[r] = True  # reserved ahead when there was no table
        _new_page(s, u, i)
        s.rss[u, MM_ANONPAGES] += 1
        return EV_ANON_FAULT
    if kind != KIND_PRESENT:
        return EV_UNMODELLED
    if pte_write(v):
        pr.pte[r, i] = pte_mkdirty(pte_mkyoung(v))
        _content(s, u, np.int64(pte_pfn(v)))
        return EV_NONE
    return _do_wp_page(m, pr, s, u, r, i, v, rule, anon_exclusive)


@entry_jitable
def write_at(m, pr, s, u, r, i, vi, rule, anon_exclusive):
    """One write (``handle_mm_fault``) to entry ``i`` of row ``r``, in VMA ``vi`` (-1: none), counted for unit ``u``.
    Returns its :func:`~gpusim.kernels.flags.write_code` (a PMD split and its retry at PTE level: two events)."""
    if vi < 0 or not pr.vflags[vi] & VM_WRITE:
        s.counts[u, EV_SEGV] += 1
        return write_code(EV_SEGV, -1)
    first = -1
    k = pr.rowpmd[r]
    if k >= 0 and pr.pmdlive[k]:
        if (pr.vflags[vi] & VM_SHARED) != 0:
            s.counts[u, EV_NONE] += 1
            return write_code(EV_NONE, -1)
        ev = _huge_pmd_write(m, pr, k, r, rule, anon_exclusive)
        s.counts[u, ev] += 1
        if ev != EV_PMD_SPLIT:
            return write_code(ev, -1)
        first = ev
    ev = _pte_write(m, pr, s, u, r, i, vi, rule, anon_exclusive)
    s.counts[u, ev] += 1
    return write_code(ev, -1) if first < 0 else write_code(first, ev)


@entry_jitable
def _span(pr, r, lo, hi):
    """Row ``r``'s entries that addresses ``lo`` .. ``hi`` meet, and its first address."""
    a0 = pr.tix[r] * PTRS_PER_TABLE
    return max(lo - a0, 0), min(hi - a0, PTRS_PER_TABLE - 1), a0


@entry_jitable
def vma_before(pr, a):
    """The last VMA that starts at or before ``a`` (-1: none)."""
    lo, hi = 0, pr.vstart.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if pr.vstart[mid] <= a:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@entry_jitable
def _written(pr, r, i, every, huge):
    """Whether a step writes entry ``i`` of row ``r``: every entry of its range, or (``every``) those mapped."""
    return not every or huge or (pr.exists[r] and pte_kind(pr.pte[r, i]) == KIND_PRESENT)


@register_jitable
def write_unit(m, pr, s, u, r, lo, hi, every, rule, anon_exclusive):
    """Unit ``u``: the step's writes to row ``r`` (addresses ``lo`` .. ``hi``; ``every``: only those mapped when the
    step began), in address order."""
    i0, i1, a0 = _span(pr, r, lo, hi)
    k = pr.rowpmd[r]
    huge = k >= 0 and pr.pmdlive[k]
    vi = vma_before(pr, a0 + i0)
    nv = pr.vstart.shape[0]
    for i in range(i0, i1 + 1):
        if not _written(pr, r, i, every, huge):
            continue
        a = a0 + i
        while vi + 1 < nv and pr.vstart[vi + 1] <= a:
            vi += 1
        write_at(m, pr, s, u, r, i, vi if vi >= 0 and a < pr.vend[vi] else -1, rule, anon_exclusive)


@entry_jitable
def _folio_here(m, pr, r, i, pfn, f):
    """Whether every mapping of folio ``f`` by the writer is in row ``r`` (entry ``i`` maps page ``pfn`` of it): the
    writer maps an order-0 folio once, or the entries where the folio's pages would lie map it as often as ``mapped``
    counts."""
    if m.folio_order[f] == 0:
        return pr.mapped[f] == 1
    j0 = i - (pfn - np.int64(m.folio_first_pfn[f]))
    n = np.int64(0)
    for j in range(max(j0, 0), min(j0 + (np.int64(1) << np.int64(m.folio_order[f])), PTRS_PER_TABLE)):
        w = pr.pte[r, j]
        if pte_kind(w) == KIND_PRESENT and not pte_special(w) and m.page_folio[np.int64(pte_pfn(w))] == f:
            n += 1
    return n == pr.mapped[f]


@register_jitable
def plan_unit(m, pr, s, u, r, lo, hi, every):
    """Unit ``u`` (row ``r``): how many writes it makes (``s.base[u]``, a bound on its new pages and contents), and
    whether no other unit can meet its folios (``s.safe[u]``)."""
    i0, i1, _ = _span(pr, r, lo, hi)
    k = pr.rowpmd[r]
    n, safe, prev = np.int64(0), True, -1
    if k >= 0 and pr.pmdlive[k]:
        n = i1 - i0 + 1
        safe = pr.mapped[m.page_folio[np.int64(pte_pfn(pr.pmd[k]))]] == PTRS_PER_TABLE
    elif pr.exists[r] or not every:
        for i in range(i0, i1 + 1):
            if not _written(pr, r, i, every, False):
                continue
            n += 1
            v = pr.pte[r, i] if pr.exists[r] else np.uint64(0)
            if pte_kind(v) == KIND_PRESENT and not pte_special(v):
                pfn = np.int64(pte_pfn(v))
                f = m.page_folio[pfn]
                if f != prev:
                    safe = safe and _folio_here(m, pr, r, i, pfn, f)
                    prev = f
    s.base[u] = n
    s.safe[u] = safe


@entry_jitable
def fixup_unit(m, pr, s, u, r, pages0, folios0, content0, anon_exclusive):
    """Number unit ``u``'s new pages, folios and contents after those of the units before it (``s.pp``, ``s.pc``),
    from ``pages0`` / ``folios0`` / ``content0``: the new pages are made and mapped, the contents written."""
    g0 = s.base[u]
    for k in range(s.kp[u]):
        pfn, f = pages0 + s.pp[u] + k, folios0 + s.pp[u] + k
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
        pr.pte[r, s.newi[g0 + k]] = mk_pte(pfn, True, True, True, False)
        pr.mapped[f] = 1
    for k in range(s.kc[u]):
        p = s.cpfn[g0 + k]
        m.page_content[p if p >= 0 else pages0 + s.pp[u] - p - 1] = content0 + s.pc[u] + k


@register_jitable
def write_gaps(pr, lo, hi, r0, r1, counts):
    """Count the writes to addresses ``lo`` .. ``hi`` in tables without a row (rows ``r0`` .. ``r1 - 1`` are the
    step's units) into ``counts``: outside a writable VMA a ``segv``, in a shared one ``none``, in a private one
    ``unmodelled`` (a table an anonymous VMA meets has a row: a fault there is a unit's). Returns False if an
    anonymous VMA had no row."""
    ok, vi, a, nv = True, 0, lo, pr.vstart.shape[0]
    for r in range(r0, r1 + 1):
        e = min(hi + 1, pr.tix[r] * PTRS_PER_TABLE) if r < r1 else hi + 1  # the gap is a .. e - 1
        if e > a:
            while vi < nv and pr.vend[vi] <= a:
                vi += 1
            inside = np.int64(0)
            j = vi
            while j < nv and pr.vstart[j] < e:
                n = min(e, pr.vend[j]) - max(a, pr.vstart[j])
                if n > 0:
                    inside += n
                    flags = pr.vflags[j]
                    if not flags & VM_WRITE:
                        counts[EV_SEGV] += n
                    elif flags & VM_SHARED:
                        counts[EV_NONE] += n
                    else:
                        counts[EV_UNMODELLED] += n
                        ok = ok and pr.vbacking[j] != BACKING_ANON
                j += 1
            counts[EV_SEGV] += e - a - inside
        if r < r1:
            a = max(a, (pr.tix[r] + 1) * PTRS_PER_TABLE)
    return ok


@register_jitable
def exit_mmap(m, pr):
    """The child's exit: every entry drops what it holds; the child is left empty."""
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
    for k in range(pr.pmd.shape[0]):
        if pr.pmdlive[k]:
            f = m.page_folio[np.int64(pte_pfn(pr.pmd[k]))]
            m.folio_refcount[f] -= 1
            m.folio_pmd_mapcount[f] -= 1
            if m.folio_refcount[f] == 0:
                m.folio_flags[f] |= FOLIO_FREED
            pr.pmdlive[k] = False
    for c in range(pr.rss.shape[0]):
        pr.rss[c] = 0
