"""PTE values decoded over whole arrays (numpy), the vectorised twin of :mod:`gpusim.kernels.pte`.

Every function takes a ``uint64`` array of raw entries (any shape) and returns an array of the same shape, or, for
:func:`page_pfns` and :func:`swap_slots`, the frame numbers or slots of the entries that hold one, in order. The
state checks, the layout of rss counters, the invariant checker and the teardown after ENOMEM all read entries
through these, so an entry means the same thing everywhere.
"""

from __future__ import annotations

import numpy as np

from gpusim.kernels import flags as F
from gpusim.kernels import pte as P
from gpusim.kernels.flags import (
    FOLIO_ANON,
    FOLIO_SWAPBACKED,
    MM_ANONPAGES,
    MM_FILEPAGES,
    MM_SHMEMPAGES,
    MM_SWAPENTS,
    PTRS_PER_TABLE,
)

_U = np.uint64


def present(val: np.ndarray) -> np.ndarray:
    return (val & _U(P.PAGE_PRESENT)) != 0


def special(val: np.ndarray) -> np.ndarray:
    """Present entries with no struct page accounting (zero page, raw pfns)."""
    return present(val) & ((val & _U(P.PAGE_SPECIAL)) != 0)


def swp_types(val: np.ndarray) -> np.ndarray:
    return (val >> _U(P.SWP_TYPE_SHIFT)) & _U(P.SWP_TYPE_MASK)


def offsets(val: np.ndarray) -> np.ndarray:
    """Bits 12-51 as int64: the pfn of a present, migration or device-private entry, the slot of a swap entry."""
    return ((val >> _U(P.PFN_SHIFT)) & _U(P.PFN_MASK)).astype(np.int64)


def _flat(val) -> np.ndarray:
    return np.ascontiguousarray(val, np.uint64).reshape(-1)


def kinds(val: np.ndarray) -> np.ndarray:
    """:func:`gpusim.kernels.pte.pte_kind` of every entry (int8; -1 for an undecodable one)."""
    val = np.asarray(val, np.uint64)
    if val.size >= F.COMPILED_FROM:
        from gpusim.kernels import scan

        return scan.kinds(_flat(val)).reshape(val.shape)
    pres = present(val)
    typ = swp_types(val)
    kind = np.full(val.shape, -1, np.int8)
    kind[val == 0] = P.KIND_NONE
    kind[pres] = P.KIND_PRESENT
    nonpresent = ~pres & (val != 0)
    kind[nonpresent & (typ == P.SWP_SWAPFILE)] = P.KIND_SWAP
    kind[nonpresent & (typ >= P.SWP_MIGRATION_READ) & (typ <= P.SWP_MIGRATION_WRITE)] = P.KIND_MIGRATION
    kind[nonpresent & ((typ == P.SWP_DEVICE_READ) | (typ == P.SWP_DEVICE_WRITE))] = P.KIND_DEVICE_PRIVATE
    return kind


def frame_folio_counts(val: np.ndarray, page_folio: np.ndarray, nr_folios: int) -> np.ndarray:
    """Per folio (``nr_folios`` of them), the entries of ``val`` that map one of its pages (:func:`maps_frame`)."""
    val = np.asarray(val, np.uint64)
    if val.size >= F.COMPILED_FROM:
        from gpusim.kernels import scan

        return scan.frame_folio_counts(_flat(val), page_folio, nr_folios)
    ok = maps_frame(val)
    return np.bincount(page_folio[offsets(val[ok])], minlength=nr_folios)


def maps_frame(val: np.ndarray) -> np.ndarray:
    """Entries that map a page frame of the page arrays the process can write through: present, not special."""
    return (kinds(val) == P.KIND_PRESENT) & ~special(val)


def holds_page(val: np.ndarray) -> np.ndarray:
    """Entries that hold a reference and a mapcount of their page: :func:`maps_frame`, and device-private."""
    return maps_frame(val) | (kinds(val) == P.KIND_DEVICE_PRIVATE)


def names_page(val: np.ndarray) -> np.ndarray:
    """Entries whose offset is a pfn of the page arrays: :func:`holds_page` and migration entries."""
    return holds_page(val) | (kinds(val) == P.KIND_MIGRATION)


def page_pfns(val: np.ndarray) -> np.ndarray:
    """pfns of the entries that hold a page (:func:`holds_page`), in order."""
    val = np.asarray(val, np.uint64)
    if val.size >= F.COMPILED_FROM:
        from gpusim.kernels import scan

        return scan.offsets_where(_flat(val), -1)
    return offsets(val[holds_page(val)])


def swap_slots(val: np.ndarray) -> np.ndarray:
    """Slots of the swap entries, in order."""
    val = np.asarray(val, np.uint64)
    if val.size >= F.COMPILED_FROM:
        from gpusim.kernels import scan

        return scan.offsets_where(_flat(val), P.KIND_SWAP)
    return offsets(val[kinds(val) == P.KIND_SWAP])


def rss_of(pte: np.ndarray, pmd: np.ndarray, memory) -> np.ndarray:
    """rss counters implied by a set of tables: what ``mm_counter`` gives for each entry (spec invariant 7).

    ``pte`` u64 ``(T, 512)``, ``pmd`` u64 ``(H,)`` (each huge PMD counts 512 anon pages), ``memory`` the
    :class:`gpusim.model.state.Memory` they map; returns i64 ``(4,)`` (anon, file, shmem, swapents).
    """
    if pte.size >= F.COMPILED_FROM:
        from gpusim.kernels import scan

        rss = scan.rss_counts(_flat(pte), memory.page_folio, memory.folio_flags)
        rss[MM_ANONPAGES] += PTRS_PER_TABLE * int(pmd.shape[0])
        return rss
    val = pte.reshape(-1)
    val = val[val != 0]
    rss = np.zeros(4, dtype=np.int64)
    rss[MM_SWAPENTS] = int((kinds(val) == P.KIND_SWAP).sum())
    flags = memory.folio_flags[memory.page_folio[offsets(val[names_page(val)])]]
    anon = (flags & FOLIO_ANON) != 0
    shmem = ~anon & ((flags & FOLIO_SWAPBACKED) != 0)
    rss[MM_ANONPAGES] = int(anon.sum()) + PTRS_PER_TABLE * int(pmd.shape[0])
    rss[MM_SHMEMPAGES] = int(shmem.sum())
    rss[MM_FILEPAGES] = int((~anon & ~shmem).sum())
    return rss


def without_offsets(val: np.ndarray) -> np.ndarray:
    """The entries with bits 12-51 cleared: what is left when the pfn or slot is set aside."""
    return val & _U(P.M64 ^ (P.PFN_MASK << P.PFN_SHIFT))


def with_offsets(base, off: np.ndarray) -> np.ndarray:
    """Entries ``base`` (a value, or an array, with offset 0) carrying the offsets ``off`` (pfns or slots)."""
    return np.asarray(base, np.uint64) | (np.asarray(off).astype(np.uint64) << _U(P.PFN_SHIFT))
