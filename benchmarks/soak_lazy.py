"""Soak of the lazy fork designs (spec 12) on the reference: random forks with random write phases after them.

Each case is a random layout (one private anonymous VMA padded to whole tables, as the designs share or defer whole
tables; odf-paper also takes the differential tests' layouts with VMAs of every kind), a random lock-break oracle,
up to three injections, and a random write phase of writes, pins, the child's sync and exit, and at times a second
fork with its child's writes. For every case:

* the fork's invariants (L1-L7 of spec 12.9) hold, and so do the write phase's (a fork that ends ENOMEM leaves a
  torn-down child);
* async-fork: after ``child:sync`` the states equal linux-6.18's fork of the same layout, oracle and injections
  (spec 12.4: the deferred copies are that fork's calls), when both succeed;
* odf-cowpte: every page, slot and rss counter ends as under linux-6.18 without batching (spec 12.3), without
  injections (a window event in a shared table's accounting pass has no linux-6.18 counterpart).

With ``--backend cpu`` (or ``cudasim``, ``cuda``) every case's fork also runs on that fast engine and must equal the
reference's (``tests/differential.py``: outcome, counts, rss, unfired injections, digest with the table objects), or
be one the fast engine leaves to the reference (``ReferenceOnly``, counted).

The first failure stops the run and is printed as a reproducible example (hypothesis shrinks it).

    python benchmarks/soak_lazy.py --forks 10000            # per design
    python benchmarks/soak_lazy.py --forks 3000 --backend cpu

Prints, per design: forks run, outcomes, cases rejected by the design's model (spec 12.2, 12.3), wall time.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from differential import compare  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from strategies import LAZY_STEPS as STEPS  # noqa: E402
from strategies import injections, layouts, oracles  # noqa: E402

import gpusim  # noqa: E402
from gpusim.engines.lazyfast import ReferenceOnly  # noqa: E402
from gpusim.engines.reference.lazy import Unsupported  # noqa: E402
from gpusim.model.state import digest  # noqa: E402
from gpusim.model.variants import VARIANTS  # noqa: E402

LAZY = tuple(n for n, v in VARIANTS.items() if v.lazy)
SINGLE = dataclasses.replace(VARIANTS["linux-6.18"], name="soak-6.18-single", summary="6.18, n = 1", batching=False)


def check_case(variant: str, layout: str, oracle: str, inject: list, writes: str) -> str:
    """One case's checks (module docstring); its outcome, or ``rejected``. AssertionError on a failure."""
    space = gpusim.parse_layout(layout)
    try:
        r = gpusim.fork(space, variant, backend="reference", oracle=oracle, inject=inject, writes=writes)
    except Unsupported:
        return "rejected"
    case = (variant, layout, oracle, inject, writes)
    assert r.outcome == "oops" or r.invariants.ok, (case, r.invariants.violations)
    if r.outcome == "enomem":
        assert not any(r.child_rss_after_teardown.values()), (case, "ENOMEM left pages")
    if r.outcome != "ok":
        return r.outcome
    w = r.write_phase
    assert w.invariants.ok, (case, w.invariants.violations)
    if variant == "async-fork" and writes.startswith("child:sync;"):
        base = gpusim.fork(space, "linux-6.18", backend="reference", oracle=oracle, inject=inject)
        first = gpusim.fork(space, variant, backend="reference", oracle=oracle, inject=inject, writes="child:sync")
        if base.outcome == "ok" and first.write_phase.outcome == "ok":
            got = first.write_phase
            assert digest(got.parent.mm, got.child, got.memory) == base.digest, (case, "sync != linux-6.18")
    if variant == "odf-cowpte" and not inject:
        base = gpusim.fork(space, SINGLE.name, backend="reference", oracle=oracle)
        if base.outcome == "ok":
            for name in ("folio_refcount", "page_mapcount", "page_flags", "swap_count", "swap_levels"):
                assert (getattr(r.memory, name) == getattr(base.memory, name)).all(), (case, name)
            assert r.child.rss.tolist() == base.child.rss.tolist(), (case, "child rss")
    return r.outcome


def check_fast(variant: str, layout: str, oracle: str, inject: list, backend: str) -> str:
    """The case's fork on the fast engine ``backend`` against the reference's: ``fast_equal`` or
    ``fast_left_to_reference``. AssertionError on a difference."""
    try:
        compare(layout, variant, oracle, inject, backend)
    except ReferenceOnly:
        return "fast_left_to_reference"
    return "fast_equal"


def soak(variant: str, forks: int, width: int, backend: str | None = None) -> dict:
    """``forks`` random cases of ``variant``; the tally of what ran."""
    tally = collections.Counter()

    @st.composite
    def cases(draw):
        layout, w = draw(layouts(max_width=width, allow_vma=variant == "odf-paper" and draw(st.booleans())))
        if " vma" not in f" {layout}" and w % 512:
            layout += f" none*{-w % 512}"
        steps = draw(st.lists(st.sampled_from(STEPS), min_size=1, max_size=5))
        if "child:exit" in steps:
            i = steps.index("child:exit")
            steps = steps[: i + 1] + [s for s in steps[i + 1 :] if s.startswith("parent")]
        if draw(st.booleans()):
            steps = ["child:sync"] + steps
        if draw(st.integers(0, 3)) == 0:  # a second fork, its child's writes, the parent's (scenario Z-j)
            steps += ["parent:fork", "child2:all", "parent:all"]
        return layout, draw(oracles()), draw(injections(w)), "; ".join(steps)

    @settings(max_examples=forks, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=cases())
    def run(case):
        outcome = check_case(variant, *case)
        tally[outcome] += 1
        tally["forks"] += 1
        if backend and outcome != "rejected":
            tally[check_fast(variant, *case[:3], backend)] += 1

    t0 = time.perf_counter()
    run()
    tally["wall_s"] = round(time.perf_counter() - t0, 1)
    return dict(tally)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--forks", type=int, default=1000, help="cases per design")
    ap.add_argument("--variants", default=",".join(LAZY))
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--backend", default=None, help="also fork every case on this fast engine (differential)")
    a = ap.parse_args()
    VARIANTS[SINGLE.name] = SINGLE
    for v in a.variants.split(","):
        print(json.dumps({"variant": v, "backend": a.backend, **soak(v, a.forks, a.width, a.backend)}), flush=True)


if __name__ == "__main__":
    main()
