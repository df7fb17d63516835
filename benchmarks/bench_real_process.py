"""A real process's fork predicted from its capture (issue 26): an interpreter holding a large dict built by inserts
and deletes, its frames in the order this machine's allocator gave them, on a machine fragmented or not.

Usage (root, so that pagemap shows frame numbers): python benchmarks/bench_real_process.py [--entries 4000000]
    [--rounds 15] [--fragment 2GiB] [--profile PROFILE]

What it does, all in one window:

``--fragment S`` first runs the fragmenting helper over S (the simulated churn of a long-running machine), then
:func:`gpusim.jobs.host.process.measure_window`: the dict (``--entries`` keys) and a bare interpreter, ``--rounds``
rounds interleaved, each captured and priced by ``--profile`` (default: the newest host profile), with its band.

Prints, per process, the measured fork (median and quartiles), the prediction and its band, the error, and the
fraction of present pages whose frame does not follow the previous page's; and the same for the time the dict adds
to the bare interpreter.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    from gpusim.analysis.costmodel import load_profile
    from gpusim.base.units import parse_size
    from gpusim.jobs.host.calibrate import kernel_variant
    from gpusim.jobs.host.measure import default_cpu
    from gpusim.jobs.host.process import measure_window

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=4_000_000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--fragment", default="0")
    ap.add_argument("--profile", default=None)
    args = ap.parse_args()
    profile = load_profile(args.profile)
    variant = kernel_variant()
    cpu = default_cpu() or 0
    size = parse_size(args.fragment) if args.fragment != "0" else 0
    out = measure_window(args.entries, args.rounds, variant, {"p": profile}, cpu, size)
    print(
        f"profile {profile.name}; variant {variant}; fragmenting helper {args.fragment}; "
        f"{args.entries} dict entries; {args.rounds} rounds on CPU {cpu}"
    )
    med = {}
    for k, r in out.items():
        q = np.percentile(r["fork_ns"], [25, 50, 75])
        lat = r["predicted"]["p"]
        med[k] = (q[1], lat["latency_ns"])
        band = (
            "no band"
            if lat["latency_low_ns"] is None
            else f"band {lat['latency_low_ns'] / 1e6:.2f}-{lat['latency_high_ns'] / 1e6:.2f}"
        )
        fb = "unreadable" if r["frame_breaks"] is None else f"{r['frame_breaks']:.3f}"
        print(
            f"{k:>5}: measured {q[1] / 1e6:7.2f} ms (IQR {q[0] / 1e6:.2f}-{q[2] / 1e6:.2f}, {len(r['fork_ns'])} "
            f"forks); predicted {lat['latency_ns'] / 1e6:7.2f} ms ({band}); error {lat['latency_ns'] / q[1] - 1:+.1%}; "
            f"frame breaks {fb}"
        )
    (mb, pb), (md, pd) = med["bare"], med["dict"]
    print(
        f"added by the dict: measured {(md - mb) / 1e6:.2f} ms, predicted {(pd - pb) / 1e6:.2f} ms, "
        f"error {(pd - pb) / (md - mb) - 1:+.1%}"
    )


if __name__ == "__main__":
    main()
