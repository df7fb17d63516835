"""Workload generators: address spaces built directly as arrays (no layout parsing), seeded and deterministic.

So far: :func:`dense_anon`, the benchmark workload (every page of one private anonymous VMA touched, 4 KiB
folios). The YAML-driven generators of the sweep runner will join it here.
"""

from __future__ import annotations

import numpy as np

from gpusim.kernels import pte as P
from gpusim.kernels.folio import PIN_BIAS
from gpusim.state import (
    FOLIO_ANON, FOLIO_SWAPBACKED, MEMORY_FIELDS, MM, PAGE_ANON_EXCLUSIVE, PTRS_PER_TABLE, VM_DEFAULT_ANON,
    AddressSpace, Memory,
)

PAGE_SIZE = 4096


def dense_anon_arrays(nr_pages: int, xp=np, content: bool = True) -> tuple[dict, object]:
    """The arrays of :func:`dense_anon` built with the array module ``xp`` (numpy, or CuPy to build the state
    directly in device memory): (memory arrays by field name, the parent's ``(T, 512)`` PTE array). Without
    ``content`` the arrays no kernel reads (``page_content``, ``folio_pmd_mapcount``) are left out."""
    n = int(nr_pages)
    if n < 1:
        raise ValueError("dense_anon needs at least one page")
    T = -(-n // PTRS_PER_TABLE)
    d = {name: dt for name, (dt, _) in MEMORY_FIELDS.items()}
    pte = xp.zeros(T * PTRS_PER_TABLE, np.uint64)
    view = pte[:n]                                  # built in place: no temporaries of the table's size
    view[...] = xp.arange(n, dtype=np.uint64)
    view <<= np.uint64(P.PFN_SHIFT)
    view |= np.uint64(P.PAGE_PRESENT | P.PAGE_RW | P.PAGE_USER | P.PAGE_ACCESSED | P.PAGE_DIRTY)
    ident = xp.arange(n, dtype=np.int32)
    mem = {
        "folio_order": xp.zeros(n, d["folio_order"]), "folio_refcount": xp.ones(n, d["folio_refcount"]),
        "folio_pincount": xp.zeros(n, d["folio_pincount"]), "folio_true_pins": xp.zeros(n, d["folio_true_pins"]),
        "folio_pmd_mapcount": xp.zeros(n if content else 0, d["folio_pmd_mapcount"]),
        "folio_flags": xp.full(n, FOLIO_ANON | FOLIO_SWAPBACKED, d["folio_flags"]), "folio_first_pfn": ident,
        "page_folio": ident.copy(), "page_mapcount": xp.ones(n, d["page_mapcount"]),
        "page_flags": xp.full(n, PAGE_ANON_EXCLUSIVE, d["page_flags"]),
        "page_content": xp.arange(1, n + 1, dtype=d["page_content"]) if content else None,
        "swap_count": xp.zeros(0, d["swap_count"]), "swap_levels": xp.zeros(0, d["swap_levels"]),
        "swap_content": xp.zeros(0, d["swap_content"]),
    }
    if not content:
        del mem["page_content"], mem["folio_pmd_mapcount"]
    return mem, pte.reshape(T, PTRS_PER_TABLE)


def dense_anon_mm(nr_pages: int, pte, has_pinned: bool = False) -> MM:
    """The MM of :func:`dense_anon` around a given PTE array (one VMA ``[0, nr_pages)``, tables ``0 .. T-1``)."""
    n, T = int(nr_pages), int(pte.shape[0])
    i64 = np.int64
    return MM(vma_start=np.array([0], i64), vma_end=np.array([n], i64),
              vma_flags=np.array([VM_DEFAULT_ANON], np.uint64), vma_backing=np.zeros(1, np.uint8),
              vma_anon_vma=np.ones(1, bool), table_index=np.arange(T, dtype=i64), pte=pte,
              pmd_index=np.zeros(0, i64), pmd=np.zeros(0, np.uint64), rss=np.array([n, 0, 0, 0], i64),
              has_pinned=has_pinned)


def dense_anon(nr_pages: int, has_pinned: bool = False, pin_every: int = 0) -> AddressSpace:
    """``nr_pages`` touched 4 KiB anonymous pages in one private writable VMA starting at address 0.

    Each page is an order-0 anon folio (ref 1, map 1, anon-exclusive) mapped writable, dirty and young, as after a
    process writes its heap. ``has_pinned`` is the parent's MMF_HAS_PINNED. ``pin_every=K`` pins one page in K
    (pages ``0, K, 2K, ...``, one FOLL_PIN each) and sets ``has_pinned``: their tables take the early-copy path.
    """
    mem, pte = dense_anon_arrays(nr_pages)
    if pin_every:
        pins = np.arange(0, int(nr_pages), int(pin_every))
        mem["folio_refcount"][pins] += PIN_BIAS                   # order-0 folios: PIN_BIAS references per pin
        mem["folio_true_pins"][pins] += 1
        has_pinned = True
    memory = Memory.build(**mem, next_content=int(nr_pages) + 1)
    return AddressSpace(dense_anon_mm(nr_pages, pte, has_pinned), memory)


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
