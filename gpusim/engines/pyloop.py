"""The Python loop: the slow path interpreted, for forks with injections.

Tables that the classification flags (early-copy candidates, swap-count continuations, PTEs whose handling could
depend on walk order, tables where an injection can act) are copied here, in address order, by the reference
engine's own state machines (:func:`gpusim.engines.reference.copy_table`) running in place on the fast engine's host
arrays. So the slow paths have exactly the reference's control flow (passes, restarts, ``pte_same`` re-checks, prealloc
reuse and release, continuation retries, injections, the v1 oops), and new pages are numbered in address order.

Two adapters make the working state look like the reference's containers: the memory's
:class:`~gpusim.engines.work.IntArray` (a growable int sequence over a numpy buffer) and :class:`TableMap` (table
number -> 512-entry row). Only a fork with injections builds them (:func:`python_context`).
"""

from __future__ import annotations

import numpy as np

from gpusim.engines.context import ForkContext, Machine, MMState, VmaView
from gpusim.engines.work import IntArray, WorkState


class TableMap:
    """Table number -> row of a ``(T, 512)`` pte array, with an existence mask (child) and extra rows (tables a
    THP split adds to the parent)."""

    def __init__(self, pte: np.ndarray, table_index: np.ndarray, exists: np.ndarray | None = None, extra=None):
        self.pte, self.exists, self.index = pte, exists, table_index
        self.extra: dict[int, list[int]] = {} if extra is None else extra
        self._rows: dict[int, IntArray] = {}

    def row_of_table(self, t: int) -> int | None:
        r = int(np.searchsorted(self.index, t))
        return r if r < self.index.shape[0] and int(self.index[r]) == t else None

    def __contains__(self, t) -> bool:
        if t in self.extra:
            return True
        r = self.row_of_table(t)
        return r is not None and (self.exists is None or bool(self.exists[r]))

    def __getitem__(self, t):
        if t in self.extra:
            return self.extra[t]
        if t not in self:
            raise KeyError(t)
        row = self._rows.get(t)
        if row is None:
            row = self._rows[t] = IntArray(self.pte[self.row_of_table(t)])
        return row

    def get(self, t, default=None):
        return self[t] if t in self else default

    def __setitem__(self, t, row) -> None:
        r = self.row_of_table(t)
        if r is not None and self.exists is not None:  # child: the row is preallocated and zero
            self.exists[r] = True
            self.pte[r, :] = row
        else:  # parent: a table created by a THP split
            self.extra[t] = list(row)


class LazyVmas:
    """``parent.vmas[i]`` built on demand (a process may have many VMAs and few slow-path tables)."""

    def __init__(self, mm):
        self.mm = mm

    def __getitem__(self, i: int) -> VmaView:
        mm = self.mm
        return VmaView(
            i,
            int(mm.vma_start[i]),
            int(mm.vma_end[i]),
            int(mm.vma_flags[i]),
            int(mm.vma_backing[i]),
            bool(mm.vma_anon_vma[i]),
        )


def python_context(work: WorkState, variant: str, oracle, plan, fork_seq: int) -> ForkContext:
    """A reference ForkContext over the fast engine's working state: its memory arrays, table rows, huge PMDs, the
    tables splits add, the counters and the records are the state's own objects, written in place; the scalars
    (flags, the next content id) come back with :func:`absorb`."""
    space, mm = work.space, work.space.mm
    machine = Machine.over(work.memory, work.next_content)
    parent = MMState()
    parent.vmas = LazyVmas(mm)
    parent.tables = TableMap(work.ppte, mm.table_index, extra=work.parent_extra)
    parent.pmds, parent.rss = work.parent_pmds, work.parent_rss
    parent.has_pinned, parent.on_swapoff_list = work.parent_has_pinned, work.parent_on_swapoff
    child = MMState()
    child.tables = TableMap(work.cpte, mm.table_index, work.cexists, extra=work.child_extra)
    child.pmds, child.rss, child.on_swapoff_list = work.child_pmds, work.child_rss, work.child_on_swapoff
    fc = ForkContext(space, variant, oracle, plan, fork_seq, machine=machine, parent=parent, child=child)
    fc.share_records(work)
    fc.count_upper = False
    return fc


def absorb(work: WorkState, fc: ForkContext) -> None:
    """The scalars the Python loop changed, back into the working state."""
    work.next_content = fc.m.next_content
    work.parent_has_pinned, work.parent_on_swapoff = fc.parent.has_pinned, fc.parent.on_swapoff_list
    work.child_on_swapoff = fc.child.on_swapoff_list
