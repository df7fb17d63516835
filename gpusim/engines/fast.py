"""The fast fork engine: compiled kernels for the common work, the slow path for the rest (architecture rule 3).

Steps of one fork (:class:`ForkJob`):

1. **prepare**: the engine's own copy of the state, and :func:`gpusim.model.plan.plan_fork`'s calls (one per table of
   each copied VMA) mapped onto the parent's table rows (:class:`CallIndex`).
2. **classify**: ``fork_tables`` (one launch, or table-aligned chunks) classifies every table: does a PTE in it need
   the slow path (an early copy may be due, a swap-count continuation may be needed, or its handling could depend
   on the order of the walk; :mod:`gpusim.kernels.rules`)? Tables that do not are copied in the same pass. THP
   tables, tables whose ``ptetable`` allocation is injected to fail, and every table from the first one where an
   injected window event can act are slow-path tables too.
3. **slow path**: the slow-path tables in address order with the variant's ``copy_pte_range`` state machine:
   compiled (:mod:`gpusim.kernels.slowpath`, a thread per table that shares no object with another; new pages
   numbered in address order by :mod:`gpusim.engines.earlycopy`), or, for a fork with injections, interpreted by the
   reference's own state machines over the engine's arrays (the **Python loop**, :mod:`gpusim.engines.pyloop`). A
   fast table and a slow-path table never depend on each other's order, so the fast tables may be copied first.
   Only a fork that can stop early (failure injections, xu-v1's oops, hwpoison) must know where it stops before
   copying fast tables: then the launch only classifies, the slow path runs, and a second launch copies the fast
   tables before the stopping call.
4. **merge**: the kernels' per-table counts are added to the slow path's, and the plan's per-VMA counts.
5. **final states**: a half-built child is torn down (ENOMEM), or the child's tables are assembled; the result is
   built by :meth:`gpusim.engines.context.ForkRecords.result`, as the reference engine's is.

Backends differ only in the kernels module (and, for CUDA, in where the arrays live); see :mod:`gpusim.base.backend`.
Kernel arguments are the groups of :mod:`gpusim.kernels.args`.

**Device-resident state**: a space whose arrays are device arrays (CuPy:
:meth:`gpusim.inputs.regions.RegionSpace.generate` on ``cuda``) forks where it is. The working state (the memory, both
processes' tables, the slow path's scratch) is made with the input's array module and never crosses PCIe; only what the
host decides with comes back (which tables need the slow path, per-table counts, the slow path's bounds and statuses,
THP rows); the final states stay on the device. Such a fork runs the compiled paths only (no injections) and does not
tear down a failed child.
"""

from __future__ import annotations

import math
import time

import numpy as np

from gpusim.base import backend as B
from gpusim.engines import earlycopy
from gpusim.engines.context import CopyFailed, Oops, fork_stopped, table_stats_of
from gpusim.engines.pyloop import absorb, python_context
from gpusim.engines.reference import copy_table
from gpusim.engines.slowpath import CompiledSlowPath, kernel_table_stats
from gpusim.engines.work import WorkState
from gpusim.kernels.args import Calls, OracleParams, Tables, VariantParams, memory_arrays
from gpusim.kernels.cpu import shift_entries
from gpusim.kernels.flags import FOLIO_FREED, PAGE_HWPOISON, PTRS_PER_TABLE, RSS_NAMES
from gpusim.kernels.rules import (
    FAST_COUNTS,
    MODE_CLASSIFY,
    MODE_CLASSIFY_COPY,
    MODE_COPY,
    NB_ALWAYS,
    NB_BERN,
    NB_EVERY,
    NB_LIST,
    NB_NEVER,
)
from gpusim.kernels.slowpath import SLOW_COUNTS
from gpusim.model import decode
from gpusim.model.oracle import InjectionPlan, LockBreakOracle
from gpusim.model.plan import ForkPlan, plan_fork
from gpusim.model.result import ForkResult, TableStats
from gpusim.model.state import MM, AddressSpace, Memory, copy_array, empty_mm, zeros_like
from gpusim.model.variants import Variant, get_variant

NB_MODES = {"never": NB_NEVER, "always": NB_ALWAYS, "every": NB_EVERY, "bern": NB_BERN, "list": NB_LIST}


def variant_params(v: Variant) -> VariantParams:
    """The kernels' view of a variant: its rules (the only way a kernel knows one)."""
    return VariantParams(
        machine=v.machine_id,
        early_cow=v.early_cow,
        anon_exclusive=v.anon_exclusive,
        batching=v.batching,
        large_order=v.large_pin_order,
    )


def oracle_params(oracle: LockBreakOracle) -> OracleParams:
    """The kernels' view of a lock-break oracle."""
    pairs = sorted(oracle.pairs)
    return OracleParams(
        NB_MODES[oracle.mode],
        max(1, oracle.n),
        np.uint64(min(oracle.p_q32, (1 << 64) - 1)),
        np.uint64(oracle.seed & ((1 << 64) - 1)),
        np.array([p[0] for p in pairs], np.int64),
        np.array([p[1] for p in pairs], np.int64),
    )


class CallIndex:
    """Calls of a plan mapped onto the parent's table rows: ``call_row`` (-1 for a huge PMD's table) and, per row,
    its calls ``row_lo .. row_hi - 1`` (``row_has_calls``: it has any)."""

    def __init__(self, mm: MM, plan: ForkPlan):
        self.plan = plan
        rows = np.searchsorted(mm.table_index, plan.call_table)
        self.call_row = np.where(plan.call_huge, -1, rows).astype(np.int64)
        T = mm.nr_tables
        self.row_lo = np.zeros(T, np.int64)
        self.row_hi = np.zeros(T, np.int64)
        idx = np.flatnonzero(self.call_row >= 0)
        cr = self.call_row[idx]
        present = np.zeros(T, bool)
        present[cr] = True
        lo = np.searchsorted(cr, np.arange(T), side="left")
        hi = np.searchsorted(cr, np.arange(T), side="right")
        self.row_lo[present] = idx[lo[present]]
        self.row_hi[present] = idx[hi[present] - 1] + 1
        self.row_has_calls = present
        self.call_vmaflags = mm.vma_flags[plan.call_vma].astype(np.int64)

    def first_call_of(self, c: int) -> int:
        """The first call of the table that call ``c`` belongs to."""
        r = int(self.call_row[c])
        return int(self.row_lo[r]) if r >= 0 else c

    def group(self) -> Calls:
        """The kernels' call group."""
        p = self.plan
        return Calls(p.call_start, p.call_end, self.call_vmaflags, p.table_first_call)


def first_window_call(plan_inj: InjectionPlan, calls: CallIndex) -> int:
    """Index of the first call (rounded down to its table) where an injected window event may act."""
    wins = [inj for inj in plan_inj.injections if inj.kind == "window"]
    if not wins:
        return math.inf
    if any(inj.call is None for inj in wins):
        return 0
    starts = calls.plan.call_start
    hits = [calls.first_call_of(int(c)) for inj in wins for c in np.flatnonzero(starts == inj.call)]
    return min(hits) if hits else math.inf


def launch_chunked(
    kernels,
    mode: int,
    which: np.ndarray,
    chunk_tables: int | None,
    vp: VariantParams,
    tab: Tables,
    calls: Calls,
    mem,
    nb: OracleParams,
) -> tuple[np.ndarray, np.ndarray]:
    """``kernels.fork_tables`` over the table rows ``which``, in table-aligned chunks of at most ``chunk_tables``
    rows: each launch sees only its slice of the per-row arrays, which is what a device holds at a time. Returns
    (needs_slow, counts) aligned with ``which``, host arrays (the state's arrays stay where they are)."""
    T = tab.ppte.shape[0]
    xp = B.array_module(tab.ppte)
    needs = np.zeros(which.shape[0], bool)
    counts = np.zeros((which.shape[0], len(FAST_COUNTS)), np.int64)
    step = chunk_tables or max(1, T)
    for lo in range(0, max(1, T), step):
        hi = min(T, lo + step)
        sel = np.flatnonzero((which >= lo) & (which < hi))
        if sel.size == 0:
            continue
        part = Tables(*(a[lo:hi] for a in tab))
        n, c = kernels.fork_tables(mode, xp.asarray(which[sel] - lo), vp, part, calls, mem, nb)
        needs[sel], counts[sel] = B.to_host(n), B.to_host(c)
    return needs, counts


class ForkJob:
    """One fork on the fast engine (the steps of the module docstring). A job is launched on its own (:meth:`run`)
    or with others in one combined launch (:func:`fork_fast_batch`). ``in_place``: the space's arrays are the
    engine's to write (:meth:`gpusim.model.state.AddressSpace.handed_over`), not copied first. ``plan``: the calls to
    make (default: every call of :func:`gpusim.model.plan.plan_fork`)."""

    def __init__(
        self,
        space: AddressSpace,
        variant: str,
        oracle: LockBreakOracle,
        plan_inj: InjectionPlan,
        fork_seq: int = 0,
        in_place: bool = False,
        plan: ForkPlan | None = None,
    ):
        self.space, self.variant, self.plan_inj, self.fork_seq = space, variant, plan_inj, fork_seq
        mm = self.mm = space.mm
        self.v = get_variant(variant)
        self.xp = xp = B.array_module(mm.pte)  # numpy, or CuPy for device-resident state
        if xp is not np and plan_inj.injections:
            raise ValueError("a fork of device-resident state takes no injections (they run on the host)")
        self.ppte = mm.pte if in_place else copy_array(mm.pte)
        # The input is frozen (read-only arrays); the kernels take writeable arrays only, one compiled type each.
        self.table_index, self.pmd_index = self.dev(mm.table_index.copy()), mm.pmd_index.copy()
        self.cpte = zeros_like(self.ppte)  # the child's tables touched now, not inside the timed kernels
        self.cexists = xp.zeros(mm.nr_tables, np.bool_)
        self.compiled = not plan_inj.injections  # the slow-path tables run compiled (kernels/slowpath/)
        self.maybe, room = self.early_copy_room(space.memory)
        self.state = WorkState(
            space, variant, plan_inj, space.memory, self.ppte, self.cpte, self.cexists, room, copy=not in_place
        )
        t0 = time.perf_counter()
        self.plan = plan or plan_fork(mm)  # (a lazy design's: the calls it copies, gpusim.engines.lazyfast)
        self.calls = CallIndex(mm, self.plan)
        self.nC = self.plan.nr_calls
        self.first_inj = first_window_call(plan_inj, self.calls)
        self.rows = np.flatnonzero(self.calls.row_has_calls & (self.calls.row_lo < self.first_inj)).astype(np.int64)
        self.fail_rows = self.ptetable_failures()
        # Without failure injections, hwpoison or the v1 oops nothing can stop the fork early, so the fast tables
        # can be copied in the same pass that classifies them; otherwise classify, run the slow path, then copy
        # the fast tables before the stopping call.
        self.can_stop = (
            plan_inj.has_failures()
            or self.v.can_oops
            or (self.v.hwpoison_fails_copy and bool((space.memory.page_flags & PAGE_HWPOISON).any()))
        )
        self.oracle = oracle
        self.fc = None  # the reference's objects over the state: for the Python loop only (python_loop)
        self.nb = oracle_params(oracle)
        self.nb = self.nb._replace(list_cs=self.dev(self.nb.list_cs), list_k=self.dev(self.nb.list_k))
        self.calls_group = Calls(*(self.dev(a) for a in self.calls.group()))
        self._tables = None
        self.slow = CompiledSlowPath(self.state, self.plan, self.calls, variant_params(self.v), self.nb, fork_seq, xp)
        self.setup_s = time.perf_counter() - t0

    def dev(self, a):
        """A host array where the working state is (on the device for device-resident state)."""
        return a if self.xp is np else self.xp.asarray(a)

    def early_copy_room(self, m: Memory) -> tuple[np.ndarray, int]:
        """(bool per folio: maybe pinned, the room the engine's copy of the memory ``m`` needs for every early copy
        the fork can make: :func:`gpusim.engines.earlycopy.maybe_pinned_folios`), so that the compiled slow path
        never grows the arrays; none for a fork run by the Python loop (which appends) or that cannot copy early
        (every early-copy test of every variant needs ``has_pinned``). Made with the copy, outside the engine's
        time."""
        if self.compiled and self.v.early_cow and self.mm.has_pinned:
            return earlycopy.maybe_pinned_folios(m, self.v.large_pin_order, self.xp)
        return self.xp.zeros(m.nr_folios, bool), 0

    def ptetable_failures(self) -> np.ndarray:
        """Rows whose child table allocation (the ``ptetable`` point of their first call) is injected to fail: the
        slow path takes them, to fail where the reference fails."""
        if not self.plan_inj.has_failures():
            return np.zeros(0, np.int64)
        starts = self.plan.call_start[self.calls.row_lo[self.rows]].tolist()
        return np.array(
            [
                r
                for r, s in zip(self.rows.tolist(), starts)
                if self.plan_inj.alloc_fails(self.fork_seq, s, "ptetable", 1, record=False)
            ],
            np.int64,
        )

    def tables(self) -> Tables:
        """The kernels' table group of this fork (its working rows), made once."""
        if self._tables is None:
            self._tables = self.make_tables()
        return self._tables

    def make_tables(self) -> Tables:
        mm, calls, T, xp = self.mm, self.calls, self.mm.nr_tables, self.xp
        return Tables(
            self.table_index,
            self.dev(calls.row_lo),
            self.dev(calls.row_hi),
            self.ppte,
            self.cpte,
            self.cexists,
            xp.full(T, bool(mm.has_pinned)),
            xp.full(T, self.fork_seq, np.int64),
        )

    def launch(self, kernels, mode: int, which: np.ndarray, chunk_tables: int | None):
        """The kernels over this fork's table rows ``which`` (see :func:`launch_chunked`)."""
        return launch_chunked(
            kernels,
            mode,
            which,
            chunk_tables,
            variant_params(self.v),
            self.tables(),
            self.calls_group,
            memory_arrays(self.state.arrays()),
            self.nb,
        )

    def run(self, kernels, backend: str, chunk_tables: int | None = None) -> ForkResult:
        t0 = time.perf_counter()
        mode = MODE_CLASSIFY if self.can_stop else MODE_CLASSIFY_COPY
        needs, fast_counts = self.launch(kernels, mode, self.rows, chunk_tables)
        return self.finish(needs, fast_counts, kernels, backend, chunk_tables, time.perf_counter() - t0)

    def slow_calls(self, needs) -> tuple[np.ndarray, np.ndarray]:
        """(slow_row bool per table row, the calls of slow-path tables and THP tables, in order)."""
        slow_row = np.zeros(self.mm.nr_tables, bool)
        slow_row[self.rows[np.asarray(needs)]] = True
        slow_row[self.fail_rows] = True
        is_slow_call = self.calls.call_row < 0  # THP tables
        nonhuge = ~is_slow_call
        is_slow_call[nonhuge] = slow_row[self.calls.call_row[nonhuge]]
        return slow_row, np.flatnonzero(is_slow_call)

    def copy_tables(self, needs, fast_counts, kernels, chunk_tables) -> tuple[tuple, int, np.ndarray, np.ndarray]:
        """After the first launch: the slow-path tables before the first injected window; the fast tables (copied by a
        second launch, before the stopping call, when the fork can stop early); then (events may act on any later
        table) every table from that window on, through the Python loop. Returns (stopped: (outcome, oops,
        enomem), the stopping call or ``nC``, the rows the kernels copied, their count rows)."""
        slow_row, slow_calls = self.slow_calls(needs)
        stopped, stop = self.copy_slow_calls(kernels, slow_calls[slow_calls < self.first_inj])
        fast_rows = self.rows[~slow_row[self.rows]]
        if self.can_stop:
            fast_rows = fast_rows[self.calls.row_lo[fast_rows] < stop]
            _, fast_counts = self.launch(kernels, MODE_COPY, fast_rows, chunk_tables)
        else:
            fast_counts = np.asarray(fast_counts)[~slow_row[self.rows]]
        if stopped[0] == "ok" and self.first_inj < self.nC:
            stopped, stop = self.python_loop(np.arange(self.first_inj, self.nC))
        return stopped, stop, fast_rows, np.asarray(fast_counts).reshape(len(fast_rows), len(FAST_COUNTS))

    def copy_slow_calls(self, kernels, slow_calls: np.ndarray) -> tuple[tuple, int]:
        """The slow-path tables in address order until one stops the fork: without injections by the compiled slow
        path (the kernels' ``slow_plan`` and ``slow_tables``: PTE tables and PMD-mapped THPs), with injections by
        the reference's state machines in the Python loop."""
        if not self.compiled:
            return self.python_loop(slow_calls)
        if not len(slow_calls):  # nothing for the slow path: none of its per-folio claims to allocate
            return ("ok", None, None), self.nC
        rows = self.calls.call_row[slow_calls]
        thp = np.searchsorted(self.mm.pmd_index, self.plan.call_table[slow_calls])
        items = np.where(rows >= 0, rows, -thp - 1)  # a PTE table's row, or -1 - its THP's row
        order = items[np.r_[True, items[1:] != items[:-1]]] if len(items) else items  # one item per table
        return self.slow.run(kernels, order, self.tables(), self.calls_group, self.pmd_index, self.maybe, self.can_stop)

    def python_loop(self, slow_calls: np.ndarray) -> tuple[tuple, int]:
        """The calls ``slow_calls`` by the reference's state machines over the working state (built on first use,
        the state's own containers written in place)."""
        if self.fc is None:
            self.fc = python_context(self.state, self.variant, self.oracle, self.plan_inj, self.fork_seq)
        out = run_python_loop(self.fc, self.plan, slow_calls, self.nC)
        absorb(self.state, self.fc)
        return out

    def merge_counts(self, fast_counts: np.ndarray, stop_vma: int) -> dict:
        """Add the kernels' counts (fast path and compiled slow path) and the plan's per-VMA counts (of the VMAs up
        to ``stop_vma``) to the Python loop's, in the state's counts; returns the child's rss deltas (``rss.<counter>``)
        and ``swapoff`` from the kernels."""
        counts = self.state.counts
        fast = dict(zip(FAST_COUNTS, fast_counts.sum(axis=0).tolist()))
        slow = dict(zip(SLOW_COUNTS, self.slow.totals().tolist()))

        counts["fork.base"] = counts["fork.mm"] = 1
        counts.update(self.plan.counts_upto(stop_vma))
        for totals in (fast, slow):
            for name, val in totals.items():
                if name in counts:
                    counts[name] += val
        counts["restart.lb"] += fast["lock_breaks"]  # the fast path's breaks restart without a window
        child_tables = np.concatenate(
            [
                self.mm.table_index[B.to_host(self.cexists)],
                np.array(sorted(set(self.state.child_pmds) | set(self.state.child_extra)), np.int64),
            ]
        )
        counts["table.upper_alloc"] = len(np.unique(child_tables >> 9)) + len(np.unique(child_tables >> 18))
        kernels_out = {f"rss.{n}": fast[f"rss.{n}"] + slow[f"rss.{n}"] for n in RSS_NAMES}
        kernels_out["swapoff"] = fast["swapoff"] or slow["swapoff"]
        return kernels_out

    def child_mm(self, stop_vma: int, child_rss: list, swapoff: bool) -> MM:
        """The child after a fork that did not fail: VMAs up to ``stop_vma``, the tables the kernels and the host
        loop filled, the THP tables of splits, the shared huge PMDs."""
        s, mm, cexists = self.state, self.mm, B.to_host(self.cexists)
        every = bool(cexists.all())
        index = mm.table_index if every else mm.table_index[cexists]
        pte = self.cpte if every else self.cpte[self.cexists]
        index, pte = merge_tables(index, pte, s.child_extra)
        pmds = sorted(s.child_pmds)
        return MM(
            **self.plan.child_mm_vmas(mm, stop_vma),
            table_index=index,
            pte=pte,
            pmd_index=np.array(pmds, np.int64),
            pmd=np.array([s.child_pmds[t] for t in pmds], np.uint64),
            rss=np.array(child_rss, np.int64),
            has_pinned=False,
            on_swapoff_list=bool(s.child_on_swapoff or swapoff),
        )

    def finish(self, needs, fast_counts, kernels, backend: str, chunk_tables, launch_s: float) -> ForkResult:
        """After the first launch: copy the remaining tables, merge the counts, build the final states."""
        t0 = time.perf_counter()
        s = self.state
        stopped, stop, fast_rows, fast_counts = self.copy_tables(needs, fast_counts, kernels, chunk_tables)
        stop_vma = int(self.plan.call_vma[stop]) if stop < self.nC else self.mm.nr_vmas - 1
        kern = self.merge_counts(fast_counts, stop_vma)
        child_rss = [s.child_rss[i] + kern[f"rss.{n}"] for i, n in enumerate(RSS_NAMES)]
        memory = s.memory_now()
        after_teardown = None
        if stopped[0] == "enomem":
            if self.xp is not np:
                raise RuntimeError("a fork of device-resident state failed with ENOMEM: its teardown runs on the host")
            rows = np.concatenate(
                [self.cpte[self.cexists], np.array(list(s.child_extra.values()), np.uint64).reshape(-1, PTRS_PER_TABLE)]
            )
            teardown_arrays(memory, rows, np.array(list(s.child_pmds.values()), np.uint64), s.counts)
            after_teardown = dict.fromkeys(RSS_NAMES, 0)
            child = empty_mm()
        else:
            child = self.child_mm(stop_vma, child_rss, bool(kern["swapoff"]))
        parent = AddressSpace(parent_mm(self.mm, self.ppte, s), memory)
        table_stats = TableStats.concat(
            [
                kernel_table_stats(self.mm.table_index[fast_rows], fast_counts, FAST_COUNTS),
                self.slow.table_stats(),
                table_stats_of(s.table_rows),
            ]
        )
        wall = self.setup_s + launch_s + time.perf_counter() - t0
        return s.result(
            stopped,
            parent,
            child,
            child_rss,
            after_teardown,
            wall,
            backend,
            table_stats,
            trace_complete=not len(fast_rows) and not self.slow.ran,
        )


def fork_fast(
    space: AddressSpace,
    variant: str,
    kernels,
    backend: str,
    oracle: LockBreakOracle,
    plan_inj: InjectionPlan,
    fork_seq: int = 0,
    chunk_tables: int | None = None,
    in_place: bool = False,
) -> ForkResult:
    """Run one fork on the fast engine with the given kernels module. ``chunk_tables`` bounds the table rows one
    kernel launch sees (None: all at once); ``in_place``: see :class:`ForkJob`."""
    return ForkJob(space, variant, oracle, plan_inj, fork_seq, in_place).run(kernels, backend, chunk_tables)


class Batch:
    """Several jobs' state placed in one set of arrays: memory concatenated (pfns, folios and slots offset per
    job), tables and calls as segments of rows."""

    def __init__(self, jobs: list[ForkJob]):
        self.jobs = jobs
        self.mems = mems = [j.state.arrays() for j in jobs]
        off = lambda name, arrays: np.cumsum([0] + [a[name].shape[0] for a in arrays])  # noqa: E731
        self.page_off, self.folio_off, self.slot_off = (
            off(k, mems) for k in ("page_folio", "folio_order", "swap_count")
        )
        self.row_off = np.cumsum([0] + [j.mm.nr_tables for j in jobs])
        call_off = np.cumsum([0] + [j.nC for j in jobs])
        shift = {"page_folio": self.folio_off, "folio_first_pfn": self.page_off}
        self.mem = {
            name: np.concatenate([m[name] + shift[name][i] if name in shift else m[name] for i, m in enumerate(mems)])
            for name in mems[0]
        }
        tabs = [j.tables() for j in jobs]
        cat = lambda parts: np.concatenate(list(parts))  # noqa: E731
        self.tab = Tables(*(cat(t[k] for t in tabs) for k in range(len(Tables._fields))))._replace(
            row_lo=cat(t.row_lo + call_off[i] for i, t in enumerate(tabs)),
            row_hi=cat(t.row_hi + call_off[i] for i, t in enumerate(tabs)),
            ppte=cat(shift_entries(t.ppte, int(self.page_off[i]), int(self.slot_off[i])) for i, t in enumerate(tabs)),
        )
        self.tab = self.tab._replace(cpte=np.zeros_like(self.tab.ppte))
        groups = [j.calls.group() for j in jobs]
        self.calls = Calls(*(cat(g[k] for g in groups) for k in range(len(Calls._fields))))
        self.rows = cat(j.rows + self.row_off[i] for i, j in enumerate(jobs)).astype(np.int64)

    def split_back(self) -> None:
        """The written arrays back into each job's own (refcounts, mapcounts, flags, swap counts and tables)."""
        per = {
            "folio_refcount": self.folio_off,
            "page_mapcount": self.page_off,
            "page_flags": self.page_off,
            "swap_count": self.slot_off,
        }
        for i, (j, m) in enumerate(zip(self.jobs, self.mems)):
            for name, off in per.items():
                m[name][:] = self.mem[name][off[i] : off[i + 1]]
            r0, r1 = self.row_off[i], self.row_off[i + 1]
            j.ppte[:] = shift_entries(self.tab.ppte[r0:r1], -int(self.page_off[i]), -int(self.slot_off[i]))
            j.cpte[:] = shift_entries(self.tab.cpte[r0:r1], -int(self.page_off[i]), -int(self.slot_off[i]))
            j.cexists[:] = self.tab.cexists[r0:r1]


def fork_fast_batch(
    spaces,
    variant: str,
    kernels,
    backend: str,
    oracle: LockBreakOracle,
    fork_seq0: int = 0,
    chunk_tables: int | None = None,
) -> list[ForkResult]:
    """Fork independent address spaces (fork ``fork_seq0 + i`` each) with one combined launch of the kernels.

    Each space keeps its own state and results equal those of forking it alone. The combined launch holds every
    space's tables (segments of rows) and memory (pfns, folios and slots offset per space); forks that can stop
    early (xu-v1, hwpoison) are run one by one. Each result's ``engine_wall_s`` is its share of the batch.
    """
    plan_inj = InjectionPlan()
    jobs = [ForkJob(s, variant, oracle, plan_inj, fork_seq0 + i) for i, s in enumerate(spaces)]
    if not jobs:
        return []
    if any(j.can_stop for j in jobs):
        return [j.run(kernels, backend, chunk_tables) for j in jobs]
    t0 = time.perf_counter()
    b = Batch(jobs)
    v = jobs[0].v
    needs, counts = launch_chunked(
        kernels,
        MODE_CLASSIFY_COPY,
        b.rows,
        chunk_tables,
        variant_params(v),
        b.tab,
        b.calls,
        memory_arrays(b.mem),
        jobs[0].nb,
    )
    b.split_back()
    launch_s = (time.perf_counter() - t0) / len(jobs)
    out = []
    for i, j in enumerate(jobs):
        sel = (b.rows >= b.row_off[i]) & (b.rows < b.row_off[i + 1])
        out.append(j.finish(needs[sel], counts[sel], kernels, backend, chunk_tables, launch_s))
    return out


def run_python_loop(fc, plan: ForkPlan, slow_calls: np.ndarray, nC: int) -> tuple[tuple, int]:
    """Copy the given calls with the reference state machine, in order. Returns ((outcome, oops, enomem), the
    index of the call where the fork stopped, ``nC`` when it did not)."""
    for c in slow_calls.tolist():
        vma = fc.parent.vmas[int(plan.call_vma[c])]
        try:
            copy_table(fc, vma, int(plan.call_table[c]), int(plan.call_start[c]), int(plan.call_end[c]))
        except (CopyFailed, Oops) as stop:
            return fork_stopped(fc, stop), c
    return ("ok", None, None), nC


def parent_mm(mm: MM, ppte: np.ndarray, s: WorkState) -> MM:
    """The parent after the fork: working rows, tables added by THP splits, the remaining huge PMDs."""
    index, pte = merge_tables(mm.table_index, ppte, s.parent_extra)
    pmds = sorted(s.parent_pmds)
    return MM(
        vma_start=mm.vma_start,
        vma_end=mm.vma_end,
        vma_flags=mm.vma_flags,
        vma_backing=mm.vma_backing,
        vma_anon_vma=mm.vma_anon_vma,
        table_index=index,
        pte=pte,
        pmd_index=np.array(pmds, np.int64),
        pmd=np.array([s.parent_pmds[t] for t in pmds], np.uint64),
        rss=np.array(s.parent_rss, np.int64),
        has_pinned=bool(s.parent_has_pinned),
        on_swapoff_list=bool(s.parent_on_swapoff),
    )


def merge_tables(index: np.ndarray, pte: np.ndarray, extra: dict) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a pte array plus extra tables (from THP splits), sorted by table number."""
    if not extra:
        return index, pte
    xp = B.array_module(pte)
    index = np.concatenate([index, np.array(sorted(extra), np.int64)])
    more = np.array([extra[t] for t in sorted(extra)], np.uint64).reshape(-1, PTRS_PER_TABLE)
    pte = xp.concatenate([pte, xp.asarray(more)])
    order = np.argsort(index, kind="stable")
    return index[order], pte[xp.asarray(order)]


def teardown_arrays(memory: Memory, child_rows: np.ndarray, child_pmds: np.ndarray, counts: dict) -> None:
    """Spec 5.4 on arrays, in place: every child entry drops what it holds; early copies are freed."""
    vals = child_rows.reshape(-1)
    vals = vals[vals != 0]
    counts["teardown.pte"] += int(vals.size) + int(child_pmds.size)
    pfns = decode.page_pfns(vals)
    np.subtract.at(memory.page_mapcount, pfns, 1)
    folios = memory.page_folio[pfns]
    np.subtract.at(memory.folio_refcount, folios, 1)
    if child_pmds.size:
        hf = memory.page_folio[decode.offsets(child_pmds)]
        np.subtract.at(memory.folio_refcount, hf, 1)
        np.subtract.at(memory.folio_pmd_mapcount, hf, 1)
    freed = np.unique(folios[memory.folio_refcount[folios] == 0])
    memory.folio_flags[freed] |= np.uint8(FOLIO_FREED)
    counts["teardown.free"] += int(freed.size)
    np.subtract.at(memory.swap_count, decode.swap_slots(vals), 1)
