"""The plan of a fork: which VMAs the child gets and which ``copy_pte_range`` calls ``dup_mmap`` makes.

Spec 1.6 ("Which VMAs are copied"): for each parent VMA in address order, ``VM_DONTCOPY`` means no child VMA;
otherwise the child gets the VMA, and its page tables are copied only if the VMA lacks ``VM_WIPEONFORK`` and has an
anon_vma or ``VM_PFNMAP``/``VM_MIXEDMAP``; ``VM_HUGETLB`` VMAs are reported as ``hugetlb_skipped``. For a copied
VMA there is one call per table where the parent has a PTE table (or a huge PMD), with range
``[max(vma.start, 512t), min(vma.end, 512t + 512))``, in ascending address order.

Every engine builds its fork from this one plan, so the VMA rules live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpusim.kernels.flags import PTRS_PER_TABLE, VM_DONTCOPY, VM_HUGETLB, VM_MIXEDMAP, VM_PFNMAP, VM_WIPEONFORK
from gpusim.model.state import MM

# per-VMA count contributions, in this column order
VMA_COUNT_NAMES = ("vma.skip", "vma.dup", "vma.anon_fork", "vma.file_link", "vma.copy", "hugetlb_skipped")


@dataclass(frozen=True)
class ForkPlan:
    """``V`` parent VMAs and ``C`` calls.

    ``vma_counts`` i64 ``(V, 6)``: each VMA's contribution to ``VMA_COUNT_NAMES``. ``vma_child`` bool ``(V,)``:
    the child gets this VMA; ``vma_child_anon`` bool: with an anon_vma. Calls, in address order: ``call_table``,
    ``call_start``, ``call_end``, ``call_vma`` (i64) and ``call_huge`` (bool: the parent maps the table by a huge
    PMD). ``table_first_call`` bool ``(C,)``: the call is the first of its table (it allocates the child table).
    """

    vma_counts: np.ndarray
    vma_child: np.ndarray
    vma_child_anon: np.ndarray
    call_table: np.ndarray
    call_start: np.ndarray
    call_end: np.ndarray
    call_vma: np.ndarray
    call_huge: np.ndarray
    table_first_call: np.ndarray

    @property
    def nr_calls(self) -> int:
        return int(self.call_table.shape[0])

    def counts_upto(self, vma: int) -> dict[str, int]:
        """VMA-level counts of the VMAs ``0 .. vma`` (all of them for ``vma = V - 1``)."""
        tot = self.vma_counts[: vma + 1].sum(axis=0) if vma >= 0 else np.zeros(len(VMA_COUNT_NAMES), np.int64)
        return {name: int(v) for name, v in zip(VMA_COUNT_NAMES, tot)}

    def child_mm_vmas(self, mm: MM, upto_vma: int) -> dict[str, np.ndarray]:
        """The child's VMA arrays, for the parent VMAs ``0 .. upto_vma``."""
        keep = self.vma_child.copy()
        keep[upto_vma + 1 :] = False
        return {
            "vma_start": mm.vma_start[keep],
            "vma_end": mm.vma_end[keep],
            "vma_flags": mm.vma_flags[keep],
            "vma_backing": mm.vma_backing[keep],
            "vma_anon_vma": self.vma_child_anon[keep],
        }


def plan_fork(mm: MM) -> ForkPlan:
    flags = mm.vma_flags.astype(np.int64)
    anon = mm.vma_anon_vma
    dontcopy = (flags & VM_DONTCOPY) != 0
    wipe = (flags & VM_WIPEONFORK) != 0
    hugetlb = (flags & VM_HUGETLB) != 0
    dup = ~dontcopy
    copy = dup & ~hugetlb & ~wipe & (anon | ((flags & (VM_PFNMAP | VM_MIXEDMAP)) != 0))
    counts = np.stack(
        [dontcopy, dup, dup & anon & ~wipe, dup & (mm.vma_backing != 0), copy, dup & hugetlb], axis=1
    ).astype(np.int64)
    tables = np.union1d(mm.table_index, mm.pmd_index)
    parts = {k: [] for k in ("table", "start", "end", "vma")}
    for v in np.flatnonzero(copy).tolist():
        s, e = int(mm.vma_start[v]), int(mm.vma_end[v])
        lo = np.searchsorted(tables, s // PTRS_PER_TABLE, side="left")
        hi = np.searchsorted(tables, (e - 1) // PTRS_PER_TABLE, side="right")
        t = tables[lo:hi]
        parts["table"].append(t)
        parts["start"].append(np.maximum(s, t * PTRS_PER_TABLE))
        parts["end"].append(np.minimum(e, t * PTRS_PER_TABLE + PTRS_PER_TABLE))
        parts["vma"].append(np.full(t.shape, v, np.int64))
    cat = {k: (np.concatenate(p).astype(np.int64) if p else np.zeros(0, np.int64)) for k, p in parts.items()}
    first = np.ones(cat["table"].shape, bool)
    if first.size:
        first[1:] = cat["table"][1:] != cat["table"][:-1]
    return ForkPlan(
        vma_counts=counts,
        vma_child=dup,
        vma_child_anon=anon & ~wipe,
        call_table=cat["table"],
        call_start=cat["start"],
        call_end=cat["end"],
        call_vma=cat["vma"],
        call_huge=np.isin(cat["table"], mm.pmd_index),
        table_first_call=first,
    )
