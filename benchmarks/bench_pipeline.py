"""End to end ``gpusim.fork`` beside its kernels (issue 12): where a fork's time goes outside the engine.

Usage: python benchmarks/bench_pipeline.py [--repeat 9]

For dense 4 KiB anonymous spaces of 1 and 4 GiB, in a warm process, prints one JSON object: per size the median
``gpusim.fork`` time with and without the invariant check, the same with the result's digest read (it is computed
when first read, as a sweep row reads it), the engine's own time (``engine_wall_s``) of those forks, the digest of
the result alone, and one full validation of the input (which a space now pays once).
"""

import argparse
import json
import statistics
import time

import gpusim
from gpusim.state import digest
from gpusim.workloads import dense_anon


def timed(fn, repeat: int) -> tuple[float, list]:
    walls, out = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out.append(fn())
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls) * 1e3, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    report = {}
    for pages in (262_144, 1_048_576):
        space = dense_anon(pages).validate()
        for _ in range(2):
            gpusim.fork(space, backend="cpu", check=True)  # compile, warm the caches
        row = {}
        for check in (False, True):
            ms, results = timed(lambda s=space, c=check: gpusim.fork(s, backend="cpu", check=c), args.repeat)
            row[f"fork_check_{check}_ms"] = ms
            row[f"engine_check_{check}_ms"] = statistics.median(r.engine_wall_s for r in results) * 1e3
            row[f"fork_check_{check}_with_digest_ms"], _ = timed(
                lambda s=space, c=check: gpusim.fork(s, backend="cpu", check=c).digest, args.repeat
            )
        row["digest_ms"], _ = timed(lambda r=results[-1]: digest(r.parent.mm, r.child, r.parent.memory), args.repeat)
        row["validate_ms"], _ = timed(lambda s=space: type(s)(s.mm, s.memory).validate(), 5)
        report[f"{pages * 4096 >> 30}GiB"] = row
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
