"""Workload generators: address spaces built directly as arrays (no layout parsing), seeded and deterministic.

:func:`dense_anon` is the benchmark workload (every page of one private anonymous VMA touched, 4 KiB folios; it can
also be built directly in device memory). :func:`build_regions` builds the sweeps' workloads: regions of anonymous,
file or shmem memory, private or shared, with sparse tables, large folios, PMD-mapped THPs, pinned pages (scattered or
in contiguous runs), swapped-out pages with shared swap counts (continuations past SWAP_MAP_MAX), many VMAs and
VM_DONTCOPY / VM_WIPEONFORK flags; :func:`build_workload` dispatches a sweep's ``workload`` by its ``kind``. All
randomness comes from the seed given (``numpy.random.default_rng``).
"""

from __future__ import annotations

import numpy as np

from gpusim.builder import SpaceBuilder
from gpusim.catalogue import SCENARIOS
from gpusim.decode import with_offsets
from gpusim.kernels import pte as P
from gpusim.kernels.fields import MEMORY_FIELDS, MM_FIELDS
from gpusim.kernels.flags import (
    BACKING_ANON,
    BACKING_FILE,
    BACKING_SHMEM,
    BACKINGS,
    FOLIO_ANON,
    FOLIO_SWAPBACKED,
    PAGE_ANON_EXCLUSIVE,
    PAGE_SIZE,
    PIN_BIAS,
    PTRS_PER_TABLE,
    VM_DEFAULT_ANON,
    VM_DONTCOPY,
    VM_SHARED,
    VM_WIPEONFORK,
    VM_WRITE,
    swap_cap,
)
from gpusim.layout import parse_layout
from gpusim.snapshot import parse_range, snapshot_space
from gpusim.state import MM, AddressSpace, Memory
from gpusim.variants import get_variant


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


# --- region-based generators ---------------------------------------------------------------------------------------


def _choose(rng, n: int, k: int) -> np.ndarray:
    """``k`` of ``range(n)``, sorted (all of them when ``k >= n``)."""
    k = int(min(max(k, 0), n))
    if k == n:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def _runs(rng, n: int, k: int, runs: int) -> np.ndarray:
    """``k`` of ``range(n)`` as ``runs`` contiguous runs at random places (one in each of ``runs`` equal
    segments), sorted: pinned memory registered as a few large buffers."""
    k = int(min(max(k, 0), n))
    runs = max(1, min(runs, k)) if k else 1
    seg = n // runs
    length = k // runs
    out = []
    for r in range(runs):
        ln = length + (1 if r < k - length * runs else 0)
        lo = r * seg
        room = (seg if r < runs - 1 else n - lo) - ln
        start = lo + (int(rng.integers(0, room + 1)) if room > 0 else 0)
        out.append(np.arange(start, start + ln, dtype=np.int64))
    return np.concatenate(out) if out else np.zeros(0, np.int64)  # one run per segment: sorted and disjoint


def _region_vma(r: dict) -> tuple[int, int, bool]:
    """(``VM_*`` flags, backing, private anonymous) of a region's VMAs."""
    backing = BACKINGS[r["backing"]]
    anon = backing == BACKING_ANON and not r["shared"]
    flags = VM_DEFAULT_ANON | (VM_SHARED if r["shared"] else 0)
    for fl in r["flags"]:
        flags |= {"dontcopy": VM_DONTCOPY, "wipeonfork": VM_WIPEONFORK}.get(fl, 0)
        if fl == "ro":
            flags &= ~VM_WRITE
    if r["shared"] and backing == BACKING_ANON:
        backing = BACKING_SHMEM  # MAP_SHARED|MAP_ANONYMOUS is shmem
    return flags, backing, anon


def _region_units(rng, nr_pages: int, r: dict, anon: bool, F: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where a region's memory is: (tables mapped by a THP, first slot of each present folio-sized unit, which of
    those units are swapped out)."""
    full = nr_pages // PTRS_PER_TABLE
    thp = _choose(rng, full, round(r["thp_fraction"] * full)) if anon else np.zeros(0, np.int64)
    in_thp = np.zeros(full + 1, bool)
    in_thp[thp] = True
    unit_slot = np.arange(nr_pages // F, dtype=np.int64) * F  # folio-sized, naturally aligned groups of slots
    unit_slot = unit_slot[~in_thp[unit_slot // PTRS_PER_TABLE]]
    present = unit_slot[_choose(rng, unit_slot.shape[0], round(r["fill"] * unit_slot.shape[0]))]
    swapped = np.zeros(present.shape[0], bool)
    swapped[_choose(rng, present.shape[0], round(r["swap_fraction"] * present.shape[0]))] = True
    return thp, present, swapped


def _add_region(sb: SpaceBuilder, rng, anon_exclusive: bool, start: int, nr_pages: int, r: dict) -> None:
    """One VMA of ``nr_pages`` pages at ``start`` (table-aligned) with the region keys ``r`` (see
    :class:`gpusim.sweep.spec.Region`); ``anon_exclusive``: the variant's swap entries carry the exclusive bit."""
    flags, backing, anon = _region_vma(r)
    sb.add_vmas(start, start + nr_pages, flags, backing, anon or backing == BACKING_FILE)  # a written private file
    order = int(r["folio_order"]) if anon else 0  # mapping has an anon_vma
    F = 1 << order
    thp, present, swapped = _region_units(rng, nr_pages, r, anon, F)
    mapped = present[~swapped]
    # pages: one folio per mapped unit
    write, dirty = (flags & VM_WRITE) != 0 and anon, anon or r["shared"]
    if anon:
        fflags, pflags, ref = FOLIO_ANON | FOLIO_SWAPBACKED, PAGE_ANON_EXCLUSIVE, F
    else:
        fflags, pflags, ref = (FOLIO_SWAPBACKED if backing == BACKING_SHMEM else 0), 0, 1 + F  # + the page cache
    ids, first = sb.add_folios(mapped.shape[0], order, fflags, ref, pflags, 1)
    sb.add_entries(
        start + (mapped[:, None] + np.arange(F)[None, :]).reshape(-1),
        with_offsets(P.mk_pte(0, write, dirty, True, False), (first[:, None] + np.arange(F)).reshape(-1)),
    )
    # THPs: whole tables mapped by a huge PMD (private anon only); the head page carries the PMD's exclusive flag
    head = np.zeros(PTRS_PER_TABLE, np.int64)
    head[0] = PAGE_ANON_EXCLUSIVE
    tids, tfirst = sb.add_folios(
        thp.shape[0], 9, FOLIO_ANON | FOLIO_SWAPBACKED, 1, np.tile(head, thp.shape[0]), 0, pmd_mapcount=1
    )
    sb.add_pmds(
        start // PTRS_PER_TABLE + thp, with_offsets(P.mk_huge_pmd(0, (flags & VM_WRITE) != 0, True, True), tfirst)
    )
    # swap entries: one slot per page of a swapped unit, counts uniform in 1..swap_count_max
    sw = (present[swapped][:, None] + np.arange(F)[None, :]).reshape(-1)
    if sw.shape[0]:
        cnt = rng.integers(1, int(r["swap_count_max"]) + 1, size=sw.shape[0])
        levels = np.zeros(sw.shape[0], np.int64)
        for lv in range(1, 4):
            levels[cnt > swap_cap(lv - 1)] = lv
        slots = sb.add_slots(cnt, levels)
        excl = anon_exclusive & (cnt == 1)
        sb.add_entries(
            start + sw,
            with_offsets(np.where(excl, np.uint64(P.mk_swap_pte(0, True)), np.uint64(P.mk_swap_pte(0, False))), slots),
        )
    _pin_region(
        sb,
        rng,
        r,
        np.concatenate([ids, tids]),
        np.concatenate([mapped, thp * PTRS_PER_TABLE]),
        np.concatenate([np.full(ids.shape[0], F), np.full(tids.shape[0], PTRS_PER_TABLE)]),
    )


def _pin_region(sb: SpaceBuilder, rng, r: dict, folios: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> None:
    """Pin ``pinned_fraction`` of a region's pages, whole folios at a time (one FOLL_PIN each), scattered or in
    ``pinned_regions`` contiguous runs; ``folios`` with their first slots and sizes in pages."""
    by_addr = np.argsort(starts, kind="stable")
    cand = folios[by_addr]
    pages = int(sizes.sum())
    target = round(r["pinned_fraction"] * pages)
    if target and cand.shape[0]:
        k = max(1, round(target / (pages / cand.shape[0])))
        pick = (
            _runs(rng, cand.shape[0], k, int(r["pinned_regions"]))
            if r["pinned_placement"] == "contiguous"
            else _choose(rng, cand.shape[0], k)
        )
        sb.add_pins(cand[pick])


def build_regions(regions: list[dict], variant: str, seed, has_pinned: bool | None = None) -> AddressSpace:
    """An address space of ``regions`` (dicts with the keys of :class:`gpusim.sweep.spec.Region`), in address
    order, each VMA starting at a 2 MiB boundary with one empty table's gap between regions. ``seed`` is an int or a
    ``numpy.random.SeedSequence``; equal seeds give identical arrays."""
    anon_exclusive = get_variant(variant).anon_exclusive
    rng = np.random.default_rng(seed)
    sb = SpaceBuilder(variant)
    addr = 0
    for r in regions:
        nr = max(1, int(r["size"]) // PAGE_SIZE)
        k = int(r["vmas"])
        sizes = [nr // k + (1 if i < nr % k else 0) for i in range(k)]
        for n in sizes:
            if n == 0:
                continue
            _add_region(sb, rng, anon_exclusive, addr, n, r)
            addr += -(-n // PTRS_PER_TABLE) * PTRS_PER_TABLE
        addr += PTRS_PER_TABLE
    return sb.freeze(has_pinned)


# The bytes of one mapped 4 KiB page in the state: its PTE, its page row and (order 0) its folio row; a swapped
# page holds a swap slot instead of the page and folio rows, which is less.
PAGE_BYTES = MM_FIELDS["pte"][0].itemsize + sum(
    dt.itemsize for name, (dt, _) in MEMORY_FIELDS.items() if name.startswith(("page_", "folio_"))
)
# A fork holds several copies of the state at its peak: the input, the engine's working copy, the child's tables,
# the result, and the invariant checker's decoded entries. Measured with `/usr/bin/time -f %M gpusim fork
# --workload anon --set size=S` (2-vCPU VM, 2026-11-30): 3.3x (16 GiB) to 5.3x (1 GiB) of the state's bytes above
# the interpreter's own 190 MiB; the estimate takes 4x of an upper bound of the state plus 256 MiB.
FORK_COPIES = 4
PROCESS_BYTES = 256 << 20


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


def build_workload(workload, variant: str, seed) -> tuple[AddressSpace, str | None, list | None]:
    """The address space of a workload spec (:data:`gpusim.sweep.spec.Workload`), and the oracle and injections it
    brings (a catalogue scenario's; None otherwise)."""
    kind = workload.kind
    if kind == "anon":
        d = workload.model_dump()
        return build_regions([d], variant, seed, d.pop("has_pinned")), None, None
    if kind == "mixed":
        return build_regions([r.model_dump() for r in workload.regions], variant, seed, workload.has_pinned), None, None
    if kind == "snapshot":
        return snapshot_space(workload.path, variant, [parse_range(r) for r in workload.pinned]), None, None
    if kind == "layout":
        return parse_layout(workload.layout, variant), None, None
    s = SCENARIOS[workload.scenario]
    return parse_layout(s.layout, variant), s.oracle, list(s.inject)
