"""Speed of the pure-Python reference engine on dense 4 KiB anonymous layouts (prints Markdown table rows).

Usage: python benchmarks/bench_reference.py [--tables N ...]
The reference engine is the oracle; this only tells users which sizes it is meant for.
"""

import argparse
import datetime

import gpusim
from gpusim.jobs.bench import cpu_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tables", type=int, nargs="*", default=[64, 512])
    ap.add_argument("--variant", default="linux-6.18")
    args = ap.parse_args()
    import os

    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    today = datetime.date.today().isoformat()
    for t in args.tables:
        n = 512 * t
        for layout, what in ((f"normal*{n}", "dense 4 KiB anon"), (f"pinned*64 normal*{n - 64}", "64 pinned pages")):
            space = gpusim.parse_layout(layout, args.variant)
            r = gpusim.fork(space, args.variant, backend="reference", check=False)
            print(
                f"| {today} | {machine} | {what}, {n * 4 // 1024} MiB ({args.variant}) | {r.nr_ptes} | "
                f"{r.engine_wall_s:.3f} s | {r.nr_ptes / r.engine_wall_s:,.0f} |"
            )


if __name__ == "__main__":
    main()
