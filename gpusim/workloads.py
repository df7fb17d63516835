"""Workload generators: address spaces built directly as arrays (no layout parsing), seeded and deterministic.

So far: :func:`dense_anon`, the benchmark workload (every page of one private anonymous VMA touched, 4 KiB
folios). The YAML-driven generators of the sweep runner will join it here.
"""

from __future__ import annotations

import numpy as np

from gpusim.kernels import pte as P
from gpusim.state import (
    FOLIO_ANON, FOLIO_SWAPBACKED, MM, PAGE_ANON_EXCLUSIVE, PTRS_PER_TABLE, VM_DEFAULT_ANON, AddressSpace, Memory,
)

PAGE_SIZE = 4096


def dense_anon(nr_pages: int, has_pinned: bool = False) -> AddressSpace:
    """``nr_pages`` touched 4 KiB anonymous pages in one private writable VMA starting at address 0.

    Each page is an order-0 anon folio (ref 1, map 1, anon-exclusive) mapped writable, dirty and young, as after a
    process writes its heap. ``has_pinned`` is the parent's MMF_HAS_PINNED (no page is pinned either way).
    """
    n = int(nr_pages)
    if n < 1:
        raise ValueError("dense_anon needs at least one page")
    i64 = np.int64
    T = -(-n // PTRS_PER_TABLE)
    pte = np.zeros(T * PTRS_PER_TABLE, np.uint64)
    bits = np.uint64(P.PAGE_PRESENT | P.PAGE_RW | P.PAGE_USER | P.PAGE_ACCESSED | P.PAGE_DIRTY)
    pte[:n] = bits | (np.arange(n, dtype=np.uint64) << np.uint64(P.PFN_SHIFT))
    memory = Memory.build(
        folio_order=np.zeros(n), folio_refcount=np.ones(n), folio_pincount=np.zeros(n), folio_true_pins=np.zeros(n),
        folio_pmd_mapcount=np.zeros(n), folio_flags=np.full(n, FOLIO_ANON | FOLIO_SWAPBACKED),
        folio_first_pfn=np.arange(n), page_folio=np.arange(n), page_mapcount=np.ones(n),
        page_flags=np.full(n, PAGE_ANON_EXCLUSIVE), page_content=np.arange(1, n + 1), swap_count=[], swap_levels=[],
        swap_content=[], next_content=n + 1,
    )
    mm = MM(vma_start=np.array([0], i64), vma_end=np.array([n], i64), vma_flags=np.array([VM_DEFAULT_ANON], np.uint64),
            vma_backing=np.zeros(1, np.uint8), vma_anon_vma=np.ones(1, bool), table_index=np.arange(T, dtype=i64),
            pte=pte.reshape(T, PTRS_PER_TABLE), pmd_index=np.zeros(0, i64), pmd=np.zeros(0, np.uint64),
            rss=np.array([n, 0, 0, 0], i64), has_pinned=has_pinned)
    return AddressSpace(mm, memory)


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``64KiB``, ``1GiB``, ``2TiB`` (binary units; ``K``/``M``/``G``/``T`` accepted too)."""
    import re
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*", text, re.I)
    if not m:
        raise ValueError(f"size '{text}' is not a number of bytes with an optional unit (KiB, MiB, GiB, TiB)")
    unit = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * unit)


def resident_bytes(*objs) -> int:
    """Bytes held by the arrays of some states (an :class:`AddressSpace`, :class:`MM` or :class:`Memory`)."""
    import dataclasses
    total = 0
    for o in objs:
        for f in dataclasses.fields(o):
            v = getattr(o, f.name)
            if isinstance(v, np.ndarray):
                total += v.nbytes
            elif dataclasses.is_dataclass(v):
                total += resident_bytes(v)
    return total
