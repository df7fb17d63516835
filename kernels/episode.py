"""An episode's writes, compiled (spec 11.6; the reference is :mod:`gpusim.engines.episode`).

An episode is a long list of single writes in time order, by the parent and the child, each through the write
phase's ``write_at`` (:mod:`gpusim.kernels.writes`, the rules of spec 11.1-11.2). The writes depend on one another
(a page copied by one write is reused by the next), so they run one after another on one core; a write's new page,
folio and content are numbered at once (``fixup_unit`` of a one-unit scratch), in the order the writes happen, as
the reference numbers them.

Beside the state, the run keeps what the timeline samples, up to date write by write in ``st`` (the ``ST_*`` slots):
the pages, folios and contents used, the **COW pages** (pages made by a copy fault whose old page is still in memory;
a copy adds one unless it freed its old page, and a free, rare while the child lives, recounts them all from
``origin``, the old page of each new page) and the **child's private dirty pages** (its mappings of a dirty page
mapped once: a write changes at most the child's mapping at the written address, and the child's whole PMD when the
write makes that PMD dirty). Each write's events are recorded as its :func:`~gpusim.kernels.flags.write_code`.

The writes land on random pages of a state of gigabytes: a write's time is its cache misses. So the rows and VMA of
every write of a window are found first (:func:`locate`, searches without branches), and while one write runs, the
lines of the writes a few behind it are prefetched in three stages (their entries; once those arrived, their pages'
rows; then their folios' rows): measured, the writes run 1.5-2x faster (results/BENCHMARKS.md, issue 27).
"""

import numpy as np
from numba.extending import register_jitable

from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels.flags import (
    EV_COPY,
    EV_NONE,
    EV_SEGV,
    EV_UNMODELLED,
    FOLIO_FREED,
    PTRS_PER_TABLE,
    ST_CHILD_LIVE,
    ST_CONTENT,
    ST_COW,
    ST_FOLIOS,
    ST_PAGES,
    ST_PRIVATE,
    ST_RECOUNT,
    VM_SHARED,
    VM_WRITE,
    WRITE_CODE_BASE,
    write_code,
)
from gpusim.kernels.prefetch import prefetch
from gpusim.kernels.pte import KIND_PRESENT, pte_dirty, pte_kind, pte_pfn, pte_special, pte_write
from gpusim.kernels.table import entry_jitable
from gpusim.kernels.writes import exit_mmap, fixup_unit, write_at


@entry_jitable
def last_at_or_before(a, x):
    """The index of the last element of the ascending ``a`` at or below ``x`` (-1: none), without branches in the
    search (a write's table is random: a branchy search mispredicts half its steps)."""
    n = a.shape[0]
    if n == 0 or a[0] > x:
        return -1
    lo, size = 0, n
    while size > 1:
        half = size >> 1
        lo += half if a[lo + half] <= x else 0
        size -= half
    return lo


@entry_jitable
def find_row(tix, t):
    """The row of table ``t`` in the ascending ``tix`` (-1: none)."""
    k = last_at_or_before(tix, t)
    return k if k >= 0 and tix[k] == t else -1


@register_jitable
def locate(pa, ch, w):
    """Fill each write's rows and VMA (``w.row``, ``w.crow``, ``w.vma``) from its writer and address."""
    for j in range(w.who.shape[0]):
        pr = pa if w.who[j] == 0 else ch
        a = w.addr[j]
        t = a // PTRS_PER_TABLE
        w.row[j] = find_row(pr.tix, t)
        w.crow[j] = find_row(ch.tix, t)
        k = last_at_or_before(pr.vstart, a)
        w.vma[j] = k if k >= 0 and a < pr.vend[k] else -1


@entry_jitable
def _frame(pr, r, i):
    """The page that row ``r`` of ``pr`` maps at entry ``i`` (a present PTE or under a live PMD), and whether that
    mapping is dirty; (-1, False) for none."""
    k = pr.rowpmd[r]
    if k >= 0 and pr.pmdlive[k]:
        return np.int64(pte_pfn(pr.pmd[k])) + i, pte_dirty(pr.pmd[k])
    if not pr.exists[r]:
        return np.int64(-1), False
    v = pr.pte[r, i]
    if pte_kind(v) != KIND_PRESENT or pte_special(v):
        return np.int64(-1), False
    return np.int64(pte_pfn(v)), pte_dirty(v)


@entry_jitable
def mapped_once(m, pfn):
    """Whether page ``pfn`` is mapped once (its mapcount and its folio's PMD mappings: smaps' private)."""
    return m.page_mapcount[pfn] + m.folio_pmd_mapcount[m.page_folio[pfn]] == 1


@entry_jitable
def child_private_at(m, ch, rc, i):
    """1 if the child's mapping at entry ``i`` of its row ``rc`` (-1: none) is of a dirty page mapped once, else 0."""
    if rc < 0:
        return 0
    pfn, dirty = _frame(ch, rc, i)
    return 1 if pfn >= 0 and dirty and mapped_once(m, pfn) else 0


@register_jitable
def pmd_private(m, ch, k):
    """The pages of the child's (dirty) PMD ``k`` that are mapped once."""
    head = np.int64(pte_pfn(ch.pmd[k]))
    n = 0
    for j in range(PTRS_PER_TABLE):
        if mapped_once(m, head + j):
            n += 1
    return n


@register_jitable
def child_private_row(m, ch, r):
    """The child's private dirty pages in its row ``r`` (summed over the rows: the runner's count at the start)."""
    k = ch.rowpmd[r]
    if k >= 0 and ch.pmdlive[k]:
        return pmd_private(m, ch, k) if pte_dirty(ch.pmd[k]) else 0
    n = 0
    if ch.exists[r]:
        for i in range(PTRS_PER_TABLE):
            v = ch.pte[r, i]
            if pte_kind(v) == KIND_PRESENT and not pte_special(v) and pte_dirty(v):
                n += 1 if mapped_once(m, np.int64(pte_pfn(v))) else 0
    return n


@register_jitable
def cow_pages(m, origin, first_new, n_new):
    """The new pages made by a copy fault (``origin`` >= 0) that are alive with their old page."""
    n = 0
    for j in range(n_new):
        o = origin[j]
        if o >= 0 and not m.folio_flags[m.page_folio[first_new + j]] & FOLIO_FREED:
            if not m.folio_flags[m.page_folio[o]] & FOLIO_FREED:
                n += 1
    return n


@entry_jitable
def _gap_code(pr, vi):
    """A write where the writer has no row: what ``write_gaps`` counts there."""
    if vi < 0 or not pr.vflags[vi] & VM_WRITE:
        return write_code(EV_SEGV, -1)
    return write_code(EV_NONE if pr.vflags[vi] & VM_SHARED else EV_UNMODELLED, -1)


@entry_jitable
def _child_pmd(ch, rc):
    """The child's live PMD in its row ``rc`` (-1: none) and whether it is dirty."""
    k = ch.rowpmd[rc] if rc >= 0 else -1
    if k < 0 or not ch.pmdlive[k]:
        return -1, False
    return k, pte_dirty(ch.pmd[k])


@entry_jitable
def _new_pages(m, pr, s, r, st, anon_exclusive):
    """Number the write's new page and contents at once (a one-unit scratch), and apply its rss changes."""
    fixup_unit(m, pr, s, 0, r, st[ST_PAGES], st[ST_FOLIOS], st[ST_CONTENT], anon_exclusive)
    st[ST_PAGES] += s.kp[0]
    st[ST_FOLIOS] += s.kp[0]
    st[ST_CONTENT] += s.kc[0]
    s.kp[0] = 0
    s.kc[0] = 0
    for c in range(pr.rss.shape[0]):
        pr.rss[c] += s.rss[0, c]
        s.rss[0, c] = 0


@entry_jitable
def episode_write(m, pr, ch, s, a, r, rc, vi, st, origin, first_new, rule, anon_exclusive):
    """One write of writer ``pr`` (the parent, or ``ch`` itself) to address ``a``, in its row ``r`` (-1: none) and
    VMA ``vi`` (-1: none); ``rc`` the child's row there. Updates the state and ``st``; returns the write code."""
    i = a % PTRS_PER_TABLE
    if r < 0:
        return _gap_code(pr, vi)
    live = st[ST_CHILD_LIVE] != 0
    rc = rc if live else -1
    before = child_private_at(m, ch, rc, i)
    kc, dirty0 = _child_pmd(ch, rc)
    victim, _ = _frame(pr, r, i)
    code = write_at(m, pr, s, 0, r, i, vi, rule, anon_exclusive)
    _new_pages(m, pr, s, r, st, anon_exclusive)
    if code // WRITE_CODE_BASE == EV_COPY or code % WRITE_CODE_BASE == EV_COPY + 1:
        origin[st[ST_PAGES] - 1 - first_new] = victim
        if m.folio_flags[m.page_folio[victim]] & FOLIO_FREED:
            st[ST_RECOUNT] = 1  # the old page was freed: it may have been another copy's
        else:
            st[ST_COW] += 1
    if kc >= 0 and not dirty0 and ch.pmdlive[kc] and pte_dirty(ch.pmd[kc]):
        st[ST_PRIVATE] += pmd_private(m, ch, kc) - before  # the write made the child's whole PMD dirty
    else:
        st[ST_PRIVATE] += child_private_at(m, ch, rc, i) - before
    return code


@entry_jitable
def _prefetch_write(m, pr, ch, r, rc, i, stage):
    """Prefetch a coming write's lines: its entries (stage 0), its page's rows (1), its folio's rows (2)."""
    if r < 0:
        return
    if stage == 0:
        prefetch(pr.pte, (r, i))
        if rc >= 0:
            prefetch(ch.pte, (rc, i))
        return
    pfn = _frame(pr, r, i)[0]
    if pfn < 0:
        return
    if stage == 1:
        prefetch(m.page_folio, pfn)
        prefetch(m.page_mapcount, pfn)
        prefetch(m.page_flags, pfn)
        prefetch(m.page_content, pfn)  # a write without a fault gives the page new content
        return
    f = m.page_folio[pfn]
    prefetch(m.folio_flags, f)
    prefetch(m.folio_refcount, f)
    prefetch(m.folio_order, f)
    prefetch(m.folio_first_pfn, f)
    prefetch(m.folio_pmd_mapcount, f)
    prefetch(pr.mapped, f)


@register_jitable
def episode_writes(m, pa, ch, s, w, st, codes, origin, first_new, rule, anon_exclusive, ahead):
    """The writes of ``w`` (an ``EpisodeWrites``: per write its writer and address; its rows and VMA filled here) in
    order, their codes into ``codes``; the lines of the writes ``ahead`` ahead prefetched in three stages (entries,
    pages, folios; 0: not; :data:`~gpusim.kernels.flags.EPISODE_AHEAD`)."""
    locate(pa, ch, w)
    n = w.who.shape[0]
    for j in range(n):
        for stage in range(3):  # (the writer's arrays picked by a branch, not a select of every array)
            x = j + ahead[stage]
            if ahead[stage] and x < n:
                if w.who[x] == 0:
                    _prefetch_write(m, pa, ch, w.row[x], w.crow[x], w.addr[x] % PTRS_PER_TABLE, stage)
                else:
                    _prefetch_write(m, ch, ch, w.row[x], w.crow[x], w.addr[x] % PTRS_PER_TABLE, stage)
        a, r, rc, vi = w.addr[j], w.row[j], w.crow[j], w.vma[j]
        if w.who[j] == 0:
            codes[j] = episode_write(m, pa, ch, s, a, r, rc, vi, st, origin, first_new, rule, anon_exclusive)
        else:
            codes[j] = episode_write(m, ch, ch, s, a, r, rc, vi, st, origin, first_new, rule, anon_exclusive)
    if st[ST_RECOUNT]:
        st[ST_COW] = cow_pages(m, origin, first_new, st[ST_PAGES] - first_new)
        st[ST_RECOUNT] = 0


@register_jitable
def episode_exit(m, ch, st, origin, first_new):
    """The child exits (``exit_mmap``): it holds nothing, and the copies recounted."""
    exit_mmap(m, ch)
    st[ST_CHILD_LIVE] = 0
    st[ST_PRIVATE] = 0
    st[ST_COW] = cow_pages(m, origin, first_new, st[ST_PAGES] - first_new)


@register_jitable
def dma_sample(pa, ch, live, addr, frame):
    """The DMA view now (spec 11.3) over the DMA addresses ``addr`` and their frames: (parent diverged, child
    aliased)."""
    diverged, aliased = 0, 0
    for j in range(addr.shape[0]):
        t, i = addr[j] // PTRS_PER_TABLE, addr[j] % PTRS_PER_TABLE
        r = find_row(pa.tix, t)
        pfn = _frame(pa, r, i)[0] if r >= 0 else -1
        if pfn != frame[j]:
            diverged += 1
        r = find_row(ch.tix, t) if live else -1
        if r >= 0 and _frame(ch, r, i)[0] == frame[j] and _writable(ch, r, i):
            aliased += 1
    return diverged, aliased


@entry_jitable
def _writable(pr, r, i):
    k = pr.rowpmd[r]
    if k >= 0 and pr.pmdlive[k]:
        return pte_write(pr.pmd[k])
    return pte_write(pr.pte[r, i])
