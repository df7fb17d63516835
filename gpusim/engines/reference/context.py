"""The reference's per-call context: the spec's ``c`` (:class:`CopyContext`, one ``copy_pte_range`` call or one
``copy_huge_pmd``) and the xu series' ``struct copy_mm_data``. What a fork shares across calls, and with the fast
engine, is in :mod:`gpusim.engines.context`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpusim.engines.context import CallRecord, ForkContext, Oops, PassRecord, VmaView
from gpusim.kernels.flags import NULL_ENTRY, PTRS_PER_TABLE, is_cow_mapping


class CopyContext:
    """The spec's ``c``: one ``copy_pte_range`` call (or one ``copy_huge_pmd``) and the fork it belongs to."""

    def __init__(self, fc: ForkContext, vma: VmaView, t: int, call_start: int, end: int):
        self.fc, self.m, self.vma, self.t = fc, fc.m, vma, t
        self.variant, self.v = fc.variant, fc.v
        self.call_start, self.end = call_start, end
        self.counts = fc.counts
        self.checks = 0
        self.alloc_n: dict[str, int] = {}
        self.win_n: dict[str, int] = {}
        self.last_failed: tuple[str, int] | None = None
        self.prealloc: int | None = None
        self.d: CopyMmData | None = None  # the xu series' copy_mm_data, visible for the N3 check
        self.cow = is_cow_mapping(vma.flags)
        self.rec = CallRecord(call_start, end, vma.index)
        self.cur: PassRecord | None = None

    # -- entries
    def src(self, a: int) -> int:
        if not self.call_start <= a < self.end:
            raise Oops("copy_pte_range", a, "RANGE_OVERRUN")
        return self.fc.parent.tables[self.t][a - PTRS_PER_TABLE * self.t]

    def set_src(self, a: int, v: int) -> None:
        self.fc.parent.tables[self.t][a - PTRS_PER_TABLE * self.t] = v

    def set_dst(self, a: int, v: int) -> None:
        """``set_pte_at`` on the child."""
        row = self.fc.child.tables[self.t]
        i = a - PTRS_PER_TABLE * self.t
        if row[i] != 0:
            raise Oops("set_pte_at", a, "CHILD_PTE_BUSY")
        row[i] = v

    def handled(self, a: int, how: str, n: int = 1) -> None:
        self.cur.handled.append((a, how, n))

    def end_pass(self, a: int, reason: str | None) -> None:
        self.cur.end, self.cur.reason = a, reason

    # -- folio reference helpers with the underflow guard
    def put_folio(self, f: int, a: int, n: int = 1) -> None:
        if self.m.folio_refcount[f] < n:
            raise Oops("put_page", a, "UNDERFLOW")
        self.m.folio_refcount[f] -= n


# --- 3.2 xu-v1 and 3.3 xu-v1-oleg -------------------------------------------------------------------------------


@dataclass
class CopyMmData:
    """The v1 patch's ``struct copy_mm_data``."""

    entry: int = NULL_ENTRY
    cow_old_page: int | None = None  # pfn; carries one folio reference
    cow_oldpte: int | None = None
    cow_new_page: int | None = None  # pfn
