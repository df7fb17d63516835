"""Compiled passes over whole arrays for the host side: one read of the input, no temporaries.

The numpy functions of :mod:`gpusim.model.decode`, the invariant checker and the engine's set-up run several vectorised
passes each (a mask, a compaction, a cast); these do the same work in one loop, with the scalar decoders of
:mod:`gpusim.kernels.pte` (so an entry means the same thing here as in the kernels). Each is compiled on its first
call (``cache=True``), not at import.
"""

import numpy as np
from numba import njit, prange

from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels.flags import MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES, MM_SWAPENTS, PTRS_PER_TABLE, mm_counter
from gpusim.kernels.pte import (
    KIND_DEVICE_PRIVATE,
    KIND_MIGRATION,
    KIND_PRESENT,
    KIND_SWAP,
    pte_kind,
    pte_pfn,
    pte_special,
)


@njit(parallel=True, cache=True)
def kinds(flat):
    """``pte_kind`` of every entry of the flat u64 array ``flat`` (int8)."""
    out = np.empty(flat.shape[0], np.int8)
    for i in prange(flat.shape[0]):
        out[i] = pte_kind(flat[i])
    return out


@njit(cache=True)
def entries(table_index, pte):
    """(addresses i64, values u64) of the non-zero entries of the tables ``pte`` ``(T, 512)`` numbered
    ``table_index``, in row order."""
    T = pte.shape[0]
    n = 0
    for t in range(T):
        for j in range(PTRS_PER_TABLE):
            if pte[t, j] != 0:
                n += 1
    addr = np.empty(n, np.int64)
    val = np.empty(n, np.uint64)
    k = 0
    for t in range(T):
        base = table_index[t] * PTRS_PER_TABLE
        for j in range(PTRS_PER_TABLE):
            v = pte[t, j]
            if v != 0:
                addr[k] = base + j
                val[k] = v
                k += 1
    return addr, val


@njit(parallel=True, cache=True)
def maybe_pinned_folios(
    folio_order,
    folio_refcount,
    folio_pincount,
    folio_pmd_mapcount,
    folio_first_pfn,
    page_mapcount,
    large_order,
    pin_bias,
):
    """(bool per folio: maybe pinned, or may become so through the references of a fork (small folios: refcount
    plus every mapping plus one reaches ``pin_bias``; large ones: a pincount), every mapping of those folios (PTEs,
    and a PMD's ``2**order`` pages)). A folio's pages are the rows ``folio_first_pfn ..`` (a valid state)."""
    nf = folio_order.shape[0]
    maybe = np.zeros(nf, np.bool_)
    bound = 0
    for f in prange(nf):
        nr = np.int64(1) << np.int64(folio_order[f])
        first = np.int64(folio_first_pfn[f])
        m = np.int64(folio_pmd_mapcount[f]) * nr
        for p in range(first, first + nr):
            m += page_mapcount[p]
        if folio_order[f] >= large_order:
            y = folio_pincount[f] > 0
        else:
            y = np.int64(folio_refcount[f]) + m + 1 >= pin_bias
        maybe[f] = y
        bound += m if y else 0
    return maybe, bound


@njit(inline="always")
def holds_page_entry(v):
    """The entry holds a reference and a mapcount of its page: present and not special, or device-private."""
    k = pte_kind(v)
    return (k == KIND_PRESENT and not pte_special(v)) or k == KIND_DEVICE_PRIVATE


@njit(cache=True)
def offsets_where(flat, kind):
    """The offsets (pfns or slots, i64) of the entries of ``flat`` that hold a page (``kind`` -1) or are of
    ``kind``, in order."""
    n = 0
    for i in range(flat.shape[0]):
        v = flat[i]
        if holds_page_entry(v) if kind < 0 else pte_kind(v) == kind:
            n += 1
    out = np.empty(n, np.int64)
    k = 0
    for i in range(flat.shape[0]):
        v = flat[i]
        if holds_page_entry(v) if kind < 0 else pte_kind(v) == kind:
            out[k] = np.int64(pte_pfn(v))  # bits 12-51: the pfn, or the slot of a swap entry
            k += 1
    return out


@njit(parallel=True, cache=True)
def rss_counts(flat, page_folio, folio_flags):
    """The rss counters (anon, file, shmem, swapents) the entries ``flat`` imply: ``mm_counter`` of the folio of
    every entry that names a page (holds one, or a migration entry), and the swap entries."""
    anon = 0
    file = 0
    shmem = 0
    swap = 0
    for i in prange(flat.shape[0]):
        v = flat[i]
        k = pte_kind(v)
        if k == KIND_SWAP:
            swap += 1
        elif holds_page_entry(v) or k == KIND_MIGRATION:
            c = mm_counter(folio_flags[page_folio[pte_pfn(v)]])
            anon += c == MM_ANONPAGES
            file += c == MM_FILEPAGES
            shmem += c == MM_SHMEMPAGES
    out = np.zeros(4, np.int64)
    out[MM_ANONPAGES] = anon
    out[MM_FILEPAGES] = file
    out[MM_SHMEMPAGES] = shmem
    out[MM_SWAPENTS] = swap
    return out


@njit(cache=True)
def child_references(flat, page_folio, nr_pages, nr_folios):
    """(mapcount per page, references per folio) that the entries ``flat`` hold (:func:`holds_page_entry`), int32
    as the state's counts are: zeroing and faulting in two int64 arrays of the memory's size took three quarters of
    this pass."""
    pages = np.zeros(nr_pages, np.int32)
    folios = np.zeros(nr_folios, np.int32)
    for i in range(flat.shape[0]):
        v = flat[i]
        if holds_page_entry(v):
            p = pte_pfn(v)
            pages[p] += 1
            folios[page_folio[p]] += 1
    return pages, folios


@njit(cache=True)
def frame_folio_counts(flat, page_folio, nr_folios):
    """Per folio, the entries of ``flat`` that map one of its pages (present, not special: the write phase's
    ``mapped`` counts, :func:`gpusim.model.decode.maps_frame`)."""
    out = np.zeros(nr_folios, np.int64)
    for i in range(flat.shape[0]):
        v = flat[i]
        if pte_kind(v) == KIND_PRESENT and not pte_special(v):
            out[page_folio[pte_pfn(v)]] += 1
    return out


@njit(parallel=True, cache=True)
def copy_all_threads(src, dst):
    """``dst[:] = src`` with every thread: the host's copy bandwidth, as the CPU kernels could use it."""
    for i in prange(src.shape[0]):
        dst[i] = src[i]


@njit(parallel=True, cache=True)
def fill_all_threads(dst, value):
    """``dst[:] = value`` with every thread (fresh memory is faulted in on every core)."""
    for i in prange(dst.shape[0]):
        dst[i] = value


@njit(cache=True)
def mismatches(got, base, add, limit):
    """The first ``limit`` positions ``i < len(base)`` where ``got[i] != base[i] + add[i]``, and how many there are."""
    out = np.empty(limit, np.int64)
    k = 0
    for i in range(base.shape[0]):
        if np.int64(got[i]) != np.int64(base[i]) + add[i]:
            if k < limit:
                out[k] = i
            k += 1
    return out[: min(k, limit)], k


@njit(parallel=True, cache=True)
def tables_of_sorted(addr, val):
    """(table numbers, ``(T, 512)`` tables) holding the entries ``val`` at the ascending page addresses ``addr``
    (the inverse of :func:`entries`), after whether ``addr`` is ascending (if not: nothing). A pass over the
    addresses finds the tables, then the tables are filled in parallel."""
    n = addr.shape[0]
    T = 0
    for i in range(n):
        if i and addr[i] < addr[i - 1]:
            return False, np.zeros(0, np.int64), np.zeros((0, PTRS_PER_TABLE), np.uint64)
        if i == 0 or addr[i] // PTRS_PER_TABLE != addr[i - 1] // PTRS_PER_TABLE:
            T += 1
    index = np.empty(T, np.int64)
    first = np.empty(T + 1, np.int64)
    r = -1
    for i in range(n):
        t = addr[i] // PTRS_PER_TABLE
        if r < 0 or index[r] != t:
            r += 1
            index[r] = t
            first[r] = i
    first[T] = n
    pte = np.empty((T, PTRS_PER_TABLE), np.uint64)
    for r in prange(T):
        for j in range(PTRS_PER_TABLE):
            pte[r, j] = 0
        for i in range(first[r], first[r + 1]):
            pte[r, addr[i] % PTRS_PER_TABLE] = val[i]
    return True, index, pte
