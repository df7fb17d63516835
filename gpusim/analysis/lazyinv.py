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

from gpusim.analysis.invariants import holders
from gpusim.kernels import pte as P
from gpusim.kernels.flags import (
    BACKING_ANON,
    FOLIO_ANON,
    FOLIO_FREED,
    MM_ANONPAGES,
    PAGE_ANON_EXCLUSIVE,
    PIN_BIAS,
    PTRS_PER_TABLE,
    is_cow_mapping,
)
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

    def roles(self):
        """(role, mm, obj, wp) of every mm the table objects describe (an L1 violation for one they describe
        wrongly)."""
        t = self.t1
        for role, mm in self.mms1.items():
            if t is None or role not in t.roles:
                continue
            obj, wp = t.of(role)
            if obj.size != mm.nr_tables or wp.size != mm.nr_tables:
                self.fail("L1", f"{role}: {obj.size} PMD slots described for {mm.nr_tables} tables")
                continue
            yield role, mm, obj, wp

    def share_counts(self) -> None:
        if self.t1 is None:
            return
        share = self.t1.share.astype(np.int64)
        slots = np.zeros(share.size, np.int64)
        objs, tables, rows = [], [], []
        for role, mm, obj, _ in self.roles():
            has = obj >= 0
            if has.any() and int(obj[has].max()) >= share.size:
                self.fail("L1", f"{role}: a PMD slot points at an object that does not exist")
                return
            slots += np.bincount(obj[has], minlength=share.size)
            objs.append(obj[has])
            tables.append(mm.table_index[has])
            rows.append(mm.pte[has])
        for b in np.flatnonzero((slots != share) | (share < 2))[:5].tolist():
            self.fail("L1", f"table object {b}: share {int(share[b])}, {int(slots[b])} PMD slots point at it")
        if not objs or not sum(o.size for o in objs):
            return
        obj = np.concatenate(objs)
        order = np.argsort(obj, kind="stable")
        obj, table, row = obj[order], np.concatenate(tables)[order], np.concatenate(rows)[order]
        starts = np.r_[0, np.flatnonzero(np.diff(obj)) + 1]
        head = np.repeat(starts, np.diff(np.r_[starts, obj.size]))  # each slot's first slot of its object
        same = (table == table[head]) & (row == row[head]).all(axis=1)
        for k in np.unique(obj[~same])[:3].tolist():
            self.fail("L1", f"table object {k}: its sharers see different entries")

    def write_protection(self) -> None:
        for role, mm, obj, wp in self.roles():
            for k in np.flatnonzero((obj >= 0) & ~wp)[:3].tolist():
                t = int(mm.table_index[k])
                self.fail("L2", f"{role} table {t} is shared (object {int(obj[k])}) by a writable PMD")

    def references(self) -> None:
        tf = self.v.table_fork
        h0 = holders(holding_mms(self.mms0, self.t0, tf), self.m0)
        h1 = holders(holding_mms(self.mms1, self.t1, tf), self.m1)
        m0, m1 = self.m0, self.m1
        nf, npg, ns = m0.nr_folios, m0.nr_pages, m0.nr_slots
        pin_ref = np.where(m1.folio_order >= self.v.large_pin_order, 1, PIN_BIAS).astype(np.int64)  # per FOLL_PIN
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
        pend = t1.pending
        k = np.minimum(np.searchsorted(parent.table_index, pend), max(parent.nr_tables - 1, 0))
        has = (
            (parent.nr_tables > 0) & (parent.table_index[k] == pend) if parent.nr_tables else np.zeros(pend.size, bool)
        )
        for t in pend[~(has & wp[k])][:3].tolist():
            self.fail("L5", f"pending table {t}: the parent has no write-protected PMD for it")
        if child is not None:
            for t in pend[np.isin(pend, child.table_index)][:3].tolist():
                self.fail("L5", f"pending table {t}: the child has a table there")
        v = parent.vma_of(pend * PTRS_PER_TABLE)
        ok = (v >= 0) & (v == parent.vma_of((pend + 1) * PTRS_PER_TABLE - 1))
        vv = np.maximum(v, 0)
        ok &= (parent.vma_backing[vv] == BACKING_ANON) & is_cow_mapping(parent.vma_flags[vv].astype(np.int64))
        for t in pend[~ok][:3].tolist():
            self.fail("L5", f"pending table {t} is not inside one anonymous COW VMA")

    def pin_safety(self) -> None:
        if self.v.table_fork == "share":
            return  # odf-paper reproduces the pin bug on purpose: reported, not checked (spec 12.9)
        m1 = self.m1
        for role, mm, obj, _ in self.roles():
            rows = mm.pte[obj >= 0]
            val = rows.reshape(-1)
            page = (decode.kinds(val) == P.KIND_PRESENT) & ~decode.special(val)
            pfn = decode.offsets(val[page]).astype(np.int64)
            f = m1.page_folio[pfn]
            bad = ((m1.folio_flags[f] & FOLIO_ANON) != 0) & ((m1.page_flags[pfn] & PAGE_ANON_EXCLUSIVE) != 0)
            for p in pfn[bad][:3].tolist():
                self.fail("L6", f"{role}: page {p}, mapped through a shared table, is anon-exclusive")


def check_lazy_fork(before: AddressSpace, result) -> InvariantReport:
    """L1-L7 after a fork of a lazy design (outcome ok or enomem)."""
    after = ({"parent": result.parent.mm, "child": result.child}, result.memory, result.tables)
    return LazyChecker(result.variant, ({"parent": before.mm}, before.memory, None), after).run()


def check_lazy_phase(parent0: AddressSpace, child0: MM, tables0, variant: str, wp) -> InvariantReport:
    """L1-L7 after a write phase of a lazy design."""
    before = ({"parent": parent0.mm, "child": child0}, parent0.memory, tables0)
    after = ({"parent": wp.parent.mm, "child": wp.child}, wp.memory, wp.tables)
    if wp.child2 is not None:
        after[0]["child2"] = wp.child2
    return LazyChecker(variant, before, after, wp.exit_rss).run()
