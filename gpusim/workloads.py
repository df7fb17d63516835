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

from gpusim.kernels import pte as P
from gpusim.kernels.folio import is_large_for_pins, pin_refcount_delta
from gpusim.kernels.flags import (
    BACKINGS, FOLIO_ANON, FOLIO_SWAPBACKED, PAGE_ANON_EXCLUSIVE, PIN_BIAS, PTRS_PER_TABLE, VM_DEFAULT_ANON,
)
from gpusim.state import MEMORY_FIELDS, MM, AddressSpace, Memory, tables_from_entries

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


# --- region-based generators ---------------------------------------------------------------------------------------

class _Parts:
    """Arrays of an address space under construction, region by region (concatenated by :meth:`freeze`)."""

    def __init__(self):
        self.f = {k: [] for k in ("order", "ref", "pin", "true", "pmdmap", "flags", "first")}
        self.p = {k: [] for k in ("folio", "map", "flags")}
        self.s = {k: [] for k in ("count", "levels")}
        self.addr, self.val = [], []
        self.pmd_t, self.pmd_v = [], []
        self.vma = {k: [] for k in ("start", "end", "flags", "backing", "anon_vma")}
        self.nf = self.np = self.ns = 0
        self.pins = 0
        self.pin_ops: list = []                     # (folio ids, refcount delta, large-for-pins)

    def folios(self, nr: int, order: int, flags: int, ref, page_flags: int, page_map: int) -> tuple:
        """``nr`` new folios of ``order``; returns (folio ids, first pfns)."""
        ids = self.nf + np.arange(nr, dtype=np.int64)
        first = self.np + (np.arange(nr, dtype=np.int64) << order)
        for k, v in (("order", np.full(nr, order)), ("ref", np.broadcast_to(ref, (nr,))), ("pin", np.zeros(nr)),
                     ("true", np.zeros(nr)), ("pmdmap", np.zeros(nr)), ("flags", np.full(nr, flags)),
                     ("first", first)):
            self.f[k].append(np.asarray(v, np.int64))
        npg = nr << order
        self.p["folio"].append(np.repeat(ids, 1 << order))
        self.p["map"].append(np.full(npg, page_map, np.int64))
        self.p["flags"].append(np.full(npg, page_flags, np.int64))
        self.nf += nr
        self.np += npg
        return ids, first

    def freeze(self, has_pinned: bool | None) -> AddressSpace:
        cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)   # noqa: E731
        fo = {k: cat(v, np.int64) for k, v in self.f.items()}
        pg = {k: cat(v, np.int64) for k, v in self.p.items()}
        sl = {k: cat(v, np.int64) for k, v in self.s.items()}
        for ids, delta, large in self.pin_ops:       # add_pin of spec 1.6, once per folio
            fo["ref"][ids] += delta
            fo["pin"][ids] += large
            fo["true"][ids] += 1
        npg, ns = self.np, self.ns
        memory = Memory.build(
            folio_order=fo["order"], folio_refcount=fo["ref"], folio_pincount=fo["pin"], folio_true_pins=fo["true"],
            folio_pmd_mapcount=fo["pmdmap"], folio_flags=fo["flags"], folio_first_pfn=fo["first"],
            page_folio=pg["folio"], page_mapcount=pg["map"], page_flags=pg["flags"],
            page_content=np.arange(1, npg + 1), swap_count=sl["count"], swap_levels=sl["levels"],
            swap_content=np.arange(npg + 1, npg + ns + 1), next_content=npg + ns + 1)
        addr, val = cat(self.addr, np.int64), cat(self.val, np.uint64)
        tables, pte = tables_from_entries(addr, val)
        pmd_t, pmd_v = cat(self.pmd_t, np.int64), cat(self.pmd_v, np.uint64)
        from gpusim.decode import rss_of
        mm = MM(vma_start=cat(self.vma["start"], np.int64), vma_end=cat(self.vma["end"], np.int64),
                vma_flags=cat(self.vma["flags"], np.uint64), vma_backing=cat(self.vma["backing"], np.uint8),
                vma_anon_vma=cat(self.vma["anon_vma"], np.bool_), table_index=tables, pte=pte, pmd_index=pmd_t,
                pmd=pmd_v, rss=rss_of(pte, pmd_v, memory), has_pinned=bool(self.pins) if has_pinned is None
                else bool(has_pinned), on_swapoff_list=bool(ns))
        return AddressSpace(mm, memory)


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
    return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)


def _add_region(b: _Parts, rng, variant_large_order: int, is_618: bool, start: int, nr_pages: int, r: dict) -> None:
    """One VMA of ``nr_pages`` pages at ``start`` (table-aligned) with the region keys ``r`` (see
    :class:`gpusim.sweep.spec.Region`)."""
    from gpusim.kernels.flags import VM_DONTCOPY, VM_SHARED, VM_WIPEONFORK, VM_WRITE, swap_cap
    backing = BACKINGS[r["backing"]]
    anon = backing == 0 and not r["shared"]
    flags = VM_DEFAULT_ANON | (VM_SHARED if r["shared"] else 0)
    for fl in r["flags"]:
        flags |= {"dontcopy": VM_DONTCOPY, "wipeonfork": VM_WIPEONFORK}.get(fl, 0)
        if fl == "ro":
            flags &= ~VM_WRITE
    if r["shared"] and backing == 0:
        backing = 2                                  # MAP_SHARED|MAP_ANONYMOUS is shmem
    b.vma["start"].append([start])
    b.vma["end"].append([start + nr_pages])
    b.vma["flags"].append([flags])
    b.vma["backing"].append([backing])
    b.vma["anon_vma"].append([anon or backing == 1])  # private file mappings get an anon_vma once written
    order = int(r["folio_order"]) if anon else 0
    F = 1 << order
    # THPs: whole tables mapped by a huge PMD (private anon only)
    full = nr_pages // PTRS_PER_TABLE
    thp = _choose(rng, full, round(r["thp_fraction"] * full)) if anon else np.zeros(0, np.int64)
    in_thp = np.zeros(full + 1, bool)
    in_thp[thp] = True
    units = nr_pages // F                            # folio-sized, naturally aligned groups of slots
    unit_slot = np.arange(units, dtype=np.int64) * F
    keep = ~in_thp[unit_slot // PTRS_PER_TABLE]
    unit_slot = unit_slot[keep]
    present = unit_slot[_choose(rng, unit_slot.shape[0], round(r["fill"] * unit_slot.shape[0]))]
    swapped = np.zeros(present.shape[0], bool)
    swapped[_choose(rng, present.shape[0], round(r["swap_fraction"] * present.shape[0]))] = True
    mapped = present[~swapped]
    # pages: one folio per mapped unit
    write, dirty = (flags & VM_WRITE) != 0 and anon, anon or r["shared"]
    if anon:
        fflags, pflags, ref = FOLIO_ANON | FOLIO_SWAPBACKED, PAGE_ANON_EXCLUSIVE, F
    else:
        fflags, pflags, ref = (FOLIO_SWAPBACKED if backing == 2 else 0), 0, 1 + F   # page cache holds one
    ids, first = b.folios(mapped.shape[0], order, fflags, ref, pflags, 1)
    slots = (mapped[:, None] + np.arange(F)[None, :]).reshape(-1)
    pfns = (first[:, None] + np.arange(F)[None, :]).reshape(-1)
    base = np.uint64(P.mk_pte(0, write, dirty, True, False))
    b.addr.append(start + slots)
    b.val.append(base | (pfns.astype(np.uint64) << np.uint64(P.PFN_SHIFT)))
    # THP folios
    tids, tfirst = b.folios(thp.shape[0], 9, FOLIO_ANON | FOLIO_SWAPBACKED, 1, 0, 0)
    if thp.shape[0]:
        b.f["pmdmap"][-1] = np.ones(thp.shape[0], np.int64)
        b.p["flags"][-1][::PTRS_PER_TABLE] = PAGE_ANON_EXCLUSIVE     # the head page carries the PMD's flag
        b.pmd_t.append(start // PTRS_PER_TABLE + thp)
        b.pmd_v.append(np.uint64(P.mk_huge_pmd(0, (flags & VM_WRITE) != 0, True, True))
                       | (tfirst.astype(np.uint64) << np.uint64(P.PFN_SHIFT)))
    # swap entries: one slot per page of a swapped unit, counts uniform in 1..swap_count_max
    sw = (present[swapped][:, None] + np.arange(F)[None, :]).reshape(-1)
    if sw.shape[0]:
        cnt = rng.integers(1, int(r["swap_count_max"]) + 1, size=sw.shape[0])
        levels = np.zeros(sw.shape[0], np.int64)
        for lv in range(1, 4):
            levels[cnt > swap_cap(lv - 1)] = lv
        slot = b.ns + np.arange(sw.shape[0], dtype=np.int64)
        excl = is_618 & (cnt == 1)
        b.s["count"].append(cnt)
        b.s["levels"].append(levels)
        b.addr.append(start + sw)
        b.val.append(np.where(excl, np.uint64(P.mk_swap_pte(0, True)), np.uint64(P.mk_swap_pte(0, False)))
                     | (slot.astype(np.uint64) << np.uint64(P.PFN_SHIFT)))
        b.ns += sw.shape[0]
    # pins: a fraction of the region's pages, scattered or in a few contiguous runs, whole folios at a time
    all_ids = np.concatenate([ids, tids])
    all_start = np.concatenate([mapped, thp * PTRS_PER_TABLE])
    order_by_addr = np.argsort(all_start, kind="stable")
    cand = all_ids[order_by_addr]
    sizes = np.where(order_by_addr < ids.shape[0], F, PTRS_PER_TABLE)
    pages = int(sizes.sum())
    target = round(r["pinned_fraction"] * pages)
    if target and cand.shape[0]:
        mean = pages / cand.shape[0]
        k = max(1, round(target / mean))
        pick = (_runs(rng, cand.shape[0], k, int(r["pinned_regions"])) if r["pinned_placement"] == "contiguous"
                else _choose(rng, cand.shape[0], k))
        chosen = cand[pick]
        fo_order = np.where(np.isin(chosen, tids), 9, order)
        delta = np.array([pin_refcount_delta(int(o), variant_large_order) for o in fo_order], np.int64)
        large = np.array([is_large_for_pins(int(o), variant_large_order) for o in fo_order], bool)
        b.pin_ops.append((chosen, delta, large))       # one FOLL_PIN each, applied when the arrays are frozen
        b.pins += int(chosen.shape[0])


def build_regions(regions: list[dict], variant: str, seed, has_pinned: bool | None = None) -> AddressSpace:
    """An address space of ``regions`` (dicts with the keys of :class:`gpusim.sweep.spec.Region`), in address
    order, each VMA starting at a 2 MiB boundary with one empty table's gap between regions. ``seed`` is an int or a
    ``numpy.random.SeedSequence``; equal seeds give identical arrays."""
    from gpusim.variants import get_variant
    v = get_variant(variant)
    rng = np.random.default_rng(seed)
    b = _Parts()
    addr = 0
    for r in regions:
        nr = max(1, int(r["size"]) // PAGE_SIZE)
        k = int(r["vmas"])
        sizes = [nr // k + (1 if i < nr % k else 0) for i in range(k)]
        for n in sizes:
            if n == 0:
                continue
            _add_region(b, rng, v.large_pin_order, v.anon_exclusive, addr, n, r)
            addr += -(-n // PTRS_PER_TABLE) * PTRS_PER_TABLE
        addr += PTRS_PER_TABLE
    return b.freeze(has_pinned)


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
        from gpusim.host.capture import parse_range, snapshot_space
        return snapshot_space(workload.path, variant, [parse_range(r) for r in workload.pinned]), None, None
    from gpusim.layout import parse_layout
    if kind == "layout":
        return parse_layout(workload.layout, variant), None, None
    from gpusim.catalogue import SCENARIOS
    s = SCENARIOS[workload.scenario]
    return parse_layout(s.layout, variant), s.oracle, list(s.inject)
