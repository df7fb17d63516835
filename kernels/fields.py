"""The arrays of the state model (spec section 1): every field of :class:`gpusim.model.state.Memory` and
:class:`gpusim.model.state.MM` with its dtype and per-row shape.

These tables drive validation, the canonical digest, copies and the dtypes the kernels are compiled for; the kernel
argument groups (:mod:`gpusim.kernels.args`) take their memory dtypes from here.
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

# The compiled write phase's arrays (gpusim.kernels.writes; the groups of gpusim.kernels.args), (dtype, dimensions).
# A writer: its rows (one per table a write may need), each row's PMD (-1: none), VMAs, rss, and per folio how many
# of its PTEs map it (plus 512 per PMD).
WRITE_PROC_FIELDS: dict[str, tuple[np.dtype, int]] = {
    "tix": (np.dtype(np.int64), 1),
    "pte": (np.dtype(np.uint64), 2),
    "exists": (np.dtype(np.bool_), 1),
    "rowpmd": (np.dtype(np.int64), 1),
    "pmd": (np.dtype(np.uint64), 1),
    "pmdlive": (np.dtype(np.bool_), 1),
    "vstart": (np.dtype(np.int64), 1),
    "vend": (np.dtype(np.int64), 1),
    "vflags": (np.dtype(np.uint64), 1),
    "vbacking": (np.dtype(np.uint8), 1),
    "rss": (np.dtype(np.int64), 1),
    "mapped": (np.dtype(np.int64), 1),
}
# The memory arrays a write phase reads or writes (dtypes of MEMORY_FIELDS).
WRITE_MEMORY_FIELDS = (
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
# One step's scratch. Per unit: ``base`` (its first slot: the prefix sum of the units' bounds), ``kp`` / ``kc`` (its
# new pages and contents), ``pp`` / ``pc`` (their prefix sums), ``safe`` (independent of the other units),
# ``counts`` (events) and ``rss`` (counter changes), rows of the unit. Per slot: ``newi`` (the entry of the unit's
# k-th new page), ``cpfn`` (the page of its k-th new content: a pfn, or -k - 1 for its k-th new page).
WRITE_SCRATCH_FIELDS: dict[str, tuple[np.dtype, int]] = {
    **{f: (np.dtype(np.int64), 1) for f in ("base", "kp", "kc", "pp", "pc")},
    "safe": (np.dtype(np.bool_), 1),
    "counts": (np.dtype(np.int64), 2),
    "rss": (np.dtype(np.int64), 2),
    "newi": (np.dtype(np.int32), 1),
    "cpfn": (np.dtype(np.int64), 1),
}

# The compiled region generator (gpusim.kernels.generate), (dtype, dimensions). Per VMA of the space: where it
# starts, its pages, the order of its PTE-mapped folios, whether it is private anon, its VM_* flags and backing, the
# largest swap count drawn, the four draw keys (presence, swap, pins, swap counts) and its pin runs
# (``run_lo .. run_hi`` of ``run_start`` / ``run_len``, over its folios in address order; ``pin_runs`` false:
# scattered pins). Per table row of a chunk: its VMA and table in it, whether a THP maps it, its units (folio-sized
# groups of slots), how many are present, swapped out and pinned (scattered), the VMA's folios before the table,
# where its pages, folios and slots start in the chunk, its row among the chunk's PTE tables or huge PMDs (-1).
GEN_VMA_FIELDS: dict[str, tuple[np.dtype, int]] = {
    **{
        f: (np.dtype(np.int64), 1)
        for f in ("start", "n", "order", "swap_max", "run_lo", "run_hi", "run_start", "run_len")
    },
    "anon": (np.dtype(np.bool_), 1),
    "pin_runs": (np.dtype(np.bool_), 1),
    "flags": (np.dtype(np.uint64), 1),
    "backing": (np.dtype(np.uint8), 1),
    "keys": (np.dtype(np.uint64), 2),
}
GEN_ROW_FIELDS: dict[str, tuple[np.dtype, int]] = {
    **{
        f: (np.dtype(np.int64), 1)
        for f in (
            *("vma", "table", "units", "present", "swapped", "pinned", "folios_before"),
            *("page0", "folio0", "slot0", "pte_row", "pmd_row"),
        )
    },
    "thp": (np.dtype(np.bool_), 1),
}
# What it builds: every memory field (one row per page, folio or slot of the chunk), the PTE tables and huge PMDs,
# and per table row its rss counters (anon, file, shmem, swapents), summed by the host.
GEN_OUT_FIELDS: dict[str, tuple[np.dtype, int]] = {
    **{name: (dt, 1) for name, (dt, _) in MEMORY_FIELDS.items()},
    "pte": (np.dtype(np.uint64), 2),
    "pmd": (np.dtype(np.uint64), 1),
    "rss": (np.dtype(np.int64), 2),
}
