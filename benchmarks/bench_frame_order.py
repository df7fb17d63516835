"""The real kernel's fork of one buffer whose frames are in different physical orders (issue 26's first measurement).

Usage: python benchmarks/bench_frame_order.py [--size 1GiB] [--rounds 9] [--runs 64]

The same private anonymous buffer, first touched in address order, in a random page order and in shuffled runs of
``--runs`` pages (:class:`gpusim.jobs.host.real.RealLayout` ``first_touch``), then re-dirtied in address order before
every timed fork as the calibration does (the state checks say whether each fork saw every page writable). The
layouts are measured interleaved with a bare process in one window (:func:`gpusim.jobs.host.measure.measure`).
Prints per order the fraction of present pages whose frame does not follow the previous one's (``frame_breaks``,
read from /proc/self/pagemap: root only), the fork's added time (median, ms), and what ``--profile`` (default: the
newest host profile) predicts for it, its twin's frames in the measured order (:func:`gpusim.jobs.host.calibrate.
latency_cases`), with the error and the profile's band.
"""

import argparse

from gpusim.analysis.costmodel import load_profile
from gpusim.base.units import parse_size
from gpusim.jobs.host.calibrate import kernel_variant, latency_cases
from gpusim.jobs.host.measure import measure
from gpusim.jobs.host.real import RealLayout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--runs", type=int, default=64)
    ap.add_argument("--profile", default=None)
    args = ap.parse_args()
    profile = load_profile(args.profile)
    size = parse_size(args.size)
    layouts = [
        RealLayout("address", size),
        RealLayout("random", size, first_touch="random", seed=1),
        RealLayout(f"runs:{args.runs}", size, first_touch=f"runs:{args.runs}", seed=1),
    ]
    r = measure(layouts, args.rounds)
    cases, _ = latency_cases(r["layouts"], kernel_variant(), {"p": profile})
    pred = {c["name"]: c for c in cases["p"] if c["state"] == "fresh"}
    band = profile.band
    print(f"profile {profile.name}; band " + ("none" if band is None else f"{band.low:+.1%}..{band.high:+.1%}"))
    for x in r["layouts"]:
        if x["refused"]:
            print(f"{x['name']:>10}  refused: {x['refused']}")
            continue
        fresh = x["fresh"]
        breaks = "unreadable" if x["frame_breaks"] is None else f"{x['frame_breaks']:.3f}"
        c = pred.get(x["name"])
        model = "not confirmed" if c is None else f"predicted {c['predicted_ns'] / 1e6:7.2f} ms ({c['error']:+.1%})"
        print(
            f"{x['name']:>10}  frame_breaks {breaks:>10}  fork added {fresh['added_ns'] / 1e6:7.2f} ms  {model}  "
            f"state checked: {x['checks']['fresh']}"
        )


if __name__ == "__main__":
    main()
