"""The forks of ``odf-paper`` and ``async-fork`` on the fast engines (spec 12.2, 12.4).

Neither design does per-PTE work at fork for a table it shares or defers: odf-paper points the child's PMD at the
parent's table (counting the pinned pages it shares), async-fork write-protects the parent's PMD. So the fast engine
copies every other call of the plan, compiled, by the rules of the design's base variant (linux-5.8, linux-6.18),
and the tables the design shares or defers are added around it, in arrays: the child's logical entries, the
:class:`~gpusim.model.tables.TableObjects`, the design's counts, and the upper-level tables of the child counted over
all of them. A fork that stops (ENOMEM) keeps what the reference keeps: the tables before the stopping call shared
or deferred (then released), those after it untouched. The result equals the reference's (the differential tests).

odf-cowpte (spec 12.3) accounts every entry of a table it shares: its pass (:mod:`gpusim.kernels.lazy`, compiled,
in address order on one thread) writes the shared entries and the memory in the engine's copy of the state; a
table where the pass stops (a page to copy early, a device-private entry) falls back to an ordinary copy from that
address, which the fast engine makes with the THP calls, after the pass. That order is the reference's whenever no
object the fast engine's calls touch is mapped anywhere else (checked: else the reference runs it).

Left to the reference (:class:`ReferenceOnly`; ``auto`` runs it there): a pinned THP under async-fork or
odf-cowpte (split at fork, then deferred or accounted); odf-cowpte's forks with injections, or where a folio of a
fallback's rest is mapped elsewhere too. Streamed or batched forks of the lazy
designs are not built.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from gpusim.base import backend as B
from gpusim.engines.fast import ForkJob, variant_params
from gpusim.engines.reference.lazy import Unsupported
from gpusim.kernels import cpu as cpu_kernels
from gpusim.kernels import lazy as LZ
from gpusim.kernels import pte as P
from gpusim.kernels.args import memory_arrays
from gpusim.kernels.fields import MEMORY_FIELDS
from gpusim.kernels.flags import (
    BACKING_ANON,
    PAGE_ANON_EXCLUSIVE,
    PAGE_HWPOISON,
    PTRS_PER_TABLE,
    RSS_NAMES,
    VM_SHARED,
    VM_WRITE,
    is_cow_mapping,
)
from gpusim.kernels.folio import folio_maybe_dma_pinned
from gpusim.model import decode
from gpusim.model.oracle import InjectionPlan, LockBreakOracle
from gpusim.model.plan import ForkPlan, plan_fork
from gpusim.model.result import ForkResult, finish_counts
from gpusim.model.state import MM, AddressSpace, Memory, copy_array
from gpusim.model.tables import TableObjects
from gpusim.model.variants import Variant, get_variant


class ReferenceOnly(ValueError):
    """A fork this module leaves to the reference engine (the module docstring); ``backend="auto"`` runs it there."""

    def __init__(self, what: str):
        super().__init__(f"{what}: it runs on the reference backend")


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


def subplan(plan: ForkPlan, keep: np.ndarray, starts: np.ndarray | None = None) -> ForkPlan:
    """``plan`` with only the calls ``keep`` (its VMAs as they are), starting at ``starts`` where given."""
    calls = {f: getattr(plan, f)[keep] for f in ("call_table", "call_start", "call_end", "call_vma", "call_huge")}
    if starts is not None:
        calls["call_start"] = starts[keep]
    first = np.ones(int(keep.sum()), bool)
    first[1:] = calls["call_table"][1:] != calls["call_table"][:-1]
    return ForkPlan(plan.vma_counts, plan.vma_child, plan.vma_child_anon, **calls, table_first_call=first)


def rows_of(mm: MM, tables: np.ndarray) -> np.ndarray:
    return np.searchsorted(mm.table_index, tables)


def refuse(space: AddressSpace, plan: ForkPlan, lazy: np.ndarray, v: Variant) -> None:
    """What the design's model rejects (as the reference does: :class:`Unsupported`), and what this path leaves to
    the reference (a ValueError)."""
    mm = space.mm
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
    refuse_pinned_thp(space, plan, v)


def refuse_pinned_thp(space: AddressSpace, plan: ForkPlan, v: Variant) -> None:
    """A THP that linux-6.18's ``copy_huge_pmd`` splits (pinned, anon-exclusive): the design then defers or shares
    the table the split made, which the reference does."""
    mm, m = space.mm, space.memory
    if mm.has_pinned and plan.call_huge.any():
        heads = decode.offsets(mm.pmd).astype(np.int64)
        f = m.page_folio[heads]
        pinned = folio_maybe_dma_pinned(m.folio_order[f], m.folio_refcount[f], m.folio_pincount[f], v.large_pin_order)
        if (pinned & ((m.page_flags[heads] & PAGE_ANON_EXCLUSIVE) != 0)).any():
            raise ReferenceOnly(f"{v.name} with a pinned THP (split at fork, then {v.table_fork})")


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
    mm = space.mm
    if B.on_device(mm.pte):
        raise ValueError(f"a fork of {variant} takes an address space in host memory (its tables are added there)")
    if v.table_fork == "share_accounted":
        return fork_odfc_fast(space, v, kernels, backend, (oracle, plan_inj, fork_seq), chunk_tables, in_place)
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
    """odf-paper's shares around the fast engine's fork ``r``: :func:`share_tables`, the pinned pages shared counted;
    after ENOMEM the child is gone and the parent's PMDs stay write-protected (spec 12.2)."""
    n = int(tables.size)
    r.counts["table.share"] += n
    r.counts["pmd.wrprotect"] += n
    pmm, m = r.parent.mm, r.memory
    if m.folio_true_pins.any():
        val = (pmm.pte if n == pmm.nr_tables else pmm.pte[np.isin(pmm.table_index, tables)]).reshape(-1)
        present = (decode.kinds(val) == P.KIND_PRESENT) & ~decode.special(val)
        pfn = decode.offsets(val[present]).astype(np.int64)
        r.counts["pin_shared"] += int((m.folio_true_pins[m.page_folio[pfn]] > 0).sum())
    if ok:
        share_tables(r, tables)
        return
    r.tables = TableObjects(
        ("parent", "child"),
        (np.full(pmm.nr_tables, -1, np.int64), np.zeros(0, np.int64)),
        (np.isin(pmm.table_index, tables), np.zeros(0, bool)),
        np.zeros(0, np.int32),
        np.zeros(0, np.int64),
    )


def share_tables(r: ForkResult, tables: np.ndarray) -> None:
    """The child's PMDs point at the parent's tables ``tables`` (ascending, each a parent table), both
    write-protected: the child's logical entries are theirs (when it has no table of its own, the parent's very
    arrays), each table an object of share count 2 (spec 12.1)."""
    n = int(tables.size)
    pmm = r.parent.mm
    if not n:
        none = np.full(pmm.nr_tables, -1, np.int64), np.full(r.child.nr_tables, -1, np.int64)
        wp = np.zeros(pmm.nr_tables, bool), np.zeros(r.child.nr_tables, bool)
        r.tables = TableObjects(("parent", "child"), none, wp, np.zeros(0, np.int32), np.zeros(0, np.int64))
        return
    every = n == pmm.nr_tables
    p_wp = np.ones(n, bool) if every else np.isin(pmm.table_index, tables)
    p_obj = np.full(pmm.nr_tables, -1, np.int64)
    p_obj[p_wp] = np.arange(n)
    child = r.child
    if every and not child.nr_tables:  # the child's logical entries are the parent's tables, arrays and all
        r.child = dataclasses.replace(child, table_index=pmm.table_index, pte=pmm.pte)
        r.tables = TableObjects(
            ("parent", "child"), (p_obj, p_obj), (p_wp, p_wp), np.full(n, 2, np.int32), np.zeros(0, np.int64)
        )
        return
    rows = pmm.pte if every else pmm.pte[p_wp]
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


# --- odf-cowpte (spec 12.3) ------------------------------------------------------------------------------------


def fork_odfc_fast(
    space: AddressSpace, v: Variant, kernels, backend: str, fork_args: tuple, chunk_tables, in_place: bool
) -> ForkResult:
    """odf-cowpte's fork (module docstring): the accounting pass over the engine's copy of the state (``in_place``:
    over the space's own arrays, which are the fork's to write, unless a hwpoisoned page could stop it), the fast
    engine's calls (the THPs, the rest of each table where the pass fell back), the shared tables around its
    result."""
    oracle, plan_inj, fork_seq = fork_args
    mm, m = space.mm, space.memory
    plan = plan_fork(mm)
    odfc_check_layout(mm, plan)
    if plan_inj.injections:
        raise ReferenceOnly(f"{v.name}'s fork with injections")
    refuse_pinned_thp(space, plan, v)
    t0 = time.perf_counter()
    in_place = in_place and not (v.hwpoison_fails_copy and (m.page_flags & PAGE_HWPOISON).any())
    memory = (
        m if in_place else Memory(**{f: copy_array(getattr(m, f)) for f in MEMORY_FIELDS}, next_content=m.next_content)
    )
    # (writeable arrays only, the table index too: one compiled type whether the input is frozen or handed over)
    pte, index = (mm.pte, mm.table_index) if in_place else (copy_array(mm.pte), copy_array(mm.table_index))
    accounted = AddressSpace(dataclasses.replace(mm, pte=pte, table_index=index), memory)  # (the pass writes it)
    calls = np.flatnonzero(~plan.call_huge)
    acc, out = odfc_pass(accounted.mm, plan, calls, memory, v)
    back = calls[out >= 0]  # the calls the pass fell back in, and from where
    starts = plan.call_start.copy()
    starts[back] = out[out >= 0]
    refuse_entangled(accounted, plan, back, starts[back])
    keep = plan.call_huge.copy()
    keep[back] = True
    job = ForkJob(accounted, v.name, oracle, plan_inj, fork_seq, True, plan=subplan(plan, keep, starts))
    job.setup_s += time.perf_counter() - t0
    r = job.run(kernels, backend, chunk_tables)
    if r.outcome != "ok":  # (an early copy of a hwpoisoned page: the child's shared tables go too; the input is intact:
        # such a fork is never in place)
        raise ReferenceOnly(f"{v.name}: a fork that stops in a fallback")
    tables = plan.call_table[calls[out < 0]]
    recovered = odfc_fallbacks(r, plan.call_table[back], starts[back])
    r.counts["table.upper_alloc"] = upper_tables(np.concatenate([job_child_tables(job), tables]))
    r.counts["table.share"] += tables.size
    r.counts["pmd.wrprotect"] += tables.size
    r.counts["table.share_fallback"] += back.size
    r.counts["table.recover_pte"] += recovered
    odfc_child_counts(r, acc)
    share_tables(r, tables)
    r.fork_args = (oracle, plan_inj, fork_seq)
    return r


def odfc_check_layout(mm: MM, plan: ForkPlan) -> None:
    """``odfc:MULTI_VMA`` (as :func:`gpusim.engines.reference.lazy.check_layout`): a table of a call meets more than
    one VMA."""
    lo = plan.call_table * PTRS_PER_TABLE
    meets = np.searchsorted(mm.vma_start, lo + PTRS_PER_TABLE) - np.searchsorted(mm.vma_end, lo, side="right")
    bad = np.flatnonzero(meets > 1)
    if bad.size:
        t = int(plan.call_table[bad[0]])
        raise Unsupported("odfc:MULTI_VMA", f"table {t} meets more than one VMA (spec 12.11 U-4: one VMA per table)")


def odfc_pass(mm: MM, plan: ForkPlan, calls: np.ndarray, memory: Memory, v: Variant):
    """The accounting pass (compiled) over the PTE-table calls ``calls``, on ``mm``'s entries and ``memory`` in
    place:
    (its count row, :data:`gpusim.kernels.lazy.ODFC_COUNTS`; per call the address of its fallback or -1)."""
    acc = np.zeros((calls.size, len(LZ.ODFC_COUNTS)), np.int64)
    out = np.zeros(calls.size, np.int64)
    done = cpu_kernels.odfc_account_calls(
        rows_of(mm, plan.call_table[calls]),
        plan.call_start[calls],
        plan.call_end[calls],
        mm.vma_flags[plan.call_vma[calls]].astype(np.int64),
        mm.pte,
        mm.table_index,
        bool(mm.has_pinned),
        variant_params(v),
        memory_arrays({f: getattr(memory, f) for f in MEMORY_FIELDS}),
        acc,
        out,
    )
    if done < calls.size or (out == LZ.PASS_SWAP_FULL).any():
        raise ReferenceOnly(f"{v.name}: a swap count at its cap with its first byte not full")
    return acc.sum(axis=0), out


def refuse_entangled(space: AddressSpace, plan: ForkPlan, back: np.ndarray, starts: np.ndarray) -> None:
    """The fast engine copies the THPs and the fallbacks' rest after the whole pass, not in address order between
    its tables: the same result when no folio it touches is mapped anywhere but in that one table (its map counts
    are all the table's own mappings). Else the reference's (:class:`ReferenceOnly`). ``space`` is the state after
    the pass, whose map counts hold the mappings it accounted too (a page of a fallback's rest mapped once is still
    mapped once; a folio of one counts its table's entries before the fallback twice). (Migration
    entries touch no folio; swap slots need no test: without injections every duplication adds one reference and
    every continuation is atomic, in any order.)"""
    mm, m = space.mm, space.memory
    heads = decode.offsets(mm.pmd[np.searchsorted(mm.pmd_index, plan.call_table[plan.call_huge])]).astype(np.int64)
    folios, own = [m.page_folio[heads]], [np.ones(heads.size, np.int64)]
    ends = plan.call_end[back]
    rows = rows_of(mm, plan.call_table[back])
    if not cpu_kernels.fallback_rest_alone(  # (the common case, compiled: each page mapped once, here)
        mm.pte, rows, starts, ends, mm.table_index, m.page_folio, m.folio_order, m.page_mapcount, m.folio_pmd_mapcount
    ):
        f, n = rest_folios_mapped_twice(mm, m, rows, starts, ends)
        folios.append(f)
        own.append(n)
    f = np.concatenate(folios)
    if f.size and (np.unique(f).size < f.size or (folio_mappings(m, f) > np.concatenate(own)).any()):
        raise ReferenceOnly("odf-cowpte: a folio the fast engine copies is mapped elsewhere too")


def rest_folios_mapped_twice(mm: MM, m: Memory, rows: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """(the folios the rest of each fallback maps that are not a small folio's page mapped once, and the map counts
    its table's entries give each after the pass: its mappings there, those before the fallback twice), one entry
    per (fallback, folio)."""
    pte = mm.pte[rows]
    k = decode.kinds(pte)
    maps = ((k == P.KIND_PRESENT) & ~decode.special(pte)) | (k == P.KIND_DEVICE_PRIVATE)
    cols = np.arange(PTRS_PER_TABLE)
    base = (mm.table_index[rows] * PTRS_PER_TABLE)[:, None]
    rest = maps & (cols >= starts[:, None] - base) & (cols < ends[:, None] - base)
    counted = [maps, maps & (cols < starts[:, None] - base)]  # (those before, accounted by the pass: twice)
    pfn = decode.offsets(pte[rest]).astype(np.int64)
    f = m.page_folio[pfn]
    twice = (m.folio_order[f] != 0) | (m.page_mapcount[pfn] > 1) | (m.folio_pmd_mapcount[f] != 0)
    which = np.broadcast_to(np.arange(rows.size)[:, None], pte.shape)
    nf = np.int64(m.nr_folios)
    key = np.concatenate([which[c] * nf + m.page_folio[decode.offsets(pte[c]).astype(np.int64)] for c in counted])
    keys, counts = np.unique(key, return_counts=True)
    mine = np.unique(which[rest][twice] * nf + f[twice])
    return mine % nf, counts[np.searchsorted(keys, mine)]


def folio_mappings(m: Memory, folios: np.ndarray) -> np.ndarray:
    """Every mapping of each folio: its pages' map counts and its PMD mappings."""
    first, size = m.folio_first_pfn[folios].astype(np.int64), 1 << m.folio_order[folios].astype(np.int64)
    total = m.folio_pmd_mapcount[folios].astype(np.int64)
    for i in np.flatnonzero(size > 1).tolist():
        total[i] += int(m.page_mapcount[first[i] : first[i] + size[i]].sum())
    small = size == 1
    total[small] += m.page_mapcount[first[small]]
    return total


def odfc_fallbacks(r: ForkResult, tables: np.ndarray, starts: np.ndarray) -> int:
    """``recover_pte_range``'s copy: the entries before the fallback address of each table (accounted, the
    parent's) into the child's own table, which the fast engine made; returns how many entries it copied."""
    pmm, child = r.parent.mm, r.child
    lens = starts - tables * PTRS_PER_TABLE
    return int(cpu_kernels.copy_prefixes(pmm.pte, rows_of(pmm, tables), child.pte, rows_of(child, tables), lens))


def odfc_child_counts(r: ForkResult, acc: np.ndarray) -> None:
    """The pass's counts: its events and summary counters, the child's rss, the child on the swapoff list."""
    got = dict(zip(LZ.ODFC_COUNTS, acc.tolist()))
    for name, val in got.items():
        if name in r.counts:
            r.counts[name] += val
    finish_counts(r.counts)
    for name in RSS_NAMES:
        r.child_rss[name] += got[f"rss.{name}"]
    rss = r.child.rss + np.array([got[f"rss.{name}"] for name in RSS_NAMES], np.int64)
    r.child = dataclasses.replace(r.child, rss=rss, on_swapoff_list=bool(r.child.on_swapoff_list or got["swapoff"]))


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
