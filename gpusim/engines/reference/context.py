"""The reference engine's state and records: the mutable mirrors of the SoA arrays (:class:`Machine`,
:class:`MMState`), the trace the invariant checker reads, the fork's and the call's contexts, and the two ways a
fork stops early (:class:`Oops`, :class:`CopyFailed`). The Python loop and the fast engine build on the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpusim.kernels.fields import MEMORY_FIELDS
from gpusim.kernels.flags import NULL_ENTRY, PTRS_PER_TABLE, is_cow_mapping
from gpusim.kernels.folio import folio_maybe_dma_pinned, is_large_for_pins, pin_refcount_delta
from gpusim.model.oracle import InjectionPlan, LockBreakOracle
from gpusim.model.result import ForkResult, TableStats, finish_counts, new_counts, rss_dict
from gpusim.model.state import MM, AddressSpace, Memory
from gpusim.model.variants import get_variant


class Oops(Exception):
    """A state in which the real kernel would crash; caught by :func:`dup_mmap` and reported as the outcome."""

    def __init__(self, function: str, addr: int, reason: str):
        super().__init__(f"{function}:{addr} {reason}")
        self.function, self.addr, self.reason = function, addr, reason


# --- trace -----------------------------------------------------------------------------------------------------


@dataclass
class PassRecord:
    start: int
    handled: list = field(default_factory=list)  # (addr, how, n): "none" "share" "special" "swap" ...
    end: int = -1  # cursor when the pass ended
    reason: str | None = None  # "LB" "SC" "EC" None (range end) "ENOMEM" "HWPOISON"


@dataclass
class CallRecord:
    call_start: int
    end: int
    vma: int
    passes: list = field(default_factory=list)
    checks: list = field(default_factory=list)  # (k, answer, cursor)
    windows: list = field(default_factory=list)  # (reason, n)
    installs: list = field(default_factory=list)  # (addr, new_pfn, src_pfn, seq)
    duplicates: list = field(default_factory=list)  # page_duplicate copies: (new_pfn, src_pfn, seq)
    break_cow: int = 0  # copy_one_pte returned BREAK_COW
    pd_calls: int = 0  # page_duplicate calls
    sc_breaks: int = 0
    kernel_calls: int = 0
    result: int = 0
    owned_at_return: list = field(default_factory=list)  # N3 violations


@dataclass
class EventRecord:
    seq: int
    call_start: int
    window: str
    name: str
    addr: int
    applied: bool
    folio: int = -1
    pfn: int = -1
    slot: int = -1
    new_slot: int = -1
    ref: int = 0  # deltas on the parent's folio / page / slot / rss caused by the event
    map: int = 0
    count: int = 0
    rss: tuple = (0, 0, 0, 0)
    content: int = -1  # new content id (write)
    pins: int = 0  # true_pins delta


@dataclass
class Trace:
    calls: list = field(default_factory=list)
    events: list = field(default_factory=list)
    splits: list = field(default_factory=list)  # (table, folio)
    pmd_shares: list = field(default_factory=list)  # (table, folio)
    # early copies made by the compiled slow path (gpusim.kernels.slowpath), which keeps no per-call records: arrays
    # of rows (VMA flags, addr, new pfn, source pfn), and of page_duplicate's copies (new pfn, source pfn)
    compiled_installs: list = field(default_factory=list)
    compiled_duplicates: list = field(default_factory=list)
    seq: int = 0

    def tick(self) -> int:
        self.seq += 1
        return self.seq


# --- mutable mirrors of the state ------------------------------------------------------------------------------


class Machine:
    """Folios, pages and slots as growable integer sequences (early copies, reclaim slots).

    ``store`` turns each array of :class:`Memory` into the container used: Python lists for the reference engine
    (fast element access); the fast engine's Python loop passes a wrapper that works in place on their numpy arrays.
    """

    def __init__(self, m: Memory, store=None):
        store = store or (lambda a: a.tolist())
        for name in MEMORY_FIELDS:
            setattr(self, name, store(getattr(m, name)))
        self.next_content = m.next_content

    def new_content(self) -> int:
        c = self.next_content
        self.next_content += 1
        return c

    def alloc_folio(self) -> int:
        """A new order-0 folio, refcount 1, pincount 0, not yet anon (spec 1.4). Returns its pfn."""
        f, pfn = len(self.folio_order), len(self.page_folio)
        for arr, v in (
            (self.folio_order, 0),
            (self.folio_refcount, 1),
            (self.folio_pincount, 0),
            (self.folio_true_pins, 0),
            (self.folio_pmd_mapcount, 0),
            (self.folio_flags, 0),
            (self.folio_first_pfn, pfn),
        ):
            arr.append(v)
        for arr, v in ((self.page_folio, f), (self.page_mapcount, 0), (self.page_flags, 0), (self.page_content, 0)):
            arr.append(v)
        return pfn

    def alloc_slot(self, content: int) -> int:
        self.swap_count.append(1)
        self.swap_levels.append(0)
        self.swap_content.append(content)
        return len(self.swap_count) - 1

    def to_memory(self) -> Memory:
        kw = {name: np.asarray(getattr(self, name), dtype=dtype) for name, (dtype, _) in MEMORY_FIELDS.items()}
        return Memory(**kw, next_content=self.next_content)


@dataclass
class VmaView:
    index: int
    start: int
    end: int
    flags: int
    backing: int
    anon_vma: bool


class MMState:
    """One mm as Python containers: VMAs, tables (table -> list of 512 ints), huge PMDs, rss, flags."""

    def __init__(self, mm: MM | None = None):
        if mm is None:
            self.vmas, self.tables, self.pmds = [], {}, {}
            self.rss, self.has_pinned, self.on_swapoff_list = [0, 0, 0, 0], False, False
            return
        self.vmas = [
            VmaView(i, s, e, f, b, a)
            for i, (s, e, f, b, a) in enumerate(
                zip(
                    mm.vma_start.tolist(),
                    mm.vma_end.tolist(),
                    mm.vma_flags.tolist(),
                    mm.vma_backing.tolist(),
                    mm.vma_anon_vma.tolist(),
                )
            )
        ]
        self.tables = {t: row.tolist() for t, row in zip(mm.table_index.tolist(), mm.pte)}
        self.pmds = dict(zip(mm.pmd_index.tolist(), mm.pmd.tolist()))
        self.rss = mm.rss.tolist()
        self.has_pinned, self.on_swapoff_list = bool(mm.has_pinned), bool(mm.on_swapoff_list)

    def entry(self, addr: int) -> int:
        row = self.tables.get(addr // PTRS_PER_TABLE)
        return 0 if row is None else row[addr % PTRS_PER_TABLE]

    def to_mm(self) -> MM:
        tables = sorted(self.tables)
        pmds = sorted(self.pmds)
        return MM(
            vma_start=np.array([v.start for v in self.vmas], dtype=np.int64),
            vma_end=np.array([v.end for v in self.vmas], dtype=np.int64),
            vma_flags=np.array([v.flags for v in self.vmas], dtype=np.uint64),
            vma_backing=np.array([v.backing for v in self.vmas], dtype=np.uint8),
            vma_anon_vma=np.array([v.anon_vma for v in self.vmas], dtype=np.bool_),
            table_index=np.array(tables, dtype=np.int64),
            pte=np.array([self.tables[t] for t in tables], dtype=np.uint64).reshape(len(tables), PTRS_PER_TABLE),
            pmd_index=np.array(pmds, dtype=np.int64),
            pmd=np.array([self.pmds[t] for t in pmds], dtype=np.uint64),
            rss=np.array(self.rss, dtype=np.int64),
            has_pinned=self.has_pinned,
            on_swapoff_list=self.on_swapoff_list,
        )


# --- the fork and the per-call context ------------------------------------------------------------------------


class ForkContext:
    """Everything one fork shares across its calls."""

    def __init__(
        self,
        space: AddressSpace,
        variant: str,
        oracle: LockBreakOracle,
        plan: InjectionPlan,
        fork_seq: int,
        machine: Machine | None = None,
        parent: MMState | None = None,
        child: MMState | None = None,
    ):
        self.variant = variant
        self.space = space
        self.v = get_variant(variant)
        self.large_pin_order = self.v.large_pin_order
        self.m = machine or Machine(space.memory)
        self.parent = parent or MMState(space.mm)
        self.child = child or MMState()
        self.count_upper = True  # the fast engines count upper-level tables themselves
        self.oracle, self.plan, self.fork_seq = oracle, plan, fork_seq
        self.counts = new_counts()
        self.table_rows: list = []  # (table, passes, TABLE_EVENTS counts) per copy_pte_range call
        self.trace = Trace()
        self.upper = set()
        self.ignored: list[str] = []
        self.python_tables: set[int] = set()  # tables copied here, by the Python state machines

    # folio helpers shared by every variant
    def maybe_pinned(self, f: int) -> bool:
        """``page_maybe_dma_pinned`` / ``folio_maybe_dma_pinned`` (spec 1.6)."""
        m = self.m
        return folio_maybe_dma_pinned(m.folio_order[f], m.folio_refcount[f], m.folio_pincount[f], self.large_pin_order)

    def add_pin(self, mm: MMState, f: int, sign: int = 1) -> None:
        """``add_pin`` (sign 1) or its inverse, ``unpin`` (sign -1)."""
        m = self.m
        m.folio_refcount[f] += sign * pin_refcount_delta(m.folio_order[f], self.large_pin_order)
        if is_large_for_pins(m.folio_order[f], self.large_pin_order):
            m.folio_pincount[f] += sign
        m.folio_true_pins[f] += sign
        if sign > 0:
            mm.has_pinned = True

    def result(
        self,
        stopped: tuple,
        parent: AddressSpace,
        child: MM,
        child_rss,
        after_teardown,
        wall_s: float,
        backend: str,
        table_stats: TableStats,
        trace_complete: bool = True,
    ) -> ForkResult:
        """The :class:`ForkResult` of this fork (every engine assembles it here): ``stopped`` is (outcome, oops,
        enomem), ``parent`` and ``child`` the final states, ``child_rss`` the child's counters when the fork stopped,
        ``after_teardown`` those after an ENOMEM teardown, the counts are :attr:`counts`."""
        outcome, oops, enomem = stopped
        return ForkResult(
            outcome=outcome,
            variant=self.variant,
            backend=backend,
            parent=parent,
            child=child,
            counts=finish_counts(self.counts),
            child_rss=rss_dict(child_rss),
            child_rss_after_teardown=after_teardown,
            oops=oops,
            enomem=enomem,
            unfired=self.plan.unfired(),
            ignored_events=list(self.ignored),
            engine_wall_s=wall_s,
            nr_ptes=self.space.nr_ptes,
            trace=self.trace,
            trace_complete=trace_complete,
            table_stats=table_stats,
            python_tables=len(self.python_tables),
        )

    def note_child_table(self, t: int) -> None:
        """Count the child's upper-level tables (PMD table per 512 tables, PUD table per 512 of those)."""
        if not self.count_upper:
            return
        for key in (("pmd", t >> 9), ("pud", t >> 18)):
            if key not in self.upper:
                self.upper.add(key)
                self.counts["table.upper_alloc"] += 1


class CopyContext:
    """The spec's ``c``: one ``copy_pte_range`` call (or one ``copy_huge_pmd``) and the fork it belongs to."""

    def __init__(self, fc: ForkContext, vma: VmaView, t: int, call_start: int, end: int):
        self.fc, self.m, self.vma, self.t = fc, fc.m, vma, t
        self.variant, self.v = fc.variant, fc.v
        self.call_start, self.end = call_start, end
        self.counts = fc.counts
        self.checks = 0
        self.alloc_n: dict[str, int] = {}
        self.win_n: dict[str, int] = {}
        self.last_failed: tuple[str, int] | None = None
        self.prealloc: int | None = None
        self.d: CopyMmData | None = None  # the xu series' copy_mm_data, visible for the N3 check
        self.cow = is_cow_mapping(vma.flags)
        self.rec = CallRecord(call_start, end, vma.index)
        self.cur: PassRecord | None = None

    # -- entries
    def src(self, a: int) -> int:
        if not self.call_start <= a < self.end:
            raise Oops("copy_pte_range", a, "RANGE_OVERRUN")
        return self.fc.parent.tables[self.t][a - PTRS_PER_TABLE * self.t]

    def set_src(self, a: int, v: int) -> None:
        self.fc.parent.tables[self.t][a - PTRS_PER_TABLE * self.t] = v

    def set_dst(self, a: int, v: int) -> None:
        """``set_pte_at`` on the child."""
        row = self.fc.child.tables[self.t]
        i = a - PTRS_PER_TABLE * self.t
        if row[i] != 0:
            raise Oops("set_pte_at", a, "CHILD_PTE_BUSY")
        row[i] = v

    def handled(self, a: int, how: str, n: int = 1) -> None:
        self.cur.handled.append((a, how, n))

    def end_pass(self, a: int, reason: str | None) -> None:
        self.cur.end, self.cur.reason = a, reason

    # -- folio reference helpers with the underflow guard
    def put_folio(self, f: int, a: int, n: int = 1) -> None:
        if self.m.folio_refcount[f] < n:
            raise Oops("put_page", a, "UNDERFLOW")
        self.m.folio_refcount[f] -= n


# --- 3.2 xu-v1 and 3.3 xu-v1-oleg -------------------------------------------------------------------------------


@dataclass
class CopyMmData:
    """The v1 patch's ``struct copy_mm_data``."""

    entry: int = NULL_ENTRY
    cow_old_page: int | None = None  # pfn; carries one folio reference
    cow_oldpte: int | None = None
    cow_new_page: int | None = None  # pfn


# --- dup_mmap and copy_page_range ------------------------------------------------------------------------------


class CopyFailed(Exception):
    """``copy_page_range`` returned an error (ENOMEM; a poisoned page's -EHWPOISON is reported as ENOMEM): the
    fork stops at this call and the caller tears the child down."""

    def __init__(self, c: CopyContext):
        super().__init__(f"copy_page_range failed at {c.call_start}")
        self.c = c
