"""How fast the simulator runs fork episodes (spec 11.6; issue 27's scale target: 10^7 writes on 64 GiB in <= 10 s).

Usage: python benchmarks/bench_episode.py [--sizes 1GiB,16GiB,64GiB] [--writes 1e7] [--pattern uniform] [--repeat 2]
       [--json FILE]

Per size: a dense anonymous heap (4 KiB pages) is built and forked on the CPU engine (``check=False``), then an
episode of ``--writes`` parent writes over 10 s of model time runs on it (compiled, one core), timed as a user calls
it (:func:`gpusim.api.fork_episode`: schedule, writes, samples, the report) and its compiled writes alone; then the
whole ``gpusim.fork(space, episode=...)`` end to end. Prints page writes per second, the copy faults among them, and
the peak resident memory of this process (the episode keeps room for a new page per page it may copy).
"""

import argparse
import json
import resource
import time

from gpusim import api
from gpusim.base.units import parse_size
from gpusim.engines import episode as E
from gpusim.inputs.workloads import build_workload
from gpusim.jobs.sweep.spec import workload_spec


def timed_kernel() -> list:
    """Wrap the compiled runner's writes so their time adds up in the returned one-element list."""
    spent, write = [0.0], E.CompiledRunner.write

    def timed(self, *args):
        t0 = time.perf_counter()
        out = write(self, *args)
        spent[0] += time.perf_counter() - t0
        return out

    E.CompiledRunner.write = timed
    return spent


def one_size(size: str, writes: float, pattern: str, spent: list) -> dict:
    spec = workload_spec("anon", {"size": size}, "--workload")
    t0 = time.perf_counter()
    space, _, _ = build_workload(spec, "linux-6.18", 0)
    t1 = time.perf_counter()
    r = api.fork(space, "linux-6.18", backend="cpu", check=False)
    t2 = time.perf_counter()
    episode = f"duration=10s, rate={writes / 10:.0f}, pattern={pattern}, resolution=0.1"
    spent[0] = 0.0
    ep = api.fork_episode(r, episode, check=False)
    t3 = time.perf_counter()
    kernel = spent[0]
    whole = api.fork(space, "linux-6.18", backend="cpu", check=False, episode=episode)
    t4 = time.perf_counter()
    rep = ep.report
    return {
        "size": size,
        "ptes": r.nr_ptes,
        "writes": rep["writes"],
        "copies": rep["faults"]["parent"]["copy"],
        "build_s": t1 - t0,
        "fork_s": t2 - t1,
        "episode_s": t3 - t2,
        "episode_writes_s": kernel,
        "writes_per_s": rep["writes"] / (t3 - t2),
        "end_to_end_s": t4 - t3,
        "same": whole.episode.report["cow_pages_peak"] == rep["cow_pages_peak"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1GiB,16GiB,64GiB")
    ap.add_argument("--writes", type=float, default=1e7)
    ap.add_argument("--pattern", default="uniform")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    spent = timed_kernel()
    one_size("16MiB", 1e3, args.pattern, spent)  # compile first
    out = []
    for _ in range(args.repeat):
        for size in args.sizes.split(","):
            parse_size(size)
            row = one_size(size, args.writes, args.pattern, spent)
            out.append(row)
            print(
                f"{size:>7}: {row['writes']:,} writes ({row['copies']:,} copy faults): "
                f"episode {row['episode_s']:.2f} s "
                f"(compiled writes {row['episode_writes_s']:.2f} s), {row['writes_per_s'] / 1e6:.2f} M writes/s; "
                f"build {row['build_s']:.2f} s, fork {row['fork_s']:.2f} s; fork + episode end to end "
                f"{row['end_to_end_s']:.2f} s",
                flush=True,
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory {peak:.2f} GiB")
    if args.json:
        json.dump({"rows": out, "peak_rss_gib": peak}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
