"""The invariant checker of spec section 6, run after every fork whose outcome is ``ok`` or ``enomem``.

It compares the state before the fork, the state after it and the engine's trace (handled indices, check log,
windows, installs, applied events). Wherever it can, it recomputes a fact from the states and the spec's rules
instead of trusting a counter: reference counts from the child's page tables, the check cadence by replaying the
+1/+8 progress weights, the early-copy predicate from the pre-fork state. Each violation is one line naming the
invariant by its number in the spec.
"""

from __future__ import annotations

from collections import defaultdict
from functools import cached_property

import numpy as np

from gpusim.kernels import flags as F
from gpusim.kernels import pte as P
from gpusim.kernels.flags import (
    BREAK_AT,
    FOLIO_ANON,
    FOLIO_DEVICE_PRIVATE,
    FOLIO_FREED,
    FOLIO_SWAPBACKED,
    PAGE_ANON_EXCLUSIVE,
    PTRS_PER_TABLE,
    VM_SHARED,
    VM_WRITE,
    is_cow_mapping,
)
from gpusim.kernels.folio import folio_maybe_dma_pinned
from gpusim.model import decode
from gpusim.model.result import InvariantReport
from gpusim.model.state import AddressSpace, entries, ptes_at
from gpusim.model.variants import get_variant

_SHARE_KINDS = ("share", "special", "batch")
MAX_REPORTED = 20


def first_mismatches(got: np.ndarray, base: np.ndarray, add: np.ndarray, limit: int = 5) -> np.ndarray:
    """The first ``limit`` positions ``i < len(base)`` where ``got[i] != base[i] + add[i]`` (one compiled pass for
    large arrays)."""
    n = base.shape[0]
    if n >= F.COMPILED_FROM:
        from gpusim.kernels import scan

        return scan.mismatches(got, base, add, limit)[0]
    return np.flatnonzero(got[:n] != base + add[:n])[:limit]


class _Checker:
    def __init__(self, before: AddressSpace, result, oracle, fork_seq: int):
        self.b, self.r, self.oracle, self.fork_seq = before, result, oracle, fork_seq
        self.first_new_pfn = before.memory.nr_pages  # pages the fork allocates come after the input's
        self.variant = result.variant
        self.v = get_variant(result.variant)
        self.tr = result.trace
        self.m0, self.m1 = before.memory, result.memory
        self.ok = result.outcome == "ok"
        self.complete = result.trace_complete  # a fast engine traces only the tables of its Python loop
        self.violations: list[str] = []
        self.events = [e for e in self.tr.events if e.applied]
        self.touched_addr = {e.addr for e in self.events if e.name in ("zap", "reclaim", "touch")}
        self.touched_folio = {
            e.folio for e in self.events if e.folio >= 0 and e.name in ("pin", "unpin", "zap", "reclaim")
        }
        self.split_folios = {f for _, f in self.tr.splits}
        self.split_tables = np.array([t for t, _ in self.tr.splits], np.int64)
        self.parent1 = {t: row for t, row in zip(result.parent.mm.table_index.tolist(), result.parent.mm.pte)}
        self.child = {t: row for t, row in zip(result.child.table_index.tolist(), result.child.pte)}
        self.vma_flags = [int(x) for x in before.mm.vma_flags.tolist()]

    @cached_property
    def child_entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(addresses, values) of the child's non-empty PTEs (read by several invariants)."""
        return entries(self.r.child)

    def fail(self, inv: int, msg: str) -> None:
        if len(self.violations) < MAX_REPORTED:
            self.violations.append(f"{inv}: {msg}")
        elif len(self.violations) == MAX_REPORTED:
            self.violations.append("...: more violations not listed")

    # -- state lookups
    def val0(self, a: int) -> int:
        """The parent's entry at ``a`` before any PTE of the fork was handled (after a THP split)."""
        return int(self.val0_at(np.array([a], np.int64))[0])

    def val0_at(self, a: np.ndarray) -> np.ndarray:
        """:meth:`val0` of every address of ``a``: a split THP's table maps the folio's pages in order, with the
        bits of the PMD before the fork."""
        out = ptes_at(self.b.mm, a)
        if self.tr.splits:
            t = a // PTRS_PER_TABLE
            hit = np.isin(t, self.split_tables)
            pmd0 = self.b.mm.pmd[np.searchsorted(self.b.mm.pmd_index, t[hit])]
            base = decode.without_offsets(pmd0) & ~np.uint64(P.PAGE_PSE)
            out[hit] = decode.with_offsets(base, decode.offsets(pmd0) + a[hit] % PTRS_PER_TABLE)
        return out

    def val1(self, a: int) -> int:
        row = self.parent1.get(a // PTRS_PER_TABLE)
        return 0 if row is None else int(row[a % PTRS_PER_TABLE])

    def child_val(self, a: int) -> int:
        row = self.child.get(a // PTRS_PER_TABLE)
        return 0 if row is None else int(row[a % PTRS_PER_TABLE])

    def excl0_at(self, pfn: np.ndarray) -> np.ndarray:
        """Whether each page was anon-exclusive before the fork (a split THP's pages: its head page's flag)."""
        f = self.m0.page_folio[pfn]
        split = np.isin(f, np.array(sorted(self.split_folios), np.int64))
        pfn = np.where(split, self.m0.folio_first_pfn[f], pfn)
        return (self.m0.page_flags[pfn] & PAGE_ANON_EXCLUSIVE) != 0

    # -- the invariants
    def run(self) -> None:
        self.coverage_and_restarts()  # 1, 2
        self.shared_references()  # 3
        self.early_copies()  # 4, 5, 9
        self.per_pte_effects()  # 6
        self.rss()  # 7
        self.swap()  # 8
        self.xu_protocol()  # 10
        self.oracle_cadence()  # 11
        self.flags()  # 12
        self.pin_hazard()  # 13

    def coverage_and_restarts(self) -> None:
        calls = self.tr.calls
        for ci, rec in enumerate(calls):
            idx = [a + j for p in rec.passes for (a, _, n) in p.handled for j in range(n)]
            complete = rec.result == 0
            want = list(range(rec.call_start, rec.call_start + len(idx)))
            if idx != want:
                self.fail(
                    1,
                    f"call {rec.call_start}: handled indices are not {rec.call_start}, "
                    f"{rec.call_start + 1}, ... in order once each",
                )
            if complete and len(idx) != rec.end - rec.call_start:
                self.fail(1, f"call {rec.call_start}: {len(idx)} of {rec.end - rec.call_start} indices handled")
            if not complete and ci != len(calls) - 1:
                self.fail(1, f"call {rec.call_start} failed but the fork went on")
            if any(not rec.call_start <= a < rec.end for a in idx):
                self.fail(1, f"call {rec.call_start}: an index outside [{rec.call_start}, {rec.end}) handled")
            if rec.passes and rec.passes[0].start != rec.call_start:
                self.fail(2, f"call {rec.call_start}: first pass starts at {rec.passes[0].start}")
            for p, q in zip(rec.passes, rec.passes[1:]):
                if q.start != p.end:
                    self.fail(2, f"call {rec.call_start}: a pass starts at {q.start}, the previous broke at {p.end}")
        if self.ok and self.complete:
            nr = sum(rec.end - rec.call_start for rec in calls)
            got = sum(n for rec in calls for p in rec.passes for (_, _, n) in p.handled)
            if nr != got:
                self.fail(1, f"{got} indices handled for {nr} in the calls' ranges")

    def shared_references(self) -> None:
        m0, m1 = self.m0, self.m1
        cpte = self.r.child.pte
        if cpte.size >= F.COMPILED_FROM:  # the child's tables as they are: empty entries hold nothing
            from gpusim.kernels import scan

            child_map, child_ref = scan.child_references(cpte.reshape(-1), m1.page_folio, m1.nr_pages, m1.nr_folios)
        else:
            cpfn = decode.page_pfns(self.child_entries[1])
            child_map = np.bincount(cpfn, minlength=m1.nr_pages)
            child_ref = np.bincount(m1.page_folio[cpfn], minlength=m1.nr_folios)
        # what the fork should have added to each count: the child's references, and the events' and splits'
        add_ref, add_map = child_ref, child_map  # int32 from the compiled pass, as the counts themselves
        add_pmd = np.zeros(m1.nr_folios, np.int64)
        for v in self.r.child.pmd.tolist():
            f = int(m1.page_folio[P.pte_pfn(v)])
            add_ref[f] += 1
            add_pmd[f] += 1
        for e in self.events:
            if e.folio >= 0:
                add_ref[e.folio] += e.ref
            if e.pfn >= 0:
                add_map[e.pfn] += e.map
        for _, f in self.tr.splits:
            add_ref[f] += PTRS_PER_TABLE - 1
            add_pmd[f] -= 1
            first = int(m0.folio_first_pfn[f])
            add_map[first : first + PTRS_PER_TABLE] += 1
        for what, got, base, add in (
            ("folio {}: refcount {}, expected {}", m1.folio_refcount, m0.folio_refcount, add_ref),
            ("page {}: mapcount {}, expected {}", m1.page_mapcount, m0.page_mapcount, add_map),
            ("folio {}: PMD mapcount {}, expected {}", m1.folio_pmd_mapcount, m0.folio_pmd_mapcount, add_pmd),
        ):
            for i in first_mismatches(got, base, add).tolist():
                self.fail(3, what.format(i, int(got[i]), int(base[i]) + int(add[i])))
        if (m1.folio_refcount < 0).any() or (m1.page_mapcount < 0).any():
            self.fail(3, "a refcount or mapcount is negative")

    def content_at(self, pfn: int, seq: int) -> int:
        c = int(self.m0.page_content[pfn]) if pfn < self.m0.nr_pages else 0
        for e in self.events:
            if e.name == "write" and e.pfn == pfn and e.seq < seq:
                c = e.content
        return c

    def early_copies(self) -> None:
        """Invariants 4, 5 (each install, all at once) and 9 (allocation balance, N2/N3)."""
        # rows (VMA flags, addr, new pfn, source pfn, trace moment): the reference's calls, then the compiled slow
        # path's (no events act there, so the moment does not matter)
        parts = [
            np.array([(self.vma_flags[rec.vma], *i) for rec in self.tr.calls for i in rec.installs], np.int64).reshape(
                -1, 5
            )
        ]
        parts += [np.c_[p, np.zeros(len(p), np.int64)] for p in self.tr.compiled_installs]
        installs = np.concatenate(parts)
        dups = [np.array([d for rec in self.tr.calls for d in rec.duplicates], np.int64).reshape(-1, 3)]
        dups += [np.c_[p, np.zeros(len(p), np.int64)] for p in self.tr.compiled_duplicates]
        new_mapped = np.zeros(0, np.int64)  # how often the child maps each page the fork allocated
        if self.m1.nr_pages > self.first_new_pfn:
            cpfn = decode.page_pfns(self.child_entries[1])
            new_mapped = np.bincount(
                cpfn[cpfn >= self.first_new_pfn] - self.first_new_pfn, minlength=self.m1.nr_pages - self.first_new_pfn
            )
        self.check_installs(installs, np.concatenate(dups), new_mapped)
        self.allocation_balance(len(installs), new_mapped)

    def fail_each(self, inv: int, bad: np.ndarray, message) -> None:
        """One violation of invariant ``inv`` per index of ``bad`` (a bool mask), worded by ``message(i)``."""
        for i in np.flatnonzero(bad)[: MAX_REPORTED + 1].tolist():
            self.fail(inv, message(i))

    def check_installs(self, inst: np.ndarray, dups: np.ndarray, new_mapped: np.ndarray) -> None:
        """Invariants 4 and 5 for every early copy (rows of ``inst``: VMA flags, addr, new pfn, source pfn, trace
        moment; of ``dups``, page_duplicate's copies: new pfn, source pfn, moment)."""
        m1, first = self.m1, self.first_new_pfn
        own = inst[:, 2] >= first
        self.fail_each(
            5, ~own, lambda i: f"early copy at {inst[i, 1]} maps pfn {inst[i, 2]}, which the fork did not allocate"
        )
        vmaflags, a, q, src, moment = inst[own].T
        touched = np.isin(a, np.array(sorted(self.touched_addr), np.int64))
        self.fail_each(
            4,
            ~touched & (ptes_at(self.r.parent.mm, a) != self.val0_at(a)),
            lambda i: f"early-copied index {a[i]}: parent PTE changed by the fork",
        )
        if self.v.anon_exclusive:
            self.fail_each(
                4,
                (m1.page_flags[src] & PAGE_ANON_EXCLUSIVE) == 0,
                lambda i: f"early-copied index {a[i]}: source page lost anon_exclusive",
            )
        if self.v.xu_protocol:  # the copy was made earlier, by page_duplicate
            order = np.argsort(dups[:, 0], kind="stable")
            k = np.minimum(np.searchsorted(dups[order, 0], q), max(len(dups) - 1, 0))
            made = (k < len(dups)) & (dups[order[k], 0] == q) if len(dups) else np.zeros(len(q), bool)
            self.fail_each(5, ~made, lambda i: f"early copy at {a[i]}: no page_duplicate produced pfn {q[i]}")
            vmaflags, a, q, src, moment, k = (x[made] for x in (vmaflags, a, q, src, moment, k))
            src_d = dups[order[k], 1]
            self.fail_each(
                5, src_d != src, lambda i: f"early copy at {a[i]}: copied from pfn {src_d[i]}, installed for {src[i]}"
            )
            moment = dups[order[k], 2]
        want = self.contents_at(src, moment)
        self.fail_each(
            5,
            m1.page_content[q] != want,
            lambda i: (
                f"early copy at {a[i]}: content "
                f"{int(m1.page_content[q[i]])}, expected {int(want[i])} (source at the copy moment)"
            ),
        )
        self.check_install_targets(vmaflags, a, q, new_mapped)

    def check_install_targets(self, vmaflags: np.ndarray, a: np.ndarray, q: np.ndarray, new_mapped) -> None:
        """Invariant 5 on what the early copies became: freed after a teardown, else mapped once, writable as the
        VMA, by an anon order-0 folio with refcount and mapcount 1 (and anon-exclusive in 6.18)."""
        m1 = self.m1
        fq = m1.page_folio[q]
        if not self.ok:
            self.fail_each(
                5,
                ((m1.folio_flags[fq] & FOLIO_FREED) == 0) | (m1.folio_refcount[fq] != 0),
                lambda i: f"early copy at {a[i]}: not freed by the teardown",
            )
            return
        cv = ptes_at(self.r.child, a)
        base = np.where(
            (vmaflags & VM_WRITE) != 0,
            np.uint64(P.mk_pte(0, True, True, True, False)),
            np.uint64(P.mk_pte(0, False, True, True, False)),
        )
        want_pte = decode.with_offsets(base, q)
        self.fail_each(
            5,
            cv != want_pte,
            lambda i: f"early copy at {a[i]}: child PTE {int(cv[i]):#x}, expected {int(want_pte[i]):#x}",
        )
        good = (
            (m1.folio_order[fq] == 0)
            & (m1.folio_refcount[fq] == 1)
            & (m1.page_mapcount[q] == 1)
            & ((m1.folio_flags[fq] & (FOLIO_ANON | FOLIO_SWAPBACKED | FOLIO_FREED)) == FOLIO_ANON | FOLIO_SWAPBACKED)
        )
        self.fail_each(
            5, ~good, lambda i: f"early copy at {a[i]}: folio {fq[i]} is not an anon order-0 page with ref 1, map 1"
        )
        if self.v.anon_exclusive:
            self.fail_each(
                5, (m1.page_flags[q] & PAGE_ANON_EXCLUSIVE) == 0, lambda i: f"early copy at {a[i]}: not anon_exclusive"
            )
        mapped = new_mapped[q - self.first_new_pfn]
        self.fail_each(
            5, mapped != 1, lambda i: f"early copy at {a[i]}: pfn {q[i]} mapped by {int(mapped[i])} child PTEs"
        )

    def contents_at(self, src: np.ndarray, moment: np.ndarray) -> np.ndarray:
        """The content of each page ``src`` at trace moment ``moment``: its content before the fork, or that of the
        last injected write before that moment."""
        m0 = self.m0
        out = (
            np.where(src < m0.nr_pages, m0.page_content[np.minimum(src, max(m0.nr_pages - 1, 0))], 0)
            if m0.nr_pages
            else np.zeros(len(src), np.uint64)
        )
        out = out.astype(np.uint64)
        writes = [e for e in self.events if e.name == "write"]
        if writes:
            written = np.isin(src, np.array([e.pfn for e in writes], np.int64))
            for i in np.flatnonzero(written).tolist():
                out[i] = self.content_at(int(src[i]), int(moment[i]))
        return out

    def allocation_balance(self, nr_installs: int, new_mapped) -> None:
        """Invariant 9: every copy allocation is installed once or freed unused; nothing is owned at return."""
        c, m1 = self.r.counts, self.m1
        if c["allocations"] != c["installs"] + c["unused_frees"]:
            self.fail(
                9, f"{c['allocations']} copy allocations != {c['installs']} installs + {c['unused_frees']} unused frees"
            )
        if c["installs"] != nr_installs:
            self.fail(9, f"installs counted {c['installs']}, early-copied indices {nr_installs}")
        if self.ok and int(new_mapped.sum()) != nr_installs:
            self.fail(9, f"{int(new_mapped.sum())} child PTEs map new pages, {nr_installs} installs")
        new = np.arange(self.m0.nr_folios, m1.nr_folios)
        freed = (m1.folio_flags[new] & FOLIO_FREED) != 0
        self.fail_each(
            9,
            freed & (m1.folio_refcount[new] != 0),
            lambda i: f"new folio {new[i]} freed with refcount {int(m1.folio_refcount[new[i]])}",
        )
        once = new_mapped[m1.folio_first_pfn[new] - self.first_new_pfn] == 1 if self.ok else np.zeros(len(new), bool)
        self.fail_each(
            9, ~freed & ~once, lambda i: f"new folio {new[i]} neither mapped once by the child nor freed (leak)"
        )
        for rec in self.tr.calls:
            for what in rec.owned_at_return:
                self.fail(9, f"call {rec.call_start} returned owning {what} (N3)")

    def per_pte_effects(self) -> None:
        """Invariant 6 (write protection of shared PTEs) and the per-PTE effects table of spec 3.6."""
        for rec in self.tr.calls:
            flags = self.vma_flags[rec.vma]
            cow = is_cow_mapping(flags)
            for p in rec.passes:
                for a, how, n in p.handled:
                    span = range(a, a + n)
                    if any(x in self.touched_addr for x in span):
                        continue
                    if how in _SHARE_KINDS:
                        self.check_share(span, cow, flags)
                    elif how in ("swap", "migration", "devpriv"):
                        self.check_nonpresent(a, how, cow)

    def check_share(self, span: range, cow: bool, flags: int) -> None:
        before = [self.val0(x) for x in span]
        w_any = any(P.pte_write(v) for v in before)
        for x, pb in zip(span, before):
            pa = self.val1(x)
            want_parent = P.pte_wrprotect(pb) if cow else pb
            if pa != want_parent:
                self.fail(6, f"shared index {x}: parent PTE {pa:#x}, expected {want_parent:#x}")
            if not self.ok:
                continue
            cv = self.child_val(x)
            if P.pte_pfn(cv) != P.pte_pfn(pb) or not P.pte_present(cv) or P.pte_special(cv) != P.pte_special(pb):
                self.fail(6, f"shared index {x}: child does not map the parent's page")
            if P.pte_young(cv):
                self.fail(6, f"shared index {x}: child PTE is young")
            want_dirty = False if flags & VM_SHARED else P.pte_dirty(before[0])
            if P.pte_dirty(cv) != want_dirty:
                self.fail(6, f"shared index {x}: child dirty bit {P.pte_dirty(cv)}, expected {want_dirty}")
            want_w = False if cow else w_any
            if P.pte_write(cv) != want_w:
                self.fail(6, f"shared index {x}: child write bit {P.pte_write(cv)}, expected {want_w}")

    def check_nonpresent(self, a: int, how: str, cow: bool) -> None:
        pb, pa = self.val0(a), self.val1(a)
        if how == "swap":
            want_parent = P.pte_swp_clear_exclusive(pb) if self.v.anon_exclusive else pb
            want_child = P.pte_swp_clear_exclusive(pb)
        elif how == "migration":
            down = cow and (P.is_writable_migration_entry(pb) or P.is_readable_exclusive_migration_entry(pb))
            want_parent = want_child = P.make_readable_migration_entry(pb) if down else pb
        else:
            down = cow and P.is_writable_device_private_entry(pb)
            want_parent = want_child = P.make_readable_device_private_entry(pb) if down else pb
        if pa != want_parent:
            self.fail(6, f"{how} index {a}: parent entry {pa:#x}, expected {want_parent:#x}")
        if self.ok and self.child_val(a) != want_child:
            self.fail(6, f"{how} index {a}: child entry {self.child_val(a):#x}, expected {want_child:#x}")

    def rss(self) -> None:
        want = self.b.mm.rss.copy()
        for e in self.events:
            want += np.array(e.rss, dtype=np.int64)
        if not np.array_equal(self.r.parent.mm.rss, want):
            self.fail(7, f"parent rss {self.r.parent.mm.rss.tolist()}, expected {want.tolist()}")
        child = self.r.child
        if self.ok:
            implied = decode.rss_of(child.pte, child.pmd, self.m1)
            if not np.array_equal(child.rss, implied):
                self.fail(7, f"child rss {child.rss.tolist()}, its PTEs imply {implied.tolist()}")
            if list(self.r.child_rss.values()) != child.rss.tolist():
                self.fail(7, "reported child rss differs from the child's counters")
        elif child.rss.any() or any(self.r.child_rss_after_teardown.values()):
            self.fail(7, "child rss is not 0 after teardown (N4)")

    def swap(self) -> None:
        m0, m1 = self.m0, self.m1
        S0, S1 = m0.nr_slots, m1.nr_slots
        # no slot, no swap entry to count (one in the child would also break invariant 7's swapents)
        refs = np.bincount(decode.swap_slots(self.child_entries[1]), minlength=S1) if S1 else np.zeros(0, np.int64)
        base = np.concatenate([m0.swap_count, np.ones(S1 - S0, np.int64)])
        for e in self.events:
            if e.slot >= 0:
                base[e.slot] += e.count
        bad = np.flatnonzero(m1.swap_count != base + refs)
        for s in bad[:5].tolist():
            self.fail(8, f"slot {s}: count {int(m1.swap_count[s])}, expected {int(base[s] + refs[s])}")
        lv0 = np.concatenate([m0.swap_levels, np.zeros(S1 - S0, np.int64)])
        if (m1.swap_levels < lv0).any():
            self.fail(8, "a slot lost continuation levels")
        if int((m1.swap_levels - lv0).sum()) != self.r.counts["levels_added"]:
            self.fail(
                8, f"levels grew by {int((m1.swap_levels - lv0).sum())}, levels_added {self.r.counts['levels_added']}"
            )
        stale_ok = self.v.stale_swap_entry
        for rec in self.tr.calls:
            if rec.kernel_calls < rec.sc_breaks or (not stale_ok and rec.kernel_calls != rec.sc_breaks):
                self.fail(
                    8, f"call {rec.call_start}: {rec.kernel_calls} window continuations for {rec.sc_breaks} SC breaks"
                )

    def xu_protocol(self) -> None:
        xu = self.v.xu_protocol
        for rec in self.tr.calls:
            if xu and rec.pd_calls != rec.break_cow:
                self.fail(
                    10,
                    f"call {rec.call_start}: {rec.pd_calls} page_duplicate calls for {rec.break_cow} BREAK_COW breaks",
                )
            if not xu and (rec.pd_calls or rec.break_cow):
                self.fail(10, f"call {rec.call_start}: xu protocol used by {self.variant}")

    def oracle_cadence(self) -> None:
        weights = {"copy": self.v.install_weight}
        c = self.r.counts
        tot = defaultdict(int)
        for rec in self.tr.calls:
            expect = []
            for p in rec.passes:
                progress = 0
                for a, how, n in p.handled:
                    if progress >= BREAK_AT:
                        expect.append((False, a))
                        progress = 0
                    progress += 1 if how == "none" else weights.get(how, 8) * n
                if p.reason == "LB":
                    if progress < BREAK_AT or not p.handled:
                        self.fail(11, f"call {rec.call_start}: a pass broke at {p.end} with progress {progress}")
                    expect.append((True, p.end))
                elif p.reason is not None and progress >= BREAK_AT:
                    expect.append((False, p.end))
            got = [(brk, a) for (_, brk, a) in rec.checks]
            if got != expect:
                self.fail(11, f"call {rec.call_start}: check log {got[:4]}..., replay gives {expect[:4]}...")
            for k, (kk, brk, _) in enumerate(rec.checks):
                if kk != k or brk != self.oracle(self.fork_seq, rec.call_start, k):
                    self.fail(11, f"call {rec.call_start}: check {kk} answered {brk}, the oracle says otherwise")
                    break
            tot["checks"] += len(rec.checks)
            tot["lb"] += sum(1 for (_, brk, _) in rec.checks if brk)
            tot["passes"] += len(rec.passes)
            for reason, _ in rec.windows:
                tot[reason] += 1
            if rec.result == 0 and len(rec.passes) != 1 + len(rec.windows):
                self.fail(11, f"call {rec.call_start}: {len(rec.passes)} passes, {len(rec.windows)} restarts")
        if self.complete:
            for name, key in (
                ("check", "checks"),
                ("lock_breaks", "lb"),
                ("passes", "passes"),
                ("restart.lb", "LB"),
                ("restart.sc", "SC"),
                ("restart.ec", "EC"),
            ):
                if c[name] != tot[key]:
                    self.fail(11, f"{name} counted {c[name]}, the trace has {tot[key]}")
        if c["lock_breaks"] != c["restart.lb"]:
            self.fail(11, f"{c['lock_breaks']} lock breaks but {c['restart.lb']} LB restarts")
        restarts = c["restart.lb"] + c["restart.sc"] + c["restart.ec"]
        if self.ok and c["passes"] != c["table.call"] + restarts:
            self.fail(11, f"{c['passes']} passes for {c['table.call']} calls and {restarts} restarts")

    def flags(self) -> None:
        if self.r.child.has_pinned:
            self.fail(12, "child has_pinned is set")
        pinned = any(e.name == "pin" for e in self.events)
        if self.r.parent.mm.has_pinned != (self.b.mm.has_pinned or pinned):
            self.fail(12, "parent has_pinned changed without a pin event")

    def pin_hazard(self) -> None:
        m0, m1 = self.m0, self.m1
        F0 = m0.nr_folios
        if m1.folio_true_pins[:F0].any():
            addrs, cvals = self.child_entries
        else:  # nothing pinned (the common case): no entry to decode
            addrs, cvals = np.zeros(0, np.int64), np.zeros(0, np.uint64)
        present = decode.present(cvals)
        holds = decode.holds_page(cvals)
        pfn = decode.offsets(cvals)
        folio = np.full(cvals.shape, -1, np.int64)
        folio[holds] = m1.page_folio[pfn[holds]]
        pinned = holds & (folio >= 0) & (folio < F0)
        pinned[pinned] = m1.folio_true_pins[folio[pinned]] > 0
        n = int(pinned.sum())
        for v in self.r.child.pmd.tolist():
            if m1.folio_true_pins[int(m1.page_folio[P.pte_pfn(v)])] > 0:
                n += PTRS_PER_TABLE
        pin_events = any(e.name in ("pin", "unpin") for e in self.events)
        if self.ok and not pin_events and n != self.r.counts["pin_shared"]:
            self.fail(13, f"pin_shared counted {self.r.counts['pin_shared']}, the child shares {n} pinned pages")
        if not self.ok or pin_events:
            return
        idx = np.flatnonzero(pinned & present)  # the child PTEs sharing a pinned folio
        a, f, p = addrs[idx], folio[idx], pfn[idx]
        order = m0.folio_order[f]
        keep = ~np.isin(a, np.array(sorted(self.touched_addr), np.int64))
        keep &= ~np.isin(f, np.array(sorted(self.touched_folio), np.int64))
        keep &= (order >= self.v.large_pin_order) | (order == 0)  # a small folio of order >= 1: the refcount
        a, f, p = a[keep], f[keep], p[keep]  # heuristic also sees sibling PTEs' references
        pb = self.val0_at(a)
        vi = self.b.mm.vma_of(a)
        vflags = self.b.mm.vma_flags[np.maximum(vi, 0)].astype(np.int64)
        cow = (vi >= 0) & is_cow_mapping(vflags)
        self.fail_each(
            13,
            self.early_copy_due(f, p, pb, cow),
            lambda i: f"index {a[i]}: pinned page shared although the early-copy predicate held",
        )
        if not self.v.early_cow:
            w = np.uint64(P.PAGE_RW)
            bad = cow & ((pb & w) != 0) & ((ptes_at(self.r.parent.mm, a) & w) != 0)
            self.fail_each(
                13,
                bad,
                lambda i: f"index {a[i]}: {self.variant} shared a pinned page without write-protecting the parent",
            )

    def early_copy_due(self, f: np.ndarray, pfn: np.ndarray, pb: np.ndarray, cow: np.ndarray) -> np.ndarray:
        """The variant's early-copy predicate (spec 3) for pages ``pfn`` of folios ``f`` mapped by the parent entries
        ``pb``, on the state before the fork: xu-v1 and 6.18 test it after taking the child's reference, 5.10
        before."""
        m0, v = self.m0, self.v
        order, ref0, pincount = m0.folio_order[f], m0.folio_refcount[f].astype(np.int64), m0.folio_pincount[f]
        if not v.early_cow or not self.b.mm.has_pinned:
            return np.zeros(len(f), bool)
        if v.xu_protocol:
            writable = (pb & np.uint64(P.PAGE_RW)) != 0
            return cow & writable & folio_maybe_dma_pinned(order, ref0 + 1, pincount, v.large_pin_order)
        if v.anon_exclusive:
            flags = m0.folio_flags[f]
            return (
                ((flags & FOLIO_ANON) != 0)
                & self.excl0_at(pfn)
                & ((flags & FOLIO_DEVICE_PRIVATE) == 0)
                & folio_maybe_dma_pinned(order, ref0 + 1, pincount, v.large_pin_order)
            )
        return cow & folio_maybe_dma_pinned(order, ref0, pincount, v.large_pin_order)


def check_invariants(before: AddressSpace, result, oracle, fork_seq: int) -> InvariantReport:
    """Check the 13 invariants of spec section 6 (and N1-N4 of 5.4) for a fork with outcome ok or enomem."""
    chk = _Checker(before, result, oracle, fork_seq)
    chk.run()
    return InvariantReport(not chk.violations, tuple(chk.violations))


def holders(mms, memory, slots: bool = True) -> dict[str, np.ndarray]:
    """What the entries of ``mms`` hold: PTE mappings per page (``pages``) and per folio (``folios``), PMD mappings
    per folio (``pmds``), and with ``slots`` swap entries per slot (``slots``)."""
    pages = np.zeros(memory.nr_pages, np.int64)
    pmds = np.zeros(memory.nr_folios, np.int64)
    out = {"slots": np.zeros(memory.nr_slots, np.int64)} if slots else {}
    for mm in mms:
        pages += np.bincount(decode.page_pfns(mm.pte), minlength=memory.nr_pages)[: memory.nr_pages]
        if slots:
            val = mm.pte.reshape(-1)
            swap = decode.offsets(val[decode.kinds(val) == P.KIND_SWAP]).astype(np.int64)
            out["slots"] += np.bincount(swap, minlength=memory.nr_slots)[: memory.nr_slots]
        if mm.pmd.size:
            heads = decode.offsets(mm.pmd).astype(np.int64)
            pmds += np.bincount(memory.page_folio[heads], minlength=memory.nr_folios)[: memory.nr_folios]
    folios = np.bincount(memory.page_folio, weights=pages, minlength=memory.nr_folios).astype(np.int64)
    return {"pages": pages, "folios": folios, "pmds": pmds, **out}


def check_write_phase(parent0: AddressSpace, child0, wp, large_pin_order: int = 0) -> InvariantReport:
    """Spec 11.5: after a write phase every folio's reference count and every page's map count still equal the
    mappings and pins that hold them: changed by exactly the mappings the phase added or removed (a PMD holds one
    reference and one PMD mapping of its folio; a PTE one reference of its folio and one map count of its page)
    and the pins its ``pin`` steps took (spec 12.5; ``large_pin_order``: the variant's), the pages it allocated held
    by their mappings and pins alone, and a folio freed by the phase mapped by no one."""
    m0, m1 = parent0.memory, wp.memory
    n_pages, n_folios = m0.nr_pages, m0.nr_folios
    pg0, fo0, pmd0 = holders((parent0.mm, child0), m0, slots=False).values()
    child2 = getattr(wp, "child2", None)  # a write phase's parent:fork (an episode has none)
    pg1, fo1, pmd1 = holders((wp.parent.mm, wp.child, *(() if child2 is None else (child2,))), m1, False).values()
    pins = m1.folio_true_pins.astype(np.int64)
    pins[:n_folios] -= m0.folio_true_pins
    if pins.any():
        pins *= np.where(m1.folio_order >= large_pin_order, 1, F.PIN_BIAS)
        fo1 = fo1 + pins
    out = []

    def report(name, got, want, what):
        bad = np.flatnonzero(got != want)
        out.extend(f"write phase: {what} {int(i)}: {name} {int(got[i])}, expected {int(want[i])}" for i in bad[:5])

    report("map count", m1.page_mapcount[:n_pages], m0.page_mapcount + pg1[:n_pages] - pg0, "page")
    ref_delta = fo1[:n_folios] - fo0 + pmd1[:n_folios] - pmd0
    report("refcount", m1.folio_refcount[:n_folios], m0.folio_refcount + ref_delta, "folio")
    report("PMD mappings", m1.folio_pmd_mapcount[:n_folios], m0.folio_pmd_mapcount + pmd1[:n_folios] - pmd0, "folio")
    report("map count", m1.page_mapcount[n_pages:], pg1[n_pages:], "new page")
    report("refcount", m1.folio_refcount[n_folios:], fo1[n_folios:], "new folio")
    for f in np.flatnonzero(((m1.folio_flags & FOLIO_FREED) != 0) & ((fo1 + pmd1) != 0))[:5]:
        out.append(f"write phase: freed folio {int(f)} is still mapped {int(fo1[f] + pmd1[f])} times")
    return InvariantReport(not out, tuple(out[:MAX_REPORTED]))
