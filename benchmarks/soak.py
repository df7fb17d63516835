"""Soak: random fault-injected forks on a fast engine against the reference, per variant.

Each fork is a random layout (up to ``--width`` pages, VMAs of every kind of flag, THPs, swap entries with
continuations, device and migration entries), a random lock-break oracle, and up to three injections (allocation
failures by point and ordinal or Bernoulli, window events); the layouts, oracles and injections are the
differential tests' own hypothesis strategies (``tests/strategies.py``). For every fork the engine must give the
reference's outcome, oops and ENOMEM details, counts, child rss (and after teardown), unfired injections and state
digest; the invariants must hold (but after an oops), and an ENOMEM must be unwound (the half-built child torn down
to nothing). The first disagreement stops the run and is printed as a reproducible example (hypothesis shrinks it).

    python benchmarks/soak.py --forks 10000                 # per variant, cpu against reference
    python benchmarks/soak.py --forks 200 --variants linux-5.10,xu-v1 --backend cudasim

Prints, per variant: forks run, outcomes (ok / enomem / oops), forks with an injection that fired, wall time.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from differential import compare  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from strategies import VARIANTS, injections, layouts, oracles  # noqa: E402


def check_fork(layout: str, variant: str, oracle: str, inject: list, backend: str) -> str:
    """The differential tests' check (``tests/differential.py``), and an ENOMEM unwound to no child page; returns
    the outcome. AssertionError on any difference."""
    _, got = compare(layout, variant, oracle, inject, backend)
    if got.outcome == "enomem":
        assert not any(got.child_rss_after_teardown.values()), (layout, variant, oracle, inject, "ENOMEM left pages")
    return got.outcome


def soak(variant: str, forks: int, backend: str, width: int) -> dict:
    """``forks`` random forks of ``variant`` (hypothesis examples); the tally of what ran."""
    tally = collections.Counter()

    @st.composite
    def cases(draw):
        layout, w = draw(layouts(max_width=width))
        return layout, draw(oracles()), draw(injections(w))

    @settings(max_examples=forks, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=cases())
    def run(case):
        layout, oracle, inject = case
        tally[check_fork(layout, variant, oracle, inject, backend)] += 1
        tally["forks"] += 1
        tally["with_injections"] += bool(inject)

    t0 = time.perf_counter()
    run()
    return {"variant": variant, "backend": backend, **tally, "wall_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--forks", type=int, default=10_000, help="random forks per variant")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--width", type=int, default=2000, help="largest layout, in pages")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = [soak(v, args.forks, args.backend, args.width) for v in args.variants.split(",")]
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(
            f"{r['variant']:11s} {r['backend']}: {r['forks']} forks agree with the reference "
            f"(ok {r.get('ok', 0)}, enomem {r.get('enomem', 0)}, oops {r.get('oops', 0)}; "
            f"{r['with_injections']} with injections), {r['wall_s']:.0f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
