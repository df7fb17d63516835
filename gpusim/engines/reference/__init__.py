"""The reference fork engine: the spec's state machines in plain Python (spec sections 2, 3, 5 and 10).

This is the oracle every fast engine is compared with. It walks each table sequentially exactly like the kernel:
``dup_mmap`` over the VMAs, ``copy_page_range`` over the tables of a VMA (``copy_huge_pmd`` for PMD-mapped THPs),
and ``copy_pte_range`` as the per-variant state machine (passes, progress counter, lock breaks, restarts, slow paths,
windows with injected events). Functions carry the kernel's names. It is slow and obvious on purpose.

Working state is a mutable mirror of the SoA arrays as Python lists (:class:`~gpusim.engines.context.Machine`,
:class:`~gpusim.engines.context.MMState`); the
input arrays are never written. New pages (early copies) are appended in the order they are allocated, so the
numbering of frames is deterministic. A simulated oops is an internal exception turned into an outcome; it never
leaves :func:`dup_mmap`.

Alongside the state the engine keeps a :class:`~gpusim.engines.context.Trace` (handled indices per pass, the check log,
windows, installs, copy moments, applied events) from which :mod:`gpusim.analysis.invariants` checks spec section 6.

The modules follow the spec's sections, and :mod:`gpusim.kernels.slowpath` ports each machine beside them:
:mod:`~gpusim.engines.reference.context` (the call's context; what a fork shares, with the fast engine too, is in
:mod:`gpusim.engines.context`), :mod:`~gpusim.engines.reference.common` (spec 2: passes, checks, the shared operations),
one module per state machine (:mod:`~gpusim.engines.reference.linux_5_8`, :mod:`~gpusim.engines.reference.xu`,
:mod:`~gpusim.engines.reference.linux_5_10`, :mod:`~gpusim.engines.reference.linux_6_18`),
:mod:`~gpusim.engines.reference.huge` (spec 10), :mod:`~gpusim.engines.reference.events` (spec 5.2's window events) and
:mod:`~gpusim.engines.reference.fork` (``dup_mmap``, ``copy_page_range``, the teardown).
"""

from gpusim.engines.reference.fork import copy_pte_range, copy_table, dup_mmap, fork_reference, teardown
from gpusim.engines.reference.huge import copy_huge_pmd

__all__ = ["fork_reference", "dup_mmap", "teardown", "copy_pte_range", "copy_huge_pmd", "copy_table"]
