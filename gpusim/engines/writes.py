"""The write phase after a fork (spec section 11): the parent's and the child's writes, their COW faults, and
whether a device's DMA still lands in the parent.

A write phase is a list of steps (:func:`parse_writes`: ``parent:all; child:0-99; child:exit``). Each write goes
through :func:`handle_mm_fault`, named, as its helpers are, after the kernel function it models:
``do_wp_page`` decides between ``wp_page_reuse`` and ``wp_page_copy`` with the variant's rule
(``wp_can_reuse_anon_folio``, :data:`gpusim.model.variants.Variant.wp_reuse`), ``do_huge_pmd_wp_page`` reuses a
PMD-mapped THP or splits it and retries at PTE level, ``do_anonymous_page`` maps a new page where there was none, and
``exit_mmap`` tears the child down (``child:exit``). Every write is counted per writer as one of
:data:`WRITE_EVENTS`.

The DMA view (spec 11.3): at the start of the phase every parent address whose page belongs to a truly pinned folio
is a DMA address and that page its DMA frame; at the end, ``parent_diverged`` counts the DMA addresses where the
parent no longer maps its frame (the device's writes are lost to it) and ``child_aliased`` those where the child
maps the frame writable (the device writes into the child).

This is the reference implementation, plain Python over the reference engine's containers. The fast engines run
the same writes compiled (:mod:`gpusim.kernels.writes`, through :func:`run_write_phase`: a unit per page-table row
of the writer, the units that share no folio in parallel, on the CPU and in CUDA kernels), with the same reuse rules
(:mod:`gpusim.kernels.rules`) and an equal result (states, counts, DMA view). Reading of the kernel beyond the
spec's text: a write-protect fault on a folio that is not anonymous (a page-cache page in a private mapping) always
copies (``do_wp_page`` tries reuse for anonymous folios only), and a write to an address in no VMA is a ``segv``.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from dataclasses import dataclass, field

import numpy as np

from gpusim.engines.context import ForkContext, Machine, MMState, Oops
from gpusim.engines.reference import lazy
from gpusim.engines.reference.fork import copy_table, dup_mmap, teardown
from gpusim.kernels import pte as P
from gpusim.kernels.fields import GROUP_FIELDS, MEMORY_FIELDS
from gpusim.kernels.flags import (
    BACKING_ANON,
    FOLIO_ANON,
    FOLIO_FREED,
    FOLIO_SWAPBACKED,
    MM_ANONPAGES,
    PAGE_ANON_EXCLUSIVE,
    PTRS_PER_TABLE,
    VM_SHARED,
    VM_WRITE,
    WRITE_EVENTS,
    WRITE_EVERY,
    WRITERS,
    mm_counter,
)
from gpusim.kernels.folio import is_large_for_pins, pin_refcount_delta
from gpusim.kernels.rules import wp_reuse_pmd, wp_reuse_pte
from gpusim.model import decode
from gpusim.model.oracle import InjectionPlan, LockBreakOracle
from gpusim.model.plan import plan_fork
from gpusim.model.result import new_counts
from gpusim.model.state import MM, AddressSpace, Memory, entries, ptes_at
from gpusim.model.variants import get_variant

DMA_FIELDS = ("pinned", "parent_diverged", "child_aliased")
SECOND_CHILD = "child2"  # the child of a parent:fork step (spec 12.5; the reference's write phase only)
MAX_ADDRESS = 1 << 35  # pages: the layouts' bound (128 TiB)
MAX_WRITES = 1 << 26  # writes of one phase (the reference writes one address at a time)


class WritesError(ValueError):
    """A write phase that cannot be run (its notation, or a step after ``child:exit``)."""


@dataclass(frozen=True)
class Step:
    who: str  # "parent" or "child"
    lo: int = 0  # addresses lo .. hi (inclusive); ``all``: every mapped address at the start of the step
    hi: int = -1
    all: bool = False
    exit: bool = False
    op: str = "write"  # "write", or (spec 12.5) "pin", "pin.fast" (addresses pinned), "sync" (a child's), "fork"
    k: int = 0  # sync: the number of deferred tables copied (0: all)

    @property
    def text(self) -> str:
        if self.exit:
            return f"{self.who}:exit"
        if self.op == "sync":
            return f"{self.who}:sync" + (f":{self.k}" if self.k else "")
        if self.op == "fork":
            return f"{self.who}:fork"
        head = f"{self.who}:" if self.op == "write" else f"{self.who}:{self.op}:"
        if self.all:
            return f"{head}all"
        return f"{head}{self.lo}" if self.lo == self.hi else f"{head}{self.lo}-{self.hi}"


_ADDR = r"(0x[0-9a-fA-F]+|[0-9]+)"


def parse_step(text: str, k: int) -> Step:
    """One step of the notation (``k``: its number, for the message)."""
    who, sep, what = text.strip().partition(":")
    who, what = who.strip(), what.strip()
    where = f"writes step {k} '{text.strip()}'"
    if not sep or who not in (*WRITERS, SECOND_CHILD):
        raise WritesError(
            f"{where}: a step is parent:RANGE or child:RANGE (RANGE: all, A, A-B), X:pin:A[-B], X:pin.fast:A[-B], "
            "child:sync[:K], child:exit or parent:fork (then child2: steps)"
        )
    if what == "all":
        return Step(who, all=True)
    if what == "exit":
        if who == "parent":
            raise WritesError(f"{where}: only the child exits (child, or child2 after parent:fork)")
        return Step(who, exit=True)
    if what == "fork":
        if who != "parent":
            raise WritesError(f"{where}: the parent forks again (parent:fork); its child is child2")
        return Step(who, op="fork")
    if what == "sync" or what.startswith("sync:"):
        k = what[5:].strip()
        if who == "parent" or (k and not (k.isdigit() and 1 <= int(k) < MAX_ADDRESS)):
            raise WritesError(f"{where}: a child's deferred copies are child:sync or child:sync:K (K >= 1 tables)")
        return Step(who, op="sync", k=int(k or 0))
    op = "write"
    for name in ("pin.fast", "pin"):
        if what.startswith(name + ":"):
            op, what = name, what[len(name) + 1 :].strip()
            break
    m = re.fullmatch(rf"{_ADDR}(?:\s*-\s*{_ADDR})?", what)
    if not m:
        raise WritesError(f"{where}: RANGE is all, an address A or A-B (pages, decimal or 0x...)")
    lo = int(m.group(1), 0)
    hi = int(m.group(2), 0) if m.group(2) else lo
    if not lo <= hi < MAX_ADDRESS:
        raise WritesError(f"{where}: addresses A <= B below 2**35 (pages)")
    return Step(who, lo, hi, op=op)


def parse_writes(writes) -> tuple[Step, ...]:
    """Steps from the notation (``;``-separated) or from a list of step notations or :class:`Step` objects."""
    if isinstance(writes, str):
        parts = writes.split(";")
    else:
        parts = list(writes)
    if not parts or all(isinstance(p, str) and not p.strip() for p in parts):
        raise WritesError("an empty write phase (leave --writes out for none)")
    steps = tuple(p if isinstance(p, Step) else parse_step(p, k) for k, p in enumerate(parts, 1))
    exited, forked = set(), False
    for k, s in enumerate(steps, 1):
        if s.who in exited:
            raise WritesError(f"writes step {k} '{s.text}': the {s.who} has exited")
        if s.who == SECOND_CHILD and not forked:
            raise WritesError(f"writes step {k} '{s.text}': child2 is the child of a parent:fork before it")
        if s.op == "fork" and forked:
            raise WritesError(f"writes step {k} '{s.text}': the parent forks again once (parent:fork)")
        forked = forked or s.op == "fork"
        if s.exit:
            exited.add(s.who)
    return steps


@dataclass
class WritePhase:
    """What a write phase did: counts of :data:`WRITE_EVENTS` per writer, the DMA view, the states after it, and
    (filled by :mod:`gpusim.api` from a cost profile) its modelled latency."""

    steps: tuple[Step, ...]
    counts: dict[str, dict[str, int]]
    dma: dict[str, int]
    parent: AddressSpace
    child: MM
    child_exited: bool
    latency: dict | None = None
    invariants: object = None
    wall_s: float = 0.0
    # the lazy designs (spec 12): the table work each writer's steps triggered and the child's deferred copies
    # (``child_sync``), as fork cost events; the shared and pending tables after the phase; how it ended
    table_counts: dict | None = None
    tables: object = None
    outcome: str = "ok"
    oops: dict | None = None
    exit_rss: list | None = None  # what exited children stayed charged with (the kernel's check_mm reads it)
    child2: MM | None = None  # the child of a parent:fork step, after the phase

    @property
    def memory(self) -> Memory:
        return self.parent.memory

    def as_dict(self) -> dict:
        out = {
            "steps": "; ".join(s.text for s in self.steps),
            "counts": {w: dict(c) for w, c in self.counts.items()},
            "dma": dict(self.dma),
            "child_exited": self.child_exited,
            "outcome": self.outcome,
            "oops": self.oops,
            "exit_rss": self.exit_rss,
        }
        if self.table_counts is not None:
            out["table_counts"] = {w: {e: n for e, n in c.items() if n} for w, c in self.table_counts.items()}
            out["tables"] = None if self.tables is None else self.tables.as_dict()
        if self.latency is not None:
            out.update(self.latency)
        if self.invariants is not None:
            out["invariants"] = self.invariants.as_dict()
        return out


@dataclass
class _Proc:
    """One writer: its mm, its VMAs' starts (for lookups), and how many of its PTEs (plus 512 per PMD) map each folio
    (``wp_can_reuse_anon_folio`` asks it; kept up to date by every change)."""

    name: str
    mm: MMState
    starts: list = field(default_factory=list)
    mapped: dict = field(default_factory=dict)


class WriteContext:
    """The state a write phase works on: the fork's final memory, parent and child, as the reference's containers;
    for a lazy design (spec 12) their shared and pending tables too, and the fork's context its unshares and
    deferred copies run in (:attr:`fc`: the fork's oracle, injections and number; its counts are those of the
    writer whose step triggered them, or the child's sync)."""

    def __init__(self, parent: AddressSpace, child: MM, variant: str, tables=None, fork_args=None):
        self.v = get_variant(variant)
        self.m = Machine(parent.memory)
        self.procs = {"parent": _Proc("parent", MMState(parent.mm)), "child": _Proc("child", MMState(child))}
        self.fc = None
        self.table_counts = {w: new_counts() for w in (*WRITERS, "child_sync")}
        self.fork_args = fork_args or (LockBreakOracle.parse("never"), InjectionPlan(), 0)
        self.async_child = "child"  # the child whose tables the parent's pending ones are (async-fork)
        if self.v.lazy:
            self.fc = ForkContext(
                None,
                variant,
                *self.fork_args,
                machine=self.m,
                parent=self.procs["parent"].mm,
                child=self.procs["child"].mm,
            )
            self.fc.store = lazy.link(tables, {w: p.mm for w, p in self.procs.items()})
            self.fc.count_upper = False  # the fork counted the child's upper-level tables
        for p in self.procs.values():
            p.starts = [v.start for v in p.mm.vmas]
            p.mapped = self._rmap_counts(p.mm)
        self.counts = {w: dict.fromkeys(WRITE_EVENTS, 0) for w in WRITERS}
        self.child_exited = False
        self.exited: set[str] = set()
        self.pins: list[tuple[int, int]] = []  # (address, frame) of each parent:pin (spec 12.7's DMA addresses)
        self.skew = 0  # early copies of a deferred copy whose content changed since the fork (spec 12.7)
        self.fork_content = parent.memory.page_content
        self.stopped: tuple[str, dict | None] = ("ok", None)
        self.exit_rss: list | None = None  # what the children that exited stayed charged with (odf-paper)

    def charge(self, who: str) -> None:
        """The table work from here on is charged to ``who`` (a writer, or ``child_sync``)."""
        if self.fc is not None:
            self.fc.counts = self.table_counts[who]

    def states(self) -> tuple[AddressSpace, MM]:
        """The parent (with the memory) and the child as they are now."""
        par, chi = self.procs["parent"], self.procs["child"]
        return AddressSpace(par.mm.to_mm(), self.m.to_memory()), chi.mm.to_mm()

    def add_proc(self, name: str, mm: MMState) -> None:
        """A new writer (the child of a ``parent:fork``)."""
        p = self.procs[name] = _Proc(name, mm, [v.start for v in mm.vmas])
        p.mapped = self._rmap_counts(mm)
        self.counts[name] = dict.fromkeys(WRITE_EVENTS, 0)
        self.table_counts[name] = new_counts()

    def tables(self):
        """The shared and pending tables now (None for a variant that shares none)."""
        if self.fc is None:
            return None
        return lazy.objects_of({w: p.mm for w, p in self.procs.items()}, self.fc.store)

    def _rmap_counts(self, mm: MMState) -> dict:
        m, out = self.m, {}
        for row in mm.tables.values():
            for v in row:
                if P.pte_kind(v) == P.KIND_PRESENT and not P.pte_special(v):
                    f = m.page_folio[P.pte_pfn(v)]
                    out[f] = out.get(f, 0) + 1
        for v in mm.pmds.values():
            f = m.page_folio[P.pte_pfn(v)]
            out[f] = out.get(f, 0) + PTRS_PER_TABLE
        return out

    def find_vma(self, p: _Proc, a: int):
        i = bisect.bisect_right(p.starts, a) - 1
        if i < 0 or a >= p.mm.vmas[i].end:
            return None
        return p.mm.vmas[i]

    def folio_pages(self, f: int) -> range:
        first = self.m.folio_first_pfn[f]
        return range(first, first + (1 << self.m.folio_order[f]))

    def new_anon_page(self) -> int:
        """A new order-0 anon folio with new content, mapped once (the caller maps it): its pfn."""
        m = self.m
        q = m.alloc_folio()
        m.folio_flags[m.page_folio[q]] |= FOLIO_ANON | FOLIO_SWAPBACKED
        m.page_mapcount[q] = 1
        m.page_flags[q] = PAGE_ANON_EXCLUSIVE if self.v.anon_exclusive else 0
        m.page_content[q] = m.new_content()
        return q

    def put_mapping(self, p: _Proc, pfn: int, present: bool = True) -> None:
        """One entry of ``p`` (a present PTE, or a device-private one) stops mapping ``pfn``: its mapcount and its
        folio's reference drop (freed at 0)."""
        m = self.m
        f = m.page_folio[pfn]
        m.page_mapcount[pfn] -= 1
        m.folio_refcount[f] -= 1
        if present:
            p.mapped[f] -= 1
        if m.folio_refcount[f] == 0:
            m.folio_flags[f] |= FOLIO_FREED


def wp_can_reuse_anon_folio(wc: WriteContext, p: _Proc, f: int, pfn: int) -> bool:
    """Whether a write-protect fault of ``p`` on page ``pfn`` of anon folio ``f`` reuses it (else it copies): the
    variant's rule (:func:`gpusim.kernels.rules.wp_reuse_pte`) on the folio's counts."""
    m = wc.m
    maps = [m.page_mapcount[q] for q in wc.folio_pages(f)]
    return wp_reuse_pte(
        wc.v.wp_reuse,
        bool(m.page_flags[pfn] & PAGE_ANON_EXCLUSIVE),
        m.folio_order[f],
        m.folio_refcount[f],
        m.page_mapcount[pfn],
        max(maps),
        sum(maps),
        m.folio_pmd_mapcount[f],
        len(maps),
        p.mapped.get(f, 0),
    )


def wp_page_reuse(wc: WriteContext, row: list, i: int, v: int, pfn: int) -> None:
    row[i] = P.pte_mkdirty(P.pte_mkyoung(P.pte_mkwrite(v)))
    if wc.v.anon_exclusive:
        wc.m.page_flags[pfn] |= PAGE_ANON_EXCLUSIVE
    wc.m.page_content[pfn] = wc.m.new_content()


def wp_page_copy(wc: WriteContext, p: _Proc, row: list, i: int, pfn: int) -> None:
    """The writer gets a new anon page; the old page loses this mapping (its folio freed at refcount 0)."""
    m = wc.m
    f = m.page_folio[pfn]
    q = wc.new_anon_page()
    row[i] = P.mk_pte(q, True, True, True, False)
    p.mapped[m.page_folio[q]] = 1
    if not m.folio_flags[f] & FOLIO_ANON:  # a page-cache page: the writer's rss moves to anon
        p.mm.rss[mm_counter(m.folio_flags[f])] -= 1
        p.mm.rss[MM_ANONPAGES] += 1
    wc.put_mapping(p, pfn)


def do_wp_page(wc: WriteContext, p: _Proc, row: list, i: int, v: int) -> str:
    pfn = P.pte_pfn(v)
    f = wc.m.page_folio[pfn]
    if wc.m.folio_flags[f] & FOLIO_ANON and wp_can_reuse_anon_folio(wc, p, f, pfn):
        wp_page_reuse(wc, row, i, v, pfn)
        return "reuse"
    wp_page_copy(wc, p, row, i, pfn)
    return "copy"


def wp_huge_pmd_reuse(wc: WriteContext, f: int) -> bool:
    """Whether a write to PMD-mapped THP ``f`` reuses the PMD: :func:`gpusim.kernels.rules.wp_reuse_pmd`."""
    m = wc.m
    head = m.folio_first_pfn[f]
    excl = bool(m.page_flags[head] & PAGE_ANON_EXCLUSIVE)
    maps = max(m.page_mapcount[q] for q in wc.folio_pages(f))
    return wp_reuse_pmd(wc.v.wp_reuse, excl, m.folio_refcount[f], maps, m.folio_pmd_mapcount[f])


def split_huge_pmd(wc: WriteContext, p: _Proc, t: int) -> None:
    """The PMD of table ``t`` becomes a PTE table mapping the folio's pages read-only (spec 10's split)."""
    m = wc.m
    pmd = p.mm.pmds.pop(t)
    head = P.pte_pfn(pmd)
    f = m.page_folio[head]
    excl = m.page_flags[head] & PAGE_ANON_EXCLUSIVE
    row = []
    for j in range(PTRS_PER_TABLE):
        m.page_mapcount[head + j] += 1
        m.page_flags[head + j] = (m.page_flags[head + j] & ~PAGE_ANON_EXCLUSIVE) | excl
        row.append(P.mk_pte(head + j, False, P.pte_dirty(pmd), P.pte_young(pmd), False))
    m.folio_refcount[f] += PTRS_PER_TABLE - 1
    m.folio_pmd_mapcount[f] -= 1
    p.mm.tables[t] = row


def do_huge_pmd_wp_page(wc: WriteContext, p: _Proc, t: int) -> str:
    """A write to a PMD-mapped THP: ``pmd_reuse`` or ``pmd_split`` (then the caller retries at PTE level)."""
    pmd = p.mm.pmds[t]
    if P.pte_write(pmd):  # a write that takes no fault: dirty and young, as a PTE's
        p.mm.pmds[t] = P.pte_mkdirty(P.pte_mkyoung(pmd))
        return "none"
    f = wc.m.page_folio[P.pte_pfn(pmd)]
    if wp_huge_pmd_reuse(wc, f):
        p.mm.pmds[t] = P.pte_mkdirty(P.pte_mkwrite(pmd))
        if wc.v.anon_exclusive:
            wc.m.page_flags[wc.m.folio_first_pfn[f]] |= PAGE_ANON_EXCLUSIVE
        return "pmd_reuse"
    split_huge_pmd(wc, p, t)
    return "pmd_split"


def do_anonymous_page(wc: WriteContext, p: _Proc, t: int, i: int) -> None:
    row = p.mm.tables.setdefault(t, [0] * PTRS_PER_TABLE)
    q = wc.new_anon_page()
    row[i] = P.mk_pte(q, True, True, True, False)
    p.mapped[wc.m.page_folio[q]] = 1
    p.mm.rss[MM_ANONPAGES] += 1


def handle_mm_fault(wc: WriteContext, p: _Proc, a: int) -> list[str]:
    """One write of ``p`` to address ``a``: the events it counts (two for a PMD split and its retry)."""
    vma = wc.find_vma(p, a)
    if vma is None or not vma.flags & VM_WRITE:
        return ["segv"]
    t, i = divmod(a, PTRS_PER_TABLE)
    if wc.fc is not None:
        lazy_fault(wc, p, t, vma, "fault")
    shared = bool(vma.flags & VM_SHARED)
    if t in p.mm.pmds:
        if shared:
            return ["none"]
        ev = do_huge_pmd_wp_page(wc, p, t)
        if ev != "pmd_split":
            return [ev]
        return [ev, *handle_mm_fault(wc, p, a)]
    row = p.mm.tables.get(t)
    v = 0 if row is None else row[i]
    kind = P.pte_kind(v)
    if shared or (kind == P.KIND_PRESENT and P.pte_special(v)):
        if kind == P.KIND_PRESENT and not P.pte_special(v):  # the page itself is written in place
            wc.m.page_content[P.pte_pfn(v)] = wc.m.new_content()
        return ["none"]
    if kind == P.KIND_NONE:
        if vma.backing != BACKING_ANON:
            return ["unmodelled"]
        do_anonymous_page(wc, p, t, i)
        return ["anon_fault"]
    if kind != P.KIND_PRESENT:
        return ["unmodelled"]
    if P.pte_write(v):
        row[i] = P.pte_mkdirty(P.pte_mkyoung(v))
        wc.m.page_content[P.pte_pfn(v)] = wc.m.new_content()
        return ["none"]
    return [do_wp_page(wc, p, row, i, v)]


# --- the lazy designs' additions (spec 12.2-12.5) ----------------------------------------------------------------


def lazy_fault(wc: WriteContext, p: _Proc, t: int, vma, trigger: str) -> None:
    """What a fault of ``p`` on table ``t`` does first under a lazy design: ``odf-paper`` unshares a table whose PMD
    is write-protected (in a VMA with ``VM_WRITE``), ``odf-cowpte`` unshares (or reuses) a shared table, and the
    ``async-fork`` parent copies a deferred table for the child (``trigger``: fault or gup)."""
    fc, table_fork = wc.fc, wc.v.table_fork
    if t not in p.mm.wp:
        return
    if table_fork == "share" and vma.flags & VM_WRITE:
        lazy.odfp_unshare(fc, p.mm, t, vma)
    elif table_fork == "share_accounted":
        lazy.odfc_unshare(fc, p.mm, t)
    elif table_fork == "defer" and p.name == "parent":
        deferred_copy(wc, t, trigger)


def deferred_copy(wc: WriteContext, t: int, trigger: str) -> None:
    """``async_copy`` of table ``t`` for the child, the child's rmap counts kept; after ENOMEM every other deferred
    table is released and the child torn down (outcome ``async_enomem``)."""
    fc, child = wc.fc, wc.procs[wc.async_child]
    calls = len(fc.trace.calls)
    ok = lazy.async_copy(fc, t, trigger, copy_table)
    for v in child.mm.tables.get(t, ()):  # what the copy mapped, a failed one's too
        if P.pte_kind(v) == P.KIND_PRESENT and not P.pte_special(v):
            f = wc.m.page_folio[P.pte_pfn(v)]
            child.mapped[f] = child.mapped.get(f, 0) + 1
    if not ok:
        lazy.async_release(fc)
        exit_mmap(wc, wc.async_child)
        wc.stopped = ("async_enomem", {"table": t, "trigger": trigger})
        return
    for rec in fc.trace.calls[calls:]:
        wc.skew += sum(1 for _, q, src, _ in rec.installs if wc.m.page_content[q] != wc.fork_content[src])


def child_sync(wc: WriteContext, k: int = 0, who: str = "child", trigger: str = "child") -> None:
    """``async_fork_cpr_rest``: child ``who`` copies its deferred tables (the next ``k``; 0: all), in address order,
    charged to the child's start (``child_sync``); ``trigger`` ``vma``: the parent copies them first (a second
    fork, spec 12.4), charged to the parent."""
    parent = wc.procs["parent"].mm
    if wc.fc is None or not parent.pending or who != wc.async_child:
        return
    wc.charge("child_sync" if trigger == "child" else "parent")
    wc.fc.counts["async.sync"] += trigger == "child"
    for t in sorted(parent.pending)[: k or None]:
        deferred_copy(wc, t, trigger)
        if wc.stopped[0] != "ok":
            return


def second_fork(wc: WriteContext) -> None:
    """``parent:fork``: the parent forks again, by the same variant (fork number + 1), its stall charged to the
    parent's step; its child is ``child2``. Under async-fork the first child's deferred tables are copied first
    (trigger ``vma``, spec 12.4: U). A second fork that fails ends the phase."""
    child_sync(wc, who=wc.async_child, trigger="vma")
    if wc.stopped[0] != "ok":
        return
    oracle, inject, seq = wc.fork_args
    parent = wc.procs["parent"].mm
    fc = ForkContext(None, wc.v.name, oracle, inject, seq + 1, machine=wc.m, parent=parent, child=MMState())
    fc.store = wc.fc.store if wc.fc is not None else lazy.TableStore()
    lazy.watch_events(fc)
    fc.counts = wc.table_counts["parent"]
    stopped = dup_mmap(fc, plan_fork(parent.to_mm()))
    if stopped[0] != "ok":
        teardown(fc)
        wc.stopped = (stopped[0], {"step": "parent:fork", "oops": stopped[1], "enomem": stopped[2]})
        return
    wc.add_proc(SECOND_CHILD, fc.child)
    wc.fork_content = np.array(wc.m.page_content, np.uint64)  # the skew of child2's copies: since this fork
    if wc.fc is not None:
        wc.fc = fc  # later unshares and deferred copies: the second fork's (its child is child2)
        wc.async_child = SECOND_CHILD


def gup_pin(wc: WriteContext, p: _Proc, a: int, fast: bool) -> list[str]:
    """``X:pin:A`` (spec 12.5): ``FOLL_PIN | FOLL_WRITE`` through the slow GUP path, resolved as a write-protect
    fault where the entry is write-protected (an anonymous fault where there is none), then the pin on the page
    ``p`` maps; ``pin.fast`` (``async-fork`` only) pins with no fault and no fixup. Its events, as a write's."""
    vma = wc.find_vma(p, a)
    if vma is None or not vma.flags & VM_WRITE:
        return ["segv"]
    t, i = divmod(a, PTRS_PER_TABLE)
    v = p.mm.entry(a)
    ev = ["none"]
    if not fast and t not in p.mm.pmds:
        odfp_in_place = wc.v.table_fork == "share" and P.pte_kind(v) == P.KIND_PRESENT and P.pte_write(v)
        if wc.fc is not None and not odfp_in_place:
            lazy_fault(wc, p, t, vma, "gup")
        v = p.mm.entry(a)
        if not (P.pte_kind(v) == P.KIND_PRESENT and P.pte_write(v)):
            ev = handle_mm_fault(wc, p, a)
    elif not fast and not P.pte_write(p.mm.pmds[t]):
        ev = handle_mm_fault(wc, p, a)
    pfn = frame_of(p.mm, a)
    if pfn < 0:
        return ev + ["unmodelled"]
    m, f = wc.m, wc.m.page_folio[pfn]
    m.folio_refcount[f] += pin_refcount_delta(m.folio_order[f], wc.v.large_pin_order)
    if is_large_for_pins(m.folio_order[f], wc.v.large_pin_order):
        m.folio_pincount[f] += 1
    m.folio_true_pins[f] += 1
    p.mm.has_pinned = True
    if p.name == "parent":
        wc.pins.append((a, pfn))
    return ev


def frame_of(mm: MMState, a: int) -> int:
    """The page ``mm`` maps at ``a`` (by a present PTE or a huge PMD), or -1."""
    t = a // PTRS_PER_TABLE
    if t in mm.pmds:
        return P.pte_pfn(mm.pmds[t]) + a % PTRS_PER_TABLE
    v = mm.entry(a)
    return P.pte_pfn(v) if P.pte_kind(v) == P.KIND_PRESENT and not P.pte_special(v) else -1


def exit_mmap(wc: WriteContext, who: str = "child") -> None:
    """``child:exit``: every child entry drops what it holds (spec 5.4's teardown); the child is left empty. Under a
    lazy design the child first copies what is deferred, and a table it shares is released as its design says."""
    if wc.fc is not None:
        child_sync(wc, who=who)
        wc.charge(who)
        child = wc.procs[who].mm
        lazy.release_shared_tables(wc.fc, child, child.rss)
        # what the child stays charged with once its own entries are torn down: not 0 where odf-paper charged a
        # freed table's pages to it (spec 12.11, item 2; the kernel's check_mm reports a bad rss-counter state)
        left = child.to_mm()
        residue = left.rss - decode.rss_of(left.pte, left.pmd, wc.m.to_memory())
        wc.exit_rss = (residue + (wc.exit_rss or 0)).tolist()  # over every child that exited
    m, p = wc.m, wc.procs[who]
    for row in p.mm.tables.values():
        for v in row:
            kind = P.pte_kind(v)
            if kind == P.KIND_PRESENT and not P.pte_special(v):
                wc.put_mapping(p, P.pte_pfn(v))
            elif kind == P.KIND_DEVICE_PRIVATE:
                wc.put_mapping(p, P.swp_offset(v), present=False)
            elif kind == P.KIND_SWAP:
                m.swap_count[P.swp_offset(v)] -= 1
    for v in p.mm.pmds.values():
        f = m.page_folio[P.pte_pfn(v)]
        m.folio_refcount[f] -= 1
        m.folio_pmd_mapcount[f] -= 1
        if m.folio_refcount[f] == 0:
            m.folio_flags[f] |= FOLIO_FREED
    wc.procs[who] = _Proc(who, MMState())
    wc.exited.add(who)
    wc.child_exited = "child" in wc.exited


def mapped_addresses(p: _Proc) -> list[int]:
    """``all``: the addresses where ``p`` has a present PTE or a PMD-mapped THP, ascending."""
    out = [t * PTRS_PER_TABLE + j for t in p.mm.pmds for j in range(PTRS_PER_TABLE)]
    for t, row in p.mm.tables.items():
        out.extend(t * PTRS_PER_TABLE + j for j, v in enumerate(row) if P.pte_kind(v) == P.KIND_PRESENT)
    return sorted(out)


def step_addresses(wc: WriteContext, s: Step):
    """The addresses a step writes, ascending: those of ``all``, or the range."""
    return mapped_addresses(wc.procs[s.who]) if s.all else range(s.lo, s.hi + 1)


def pinned_frames(mm: MM, memory: Memory) -> tuple[np.ndarray, np.ndarray]:
    """(addresses, frames) where ``mm`` maps a page of a truly pinned folio (a PTE or a PMD-mapped THP)."""
    if not (memory.folio_true_pins > 0).any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    addr, val = entries(mm)
    ok = decode.maps_frame(val)
    addr, pfn = addr[ok], decode.offsets(val[ok]).astype(np.int64)
    keep = memory.folio_true_pins[memory.page_folio[pfn]] > 0
    addrs, frames = [addr[keep]], [pfn[keep]]
    for t, v in zip(mm.pmd_index.tolist(), mm.pmd.tolist()):
        head = P.pte_pfn(v)
        if memory.folio_true_pins[memory.page_folio[head]] > 0:
            addrs.append(t * PTRS_PER_TABLE + np.arange(PTRS_PER_TABLE, dtype=np.int64))
            frames.append(head + np.arange(PTRS_PER_TABLE, dtype=np.int64))
    return np.concatenate(addrs), np.concatenate(frames)


def frames_at(mm: MM, addr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frame, writable) that ``mm`` maps at each address (frame -1: no page), by a PTE or a huge PMD."""
    v = ptes_at(mm, addr)
    ok = decode.maps_frame(v)
    frame = np.where(ok, decode.offsets(v).astype(np.int64), -1)
    writable = ok & ((v & np.uint64(P.PAGE_RW)) != 0)
    if mm.pmd.size:
        k = np.searchsorted(mm.pmd_index, addr // PTRS_PER_TABLE)
        hit = k < mm.pmd_index.size
        hit[hit] = mm.pmd_index[k[hit]] == addr[hit] // PTRS_PER_TABLE
        pmd = mm.pmd[k[hit]]
        frame[hit] = decode.offsets(pmd).astype(np.int64) + addr[hit] % PTRS_PER_TABLE
        writable[hit] = (pmd & np.uint64(P.PAGE_RW)) != 0
    return frame, writable


def dma_view(parent0: AddressSpace, parent1: MM, child1: MM, pins=(), tables=None) -> dict[str, int]:
    """Spec 11.3: the parent's pinned pages at the start of the phase (``parent0``), and after it (``parent1``,
    ``child1``) how many the parent no longer maps there and how many the child maps there writable. Spec 12.7: the
    pages pinned by the phase's ``parent:pin`` steps (``pins``: (address, frame)) are DMA addresses too, and a
    frame the child reaches through a write-protected PMD (``tables``) is not writable."""
    addr, frame = pinned_frames(parent0.mm, parent0.memory)
    if len(pins):
        known = set(addr.tolist())
        extra = [(a, f) for a, f in pins if a not in known]
        addr = np.concatenate([addr, np.array([a for a, _ in extra], np.int64)])
        frame = np.concatenate([frame, np.array([f for _, f in extra], np.int64)])
    p, _ = frames_at(parent1, addr)
    c, cw = frames_at(child1, addr)
    if tables is not None and "child" in tables.roles and child1.nr_tables:
        _, wp = tables.of("child")
        cw &= ~np.isin(addr // PTRS_PER_TABLE, child1.table_index[wp])
    return {
        "pinned": int(addr.size),
        "parent_diverged": int((p != frame).sum()),
        "child_aliased": int(((c == frame) & cw).sum()),
    }


def mapped(mm: MM) -> np.ndarray:
    """The addresses where ``mm`` maps a page (a present PTE, or a PMD-mapped THP), ascending (i64)."""
    addr, val = entries(mm)
    out = [addr[decode.kinds(val) == P.KIND_PRESENT]]  # ascending: the tables are
    if mm.pmd_index.size == 0:
        return out[0]
    out += [np.arange(t * PTRS_PER_TABLE, (t + 1) * PTRS_PER_TABLE, dtype=np.int64) for t in mm.pmd_index.tolist()]
    return np.sort(np.concatenate(out))


def _runs(who: str, addrs: np.ndarray) -> list[Step]:
    """Steps writing the ascending addresses ``addrs``, one per run of consecutive ones."""
    if addrs.size == 0:
        return []
    cut = np.flatnonzero(np.diff(addrs) != 1) + 1
    return [Step(who, int(r[0]), int(r[-1])) for r in np.split(addrs, cut)]


def generated_steps(parent: MM, child: MM, fractions: dict, order: str, child_exits: bool, rng) -> list[Step]:
    """A write phase drawn by ``rng``: each process writes ``fractions[who]`` of the pages it maps after the fork
    (chosen without replacement, written in ascending order), ``parent_first``, ``child_first`` or ``interleaved``
    (page by page, the parent before the child); with ``child_exits`` the child exits after its writes."""
    chosen = {}
    for who, mm in (("parent", parent), ("child", child)):
        m = mapped(mm)
        f = fractions.get(who, 0.0)
        k = max(int(round(f * m.size)), int(f > 0 and m.size > 0))  # a fraction above 0 writes a page at least
        chosen[who] = np.sort(rng.choice(m, size=k, replace=False)) if k else np.zeros(0, np.int64)
    exit_step = [Step("child", exit=True)] if child_exits else []
    if order == "parent_first":
        return _runs("parent", chosen["parent"]) + _runs("child", chosen["child"]) + exit_step
    if order == "child_first":
        return _runs("child", chosen["child"]) + exit_step + _runs("parent", chosen["parent"])
    ps, cs = set(chosen["parent"].tolist()), set(chosen["child"].tolist())
    steps = []
    for a in sorted(ps | cs):
        steps += [Step(who, a, a) for who, s in (("parent", ps), ("child", cs)) if a in s]
    return steps + exit_step


def _reference_phase(parent: AddressSpace, child: MM, variant: str, steps, tables=None, fork_args=None):
    """The steps on the reference's containers: the :class:`WriteContext` after them."""
    wc = WriteContext(parent, child, variant, tables, fork_args)
    for s in steps:
        if s.who != "parent" and s.op != "sync":
            child_sync(wc, who=s.who)  # async-fork: the child's start copies everything deferred before it runs
        if wc.stopped[0] != "ok":
            break
        wc.charge(s.who)
        try:
            run_step(wc, s)
        except Oops as stop:
            wc.stopped = ("oops", {"function": stop.function, "addr": stop.addr, "reason": stop.reason})
            break
    return wc


def run_step(wc: WriteContext, s: Step) -> None:
    """One step on the reference's containers, its events counted for its writer."""
    if s.exit:
        exit_mmap(wc, s.who)
        return
    if s.op == "sync":
        child_sync(wc, s.k, s.who)
        return
    if s.op == "fork":
        second_fork(wc)
        return
    p, counts = wc.procs[s.who], wc.counts[s.who]
    for a in step_addresses(wc, s):
        for ev in gup_pin(wc, p, a, s.op == "pin.fast") if s.op != "write" else handle_mm_fault(wc, p, a):
            counts[ev] += 1


def _reserved_tables(mm: MM, steps, who: str) -> np.ndarray:
    """The tables a write phase may give ``mm`` rows for: its own, its huge PMDs' (a split), and those of the range
    steps of ``who`` that meet an anonymous VMA (a fault where there was no table)."""
    out = [mm.table_index, mm.pmd_index]
    anon = mm.vma_backing == BACKING_ANON
    for s in steps:
        if s.who != who or s.all or s.exit:
            continue
        t = np.arange(s.lo // PTRS_PER_TABLE, s.hi // PTRS_PER_TABLE + 1, dtype=np.int64)
        lo, hi = t * PTRS_PER_TABLE, (t + 1) * PTRS_PER_TABLE
        meets = np.zeros(t.size, bool)
        for vs, ve in zip(mm.vma_start[anon].tolist(), mm.vma_end[anon].tolist()):
            meets |= (lo < ve) & (hi > vs)
        out.append(t[meets])
    return np.unique(np.concatenate(out))


def _proc(kernels, mm: MM, tables: np.ndarray, memory: Memory, folios: int):
    """A writer's arrays for the compiled write phase (``kernels.Proc``): a row per table of ``tables``."""
    rows = np.searchsorted(tables, mm.table_index)
    pte = np.zeros((tables.size, PTRS_PER_TABLE), np.uint64)
    pte[rows] = mm.pte
    exists = np.zeros(tables.size, bool)
    exists[rows] = True
    rowpmd = np.full(tables.size, -1, np.int64)
    rowpmd[np.searchsorted(tables, mm.pmd_index)] = np.arange(mm.pmd.size)
    mapped = decode.frame_folio_counts(mm.pte, memory.page_folio, folios)
    np.add.at(mapped, memory.page_folio[decode.offsets(mm.pmd).astype(np.int64)], PTRS_PER_TABLE)
    arrays = dict(tix=tables, pte=pte, exists=exists, rowpmd=rowpmd, pmd=mm.pmd, pmdlive=np.ones(mm.pmd.size, bool))
    arrays.update(vstart=mm.vma_start, vend=mm.vma_end, vflags=mm.vma_flags, vbacking=mm.vma_backing, rss=mm.rss)
    arrays["mapped"] = mapped
    # in the fields' dtypes, the mm's arrays copied (the phase writes some; the parent's and the child's arrays are
    # then one writable type), the new ones as they are
    made = ("tix", "pte", "exists", "rowpmd", "pmdlive", "mapped")
    return kernels.Proc(
        **{f: np.array(arrays[f], dt, copy=f not in made) for f, (dt, _) in GROUP_FIELDS["proc"].items()}
    )


def _mm_after(pr, mm: MM) -> MM:
    """The MM of a process after the compiled write phase: its rows that exist, its PMDs that were not split."""
    live = pr.pmdlive
    return dataclasses.replace(
        mm,
        table_index=pr.tix[pr.exists],  # (indexing by a mask copies)
        pte=pr.pte[pr.exists],
        pmd_index=mm.pmd_index[live],
        pmd=pr.pmd[live],
        rss=pr.rss.copy(),
    )


def _units(pr, s: Step) -> tuple[int, int, int, int]:
    """The rows ``r0 .. r1 - 1`` a step's units write, and its addresses ``lo .. hi`` (``all``: every row)."""
    if s.all:
        return 0, pr.tix.shape[0], 0, WRITE_EVERY
    r0 = int(np.searchsorted(pr.tix, s.lo // PTRS_PER_TABLE))
    r1 = int(np.searchsorted(pr.tix, s.hi // PTRS_PER_TABLE, side="right"))
    return r0, r1, s.lo, s.hi


def scratch(kernels, n: int, nrss: int, slots: int):
    """A step's scratch (``kernels.Scratch``) for ``n`` units and ``slots`` new pages and contents."""
    shapes = {"counts": (n, len(WRITE_EVENTS)), "rss": (n, nrss), "newi": (slots,), "cpfn": (slots,)}
    return kernels.Scratch(**{f: np.zeros(shapes.get(f, (n,)), dt) for f, (dt, _) in GROUP_FIELDS["scratch"].items()})


def _with_room(a: np.ndarray, n: int) -> np.ndarray:
    """A copy of ``a`` with room for ``n`` more elements, zero (``np.zeros`` of that size takes pages the system
    zeroes when first written: the room costs nothing until used)."""
    out = np.zeros(a.shape[0] + n, a.dtype)
    out[: a.shape[0]] = a
    return out


def _compiled_step(kernels, s: Step, pr, mem, v, used: list, counts: np.ndarray) -> None:
    """One step of writes on ``kernels`` (:mod:`gpusim.kernels.writes`): plan the units, run them, number the new
    pages, folios and contents they made after ``used`` (pages, folios, contents so far; advanced), count into
    ``counts``."""
    r0, r1, lo, hi = _units(pr, s)
    sc = scratch(kernels, r1 - r0, pr.rss.shape[0], 0)
    kernels.write_plan(mem, pr, sc, r0, lo, hi, s.all)
    bound = sc.base.copy()
    sc.base[:] = np.cumsum(bound) - bound
    total = int(bound.sum())
    sc = sc._replace(newi=np.zeros(total, sc.newi.dtype), cpfn=np.zeros(total, sc.cpfn.dtype))
    kernels.write_run(mem, pr, sc, r0, lo, hi, s.all, v.wp_reuse, v.anon_exclusive)
    pages = int(sc.kp.sum())
    sc.pp[:] = np.cumsum(sc.kp) - sc.kp
    sc.pc[:] = np.cumsum(sc.kc) - sc.kc
    kernels.write_fixup(mem, pr, sc, r0, used[0], used[1], used[2], v.anon_exclusive)
    used[:] = [used[0] + pages, used[1] + pages, used[2] + int(sc.kc.sum())]
    counts += sc.counts.sum(axis=0)
    pr.rss[:] += sc.rss.sum(axis=0)
    if not s.all and not kernels.write_gaps(pr, lo, hi, r0, r1, counts):
        raise RuntimeError("write phase: a table an anonymous VMA meets had no row reserved")


def compiled_start(parent: AddressSpace, child: MM, tables: dict, extra: int, kernels) -> tuple:
    """The compiled write phase's state: (the memory group, with room for ``extra`` new pages and folios; the
    parent's and the child's ``Proc``, with a row for each of ``tables[writer]``; the pages, folios and contents
    used so far)."""
    m0 = parent.memory
    mem = kernels.WMem(**{f: _with_room(getattr(m0, f), extra if f in _GROWN else 0) for f in GROUP_FIELDS["wmem"]})
    folios = m0.nr_folios + extra
    procs = [_proc(kernels, mm, tables[w], m0, folios) for w, mm in (("parent", parent.mm), ("child", child))]
    return mem, procs, [m0.nr_pages, m0.nr_folios, m0.next_content]


def compiled_end(parent: AddressSpace, child: MM, mem, procs, used, exited: bool) -> tuple[AddressSpace, MM]:
    """The states after the compiled writes: (the parent and the memory, the child: empty once it exited)."""
    arrays = {f: getattr(parent.memory, f) for f in MEMORY_FIELDS}
    arrays.update({f: getattr(mem, f)[: used[0] if f.startswith("page_") else used[1]] for f in _GROWN})
    arrays["swap_count"] = mem.swap_count
    memory = Memory(**arrays, next_content=used[2])
    after = AddressSpace(_mm_after(procs[0], parent.mm), memory)
    child_after = MMState().to_mm() if exited else _mm_after(procs[1], child)  # an exited child has no mm
    return after, child_after


def _compiled_phase(parent: AddressSpace, child: MM, variant: str, steps, kernels) -> tuple:
    """The steps compiled (:func:`_compiled_step`): what :func:`_reference_phase` returns, equal to it."""
    v = get_variant(variant)
    tables = {w: _reserved_tables(mm, steps, w) for w, mm in (("parent", parent.mm), ("child", child))}
    # room for a new page per write: a range writes its addresses, ``all`` at most every address of the writer's rows
    extra = sum(tables[s.who].size * PTRS_PER_TABLE if s.all else (0 if s.exit else s.hi - s.lo + 1) for s in steps)
    mem, procs, used = compiled_start(parent, child, tables, extra, kernels)
    counts = np.zeros((2, len(WRITE_EVENTS)), np.int64)
    exited = False
    for s in steps:
        if s.exit:
            kernels.write_exit(mem, procs[1])
            exited = True
        elif s.op != "sync":  # spec 12.5: only async-fork defers copies for the child to make
            k = WRITERS.index(s.who)
            _compiled_step(kernels, s, procs[k], mem, v, used, counts[k])
    out_counts = {w: dict(zip(WRITE_EVENTS, counts[k].tolist())) for k, w in enumerate(WRITERS)}
    return (*compiled_end(parent, child, mem, procs, used, exited), out_counts, exited)


_GROWN = tuple(f for f in GROUP_FIELDS["wmem"] if f != "swap_count")  # room for the new pages and folios


def run_write_phase(
    parent: AddressSpace, child: MM, variant: str, writes, kernels=None, tables=None, fork_args=None
) -> WritePhase:
    """The write phase ``writes`` (notation, or steps) after a fork whose final states are ``parent`` and ``child``
    (and, for a lazy design, ``tables``; ``fork_args``: the fork's oracle, injections and number, which its deferred
    copies use); the inputs are not modified. With ``kernels`` that have a compiled write phase (the CPU and CUDA
    engines'), it runs compiled; else in the reference's Python. Both give the same result."""
    steps = parse_writes(writes)
    total = sum(s.hi - s.lo + 1 for s in steps if not s.all and not s.exit and s.op != "sync")
    if total > MAX_WRITES:
        raise WritesError(f"the write phase writes {total:,} addresses, more than {MAX_WRITES:,}")
    v = get_variant(variant)
    fast_pins = [s.text for s in steps if s.op == "pin.fast"]
    if fast_pins and v.table_fork != "defer":
        raise WritesError(f"step '{fast_pins[0]}': pin.fast is modelled for async-fork only (spec 12.5)")
    if kernels is not None and hasattr(kernels, "write_run") and not v.lazy:  # (a lazy design's: the reference's)
        lazy_steps = [s.text for s in steps if s.op not in ("write", "sync") or s.who == SECOND_CHILD]
        if lazy_steps:
            raise WritesError(
                f"step '{lazy_steps[0]}' runs on the reference backend only: its compiled form is not built yet"
            )
        after, child_after, counts, exited = _compiled_phase(parent, child, variant, steps, kernels)
        return WritePhase(steps, counts, dma_view(parent, after.mm, child_after), after, child_after, exited)
    wc = _reference_phase(parent, child, variant, steps, tables, fork_args)
    after, child_after = wc.states()
    objs = wc.tables()
    dma = dma_view(parent, after.mm, child_after, wc.pins, objs)
    if v.lazy:
        dma["child_snapshot_skew"] = wc.skew
    out = WritePhase(steps, wc.counts, dma, after, child_after, wc.child_exited)
    out.outcome, out.oops = wc.stopped
    out.exit_rss = wc.exit_rss
    if SECOND_CHILD in wc.procs:
        out.child2 = wc.procs[SECOND_CHILD].mm.to_mm()
    if v.lazy:
        out.table_counts, out.tables = wc.table_counts, objs
    return out
