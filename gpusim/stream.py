"""Forks of address spaces larger than memory: a generated space forked chunk by chunk.

:func:`fork_streamed` builds a :class:`gpusim.inputs.regions.RegionSpace` one chunk of whole page tables at a time,
forks each chunk with :func:`gpusim.api.fork` (checking its invariants), folds what the fork gives into the result of
the whole fork, and drops the chunk; memory holds one chunk's state, whatever the size of the space.

Why a chunk's fork is a piece of the whole fork: every folio, page and swap slot a generated space holds is mapped
by one table, and ``copy_pte_range`` of one table reads and writes only what that table maps, so the tables of a
chunk see exactly what they see in the whole fork. The pieces are put together as follows:

* counts are sums, except those made once per fork or per VMA (``fork.base``, ``fork.mm``, ``vma.*``,
  ``hugetlb_skipped``: every chunk holds every VMA, so they come from one chunk) and ``table.upper_alloc`` (the
  child's PMD and PUD pages: distinct over the whole child, so a page two chunks share counts once);
* rss counters are sums; per-table statistics keep one row per distinct (passes, events) of the tables, which is
  all the cost model reads from them (the longest lock hold);
* the digest (:class:`gpusim.model.state.DigestSums`) takes each chunk's rows at their places in the whole state: pfns,
  folio numbers and slot numbers moved from the chunk's numbering to the whole space's, the pages and folios a
  fork adds (early copies) after the whole space's, as the whole fork numbers them;
* a fork that stops (an oops) stops the stream: later chunks are hashed as built, unforked, as the whole fork
  leaves them. An ENOMEM would tear down the whole child, which earlier chunks no longer hold: it is an error
  here (a generated space has no allocation failure and no poisoned page, so it does not arise).

Not streamed (:func:`streaming_refused` says why; :func:`stream_rows` decides, and refuses up front a fork that
fits neither way): lock-break oracles other than ``never`` and injections (their order spans the whole fork), and a
fork's child as the next fork's input (a chain). :func:`fork_streamed` takes neither an oracle nor injections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from gpusim.api import fork
from gpusim.base import checkargs
from gpusim.base.machine import FORK_COPIES, PAGE_BYTES, PROCESS_BYTES, require_memory, reused_heap
from gpusim.inputs.workloads import fork_memory_bytes, state_bytes_bound
from gpusim.kernels.fields import MEMORY_FIELDS
from gpusim.kernels.flags import PTRS_PER_TABLE, RSS_NAMES
from gpusim.model.plan import VMA_COUNT_NAMES
from gpusim.model.result import ForkResult, InvariantReport, TableStats, finish_counts, new_counts, rss_dict
from gpusim.model.state import MM, AddressSpace, DigestSums, Memory, empty_mm, resident_bytes
from gpusim.model.variants import get_variant

if TYPE_CHECKING:
    from gpusim.inputs.regions import Chunk, RegionSpace

VMA_FIELDS = ("vma_start", "vma_end", "vma_flags", "vma_backing", "vma_anon_vma")
PER_FORK_COUNTS = ("fork.base", "fork.mm", "table.upper_alloc", *VMA_COUNT_NAMES)
# Generated spaces with more state than this are streamed (a whole fork holds about FORK_COPIES of its state).
STREAM_ABOVE_BYTES = 512 << 20
# State bytes of one chunk by default (about a million PTEs): a streamed fork holds about FORK_COPIES of it at its
# peak. Measured on a 2-vCPU VM (128 GiB dense, check on): 142-172 ns/PTE for chunks of 1-2 K tables, 230 for 16 K
# (every array of a chunk that large is fresh memory, faulted in again chunk after chunk).
CHUNK_STATE_BYTES = 48 << 20


class StreamError(ValueError):
    """A fork that cannot be streamed."""


def default_chunk_rows() -> int:
    """Tables per chunk: :data:`CHUNK_STATE_BYTES` of state."""
    return max(1, CHUNK_STATE_BYTES // (PTRS_PER_TABLE * PAGE_BYTES))


# The plan of a generated space (gpusim.inputs.regions: per-table counts and prefix sums), bytes per table, bounded
# above.
PLAN_BYTES_PER_TABLE = 96


def stream_memory_bytes(workload, chunk_rows: int) -> int:
    """About the most memory a streamed fork of a workload spec holds at once: the process, the plan, and
    :data:`~gpusim.inputs.workloads.FORK_COPIES` of a chunk's state."""
    tables = state_bytes_bound(workload) // (PTRS_PER_TABLE * PAGE_BYTES) + 1
    return PROCESS_BYTES + PLAN_BYTES_PER_TABLE * tables + FORK_COPIES * chunk_rows * PTRS_PER_TABLE * PAGE_BYTES


def streaming_refused(oracle=None, inject=None, chained: bool = False) -> str | None:
    """Why a fork with these options cannot be streamed (None: it can)."""
    if (oracle or "never") != "never":
        return f"the lock-break oracle '{oracle}' draws in the order of the whole fork"
    if inject:
        return "injections act on the whole fork"
    if chained:
        return "each fork of a chain takes the whole child of the fork before"
    return None


def stream_rows(workload, what: str, oracle=None, inject=None, chained: bool = False) -> int | None:
    """How a fork of a workload spec runs: in chunks of the returned number of tables when its state is larger
    than :data:`STREAM_ABOVE_BYTES` and it can be streamed, else whole (None). Raises
    :class:`~gpusim.base.machine.NotEnoughMemory` up front, naming the memory it needs, when it fits neither way."""
    bound = state_bytes_bound(workload)
    if bound is None or bound <= STREAM_ABOVE_BYTES:
        require_memory(fork_memory_bytes(workload), what)
        return None
    reason = streaming_refused(oracle, inject, chained)
    if reason is not None:
        require_memory(fork_memory_bytes(workload), f"{what} (not streamed: {reason})")
        return None
    rows = default_chunk_rows()
    require_memory(stream_memory_bytes(workload, rows), f"{what} (streamed)")
    return rows


@dataclasses.dataclass
class StreamedResult(ForkResult):
    """The result of a streamed fork: a :class:`~gpusim.model.result.ForkResult` without the final states (``parent``
    and ``child`` are None; they were never held whole), with ``chunks`` forked and the largest chunk's resident
    bytes."""

    chunks: int = 0
    chunk_rows: int = 0
    resident_bytes_max: int = 0
    page_tables: tuple = (0, 0)  # :meth:`page_table_bytes`, summed over the chunks

    def page_table_bytes(self) -> tuple[int, int]:
        return self.page_tables

    def bytes_per_pte(self) -> float | None:
        """Resident bytes of the largest chunk's final states per simulated PTE of the whole space."""
        return self.resident_bytes_max / self.nr_ptes if self.nr_ptes else None

    def as_dict(self) -> dict:
        return {**super().as_dict(), "chunks": self.chunks, "chunk_rows": self.chunk_rows}


class ChunkDigest:
    """The digest of a streamed fork's final state, fed chunk by chunk (see the module docstring)."""

    def __init__(self, space: RegionSpace):
        self.space = space
        self.d = DigestSums()
        self.new_pages = self.new_folios = 0  # pages and folios the forks of earlier chunks added
        self.objects = 0  # table objects of earlier chunks (a lazy design's)
        self.rss = {"parent": np.zeros(4, np.int64), "child": np.zeros(4, np.int64)}
        self.swapoff = {"parent": False, "child": False}  # on_swapoff_list: set once any chunk's mm has it

    def add(self, ch: Chunk, parent: MM, child: MM | None, memory: Memory, tables=None) -> None:
        """A chunk's final state: its parent mm, its child (None: not forked), its memory and (a lazy design's)
        its table objects."""
        if tables is not None:
            self.d.add_tables(tables, self.objects)
            self.objects += int(tables.share.size)
        rs, built = self.space, ch.space.memory
        npg, nf = built.nr_pages, built.nr_folios
        if memory.nr_slots != built.nr_slots:
            raise StreamError("a fork added swap slots: the streamed digest does not place them")
        page_above = rs.nr_pages + self.new_pages - npg
        folio_above = rs.nr_folios + self.new_folios - nf
        shift = ("entries", ch.page_base, ch.slot_base, npg, page_above)
        for who, mm in (("parent", parent), ("child", child)):
            if mm is not None:
                self.add_tables(who, mm, shift)
        moved = {
            "folio_first_pfn": ("rows", npg, ch.page_base, page_above),
            "page_folio": ("rows", nf, ch.folio_base, folio_above),
        }
        for name in MEMORY_FIELDS:
            a, kind = getattr(memory, name), name.split("_")[0]
            if kind == "swap":
                self.d.add(f"memory.{name}", a, ch.slot_base)
                continue
            old, base, whole_rows, new_before = (
                (nf, ch.folio_base, rs.nr_folios, self.new_folios)
                if kind == "folio"
                else (npg, ch.page_base, rs.nr_pages, self.new_pages)
            )
            self.d.add(f"memory.{name}", a[:old], base, moved.get(name))
            self.d.add(f"memory.{name}", a[old:], whole_rows + new_before, moved.get(name))
        self.new_pages += memory.nr_pages - npg
        self.new_folios += memory.nr_folios - nf

    def add_tables(self, who: str, mm: MM, move: tuple) -> None:
        """A chunk's tables and huge PMDs of ``who``, after those of earlier chunks, their pfns and slots moved."""
        d = self.d
        for name, entries in (("table_index", False), ("pte", True), ("pmd_index", False), ("pmd", True)):
            field = f"{who}.{name}"
            d.add(field, getattr(mm, name), d.sums[field][0] if field in d.sums else 0, move if entries else None)
        self.rss[who] += mm.rss
        self.swapoff[who] |= bool(mm.on_swapoff_list)

    def finish(self, parent: MM, child: MM, next_content: int) -> str:
        """The digest, given the VMAs and flags of the parent and child (the same in every chunk; the child's from
        the last chunk forked) and the memory's ``next_content``."""
        for who, mm in (("parent", parent), ("child", child)):
            if mm is None:
                continue
            for name in VMA_FIELDS:
                self.d.add(f"{who}.{name}", getattr(mm, name))
            self.d.add(f"{who}.rss", self.rss[who])
            self.d.scalars[f"{who}.has_pinned"] = int(mm.has_pinned)
            self.d.scalars[f"{who}.on_swapoff_list"] = int(self.swapoff[who])
        self.d.scalars["memory.next_content"] = int(next_content)
        return self.d.hexdigest()


@dataclasses.dataclass(frozen=True)
class Last:
    """What a streamed fork keeps of the last chunk it forked: its outcome and the parent's and child's VMAs and
    flags (no tables: a chunk's arrays are dropped as soon as the next one is built)."""

    outcome: str
    backend: str
    oops: dict | None
    parent: MM
    child: MM
    next_content: int

    @classmethod
    def of(cls, r: ForkResult) -> "Last":
        def vmas(mm: MM) -> MM:
            return empty_mm(**{n: getattr(mm, n) for n in VMA_FIELDS}, rss=mm.rss, has_pinned=mm.has_pinned)

        return cls(r.outcome, r.backend, r.oops, vmas(r.parent.mm), vmas(r.child), r.memory.next_content)


class Totals:
    """What a streamed fork accumulates besides the digest: counts, rss, table statistics, invariants."""

    def __init__(self):
        self.counts = new_counts()
        self.per_fork: dict[str, int] = {}
        self.upper_last = (None, None)  # the last PMD and PUD page of the child so far
        self.child_rss = np.zeros(4, np.int64)
        self.stats: list[TableStats] = []
        self.violations: list[str] = []
        self.checked = True
        self.engine_wall_s = 0.0
        self.python_tables = 0
        self.resident = 0
        self.page_tables = np.zeros(2, np.int64)

    def add(self, ch: Chunk, r: ForkResult) -> None:
        for name, v in r.counts.items():
            if name in PER_FORK_COUNTS:
                self.per_fork[name] = v
            else:
                self.counts[name] += v
        pending = np.zeros(0, np.int64) if r.tables is None else r.tables.pending  # async-fork: upper levels made
        self.add_upper(np.union1d(np.union1d(r.child.table_index, r.child.pmd_index), pending))
        self.child_rss += [r.child_rss[n] for n in RSS_NAMES]
        self.stats.append(distinct_rows(r.table_stats))
        if len(self.stats) > 64:
            self.stats = [distinct_rows(TableStats.concat(self.stats))]
        self.checked &= r.invariants.checked
        where = f"chunk of tables {ch.lo}..{ch.hi - 1} (pfns from {ch.page_base}, folios from {ch.folio_base})"
        self.violations += [f"{where}: {v}" for v in r.invariants.violations]
        self.engine_wall_s += r.engine_wall_s
        self.python_tables += r.python_tables
        self.resident = max(self.resident, resident_bytes(r.parent.mm, r.child, r.parent.memory))
        self.page_tables += r.page_table_bytes()

    def add_upper(self, tables: np.ndarray) -> None:
        """``table.upper_alloc`` of the child's tables of one chunk (sorted): its distinct PMD and PUD pages, but
        the first when the chunk before ended in it."""
        last = []
        for level, prev in zip((9, 18), self.upper_last):
            keys = np.unique(tables >> level)
            self.counts["table.upper_alloc"] += len(keys) - int(len(keys) > 0 and keys[0] == prev)
            last.append(int(keys[-1]) if len(keys) else prev)
        self.upper_last = tuple(last)

    def counts_dict(self) -> dict[str, int]:
        counts = dict(self.counts)
        for name, v in self.per_fork.items():
            if name != "table.upper_alloc":
                counts[name] = v
        return finish_counts(counts)


def distinct_rows(stats: TableStats) -> TableStats:
    """One row per distinct (passes, events) of ``stats``, numbered by its first table."""
    if len(stats.table) == 0:
        return stats
    rows = np.concatenate([stats.passes[:, None], stats.events], axis=1)
    if (rows == rows[0]).all():  # one kind of table (a dense chunk's): without np.unique's sort of the rows
        first = np.zeros(1, np.int64)
    else:
        _, first = np.unique(rows, axis=0, return_index=True)
    return TableStats(stats.table[first], stats.passes[first], stats.events[first])


def streamed_args(space, variant, chunk_rows, validate, progress) -> tuple[str, int, bool]:
    """:func:`fork_streamed`'s arguments checked (a TypeError or ValueError naming a wrong one): (variant, tables
    per chunk, validate)."""
    from gpusim.inputs.regions import RegionSpace  # the generator, loaded with the first streamed fork

    checkargs.instance("space", space, RegionSpace, "from gpusim.workload(..., streamed=True)")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress: a function of (tables done, tables), not {type(progress).__name__}")
    return (
        space.variant if variant is None else get_variant(variant).name,
        checkargs.optional_integer("chunk_rows", chunk_rows, 1) or default_chunk_rows(),
        checkargs.boolean("validate", validate),
    )


def fork_streamed(
    space: RegionSpace,
    variant: str | None = None,
    backend: str = "auto",
    check: bool = True,
    chunk_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    validate: bool = False,
) -> StreamedResult:
    """Fork ``space`` chunk by chunk (``chunk_rows`` tables each; default :func:`default_chunk_rows`) and return
    what the fork of the whole space returns, less its final states. ``progress(tables_done, tables)`` is called
    after each chunk. The generator's chunks are valid by construction (the tests validate them) and go to the
    fork unchecked, unless ``validate``. ``variant`` defaults to the one ``space`` was generated for
    (``gpusim.workload(..., streamed=True)``)."""
    variant, chunk_rows, validate = streamed_args(space, variant, chunk_rows, validate, progress)
    with reused_heap():  # every chunk in the memory of the chunk before
        return fork_chunks(space, variant, backend, check, chunk_rows, progress, validate)


def fork_chunks(space, variant: str, backend: str, check: bool, chunk_rows: int, progress, validate: bool):
    """:func:`fork_streamed`'s loop over the chunks, its arguments checked."""
    digest, totals = ChunkDigest(space), Totals()
    last = stopped = None
    nchunks = 0
    for lo in range(0, max(1, space.nr_rows), chunk_rows):  # one chunk alive at a time: built after the last is gone
        ch = space.chunk(lo, min(space.nr_rows, lo + chunk_rows))
        if stopped:  # after an oops: the rest as built
            digest.add(ch, ch.space.mm, None, ch.space.memory)
        else:
            # the chunk is the fork's: without the check a compiled fork works on its arrays in place
            given = ch.space if validate else AddressSpace.handed_over(ch.space.mm, ch.space.memory)
            r = fork(given, variant, backend, check=check)
            del given
            if r.outcome == "enomem":
                raise StreamError(f"a chunk's fork failed with ENOMEM ({r.enomem}): a streamed fork cannot tear down")
            totals.add(ch, r)
            digest.add(ch, r.parent.mm, r.child, r.memory, r.tables)
            last, nchunks, stopped = Last.of(r), nchunks + 1, r.outcome != "ok"
            del r
        if progress:
            progress(ch.hi, space.nr_rows)
        del ch
    stats = TableStats.concat(totals.stats)
    return StreamedResult(
        outcome=last.outcome,
        variant=variant,
        backend=last.backend,
        parent=None,
        child=None,
        counts=totals.counts_dict(),
        child_rss=rss_dict(totals.child_rss),
        oops=last.oops,
        invariants=InvariantReport(not totals.violations, tuple(totals.violations), check and totals.checked),
        digest_hex=digest.finish(last.parent, last.child, last.next_content),
        engine_wall_s=totals.engine_wall_s,
        nr_ptes=space.nr_ptes,
        trace_complete=False,
        table_stats=distinct_rows(stats) if len(stats.table) else stats,
        python_tables=totals.python_tables,
        chunks=nchunks,
        chunk_rows=chunk_rows,
        resident_bytes_max=totals.resident,
        page_tables=tuple(totals.page_tables.tolist()),
    )
