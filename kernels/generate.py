"""The region generator compiled (:mod:`gpusim.inputs.regions`): its random choices, keyed by position, not by the order
in which they are made, and its step 2, the tables of a chunk, written once for the CPU and CUDA drivers.

Every draw of an item is a hash of (a key, the item's id), so the address space a generator builds does not depend
on how it is cut into chunks: a chunk of tables draws exactly what the same tables draw in a whole build. The hash
is the splitmix64 finaliser (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014),
a bijection of 64 bits with good avalanche, so distinct ids give independent-looking draws.

:func:`generate_row` builds one table row of a chunk from the plan's numbers for its table (step 1 of
:mod:`gpusim.inputs.regions`), where the plan says its pages, folios and slots start: so every row is built on its own
(a CPU thread or a CUDA thread each), in host memory or directly in device memory, and the arrays equal those the
region generator's reference build (:class:`gpusim.model.builder.SpaceBuilder`) makes.
"""

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels.flags import (
    BACKING_SHMEM,
    FOLIO_ANON,
    FOLIO_SWAPBACKED,
    MM_ANONPAGES,
    MM_SWAPENTS,
    PAGE_ANON_EXCLUSIVE,
    PTRS_PER_TABLE,
    VM_SHARED,
    VM_WRITE,
    mm_counter,
    swap_cap,
)
from gpusim.kernels.folio import is_large_for_pins, pin_refcount_delta
from gpusim.kernels.pte import mk_huge_pmd, mk_pte, mk_swap_pte

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
UNIT = 1.0 / 9007199254740992.0  # 2**-53


@register_jitable(forceinline=True)
def splitmix(key, item):
    """A 64-bit hash of ``item`` under ``key``."""
    z = key + np.uint64(item) * GOLDEN
    z = (z ^ (z >> np.uint64(30))) * M1
    z = (z ^ (z >> np.uint64(27))) * M2
    return z ^ (z >> np.uint64(31))


@register_jitable(forceinline=True)
def uniform(key, item):
    """A draw in ``[0, 1)`` (53 bits) of ``item`` under ``key``."""
    return np.float64(splitmix(key, item) >> np.uint64(11)) * UNIT


@register_jitable(forceinline=True)
def take(key, first_id, i, n, need):
    """Selection sampling's step for item ``i`` of a group of ``n`` with ``need`` still to take (Knuth, TAOCP vol.
    2, 3.4.2, algorithm S): taken with probability (still needed) / (still left), by ``uniform(key, first_id + i)``.
    A group whose ``need`` is all of it at the start is taken whole without draws (callers check)."""
    return need > 0 and uniform(key, first_id + i) * (n - i) < need


@njit(parallel=True, cache=True, nogil=True)
def select_in_groups(size, k, first_id, key):
    """Exactly ``k[g]`` of the ``size[g]`` items of each group ``g`` (groups laid out one after another), chosen
    by selection sampling (:func:`take`: every subset of that size is equally likely), item ``i`` of group ``g``
    drawing ``uniform(key, first_id[g] + i)``. Returns a bool array over all items."""
    G = size.shape[0]
    off = np.zeros(G + 1, np.int64)
    for g in range(G):
        off[g + 1] = off[g] + size[g]
    out = np.zeros(off[G], np.bool_)
    for g in prange(G):
        n = size[g]
        need = k[g]
        base = off[g]
        if need >= n:
            for i in range(n):
                out[base + i] = True
            continue
        for i in range(n):
            if need == 0:
                break
            if take(key, first_id[g], i, n, need):
                out[base + i] = True
                need -= 1
    return out


@njit(parallel=True, cache=True, nogil=True)
def uniform_ints(ids, key, hi):
    """For each id, an integer in ``1 .. hi`` drawn under ``key`` (int64)."""
    out = np.empty(ids.shape[0], np.int64)
    for i in prange(ids.shape[0]):
        out[i] = draw_int(key, ids[i], hi)
    return out


@register_jitable(forceinline=True)
def draw_int(key, item, hi):
    """An integer in ``1 .. hi`` drawn for ``item`` under ``key``."""
    return 1 + np.int64(splitmix(key, item) % np.uint64(hi))


# --- step 2 of gpusim.inputs.regions, one table row at a time (v: GenVmas, w: GenRows, o: GenOut of kernels/args.py)
# -----

THP_ORDER = 9


@register_jitable
def new_folio(f, p0, order, fflags, ref, pmd_mapcount, page_flags, page_mapcount, page_c0, o):
    """Folio ``f`` of ``2**order`` pages from pfn ``p0``, unpinned; its pages' contents are ``page_c0 + pfn``."""
    o.folio_order[f] = order
    o.folio_refcount[f] = ref
    o.folio_pincount[f] = 0
    o.folio_true_pins[f] = 0
    o.folio_pmd_mapcount[f] = pmd_mapcount
    o.folio_flags[f] = fflags
    o.folio_first_pfn[f] = p0
    for p in range(p0, p0 + (1 << order)):
        o.page_folio[p] = f
        o.page_mapcount[p] = page_mapcount
        o.page_flags[p] = page_flags
        o.page_content[p] = page_c0 + p


@register_jitable
def pin_folio(f, large_order, o):
    """``add_pin`` once (spec 1.6), as :meth:`gpusim.model.builder.SpaceBuilder.add_pins` does."""
    order = np.int64(o.folio_order[f])
    o.folio_refcount[f] += pin_refcount_delta(order, large_order)
    if is_large_for_pins(order, large_order):
        o.folio_pincount[f] += 1
    o.folio_true_pins[f] += 1


@register_jitable
def in_pin_run(i, idx, v):
    """Whether the VMA ``i``'s folio ``idx`` (in address order) lies in one of its pin runs."""
    for x in range(v.run_lo[i], v.run_hi[i]):
        if v.run_start[x] <= idx < v.run_start[x] + v.run_len[x]:
            return True
    return False


@register_jitable
def pinned_here(r, i, fr, nf, need, v, w):
    """Whether the row's ``fr``-th folio of ``nf`` is pinned: scattered pins drawn per table with ``need`` still to
    take, or the VMA's pin runs."""
    if v.pin_runs[i]:
        return in_pin_run(i, w.folios_before[r] + fr, v)
    if w.pinned[r] >= nf:
        return w.pinned[r] > 0
    return take(v.keys[i, 2], w.table[r] * PTRS_PER_TABLE, fr, nf, need)


@register_jitable
def thp_row(r, i, large_order, page_c0, v, w, o):
    """A table a THP maps: its folio (the head page carries the PMD's exclusive flag) and huge PMD."""
    f, p0 = w.folio0[r], w.page0[r]
    new_folio(f, p0, THP_ORDER, FOLIO_ANON | FOLIO_SWAPBACKED, 1, 1, 0, 0, page_c0, o)
    o.page_flags[p0] = PAGE_ANON_EXCLUSIVE
    if pinned_here(r, i, 0, 1, w.pinned[r], v, w):
        pin_folio(f, large_order, o)
    o.pmd[w.pmd_row[r]] = mk_huge_pmd(p0, (v.flags[i] & VM_WRITE) != 0, True, True)
    o.rss[r, MM_ANONPAGES] = PTRS_PER_TABLE


@register_jitable
def swap_unit(base, e, F, sid, anon_exclusive, slot_c0, key, hi, pr, o):
    """A swapped-out unit of ``F`` pages at entry ``e`` of PTE row ``pr`` (``base``: the table's first page in its
    VMA): a slot per page from ``sid``, its count drawn in ``1 .. hi`` for the page with the continuation levels the
    count needs, and a swap entry each (exclusive where the variant marks them and the count is 1)."""
    for p in range(F):
        cnt = draw_int(key, base + e + p, hi)
        levels = 0
        while levels < 3 and cnt > swap_cap(levels):
            levels += 1
        o.swap_count[sid + p] = cnt
        o.swap_levels[sid + p] = levels
        o.swap_content[sid + p] = slot_c0 + sid + p
        o.pte[pr, e + p] = mk_swap_pte(sid + p, anon_exclusive and cnt == 1)


@register_jitable
def pte_row(r, i, anon_exclusive, large_order, page_c0, slot_c0, v, w, o):
    """A PTE table: which of its units are present (``present`` of ``units``, drawn under key 0), which of those
    are swapped out (key 1) and which mapped folios are pinned, in address order; folios, pages and slots numbered
    from where the plan puts the row's."""
    order, anon, flags = v.order[i], v.anon[i], v.flags[i]
    F, U, k, s, base = 1 << order, w.units[r], w.present[r], w.swapped[r], w.table[r] * PTRS_PER_TABLE
    fflags, pflags, ref = FOLIO_ANON | FOLIO_SWAPBACKED, PAGE_ANON_EXCLUSIVE, F
    if not anon:  # + the page cache's reference
        fflags, pflags, ref = FOLIO_SWAPBACKED if v.backing[i] == BACKING_SHMEM else 0, 0, 1 + F
    write, dirty = (flags & VM_WRITE) != 0 and anon, anon or (flags & VM_SHARED) != 0
    need_p, need_s, need_pin, nf = k, s, w.pinned[r], k - s
    f, page, sid, pr, j, fr = w.folio0[r], w.page0[r], w.slot0[r], w.pte_row[r], 0, 0
    for u in range(U):
        if k < U:
            if need_p == 0:
                break
            if not take(v.keys[i, 0], base, u, U, need_p):
                continue
            need_p -= 1
        swapped = s >= k or take(v.keys[i, 1], base, j, k, need_s)
        need_s -= 1 if swapped else 0
        j += 1
        e = u << order
        if swapped:
            swap_unit(base, e, F, sid, anon_exclusive, slot_c0, v.keys[i, 3], v.swap_max[i], pr, o)
            sid += F
            continue
        new_folio(f, page, order, fflags, ref, 0, pflags, 1, page_c0, o)
        if pinned_here(r, i, fr, nf, need_pin, v, w):
            pin_folio(f, large_order, o)
            need_pin -= 1
        for p in range(F):
            o.pte[pr, e + p] = mk_pte(page + p, write, dirty, True, False)
        f, page, fr = f + 1, page + F, fr + 1
    o.rss[r, mm_counter(fflags)] = (f - w.folio0[r]) * F
    o.rss[r, MM_SWAPENTS] = sid - w.slot0[r]


@register_jitable
def generate_row(r, anon_exclusive, large_order, page_c0, slot_c0, v, w, o):
    """Row ``r`` of a chunk (a PTE table or a THP), its memory and its rss counters."""
    i = w.vma[r]
    if w.thp[r]:
        thp_row(r, i, large_order, page_c0, v, w, o)
    else:
        pte_row(r, i, anon_exclusive, large_order, page_c0, slot_c0, v, w, o)
