"""What the oracle and the fast engine share of one fork: the mutable mirrors of the SoA arrays (:class:`Machine`,
:class:`MMState`), the trace the invariant checker reads, the records every engine keeps and the result assembled
from them (:class:`ForkRecords`), the reference's fork context (:class:`ForkContext`), and the two ways a fork stops
early (:class:`Oops`, :class:`CopyFailed`). The reference's state machines (:mod:`gpusim.engines.reference`), the
Python loop (:mod:`gpusim.engines.pyloop`) and the fast engine (:mod:`gpusim.engines.fast`) build on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpusim.kernels.fields import MEMORY_FIELDS
from gpusim.kernels.flags import PTRS_PER_TABLE
from gpusim.kernels.folio import folio_maybe_dma_pinned, is_large_for_pins, pin_refcount_delta
from gpusim.model.oracle import InjectionPlan, LockBreakOracle
from gpusim.model.result import TABLE_EVENTS, ForkResult, TableStats, finish_counts, new_counts, rss_dict
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

    @classmethod
    def over(cls, arrays: dict, next_content: int) -> "Machine":
        """A machine whose arrays are the given containers themselves (the fast engine's growable arrays)."""
        m = cls.__new__(cls)
        for name in MEMORY_FIELDS:
            setattr(m, name, arrays[name])
        m.next_content = next_content
        return m

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
    """One mm as Python containers: VMAs, tables (table -> list of 512 ints), huge PMDs, rss, flags; and for the lazy
    fork designs (spec 12.1) the PMDs with W = 0 and the pending tables. Two mms that share a table object hold the
    same list (:mod:`gpusim.engines.reference.lazy`)."""

    def __init__(self, mm: MM | None = None):
        self.wp: set[int] = set()  # tables whose PMD has W = 0 (spec 12.1: shared, or pending)
        self.pending: set[int] = set()  # async-fork: the parent's tables whose copy for the child is deferred
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


# --- the fork: records, result, context ---------------------------------------------------------------------


class ForkRecords:
    """What every engine keeps of one fork beside its state: the counts, the per-table rows, the trace, the events
    ignored, the tables the Python state machines copied; and the :class:`ForkResult` assembled from them."""

    def __init__(self, space: AddressSpace, variant: str, plan: InjectionPlan):
        self.space, self.variant, self.plan = space, variant, plan
        self.counts = new_counts()
        self.table_rows: list = []  # (table, passes, TABLE_EVENTS counts) per copy_pte_range call
        self.trace = Trace()
        self.ignored: list[str] = []
        self.python_tables: set[int] = set()  # tables copied by the Python state machines

    def share_records(self, other: "ForkRecords") -> None:
        """Keep ``other``'s records (the same objects) instead of this one's own."""
        for name in ("counts", "table_rows", "trace", "ignored", "python_tables"):
            setattr(self, name, getattr(other, name))

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


class ForkContext(ForkRecords):
    """Everything one fork shares across the calls of the reference's state machines: the records, the state
    mirrors, the oracle and the injections."""

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
        super().__init__(space, variant, plan)
        self.v = get_variant(variant)
        self.large_pin_order = self.v.large_pin_order
        self.m = machine or Machine(space.memory)
        self.parent = parent or MMState(space.mm)
        self.child = child or MMState()
        self.count_upper = True  # the fast engines count upper-level tables themselves
        self.oracle, self.fork_seq = oracle, fork_seq
        self.upper = set()
        self.event_hook = None  # called with a table before a window event changes an entry there (spec 12.3)

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

    def note_child_table(self, t: int) -> None:
        """Count the child's upper-level tables (PMD table per 512 tables, PUD table per 512 of those)."""
        if not self.count_upper:
            return
        for key in (("pmd", t >> 9), ("pud", t >> 18)):
            if key not in self.upper:
                self.upper.add(key)
                self.counts["table.upper_alloc"] += 1


class CopyFailed(Exception):
    """``copy_page_range`` returned an error (ENOMEM; a poisoned page's -EHWPOISON is reported as ENOMEM): the
    fork stops at this call and the caller tears the child down."""

    def __init__(self, c):
        super().__init__(f"copy_page_range failed at {c.call_start}")
        self.c = c


def fork_stopped(fc: ForkRecords, stop: Exception) -> tuple[str, dict | None, dict | None]:
    """(outcome, oops, enomem) of a fork that :class:`CopyFailed` or :class:`Oops` stopped."""
    if isinstance(stop, CopyFailed):
        point, n = stop.c.last_failed or ("unknown", 0)
        return "enomem", None, {"call_start": stop.c.call_start, "point": point, "occurrence": n}
    cs = fc.trace.calls[-1].call_start if fc.trace.calls else -1
    return "oops", {"function": stop.function, "addr": stop.addr, "reason": stop.reason, "call_start": cs}, None


def table_stats_of(rows: list) -> TableStats:
    """:class:`TableStats` from ``(table, passes, events)`` rows (several calls of one table are summed)."""
    acc: dict[int, list] = {}
    for t, p, ev in rows:
        if t in acc:
            acc[t][0] += p
            acc[t][1] = [a + b for a, b in zip(acc[t][1], ev)]
        else:
            acc[t] = [p, list(ev)]
    keys = sorted(acc)
    return TableStats(
        np.array(keys, np.int64),
        np.array([acc[k][0] for k in keys], np.int64),
        np.array([acc[k][1] for k in keys], np.int64).reshape(len(keys), len(TABLE_EVENTS)),
    )
