"""Launch cost of the fast engine's kernels: the time of each ``fork_tables`` call, as ``gpusim.fork`` makes it.

Usage: python benchmarks/bench_launch.py [--backend cpu] [--repeat 21]

Forks a one-table address space (the call is dominated by handing the arguments to the compiled kernel) and a
1 GiB dense one (262,144 PTEs: argument handling plus the work), and prints, per size, the median time of the
kernel calls inside ``gpusim.fork`` and the median end-to-end ``gpusim.fork(..., check=False)``. The calls are
timed by wrapping the backend's ``fork_tables`` (the seam every fork launches through), so the figures compare
across versions of the engine.
"""

import argparse
import statistics
import time

import gpusim
from gpusim.base import backend as B
from gpusim.inputs.workloads import dense_anon


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--repeat", type=int, default=21)
    args = ap.parse_args()
    kernels = B.kernels(B.resolve(args.backend))
    real = kernels.fork_tables
    calls: list[float] = []

    def timed(*a, **kw):
        t0 = time.perf_counter()
        out = real(*a, **kw)
        calls.append(time.perf_counter() - t0)
        return out

    kernels.fork_tables = timed
    try:
        for name, pages in (("one table", 512), ("1 GiB", 262_144)):
            space = dense_anon(pages)
            gpusim.fork(space, backend=args.backend, check=False)  # compile, warm the caches
            launch, whole = [], []
            for _ in range(args.repeat):
                calls.clear()
                t0 = time.perf_counter()
                gpusim.fork(space, backend=args.backend, check=False)
                whole.append(time.perf_counter() - t0)
                launch.append(sum(calls))
            print(
                f"{name:>9}: kernel calls {statistics.median(launch) * 1e6:9.1f} us   "
                f"gpusim.fork {statistics.median(whole) * 1e3:8.2f} ms   ({args.backend}, median of {args.repeat})"
            )
    finally:
        kernels.fork_tables = real


if __name__ == "__main__":
    main()
