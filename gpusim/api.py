"""The Python entry points: ``gpusim.fork(address_space, ...) -> ForkResult`` and ``gpusim.fork_batch``.

Backend choice lives here, at one seam: ``reference`` runs :func:`gpusim.engines.reference.fork_reference`, the fast
backends :func:`gpusim.engines.fast.fork_fast` with the kernels :func:`gpusim.base.backend.kernels` gives. Whatever the
engine, the invariants of spec section 6 are then checked on the result (:mod:`gpusim.analysis.invariants`).
"""

from __future__ import annotations

import time

from gpusim.analysis.costmodel import Profile, episode_report, event_costs, latency, load_profile, priced_events
from gpusim.analysis.invariants import check_invariants, check_write_phase
from gpusim.analysis.lazyinv import check_lazy_fork, check_lazy_phase
from gpusim.base import backend as _backend
from gpusim.base import checkargs
from gpusim.engines.reference import fork_reference
from gpusim.model.oracle import InjectionPlan, LockBreakOracle
from gpusim.model.result import ForkResult, InvariantReport
from gpusim.model.state import AddressSpace
from gpusim.model.variants import DEFAULT_VARIANT, get_variant

BACKENDS = _backend.BACKENDS


def fork(
    space: AddressSpace,
    variant: str = DEFAULT_VARIANT,
    backend: str = "auto",
    oracle: str | LockBreakOracle = "never",
    inject=(),
    fork_seq: int = 0,
    check: bool = True,
    chunk_tables: int | None = None,
    writes=None,
    episode=None,
    profile=None,
) -> ForkResult:
    """Simulate one fork of ``space`` under ``variant``.

    ``oracle`` is a lock-break oracle or its notation (``never``, ``always``, ``every:N``, ``bern:P:SEED``,
    ``list:...``); ``inject`` a list of injection notations or an :class:`InjectionPlan`. The input state is not
    modified. With ``check`` the invariants of spec section 6 are checked (not after an oops). ``chunk_tables``
    makes the fast engines process the page tables in launches of at most that many tables (an address space
    larger than device memory); the result does not depend on it. ``writes`` (the notation of spec 11.1, e.g.
    ``"parent:all; child:all"``, or a list of steps) runs a write phase after a fork that succeeds:
    ``result.write_phase`` (:class:`gpusim.engines.writes.WritePhase`; its invariants checked with ``check``).
    ``episode`` (spec 11.6: ``"duration=10s, rate=50000, pattern=zipf"`` or a mapping of the same keys) runs the
    writes of a snapshot child's life after a fork that succeeds: ``result.episode``
    (:class:`gpusim.engines.episode.Episode`, its report priced with the cost ``profile``: a name or a path, default
    the default profile; its invariants checked with ``check``).

    A space in device memory (``RegionSpace(...).whole("cuda")``) forks there on ``cuda``, with ``check=False`` and no
    writes; its result's states stay on the device, and its digest is computed there.
    """
    checkargs.instance("space", space, AddressSpace, SPACE_HINT)
    steps = None if writes is None else write_steps(writes)
    spec = None if episode is None else episode_spec(episode)
    asked = backend
    variant, backend, oracle, fork_seq = common_args(
        variant, backend, oracle, fork_seq, "fork_seq", None if spec is not None else slots_of(space)
    )
    plan = injection_plan(inject)
    check = checkargs.boolean("check", check)
    chunk_tables = checkargs.optional_integer("chunk_tables", chunk_tables, 1)
    if steps is not None and spec is not None:
        raise ValueError("writes and episode: give one (an episode is a write phase over time)")
    in_place = admit(space, backend, check, steps or spec) and not check  # (the check compares it with the input)
    plan.fired.clear()
    result = run_fork(space, variant, (backend, asked, chunk_tables, in_place), oracle, plan, fork_seq)
    if check and result.outcome != "oops":
        result.invariants = check_fork(space, result, oracle, fork_seq)
    if steps is not None and result.outcome == "ok":
        result.write_phase = write_phase(result, steps, check)
    if spec is not None and result.outcome == "ok":
        result.episode = fork_episode(result, spec, check, profile)
    return result


def run_fork(space, variant, how: tuple, oracle, plan, fork_seq: int) -> ForkResult:
    """The fork on its engine. ``how``: (the backend chosen, the one asked for, ``chunk_tables``, ``in_place``)."""
    backend, _, chunk_tables, in_place = how
    if backend == "reference":
        return fork_reference(space, variant, oracle, plan, fork_seq)
    from gpusim.engines.fast import fork_fast  # numba loads with the first compiled fork (start-up)

    kernels = _backend.kernels(backend)
    if get_variant(variant).lazy:
        return fork_lazy(space, variant, kernels, how, oracle, plan, fork_seq)
    return fork_fast(space, variant, kernels, backend, oracle, plan, fork_seq, chunk_tables, in_place)


def fork_lazy(space, variant, kernels, how: tuple, oracle, plan, fork_seq: int) -> ForkResult:
    """A lazy design's fork on a fast engine, or, where the fast engine leaves it to the reference
    (:class:`gpusim.engines.lazyfast.ReferenceOnly`, raised before it writes an input that was not handed over), on
    the reference when the backend asked for was ``auto`` (``how``: see :func:`run_fork`)."""
    from gpusim.engines.lazyfast import ReferenceOnly, fork_lazy_fast

    backend, asked, chunk_tables, in_place = how
    try:
        return fork_lazy_fast(space, variant, kernels, backend, oracle, plan, fork_seq, chunk_tables, in_place)
    except ReferenceOnly:
        if asked != "auto" or in_place:  # (an input handed over may have been written: not run again)
            raise
    plan.fired.clear()
    return fork_reference(space, variant, oracle, plan, fork_seq)


def check_fork(space: AddressSpace, result: ForkResult, oracle, fork_seq: int):
    """The invariants of a fork: spec 6's, or L1-L7 of spec 12.9 for a lazy design's."""
    if result.tables is not None:
        return check_lazy_fork(space, result)
    return check_invariants(space, result, oracle, fork_seq)


def admit(space: AddressSpace, backend: str, check: bool, steps) -> bool:
    """Check the input of a fork once (a device-resident space, from the generator and valid by construction: what
    can run on it); returns whether it was :meth:`~gpusim.model.state.AddressSpace.handed_over` (valid by
    construction too, and the fork's to write)."""
    handed_over = space.take_over()
    if _backend.on_device(space.mm.pte):
        refuse_resident(backend, check, steps)
    elif not handed_over:
        space.validate()
    return handed_over


SPACE_HINT = "from gpusim.workload(...) or gpusim.parse_layout(...)"
FORK_SEQ_MAX = checkargs.I64_MAX  # the kernels keep a fork's number (the oracle's and injections' key) as int64


def slots_of(space) -> int | None:
    """The PTE slots of a space in host memory, a PMD counting 512 (the size that lets ``auto`` run one fork of a
    tiny space on the reference: :func:`gpusim.base.backend.resolve`); None for a space in device memory."""
    mm = space.mm
    return None if _backend.on_device(mm.pte) else int(mm.pte.size) + 512 * int(mm.pmd.size)


def common_args(variant, backend, oracle, fork_seq, seq_name: str, slots: int | None = None):
    """The arguments :func:`fork` and :func:`fork_batch` share, checked: (variant, concrete backend, the oracle
    object, fork number). A wrong one is a TypeError or ValueError naming it. ``slots``: see :func:`slots_of`."""
    v = get_variant(variant)
    backend = "reference" if backend == "auto" and not v.compiled else _backend.resolve(backend, slots)
    if not v.compiled and backend != "reference":
        raise ValueError(
            f"variant {variant} runs on the reference backend only: its compiled engines are not built yet "
            "(backend 'auto' chooses the reference for it)"
        )
    if isinstance(oracle, str):
        oracle = LockBreakOracle.parse(oracle)
    checkargs.instance("oracle", oracle, LockBreakOracle, "never, always, every:N, bern:P:SEED or list:(s,k),...")
    return variant, backend, oracle, checkargs.integer(seq_name, fork_seq, 0, FORK_SEQ_MAX)


def injection_plan(inject) -> InjectionPlan:
    """``fork``'s ``inject``: a plan, or injections in their notation (one string, a list of them, or none)."""
    if isinstance(inject, InjectionPlan):
        return inject
    return InjectionPlan.parse(() if inject is None else checkargs.strings("inject", inject, "an injection"))


# The write phase's and the episode's engines are imported by the forks that ask for them, not with the package: a
# fork without them (a one-table `gpusim fork`) starts faster.
def write_steps(writes):
    """``fork``'s ``writes`` (the notation, or a list of step notations or steps), checked and parsed."""
    from gpusim.engines.writes import Step, parse_writes

    if not isinstance(writes, str):
        writes = checkargs.strings("writes", writes, "a step in the write notation (e.g. 'child:all')", also=(Step,))
    return parse_writes(writes)


def episode_spec(episode):
    """``fork``'s ``episode`` parsed (:func:`gpusim.engines.episode.parse_episode`)."""
    from gpusim.engines.episode import parse_episode

    return parse_episode(episode)


def refuse_resident(backend: str, check: bool, steps) -> None:
    """What a fork of state in device memory (:meth:`gpusim.inputs.regions.RegionSpace.generate` on ``cuda``) cannot do:
    run elsewhere than on ``cuda``, or check invariants and run a write phase, which read the states on the host."""
    if backend != "cuda":
        raise ValueError(f"an address space in device memory forks on the cuda backend, not '{backend}'")
    if check or steps is not None:
        raise ValueError(
            "a fork of an address space in device memory keeps its states there: pass check=False and no writes "
            "(or fork a host copy to check its invariants)"
        )


def write_phase(result: ForkResult, writes, check: bool = True):
    """The write phase ``writes`` after the fork ``result`` (which is not modified), timed, on the fork's engine
    (compiled on ``cpu`` and ``cuda``, the reference's Python on ``reference``); with ``check`` its invariants (spec
    11.5) are checked."""
    from gpusim.engines.writes import run_write_phase

    t0 = time.perf_counter()
    kernels = None if result.backend == "reference" else _backend.kernels(result.backend)
    wp = run_write_phase(result.parent, result.child, result.variant, writes, kernels, result.tables, result.fork_args)
    wp.wall_s = time.perf_counter() - t0
    if check and wp.outcome == "oops":
        wp.invariants = InvariantReport(True, (), False)  # the kernel crashed: nothing to hold (spec 2.3)
    elif check:
        wp.invariants = (
            check_lazy_phase(result.parent, result.child, result.tables, result.variant, wp)
            if result.tables is not None
            else check_write_phase(result.parent, result.child, wp, get_variant(result.variant).large_pin_order)
        )
    return wp


def fork_episode(result: ForkResult, episode, check: bool = True, profile=None):
    """The episode ``episode`` after the fork ``result`` (not modified), timed, compiled on the fast backends (the
    reference's Python on ``reference``); its report priced with ``profile`` (the fork's stall included); with
    ``check`` its invariants (spec 11.5) are checked."""
    from gpusim.engines.episode import episode_kernels, run_episode

    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    lazy = None
    if result.tables is not None:  # a lazy design's: the reference's runner, async-fork's child sync priced
        cost = event_costs(prof)
        lazy = (result.tables, result.fork_args, lambda counts: priced_events(counts, cost))
    t0 = time.perf_counter()
    kernels = episode_kernels(result.backend)
    ep = run_episode(result.parent, result.child, result.variant, episode, kernels, lazy=lazy)
    ep.wall_s = time.perf_counter() - t0
    if check:
        ep.invariants = (
            check_lazy_phase(result.parent, result.child, result.tables, result.variant, ep)
            if result.tables is not None
            else check_write_phase(result.parent, result.child, ep)
        )
    stall = latency(result.counts, result.variant, prof, result.table_stats)["latency_ns"]
    ep.report = episode_report(ep, prof, stall)
    return ep


def fork_batch(
    spaces,
    variant: str = DEFAULT_VARIANT,
    backend: str = "auto",
    oracle: str | LockBreakOracle = "never",
    fork_seq0: int = 0,
    check: bool = True,
    chunk_tables: int | None = None,
) -> list[ForkResult]:
    """Fork many independent address spaces, the ``i``-th as fork number ``fork_seq0 + i``.

    On the fast backends all of them go through one combined kernel launch (segments of tables and memory); each
    result equals what :func:`fork` gives for that space alone. No injections: a fork with injections is a
    :func:`fork` of its own.
    """
    if not isinstance(spaces, (list, tuple)):
        raise TypeError(f"spaces: a list of AddressSpace ({SPACE_HINT}), not {type(spaces).__name__}")
    variant, backend, oracle, fork_seq0 = common_args(variant, backend, oracle, fork_seq0, "fork_seq0")
    checkargs.integer("fork_seq0", fork_seq0, 0, FORK_SEQ_MAX - len(spaces))
    check = checkargs.boolean("check", check)
    chunk_tables = checkargs.optional_integer("chunk_tables", chunk_tables, 1)
    for i, s in enumerate(spaces):
        checkargs.instance(f"spaces[{i}]", s, AddressSpace, SPACE_HINT)
        if _backend.on_device(s.mm.pte):
            raise ValueError("fork_batch takes address spaces in host memory (fork one in device memory with fork)")
        s.validate()
    if backend == "reference":
        return [fork(s, variant, "reference", oracle, (), fork_seq0 + i, check) for i, s in enumerate(spaces)]
    from gpusim.engines.fast import fork_fast_batch

    results = fork_fast_batch(spaces, variant, _backend.kernels(backend), backend, oracle, fork_seq0, chunk_tables)
    if check:
        for i, (result, space) in enumerate(zip(results, spaces)):
            if result.outcome != "oops":
                result.invariants = check_invariants(space, result, oracle, fork_seq0 + i)
    return results
