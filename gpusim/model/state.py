"""The state model of the fork simulation (spec section 1) as struct-of-arrays.

Two frozen containers hold everything an engine reads and writes:

* :class:`Memory`, the physical side shared by every mm of the simulation: folios (``folio_*``, one row per folio),
  pages (``page_*``, one row per page frame; the row number *is* the pfn) and swap slots (``swap_*``).
* :class:`MM`, one process's address space: VMAs (``vma_*``), 512-entry PTE tables (``pte`` with their table numbers
  in ``table_index``), PMD-mapped THPs (``pmd`` with ``pmd_index``), rss counters and flags.

An :class:`AddressSpace` is an mm together with the memory it maps: the input of a fork. The child of a fork is
another :class:`MM` over the same (updated) memory.

Simplifications, as the spec allows: page ``mapcount`` starts at 0 (no -1 offset); continuation levels are per
slot; a PMD mapping of a THP is counted in ``folio_pmd_mapcount`` (the kernel's entire mapcount) and its PMD-level
``anon_exclusive`` is the flag of the folio's first page, as the kernel keeps it on the head page.

Arrays are numpy on the host; engines copy them before writing, so states are values.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from gpusim.base import backend as B
from gpusim.kernels import flags as F
from gpusim.kernels import pte as P
from gpusim.kernels.digest import lane_sums
from gpusim.kernels.fields import MEMORY_FIELDS, MM_FIELDS
from gpusim.kernels.flags import BACKING_SHMEM, PTRS_PER_TABLE, VM_KNOWN, swap_cap
from gpusim.model import decode


def tables_from_entries(addr: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(table_index i64 ``(T,)``, pte u64 ``(T, 512)``) holding the entries ``val`` at the page addresses ``addr``:
    one table for each 512-page extent that holds an entry. The inverse of :func:`entries`."""
    addr = np.asarray(addr, np.int64)
    val = np.asarray(val, np.uint64)
    if addr.size >= F.COMPILED_FROM:
        from gpusim.kernels import scan

        ascending, tables, pte = scan.tables_of_sorted(addr, val)  # entries in address order: the common case
        if ascending:
            return tables, pte
    t = addr // PTRS_PER_TABLE
    s = np.sort(t)  # np.unique would load numpy.ma on its first call (20 ms of a one-table `gpusim fork`)
    tables = s[np.concatenate(([True], s[1:] != s[:-1]))] if s.size else s
    row = np.searchsorted(tables, t)
    pte = np.zeros((tables.shape[0], PTRS_PER_TABLE), np.uint64)
    pte.reshape(-1)[row * PTRS_PER_TABLE + addr % PTRS_PER_TABLE] = val
    return tables, pte


def entries(mm: "MM") -> tuple[np.ndarray, np.ndarray]:
    """(addresses i64, values u64) of the non-empty PTEs of ``mm``, in address order."""
    if mm.nr_tables == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    if mm.pte.size >= F.COMPILED_FROM:
        from gpusim.kernels import scan

        return scan.entries(mm.table_index, mm.pte)
    addr = (mm.table_index[:, None] * PTRS_PER_TABLE + np.arange(PTRS_PER_TABLE)[None, :]).reshape(-1)
    val = mm.pte.reshape(-1)
    nz = val != 0
    return addr[nz], val[nz]


class StateError(ValueError):
    """An array of the state model has the wrong dtype or shape, or its cross-references do not hold."""


def _check_fields(obj, fields, what):
    for name, (dtype, row_shape) in fields.items():
        a = getattr(obj, name)
        if not isinstance(a, np.ndarray):
            raise StateError(f"{what}.{name}: expected a numpy array, got {type(a).__name__}")
        if a.dtype != dtype:
            raise StateError(f"{what}.{name}: dtype {a.dtype}, expected {dtype}")
        if a.ndim != 1 + len(row_shape) or a.shape[1:] != row_shape:
            raise StateError(
                f"{what}.{name}: shape {a.shape}, expected (n, {', '.join(map(str, row_shape))})"
                if row_shape
                else f"{what}.{name}: shape {a.shape}, expected (n,)"
            )


@dataclass(frozen=True)
class Memory:
    """Folios, pages and swap slots: the physical state every mm of a simulation shares.

    Folios (``F`` rows): ``folio_order`` u8 (0 = small), ``folio_refcount`` i32 (folio-wide), ``folio_pincount``
    i32 (folio-wide FOLL_PIN count, used by "large" folios), ``folio_true_pins`` i32 (bookkeeping only, never read by
    a variant), ``folio_pmd_mapcount`` i32 (PMD mappings), ``folio_flags`` u8 (``FOLIO_*``), ``folio_first_pfn`` i32.
    Pages (``N`` rows, row = pfn): ``page_folio`` i32, ``page_mapcount`` i32 (PTE mappings, from 0),
    ``page_flags`` u8 (``PAGE_ANON_EXCLUSIVE``, ``PAGE_HWPOISON``), ``page_content`` u64 (content identity).
    Swap slots (``S`` rows): ``swap_count`` i64, ``swap_levels`` i64 (continuation pages), ``swap_content`` u64.
    ``next_content`` is the next unused content identity.
    """

    folio_order: np.ndarray
    folio_refcount: np.ndarray
    folio_pincount: np.ndarray
    folio_true_pins: np.ndarray
    folio_pmd_mapcount: np.ndarray
    folio_flags: np.ndarray
    folio_first_pfn: np.ndarray
    page_folio: np.ndarray
    page_mapcount: np.ndarray
    page_flags: np.ndarray
    page_content: np.ndarray
    swap_count: np.ndarray
    swap_levels: np.ndarray
    swap_content: np.ndarray
    next_content: int = 1

    @classmethod
    def build(cls, next_content: int = 1, **arrays) -> "Memory":
        """A Memory from array-likes, each converted to the dtype the model fixes for it."""
        return cls(
            **{name: np.asarray(arrays[name], dtype=MEMORY_FIELDS[name][0]) for name in MEMORY_FIELDS},
            next_content=next_content,
        )

    @property
    def nr_folios(self) -> int:
        return int(self.folio_order.shape[0])

    @property
    def nr_pages(self) -> int:
        return int(self.page_folio.shape[0])

    @property
    def nr_slots(self) -> int:
        return int(self.swap_count.shape[0])

    def validate(self) -> None:
        _check_fields(self, MEMORY_FIELDS, "memory")
        nf, npg, ns = self.nr_folios, self.nr_pages, self.nr_slots
        for name in MEMORY_FIELDS:
            n = {"folio": nf, "page": npg, "swap": ns}[name.split("_")[0]]
            if getattr(self, name).shape[0] != n:
                raise StateError(f"memory.{name}: {getattr(self, name).shape[0]} rows, expected {n}")
        if nf:
            if (self.folio_order > 9).any():
                raise StateError(f"memory.folio_order: order {int(self.folio_order.max())} > 9")
            nr = np.left_shift(np.int64(1), self.folio_order.astype(np.int64))
            if (self.folio_first_pfn < 0).any() or (self.folio_first_pfn + nr > npg).any():
                f = int(np.flatnonzero((self.folio_first_pfn < 0) | (self.folio_first_pfn + nr > npg))[0])
                raise StateError(
                    f"memory.folio_first_pfn[{f}] = {int(self.folio_first_pfn[f])}: pages outside the {npg} page rows"
                )
            pf = self.page_folio
            if npg and ((pf < 0).any() or (pf >= nf).any()):
                raise StateError("memory.page_folio names a folio that does not exist")
            pages = np.arange(npg, dtype=np.int64)
            inside = (pages >= self.folio_first_pfn[pf]) & (pages < self.folio_first_pfn[pf] + nr[pf])
            if not inside.all() or not np.array_equal(np.bincount(pf, minlength=nf), nr):
                raise StateError(
                    "memory.page_folio does not match folio_first_pfn/folio_order "
                    "(every page row must belong to exactly the folio that covers it)"
                )
        for name in (
            "folio_refcount",
            "folio_pincount",
            "folio_true_pins",
            "folio_pmd_mapcount",
            "page_mapcount",
            "swap_count",
            "swap_levels",
        ):
            a = getattr(self, name)
            if a.shape[0] and (a < 0).any():
                i = int(np.flatnonzero(a < 0)[0])
                raise StateError(f"memory.{name}[{i}] = {int(a[i])} < 0")
        if ns:
            caps = np.array([swap_cap(int(lv)) for lv in self.swap_levels], dtype=np.int64)
            bad = np.flatnonzero(self.swap_count > caps)
            if bad.size:
                i = int(bad[0])
                raise StateError(
                    f"memory.swap_count[{i}] = {int(self.swap_count[i])} exceeds the capacity "
                    f"{int(caps[i])} of {int(self.swap_levels[i])} continuation level(s)"
                )


@dataclass(frozen=True)
class MM:
    """One mm: VMAs, page tables, rss and flags.

    VMAs (``V`` rows, sorted, disjoint): ``vma_start``/``vma_end`` i64 (page numbers, end exclusive), ``vma_flags``
    u64 (``VM_*``), ``vma_backing`` u8 (``BACKING_*``), ``vma_anon_vma`` bool.
    PTE tables (``T`` rows): ``table_index`` i64 sorted table numbers (table t covers ``[512t, 512t+512)``),
    ``pte`` u64 ``(T, 512)`` entries in the encoding of :mod:`gpusim.kernels.pte`.
    Huge PMDs (``H`` rows): ``pmd_index`` i64 sorted table numbers, ``pmd`` u64 entries (``pmd_trans_huge``); a
    table number is in at most one of ``table_index`` and ``pmd_index``.
    ``rss`` i64 ``(4,)``: anon, file, shmem, swapents. ``has_pinned``: the 5.x ``has_pinned`` field or 6.18's
    ``MMF_HAS_PINNED``. ``on_swapoff_list``: the mm is on the swapoff mm list.
    """

    vma_start: np.ndarray
    vma_end: np.ndarray
    vma_flags: np.ndarray
    vma_backing: np.ndarray
    vma_anon_vma: np.ndarray
    table_index: np.ndarray
    pte: np.ndarray
    pmd_index: np.ndarray
    pmd: np.ndarray
    rss: np.ndarray
    has_pinned: bool = False
    on_swapoff_list: bool = False

    @property
    def nr_vmas(self) -> int:
        return int(self.vma_start.shape[0])

    @property
    def nr_tables(self) -> int:
        return int(self.table_index.shape[0])

    def validate(self, memory: Memory | None = None, what: str = "mm") -> None:
        _check_fields(self, MM_FIELDS, what)
        nv = self.nr_vmas
        for name in ("vma_end", "vma_flags", "vma_backing", "vma_anon_vma"):
            if getattr(self, name).shape[0] != nv:
                raise StateError(f"{what}.{name}: {getattr(self, name).shape[0]} rows, expected {nv}")
        if self.pte.shape[0] != self.nr_tables:
            raise StateError(f"{what}.pte: {self.pte.shape[0]} tables, table_index has {self.nr_tables}")
        if self.pmd.shape[0] != self.pmd_index.shape[0]:
            raise StateError(f"{what}.pmd: {self.pmd.shape[0]} rows, pmd_index has {self.pmd_index.shape[0]}")
        if self.rss.shape != (4,):
            raise StateError(f"{what}.rss: shape {self.rss.shape}, expected (4,)")
        if nv:
            if (self.vma_end <= self.vma_start).any():
                i = int(np.flatnonzero(self.vma_end <= self.vma_start)[0])
                raise StateError(f"{what}: VMA {i} [{int(self.vma_start[i])}, {int(self.vma_end[i])}) is empty")
            if (self.vma_start[1:] < self.vma_end[:-1]).any():
                i = int(np.flatnonzero(self.vma_start[1:] < self.vma_end[:-1])[0])
                raise StateError(f"{what}: VMAs {i} and {i + 1} overlap or are out of order")
            unknown = self.vma_flags & ~np.uint64(VM_KNOWN)
            if unknown.any():
                i = int(np.flatnonzero(unknown)[0])
                raise StateError(f"{what}.vma_flags[{i}]: unknown bits {int(unknown[i]):#x}")
            if (self.vma_backing > BACKING_SHMEM).any():
                raise StateError(f"{what}.vma_backing: value outside anon/file/shmem")
        for name in ("table_index", "pmd_index"):
            a = getattr(self, name)
            if a.shape[0] and ((a[1:] <= a[:-1]).any() or (a < 0).any()):
                raise StateError(f"{what}.{name}: table numbers must be non-negative, sorted and unique")
        if np.intersect1d(self.table_index, self.pmd_index).size:
            raise StateError(f"{what}: a table number is both a PTE table and a huge PMD")
        if memory is not None:
            self._validate_refs(memory, what)

    def _validate_refs(self, memory: Memory, what: str) -> None:
        addr, val = entries(self)
        kind = decode.kinds(val)
        off = decode.offsets(val)
        special = decode.special(val)
        checks = (
            (kind < 0, "is not a valid entry"),
            (
                (kind == P.KIND_PRESENT) & ~special & (off >= memory.nr_pages),
                f"maps a pfn outside the {memory.nr_pages} pages",
            ),
            ((kind == P.KIND_SWAP) & (off >= memory.nr_slots), f"names a slot outside the {memory.nr_slots} slots"),
            (
                ((kind == P.KIND_MIGRATION) | (kind == P.KIND_DEVICE_PRIVATE)) & (off >= memory.nr_pages),
                f"names a pfn outside the {memory.nr_pages} pages",
            ),
            (~self.covered(addr), "lies outside every VMA"),
        )
        for bad, msg in checks:
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise StateError(f"{what}: PTE at {int(addr[i])} = {int(val[i]):#x} {msg}")
        for t, v in zip(self.pmd_index.tolist(), self.pmd.tolist()):
            if not P.pmd_trans_huge(v):
                raise StateError(f"{what}: PMD of table {t} = {v:#x} is not a huge PMD")
            pfn = P.pte_pfn(v)
            if pfn >= memory.nr_pages:
                raise StateError(f"{what}: huge PMD of table {t} maps pfn {pfn} outside memory")
            f = int(memory.page_folio[pfn])
            if int(memory.folio_order[f]) != 9 or int(memory.folio_first_pfn[f]) != pfn:
                raise StateError(f"{what}: huge PMD of table {t} must map the head of an order-9 folio")
            span = np.arange(t * PTRS_PER_TABLE, (t + 1) * PTRS_PER_TABLE, dtype=np.int64)
            if not self.covered(span).all() or len(set(self.vma_of(span).tolist())) != 1:
                raise StateError(f"{what}: huge PMD of table {t} is not inside one VMA")

    def vma_of(self, addr: np.ndarray) -> np.ndarray:
        """Index of the VMA containing each address, or -1."""
        i = np.searchsorted(self.vma_start, addr, side="right") - 1
        ok = (i >= 0) & (addr < self.vma_end[np.maximum(i, 0)]) if self.nr_vmas else np.zeros(addr.shape, bool)
        return np.where(ok, i, -1)

    def covered(self, addr: np.ndarray) -> np.ndarray:
        return self.vma_of(addr) >= 0


@dataclass(frozen=True)
class AddressSpace:
    """A parent process: its mm and the memory it maps. The input of a fork."""

    mm: MM
    memory: Memory

    def validate(self) -> "AddressSpace":
        """Check the state (spec section 1) once: a valid address space is frozen (its arrays made read-only, as
        the engines never write their input), so later calls, by every fork, sweep point or chain step that takes
        it, return at once. Raises :class:`StateError` on the first problem."""
        if self.__dict__.get("_valid") and not any(a.flags.writeable for a in self.arrays()):
            return self
        self.memory.validate()
        self.mm.validate(self.memory)
        for a in self.arrays():
            a.flags.writeable = False
        object.__setattr__(self, "_valid", True)
        return self

    @classmethod
    def of_fork(cls, mm: MM, memory: Memory) -> "AddressSpace":
        """An address space a fork returned (a parent or a child over the memory after the fork), frozen without
        being checked again: an engine's result is valid by construction (and its invariants are checked). A
        chain of forks takes its next input from here."""
        space = cls(mm, memory)
        for a in space.arrays():
            if not B.on_device(a):  # device arrays have no read-only flag
                a.flags.writeable = False
        object.__setattr__(space, "_valid", True)
        return space

    @classmethod
    def handed_over(cls, mm: MM, memory: Memory) -> "AddressSpace":
        """An address space built for one fork and handed to it by a caller that holds no other reference (a
        streamed chunk): valid by construction and not checked again, its arrays left writeable. A compiled fork
        without the invariant check (which compares the result with the input) then works in place: the arrays
        become the parent's after the fork, and the space is an ordinary one from then on."""
        space = cls(mm, memory)
        object.__setattr__(space, "_handed_over", True)
        return space

    def take_over(self) -> bool:
        """Whether this space was :meth:`handed_over` to the fork that asks (once only: an ordinary space after)."""
        return bool(self.__dict__.pop("_handed_over", False))

    def arrays(self) -> list[np.ndarray]:
        """Every array of the state (its mm's, then its memory's)."""
        return [getattr(self.mm, n) for n in MM_FIELDS] + [getattr(self.memory, n) for n in MEMORY_FIELDS]

    @property
    def nr_ptes(self) -> int:
        """PTE slots in the parent's page tables (512 per table; a huge PMD counts 512)."""
        return PTRS_PER_TABLE * (self.mm.nr_tables + int(self.mm.pmd_index.shape[0]))


def empty_mm(**kw) -> MM:
    """An mm with no VMA and no table (the child's starting state); ``kw`` overrides fields."""
    base = {name: np.zeros((0,) + shape, dtype=dtype) for name, (dtype, shape) in MM_FIELDS.items()}
    base["rss"] = np.zeros(4, dtype=np.int64)
    base.update(kw)
    return MM(**base)


def every_thread(a) -> bool:
    """Whether ``a`` is a host array large enough for the compiled passes that fill or copy it on every thread
    (:func:`zeros_like`, :func:`copy_array`): fresh memory is then faulted in on every core, not one."""
    return isinstance(a, np.ndarray) and a.size >= F.COMPILED_FROM and a.flags.c_contiguous


def zeros_like(a):
    """Zeros shaped like the array ``a``, where it is, its pages touched now (:func:`every_thread`)."""
    return filled(B.array_module(a).empty_like(a), 0)


def full(n: int, value, dtype, xp=np):
    """``n`` elements of ``value`` (:func:`every_thread`: fresh memory faulted in on every core)."""
    return filled(xp.empty(n, dtype), value)


def filled(out, value):
    """The array ``out`` filled with ``value``, by every thread when :func:`every_thread`."""
    if every_thread(out):
        from gpusim.kernels import scan

        scan.fill_all_threads(out.reshape(-1), out.dtype.type(value))
    else:
        out.fill(value)
    return out


def copy_array(a, extra: int = 0):
    """A copy of an array where it is (host or device), with ``extra`` more rows of zeros after it (room a fork
    fills later, made now: growing it later would copy it again); a large host array copied by every thread
    (:func:`every_thread`: the engine's working copy of a big state takes the machine's copy bandwidth)."""
    if not extra and not every_thread(a):
        return a.copy()
    n = a.shape[0]
    out = B.array_module(a).empty((n + extra, *a.shape[1:]), a.dtype)
    if every_thread(a):
        from gpusim.kernels import scan

        scan.copy_all_threads(a.reshape(-1), out[:n].reshape(-1))
    else:
        out[:n] = a
    out[n:] = 0
    return out


def resident_bytes(*objs) -> int:
    """Bytes held by the arrays of some states (an :class:`AddressSpace`, :class:`MM` or :class:`Memory`)."""
    total = 0
    for o in objs:
        for f in dataclasses.fields(o):
            v = getattr(o, f.name)
            if hasattr(v, "shape") and hasattr(v, "nbytes"):  # host or device arrays
                total += v.nbytes
            elif dataclasses.is_dataclass(v):
                total += resident_bytes(v)
    return total


MASK64 = (1 << 64) - 1


class DigestSums:
    """The canonical digest of a state, accumulated from pieces (:func:`digest` adds a whole state at once; a
    streamed fork adds each chunk's rows at their places in the whole state's arrays).

    Canonical: each field (in the fixed order of ``MM_FIELDS`` / ``MEMORY_FIELDS``, for the parent, then the
    child, then the memory) contributes a header (its name, its dtype as the model fixes it, its shape) and the
    two 64-bit position-keyed sums of its elements in C order (:mod:`gpusim.kernels.digest`, keyed by the field's
    name and dtype), scalars their decimal text; the digest is BLAKE2b-256 of all of it. The sums do not depend on
    how a field's elements are split into pieces, so a state hashed in chunks hashes as it would whole. Equal
    states give equal digests whichever engine produced them; a change of any one element changes it.
    """

    def __init__(self):
        self.sums: dict[str, list] = {}  # field -> [rows, s0, s1]
        self.scalars: dict[str, int] = {}

    @staticmethod
    def fields() -> list[tuple[str, np.dtype, tuple]]:
        """(name, dtype, row shape) of every array field, in canonical order."""
        out = []
        for who in ("parent", "child"):
            out += [(f"{who}.{n}", np.dtype(dt), shape) for n, (dt, shape) in MM_FIELDS.items()]
        return out + [(f"memory.{n}", np.dtype(dt), shape) for n, (dt, shape) in MEMORY_FIELDS.items()]

    def add(self, field: str, values, first_row: int = 0, move: tuple | None = None) -> None:
        """Rows ``values`` (an array of the field's row shape; any integer dtype, taken by value) of ``field``
        placed from row ``first_row`` on; ``move`` says how to move row numbers in the values (a chunk's, placed
        in the whole space: :func:`gpusim.kernels.digest.lane_sums`)."""
        dt, shape, seed = self.layout[field]
        xp = B.array_module(values)  # a device array is summed where it is
        flat = xp.ascontiguousarray(values, dtype=values.dtype.newbyteorder("=")).reshape(-1)  # no copy if native
        s0, s1 = lane_sums(flat, first_row * int(np.prod(shape, dtype=np.int64)), seed, move, xp)
        acc = self.sums.setdefault(field, [0, 0, 0])
        acc[0] += values.shape[0]
        acc[1] = (acc[1] + int(s0)) & MASK64  # the lanes' sums wrap at 64 bits
        acc[2] = (acc[2] + int(s1)) & MASK64

    def add_mm(self, who: str, mm: MM) -> None:
        for name in MM_FIELDS:
            self.add(f"{who}.{name}", getattr(mm, name))
        self.scalars[f"{who}.has_pinned"] = int(mm.has_pinned)
        self.scalars[f"{who}.on_swapoff_list"] = int(mm.on_swapoff_list)

    def add_memory(self, memory: Memory) -> None:
        for name in MEMORY_FIELDS:
            self.add(f"memory.{name}", getattr(memory, name))
        self.scalars["memory.next_content"] = int(memory.next_content)

    def add_tables(self, tables, obj_base: int = 0) -> None:
        """The lazy designs' :class:`~gpusim.model.tables.TableObjects` (spec 12.1), after what was added before (a
        streamed fork's earlier chunks, whose objects number ``obj_base``): each mm's object per table row and PMD
        W bit, the objects' share counts, the pending tables."""
        for role, obj, wp in zip(tables.roles, tables.obj, tables.wp):
            self.add(f"{role}.table_obj", np.where(obj >= 0, obj + obj_base, -1), self.rows(f"{role}.table_obj"))
            self.add(f"{role}.table_wp", wp.astype(np.uint8), self.rows(f"{role}.table_wp"))
        self.add("tables.share", tables.share, self.rows("tables.share"))
        self.add("tables.pending", tables.pending, self.rows("tables.pending"))

    def rows(self, field: str) -> int:
        """The rows of ``field`` added so far."""
        return self.sums[field][0] if field in self.sums else 0

    def hexdigest(self) -> str:
        h = hashlib.blake2b(digest_size=32)
        fields = self.fields()
        if any(f in self.sums for f, _, _ in LAZY_FIELDS):  # a lazy design's state: its tables too
            fields = fields + LAZY_FIELDS
        for field, dt, shape in fields:
            rows, s0, s1 = self.sums.get(field, (0, 0, 0))
            h.update(f"{field}:{dt.newbyteorder('<').str}:{(rows, *shape)};".encode())
            h.update(s0.to_bytes(8, "little") + s1.to_bytes(8, "little"))
            who, name = field.split(".", 1)
            if name == LAST_MM_FIELD:  # an mm's scalars follow its arrays
                for name in ("has_pinned", "on_swapoff_list"):
                    h.update(f"{who}.{name}={self.scalars.get(f'{who}.{name}', 0)};".encode())
        h.update(f"memory.next_content={self.scalars.get('memory.next_content', 0)};".encode())
        return h.hexdigest()


def _lane_seed(field: str, dt: np.dtype) -> np.uint64:
    """A field's lane seed: from its name and its dtype as the model fixes it."""
    head = f"{field}:{dt.newbyteorder('<').str};".encode()
    return np.uint64(int.from_bytes(hashlib.blake2b(head, digest_size=8).digest(), "little"))


# the lazy designs' table objects (spec 12.1), digested after the rest when a state has them
LAZY_FIELDS = [
    *(
        (f"{who}.{name}", np.dtype(dt), ())
        for who in ("parent", "child")
        for name, dt in (("table_obj", np.int64), ("table_wp", np.uint8))
    ),
    ("tables.share", np.dtype(np.int32), ()),
    ("tables.pending", np.dtype(np.int64), ()),
]
DigestSums.layout = {f: (dt, shape, _lane_seed(f, dt)) for f, dt, shape in DigestSums.fields() + LAZY_FIELDS}
LAST_MM_FIELD = list(MM_FIELDS)[-1]


def digest(parent: MM, child: MM, memory: Memory, tables=None) -> str:
    """The canonical 256-bit digest of a parent mm, a child mm and their memory (hex; see :class:`DigestSums`); with
    the lazy designs' :class:`~gpusim.model.tables.TableObjects` ``tables``, the digest of both."""
    d = DigestSums()
    d.add_mm("parent", parent)
    d.add_mm("child", child)
    d.add_memory(memory)
    if tables is not None:
        d.add_tables(tables)
    return d.hexdigest()


def table_entries(mm: MM, t: int) -> np.ndarray | None:
    """The 512 entries of table ``t`` of ``mm``, or None when it has no PTE table there."""
    i = int(np.searchsorted(mm.table_index, t))
    if i < mm.nr_tables and int(mm.table_index[i]) == t:
        return mm.pte[i]
    return None


def ptes_at(mm: MM, addr: np.ndarray) -> np.ndarray:
    """The entries at the addresses ``addr`` (i64 array; 0 where no table exists): u64, same shape."""
    addr = np.asarray(addr, np.int64)
    t, i = np.divmod(addr, PTRS_PER_TABLE)
    k = np.searchsorted(mm.table_index, t)
    ok = k < mm.nr_tables
    ok[ok] = mm.table_index[k[ok]] == t[ok]
    out = np.zeros(addr.shape, np.uint64)
    out[ok] = mm.pte[k[ok], i[ok]]
    return out


def pte_at(mm: MM, addr: int) -> int:
    """The entry at address ``addr`` (0 where no table exists)."""
    row = table_entries(mm, addr // PTRS_PER_TABLE)
    return 0 if row is None else int(row[addr % PTRS_PER_TABLE])
