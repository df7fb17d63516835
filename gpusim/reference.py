"""The reference fork engine: the spec's state machines in plain Python (spec sections 2, 3, 5 and 10).

This is the oracle every fast engine is compared with. It walks each table sequentially exactly like the kernel:
``dup_mmap`` over the VMAs, ``copy_page_range`` over the tables of a VMA (``copy_huge_pmd`` for PMD-mapped THPs),
and ``copy_pte_range`` as the per-variant state machine (passes, progress counter, lock breaks, restarts, slow paths,
windows with injected events). Functions carry the kernel's names. It is slow and obvious on purpose.

Working state is a mutable mirror of the SoA arrays as Python lists (:class:`Machine`, :class:`MMState`); the
input arrays are never written. New pages (early copies) are appended in the order they are allocated, so the
numbering of frames is deterministic. A simulated oops is an internal exception turned into an outcome; it never
leaves :func:`dup_mmap`.

Alongside the state the engine keeps a :class:`Trace` (handled indices per pass, the check log, windows, installs,
copy moments, applied events) from which :mod:`gpusim.invariants` checks spec section 6.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from gpusim.kernels import pte as P
from gpusim.kernels.fields import MEMORY_FIELDS
from gpusim.kernels.flags import (
    BREAK_AT,
    EAGAIN,
    EHWPOISON,
    EIO,
    ENOMEM,
    FOLIO_ANON,
    FOLIO_DEVICE_PRIVATE,
    FOLIO_FREED,
    FOLIO_SWAPBACKED,
    MM_ANONPAGES,
    MM_SWAPENTS,
    NULL_ENTRY,
    PAGE_ANON_EXCLUSIVE,
    PAGE_HWPOISON,
    PTRS_PER_TABLE,
    SWAP_MAP_MAX,
    VM_SHARED,
    VM_WRITE,
    is_cow_mapping,
    mm_counter,
    swap_cap,
)
from gpusim.kernels.folio import folio_maybe_dma_pinned, is_large_for_pins, pin_refcount_delta
from gpusim.oracle import InjectionPlan, LockBreakOracle
from gpusim.plan import VMA_COUNT_NAMES, ForkPlan, plan_fork
from gpusim.result import TABLE_EVENTS, ForkResult, TableStats, finish_counts, new_counts, rss_dict
from gpusim.state import MM, AddressSpace, Memory
from gpusim.variants import LINUX_5_8, LINUX_5_10, LINUX_6_18, XU_V1, XU_V1_OLEG, get_variant

# copy_one_pte results of the xu series (COPY_MM_*)
DONE, SWAP_CONT, BREAK_COW = "DONE", "SWAP_CONT", "BREAK_COW"


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
    (fast element access); the fast engines' host loop passes a wrapper that works in place on their numpy arrays.
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
            host_tables=len(self.python_tables),
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


# --- spec 2.1: pass, progress and check ------------------------------------------------------------------------


def allocate(c: CopyContext, point: str) -> bool:
    """One allocation attempt at ``point``; consults the injection plan (spec 5.1)."""
    n = c.alloc_n.get(point, 0) + 1
    c.alloc_n[point] = n
    if c.fc.plan.alloc_fails(c.fc.fork_seq, c.call_start, point, n):
        c.last_failed = (point, n)
        return False
    return True


def begin_pass(c: CopyContext, a: int) -> bool:
    """Map or allocate the child table and take both locks."""
    if c.t not in c.fc.child.tables:
        if not allocate(c, "ptetable"):
            return False
        c.fc.child.tables[c.t] = [0] * PTRS_PER_TABLE
        c.counts["table.alloc"] += 1
        c.fc.note_child_table(c.t)
    if a == c.end:
        raise Oops("copy_pte_range", a, "RANGE_OVERRUN")
    c.counts["pass"] += 1
    c.cur = PassRecord(a)
    c.rec.passes.append(c.cur)
    return True


def check(c: CopyContext, a: int) -> bool:
    """The lock-break test; the caller has just reset progress to 0."""
    k = c.checks
    c.checks += 1
    brk = c.fc.oracle(c.fc.fork_seq, c.call_start, k)
    c.rec.checks.append((k, brk, a))
    c.counts["check"] += 1
    if brk:
        c.counts["lock_breaks"] += 1
    return brk


def window(c: CopyContext, reason: str) -> None:
    """The interval between two passes: count the restart and apply the events injected there (spec 5.2)."""
    c.counts["restart." + reason.lower()] += 1
    n = c.win_n[reason] = c.win_n.get(reason, 0) + 1
    n_any = c.win_n["ANY"] = c.win_n.get("ANY", 0) + 1
    c.rec.windows.append((reason, n))
    for _, ev in c.fc.plan.window_events(c.call_start, reason, n, n_any):
        apply_event(c.fc, c.call_start, reason, ev.name, ev.addr)


# --- spec 2.2: shared operations -------------------------------------------------------------------------------


def share_present(c: CopyContext, a: int, n: int = 1) -> None:
    """Copy ``n`` present PTEs by reference (``n > 1`` only for a linux-6.18 batch)."""
    m = c.m
    first = c.src(a)
    w_any = any(P.pte_write(c.src(a + j)) for j in range(n))
    child = P.pte_mkold(P.pte_mkwrite(first) if w_any else P.pte_wrprotect(first))
    if c.vma.flags & VM_SHARED:
        child = P.pte_mkclean(child)
    special = P.pte_special(first)
    pfn0 = P.pte_pfn(first)
    if not special:
        f = m.page_folio[pfn0]
        m.folio_refcount[f] += n
        c.fc.child.rss[mm_counter(m.folio_flags[f])] += n
        anon = m.folio_flags[f] & FOLIO_ANON
        for j in range(n):
            m.page_mapcount[pfn0 + j] += 1
            if c.v.anon_exclusive and anon and m.page_flags[pfn0 + j] & PAGE_ANON_EXCLUSIVE:
                m.page_flags[pfn0 + j] &= ~PAGE_ANON_EXCLUSIVE
                c.counts["pte.excl_clear"] += 1
        c.counts["shared"] += n
        if m.folio_true_pins[f] > 0:
            c.counts["pin_shared"] += n
    else:
        c.counts["pte.special"] += 1
    if c.cow and w_any:
        for j in range(n):
            c.set_src(a + j, P.pte_wrprotect(c.src(a + j)))
        child = P.pte_wrprotect(child)
        c.counts["pte.wrprotect"] += n
    for j in range(n):
        c.set_dst(a + j, child if special else P.pte_set_pfn(child, pfn0 + j))


def install_copy(c: CopyContext, a: int, q: int, src_pfn: int) -> None:
    """Map an early copy ``q`` (a pfn; content already set) into the child."""
    m = c.m
    f = m.page_folio[q]
    m.folio_flags[f] |= FOLIO_ANON | FOLIO_SWAPBACKED
    m.page_mapcount[q] = 1
    m.page_flags[q] = PAGE_ANON_EXCLUSIVE if c.v.anon_exclusive else 0
    c.set_dst(a, P.mk_pte(q, c.vma.flags & VM_WRITE, True, True, False))
    c.fc.child.rss[MM_ANONPAGES] += 1
    c.counts["copy.install"] += 1
    c.rec.installs.append((a, q, src_pfn, c.fc.trace.tick()))
    c.handled(a, "copy")


def copy_nonpresent_pte(c: CopyContext, a: int) -> int | None:
    """Returns None when done, else the slot that needs a swap-count continuation."""
    m, child = c.m, c.fc.child
    e = c.src(a)
    kind = P.pte_kind(e)
    if kind == P.KIND_SWAP:
        slot = P.swp_offset(e)
        if not swap_duplicate(c, slot):
            return slot
        child.on_swapoff_list = True
        if c.v.anon_exclusive and P.pte_swp_exclusive(e):
            c.set_src(a, P.pte_swp_clear_exclusive(e))
        c.set_dst(a, P.pte_swp_clear_exclusive(e))
        child.rss[MM_SWAPENTS] += 1
        c.counts["pte.swap"] += 1
        c.handled(a, "swap")
    elif kind == P.KIND_MIGRATION:  # no reference and no mapcount: the page is under migration
        f = m.page_folio[P.swp_offset(e)]
        child.rss[mm_counter(m.folio_flags[f])] += 1
        if c.cow and (P.is_writable_migration_entry(e) or P.is_readable_exclusive_migration_entry(e)):
            c.set_src(a, P.make_readable_migration_entry(e))  # the parent is downgraded too
        c.set_dst(a, c.src(a))
        c.counts["pte.migration"] += 1
        c.handled(a, "migration")
    elif kind == P.KIND_DEVICE_PRIVATE:
        pfn = P.swp_offset(e)
        f = m.page_folio[pfn]
        m.folio_refcount[f] += 1
        m.page_mapcount[pfn] += 1
        child.rss[mm_counter(m.folio_flags[f])] += 1
        if c.v.anon_exclusive:
            m.page_flags[pfn] &= ~PAGE_ANON_EXCLUSIVE
        if c.cow and P.is_writable_device_private_entry(e):
            c.set_src(a, P.make_readable_device_private_entry(e))
        c.set_dst(a, c.src(a))
        c.counts["pte.devpriv"] += 1
        if m.folio_true_pins[f] > 0:
            c.counts["pin_shared"] += 1
        c.handled(a, "devpriv")
    else:
        raise Oops("copy_nonpresent_pte", a, "BAD_ENTRY")
    return None


def swap_duplicate(c: CopyContext, slot: int) -> bool:
    """Under the locks; may try atomic continuations."""
    m = c.m
    while True:
        if m.swap_count[slot] < swap_cap(m.swap_levels[slot]):
            m.swap_count[slot] += 1
            return True
        if add_swap_count_continuation(c, slot, "swapcont.atomic") < 0:
            return False


def add_swap_count_continuation(c: CopyContext, slot: int, point: str) -> int:
    """``swapcont.atomic`` runs under the locks, ``swapcont.kernel`` in a window."""
    m = c.m
    c.counts[point] += 1
    if point == "swapcont.kernel":
        c.rec.kernel_calls += 1
    ok = allocate(c, point)  # always attempted first, then checked
    if slot == NULL_ENTRY:  # xu-v1 stale call: no swap device resolves it
        c.counts["swapcont.null"] += 1
        return 0
    if m.swap_count[slot] % (SWAP_MAP_MAX + 1) != SWAP_MAP_MAX:
        return 0  # first byte not full
    if not ok:
        return ENOMEM
    if m.swap_count[slot] < swap_cap(m.swap_levels[slot]):
        return 0
    m.swap_levels[slot] += 1  # the page now belongs to the slot
    c.counts["swapcont.attach"] += 1
    return 0


def allocate_page(c: CopyContext) -> int | None:
    """Allocate an early-copy page at the ``copy`` point: a new order-0 folio's pfn, or None."""
    if not allocate(c, "copy"):
        c.counts["copy.alloc_fail"] += 1
        return None
    c.counts["copy.alloc"] += 1
    return c.m.alloc_folio()


def free_unused(c: CopyContext, q: int, a: int) -> None:
    """Free a never-installed early-copy page."""
    f = c.m.page_folio[q]
    if c.m.folio_flags[f] & FOLIO_FREED:
        raise Oops("put_page", a, "UNDERFLOW")
    c.put_folio(f, a)
    c.m.folio_flags[f] |= FOLIO_FREED
    c.counts["copy.free_unused"] += 1


def copy_content(c: CopyContext, q: int, src_pfn: int) -> None:
    """The copy moment: the new page takes the source page's content (``copy_user_highpage``)."""
    c.m.page_content[q] = c.m.page_content[src_pfn]
    c.counts["copy.memcpy"] += 1


# --- 3.1 linux-5.8 ---------------------------------------------------------------------------------------------


def copy_pte_range_linux_5_8(c: CopyContext, a: int, end: int) -> int:
    progress = 0
    pending = None  # progress is not reset per pass; it is 0 there anyway
    while True:
        if not begin_pass(c, a):
            return ENOMEM
        reason = None
        while True:
            if progress >= BREAK_AT:
                progress = 0
                if check(c, a):
                    reason = "LB"
                    break
            e = c.src(a)
            if P.pte_none(e):
                handle_none(c, a)
                progress += 1
            elif not P.pte_present(e):
                pending = copy_nonpresent_pte(c, a)
                if pending is not None:
                    reason = "SC"
                    break
                progress += 8
            else:
                pending = None
                share_one(c, a, e)
                progress += 8
            a += 1
            if a == end:
                break
        c.end_pass(a, reason)
        if reason == "SC":
            c.rec.sc_breaks += 1
        if pending is not None:  # locks dropped; may repeat on a later pass (stale)
            if add_swap_count_continuation(c, pending, "swapcont.kernel") < 0:
                return ENOMEM
            progress = 0
        if a == end:
            return 0
        window(c, reason)


def share_one(c: CopyContext, a: int, e: int) -> None:
    """The single-PTE share path of every variant: ``share_present`` plus its count and trace."""
    share_present(c, a)
    c.counts["pte.share"] += not P.pte_special(e)
    c.handled(a, "special" if P.pte_special(e) else "share")


def handle_none(c: CopyContext, a: int) -> None:
    c.counts["pte.none"] += 1
    c.handled(a, "none")


# --- 3.2 xu-v1 and 3.3 xu-v1-oleg -------------------------------------------------------------------------------


@dataclass
class CopyMmData:
    """The v1 patch's ``struct copy_mm_data``."""

    entry: int = NULL_ENTRY
    cow_old_page: int | None = None  # pfn; carries one folio reference
    cow_oldpte: int | None = None
    cow_new_page: int | None = None  # pfn


def copy_one_pte(c: CopyContext, a: int, d: CopyMmData) -> str:
    """The xu series' per-PTE function (shared by xu-v1 and xu-v1-oleg)."""
    m = c.m
    e = c.src(a)
    if not P.pte_present(e):
        slot = copy_nonpresent_pte(c, a)
        if slot is not None:
            d.entry = slot
            return SWAP_CONT
        return DONE
    if not P.pte_special(e):
        pfn = P.pte_pfn(e)
        f = m.page_folio[pfn]
        m.folio_refcount[f] += 1  # the child's reference is taken first
        if c.fc.parent.has_pinned and c.cow and P.pte_write(e) and c.fc.maybe_pinned(f):
            d.cow_old_page, d.cow_oldpte = pfn, e  # the reference travels with it
            c.rec.break_cow += 1
            return BREAK_COW  # parent and child PTE untouched
        m.folio_refcount[f] -= 1  # handed back; share_present takes it
    share_one(c, a, e)
    return DONE


def page_duplicate(c: CopyContext, a: int, d: CopyMmData) -> int:
    """Runs in the window, no locks: allocate the copy and fill it (the xu copy moment)."""
    c.counts["copy.duplicate_call"] += 1
    c.rec.pd_calls += 1
    if d.cow_old_page is None:
        raise Oops("page_duplicate", a, "OLD_PAGE_NULL")
    q = allocate_page(c)
    if q is not None:
        copy_content(c, q, d.cow_old_page)
        c.rec.duplicates.append((q, d.cow_old_page, c.fc.trace.tick()))
        d.cow_new_page = q
    c.put_folio(c.m.page_folio[d.cow_old_page], a)  # always released, success or failure
    d.cow_old_page = None
    return 0 if q is not None else ENOMEM


def pte_install_copied_page(c: CopyContext, a: int, d: CopyMmData) -> bool:
    """Both locks held: install the prepared copy if the parent PTE is unchanged, else drop it."""
    c.counts["copy.recheck"] += 1
    q = d.cow_new_page
    d.cow_new_page = None  # mapped or freed: the pointer is never read again
    if c.src(a) == d.cow_oldpte:  # pte_same on the full value
        install_copy(c, a, q, P.pte_pfn(d.cow_oldpte))
        return True
    free_unused(c, q, a)  # PTE changed: drop the copy, redo this index
    return False


def copy_pte_range_xu_v1(c: CopyContext, a: int, end: int) -> int:
    ret = DONE
    wipe = True
    d = CopyMmData()
    while True:
        if wipe:
            d = c.d = CopyMmData()  # the restart label wipes d (entry becomes NULL_ENTRY)
        if not begin_pass(c, a):
            if d.cow_new_page is not None:
                free_unused(c, d.cow_new_page, a)
                d.cow_new_page = None
            return ENOMEM
        progress = 0
        reason = None
        while True:
            if progress >= BREAK_AT:
                progress = 0
                if check(c, a):
                    reason = "LB"
                    break
            if d.cow_new_page is not None and pte_install_copied_page(c, a, d):
                progress += 1  # ret stays BREAK_COW
            elif P.pte_none(c.src(a)):
                handle_none(c, a)
                progress += 1
            else:
                ret = copy_one_pte(c, a, d)
                if ret != DONE:
                    reason = "SC" if ret == SWAP_CONT else "EC"
                    break
                progress += 8
            a += 1
            if a == end:
                break
        c.end_pass(a, reason)
        if reason == "SC":
            c.rec.sc_breaks += 1
        if ret == SWAP_CONT:  # locks dropped
            if add_swap_count_continuation(c, d.entry, "swapcont.kernel") < 0:
                return ENOMEM
        elif ret == BREAK_COW:
            if page_duplicate(c, a, d) < 0:
                return ENOMEM
            window(c, reason)
            wipe = False
            continue  # no end test on this path
        if a == end:
            return 0
        window(c, reason)
        wipe = True


def copy_pte_range_xu_v1_oleg(c: CopyContext, a: int, end: int) -> int:
    ret = DONE
    d = c.d = CopyMmData()
    while True:
        if not begin_pass(c, a):
            if ret == BREAK_COW and d.cow_new_page is not None:
                free_unused(c, d.cow_new_page, a)
                d.cow_new_page = None
            return ENOMEM
        progress = 0
        reason = None
        run = True
        if ret == BREAK_COW:
            ret = DONE
            if pte_install_copied_page(c, a, d):
                progress += 1
                a += 1
                run = a != end  # jump to the loop's step
        while run:
            if progress >= BREAK_AT:
                progress = 0
                if check(c, a):
                    reason = "LB"
                    break
            if P.pte_none(c.src(a)):
                handle_none(c, a)
                progress += 1
            else:
                ret = copy_one_pte(c, a, d)
                if ret != DONE:
                    reason = "SC" if ret == SWAP_CONT else "EC"
                    break
                progress += 8
            a += 1
            if a == end:
                break
        c.end_pass(a, reason)
        if reason == "SC":
            c.rec.sc_breaks += 1
        if ret == SWAP_CONT:
            if add_swap_count_continuation(c, d.entry, "swapcont.kernel") < 0:
                return ENOMEM
            ret = DONE
            window(c, reason)
            continue  # safe: a break never advances a
        if ret == BREAK_COW:
            if page_duplicate(c, a, d) < 0:
                return ENOMEM
            window(c, reason)
            continue
        if a == end:
            return 0
        window(c, reason)


# --- 3.4 linux-5.10 --------------------------------------------------------------------------------------------


def copy_present_pte_5_10(c: CopyContext, a: int) -> int:
    e = c.src(a)
    if not P.pte_special(e):
        pfn = P.pte_pfn(e)
        f = c.m.page_folio[pfn]
        if c.cow and c.fc.parent.has_pinned and c.fc.maybe_pinned(f):  # tested before any reference
            if c.prealloc is None:
                return EAGAIN
            q, c.prealloc = c.prealloc, None
            copy_content(c, q, pfn)  # copy moment: under the locks
            install_copy(c, a, q, pfn)
            return 0
    share_one(c, a, e)
    return 0


def copy_pte_range_linux_5_10(c: CopyContext, a: int, end: int) -> int:
    c.prealloc = None
    pending = None
    ret = 0
    while True:
        progress = 0
        reason = None
        if not begin_pass(c, a):
            ret = ENOMEM
            break
        while True:
            if progress >= BREAK_AT:
                progress = 0
                if check(c, a):
                    reason = "LB"
                    break
            e = c.src(a)
            if P.pte_none(e):
                handle_none(c, a)
                progress += 1
            elif not P.pte_present(e):
                pending = copy_nonpresent_pte(c, a)
                if pending is not None:
                    reason = "SC"
                    break
                progress += 8
            else:
                ret = copy_present_pte_5_10(c, a)
                if ret == EAGAIN:
                    reason = "EC"
                    break
                if c.prealloc is not None:  # not reused later (memory policy is per address)
                    free_unused(c, c.prealloc, a)
                    c.prealloc = None
                progress += 8
            a += 1
            if a == end:
                break
        c.end_pass(a, reason)
        if pending is not None:  # locks dropped
            c.rec.sc_breaks += 1
            if add_swap_count_continuation(c, pending, "swapcont.kernel") < 0:
                ret = ENOMEM
                break
            pending = None  # the stale-entry fix
        elif ret == EAGAIN:
            c.prealloc = allocate_page(c)
            if c.prealloc is None:
                return ENOMEM
            ret = 0
        if a == end:
            break
        window(c, reason)
    if c.prealloc is not None:
        free_unused(c, c.prealloc, a)
        c.prealloc = None
    return ret


# --- 3.5 linux-6.18 --------------------------------------------------------------------------------------------


def needs_copy(c: CopyContext, f: int) -> bool:
    """Not device-private, and ``folio_needs_cow_for_dma``."""
    return c.fc.parent.has_pinned and not (c.m.folio_flags[f] & FOLIO_DEVICE_PRIVATE) and c.fc.maybe_pinned(f)


def folio_pte_batch(c: CopyContext, a: int, max_n: int) -> int:
    """Consecutive PTEs mapping consecutive pages of one folio (young ignored, write merged later)."""
    m = c.m
    first = c.src(a)
    pfn0 = P.pte_pfn(first)
    f = m.page_folio[pfn0]
    limit = min(max_n, (1 << m.folio_order[f]) - (pfn0 - m.folio_first_pfn[f]))
    n = 1
    while n < limit:
        e = c.src(a + n)
        if not P.pte_present(e) or P.pte_special(e) or P.pte_pfn(e) != pfn0 + n:
            break
        if not (c.vma.flags & VM_SHARED) and P.pte_dirty(e) != P.pte_dirty(first):
            break
        n += 1
    return n


def copy_present_ptes_6_18(c: CopyContext, a: int, max_n: int) -> int:
    m = c.m
    e = c.src(a)
    if P.pte_special(e):
        share_one(c, a, e)
        return 1
    pfn = P.pte_pfn(e)
    f = m.page_folio[pfn]
    anon = m.folio_flags[f] & FOLIO_ANON
    if c.v.batching and c.prealloc is None and m.folio_order[f] >= 1 and max_n != 1:
        n = folio_pte_batch(c, a, max_n)
        c.counts["batch.start"] += 1
        if anon and needs_copy(c, f) and any(m.page_flags[pfn + j] & PAGE_ANON_EXCLUSIVE for j in range(n)):
            c.counts["batch.refused"] += 1
            return EAGAIN  # whole batch refused; its references returned
        share_present(c, a, n)
        c.counts["batch.pte"] += n
        c.handled(a, "batch", n)
        return n
    m.folio_refcount[f] += 1  # single path: reference first, then test
    if anon and needs_copy(c, f) and m.page_flags[pfn] & PAGE_ANON_EXCLUSIVE:
        m.folio_refcount[f] -= 1
        if c.prealloc is None:
            return EAGAIN
        if m.page_flags[pfn] & PAGE_HWPOISON:
            return EHWPOISON  # prealloc not consumed
        q, c.prealloc = c.prealloc, None
        copy_content(c, q, pfn)
        install_copy(c, a, q, pfn)
        return 1
    m.folio_refcount[f] -= 1
    share_one(c, a, e)
    return 1


def copy_pte_range_linux_6_18(c: CopyContext, a: int, end: int) -> int:
    # long: spec 3.5's state machine in one function, as the kernel has it (passes, batches, restarts, prealloc)
    c.prealloc = None
    pending = None
    ret = 0
    while True:
        progress = 0
        reason = None
        if not begin_pass(c, a):
            ret = ENOMEM
            break
        while True:
            n = 1
            if progress >= BREAK_AT:
                progress = 0
                if check(c, a):
                    reason = "LB"
                    break
            e = c.src(a)
            if P.pte_none(e):
                handle_none(c, a)
                progress += 1
            elif not P.pte_present(e):
                pending = copy_nonpresent_pte(c, a)
                if pending is not None:
                    ret = EIO
                    reason = "SC"
                    break
                ret = 0
                progress += 8
            else:
                ret = copy_present_ptes_6_18(c, a, end - a)
                if ret in (EAGAIN, EHWPOISON):
                    reason = "EC" if ret == EAGAIN else "HWPOISON"
                    break
                if c.prealloc is not None:
                    free_unused(c, c.prealloc, a)
                    c.prealloc = None
                n = ret
                progress += 8 * n  # no check inside a batch
            a += n
            if a == end:
                break
        c.end_pass(a, reason)
        if ret == EIO:  # locks dropped
            c.rec.sc_breaks += 1
            if add_swap_count_continuation(c, pending, "swapcont.kernel") < 0:
                ret = ENOMEM
                break
            pending = None
        elif ret == EHWPOISON:
            c.last_failed = ("hwpoison", 1)
            break  # the fork fails (reported as ENOMEM)
        elif ret == EAGAIN:
            c.prealloc = allocate_page(c)
            if c.prealloc is None:
                return ENOMEM
        ret = 0
        if a == end:
            break
        window(c, reason)
    if c.prealloc is not None:
        free_unused(c, c.prealloc, a)
        c.prealloc = None
    return ret


COPY_PTE_RANGE = {
    LINUX_5_8: copy_pte_range_linux_5_8,
    XU_V1: copy_pte_range_xu_v1,
    XU_V1_OLEG: copy_pte_range_xu_v1_oleg,
    LINUX_5_10: copy_pte_range_linux_5_10,
    LINUX_6_18: copy_pte_range_linux_6_18,
}


def copy_pte_range(c: CopyContext) -> int:
    """One call over ``[call_start, end)`` with the variant's state machine; 0 or ENOMEM (EHWPOISON)."""
    fc = c.fc
    fc.counts["table.call"] += 1
    fc.trace.calls.append(c.rec)
    ret = COPY_PTE_RANGE[fc.v.machine](c, c.call_start, c.end)
    if c.prealloc is not None:
        c.rec.owned_at_return.append(f"prealloc pfn {c.prealloc}")
    if c.d is not None and (c.d.cow_new_page is not None or c.d.cow_old_page is not None):
        c.rec.owned_at_return.append(f"copy_mm_data {c.d}")
    c.rec.result = ret
    return ret


# --- spec 10: PMD-mapped THPs ----------------------------------------------------------------------------------


def copy_huge_pmd(c: CopyContext) -> str:
    """Copy the huge PMD of table ``c.t``: "share", "split" (then copy_pte_range), or "enomem"."""
    fc, m, t = c.fc, c.m, c.t
    if not allocate(c, "ptetable"):  # the table deposited with the child's PMD
        return "enomem"
    fc.counts["table.alloc"] += 1
    pmd = fc.parent.pmds[t]
    head = P.pte_pfn(pmd)
    f = m.page_folio[head]
    pinned = fc.parent.has_pinned and fc.maybe_pinned(f)
    if not fc.v.early_cow:
        copy = False
    elif fc.v.anon_exclusive:
        copy = pinned and bool(m.page_flags[head] & PAGE_ANON_EXCLUSIVE)  # folio_try_dup_anon_rmap_pmd fails
    else:
        copy = pinned and c.cow
    if copy:
        # __split_huge_pmd: the parent gets a PTE table mapping the folio's pages in order
        fc.counts["pmd.split"] += 1
        fc.trace.splits.append((t, f))
        excl = m.page_flags[head] & PAGE_ANON_EXCLUSIVE
        row = []
        for j in range(PTRS_PER_TABLE):
            m.page_mapcount[head + j] += 1
            m.page_flags[head + j] = (m.page_flags[head + j] & ~PAGE_ANON_EXCLUSIVE) | excl
            row.append(P.mk_pte(head + j, P.pte_write(pmd), P.pte_dirty(pmd), P.pte_young(pmd), False))
        m.folio_refcount[f] += PTRS_PER_TABLE - 1
        m.folio_pmd_mapcount[f] -= 1
        del fc.parent.pmds[t]
        fc.parent.tables[t] = row
        return "split"
    m.folio_refcount[f] += 1
    m.folio_pmd_mapcount[f] += 1
    fc.child.rss[MM_ANONPAGES] += PTRS_PER_TABLE
    child = P.pte_mkold(pmd)
    if c.cow:
        fc.parent.pmds[t] = P.pte_wrprotect(pmd)
        child = P.pte_wrprotect(child)
    if fc.v.anon_exclusive:
        m.page_flags[head] &= ~PAGE_ANON_EXCLUSIVE
    fc.child.pmds[t] = child
    fc.note_child_table(t)
    fc.counts["pmd.share"] += 1
    fc.trace.pmd_shares.append((t, f))
    if m.folio_true_pins[f] > 0:
        fc.counts["pin_shared"] += PTRS_PER_TABLE
    return "share"


# --- dup_mmap and copy_page_range ------------------------------------------------------------------------------


class CopyFailed(Exception):
    """``copy_page_range`` returned an error (ENOMEM; a poisoned page's -EHWPOISON is reported as ENOMEM): the
    fork stops at this call and the caller tears the child down."""

    def __init__(self, c: CopyContext):
        super().__init__(f"copy_page_range failed at {c.call_start}")
        self.c = c


def fork_stopped(fc: ForkContext, stop: Exception) -> tuple[str, dict | None, dict | None]:
    """(outcome, oops, enomem) of a fork that :class:`CopyFailed` or :class:`Oops` stopped."""
    if isinstance(stop, CopyFailed):
        point, n = stop.c.last_failed or ("unknown", 0)
        return "enomem", None, {"call_start": stop.c.call_start, "point": point, "occurrence": n}
    cs = fc.trace.calls[-1].call_start if fc.trace.calls else -1
    return "oops", {"function": stop.function, "addr": stop.addr, "reason": stop.reason, "call_start": cs}, None


def copy_table(fc: ForkContext, vma: VmaView, t: int, start: int, end: int) -> CopyContext:
    """One call of ``copy_page_range``: ``copy_huge_pmd`` where the parent has a huge PMD (and, after a split,
    ``copy_pte_range``), else ``copy_pte_range``. Raises :class:`CopyFailed` on ENOMEM."""
    c = CopyContext(fc, vma, t, start, end)
    fc.python_tables.add(t)
    if t in fc.parent.pmds:
        how = copy_huge_pmd(c)
        if how == "enomem":
            raise CopyFailed(c)
        if how == "share":
            return c
    counts = fc.counts
    before = [counts[e] for e in TABLE_EVENTS]
    passes = counts["pass"]
    try:
        rc = copy_pte_range(c)
    finally:  # per-table statistics, an interrupted call's too
        fc.table_rows.append((t, counts["pass"] - passes, [counts[e] - b for e, b in zip(TABLE_EVENTS, before)]))
    if rc != 0:
        raise CopyFailed(c)
    return c


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


def dup_mmap(fc: ForkContext, plan: ForkPlan | None = None) -> tuple[str, dict | None, dict | None]:
    """Duplicate the parent's VMAs into the child and copy their page tables (``copy_page_range`` per VMA).

    Returns (outcome, oops, enomem). The caller tears the child down after ENOMEM (:func:`teardown`).
    """
    plan = plan or plan_fork(fc.space.mm)
    fc.counts["fork.base"] += 1
    fc.counts["fork.mm"] += 1
    calls = iter(range(plan.nr_calls))
    nxt = next(calls, None)
    try:
        for vma in fc.parent.vmas:
            for name, v in zip(VMA_COUNT_NAMES, plan.vma_counts[vma.index].tolist()):
                fc.counts[name] += v
            if plan.vma_child[vma.index]:
                fc.child.vmas.append(
                    VmaView(
                        len(fc.child.vmas),
                        vma.start,
                        vma.end,
                        vma.flags,
                        vma.backing,
                        bool(plan.vma_child_anon[vma.index]),
                    )
                )
            while nxt is not None and int(plan.call_vma[nxt]) == vma.index:
                copy_table(fc, vma, int(plan.call_table[nxt]), int(plan.call_start[nxt]), int(plan.call_end[nxt]))
                nxt = next(calls, None)
    except (CopyFailed, Oops) as stop:
        return fork_stopped(fc, stop)
    return "ok", None, None


def fork_reference(
    space: AddressSpace, variant: str, oracle: LockBreakOracle, plan: InjectionPlan, fork_seq: int = 0
) -> ForkResult:
    """One fork on the reference engine: ``dup_mmap``, then the teardown of the child after ENOMEM."""
    t0 = time.perf_counter()
    fc = ForkContext(space, variant, oracle, plan, fork_seq)
    stopped = dup_mmap(fc)
    child_rss, after_teardown = list(fc.child.rss), None
    if stopped[0] == "enomem":
        teardown(fc)
        after_teardown = rss_dict(fc.child.rss)
    parent = AddressSpace(fc.parent.to_mm(), fc.m.to_memory())
    return fc.result(
        stopped,
        parent,
        fc.child.to_mm(),
        child_rss,
        after_teardown,
        time.perf_counter() - t0,
        "reference",
        table_stats_of(fc.table_rows),
    )


def teardown(fc: ForkContext) -> None:
    """Tear the half-built child down after ENOMEM (spec 5.4): every child entry drops what it holds."""
    m = fc.m
    for row in fc.child.tables.values():
        for v in row:
            if v == 0:
                continue
            fc.counts["teardown.pte"] += 1
            kind = P.pte_kind(v)
            if kind == P.KIND_PRESENT and not P.pte_special(v) or kind == P.KIND_DEVICE_PRIVATE:
                pfn = P.pte_pfn(v) if kind == P.KIND_PRESENT else P.swp_offset(v)
                f = m.page_folio[pfn]
                m.page_mapcount[pfn] -= 1
                m.folio_refcount[f] -= 1
                if m.folio_refcount[f] == 0:
                    m.folio_flags[f] |= FOLIO_FREED
                    fc.counts["teardown.free"] += 1
            elif kind == P.KIND_SWAP:
                m.swap_count[P.swp_offset(v)] -= 1
    for v in fc.child.pmds.values():
        fc.counts["teardown.pte"] += 1
        f = m.page_folio[P.pte_pfn(v)]
        m.folio_refcount[f] -= 1
        m.folio_pmd_mapcount[f] -= 1
    fc.child = MMState()


# --- window events (spec 5.2) ----------------------------------------------------------------------------------


def _page_at(fc: ForkContext, v: int) -> int:
    """The pfn an entry maps (present non-special, migration, device-private), else -1."""
    kind = P.pte_kind(v)
    if kind == P.KIND_PRESENT and not P.pte_special(v):
        return P.pte_pfn(v)
    if kind in (P.KIND_MIGRATION, P.KIND_DEVICE_PRIVATE):
        return P.swp_offset(v)
    return -1


@dataclass
class EventTarget:
    """What an event at address ``x`` finds in the parent: its table ``row`` (None: no table) and index ``i``, the
    entry ``v`` and its kind, and the page (``pfn``) and folio (``f``) it maps (-1: none)."""

    x: int
    row: object
    i: int
    v: int
    kind: int
    pfn: int
    f: int


def event_zap(fc: ForkContext, rec: EventRecord, t: EventTarget) -> bool:
    """``zap``: the parent's entry is cleared and drops what it holds (a swap count, or a mapping and a reference;
    a migration entry holds neither)."""
    m = fc.m
    if t.v == 0:
        return False
    rec.applied = True  # recorded as applied even if it oopses below
    t.row[t.i] = 0
    rss = [0, 0, 0, 0]
    if t.kind == P.KIND_SWAP:
        rec.slot = P.swp_offset(t.v)
        if m.swap_count[rec.slot] < 1:
            raise Oops("swap_free", t.x, "UNDERFLOW")
        m.swap_count[rec.slot] -= 1
        rec.count = -1
        rss[MM_SWAPENTS] = -1
    elif t.pfn >= 0:
        rec.pfn, rec.folio = t.pfn, t.f
        rss[mm_counter(m.folio_flags[t.f])] = -1
        if t.kind != P.KIND_MIGRATION:  # present normal or device-private: map and ref held
            if m.folio_refcount[t.f] < 1:
                raise Oops("put_page", t.x, "UNDERFLOW")
            m.page_mapcount[t.pfn] -= 1
            m.folio_refcount[t.f] -= 1
            rec.map, rec.ref = -1, -1
    rec.rss = tuple(rss)
    for k in range(4):
        fc.parent.rss[k] += rss[k]
    return True


def event_reclaim(fc: ForkContext, rec: EventRecord, t: EventTarget) -> bool:
    """``reclaim``: a present anon page is swapped out to a new slot (exclusive if the page was, in 6.18)."""
    m = fc.m
    if t.kind != P.KIND_PRESENT or t.pfn < 0 or not (m.folio_flags[t.f] & FOLIO_ANON):
        return False
    rec.pfn, rec.folio = t.pfn, t.f
    excl = fc.v.anon_exclusive and bool(m.page_flags[t.pfn] & PAGE_ANON_EXCLUSIVE)
    slot = m.alloc_slot(m.page_content[t.pfn])
    rec.new_slot = slot
    t.row[t.i] = P.mk_swap_pte(slot, excl)
    m.page_mapcount[t.pfn] -= 1
    m.folio_refcount[t.f] -= 1
    rec.map, rec.ref = -1, -1
    rec.rss = (-1, 0, 0, 1)
    fc.parent.rss[MM_ANONPAGES] -= 1
    fc.parent.rss[MM_SWAPENTS] += 1
    return True


def event_pin(fc: ForkContext, rec: EventRecord, t: EventTarget) -> bool:
    """``pin`` / ``unpin``: one FOLL_PIN on the folio added or dropped (an unpin needs a true pin)."""
    m = fc.m
    if t.f < 0 or (rec.name == "unpin" and m.folio_true_pins[t.f] < 1):
        return False
    rec.pfn, rec.folio = t.pfn, t.f
    before = m.folio_refcount[t.f]
    rec.pins = 1 if rec.name == "pin" else -1
    fc.add_pin(fc.parent, t.f, rec.pins)
    rec.ref = m.folio_refcount[t.f] - before
    return True


def event_write(fc: ForkContext, rec: EventRecord, t: EventTarget) -> bool:
    """``write``: the page's content changes (a new content identity)."""
    if t.pfn < 0:
        return False
    rec.pfn, rec.folio = t.pfn, t.f
    rec.content = fc.m.page_content[t.pfn] = fc.m.new_content()
    return True


def event_touch(fc: ForkContext, rec: EventRecord, t: EventTarget) -> bool:
    """``touch``: a present entry becomes young and dirty."""
    if t.kind != P.KIND_PRESENT:
        return False
    rec.pfn = t.pfn
    t.row[t.i] = P.pte_mkdirty(P.pte_mkyoung(t.v))
    return True


EVENTS = {
    "zap": event_zap,
    "reclaim": event_reclaim,
    "pin": event_pin,
    "unpin": event_pin,
    "write": event_write,
    "touch": event_touch,
}


def apply_event(fc: ForkContext, call_start: int, window_kind: str, name: str, x: int) -> None:
    """Apply one injected event to the parent; events with nothing to act on are ignored and reported."""
    rec = EventRecord(fc.trace.tick(), call_start, window_kind, name, x, False)
    fc.trace.events.append(rec)
    t, i = divmod(x, PTRS_PER_TABLE)
    row = fc.parent.tables.get(t)
    v = row[i] if row is not None else 0
    pfn = _page_at(fc, v)
    target = EventTarget(x, row, i, v, P.pte_kind(v), pfn, fc.m.page_folio[pfn] if pfn >= 0 else -1)
    rec.applied = EVENTS[name](fc, rec, target)
    if rec.applied:
        fc.counts["events_applied"] += 1
    else:
        fc.counts["events_ignored"] += 1
        fc.ignored.append(f"{name}({x})")


__all__ = [
    "fork_reference",
    "dup_mmap",
    "teardown",
    "ForkContext",
    "Trace",
    "Oops",
    "CopyFailed",
    "fork_stopped",
    "copy_pte_range",
    "copy_huge_pmd",
    "copy_table",
    "Machine",
    "MMState",
]
