"""The fast engine's working state of one fork: plain arrays, written in place by the kernels.

:class:`WorkState` holds the engine's own copy of the memory (each array a growable :class:`IntArray`, with room the
compiled slow path fills and the Python loop appends to), both processes' table rows, what the slow path adds beside
them (huge PMDs shared or split, the tables a split makes), the processes' counters and flags, and the records every
engine keeps (:class:`~gpusim.engines.context.ForkRecords`: counts, trace, per-table rows) from which the result is
assembled. Nothing here is the reference's: the Python loop (:mod:`gpusim.engines.pyloop`) wraps this state in the
reference's objects only for a fork with injections.
"""

from __future__ import annotations

import numpy as np

from gpusim.base import backend as B
from gpusim.engines.context import ForkRecords
from gpusim.kernels.fields import MEMORY_FIELDS
from gpusim.model.oracle import InjectionPlan
from gpusim.model.state import AddressSpace, Memory, copy_array


class IntArray:
    """A numpy-backed sequence of Python ints that can grow (``append``)."""

    __slots__ = ("a", "n")

    def __init__(self, a: np.ndarray, n: int | None = None):
        self.a, self.n = a, int(a.shape[0] if n is None else n)  # the buffer and its first n elements in use

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

    def grow_to(self, n: int) -> None:
        """The first ``n`` elements are in use: a compiled pass wrote past the old length, into the room the buffer
        was made with (:class:`WorkState`)."""
        self.n = int(n)


class WorkState(ForkRecords):
    """The working state of one fork on the fast engine (see the module docstring). ``memory``: the engine's own
    copy of the parent's memory is made from it, with ``room`` more folio and page rows (the early copies the
    compiled slow path can make, reserved up front so that their arrays are copied once; without ``copy`` the
    arrays that need no room are ``memory``'s own, written in place); ``ppte``, ``cpte``
    ``(T, 512)`` u64 the parent's and the child's table rows (the parent's row numbers), ``cexists`` bool ``(T,)``
    which child rows exist."""

    def __init__(
        self,
        space: AddressSpace,
        variant: str,
        plan: InjectionPlan,
        memory: Memory,
        ppte,
        cpte,
        cexists,
        room: int = 0,
        copy: bool = True,
    ):
        super().__init__(space, variant, plan)
        mm = space.mm
        self.memory = {}
        for name in MEMORY_FIELDS:
            a, extra = getattr(memory, name), 0 if name.startswith("swap_") else room
            self.memory[name] = IntArray(copy_array(a, extra) if copy or extra else a, a.shape[0])
        self.next_content = memory.next_content
        self.ppte, self.cpte, self.cexists = ppte, cpte, cexists
        self.parent_pmds = dict(zip(mm.pmd_index.tolist(), B.to_host(mm.pmd).tolist()))
        self.child_pmds: dict[int, int] = {}
        self.parent_extra: dict[int, list] = {}  # tables a THP split adds (table -> its 512 entries)
        self.child_extra: dict[int, list] = {}
        self.parent_rss, self.child_rss = mm.rss.tolist(), [0, 0, 0, 0]
        self.parent_has_pinned, self.parent_on_swapoff = bool(mm.has_pinned), bool(mm.on_swapoff_list)
        self.child_on_swapoff = False

    def arrays(self) -> dict[str, np.ndarray]:
        """The memory's arrays as they stand (valid until the Python loop appends again)."""
        return {name: a.array() for name, a in self.memory.items()}

    def memory_now(self) -> Memory:
        return Memory(**self.arrays(), next_content=self.next_content)
