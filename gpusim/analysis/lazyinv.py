"""The invariants of the lazy fork designs (spec 12.9, L1-L7), checked after a fork and after a write phase of
``odf-paper``, ``odf-cowpte`` and ``async-fork`` in place of spec 6's per-call ones (their fork copies tables in
spec 3's calls only where it falls back, and spec 6's reference and rss rules hold there per table object or per
logical entry, as L3 and L4 say).

Each check recomputes its fact from the states: references, map counts and swap counts from the entries that hold
them (each table object once for ``odf-paper``, each mm's logical entries for the others), rss from the entries,
share counts from the PMD slots. A violation is one line that names the invariant (``L3: ...``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gpusim.kernels import pte as P
from gpusim.kernels.flags import (
    BACKING_ANON,
    FOLIO_ANON,
    FOLIO_FREED,
    MM_ANONPAGES,
    PAGE_ANON_EXCLUSIVE,
    PTRS_PER_TABLE,
    is_cow_mapping,
)
from gpusim.kernels.folio import pin_refcount_delta
from gpusim.model import decode
from gpusim.model.result import InvariantReport
from gpusim.model.state import MM, AddressSpace
from gpusim.model.variants import get_variant

MAX_REPORTED = 20


def holding_mms(mms: dict[str, MM], tables, table_fork: str) -> list[MM]:
    """The mms whose entries hold references (L3): ``odf-paper`` counts every table object once (the rows of a later
    mm that point at an object already counted are left out), the other designs every mm's logical entries."""
    if tables is None or table_fork != "share":
        return list(mms.values())
    seen: set[int] = set()
    out = []
    for role, mm in mms.items():
        if role not in tables.roles:
            out.append(mm)
            continue
        obj, _ = tables.of(role)
        keep = np.array([k < 0 or k not in seen for k in obj.tolist()], bool)
        seen.update(int(k) for k in obj[obj >= 0].tolist())
        out.append(dataclasses.replace(mm, table_index=mm.table_index[keep], pte=mm.pte[keep]))
    return out


def holders(mms: list[MM], memory) -> dict[str, np.ndarray]:
    """What the entries of ``mms`` hold: PTE mappings per page and per folio, PMD mappings per folio, swap entries
    per slot."""
    pages = np.zeros(memory.nr_pages, np.int64)
    pmds = np.zeros(memory.nr_folios, np.int64)
    slots = np.zeros(memory.nr_slots, np.int64)
    for mm in mms:
        pages += np.bincount(decode.page_pfns(mm.pte), minlength=memory.nr_pages)[: memory.nr_pages]
        val = mm.pte.reshape(-1)
        swap = val[decode.kinds(val) == P.KIND_SWAP]
        slots += np.bincount(decode.offsets(swap).astype(np.int64), minlength=memory.nr_slots)[: memory.nr_slots]
        if mm.pmd.size:
            heads = decode.offsets(mm.pmd).astype(np.int64)
            pmds += np.bincount(memory.page_folio[heads], minlength=memory.nr_folios)[: memory.nr_folios]
    folios = np.bincount(memory.page_folio, weights=pages, minlength=memory.nr_folios).astype(np.int64)
    return {"pages": pages, "folios": folios, "pmds": pmds, "slots": slots}


class LazyChecker:
    """L1-L7 on a state after a fork or a write phase, compared with the state before it (``before``: the mms by
    role, their memory and tables)."""

    def __init__(self, variant: str, before: tuple, after: tuple, exit_rss=None):
        self.v = get_variant(variant)
        self.mms0, self.m0, self.t0 = before
        self.mms1, self.m1, self.t1 = after
        self.exit_rss = np.zeros(4, np.int64) if exit_rss is None else np.asarray(exit_rss, np.int64)
        self.out: list[str] = []

    def fail(self, inv: str, msg: str) -> None:
        line = f"{inv}: {msg}"
        if len(self.out) < MAX_REPORTED and line not in self.out:
            self.out.append(line)

    def run(self) -> InvariantReport:
        self.share_counts()  # L1
        self.write_protection()  # L2
        self.references()  # L3, L7
        self.rss()  # L4
        self.pending()  # L5
        self.pin_safety()  # L6
        return InvariantReport(not self.out, tuple(self.out))

    def slots(self):
        """(role, table, obj, wp, row) of every table row of every mm."""
        t = self.t1
        for role, mm in self.mms1.items():
            if t is None or role not in t.roles:
                continue
            obj, wp = t.of(role)
            if obj.size != mm.nr_tables or wp.size != mm.nr_tables:
                self.fail("L1", f"{role}: {obj.size} PMD slots described for {mm.nr_tables} tables")
                continue
            for k in range(mm.nr_tables):
                yield role, int(mm.table_index[k]), int(obj[k]), bool(wp[k]), mm.pte[k]

    def share_counts(self) -> None:
        if self.t1 is None:
            return
        slots: dict[int, list] = {}
        for role, t, k, _, row in self.slots():
            if k >= 0:
                slots.setdefault(k, []).append((role, t, row))
        for k, share in enumerate(self.t1.share.tolist()):
            got = slots.get(k, [])
            if len(got) != share or share < 2:
                self.fail("L1", f"table object {k}: share {share}, {len(got)} PMD slots point at it")
            if any(not np.array_equal(row, got[0][2]) or t != got[0][1] for _, t, row in got):
                self.fail("L1", f"table object {k}: its sharers see different entries")

    def write_protection(self) -> None:
        for role, t, k, wp, _ in self.slots():
            if k >= 0 and not wp:
                self.fail("L2", f"{role} table {t} is shared (object {k}) by a writable PMD")

    def references(self) -> None:
        tf = self.v.table_fork
        h0 = holders(holding_mms(self.mms0, self.t0, tf), self.m0)
        h1 = holders(holding_mms(self.mms1, self.t1, tf), self.m1)
        m0, m1 = self.m0, self.m1
        nf, npg, ns = m0.nr_folios, m0.nr_pages, m0.nr_slots
        pin_ref = np.array(
            [pin_refcount_delta(int(o), self.v.large_pin_order) for o in m1.folio_order.tolist()], np.int64
        )
        pins = m1.folio_true_pins.astype(np.int64) * pin_ref
        pins0 = m0.folio_true_pins.astype(np.int64) * pin_ref[:nf]
        want_ref = np.concatenate(
            [
                m0.folio_refcount
                + (h1["folios"][:nf] - h0["folios"])
                + (h1["pmds"][:nf] - h0["pmds"])
                + pins[:nf]
                - pins0,
                h1["folios"][nf:] + h1["pmds"][nf:] + pins[nf:],
            ]
        )
        want_map = np.concatenate([m0.page_mapcount + h1["pages"][:npg] - h0["pages"], h1["pages"][npg:]])
        want_swap = np.concatenate([m0.swap_count + h1["slots"][:ns] - h0["slots"], h1["slots"][ns:]])
        for name, got, want in (
            ("folio refcount", m1.folio_refcount, want_ref),
            ("page map count", m1.page_mapcount, want_map),
            ("slot count", m1.swap_count, want_swap),
        ):
            for i in np.flatnonzero(got != want)[:5].tolist():
                self.fail("L3", f"{name} {i}: {int(got[i])}, its holders give {int(want[i])}")
        freed = ((m1.folio_flags & FOLIO_FREED) != 0) & ((h1["folios"] + h1["pmds"]) != 0)
        for f in np.flatnonzero(freed)[:5].tolist():
            self.fail("L7", f"folio {f} is freed and still mapped")

    def rss(self) -> None:
        m1 = self.m1
        if self.v.table_fork != "share":
            for role, mm in self.mms1.items():
                implied = decode.rss_of(mm.pte, mm.pmd, m1)
                if not np.array_equal(mm.rss, implied):
                    self.fail("L4", f"{role} rss {mm.rss.tolist()}, its logical entries imply {implied.tolist()}")
            return
        held = holding_mms(self.mms1, self.t1, "share")
        implied = sum(decode.rss_of(mm.pte, mm.pmd, m1) for mm in held)
        total = sum(mm.rss for mm in self.mms1.values()) + self.exit_rss  # what an exited mm was left charged
        if int(total[MM_ANONPAGES]) != int(implied[MM_ANONPAGES]):  # an exited mm's counters included
            self.fail(
                "L4",
                f"anon rss over every mm {int(total[MM_ANONPAGES])}, the table objects hold "
                f"{int(implied[MM_ANONPAGES])}",
            )

    def pending(self) -> None:
        t1 = self.t1
        if t1 is None or not t1.pending.size:
            return
        parent, child = self.mms1["parent"], self.mms1.get("child")
        _, wp = t1.of("parent")
        for t in t1.pending.tolist():
            k = int(np.searchsorted(parent.table_index, t))
            if k >= parent.nr_tables or int(parent.table_index[k]) != t or not wp[k]:
                self.fail("L5", f"pending table {t}: the parent has no write-protected PMD for it")
            if child is not None and t in set(child.table_index.tolist()):
                self.fail("L5", f"pending table {t}: the child has a table there")
            lo, hi = t * PTRS_PER_TABLE, (t + 1) * PTRS_PER_TABLE
            inside = (parent.vma_start <= lo) & (parent.vma_end >= hi)
            ok = inside & (parent.vma_backing == BACKING_ANON) & is_cow_mapping(parent.vma_flags.astype(np.int64))
            if not ok.any():
                self.fail("L5", f"pending table {t} is not inside one anonymous COW VMA")

    def pin_safety(self) -> None:
        if self.v.table_fork == "share":
            return  # odf-paper reproduces the pin bug on purpose: reported, not checked (spec 12.9)
        m1 = self.m1
        for role, t, k, _, row in self.slots():
            if k < 0:
                continue
            val = row[decode.kinds(row) == P.KIND_PRESENT]
            val = val[~decode.special(val)]
            pfn = decode.offsets(val).astype(np.int64)
            f = m1.page_folio[pfn]
            bad = ((m1.folio_flags[f] & FOLIO_ANON) != 0) & ((m1.page_flags[pfn] & PAGE_ANON_EXCLUSIVE) != 0)
            for p in pfn[bad][:3].tolist():
                self.fail("L6", f"{role} table {t} (shared) maps page {p}, which is anon-exclusive")


def check_lazy_fork(before: AddressSpace, result) -> InvariantReport:
    """L1-L7 after a fork of a lazy design (outcome ok or enomem)."""
    after = ({"parent": result.parent.mm, "child": result.child}, result.memory, result.tables)
    return LazyChecker(result.variant, ({"parent": before.mm}, before.memory, None), after).run()


def check_lazy_phase(parent0: AddressSpace, child0: MM, tables0, variant: str, wp) -> InvariantReport:
    """L1-L7 after a write phase of a lazy design."""
    before = ({"parent": parent0.mm, "child": child0}, parent0.memory, tables0)
    after = ({"parent": wp.parent.mm, "child": wp.child}, wp.memory, wp.tables)
    return LazyChecker(variant, before, after, wp.exit_rss).run()
