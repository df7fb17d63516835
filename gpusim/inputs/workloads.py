"""Workload generators: address spaces built directly as arrays (no layout parsing), seeded and deterministic.

:func:`dense_anon` is the benchmark workload (every page of one private anonymous VMA touched, 4 KiB folios; it can
also be built directly in device memory). :mod:`gpusim.inputs.regions` builds the sweeps' workloads (regions of
anonymous, file or shmem memory, whole or in chunks); :func:`build_workload` dispatches a sweep's ``workload`` by its
``kind``. All randomness comes from the seed given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gpusim.base.machine import FORK_COPIES, PAGE_BYTES, PROCESS_BYTES
from gpusim.inputs.catalogue import SCENARIOS
from gpusim.inputs.layout import parse_layout
from gpusim.inputs.snapshot import parse_range, snapshot_space
from gpusim.kernels import pte as P
from gpusim.kernels.fields import MEMORY_FIELDS, MM_FIELDS
from gpusim.kernels.flags import (
    FOLIO_ANON,
    FOLIO_SWAPBACKED,
    PAGE_ANON_EXCLUSIVE,
    PAGE_SIZE,
    PIN_BIAS,
    PTRS_PER_TABLE,
    VM_DEFAULT_ANON,
)
from gpusim.model.state import MM, AddressSpace, Memory

if TYPE_CHECKING:
    from gpusim.inputs.regions import RegionSpace


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
    view = pte[:n]  # built in place: no temporaries of the table's size
    view[...] = xp.arange(n, dtype=np.uint64)
    view <<= np.uint64(P.PFN_SHIFT)
    view |= np.uint64(P.PAGE_PRESENT | P.PAGE_RW | P.PAGE_USER | P.PAGE_ACCESSED | P.PAGE_DIRTY)
    ident = xp.arange(n, dtype=np.int32)
    mem = {
        "folio_order": xp.zeros(n, d["folio_order"]),
        "folio_refcount": xp.ones(n, d["folio_refcount"]),
        "folio_pincount": xp.zeros(n, d["folio_pincount"]),
        "folio_true_pins": xp.zeros(n, d["folio_true_pins"]),
        "folio_pmd_mapcount": xp.zeros(n if content else 0, d["folio_pmd_mapcount"]),
        "folio_flags": xp.full(n, FOLIO_ANON | FOLIO_SWAPBACKED, d["folio_flags"]),
        "folio_first_pfn": ident,
        "page_folio": ident.copy(),
        "page_mapcount": xp.ones(n, d["page_mapcount"]),
        "page_flags": xp.full(n, PAGE_ANON_EXCLUSIVE, d["page_flags"]),
        "page_content": xp.arange(1, n + 1, dtype=d["page_content"]) if content else None,
        "swap_count": xp.zeros(0, d["swap_count"]),
        "swap_levels": xp.zeros(0, d["swap_levels"]),
        "swap_content": xp.zeros(0, d["swap_content"]),
    }
    if not content:
        del mem["page_content"], mem["folio_pmd_mapcount"]
    return mem, pte.reshape(T, PTRS_PER_TABLE)


def dense_anon_mm(nr_pages: int, pte, has_pinned: bool = False) -> MM:
    """The MM of :func:`dense_anon` around a given PTE array (one VMA ``[0, nr_pages)``, tables ``0 .. T-1``)."""
    n, T = int(nr_pages), int(pte.shape[0])
    i64 = np.int64
    return MM(
        vma_start=np.array([0], i64),
        vma_end=np.array([n], i64),
        vma_flags=np.array([VM_DEFAULT_ANON], np.uint64),
        vma_backing=np.zeros(1, np.uint8),
        vma_anon_vma=np.ones(1, bool),
        table_index=np.arange(T, dtype=i64),
        pte=pte,
        pmd_index=np.zeros(0, i64),
        pmd=np.zeros(0, np.uint64),
        rss=np.array([n, 0, 0, 0], i64),
        has_pinned=has_pinned,
    )


def dense_anon(nr_pages: int, has_pinned: bool = False, pin_every: int = 0) -> AddressSpace:
    """``nr_pages`` touched 4 KiB anonymous pages in one private writable VMA starting at address 0.

    Each page is an order-0 anon folio (ref 1, map 1, anon-exclusive) mapped writable, dirty and young, as after a
    process writes its heap. ``has_pinned`` is the parent's MMF_HAS_PINNED. ``pin_every=K`` pins one page in K
    (pages ``0, K, 2K, ...``, one FOLL_PIN each) and sets ``has_pinned``: their tables take the early-copy path.
    """
    mem, pte = dense_anon_arrays(nr_pages)
    if pin_every:
        pins = np.arange(0, int(nr_pages), int(pin_every))
        mem["folio_refcount"][pins] += PIN_BIAS  # order-0 folios: PIN_BIAS references per pin
        mem["folio_true_pins"][pins] += 1
        has_pinned = True
    memory = Memory.build(**mem, next_content=int(nr_pages) + 1)
    return AddressSpace(dense_anon_mm(nr_pages, pte, has_pinned), memory)


def state_bytes_bound(workload) -> int | None:
    """An upper bound of the bytes of the arrays of the address space a workload spec builds, from its keys alone
    (``anon`` and ``mixed``); None for the kinds whose size is known only once built (small, or a file's)."""
    if workload.kind == "anon":
        regions = [workload]
    elif workload.kind == "mixed":
        regions = workload.regions
    else:
        return None
    table = PTRS_PER_TABLE * MM_FIELDS["pte"][0].itemsize
    return sum(r.size // PAGE_SIZE * PAGE_BYTES + (r.vmas + 1) * table for r in regions)


def fork_memory_bytes(workload) -> int | None:
    """About the most memory a fork of a workload spec's address space holds at once (None: not known up front)."""
    bound = state_bytes_bound(workload)
    return None if bound is None else PROCESS_BYTES + FORK_COPIES * bound


def region_space(workload, variant: str, seed) -> "RegionSpace":
    """The planned space of an ``anon`` or ``mixed`` workload spec, to build whole or in chunks."""
    from gpusim.inputs.regions import RegionSpace  # the generator's kernels load with the first generated space

    if workload.kind == "anon":
        d = workload.model_dump()
        return RegionSpace([d], variant, seed, d.pop("has_pinned"))
    return RegionSpace([r.model_dump() for r in workload.regions], variant, seed, workload.has_pinned)


# the workload kinds made by the region generator (streamable, and built on the card by the cuda backend)
GENERATED_KINDS = ("anon", "mixed")


def build_workload(workload, variant: str, seed, backend: str = "cpu") -> tuple[AddressSpace, str | None, list | None]:
    """The address space of a workload spec (:data:`gpusim.jobs.sweep.spec.Workload`), and the oracle and injections it
    brings (a catalogue scenario's; None otherwise). The generators' kinds are built by ``backend``'s generator
    (``cuda``: in device memory); the others in host memory."""
    kind = workload.kind
    if kind in GENERATED_KINDS:
        return region_space(workload, variant, seed).whole(backend), None, None
    if kind == "snapshot":
        return snapshot_space(workload.path, variant, [parse_range(r) for r in workload.pinned]), None, None
    if kind == "layout":
        return parse_layout(workload.layout, variant), None, None
    s = SCENARIOS[workload.scenario]
    return parse_layout(s.layout, variant), s.oracle, list(s.inject)
