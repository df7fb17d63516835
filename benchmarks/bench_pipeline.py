"""End to end ``gpusim.fork`` beside its kernels (issue 12): where a fork's time goes outside the engine.

Usage: python benchmarks/bench_pipeline.py [--repeat 9]

For dense 4 KiB anonymous spaces of 1 and 4 GiB, in a warm process, prints one JSON object: per size the median
``gpusim.fork`` time with and without the invariant check, the same with the result's digest read (it is computed
when first read, as a sweep row reads it), the engine's own time (``engine_wall_s``) of those forks, the digest of
the result alone, and one full validation of the input (which a space now pays once). The cases run
round-robin (this VM's speed drifts by tens of per cent within a minute). Then this machine's kernel forks a real
process holding that memory in the modelled state (:func:`gpusim.jobs.host.measure.time_layout`, as ``gpusim bench
--vs-kernel`` does), in the same run: ``kernel_fork_ms`` and the ratios ``kernel_vs_fork_check_False`` (end to end,
issue 28: at least 5 at 1 GiB) and ``kernel_vs_engine``.
"""

import argparse
import json
import statistics
import time

import gpusim
from gpusim.inputs.workloads import dense_anon
from gpusim.jobs.host.measure import time_layout
from gpusim.jobs.host.real import RealLayout
from gpusim.model.state import digest


def interleaved(cases: dict, repeat: int) -> dict:
    """The median wall time (ms) of each of ``cases`` (name -> call), run round-robin ``repeat`` times, so that no
    case gets a quieter or warmer stretch of the machine than another; and each case's last result."""
    walls = {name: [] for name in cases}
    last = {}
    for _ in range(repeat):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            last[name] = fn()
            walls[name].append(time.perf_counter() - t0)
    return {name: statistics.median(w) * 1e3 for name, w in walls.items()}, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    report = {}
    for pages in (262_144, 1_048_576):
        space = dense_anon(pages).validate()
        for _ in range(2):
            gpusim.fork(space, backend="cpu", check=True)  # compile, warm the caches
        cases = {}
        for check in (False, True):
            cases[f"fork_check_{check}_ms"] = lambda s=space, c=check: gpusim.fork(s, backend="cpu", check=c)
            cases[f"fork_check_{check}_with_digest_ms"] = lambda s=space, c=check: (
                gpusim.fork(s, backend="cpu", check=c).digest
            )
        row, last = interleaved(cases, args.repeat)
        for check in (False, True):
            row[f"engine_check_{check}_ms"] = last[f"fork_check_{check}_ms"].engine_wall_s * 1e3
        r = last["fork_check_False_ms"]
        more, _ = interleaved(
            {
                "digest_ms": lambda r=r: digest(r.parent.mm, r.child, r.parent.memory),
                "validate_ms": lambda s=space: type(s)(s.mm, s.memory).validate(),
            },
            5,
        )
        kernel = time_layout(RealLayout("dense", pages * 4096), max(5, args.repeat))
        if kernel["checks"].get("fresh") and not kernel["refused"]:
            more["kernel_fork_ms"] = k_ms = kernel["fresh"]["median_ns"] / 1e6
            more["kernel_vs_fork_check_False"] = k_ms / row["fork_check_False_ms"]
            more["kernel_vs_engine"] = k_ms / row["engine_check_False_ms"]
        report[f"{pages * 4096 >> 30}GiB"] = {**row, **more}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
