"""The Python loop: the slow path interpreted, for forks with injections.

Tables that the classification flags (early-copy candidates, swap-count continuations, PTEs whose handling could
depend on walk order, tables where an injection can act) are copied here, in address order, by the reference
engine's own state machines (:func:`gpusim.engines.reference.copy_table`) running in place on the fast engine's host
arrays. So the slow paths have exactly the reference's control flow (passes, restarts, ``pte_same`` re-checks, prealloc
reuse and release, continuation retries, injections, the v1 oops), and new pages are numbered in address order.

Two adapters make numpy arrays look like the reference's containers: :class:`IntArray` (a growable int sequence
over a numpy buffer) and :class:`TableMap` (table number -> 512-entry row).
"""

from __future__ import annotations

import numpy as np

from gpusim.base import backend as B
from gpusim.engines.context import ForkContext, Machine, MMState, VmaView
from gpusim.kernels.fields import MEMORY_FIELDS
from gpusim.model.state import AddressSpace, Memory


class IntArray:
    """A numpy-backed sequence of Python ints that can grow (``append``)."""

    __slots__ = ("a", "n")

    def __init__(self, a: np.ndarray):
        self.a, self.n = a, int(a.shape[0])

    def __getitem__(self, i):
        return int(self.a[i])

    def __setitem__(self, i, v):
        self.a[i] = v

    def __len__(self):
        return self.n

    def append(self, v) -> None:
        if self.n == self.a.shape[0]:
            grown = B.array_module(self.a).zeros(max(16, 2 * self.n), dtype=self.a.dtype)
            grown[: self.n] = self.a[: self.n]
            self.a = grown
        self.a[self.n] = v
        self.n += 1

    def array(self) -> np.ndarray:
        return self.a[: self.n]

    def reserve(self, extra: int) -> np.ndarray:
        """Room for ``extra`` more elements; returns the whole buffer (a compiled pass writes past ``n``, then
        :meth:`grow_to` takes the new length)."""
        if self.n + extra > self.a.shape[0]:
            grown = B.array_module(self.a).zeros(self.n + extra, dtype=self.a.dtype)
            grown[: self.n] = self.a[: self.n]
            self.a = grown
        return self.a

    def grow_to(self, n: int) -> None:
        self.n = int(n)


class TableMap:
    """Table number -> row of a ``(T, 512)`` pte array, with an existence mask (child) and extra rows (tables a
    THP split adds to the parent)."""

    def __init__(self, pte: np.ndarray, table_index: np.ndarray, exists: np.ndarray | None = None):
        self.pte, self.exists, self.index = pte, exists, table_index
        self.extra: dict[int, list[int]] = {}
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


def python_context(
    space: AddressSpace,
    work: Memory,
    ppte: np.ndarray,
    cpte: np.ndarray,
    cexists: np.ndarray,
    variant: str,
    oracle,
    plan,
    fork_seq: int,
) -> ForkContext:
    """A reference ForkContext whose state is the fast engine's working arrays (written in place)."""
    mm = space.mm
    machine = Machine(work, store=IntArray)
    parent = MMState()
    parent.vmas = LazyVmas(mm)
    parent.tables = TableMap(ppte, mm.table_index)
    parent.pmds = dict(zip(mm.pmd_index.tolist(), mm.pmd.tolist()))
    parent.rss = mm.rss.tolist()
    parent.has_pinned, parent.on_swapoff_list = bool(mm.has_pinned), bool(mm.on_swapoff_list)
    child = MMState()
    child.tables = TableMap(cpte, mm.table_index, cexists)
    fc = ForkContext(space, variant, oracle, plan, fork_seq, machine=machine, parent=parent, child=child)
    fc.count_upper = False
    return fc


def machine_arrays(m: Machine) -> dict[str, np.ndarray]:
    """The current numpy arrays behind a host Machine (valid until the Python loop appends again)."""
    return {name: getattr(m, name).array() for name in MEMORY_FIELDS}
