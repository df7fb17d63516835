"""The arrays of the state model (spec section 1): every field of :class:`gpusim.model.state.Memory` and
:class:`gpusim.model.state.MM` with its dtype and per-row shape.

These tables drive validation, the canonical digest, copies and the dtypes the kernels are compiled for. The kernels'
argument groups are described here too, field by field (:data:`GROUP_FIELDS`, numpy only, so that the host side reads
them without loading numba); :mod:`gpusim.kernels.args` makes their types.
"""

import numpy as np

from gpusim.kernels.flags import PTRS_PER_TABLE

# Each field: (dtype, per-row shape). The order here is the canonical order of the digest. Folio and page counts
# and indices are int32 (up to 2**31 pages, 8 TiB of 4 KiB pages; refcounts below 2**31), to keep the bytes per
# simulated PTE and the memory traffic of the kernels low; swap counts are int64 (continuations reach 63*128**L).
MEMORY_FIELDS: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "folio_order": (np.dtype(np.uint8), ()),
    "folio_refcount": (np.dtype(np.int32), ()),
    "folio_pincount": (np.dtype(np.int32), ()),
    "folio_true_pins": (np.dtype(np.int32), ()),
    "folio_pmd_mapcount": (np.dtype(np.int32), ()),
    "folio_flags": (np.dtype(np.uint8), ()),
    "folio_first_pfn": (np.dtype(np.int32), ()),
    "page_folio": (np.dtype(np.int32), ()),
    "page_mapcount": (np.dtype(np.int32), ()),
    "page_flags": (np.dtype(np.uint8), ()),
    "page_content": (np.dtype(np.uint64), ()),
    "swap_count": (np.dtype(np.int64), ()),
    "swap_levels": (np.dtype(np.int64), ()),
    "swap_content": (np.dtype(np.uint64), ()),
}
MM_FIELDS: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "vma_start": (np.dtype(np.int64), ()),
    "vma_end": (np.dtype(np.int64), ()),
    "vma_flags": (np.dtype(np.uint64), ()),
    "vma_backing": (np.dtype(np.uint8), ()),
    "vma_anon_vma": (np.dtype(np.bool_), ()),
    "table_index": (np.dtype(np.int64), ()),
    "pte": (np.dtype(np.uint64), (PTRS_PER_TABLE,)),
    "pmd_index": (np.dtype(np.int64), ()),
    "pmd": (np.dtype(np.uint64), ()),
    "rss": (np.dtype(np.int64), ()),
}


# --- the kernels' argument groups (their namedtuples and numba types: gpusim.kernels.args) -----------------------
_PTE = np.dtype(np.uint64)
_I64 = np.dtype(np.int64)
_U64 = np.dtype(np.uint64)
_I32 = np.dtype(np.int32)
_U8 = np.dtype(np.uint8)
_B = np.dtype(np.bool_)


def _memory(names, dims: int = 1) -> dict:
    """Memory fields with their dtypes of :data:`MEMORY_FIELDS`."""
    return {name: (MEMORY_FIELDS[name][0], dims) for name in names}


# Each group: its fields in order, (dtype, dimensions).
GROUP_FIELDS: dict[str, dict[str, tuple[np.dtype, int]]] = {
    # the variant's rules (gpusim.model.variants.Variant): no kernel knows a variant otherwise
    "variant": {
        "machine": (_I64, 0),  # copy_pte_range's state machine in the slow path (M_* of flags)
        "early_cow": (_B, 0),  # maybe-pinned pages are copied at fork
        "anon_exclusive": (_B, 0),  # PageAnonExclusive: only exclusive anon pages copied early, a share clears it,
        #                             swap entries and copies carry it
        "batching": (_B, 0),  # PTEs of one large folio shared as a batch (folio_pte_batch)
        "large_order": (_I64, 0),  # folios of this order or more keep an exact pincount
    },
    "tables": {
        "table_index": (_I64, 1),  # the table's number (covers 512 * table_index ..)
        "row_lo": (_I64, 1),  # its calls: row_lo .. row_hi - 1
        "row_hi": (_I64, 1),
        "ppte": (_PTE, 2),  # the parent's entries (write protection, downgrades)
        "cpte": (_PTE, 2),  # the child's entries
        "cexists": (_B, 1),  # the child's table was allocated
        "has_pinned": (_B, 1),  # the forking mm's has_pinned / MMF_HAS_PINNED
        "fork_seq": (_I64, 1),  # the fork's number (keys the oracle)
    },
    "calls": {
        "start": (_I64, 1),  # the call's range [start, end)
        "end": (_I64, 1),
        "vmaflags": (_I64, 1),  # VM_* flags of the call's VMA
        "first": (_B, 1),  # the first call of its table (allocates the child's table)
    },
    "memory": _memory(
        (
            "page_folio",
            "folio_order",
            "folio_refcount",
            "folio_pincount",
            "folio_true_pins",
            "folio_flags",
            "folio_first_pfn",
            "page_mapcount",
            "page_flags",
            "swap_count",
            "swap_levels",
        )
    ),
    "oracle": {
        "mode": (_I64, 0),  # NB_* of gpusim.kernels.rules
        "every": (_I64, 0),  # every:N
        "p_q32": (_U64, 0),  # bern:P as P * 2**32
        "seed": (_U64, 0),
        "list_cs": (_I64, 1),  # list:(s, k),...
        "list_k": (_I64, 1),
    },
    # The slow path's own arrays (gpusim.kernels.slowpath): what an early copy or a THP touches beyond the memory
    # group (page contents, PMD mapcounts), the logs of early copies, which the invariant checker reads, and a row
    # per item (table or THP): its allocator's and logs' state (ST_*) and the xu series' struct copy_mm_data of the
    # call being copied (an item's own function sees its rows as ``state`` and ``copy_mm_data``). The memory group's
    # arrays are passed with room for the pages the slow path allocates.
    "slow": {
        "page_content": (_U64, 1),
        "folio_pmd_mapcount": (_I32, 1),
        "state": (_I64, 2),  # a row per item: ST_* of gpusim.kernels.slowpath
        "installs": (_I64, 2),  # address, pfn, source pfn, VMA flags
        "duplicates": (_I64, 2),  # pfn, source pfn
        "copy_mm_data": (_I64, 2),  # a row per item: D_* of gpusim.kernels.slowpath
    },
    # The PMD-mapped THPs the slow path copies, a row each (a THP's table has its own row of a second Tables group,
    # filled when the PMD is split): the parent's PMD (write-protected when shared), the child's, and what was done
    # (gpusim.kernels.slowpath.HUGE_*).
    "huge": {"pmd": (_U64, 1), "child_pmd": (_U64, 1), "state": (np.dtype(np.int8), 1)},
    # The compiled write phase (gpusim.kernels.writes). A writer: its rows (one per table a write may need), each
    # row's PMD (-1: none), VMAs, rss, and per folio how many of its PTEs map it (plus 512 per PMD).
    "proc": {
        "tix": (_I64, 1),
        "pte": (_U64, 2),
        "exists": (_B, 1),
        "rowpmd": (_I64, 1),
        "pmd": (_U64, 1),
        "pmdlive": (_B, 1),
        "vstart": (_I64, 1),
        "vend": (_I64, 1),
        "vflags": (_U64, 1),
        "vbacking": (_U8, 1),
        "rss": (_I64, 1),
        "mapped": (_I64, 1),
    },
    # the memory arrays a write phase reads or writes
    "wmem": _memory(
        (
            "page_folio",
            "page_mapcount",
            "page_flags",
            "page_content",
            "folio_order",
            "folio_refcount",
            "folio_pincount",
            "folio_true_pins",
            "folio_pmd_mapcount",
            "folio_flags",
            "folio_first_pfn",
            "swap_count",
        )
    ),
    # One step's scratch. Per unit: ``base`` (its first slot: the prefix sum of the units' bounds), ``kp`` / ``kc``
    # (its new pages and contents), ``pp`` / ``pc`` (their prefix sums), ``safe`` (independent of the other units),
    # ``counts`` (events) and ``rss`` (counter changes), rows of the unit. Per slot: ``newi`` (the entry of the
    # unit's k-th new page), ``cpfn`` (the page of its k-th new content: a pfn, or -k - 1 for its k-th new page).
    "scratch": {
        **{f: (_I64, 1) for f in ("base", "kp", "kc", "pp", "pc")},
        "safe": (_B, 1),
        "counts": (_I64, 2),
        "rss": (_I64, 2),
        "newi": (_I32, 1),
        "cpfn": (_I64, 1),
    },
    # An episode's writes, in order (gpusim.kernels.episode): per write its writer (0 parent, 1 child), its address,
    # the writer's row of its table (-1: none), the child's row there (-1: none) and the writer's VMA (-1: none).
    "episode_writes": {"who": (_U8, 1), **{f: (_I64, 1) for f in ("addr", "row", "crow", "vma")}},
    # The compiled region generator (gpusim.kernels.generate). Per VMA of the space: where it starts, its pages, the
    # order of its PTE-mapped folios, whether it is private anon, its VM_* flags and backing, the largest swap count
    # drawn, the four draw keys (presence, swap, pins, swap counts) and its pin runs (``run_lo .. run_hi`` of
    # ``run_start`` / ``run_len``, over its folios in address order; ``pin_runs`` false: scattered pins).
    "gen_vmas": {
        **{f: (_I64, 1) for f in ("start", "n", "order", "swap_max", "run_lo", "run_hi", "run_start", "run_len")},
        "anon": (_B, 1),
        "pin_runs": (_B, 1),
        "flags": (_U64, 1),
        "backing": (_U8, 1),
        "keys": (_U64, 2),
    },
    # Per table row of a chunk: its VMA and table in it, whether a THP maps it, its units (folio-sized groups of
    # slots), how many are present, swapped out and pinned (scattered), the VMA's folios before the table, where its
    # pages, folios and slots start in the chunk, its row among the chunk's PTE tables or huge PMDs (-1).
    "gen_rows": {
        **{
            f: (_I64, 1)
            for f in (
                *("vma", "table", "units", "present", "swapped", "pinned", "folios_before"),
                *("page0", "folio0", "slot0", "pte_row", "pmd_row"),
            )
        },
        "thp": (_B, 1),
    },
    # What it builds: every memory field (one row per page, folio or slot of the chunk), the PTE tables and huge
    # PMDs, and per table row its rss counters (anon, file, shmem, swapents), summed by the host.
    "gen_out": {**_memory(MEMORY_FIELDS), "pte": (_U64, 2), "pmd": (_U64, 1), "rss": (_I64, 2)},
}
