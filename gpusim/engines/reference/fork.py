"""``dup_mmap`` and ``copy_page_range``: the walk over the VMAs and tables in address order, each call through its
variant's state machine, the teardown of a half-built child, and :func:`fork_reference`, the reference engine's
entry point.
"""

from __future__ import annotations

import time

from gpusim.engines.context import CopyFailed, ForkContext, MMState, Oops, VmaView, fork_stopped, table_stats_of
from gpusim.engines.reference import lazy
from gpusim.engines.reference.context import CopyContext
from gpusim.engines.reference.huge import copy_huge_pmd_first
from gpusim.engines.reference.linux_5_8 import copy_pte_range_linux_5_8
from gpusim.engines.reference.linux_5_10 import copy_pte_range_linux_5_10
from gpusim.engines.reference.linux_6_18 import copy_pte_range_linux_6_18
from gpusim.engines.reference.xu import copy_pte_range_xu_v1, copy_pte_range_xu_v1_oleg
from gpusim.kernels import pte as P
from gpusim.kernels.flags import FOLIO_FREED, PTRS_PER_TABLE
from gpusim.kernels.rules import call_frame_breaks
from gpusim.model.oracle import InjectionPlan, LockBreakOracle
from gpusim.model.plan import VMA_COUNT_NAMES, ForkPlan, plan_fork
from gpusim.model.result import TABLE_EVENTS, ForkResult, rss_dict
from gpusim.model.state import AddressSpace
from gpusim.model.variants import LINUX_5_8, LINUX_5_10, LINUX_6_18, XU_V1, XU_V1_OLEG

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
    base = PTRS_PER_TABLE * c.t
    fc.counts["pte.frame_break"] += call_frame_breaks(fc.parent.tables[c.t], c.call_start - base, c.end - base)
    fc.trace.calls.append(c.rec)
    ret = COPY_PTE_RANGE[fc.v.machine](c, c.call_start, c.end)
    if c.prealloc is not None:
        c.rec.owned_at_return.append(f"prealloc pfn {c.prealloc}")
    if c.d is not None and (c.d.cow_new_page is not None or c.d.cow_old_page is not None):
        c.rec.owned_at_return.append(f"copy_mm_data {c.d}")
    c.rec.result = ret
    return ret


def copy_table(fc: ForkContext, vma: VmaView, t: int, start: int, end: int) -> CopyContext:
    """One call of ``copy_page_range``: ``copy_huge_pmd`` where the parent has a huge PMD (and, after a split,
    ``copy_pte_range``), else ``copy_pte_range``. Raises :class:`CopyFailed` on ENOMEM."""
    c = CopyContext(fc, vma, t, start, end)
    if copy_huge_pmd_first(c):
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


def dup_mmap(fc: ForkContext, plan: ForkPlan | None = None) -> tuple[str, dict | None, dict | None]:
    """Duplicate the parent's VMAs into the child and copy their page tables (``copy_page_range`` per VMA).

    Returns (outcome, oops, enomem). The caller tears the child down after ENOMEM (:func:`teardown`).
    """
    plan = plan or plan_fork(fc.space.mm)
    fork_table = copy_table
    if fc.v.lazy:  # spec 12: what the design does with a whole table, copy_table where it copies
        lazy.check_layout(fc, plan)
        design = lazy.FORK_TABLE[fc.v.table_fork]

        def fork_table(fc, vma, t, start, end):
            design(fc, vma, t, start, end, copy_table)

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
                fork_table(fc, vma, int(plan.call_table[nxt]), int(plan.call_start[nxt]), int(plan.call_end[nxt]))
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
    fc.store = lazy.TableStore()
    lazy.watch_events(fc)
    stopped = dup_mmap(fc)
    child_rss, after_teardown = list(fc.child.rss), None
    if stopped[0] == "enomem":
        teardown(fc)
        after_teardown = rss_dict(fc.child.rss)
    parent = AddressSpace(fc.parent.to_mm(), fc.m.to_memory())
    result = fc.result(
        stopped,
        parent,
        fc.child.to_mm(),
        child_rss,
        after_teardown,
        time.perf_counter() - t0,
        "reference",
        table_stats_of(fc.table_rows),
    )
    if fc.v.lazy:
        result.tables = lazy.objects_of({"parent": fc.parent, "child": fc.child}, fc.store)
        result.fork_args = (oracle, plan, fork_seq)
    return result


def teardown(fc: ForkContext) -> None:
    """Tear the half-built child down after ENOMEM (spec 5.4): every child entry drops what it holds (spec 12: a
    table it shares as its design says, and the parent's deferred tables released)."""
    m = fc.m
    if fc.v.lazy:
        lazy.release_shared_tables(fc, fc.child, fc.child.rss)
        if fc.parent.pending:
            lazy.async_release(fc)
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
