"""Does each host profile's band cover the other window's measurement of the reference layout? (issue 26)

Usage: python benchmarks/band_check.py PROFILE_A PROFILE_B    (two `gpusim calibrate` profiles, an hour apart, say)

For each ordered pair (P, Q): P's model predicts the fork time the reference layout
(:data:`gpusim.jobs.host.calibrate.REFERENCE_LAYOUT`) added to the bare process in Q's window, in the fresh state,
its twin's frame breaks as Q's fit counted them (each window's frames are its own), and the script says whether Q's
measured added time lies within P's band around that prediction.
"""

from __future__ import annotations

import argparse

from gpusim import api
from gpusim.analysis.costmodel import latency, load_profile
from gpusim.jobs.host.calibrate import REFERENCE_LAYOUT, bare_counts, calibration_layouts, kernel_variant
from gpusim.jobs.host.twin import sim_space


def window_case(profile) -> tuple[float, int]:
    """(the reference layout's measured added time, its twin's frame-break events) in a profile's window."""
    row = next(r for r in profile.fit["residuals"] if r["name"] == REFERENCE_LAYOUT and r["state"] == "fresh")
    return row["measured_ns"], row["frame_break_events"]


def predicted_added(profile, variant: str, frame_breaks: int) -> float:
    layout = next(L for L in calibration_layouts(quick=True) if L.name == REFERENCE_LAYOUT)
    counts = dict(api.fork(sim_space(layout, variant)[0], variant, backend="cpu", check=False).counts)
    counts["pte.frame_break"] = frame_breaks
    return latency(counts, variant, profile)["latency_ns"] - latency(bare_counts(), variant, profile)["latency_ns"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args()
    variant = kernel_variant()
    profiles = [load_profile(args.a), load_profile(args.b)]
    for p, q in (profiles, profiles[::-1]):
        measured, breaks = window_case(q)
        pred = predicted_added(p, variant, breaks)
        lo, hi = pred * (1 + p.band.low), pred * (1 + p.band.high)
        inside = lo <= measured <= hi
        print(
            f"{p.name} predicts {REFERENCE_LAYOUT} in {q.name}'s window: {pred / 1e6:.2f} ms, band "
            f"{lo / 1e6:.2f}-{hi / 1e6:.2f} ms ({100 * p.band.low:+.1f}%..{100 * p.band.high:+.1f}%); measured "
            f"{measured / 1e6:.2f} ms ({measured / pred - 1:+.1%}): {'inside' if inside else 'OUTSIDE'}"
        )


if __name__ == "__main__":
    main()
