"""The differential check shared by the engine tests and the soak (benchmarks/soak.py): a fork on an engine
against the same fork on the reference. The reference's fork of a case is made once and kept (the same case runs on
every backend's parametrisation); its invariants are asserted too, so that a wrong reference cannot pass as the
oracle."""

import functools

import gpusim
from gpusim.model.frames import with_frame_order


@functools.lru_cache(maxsize=512)
def reference_fork(layout, variant, oracle, inject: tuple, frames: tuple = ("address", 0)):
    """(the parsed space, with its frames in the order ``frames`` (order, seed), the reference's fork of it), made
    once per case."""
    space = with_frame_order(gpusim.parse_layout(layout, variant), *frames).validate()
    ref = gpusim.fork(space, variant, backend="reference", oracle=oracle, inject=list(inject))
    if ref.outcome != "oops":
        assert ref.invariants.ok, ((layout, variant, oracle, inject), ref.invariants.violations)
    return space, ref


def compare(layout, variant, oracle, inject, backend, frames=("address", 0)):
    space, ref = reference_fork(layout, variant, oracle, tuple(inject or ()), tuple(frames))
    got = gpusim.fork(space, variant, backend=backend, oracle=oracle, inject=inject)
    ctx = (layout, variant, oracle, inject, frames)
    assert got.outcome == ref.outcome, ctx
    assert got.oops == ref.oops and got.enomem == ref.enomem, ctx
    diff = {k: (ref.counts[k], got.counts[k]) for k in ref.counts if ref.counts[k] != got.counts[k]}
    assert not diff, (ctx, diff)
    assert got.child_rss == ref.child_rss and got.child_rss_after_teardown == ref.child_rss_after_teardown, ctx
    assert got.unfired == ref.unfired and got.ignored_events == ref.ignored_events, ctx
    assert got.digest == ref.digest, ctx
    if got.outcome != "oops":
        assert got.invariants.ok, (ctx, got.invariants.violations)
    return ref, got
