"""The forks of ``odf-paper`` and ``async-fork`` on the fast engines (spec 12.2, 12.4).

Neither design does per-PTE work at fork for a table it shares or defers: odf-paper points the child's PMD at the
parent's table (counting the pinned pages it shares), async-fork write-protects the parent's PMD. So the fast engine
copies every other call of the plan, compiled, by the rules of the design's base variant (linux-5.8, linux-6.18),
and the tables the design shares or defers are added around it, in arrays: the child's logical entries, the
:class:`~gpusim.model.tables.TableObjects`, the design's counts, and the upper-level tables of the child counted over
all of them. A fork that stops (ENOMEM) keeps what the reference keeps: the tables before the stopping call shared
or deferred (then released), those after it untouched. The result equals the reference's (the differential tests).

Not here: odf-cowpte (its accounting pass writes the shared entries; it runs on the reference), a pinned THP under
async-fork (split at fork, then deferred: the reference), and streamed or batched forks of the lazy designs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gpusim.base import backend as B
from gpusim.engines.fast import ForkJob
from gpusim.engines.reference.lazy import Unsupported
from gpusim.kernels import pte as P
from gpusim.kernels.flags import BACKING_ANON, PAGE_ANON_EXCLUSIVE, PTRS_PER_TABLE, VM_SHARED, VM_WRITE, is_cow_mapping
from gpusim.kernels.folio import folio_maybe_dma_pinned
from gpusim.model import decode
from gpusim.model.oracle import InjectionPlan, LockBreakOracle
from gpusim.model.plan import ForkPlan, plan_fork
from gpusim.model.result import ForkResult
from gpusim.model.state import MM, AddressSpace
from gpusim.model.tables import TableObjects
from gpusim.model.variants import Variant, get_variant


def lazy_calls(mm: MM, plan: ForkPlan, v: Variant) -> np.ndarray:
    """Per call of ``plan``: the design shares (odf-paper) or defers (async-fork) its table: a whole table of a
    private anonymous VMA (async-fork: a COW one) that the parent maps by a PTE table."""
    t = plan.call_table
    whole = (plan.call_start == t * PTRS_PER_TABLE) & (plan.call_end == (t + 1) * PTRS_PER_TABLE) & ~plan.call_huge
    flags = mm.vma_flags[plan.call_vma].astype(np.int64)
    anon = mm.vma_backing[plan.call_vma] == BACKING_ANON
    if v.table_fork == "share":
        return whole & anon & ((flags & VM_SHARED) == 0)
    return whole & anon & is_cow_mapping(flags)


def subplan(plan: ForkPlan, keep: np.ndarray) -> ForkPlan:
    """``plan`` with only the calls ``keep`` (its VMAs as they are)."""
    calls = {f: getattr(plan, f)[keep] for f in ("call_table", "call_start", "call_end", "call_vma", "call_huge")}
    first = np.ones(int(keep.sum()), bool)
    first[1:] = calls["call_table"][1:] != calls["call_table"][:-1]
    return ForkPlan(plan.vma_counts, plan.vma_child, plan.vma_child_anon, **calls, table_first_call=first)


def rows_of(mm: MM, tables: np.ndarray) -> np.ndarray:
    return np.searchsorted(mm.table_index, tables)


def refuse(space: AddressSpace, plan: ForkPlan, lazy: np.ndarray, v: Variant) -> None:
    """What the design's model rejects (as the reference does: :class:`Unsupported`), and what this path leaves to
    the reference (a ValueError)."""
    mm, m = space.mm, space.memory
    if v.table_fork == "share":
        if (mm.vma_flags[plan.call_vma[lazy]] & np.uint64(VM_WRITE) == 0).any():
            raise Unsupported("odfp:NO_VM_WRITE", "a table would be shared from a VMA without VM_WRITE")
        rows = mm.pte[rows_of(mm, plan.call_table[lazy])]
        k = decode.kinds(rows.reshape(-1))
        bad = np.flatnonzero((k != P.KIND_NONE) & (k != P.KIND_PRESENT))
        if bad.size:
            t = int(plan.call_table[lazy][bad[0] // PTRS_PER_TABLE])
            raise Unsupported("odfp:NONPRESENT", f"table {t} would be shared and holds a non-present entry")
        return
    if mm.has_pinned and plan.call_huge.any():
        heads = decode.offsets(mm.pmd).astype(np.int64)
        f = m.page_folio[heads]
        pinned = folio_maybe_dma_pinned(m.folio_order[f], m.folio_refcount[f], m.folio_pincount[f], v.large_pin_order)
        if (pinned & ((m.page_flags[heads] & PAGE_ANON_EXCLUSIVE) != 0)).any():
            raise ValueError(
                "async-fork with a pinned THP (split at fork, then deferred) runs on the reference backend"
            )


def fork_lazy_fast(
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
    """One fork of ``odf-paper`` or ``async-fork`` on the fast engine (module docstring)."""
    v = get_variant(variant)
    if v.table_fork not in ("share", "defer"):
        raise ValueError(f"variant {variant}: its fork runs on the reference backend")
    mm = space.mm
    if B.on_device(mm.pte):
        raise ValueError(f"a fork of {variant} takes an address space in host memory (its tables are added there)")
    plan = plan_fork(mm)
    lazy = lazy_calls(mm, plan, v)
    refuse(space, plan, lazy, v)
    job = ForkJob(space, variant, oracle, plan_inj, fork_seq, in_place, plan=subplan(plan, ~lazy))
    r = job.run(kernels, backend, chunk_tables)
    stopped = r.enomem or r.oops
    done = lazy & (plan.call_start < stopped["call_start"]) if stopped else lazy
    tables = plan.call_table[done]
    r.counts["table.upper_alloc"] = upper_tables(np.concatenate([job_child_tables(job), tables]))
    if v.table_fork == "share":
        odfp_tables(r, tables, stopped is None)
    else:
        async_tables(r, tables, stopped is None)
    r.fork_args = (oracle, plan_inj, fork_seq)
    return r


def job_child_tables(job: ForkJob) -> np.ndarray:
    """The tables the fast engine gave the child (before any teardown): PTE tables, split THPs' and shared PMDs."""
    s = job.state
    extra = np.array(sorted(set(s.child_pmds) | set(s.child_extra)), np.int64)
    return np.concatenate([job.mm.table_index[B.to_host(job.cexists)], extra])


def upper_tables(tables: np.ndarray) -> int:
    """The child's PMD and PUD tables over its PTE tables ``tables`` (``table.upper_alloc``)."""
    return len(np.unique(tables >> 9)) + len(np.unique(tables >> 18))


def odfp_tables(r: ForkResult, tables: np.ndarray, ok: bool) -> None:
    """odf-paper's shares around the fast engine's fork ``r``: the child's logical entries (its PMDs point at the
    parent's tables: when it has no table of its own, the parent's very arrays), both PMDs write-protected, the
    pinned pages shared counted; after ENOMEM the child is gone and the parent's PMDs stay write-protected (spec
    12.2)."""
    n = int(tables.size)
    r.counts["table.share"] += n
    r.counts["pmd.wrprotect"] += n
    pmm, m = r.parent.mm, r.memory
    every = n == pmm.nr_tables  # (tables ascending, each a parent table)
    p_wp = np.ones(n, bool) if every else np.isin(pmm.table_index, tables)
    rows = pmm.pte if every else pmm.pte[p_wp]
    if m.folio_true_pins.any():
        val = rows.reshape(-1)
        present = (decode.kinds(val) == P.KIND_PRESENT) & ~decode.special(val)
        pfn = decode.offsets(val[present]).astype(np.int64)
        r.counts["pin_shared"] += int((m.folio_true_pins[m.page_folio[pfn]] > 0).sum())
    p_obj = np.full(pmm.nr_tables, -1, np.int64)
    if not ok:
        r.tables = TableObjects(
            ("parent", "child"),
            (p_obj, np.zeros(0, np.int64)),
            (p_wp, np.zeros(0, bool)),
            np.zeros(0, np.int32),
            np.zeros(0, np.int64),
        )
        return
    p_obj[p_wp] = np.arange(n)
    child = r.child
    if every and not child.nr_tables:  # the child's logical entries are the parent's tables, arrays and all
        r.child = dataclasses.replace(child, table_index=pmm.table_index, pte=pmm.pte)
        r.tables = TableObjects(
            ("parent", "child"), (p_obj, p_obj), (p_wp, p_wp), np.full(n, 2, np.int32), np.zeros(0, np.int64)
        )
        return
    index = np.concatenate([child.table_index, tables])
    order = np.argsort(index, kind="stable")
    pte = np.concatenate([child.pte, rows])[order]
    shared = np.concatenate([np.zeros(child.nr_tables, bool), np.ones(n, bool)])[order]
    c_obj = np.full(index.size, -1, np.int64)
    c_obj[shared] = np.arange(n)  # ascending tables: the same order as the parent's
    r.child = dataclasses.replace(child, table_index=index[order], pte=pte)
    r.tables = TableObjects(
        ("parent", "child"), (p_obj, c_obj), (p_wp, shared), np.full(n, 2, np.int32), np.zeros(0, np.int64)
    )


def async_tables(r: ForkResult, tables: np.ndarray, ok: bool) -> None:
    """async-fork's deferrals around the fast engine's fork ``r``: the parent's PMDs write-protected and pending;
    after ENOMEM released (spec 12.4)."""
    n = int(tables.size)
    r.counts["async.defer"] += n
    pmm = r.parent.mm
    wp = np.isin(pmm.table_index, tables) if ok else np.zeros(pmm.nr_tables, bool)
    if not ok and n:
        r.counts["async.abort"] += 1
        r.counts["pmd.restore"] += n
    empty = np.zeros(0, np.int64)
    r.tables = TableObjects(
        ("parent", "child"),
        (np.full(pmm.nr_tables, -1, np.int64), np.full(r.child.nr_tables, -1, np.int64)),
        (wp, np.zeros(r.child.nr_tables, bool)),
        np.zeros(0, np.int32),
        tables.astype(np.int64) if ok else empty,
    )
