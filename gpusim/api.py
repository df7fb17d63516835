"""The Python entry point: ``gpusim.fork(address_space, ...) -> ForkResult``.

Backend choice lives here, at one seam. Only the reference engine is built so far; asking for another backend is
a clear error naming what exists.
"""

from __future__ import annotations

import time

from gpusim import backend as _backend
from gpusim.oracle import InjectionPlan, LockBreakOracle
from gpusim.reference import ForkContext, dup_mmap, table_stats_of, teardown
from gpusim.result import ForkResult, finish_counts, rss_dict
from gpusim.state import AddressSpace, digest
from gpusim.variants import DEFAULT_VARIANT, get_variant

BACKENDS = _backend.BACKENDS
UnknownBackend = _backend.UnknownBackend


def fork(space: AddressSpace, variant: str = DEFAULT_VARIANT, backend: str = "auto",
         oracle: str | LockBreakOracle = "never", inject=(), fork_seq: int = 0, check: bool = True,
         chunk_tables: int | None = None) -> ForkResult:
    """Simulate one fork of ``space`` under ``variant``.

    ``oracle`` is a lock-break oracle or its notation (``never``, ``always``, ``every:N``, ``bern:P:SEED``,
    ``list:...``); ``inject`` a list of injection notations or an :class:`InjectionPlan`. The input state is not
    modified. With ``check`` the invariants of spec section 6 are checked (not after an oops). ``chunk_tables``
    makes the fast engines process the page tables in launches of at most that many tables (an address space
    larger than device memory); the result does not depend on it.
    """
    get_variant(variant)
    space.validate()
    backend = _backend.resolve(backend)
    if isinstance(oracle, str):
        oracle = LockBreakOracle.parse(oracle)
    plan = inject if isinstance(inject, InjectionPlan) else InjectionPlan.parse(inject)
    plan.fired.clear()
    if backend != "reference":
        from gpusim.engine import fork_fast
        result, first_new_pfn = fork_fast(space, variant, _backend.kernels(backend), backend, oracle, plan, fork_seq,
                                          chunk_tables)
        if check and result.outcome != "oops":
            from gpusim.invariants import check_invariants
            result.invariants = check_invariants(space, result, oracle, fork_seq, first_new_pfn)
        return result

    t0 = time.perf_counter()
    fc = ForkContext(space, variant, oracle, plan, fork_seq)
    outcome, oops, enomem = dup_mmap(fc)
    child_rss = rss_dict(fc.child.rss)
    after_teardown = None
    if outcome == "enomem":
        teardown(fc)
        after_teardown = rss_dict(fc.child.rss)
    parent = AddressSpace(fc.parent.to_mm(), fc.m.to_memory())
    child = fc.child.to_mm()
    wall = time.perf_counter() - t0

    result = ForkResult(
        outcome=outcome, variant=variant, backend=backend, parent=parent, child=child,
        counts=finish_counts(fc.counts), child_rss=child_rss, child_rss_after_teardown=after_teardown,
        oops=oops, enomem=enomem, unfired=plan.unfired(), ignored_events=list(fc.ignored),
        digest=digest(parent.mm, child, parent.memory), engine_wall_s=wall, nr_ptes=space.nr_ptes,
        trace=fc.trace, table_stats=table_stats_of(fc.table_rows),
    )
    if check and outcome != "oops":
        from gpusim.invariants import check_invariants
        result.invariants = check_invariants(space, result, oracle, fork_seq, fc.first_new_pfn)
    return result


def fork_batch(spaces, variant: str = DEFAULT_VARIANT, backend: str = "auto", oracle: str | LockBreakOracle = "never",
               fork_seq0: int = 0, check: bool = True, chunk_tables: int | None = None) -> list[ForkResult]:
    """Fork many independent address spaces, the ``i``-th as fork number ``fork_seq0 + i``.

    On the fast backends all of them go through one combined kernel launch (segments of tables and memory); each
    result equals what :func:`fork` gives for that space alone. No injections: a fork with injections is a
    :func:`fork` of its own.
    """
    get_variant(variant)
    for s in spaces:
        s.validate()
    backend = _backend.resolve(backend)
    if isinstance(oracle, str):
        oracle = LockBreakOracle.parse(oracle)
    if backend == "reference":
        return [fork(s, variant, "reference", oracle, (), fork_seq0 + i, check) for i, s in enumerate(spaces)]
    from gpusim.engine import fork_fast_batch
    results = fork_fast_batch(spaces, variant, _backend.kernels(backend), backend, oracle, fork_seq0, chunk_tables)
    if check:
        from gpusim.invariants import check_invariants
        for i, ((result, first_new_pfn), space) in enumerate(zip(results, spaces)):
            if result.outcome != "oops":
                result.invariants = check_invariants(space, result, oracle, fork_seq0 + i, first_new_pfn)
    return [r for r, _ in results]
