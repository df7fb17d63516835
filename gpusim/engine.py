"""The fast fork engine: per-PTE kernels for the common work, the host loop for the rest (architecture rule 3).

Steps of one fork:

1. :func:`gpusim.plan.plan_fork` lists the calls (one per table of each copied VMA).
2. ``fork_tables`` (one launch, or table-aligned chunks) classifies every table: does a PTE in it need the host
   loop (an early copy may be due, a swap-count continuation may be needed, or its handling could depend on the
   order of the walk; :mod:`gpusim.kernels.rules`)? Tables that do not are copied in the same pass. THP tables,
   tables whose ``ptetable`` allocation is injected to fail, and every table from the first one where an injected
   window event can act are host tables too.
3. The host loop (:mod:`gpusim.hostloop`) copies the host tables in address order with the reference state machine.
   A fast table and a host table never depend on each other's order, so the fast tables may be copied first. Only
   a fork that can stop early (failure injections, xu-v1's oops, hwpoison) must know where it stops before copying
   fast tables: then the launch only classifies, the host loop runs, and a second launch copies the fast tables
   before the stopping call.
4. Counts are summed, a half-built child is torn down (ENOMEM), and the final arrays are assembled.

Backends differ only in the kernels module (and, for CUDA, in where the arrays live); see :mod:`gpusim.backend`.
"""

from __future__ import annotations

import math
import time

import numpy as np

from gpusim import decode
from gpusim.hostloop import host_context, machine_arrays
from gpusim.kernels.cpu import shift_entries
from gpusim.kernels.rules import (
    FAST_COUNTS, MODE_CLASSIFY, MODE_CLASSIFY_COPY, MODE_COPY, NB_ALWAYS, NB_BERN, NB_EVERY, NB_LIST, NB_NEVER,
)
from gpusim.oracle import InjectionPlan, LockBreakOracle
from gpusim.plan import plan_fork
from gpusim.reference import Oops, _Stop, copy_table, table_stats_of
from gpusim.result import TABLE_EVENTS, ForkResult, TableStats, finish_counts, new_counts, rss_dict
from gpusim.kernels.flags import FOLIO_FREED, PAGE_HWPOISON, PTRS_PER_TABLE
from gpusim.state import MM, AddressSpace, Memory, copy_state, digest, empty_mm
from gpusim.variants import get_variant

NB_MODES = {"never": NB_NEVER, "always": NB_ALWAYS, "every": NB_EVERY, "bern": NB_BERN, "list": NB_LIST}


def oracle_params(oracle: LockBreakOracle) -> tuple:
    pairs = sorted(oracle.pairs)
    return (NB_MODES[oracle.mode], max(1, oracle.n), np.uint64(min(oracle.p_q32, (1 << 64) - 1)),
            np.uint64(oracle.seed & ((1 << 64) - 1)),
            np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64))


class CallIndex:
    """Calls of a plan mapped onto the parent's table rows."""

    def __init__(self, mm: MM, plan):
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


def launch_chunked(kernels, mode: int, which: np.ndarray, chunk_tables: int | None, rows: dict, calls: tuple,
                   variant_id: int, large_order: int, mem: dict, nb: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``kernels.fork_tables`` over the table rows ``which``, in table-aligned chunks of at most ``chunk_tables``
    rows: each launch sees only its slice of the per-row arrays (``rows``: tables, call ranges, parent and child
    entries, child-table flags, per-row has_pinned and fork_seq), which is what a device holds at a time.
    ``calls`` = (call_start, call_end, call_vmaflags, call_first); ``mem`` the memory arrays by field name.
    Returns (needs_host, counts) aligned with ``which``."""
    T = rows["ppte"].shape[0]
    needs = np.zeros(which.shape[0], bool)
    counts = np.zeros((which.shape[0], len(FAST_COUNTS)), np.int64)
    step = chunk_tables or max(1, T)
    for lo in range(0, max(1, T), step):
        hi = min(T, lo + step)
        sel = np.flatnonzero((which >= lo) & (which < hi))
        if sel.size == 0:
            continue
        r = {k: v[lo:hi] for k, v in rows.items()}
        needs[sel], counts[sel] = kernels.fork_tables(*kernel_args(mode, which[sel] - lo, r, calls, variant_id,
                                                                   large_order, mem, nb))
    return needs, counts


def kernel_args(mode: int, which, rows: dict, calls: tuple, variant_id: int, large_order: int, mem: dict,
                nb: tuple) -> tuple:
    """The positional arguments of ``fork_tables`` (every backend's), from the per-row arrays, the call arrays,
    the memory arrays and the oracle parameters (see :func:`launch_chunked`)."""
    r = rows
    return (mode, which, r["table_index"], r["row_lo"], r["row_hi"], *calls, r["ppte"], r["cpte"], r["cexists"],
            variant_id, large_order, r["row_has_pinned"], mem["page_folio"], mem["folio_order"], mem["folio_refcount"],
            mem["folio_pincount"], mem["folio_true_pins"], mem["folio_flags"], mem["folio_first_pfn"],
            mem["page_mapcount"], mem["page_flags"], mem["swap_count"], mem["swap_levels"], nb[0], nb[1], nb[2],
            nb[3], r["row_fork_seq"], nb[4], nb[5])


class ForkJob:
    """One fork on the fast engine: its working arrays, plan, host loop and result assembly.

    A job is launched on its own (:meth:`run`) or with others in one combined launch (:func:`fork_fast_batch`).
    """

    def __init__(self, space: AddressSpace, variant: str, oracle: LockBreakOracle, plan_inj: InjectionPlan,
                 fork_seq: int = 0):
        self.space, self.variant, self.oracle, self.plan_inj, self.fork_seq = space, variant, oracle, plan_inj, fork_seq
        mm = self.mm = space.mm
        self.v = get_variant(variant)
        self.work = copy_state(space.memory)        # "put": the engine's own copy of the state (not timed)
        self.ppte = mm.pte.copy()
        self.cpte = np.empty_like(self.ppte)
        self.cpte.fill(0)                           # touch the child's tables now, not inside the timed kernels
        self.cexists = np.zeros(mm.nr_tables, np.bool_)
        t0 = time.perf_counter()
        self.plan = plan_fork(mm)
        self.calls = CallIndex(mm, self.plan)
        self.nC = self.plan.nr_calls
        self.first_inj = first_window_call(plan_inj, self.calls)
        self.rows = np.flatnonzero(self.calls.row_has_calls & (self.calls.row_lo < self.first_inj)).astype(np.int64)
        self.fail_rows = np.array([r for r in self.rows.tolist() if plan_inj.alloc_fails(
            fork_seq, int(self.plan.call_start[self.calls.row_lo[r]]), "ptetable", 1)], np.int64) \
            if plan_inj.has_failures() else np.zeros(0, np.int64)
        # Without failure injections, hwpoison or the v1 oops nothing can stop the fork early, so the fast tables
        # can be copied in the same pass that classifies them; otherwise classify, run the host loop, then copy
        # the fast tables before the stopping call.
        self.can_stop = (plan_inj.has_failures() or self.v.can_oops or (
            self.v.hwpoison_fails_copy and bool((self.work.page_flags & PAGE_HWPOISON).any())))
        self.fc = host_context(space, self.work, self.ppte, self.cpte, self.cexists, variant, oracle, plan_inj,
                               fork_seq)
        self.nb = oracle_params(oracle)
        self.setup_s = time.perf_counter() - t0

    def launch(self, kernels, mode: int, which: np.ndarray, chunk_tables: int | None):
        """The kernels over this fork's table rows ``which`` (see :func:`launch_chunked`)."""
        mm, calls, plan, T = self.mm, self.calls, self.plan, self.mm.nr_tables
        rows = {"table_index": mm.table_index, "row_lo": calls.row_lo, "row_hi": calls.row_hi, "ppte": self.ppte,
                "cpte": self.cpte, "cexists": self.cexists, "row_has_pinned": np.full(T, bool(mm.has_pinned)),
                "row_fork_seq": np.full(T, self.fork_seq, np.int64)}
        shared = (plan.call_start, plan.call_end, calls.call_vmaflags, plan.table_first_call)
        return launch_chunked(kernels, mode, which, chunk_tables, rows, shared, self.v.id,
                              self.v.large_pin_order, machine_arrays(self.fc.m), self.nb)

    def run(self, kernels, backend: str, chunk_tables: int | None = None) -> tuple[ForkResult, int]:
        t0 = time.perf_counter()
        mode = MODE_CLASSIFY if self.can_stop else MODE_CLASSIFY_COPY
        needs, fast_counts = self.launch(kernels, mode, self.rows, chunk_tables)
        return self.finish(needs, fast_counts, kernels, backend, chunk_tables, time.perf_counter() - t0)

    def finish(self, needs, fast_counts, kernels, backend: str, chunk_tables, launch_s: float) -> tuple[ForkResult,
                                                                                                       int]:
        """After the first launch: the host loop, the copy of the fast tables (when the fork can stop early), the
        counts and the final state."""
        t0 = time.perf_counter()
        mm, calls, plan, fc, rows, nC, first_inj = (self.mm, self.calls, self.plan, self.fc, self.rows, self.nC,
                                                    self.first_inj)
        ppte, cpte, cexists = self.ppte, self.cpte, self.cexists
        host_row = np.zeros(mm.nr_tables, bool)
        host_row[rows[np.asarray(needs)]] = True
        host_row[self.fail_rows] = True
        is_host_call = calls.call_row < 0                               # THP tables
        nonhuge = ~is_host_call
        is_host_call[nonhuge] = host_row[calls.call_row[nonhuge]]
        host_calls = np.flatnonzero(is_host_call)
        # Host tables before the first injected window; then (events may act on any later table) every table from
        # that window on, through the host loop, in address order.
        outcome, oops, enomem, stop = run_host_loop(fc, plan, host_calls[host_calls < first_inj], nC)
        fast_rows = rows[~host_row[rows]]
        if self.can_stop:
            fast_rows = fast_rows[calls.row_lo[fast_rows] < stop]
            _, fast_counts = self.launch(kernels, MODE_COPY, fast_rows, chunk_tables)
        else:
            fast_counts = np.asarray(fast_counts)[~host_row[rows]]
        if outcome == "ok" and first_inj < nC:
            outcome, oops, enomem, stop = run_host_loop(fc, plan, np.arange(first_inj, nC), nC)
        fast_counts = np.asarray(fast_counts).reshape(len(fast_rows), len(FAST_COUNTS))
        fast = dict(zip(FAST_COUNTS, fast_counts.sum(axis=0).tolist()))
        table_stats = TableStats.concat([fast_table_stats(mm.table_index[fast_rows], fast_counts),
                                         table_stats_of(fc.table_rows)])

        counts = new_counts()
        counts["fork.base"] = counts["fork.mm"] = 1
        stop_vma = int(plan.call_vma[stop]) if stop < nC else mm.nr_vmas - 1
        counts.update(plan.counts_upto(stop_vma))
        for name, val in fc.counts.items():
            if name not in ("fork.base", "fork.mm") and not name.startswith("vma.") and name != "hugetlb_skipped":
                counts[name] += val
        for name in FAST_COUNTS:
            if name in counts:
                counts[name] += fast[name]
        counts["restart.lb"] += fast["lock_breaks"]
        child_rss = [fc.child.rss[i] + fast[f"rss.{n}"] for i, n in enumerate(("anon", "file", "shmem", "swapents"))]
        child_extra = fc.child.tables.extra                  # child tables of split THPs
        child_tables = np.concatenate([mm.table_index[cexists],
                                       np.array(sorted(set(fc.child.pmds) | set(child_extra)), np.int64)])
        counts["table.upper_alloc"] = len(np.unique(child_tables >> 9)) + len(np.unique(child_tables >> 18))

        arrays = machine_arrays(fc.m)
        memory = Memory(**arrays, next_content=fc.m.next_content)
        after_teardown = None
        if outcome == "enomem":
            rows = np.concatenate([cpte[cexists], np.array(list(child_extra.values()), np.uint64).reshape(-1, 512)])
            teardown_arrays(memory, rows, np.array(list(fc.child.pmds.values()), np.uint64), counts)
            after_teardown = rss_dict([0, 0, 0, 0])
            child = empty_mm()
        else:
            if cexists.all():
                index, pte = merge_tables(mm.table_index, cpte, child_extra)
            else:
                index, pte = merge_tables(mm.table_index[cexists], cpte[cexists], child_extra)
            child = MM(**plan.child_mm_vmas(mm, stop_vma), table_index=index, pte=pte,
                       pmd_index=np.array(sorted(fc.child.pmds), np.int64),
                       pmd=np.array([fc.child.pmds[t] for t in sorted(fc.child.pmds)], np.uint64),
                       rss=np.array(child_rss, np.int64), has_pinned=False,
                       on_swapoff_list=bool(fc.child.on_swapoff_list or fast["swapoff"]))
        parent = AddressSpace(parent_mm(mm, ppte, fc), memory)
        wall = self.setup_s + launch_s + time.perf_counter() - t0
        result = ForkResult(
            outcome=outcome, variant=self.variant, backend=backend, parent=parent, child=child,
            counts=finish_counts(counts), child_rss=rss_dict(child_rss), child_rss_after_teardown=after_teardown,
            oops=oops, enomem=enomem, unfired=self.plan_inj.unfired(), ignored_events=list(fc.ignored),
            digest=digest(parent.mm, child, memory), engine_wall_s=wall, nr_ptes=self.space.nr_ptes,
            trace=fc.trace, trace_complete=not len(fast_rows), table_stats=table_stats,
        )
        return result, self.space.memory.nr_pages


def fork_fast(space: AddressSpace, variant: str, kernels, backend: str, oracle: LockBreakOracle,
              plan_inj: InjectionPlan, fork_seq: int = 0, chunk_tables: int | None = None) -> tuple[ForkResult, int]:
    """Run one fork on the fast engine with the given kernels module. Returns (result, first new pfn).

    ``chunk_tables`` bounds the table rows one kernel launch sees (None: all at once).
    """
    return ForkJob(space, variant, oracle, plan_inj, fork_seq).run(kernels, backend, chunk_tables)


def fork_fast_batch(spaces, variant: str, kernels, backend: str, oracle: LockBreakOracle, fork_seq0: int = 0,
                    chunk_tables: int | None = None) -> list[tuple[ForkResult, int]]:
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
    n = len(jobs)
    mems = [machine_arrays(j.fc.m) for j in jobs]
    page_off = np.cumsum([0] + [m["page_folio"].shape[0] for m in mems])
    folio_off = np.cumsum([0] + [m["folio_order"].shape[0] for m in mems])
    slot_off = np.cumsum([0] + [m["swap_count"].shape[0] for m in mems])
    row_off = np.cumsum([0] + [j.mm.nr_tables for j in jobs])
    call_off = np.cumsum([0] + [j.nC for j in jobs])
    comb = {}
    for name in mems[0]:
        parts = [m[name] for m in mems]
        if name == "page_folio":
            parts = [p + folio_off[i] for i, p in enumerate(parts)]
        elif name == "folio_first_pfn":
            parts = [p + page_off[i] for i, p in enumerate(parts)]
        comb[name] = np.concatenate(parts)
    ppte = np.concatenate([shift_entries(j.ppte, int(page_off[i]), int(slot_off[i])) for i, j in enumerate(jobs)])
    cpte = np.zeros_like(ppte)
    cexists = np.zeros(ppte.shape[0], np.bool_)
    cat = lambda f: np.concatenate([f(i, j) for i, j in enumerate(jobs)])          # noqa: E731
    row_arrays = {
        "table_index": cat(lambda i, j: j.mm.table_index), "row_lo": cat(lambda i, j: j.calls.row_lo + call_off[i]),
        "row_hi": cat(lambda i, j: j.calls.row_hi + call_off[i]), "ppte": ppte, "cpte": cpte, "cexists": cexists,
        "row_has_pinned": cat(lambda i, j: np.full(j.mm.nr_tables, bool(j.mm.has_pinned))),
        "row_fork_seq": cat(lambda i, j: np.full(j.mm.nr_tables, j.fork_seq, np.int64))}
    shared = (cat(lambda i, j: j.plan.call_start), cat(lambda i, j: j.plan.call_end),
              cat(lambda i, j: j.calls.call_vmaflags), cat(lambda i, j: j.plan.table_first_call))
    rows = cat(lambda i, j: j.rows + row_off[i]).astype(np.int64)
    needs, counts = launch_chunked(kernels, MODE_CLASSIFY_COPY, rows, chunk_tables, row_arrays, shared,
                                   jobs[0].v.id, jobs[0].v.large_pin_order, comb, jobs[0].nb)
    # back into each job's own arrays (the kernels write refcounts, mapcounts, flags, swap counts and tables)
    for i, (j, m) in enumerate(zip(jobs, mems)):
        for name in ("folio_refcount", "page_mapcount", "page_flags", "swap_count"):
            lo_, hi_ = {"folio_refcount": folio_off, "page_mapcount": page_off, "page_flags": page_off,
                        "swap_count": slot_off}[name][i:i + 2]
            m[name][:] = comb[name][lo_:hi_]
        r0, r1 = row_off[i], row_off[i + 1]
        j.ppte[:] = shift_entries(ppte[r0:r1], -int(page_off[i]), -int(slot_off[i]))
        j.cpte[:] = shift_entries(cpte[r0:r1], -int(page_off[i]), -int(slot_off[i]))
        j.cexists[:] = cexists[r0:r1]
    launch_s = (time.perf_counter() - t0) / n
    out = []
    for i, j in enumerate(jobs):
        sel = (rows >= row_off[i]) & (rows < row_off[i + 1])
        out.append(j.finish(needs[sel], counts[sel], kernels, backend, chunk_tables, launch_s))
    return out


def fast_table_stats(tables: np.ndarray, fast_counts: np.ndarray) -> TableStats:
    """:class:`TableStats` of tables the kernels copied, from their count rows (``FAST_COUNTS`` columns)."""
    events = np.zeros((len(tables), len(TABLE_EVENTS)), np.int64)
    for j, name in enumerate(TABLE_EVENTS):
        if name in FAST_COUNTS:
            events[:, j] = fast_counts[:, FAST_COUNTS.index(name)]
    return TableStats(np.asarray(tables, np.int64), fast_counts[:, FAST_COUNTS.index("pass")].astype(np.int64),
                      events)


def run_host_loop(fc, plan, host_calls: np.ndarray, nC: int) -> tuple:
    """Copy the given calls with the reference state machine, in order. Returns (outcome, oops, enomem, stop),
    ``stop`` being the index of the call where the fork stopped (``nC`` when it did not)."""
    for c in host_calls.tolist():
        vma = fc.parent.vmas[int(plan.call_vma[c])]
        try:
            copy_table(fc, vma, int(plan.call_table[c]), int(plan.call_start[c]), int(plan.call_end[c]))
        except _Stop as s:
            point, n = s.c.last_failed or ("unknown", 0)
            return "enomem", None, {"call_start": s.c.call_start, "point": point, "occurrence": n}, c
        except Oops as o:
            cs = fc.trace.calls[-1].call_start if fc.trace.calls else -1
            return "oops", {"function": o.function, "addr": o.addr, "reason": o.reason, "call_start": cs}, None, c
    return "ok", None, None, nC


def parent_mm(mm: MM, ppte: np.ndarray, fc) -> MM:
    """The parent after the fork: working rows, tables added by THP splits, the remaining huge PMDs."""
    index, pte = merge_tables(mm.table_index, ppte, fc.parent.tables.extra)
    pmds = sorted(fc.parent.pmds)
    return MM(vma_start=mm.vma_start, vma_end=mm.vma_end, vma_flags=mm.vma_flags, vma_backing=mm.vma_backing,
              vma_anon_vma=mm.vma_anon_vma, table_index=index, pte=pte, pmd_index=np.array(pmds, np.int64),
              pmd=np.array([fc.parent.pmds[t] for t in pmds], np.uint64), rss=np.array(fc.parent.rss, np.int64),
              has_pinned=bool(fc.parent.has_pinned), on_swapoff_list=bool(fc.parent.on_swapoff_list))


def merge_tables(index: np.ndarray, pte: np.ndarray, extra: dict) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a pte array plus extra tables (from THP splits), sorted by table number."""
    if not extra:
        return index, pte
    index = np.concatenate([index, np.array(sorted(extra), np.int64)])
    pte = np.concatenate([pte, np.array([extra[t] for t in sorted(extra)], np.uint64).reshape(-1, PTRS_PER_TABLE)])
    order = np.argsort(index, kind="stable")
    return index[order], pte[order]


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

