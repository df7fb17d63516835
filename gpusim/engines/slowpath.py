"""The compiled slow path's driver (architecture rule 3): the tables the fast path leaves, in address order, by the
kernels' ``slow_plan`` and ``slow_tables`` (:mod:`gpusim.kernels.slowpath`: each variant's ``copy_pte_range`` state
machine and ``copy_huge_pmd``, ported from the reference), then the numbering of their new pages in address order
(:mod:`gpusim.engines.earlycopy`). What it writes goes into the fast engine's working state
(:class:`~gpusim.engines.work.WorkState`); its count rows give the fork's totals and per-table statistics.
"""

from __future__ import annotations

import numpy as np

from gpusim.base import backend as B
from gpusim.engines import earlycopy
from gpusim.engines.work import WorkState
from gpusim.kernels.args import HugeArrays, OracleParams, SlowArrays, Tables, VariantParams, memory_arrays
from gpusim.kernels.fields import MEMORY_FIELDS
from gpusim.kernels.flags import EHWPOISON, PTRS_PER_TABLE
from gpusim.kernels.slowpath import (
    CLAIM_DTYPE,
    CLAIM_HI,
    CLAIM_LO,
    ENOSPC,
    HUGE_SHARED,
    HUGE_SPLIT,
    OOPS,
    SLOW_COUNTS,
    ST_OOPS_ADDR,
)
from gpusim.model import decode
from gpusim.model.plan import ForkPlan
from gpusim.model.result import TABLE_EVENTS, TableStats
from gpusim.model.state import full


class CompiledSlowPath:
    """The compiled slow path of one fork's slow-path tables (the kernels' ``slow_plan`` and ``slow_tables``, then
    the numbering of new pages in address order, :mod:`gpusim.engines.earlycopy`): it writes the working state
    (``state``, a :class:`~gpusim.engines.work.WorkState`), keeps what it did to THPs there with the trace's records,
    and keeps its count rows (:meth:`totals`, :meth:`table_stats`)."""

    def __init__(self, state: WorkState, plan: ForkPlan, calls, vp: VariantParams, nb: OracleParams, fork_seq: int, xp):
        self.state, self.plan, self.calls, self.vp, self.nb, self.xp = state, plan, calls, vp, nb, xp
        self.mm, self.nC, self.fork_seq = state.space.mm, plan.nr_calls, fork_seq
        self.tables_done: list[np.ndarray] = []  # the table numbers of the items run, and their count rows
        self.count_rows: list[np.ndarray] = []
        self.count_totals: list[np.ndarray] = []

    @property
    def ran(self) -> bool:
        return bool(self.count_totals)

    def totals(self) -> np.ndarray:
        """The slow path's counts summed over everything it ran (``SLOW_COUNTS``)."""
        return np.sum(self.count_totals, axis=0) if self.count_totals else np.zeros(len(SLOW_COUNTS), np.int64)

    def table_stats(self) -> TableStats:
        tables = np.concatenate(self.tables_done) if self.tables_done else np.zeros(0, np.int64)
        rows = np.concatenate(self.count_rows) if self.count_rows else np.zeros((0, len(SLOW_COUNTS)))
        return kernel_table_stats(tables, rows, SLOW_COUNTS)

    def huge_rows(self, pmd_index) -> tuple[Tables, HugeArrays]:
        """The THPs as rows for the slow path: a table group (filled when a PMD is split) and their PMDs."""
        mm, H = self.mm, len(self.mm.pmd_index)
        call = np.full(H, -1, np.int64)
        huge_calls = np.flatnonzero(self.calls.call_row < 0)
        call[np.searchsorted(mm.pmd_index, self.plan.call_table[huge_calls])] = huge_calls
        htab = Tables(
            pmd_index,
            call,
            call + 1,
            np.zeros((H, PTRS_PER_TABLE), np.uint64),
            np.zeros((H, PTRS_PER_TABLE), np.uint64),
            np.zeros(H, np.bool_),
            np.full(H, bool(mm.has_pinned)),
            np.full(H, self.fork_seq, np.int64),
        )
        return htab, HugeArrays(B.to_host(mm.pmd).copy(), np.zeros(H, np.uint64), np.zeros(H, np.int8))

    def run(self, kernels, order: np.ndarray, tab: Tables, calls, pmd_index, maybe, can_stop) -> tuple[tuple, int]:
        """The items of ``order`` (PTE rows, and ``-1 - row`` for THPs, in address order) by the compiled slow
        path: planned (bounds, which items commute), run (the independent ones in parallel), their new pages
        numbered in address order (:mod:`gpusim.engines.earlycopy`); counts, early copies and THP results are kept for
        the job's merge of the counts, the final states and the invariant checker."""
        m = self.state.memory
        arrays = {name: m[name].a for name in MEMORY_FIELDS}  # with the room reserved for early copies
        nf, npg = len(m["folio_order"]), len(m["page_folio"])
        htab, huge = self.huge_rows(pmd_index)
        mem, xp = memory_arrays(arrays), self.xp
        nobj = nf + len(m["swap_count"])  # the plan's claims, an entry per folio and swap slot (only forks with slow
        claims = (full(nobj, CLAIM_LO, CLAIM_DTYPE, xp), full(nobj, CLAIM_HI, CLAIM_DTYPE, xp))  # items pay for them)
        bounds, dependent = kernels.slow_plan(order, maybe, can_stop, tab, huge, calls, mem, *claims)
        cap = len(m["page_folio"].a) - npg
        if int(bounds.sum()) > cap:
            raise RuntimeError("the slow path's items need more room for early copies than the engine reserved")
        seg, states = earlycopy.item_states(bounds, nf, npg)
        sp = SlowArrays(
            arrays["page_content"],
            arrays["folio_pmd_mapcount"],
            states,
            xp.empty((cap, 4), np.int64),
            xp.empty((cap, 2), np.int64),
            np.zeros((len(order), 4), np.int64),
        )
        counts, status, call = kernels.slow_tables(order, dependent, self.vp, tab, htab, huge, calls, mem, self.nb, sp)
        stopped = np.flatnonzero(status)
        i = int(stopped[0]) if len(stopped) else -1
        if i >= 0 and not dependent[i]:
            raise RuntimeError("an item of the slow path run in parallel stopped the fork (a bug of the engine)")
        compiled = getattr(kernels, "number_in_address_order", None)  # the CPU's pass; the CUDA backends have none:
        if compiled is not None:  # the same moves as array operations where the state is (gpusim.engines.earlycopy)
            total, ni, nd = compiled(nf, npg, seg, order, mem, sp, tab.cpte, htab.cpte)
        else:
            total, ni, nd = earlycopy.number_in_address_order(nf, npg, seg, order, mem, sp, tab.cpte, htab.cpte, xp)
        for name in MEMORY_FIELDS:
            if not name.startswith("swap_"):
                m[name].grow_to((nf if name.startswith("folio_") else npg) + total)
        done = order[: len(order) if i < 0 else i + 1]
        self.take_huge_results(htab, huge, -done[done < 0] - 1)
        self.keep_counts(done, htab, huge, counts[: len(done)])
        self.state.trace.compiled_installs.append(sp.installs[:ni, [3, 0, 1, 2]])
        self.state.trace.compiled_duplicates.append(sp.duplicates[:nd].copy())
        if i < 0:
            return self.outcome(0, -1, 0)
        return self.outcome(int(status[i]), int(call[i]), int(states[i, ST_OOPS_ADDR]))

    def keep_counts(self, done: np.ndarray, htab: Tables, huge: HugeArrays, counts: np.ndarray) -> None:
        """The count rows of the items ``done``: totals, and per table (a shared PMD has no table)."""
        thp = done < 0
        tables = np.zeros(len(done), np.int64)
        tables[~thp] = self.mm.table_index[done[~thp]]
        tables[thp] = htab.table_index[-done[thp] - 1]
        stats = ~thp
        stats[thp] = huge.state[-done[thp] - 1] == HUGE_SPLIT
        self.tables_done.append(tables[stats])
        self.count_rows.append(counts[stats])
        self.count_totals.append(counts.sum(axis=0))

    def take_huge_results(self, htab: Tables, huge: HugeArrays, hs: np.ndarray) -> None:
        """What the slow path did to the THPs ``hs``, into the host state the final arrays are assembled from: a
        shared PMD (the parent's, write-protected, and the child's), or a split one (the parent's new table and,
        once copied, the child's), with the trace's records the invariant checker reads. The shares (every THP of
        most forks) are taken as arrays, in ``hs``'s order."""
        s = self.state
        if not len(hs):
            return
        tables, state, pmd = htab.table_index[hs], huge.state[hs], huge.pmd[hs]  # (host arrays: huge_rows)
        folios = s.memory["page_folio"].array()[decode.offsets(pmd)]
        shared = state == HUGE_SHARED
        t_shared = tables[shared].tolist()
        s.parent_pmds.update(zip(t_shared, pmd[shared].tolist()))
        s.child_pmds.update(zip(t_shared, huge.child_pmd[hs][shared].tolist()))
        s.trace.pmd_shares.extend(zip(t_shared, folios[shared].tolist()))
        split = state == HUGE_SPLIT
        for h, t, f in zip(hs[split].tolist(), tables[split].tolist(), folios[split].tolist()):
            del s.parent_pmds[t]
            s.parent_extra[t] = htab.ppte[h].tolist()
            if htab.cexists[h]:
                s.child_extra[t] = htab.cpte[h].tolist()
            s.trace.splits.append((t, f))

    def outcome(self, st: int, c: int, oops_addr: int) -> tuple[tuple, int]:
        """(outcome, oops, enomem) of the slow path's status ``st`` at call ``c`` (an oops at ``oops_addr``), and
        the stopping call."""
        if st == 0:
            return ("ok", None, None), self.nC
        if st == ENOSPC:
            raise RuntimeError("the compiled slow path ran out of room for early copies (a bug of the engine's bound)")
        call_start = int(self.plan.call_start[c])
        if st > 0:
            function, reason = OOPS[st]
            return (
                "oops",
                {"function": function, "addr": oops_addr, "reason": reason, "call_start": call_start},
                None,
            ), int(c)
        point = "hwpoison" if st == EHWPOISON else "unknown"
        enomem = {"call_start": call_start, "point": point, "occurrence": 1 if st == EHWPOISON else 0}
        return ("enomem", None, enomem), int(c)


def kernel_table_stats(tables: np.ndarray, count_rows: np.ndarray, columns: tuple) -> TableStats:
    """:class:`TableStats` of tables the kernels copied, from their count rows (``columns``: ``FAST_COUNTS`` or
    ``SLOW_COUNTS``)."""
    events = np.zeros((len(tables), len(TABLE_EVENTS)), np.int64)
    for j, name in enumerate(TABLE_EVENTS):
        if name in columns:
            events[:, j] = count_rows[:, columns.index(name)]
    return TableStats(np.asarray(tables, np.int64), count_rows[:, columns.index("pass")].astype(np.int64), events)
