"""Statistics of real fork timings: quartiles, bootstrap intervals of a median difference, and verdicts.

A layout's *added* fork time is the median of its forks less the median of a bare process's forks measured in the
same rounds (:mod:`gpusim.jobs.host.measure`). Its interval is a percentile bootstrap of that difference (both samples
resampled), its *spread* the interval's half width relative to the difference. A case of ``gpusim validate`` passes
when its whole error interval lies within the tolerance, fails when it lies wholly outside, and otherwise is judged
on its point error unless its spread is wider than the noise limit: then the machine was too noisy for a verdict.
"""

from __future__ import annotations

import numpy as np

TOLERANCE = 0.20  # every held-out case within 20 % (issue 13)
MEDIAN_TOLERANCE = 0.10  # median absolute error within 10 %
NOISE_LIMIT = 0.10  # a spread above this is too wide to judge a case near the tolerance


def quartiles(x) -> tuple[float, float, float]:
    """(first quartile, median, third quartile)."""
    q = np.percentile(np.asarray(x, float), [25, 50, 75])
    return float(q[0]), float(q[1]), float(q[2])


def median_diff_interval(x, base, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``median(x) - median(base)`` (each sample resampled with replacement)."""
    x, base = np.asarray(x, float), np.asarray(base, float)
    rng = np.random.default_rng(seed)
    mx = np.median(x[rng.integers(0, len(x), (resamples, len(x)))], axis=1)
    mb = np.median(base[rng.integers(0, len(base), (resamples, len(base)))], axis=1)
    lo, hi = np.percentile(mx - mb, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def added_summary(x, base, seed: int = 0) -> dict:
    """The fork time a layout adds to the bare process: medians, quartiles, bootstrap interval and spread."""
    q1, med, q3 = quartiles(x)
    base_med = quartiles(base)[1]
    lo, hi = median_diff_interval(x, base, seed=seed)
    added = med - base_med
    return {
        "median_ns": med,
        "q1_ns": q1,
        "q3_ns": q3,
        "base_median_ns": base_med,
        "added_ns": added,
        "interval_ns": [lo, hi],
        "spread": spread(added, lo, hi),
        "n": len(x),
    }


def spread(added: float, lo: float, hi: float) -> float:
    """The interval's half width relative to the added time (inf when the added time is not above zero)."""
    return (hi - lo) / 2 / added if added > 0 else float("inf")


def case_verdict(
    predicted: float, added: float, interval, tol: float = TOLERANCE, noise_limit: float = NOISE_LIMIT
) -> str:
    """``pass``, ``fail`` or ``too noisy`` for a prediction against a measured added time and its interval."""
    lo, hi = interval
    if lo <= 0 or added <= 0:
        return "too noisy"
    errors = (predicted / hi - 1, predicted / lo - 1)  # the error over the interval, lowest first
    if -tol <= errors[0] and errors[1] <= tol:
        return "pass"
    if errors[0] > tol or errors[1] < -tol:
        return "fail"
    if spread(added, lo, hi) > noise_limit:
        return "too noisy"
    return "pass" if abs(predicted / added - 1) <= tol else "fail"


def overall_verdict(verdicts: list[str], median_abs_error: float | None, tol: float = MEDIAN_TOLERANCE) -> str:
    """``fail`` when a case fails or the median absolute error is above ``tol``; else ``too noisy`` when a case
    is; else ``pass`` (``too noisy`` too when there is no case at all)."""
    if "fail" in verdicts or (median_abs_error is not None and median_abs_error > tol):
        return "fail"
    if "too noisy" in verdicts or not verdicts or median_abs_error is None:
        return "too noisy"
    return "pass"


def drift(x) -> float:
    """How far the median of the second half of a series (in time order) is from the first half's, relative."""
    x = np.asarray(x, float)
    h = len(x) // 2
    if h == 0:
        return 0.0
    a, b = np.median(x[:h]), np.median(x[h:])
    return float(b / a - 1) if a > 0 else 0.0
