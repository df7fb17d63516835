"""The region generator: address spaces of regions of memory, built whole or as chunks of tables.

A region (the keys of :class:`gpusim.jobs.sweep.spec.Region`) is one or more VMAs of anonymous, file or shmem memory,
private or shared, with sparse tables, large folios, PMD-mapped THPs, pinned pages (scattered or in contiguous
runs), swapped-out pages with shared swap counts and VM_DONTCOPY / VM_WIPEONFORK flags.

The generator draws in two steps, so that a chunk of the space can be built without the rest of it:

1. **The plan** (:class:`RegionSpace`, sequential draws of ``numpy.random.default_rng(seed)``, one number per page
   table): which tables a THP maps, and how many folio-sized units of each table are present, swapped out and
   pinned. Totals are exact (``fill: 0.5`` is half the units): the per-table counts are a multivariate
   hypergeometric draw, the counts of a uniformly random subset of that size. Contiguous pins are a few runs over
   the region's folios in address order.
2. **The tables** (:meth:`RegionSpace.chunk`): which units of a table are present, swapped or pinned, and each swap
   slot's count, are draws keyed by the table and the unit (:mod:`gpusim.kernels.generate`), made for the tables a
   chunk holds. Folios, pages and slots are numbered in address order, so a chunk's rows are a contiguous range of
   the whole space's rows, and the whole space is the concatenation of its chunks whatever their size. Step 2 is
   written twice: with numpy through the one builder (:meth:`RegionSpace.reference_chunk`, the readable form and
   the oracle) and compiled, a thread per table (:meth:`RegionSpace.generate`, CPU or CUDA: on a GPU the state is
   built in device memory), which the engines use; the tests hold the two equal array by array.

A chunk is an :class:`~gpusim.model.state.AddressSpace` of its own: every VMA of the space, the chunk's tables (with
their global table numbers and addresses), and memory of only the chunk's folios, pages and slots, numbered from 0
(:class:`Chunk` says where its rows lie in the whole space). Content identities and ``next_content`` are the whole
space's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from gpusim.base import backend as B
from gpusim.kernels import pte as P
from gpusim.kernels.args import GenOut, GenRows, GenVmas
from gpusim.kernels.fields import GROUP_FIELDS, MEMORY_FIELDS
from gpusim.kernels.flags import (
    BACKING_ANON,
    BACKING_FILE,
    BACKING_SHMEM,
    BACKINGS,
    FOLIO_ANON,
    FOLIO_SWAPBACKED,
    PAGE_ANON_EXCLUSIVE,
    PAGE_SIZE,
    PTRS_PER_TABLE,
    VM_DEFAULT_ANON,
    VM_DONTCOPY,
    VM_SHARED,
    VM_WIPEONFORK,
    VM_WRITE,
    swap_cap,
)
from gpusim.kernels.generate import select_in_groups, uniform_ints
from gpusim.model.builder import SpaceBuilder
from gpusim.model.decode import with_offsets
from gpusim.model.frames import frame_order_keys, ordered, place_frames
from gpusim.model.state import MM, AddressSpace, Memory
from gpusim.model.variants import get_variant

# numpy's multivariate hypergeometric draw ("marginals") takes fewer than 10**9 items; larger plans are drawn in
# blocks of this many tables (at most 512 units each), their totals split in proportion to their sizes.
SPREAD_BLOCK = 1 << 20
THP_ORDER = 9


def choose(rng, n: int, k: int) -> np.ndarray:
    """``k`` of ``range(n)``, sorted (all of them when ``k >= n``)."""
    k = int(min(max(k, 0), n))
    if k == n:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def runs(rng, n: int, k: int, nruns: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` of ``range(n)`` as ``nruns`` contiguous runs at random places, one in each of ``nruns`` equal
    segments: pinned memory registered as a few large buffers. Returns (starts, lengths), sorted and disjoint."""
    k = int(min(max(k, 0), n))
    nruns = max(1, min(nruns, k)) if k else 1
    seg, length = n // nruns, k // nruns
    starts, lengths = [], []
    for r in range(nruns):
        ln = length + (1 if r < k - length * nruns else 0)
        lo = r * seg
        room = (seg if r < nruns - 1 else n - lo) - ln
        starts.append(lo + (int(rng.integers(0, room + 1)) if room > 0 else 0))
        lengths.append(ln)
    return np.array(starts, np.int64), np.array(lengths, np.int64)


def spread(rng, sizes: np.ndarray, k: int) -> np.ndarray:
    """How many of ``k`` items drawn uniformly without replacement from groups of ``sizes`` fall in each group
    (i64): a multivariate hypergeometric draw; beyond numpy's 10**9 items, one per block of :data:`SPREAD_BLOCK`
    groups, each block taking its share of ``k`` in proportion to its size (exact totals)."""
    sizes = np.asarray(sizes, np.int64)
    total = int(sizes.sum())
    k = int(min(max(k, 0), total))
    if k == total:
        return sizes.copy()
    if k == 0:
        return np.zeros(sizes.shape, np.int64)
    out = np.zeros(sizes.shape, np.int64)
    cum = [0] + np.cumsum(sizes)[SPREAD_BLOCK - 1 :: SPREAD_BLOCK].tolist()
    if cum[-1] != total:
        cum.append(total)
    for b in range(len(cum) - 1):
        share = k * cum[b + 1] // total - k * cum[b] // total  # Python ints: exact
        sl = slice(b * SPREAD_BLOCK, (b + 1) * SPREAD_BLOCK)
        if share:
            out[sl] = rng.multivariate_hypergeometric(sizes[sl], share)
    return out


def region_vma(r: dict) -> tuple[int, int, bool]:
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


@dataclass(frozen=True)
class VmaPlan:
    """One VMA of a region and the per-table draws of step 1 (arrays over its ``ceil(n / 512)`` tables):
    ``thp`` (mapped by a huge PMD), ``present`` and ``swapped`` units (folio-sized, naturally aligned groups of
    slots), ``pinned`` folios (scattered pins; None for runs) or ``pin_runs`` (starts, lengths over the VMA's folios
    in address order). ``keys``: the step-2 keys (presence, swap, pins, swap counts)."""

    start: int
    n: int
    flags: int
    backing: int
    anon: bool
    order: int
    swap_count_max: int
    keys: np.ndarray
    thp: np.ndarray
    present: np.ndarray
    swapped: np.ndarray
    pinned: np.ndarray | None
    pin_runs: tuple[np.ndarray, np.ndarray] | None
    frame_order: str = "address"

    @property
    def units_per_table(self) -> int:
        return PTRS_PER_TABLE >> self.order

    def units(self, tables: np.ndarray) -> np.ndarray:
        """Units in each of the VMA's ``tables`` (0 in a THP's table)."""
        per = self.units_per_table
        u = np.clip((self.n >> self.order) - tables * per, 0, per)
        return np.where(self.thp[tables], 0, u)

    @cached_property
    def folios(self) -> np.ndarray:
        """Folios of each table: the mapped (present, not swapped) units, or the THP."""
        return self.present - self.swapped + self.thp

    @cached_property
    def folios_before(self) -> np.ndarray:
        """The VMA's folios in the tables before each table (where a table's folios are in the pin runs' order)."""
        return np.cumsum(self.folios) - self.folios

    @property
    def pages(self) -> np.ndarray:
        return ((self.present - self.swapped) << self.order) + self.thp * PTRS_PER_TABLE

    @property
    def slots(self) -> np.ndarray:
        return self.swapped << self.order


def plan_vma(rng, start: int, n: int, r: dict) -> VmaPlan:
    """Step 1 for one VMA of ``n`` pages at ``start`` (table-aligned) with the region keys ``r``."""
    flags, backing, anon = region_vma(r)
    order = int(r["folio_order"]) if anon else 0  # mapping has an anon_vma
    keys = rng.integers(0, 1 << 63, size=4, dtype=np.int64).astype(np.uint64)
    nt, full = -(-n // PTRS_PER_TABLE), n // PTRS_PER_TABLE
    thp = np.zeros(nt, bool)
    if anon:
        thp[choose(rng, full, round(r["thp_fraction"] * full))] = True
    plan = dict(start=start, n=n, flags=flags, backing=backing, anon=anon, order=order, keys=keys, thp=thp)
    plan.update(swap_count_max=int(r["swap_count_max"]), pinned=None, pin_runs=None)
    plan["frame_order"] = r.get("frame_order", "address")
    units = VmaPlan(**plan, present=None, swapped=None).units(np.arange(nt))
    present = spread(rng, units, round(r["fill"] * int(units.sum())))
    swapped = spread(rng, present, round(r["swap_fraction"] * int(present.sum())))
    vp = VmaPlan(**plan, present=present, swapped=swapped)
    cand, pages = vp.folios, int(vp.pages.sum())
    ncand = int(cand.sum())
    target = round(r["pinned_fraction"] * pages)
    if target and ncand:
        k = max(1, round(target / (pages / ncand)))
        if r["pinned_placement"] == "contiguous":
            plan["pin_runs"] = runs(rng, ncand, k, int(r["pinned_regions"]))
        else:
            plan["pinned"] = spread(rng, cand, k)
    return VmaPlan(**plan, present=present, swapped=swapped)


@dataclass(frozen=True)
class Chunk:
    """A chunk of a :class:`RegionSpace`: its address space, the rows ``[lo, hi)`` of the whole space's tables
    it holds, and where its memory rows start in the whole space's (``page_base``, ``folio_base``, ``slot_base``)."""

    space: AddressSpace
    lo: int
    hi: int
    page_base: int
    folio_base: int
    slot_base: int


class RegionSpace:
    """The address space of ``regions`` (dicts with the keys of :class:`gpusim.jobs.sweep.spec.Region`), in address
    order, each VMA starting at a 2 MiB boundary with one empty table's gap between regions; planned (step 1 of
    the module docstring) at construction, built whole (:meth:`whole`) or in chunks (:meth:`chunks`). ``seed`` is
    an int or a ``numpy.random.SeedSequence``; equal seeds give identical arrays."""

    def __init__(self, regions: list[dict], variant: str, seed, has_pinned: bool | None = None):
        self.variant = variant
        self.anon_exclusive = get_variant(variant).anon_exclusive
        rng = np.random.default_rng(seed)
        self.vmas: list[VmaPlan] = []
        addr = 0
        for r in regions:
            nr = max(1, int(r["size"]) // PAGE_SIZE)
            k = int(r["vmas"])
            for n in [nr // k + (1 if i < nr % k else 0) for i in range(k)]:
                if n:
                    self.vmas.append(plan_vma(rng, addr, n, r))
                    addr += -(-n // PTRS_PER_TABLE) * PTRS_PER_TABLE
            addr += PTRS_PER_TABLE
        self.rows_of_vma()
        pinned = any(v.pin_runs is not None or (v.pinned is not None and v.pinned.any()) for v in self.vmas)
        self.has_pinned = pinned if has_pinned is None else bool(has_pinned)
        self.on_swapoff_list = self.nr_slots > 0

    def rows_of_vma(self) -> None:
        """The space's table rows (tables that hold a PTE or a huge PMD, in address order): for each, its VMA and
        table in it, and the prefix sums of pages, folios and slots over rows."""
        vma, local, counts = [], [], []
        for i, v in enumerate(self.vmas):
            rows = np.flatnonzero((v.present > 0) | v.thp)
            vma.append(np.full(rows.shape, i, np.int32))
            local.append(rows)
            counts.append(np.stack([v.pages[rows], v.folios[rows], v.slots[rows]], axis=1))
        self.row_vma = np.concatenate(vma) if vma else np.zeros(0, np.int32)
        self.row_local = np.concatenate(local) if local else np.zeros(0, np.int64)
        cum = np.concatenate(counts) if counts else np.zeros((0, 3), np.int64)
        self.row_first = np.zeros((len(self.row_vma) + 1, 3), np.int64)
        np.cumsum(cum, axis=0, out=self.row_first[1:])
        self.nr_pages, self.nr_folios, self.nr_slots = (int(x) for x in self.row_first[-1])

    @property
    def nr_rows(self) -> int:
        """Tables of the space (PTE tables and PMD-mapped THPs)."""
        return int(self.row_vma.shape[0])

    @property
    def nr_ptes(self) -> int:
        return PTRS_PER_TABLE * self.nr_rows

    def whole(self, backend: str = "cpu") -> AddressSpace:
        """The whole space in one piece."""
        return self.chunk(0, self.nr_rows, backend).space

    def chunks(self, rows: int, backend: str = "cpu") -> Iterator[Chunk]:
        """The space in chunks of at most ``rows`` tables, in address order (at least one chunk)."""
        rows = max(1, int(rows))
        for lo in range(0, max(1, self.nr_rows), rows):
            yield self.chunk(lo, min(self.nr_rows, lo + rows), backend)

    def chunk(self, lo: int, hi: int, backend: str = "cpu") -> Chunk:
        """The tables of rows ``[lo, hi)`` with the memory they map (step 2 of the module docstring), built by
        ``backend``: ``reference`` (:meth:`reference_chunk`) or a fast engine's compiled generator
        (:meth:`generate`), which give equal arrays."""
        if backend == "reference":
            return self.placed(self.reference_chunk(lo, hi), backend)
        return self.placed(self.generate(lo, hi, backend), backend)

    def placed(self, c: Chunk, backend: str) -> Chunk:
        """The chunk with its folios in each region's ``frame_order`` (:mod:`gpusim.model.frames`), shuffled inside
        each table row (a table's frames keep its range of page rows), so that chunks of any size renumber alike."""
        if all(v.frame_order == "address" for v in self.vmas):
            return c
        per_row = np.diff(self.row_first[c.lo : c.hi + 1, 1])
        row = np.repeat(np.arange(c.hi - c.lo), per_row)
        vma = self.row_vma[c.lo : c.hi][row]
        ids = c.folio_base + np.arange(row.shape[0], dtype=np.int64)
        keys = np.zeros(row.shape[0], np.uint64)
        for i in np.unique(vma).tolist():
            v, mine = self.vmas[i], vma == i
            keys[mine] = frame_order_keys(v.frame_order, int(v.keys[0]), ids[mine])
        return dataclasses.replace(c, space=place_frames(c.space, ordered(row, keys)))

    def reference_chunk(self, lo: int, hi: int) -> Chunk:
        """Rows ``[lo, hi)`` built with numpy through :class:`~gpusim.model.builder.SpaceBuilder`: the readable form of
        step 2, the oracle of :meth:`generate`."""
        page_base, folio_base, slot_base = (int(x) for x in self.row_first[lo])
        content = (page_base + 1, self.nr_pages + slot_base + 1, self.nr_pages + self.nr_slots + 1)
        sb = SpaceBuilder(self.variant, content_base=content)
        vs = self.vmas
        sb.add_vmas(
            [v.start for v in vs],
            [v.start + v.n for v in vs],
            [v.flags for v in vs],
            [v.backing for v in vs],
            [v.anon or v.backing == BACKING_FILE for v in vs],  # a written private file has an anon_vma
        )
        row_vma = self.row_vma[lo:hi]
        for i in np.unique(row_vma).tolist():
            sel = np.flatnonzero(row_vma == i)
            first = self.row_first[lo + sel[0]] - self.row_first[lo]
            build_tables(sb, vs[i], self.row_local[lo + sel[0] : lo + sel[-1] + 1], self.anon_exclusive, first)
        space = sb.freeze(self.has_pinned, self.on_swapoff_list)
        return Chunk(space, lo, hi, page_base, folio_base, slot_base)

    @cached_property
    def gen_vmas(self) -> GenVmas:
        """The VMAs as the compiled generator reads them (host arrays)."""
        vs, i64 = self.vmas, np.int64
        runs = [v.pin_runs or (np.zeros(0, i64), np.zeros(0, i64)) for v in vs]
        nruns = np.cumsum([0] + [len(r[0]) for r in runs])
        return GenVmas(
            start=np.array([v.start for v in vs], i64),
            n=np.array([v.n for v in vs], i64),
            order=np.array([v.order for v in vs], i64),
            swap_max=np.array([v.swap_count_max for v in vs], i64),
            run_lo=nruns[:-1].astype(i64),
            run_hi=nruns[1:].astype(i64),
            anon=np.array([v.anon for v in vs], np.bool_),
            pin_runs=np.array([v.pin_runs is not None for v in vs], np.bool_),
            flags=np.array([v.flags for v in vs], np.uint64),
            backing=np.array([v.backing for v in vs], np.uint8),
            keys=np.array([v.keys for v in vs], np.uint64).reshape(len(vs), 4),
            run_start=np.concatenate([r[0] for r in runs] + [np.zeros(0, i64)]).astype(i64),
            run_len=np.concatenate([r[1] for r in runs] + [np.zeros(0, i64)]).astype(i64),
        )

    @cached_property
    def _per_table(self) -> dict:
        """The plan's per-table arrays of every VMA, one after another, and where each VMA's tables start."""
        vs = self.vmas
        cat = lambda f: np.concatenate([f(v) for v in vs]) if vs else np.zeros(0, np.int64)  # noqa: E731
        return {
            "first": np.cumsum([0] + [len(v.thp) for v in vs])[:-1],
            "thp": cat(lambda v: v.thp),
            "units": cat(lambda v: v.units(np.arange(len(v.thp)))),
            "present": cat(lambda v: v.present),
            "swapped": cat(lambda v: v.swapped),
            "pinned": cat(lambda v: np.zeros(len(v.thp), np.int64) if v.pinned is None else v.pinned),
            "folios_before": cat(lambda v: v.folios_before),
        }

    def gen_rows(self, lo: int, hi: int) -> GenRows:
        """Rows ``[lo, hi)`` as the compiled generator reads them (host arrays)."""
        pt, vma, table = self._per_table, self.row_vma[lo:hi].astype(np.int64), self.row_local[lo:hi]
        at = pt["first"][vma] + table
        thp = pt["thp"][at]
        first = self.row_first[lo:hi] - self.row_first[lo]
        return GenRows(
            vma=vma,
            table=table.astype(np.int64),
            units=pt["units"][at],
            present=pt["present"][at],
            swapped=pt["swapped"][at],
            pinned=pt["pinned"][at],
            folios_before=pt["folios_before"][at],
            page0=first[:, 0].copy(),
            folio0=first[:, 1].copy(),
            slot0=first[:, 2].copy(),
            pte_row=np.where(thp, -1, np.cumsum(~thp) - 1),
            pmd_row=np.where(thp, np.cumsum(thp) - 1, -1),
            thp=thp,
        )

    def generate(self, lo: int, hi: int, backend: str = "cpu") -> Chunk:
        """The chunk of rows ``[lo, hi)`` as :meth:`reference_chunk` builds it, by the compiled generator
        (:mod:`gpusim.kernels.generate`) of the fast ``backend``: on ``cuda`` its arrays (tables and memory) are
        built in device memory and stay there (CuPy arrays); its VMAs, table numbers and rss are host arrays."""
        xp = B.array_module_for(backend)
        w = self.gen_rows(lo, hi)
        npte, npmd = int((~w.thp).sum()), int(w.thp.sum())
        (page_base, folio_base, slot_base), (p1, f1, s1) = self.row_first[lo], self.row_first[hi]
        rows = {"folio": int(f1 - folio_base), "page": int(p1 - page_base), "swap": int(s1 - slot_base)}
        shape = {name: (rows[name.split("_")[0]],) for name in MEMORY_FIELDS}
        shape.update(pte=(npte, PTRS_PER_TABLE), pmd=(npmd,), rss=(hi - lo, 4))
        o = GenOut(**{name: xp.zeros(shape[name], dt) for name, (dt, _) in GROUP_FIELDS["gen_out"].items()})
        dev = lambda g: type(g)(*(xp.asarray(a) for a in g))  # noqa: E731  (numpy's asarray: the arrays themselves)
        slot_c0 = self.nr_pages + int(slot_base) + 1
        B.kernels(backend).generate_rows(
            self.anon_exclusive,
            get_variant(self.variant).large_pin_order,
            int(page_base) + 1,
            slot_c0,
            dev(self.gen_vmas),
            dev(w),
            o,
        )
        memory = Memory(
            **{name: getattr(o, name) for name in MEMORY_FIELDS}, next_content=self.nr_pages + self.nr_slots + 1
        )
        return Chunk(self.generated_space(w, o, memory), lo, hi, int(page_base), int(folio_base), int(slot_base))

    def generated_space(self, w: GenRows, o: GenOut, memory: Memory) -> AddressSpace:
        """The address space around a generated chunk's arrays."""
        v = self.gen_vmas
        tables = v.start[w.vma] // PTRS_PER_TABLE + w.table
        rss = o.rss.sum(axis=0)
        mm = MM(
            vma_start=v.start,
            vma_end=v.start + v.n,
            vma_flags=v.flags,
            vma_backing=v.backing,
            vma_anon_vma=v.anon | (v.backing == BACKING_FILE),  # a written private file has an anon_vma
            table_index=tables[~w.thp],
            pte=o.pte,
            pmd_index=tables[w.thp],
            pmd=o.pmd,
            rss=B.to_host(rss),
            has_pinned=self.has_pinned,
            on_swapoff_list=self.on_swapoff_list,
        )
        return AddressSpace(mm, memory)


def unit_slots(vp: VmaPlan, tables: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The first slot (in the VMA) of each of ``counts[i]`` units of ``tables[i]``, in order."""
    full = vp.units_per_table
    if len(tables) and tables[-1] - tables[0] == len(tables) - 1 and (counts == full).all():  # a run of full tables
        return np.arange(tables[0] * PTRS_PER_TABLE, (tables[-1] + 1) * PTRS_PER_TABLE, 1 << vp.order, dtype=np.int64)
    idx = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(tables * PTRS_PER_TABLE, counts) + (idx << vp.order)


def build_tables(sb: SpaceBuilder, vp: VmaPlan, tables: np.ndarray, anon_exclusive: bool, first: np.ndarray) -> None:
    """Step 2 for the VMA's ``tables`` (sorted, each holding a PTE or a THP): their folios, pages, entries, swap
    slots and pins, added to ``sb`` in address order; ``first`` (pages, folios, slots) says where the builder is
    in the chunk, so that the builder's numbers are the plan's."""
    assert (sb.nr_pages, sb.nr_folios, sb.nr_slots) == tuple(int(x) for x in first), "rows out of plan order"
    key_present, key_swap, key_pin, key_count = vp.keys
    F = 1 << vp.order
    thp = vp.thp[tables]
    pt = tables[~thp]
    units, present, swapped = vp.units(pt), vp.present[pt], vp.swapped[pt]
    slots = unit_slots(vp, pt, units)
    if (present < units).any():
        slots = slots[select_in_groups(units, present, pt * PTRS_PER_TABLE, key_present)]
    is_swapped = np.zeros(slots.shape[0], bool)
    if swapped.any():
        is_swapped = select_in_groups(present, swapped, pt * PTRS_PER_TABLE, key_swap)
    mapped, swapped_slots = slots[~is_swapped], slots[is_swapped]
    # folios in address order: each table's mapped units, or its THP
    fslot, forder = mapped, vp.order
    if thp.any():
        fslot = np.concatenate([mapped, tables[thp] * PTRS_PER_TABLE])
        by_addr = np.argsort(fslot, kind="stable")
        fslot, is_thp = fslot[by_addr], (np.arange(fslot.shape[0]) >= mapped.shape[0])[by_addr]
        forder = np.where(is_thp, THP_ORDER, vp.order)
    ids, pfn = add_folios(sb, vp, fslot, forder)
    write, dirty = (vp.flags & VM_WRITE) != 0 and vp.anon, vp.anon or (vp.flags & VM_SHARED) != 0
    small = np.asarray(forder) == vp.order if thp.any() else slice(None)
    addr = (vp.start + fslot[small][:, None] + np.arange(F)).reshape(-1)
    val = with_offsets(P.mk_pte(0, write, dirty, True, False), (pfn[small][:, None] + np.arange(F)).reshape(-1))
    if thp.any():
        sb.add_pmds(
            vp.start // PTRS_PER_TABLE + tables[thp],
            with_offsets(P.mk_huge_pmd(0, (vp.flags & VM_WRITE) != 0, True, True), pfn[~small]),
        )
    if swapped_slots.shape[0]:  # one slot per page of a swapped unit, counts uniform in 1..swap_count_max
        sw = (swapped_slots[:, None] + np.arange(F)).reshape(-1)
        cnt = uniform_ints(sw, key_count, vp.swap_count_max)
        levels = np.zeros(sw.shape[0], np.int64)
        for lv in range(1, 4):
            levels[cnt > swap_cap(lv - 1)] = lv
        excl = anon_exclusive & (cnt == 1)
        swap_val = with_offsets(
            np.where(excl, np.uint64(P.mk_swap_pte(0, True)), np.uint64(P.mk_swap_pte(0, False))),
            sb.add_slots(cnt, levels),
        )
        addr, val = np.concatenate([addr, vp.start + sw]), np.concatenate([val, swap_val])
        by_addr = np.argsort(addr, kind="stable")
        addr, val = addr[by_addr], val[by_addr]
    sb.add_entries(addr, val)
    pin_folios(sb, vp, tables, ids)


def add_folios(sb: SpaceBuilder, vp: VmaPlan, fslot: np.ndarray, forder) -> tuple[np.ndarray, np.ndarray]:
    """The folios at the first slots ``fslot`` (orders ``forder``: the VMA's, or 9 for a THP); returns (ids,
    first pfns)."""
    if vp.anon:
        fflags, pflags, ref = FOLIO_ANON | FOLIO_SWAPBACKED, PAGE_ANON_EXCLUSIVE, 1 << vp.order
    else:  # + the page cache's reference
        fflags, pflags, ref = (FOLIO_SWAPBACKED if vp.backing == BACKING_SHMEM else 0), 0, 1 + (1 << vp.order)
    if np.ndim(forder) == 0:
        return sb.add_folios(fslot.shape[0], forder, fflags, ref, pflags, 1)
    is_thp = forder == THP_ORDER
    sizes = np.left_shift(1, forder.astype(np.int64))
    page_flags = np.repeat(np.where(is_thp, 0, pflags), sizes)
    page_flags[(np.cumsum(sizes) - sizes)[is_thp]] = PAGE_ANON_EXCLUSIVE  # a THP's head: the PMD's exclusive flag
    return sb.add_folios(
        fslot.shape[0],
        forder,
        fflags,
        np.where(is_thp, 1, ref),
        page_flags,
        np.repeat(np.where(is_thp, 0, 1), sizes),
        pmd_mapcount=is_thp.astype(np.int64),
    )


def pin_folios(sb: SpaceBuilder, vp: VmaPlan, tables: np.ndarray, ids: np.ndarray) -> None:
    """Pin (one FOLL_PIN each) the folios ``ids`` (the VMA's ``tables``' folios, in address order) the plan
    pins: drawn per table, or those inside a run."""
    if vp.pinned is not None and vp.pinned[tables].any():
        pick = select_in_groups(vp.folios[tables], vp.pinned[tables], tables * PTRS_PER_TABLE, vp.keys[2])
        sb.add_pins(ids[pick])
    elif vp.pin_runs is not None:
        starts, lengths = vp.pin_runs
        idx = vp.folios_before[tables[0]] + np.arange(ids.shape[0], dtype=np.int64)
        run = np.searchsorted(starts, idx, side="right") - 1
        inside = (run >= 0) & (idx < starts[np.maximum(run, 0)] + lengths[np.maximum(run, 0)])
        sb.add_pins(ids[inside])


def build_regions(
    regions: list[dict], variant: str, seed, has_pinned: bool | None = None, backend: str = "cpu"
) -> AddressSpace:
    """The whole address space of ``regions`` (see :class:`RegionSpace`)."""
    return RegionSpace(regions, variant, seed, has_pinned).whole(backend)
