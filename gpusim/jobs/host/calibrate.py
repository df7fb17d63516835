"""Calibrate the cost model on the host kernel, and validate the simulator against it.

Calibration (:func:`calibrate`): the layouts of :func:`calibration_layouts` are measured in one window,
interleaved, each in two states (:mod:`gpusim.jobs.host.measure`): ``fresh``, the state the simulator builds (touched
pages writable and anon-exclusive, pins in place), restored and checked before every timed fork, and ``repeated``,
the fork right after it (what ``fork.chain`` simulates as its second fork). The measured quantity is the fork time
a layout adds to a bare measuring process visited in the same rounds (difference of medians, with a bootstrap
interval). The simulator gives each layout's event counts in each state (same VMAs, tables, touched and pinned
pages, THPs where the kernel made them; variant of the running kernel, :func:`kernel_variant`), and a non-negative
least-squares fit (``scipy.optimize.nnls``) on the relative error, Huber-reweighted against outliers and pulled
towards the public profile, finds one scale factor per group of events (:data:`GROUPS`):
``cost[e] = scale[group(e)] x public[e]``, with the per-VMA, per-table and per-huge-PMD groups one scale per state
(:data:`WARM_GROUPS`: the profile's costs are the fresh state's, its ``warm_factors`` the repeated state's ratio).
The two states separate the write-protect and exclusive-clear work (``pte_wrprotect``) from the rest of a shared
PTE's (``pte_share``). ``fork.base``, the kernel's fixed cost of a fork from cold, is the C fork probe's measured
fork less the model's price of its captured address space (:func:`with_fork_base`).
Events no layout exercises (swap, migration, batches, continuations, teardown) keep the public estimates, labelled
as such.

Validation (:func:`validate`): (a) page sharing: after a real fork of layouts with pinned and unpinned, present and
absent pages, each page's frame in parent and child (``/proc/self/pagemap``) is compared with what the simulator's
child maps (shared, copied or absent); (b) latency: the calibration layouts and held-out ones
(:func:`validation_layouts`: other sizes, sparsities, VMA mixes, pins) are measured together in one window; the
model fitted on the first predicts the second, in both states, each case with its interval and a verdict (pass,
fail, or too noisy to tell: :func:`gpusim.jobs.host.stats.case_verdict`). The stored profile's predictions are reported
beside them: they also carry the machine's drift since it was calibrated.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import socket
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import scipy.optimize
import yaml

from gpusim import api
from gpusim.analysis.costmodel import (
    COST_EVENTS,
    PROFILE_DIR,
    Profile,
    event_costs,
    host_profile_dir,
    latency,
    load_profile,
    priced_events,
    profile_path,
    warm_credit,
    write_latency,
)
from gpusim.base.machine import cpu_description, cpu_model, last_level_cache_bytes
from gpusim.inputs.snapshot import snapshot_space
from gpusim.jobs.host.measure import FAULT_SLACK, STATES, default_cpu, measure, probe_holds
from gpusim.jobs.host.process import measure_window
from gpusim.jobs.host.real import RealLayout, run_sharing, run_write_frames, run_write_timings
from gpusim.jobs.host.stats import NOISE_LIMIT, added_summary, case_verdict, overall_verdict
from gpusim.jobs.host.twin import sim_space
from gpusim.kernels import pte as P
from gpusim.model.result import new_counts
from gpusim.model.state import AddressSpace

MiB = 1 << 20

# fitted groups of cost events (one scale factor each)
GROUPS = {
    "vma": ("vma.dup",),  # every VMA (a VMA never written: only this; file_link and skip: no layout has them)
    "vma_anon": ("vma.anon_fork", "vma.copy"),  # a VMA with an anon_vma: its chain and its page tables' walk
    "table": ("table.call", "table.alloc", "table.upper_alloc", "pass", "check"),
    "pte_none": ("pte.none",),
    "pte_share": ("pte.share", "pte.special"),
    "pte_wrprotect": ("pte.wrprotect", "pte.excl_clear"),
    "early_copy": (
        "copy.alloc",
        "copy.memcpy",
        "copy.install",
        "copy.free_unused",
        "copy.recheck",
        "copy.duplicate_call",
        "restart.ec",
    ),
    "huge_pmd": ("pmd.share", "pmd.split"),
    "frame_break": ("pte.frame_break",),
}


# Groups fitted apart in each state (issue 32): their work walks and allocates kernel structures (VMAs, anon_vma
# chains, page-table pages, huge PMDs' tables) that a fork from cold misses in cache and a fork right after a fork
# finds there. A profile's costs are the fresh state's; ``warm_factors`` the repeated state's ratio to them.
WARM_GROUPS = ("vma", "vma_anon", "table", "huge_pmd")
_WARM_INDEX = [list(GROUPS).index(g) for g in WARM_GROUPS]


def state_row(row: np.ndarray, state: str) -> np.ndarray:
    """A fit row of ``design_row``'s groups in ``state``: :data:`WARM_GROUPS` in their own columns (appended) for
    the repeated state, so that each state fits its own scale for them."""
    cold, warm = row.copy(), np.zeros(len(_WARM_INDEX))
    if state == "repeated":
        warm[:] = row[_WARM_INDEX]
        cold[_WARM_INDEX] = 0
    return np.concatenate([cold, warm])


def warm_factors(scales: np.ndarray, used: np.ndarray) -> dict[str, float]:
    """{event: the warm scale of its group over the cold one} for :data:`WARM_GROUPS` that both states identify."""
    out = {}
    for k, i in enumerate(_WARM_INDEX):
        j = len(GROUPS) + k
        if used[i] and used[j] and scales[i] > 0:
            out.update({e: round(float(scales[j] / scales[i]), 4) for e in GROUPS[WARM_GROUPS[k]]})
    return out


def kernel_variant(release: str | None = None) -> str:
    """The gpusim variant whose rules the running kernel follows: linux-6.18 for 6.x and later, linux-5.10 for
    5.10 to 5.19, linux-5.8 before."""
    rel = release or platform.release()
    try:
        major, minor = (int(x) for x in rel.split(".")[:2])
    except ValueError:
        return "linux-6.18"
    if major >= 6:
        return "linux-6.18"
    if (major, minor) >= (5, 10):
        return "linux-5.10"
    return "linux-5.8"


def _scattered(pages: int, every: int, first: int = 0) -> list[tuple[int, int]]:
    """One pinned page every ``every`` pages."""
    return [(i, 1) for i in range(first, pages, every)]


def calibration_layouts(quick: bool) -> list[RealLayout]:
    """Layouts that separate the fitted groups, each adding several times the bare fork's spread on this VM (a
    few hundred microseconds): dense (per PTE), sparse down to one page per table (per table), many small VMAs
    touched with a table each, packed (many VMAs a table) and never written (no anon_vma: per VMA, apart from the
    per-anon_vma work), THP of several sizes (per huge PMD), pinned pages in one run and scattered (per early
    copy), and per frame break the
    same buffer first touched in a random order (frames scattered) and in shuffled runs of 512 pages (frames mostly
    in order: on a machine up for a while, first touch in address order does not give frames in order)."""
    if quick:
        return [
            RealLayout("dense-256MiB", 256 * MiB),
            RealLayout("dense-1024MiB", 1024 * MiB),
            RealLayout("sparse-1024MiB-1/512", 1024 * MiB, fill=1 / 512),
            RealLayout("vmas-1024x16KiB", 1024 * 16 * 1024, vmas=1024),
            RealLayout("vmas-1024x16KiB-untouched", 1024 * 16 * 1024, vmas=1024, fill=0),
            RealLayout("vmas-1024x16KiB-packed", 1024 * 16 * 1024, vmas=1024, gaps=False),
            RealLayout("thp-2048MiB", 2048 * MiB, thp=True),
            RealLayout("pinned-16MiB-all", 16 * MiB, pinned=[(0, 4096)]),
            RealLayout("pinned-64MiB-scattered-1/16", 64 * MiB, pinned=_scattered(16384, 16)),
            RealLayout("dense-512MiB-random", 512 * MiB, first_touch="random"),
            RealLayout("dense-512MiB-runs:512", 512 * MiB, first_touch="runs:512"),
        ]
    return [
        *(RealLayout(f"dense-{s}MiB", s * MiB) for s in (128, 512, 1024, 2048)),
        RealLayout("sparse-256MiB-1/4", 256 * MiB, fill=1 / 4),
        RealLayout("sparse-512MiB-1/16", 512 * MiB, fill=1 / 16),
        RealLayout("sparse-1024MiB-1/64", 1024 * MiB, fill=1 / 64),
        RealLayout("sparse-2048MiB-1/512", 2048 * MiB, fill=1 / 512),
        RealLayout("vmas-512x64KiB", 512 * 64 * 1024, vmas=512),
        RealLayout("vmas-2048x16KiB", 2048 * 16 * 1024, vmas=2048),
        RealLayout("vmas-2048x16KiB-untouched", 2048 * 16 * 1024, vmas=2048, fill=0),
        RealLayout("vmas-2048x16KiB-packed", 2048 * 16 * 1024, vmas=2048, gaps=False),
        RealLayout("thp-512MiB", 512 * MiB, thp=True),
        RealLayout("thp-1024MiB", 1024 * MiB, thp=True),
        RealLayout("thp-2048MiB", 2048 * MiB, thp=True),
        RealLayout("pinned-16MiB-all", 16 * MiB, pinned=[(0, 4096)]),
        RealLayout("pinned-64MiB-all", 64 * MiB, pinned=[(0, 16384)]),
        RealLayout("pinned-128MiB-10pct", 128 * MiB, pinned=[(1000, 3277)]),
        RealLayout("pinned-64MiB-scattered-1/16", 64 * MiB, pinned=_scattered(16384, 16)),
        RealLayout("dense-1024MiB-random", 1024 * MiB, first_touch="random"),
        RealLayout("dense-1024MiB-runs:512", 1024 * MiB, first_touch="runs:512"),
        RealLayout("dense-512MiB-runs:16", 512 * MiB, first_touch="runs:16"),
    ]


def validation_layouts() -> list[RealLayout]:
    """Layouts not used for fitting, broader than the fit set: sizes between and beyond the fitted ones, other
    sparsities, partial tables over many VMAs, mixes of dense, sparse and THP VMAs, pins in runs and scattered, frames
    scattered (pages first touched in a random order, or in shuffled runs)."""
    return [
        RealLayout("dense-384MiB", 384 * MiB),
        RealLayout("dense-3072MiB", 3072 * MiB),
        RealLayout("sparse-384MiB-1/8", 384 * MiB, fill=1 / 8),
        RealLayout("sparse-1536MiB-1/128", 1536 * MiB, fill=1 / 128),
        RealLayout("vmas-1000x200KiB", 1000 * 200 * 1024, vmas=1000),
        RealLayout("thp-1536MiB", 1536 * MiB, thp=True),
        RealLayout(
            "mix-4vmas-dense-sparse-thp",
            4 * 300 * MiB,
            vmas=4,
            fill=[1.0, 1 / 32, 1.0, 1 / 4],
            thp=[False, False, True, False],
        ),
        RealLayout("pinned-128MiB-5pct", 128 * MiB, pinned=[(5000, 1638)]),
        RealLayout("pinned-32MiB-25pct-3vmas", 32 * MiB, vmas=3, pinned=[(100, 1024), (5000, 1024)]),
        RealLayout("pinned-256MiB-scattered-1/64", 256 * MiB, pinned=_scattered(65536, 64, 7)),
        RealLayout("dense-384MiB-random", 384 * MiB, first_touch="random", seed=1),
        RealLayout("sparse-512MiB-1/4-random", 512 * MiB, fill=1 / 4, first_touch="random", seed=2),
        RealLayout("dense-1024MiB-runs:64", 1024 * MiB, first_touch="runs:64", seed=3),
        RealLayout("dense-1024MiB-random", 1024 * MiB, first_touch="random", seed=4),
    ]


def sharing_layouts() -> list[RealLayout]:
    return [
        RealLayout(
            "sharing-16MiB-half-touched", 16 * MiB, vmas=3, fill=0.5, pinned=[(100, 20), (1500, 40), (3000, 256)]
        ),
        RealLayout("sharing-8MiB-dense", 8 * MiB, pinned=[(0, 1), (511, 2), (2047, 1)]),
    ]


def c_holdable(layouts: list[RealLayout]) -> frozenset:
    """The layouts a C probe holds in a measurement (:func:`gpusim.jobs.host.measure.probe_holds`): measured over
    the bare C probe, they carry no interpreter's own pages, whose cost varies from one interpreter to the next with
    the order of their frames; the others (pins, scattered first touch) are held by interpreters."""
    return frozenset(L.name for L in layouts if probe_holds(L))


def bare_counts() -> dict:
    """The simulator's counts for the bare measuring process's fork: the fork and its mm, no page."""
    c = new_counts()
    c["fork.base"] = c["fork.mm"] = 1
    return c


def state_counts(r: dict, variant: str) -> dict:
    """{state: the simulator's counts} for a measured layout ``r`` (:func:`gpusim.jobs.host.measure.measure`'s
    result): its twin, with THPs where the kernel made them and its frames in the measured order, forked once
    (``fresh``) and forked again as a chain does (``repeated``: the parent after a fork)."""
    L = r["layout"]
    space, _ = sim_space(L, variant, r["thp_pages"] if L.any_thp else None, r.get("frames"))
    fresh = api.fork(space, variant, backend="cpu", check=False)
    repeated = api.fork(AddressSpace.of_fork(fresh.parent.mm, fresh.memory), variant, backend="cpu", check=False)
    return {"fresh": fresh.counts, "repeated": repeated.counts}


def design_row(counts: dict, base_counts: dict, public, spared: float = 0.0) -> np.ndarray:
    """One row of the fit: per group, the layout's added events priced at the public profile's costs; a warm fork
    (the repeated state) is ``spared`` that share of :data:`gpusim.analysis.costmodel.WARM_FREE`'s
    (:func:`gpusim.analysis.costmodel.warm_credit`)."""
    cost = event_costs(public, spared)
    return np.array([sum((counts[e] - base_counts[e]) * cost[e] for e in events) for events in GROUPS.values()])


def warm_cache_bytes() -> float | None:
    """The cache a warm fork finds on this machine: half its last-level cache (see
    :mod:`gpusim.analysis.costmodel`), None when the machine does not say."""
    llc = last_level_cache_bytes()
    return None if llc is None else llc / 2


def fit_scales(
    X: np.ndarray, y: np.ndarray, prior: float = 0.1, weights: np.ndarray | None = None, huber: float | None = 1.345
) -> tuple[np.ndarray, np.ndarray]:
    """Scale factors (>= 0) minimising the relative error of ``X @ s`` against ``y`` (``scipy.optimize.nnls``),
    pulled towards 1 (the public profile) with weight ``prior`` so that groups the layouts barely tell apart stay
    near their public cost; groups no row exercises keep scale 1. ``weights`` multiply the rows' (e.g. less for a
    noisy measurement). With ``huber``, iteratively reweighted: a row whose relative residual is more than
    ``huber`` robust standard deviations (1.4826 x MAD) out counts as much as one that far out, so that one
    outlier cannot pull every scale. Returns (scales, identified mask)."""
    used = np.abs(X).sum(axis=0) > 0
    base_w = (1.0 / np.maximum(np.abs(y), 1.0)) * (1.0 if weights is None else np.asarray(weights, float))
    s = np.ones(X.shape[1])
    if not used.any():
        return s, used
    k, w = int(used.sum()), base_w
    for _ in range(20 if huber else 1):
        A = np.vstack([X[:, used] * w[:, None], prior * np.eye(k)])
        b = np.concatenate([y * w, prior * np.ones(k)])
        new = scipy.optimize.nnls(A, b, maxiter=50 * k)[0]
        done = np.allclose(new, s[used], rtol=1e-6, atol=1e-9)
        s[used] = new
        if not huber or done:
            break
        r = (X[:, used] @ new - y) / np.maximum(np.abs(y), 1.0)
        scale = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), 1e-6)
        w = base_w * np.minimum(1.0, huber * scale / np.maximum(np.abs(r), 1e-12))
    return s, used


def profile_dir() -> Path:
    return host_profile_dir()


def fitted_costs(public, scales: np.ndarray, used: np.ndarray) -> dict:
    """The host profile's costs: each fitted group's events at ``scale x`` the public cost, the others kept as
    labelled estimates (``fork.base`` too: :func:`with_fork_base` sets it from the smallest measuring process)."""
    costs = {}
    group_of = {e: g for g, events in GROUPS.items() for e in events}
    for e, c in public.costs.items():
        g = group_of.get(e)
        if g is not None and used[list(GROUPS).index(g)]:
            s = float(scales[list(GROUPS).index(g)])
            costs[e] = {
                "ns": round(c.ns * s, 4),
                "kind": "derived",
                "basis": f"fitted on this host: group '{g}' x {s:.4f} of the public profile's {c.ns} ns",
            }
        else:
            costs[e] = {"ns": c.ns, "kind": "estimate", "basis": f"not measured here; public profile: {c.basis}"}
    return costs


def own_counts(snapshot, variant: str) -> dict:
    """The simulator's counts for the fork of a captured process (its snapshot: :mod:`gpusim.jobs.host.capture`)."""
    return api.fork(snapshot_space(snapshot, variant), variant, backend="cpu", check=False).counts


def own_summary(snapshot, counts: dict) -> dict:
    """What a profile keeps of the bare measuring process's capture: its VMAs, present and anonymous pages, tables
    and the cost events the simulator counted for its fork."""
    present = snapshot.column("present").to_numpy(zero_copy_only=False)
    anon = snapshot.column("anon").to_numpy(zero_copy_only=False)
    return {
        "vmas": len(json.loads(snapshot.schema.metadata[b"gpusim.vmas"])),
        "present_pages": int(present.sum()),
        "anon_pages": int((present & anon).sum()),
        "tables_copied": int(counts.get("table.call", 0)),
        "events": {e: int(n) for e, n in counts.items() if n and e in COST_EVENTS},
    }


def _own_cost(snapshot, variant: str, cost: dict) -> tuple[float, dict]:
    """(the model's ns for a captured process's own address space, ``fork.base`` left out; its counts)."""
    counts = own_counts(snapshot, variant)
    return priced_events({e: n for e, n in counts.items() if e != "fork.base"}, cost), counts


def with_fork_base(costs: dict, meas: dict, variant: str) -> tuple[dict, dict]:
    """``costs`` with ``fork.base``, the kernel's fixed cost of a fork from cold, and the account of it: the
    smallest measuring process's fork (median, fresh state: the C probe where it was built, else the bare
    interpreter) less what the model, at ``costs``, charges for that process's own address space as captured after
    its rounds (its VMAs, tables and pages, ``fork.mm`` included). The bare interpreter's fork is then predicted
    from its own capture as a check (``bare_check``). Without any capture: the bare fork less ``fork.mm``, labelled
    so (the interpreter's own address space is then inside it). ``meas``: :func:`gpusim.jobs.host.measure.measure`'s
    result."""
    cost = {e: c["ns"] for e, c in costs.items()}
    bare_ns = meas["stability"].get("bare_fresh_ns", (0, 0, 0))[1]
    src = "probe" if "probe" in meas else "bare" if "bare" in meas else None
    if src is None:
        ns = max(0.0, bare_ns - cost["fork.mm"])
        basis = "the bare measuring process's whole fork less fork.mm (no capture of it: its own pages are inside)"
        account = {"from": "bare", "measured_ns": bare_ns, "modelled_own_ns": cost["fork.mm"], "own": None}
        return {**costs, "fork.base": {"ns": round(ns, 1), "kind": "derived", "basis": basis}}, {**account, "ns": ns}
    what = "the C fork probe" if src == "probe" else "the bare measuring interpreter"
    measured = float(np.median(meas[src]["fresh_ns"]))
    own, counts = _own_cost(meas[src]["snapshot"], variant, cost)
    ns = max(0.0, measured - own)
    basis = (
        f"{what}'s fork ({measured / 1e3:.1f} us, fresh, from cold) less the model's cost of its own captured "
        f"address space ({own / 1e3:.1f} us: its VMAs, tables and pages, fork.mm)"
    )
    account = {
        "from": src,
        "measured_ns": measured,
        "modelled_own_ns": own,
        "own": own_summary(meas[src]["snapshot"], counts),
    }
    account["ns"] = round(ns, 1)
    if src == "probe" and "bare" in meas:
        bare_own, _ = _own_cost(meas["bare"]["snapshot"], variant, cost)
        account["bare_check"] = {
            "measured_ns": bare_ns,
            "predicted_ns": ns + bare_own,
            "error": (ns + bare_own) / bare_ns - 1,
        }
    return {**costs, "fork.base": {"ns": round(ns, 1), "kind": "derived", "basis": basis}}, account


def fit(
    results: list[dict], variant: str, public, noise_limit: float = NOISE_LIMIT, warm_cache: float | None = None
) -> dict:
    """The fit of the group scales on measured layouts (:func:`gpusim.jobs.host.measure.measure`'s results), both
    states, each against the simulator's counts for its own state: scales, which groups the rows identify,
    residuals, and the rows left out (refused by the kernel, or a state the checks did not confirm). A row whose
    interval is wider than ``noise_limit`` counts for less, in proportion; ``warm_cache``: the cache the repeated
    state's forks find (:func:`warm_cache_bytes`)."""
    base_counts = bare_counts()
    rows, y, w, names, skipped = [], [], [], [], []
    for r in results:
        if r["refused"]:
            skipped.append({"name": r["name"], "refused": r["refused"]})
            continue
        counts = state_counts(r, variant)
        for state in STATES:
            if not r["checks"][state]:
                skipped.append({"name": f"{r['name']} ({state})", "refused": {"state": "not confirmed"}})
                continue
            c = counts[state]
            spared = warm_credit(c, warm_cache) if state == "repeated" else 0.0
            rows.append(state_row(design_row(c, base_counts, public, spared), state))
            y.append(r[state]["added_ns"])
            w.append(min(1.0, noise_limit / max(r[state]["spread"], 1e-9)))
            names.append((r["name"], state, c["pte.frame_break"]))
    X, y = np.array(rows).reshape(len(rows), len(GROUPS) + len(WARM_GROUPS)), np.array(y, float)
    scales, used = fit_scales(X, y, weights=np.array(w))
    residuals = [
        {
            "name": n,
            "state": st,
            "measured_ns": float(a),
            "fitted_ns": float(b),
            "error": float(b / a - 1),
            "frame_break_events": fb,  # its twin's, in the measured frames' order
        }
        for (n, st, fb), a, b in zip(names, y, X @ scales)
    ]
    n = len(GROUPS)
    return {
        "scales": scales[:n],
        "used": used[:n],
        "warm_scales": scales[n:],
        "warm_factors": warm_factors(scales, used),
        "residuals": residuals,
        "skipped": skipped,
    }


def measurement_rows(meas: dict) -> list[dict]:
    """What the host profile keeps of each measured layout: its facts, per state the added time's summary, and
    the state checks."""
    out = []
    for r in meas["layouts"]:
        row = {"name": r["name"], "layout": asdict(r["layout"]), "thp_pages": r["thp_pages"], "refused": r["refused"]}
        row["frame_breaks"] = r.get("frame_breaks")  # the fraction of its pages whose frame breaks the run
        if not r["refused"]:
            row.update({state: r[state] for state in STATES}, checks=r["checks"])
        out.append(row)
    return out


def calibrate(quick: bool = False, out: str | None = None, rounds: int | None = None, progress=None) -> dict:
    """Measure (interleaved, both states), fit and write a host profile; returns {"path", "profile", "fit"}."""
    public = load_profile("public-xeon-4210r-v6.8")
    variant = kernel_variant()
    rounds = rounds or (9 if quick else 15)
    layouts = calibration_layouts(quick)
    meas = measure(layouts, rounds, progress=progress, probe=True, c_held=c_holdable(layouts))
    writes = measure_write_costs(5 if quick else 9)
    warm_cache = warm_cache_bytes()
    f = fit(meas["layouts"], variant, public, warm_cache=warm_cache)
    host = platform.node() or socket.gethostname()
    now = datetime.datetime.now(datetime.timezone.utc)
    name = f"host-{host}-{now:%Y%m%d-%H%M%S}"
    costs, base = with_fork_base(fitted_costs(public, f["scales"], f["used"]), meas, variant)
    profile = {
        "name": name,
        "description": f"calibrated on {host} ({cpu_model()}), Linux {platform.release()}, {now:%Y-%m-%d}, "
        f"{'quick' if quick else 'full'} mode, variant {variant}",
        "sources": [
            {
                "title": "gpusim calibrate",
                "machine": cpu_description(),
                "kernel": platform.release(),
                "date": f"{now:%Y-%m-%dT%H:%M:%SZ}",
            }
        ],
        "costs": costs,
        "band": calibration_band(meas["layouts"], meas["stability"], f["residuals"]),
        "warm_cache_bytes": warm_cache,
        "warm_factors": f["warm_factors"],
        "write_costs": host_write_costs(public, writes),
        "variant_factors": {},
        "fit": {
            "variant": variant,
            "states": list(STATES),
            "groups": {
                g: {"scale": float(s), "identified": bool(u)} for g, s, u in zip(GROUPS, f["scales"], f["used"])
            },
            "warm_scales": {g: float(s) for g, s in zip(WARM_GROUPS, f["warm_scales"])},
            "residuals": f["residuals"],
            "median_abs_residual": _median_abs([r["error"] for r in f["residuals"]]),
            "skipped": f["skipped"],
            "base": base,
            "rounds": rounds,
            "stability": meas["stability"],
            "writes": writes,
        },
        "measurements": measurement_rows(meas),
    }
    path = Path(out) if out else profile_dir() / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# Written by `gpusim calibrate` on {now:%Y-%m-%d %H:%M} UTC. Costs in ns per event.\n"
        + yaml.safe_dump(_plain(profile), sort_keys=False, width=120)
    )
    load_profile(str(path))  # it must load back
    return {"path": str(path), "profile": profile, "fit": profile["fit"]}


# The layout whose spread across rounds (with the bare fork's) sets a host profile's band: in both calibration sets.
REFERENCE_LAYOUT = "dense-1024MiB"


def calibration_band(results: list[dict], stability: dict, residuals: list[dict]) -> dict:
    """A host profile's band (:class:`gpusim.analysis.costmodel.Band`): how far a fork measured in the calibration's
    window lay from the model. The machine's part: the reference layout's added time, round by round, against its
    median (5th to 95th percentile) and its drift (second half of the rounds against the first), and the bare
    fork's quartiles and drift (small forks are mostly the bare fork). The model's part: the fit's residuals (a
    residual ``e`` is ``fitted / measured - 1``: the real fork is ``1 / (1 + e)`` of the model's). The two multiply."""
    lo, hi, parts = 0.0, 0.0, []
    ref = next((r for r in results if r["name"] == REFERENCE_LAYOUT and not r["refused"]), None)
    if ref is not None and ref["fresh"]["added_ns"] > 0:
        m = ref["fresh"]
        rel = (np.asarray(ref["samples"]["fresh_ns"], float) - m["base_median_ns"]) / m["added_ns"] - 1
        d = abs(m["drift"])
        lo, hi = min(float(np.percentile(rel, 5)), -d), max(float(np.percentile(rel, 95)), d)
        parts.append(f"{REFERENCE_LAYOUT}: rounds {100 * lo:+.1f}%..{100 * hi:+.1f}% (drift {100 * d:.1f}%)")
    bare = stability.get("bare_fresh_ns")
    if bare and bare[1] > 0:
        d = abs(stability.get("bare_fresh_drift", 0.0))
        blo, bhi = min(bare[0] / bare[1] - 1, -d), max(bare[2] / bare[1] - 1, d)
        lo, hi = min(lo, blo), max(hi, bhi)
        parts.append(f"bare fork: quartiles {100 * blo:+.1f}%..{100 * bhi:+.1f}%")
    errors = [r["error"] for r in residuals if r["error"] is not None and r["error"] > -1]
    mlo = mhi = 0.0
    if errors:
        mlo = min(0.0, 1 / (1 + float(np.percentile(errors, 95))) - 1)
        mhi = max(0.0, 1 / (1 + float(np.percentile(errors, 5))) - 1)
        parts.append(f"fit residuals (5th-95th percentile): {100 * mlo:+.1f}%..{100 * mhi:+.1f}%")
    low, high = (1 + lo) * (1 + mlo) - 1, (1 + hi) * (1 + mhi) - 1
    return {
        "low": round(max(low, -0.99), 4),
        "high": round(high, 4),
        "basis": "calibration window: " + "; ".join(parts) if parts else "no measurement to take a band from",
        "checks": [],
    }


WRITE_COST_LAYOUT = RealLayout("write-costs-32MiB", 32 * MiB)
WRITE_PASSES = ("copy", "none", "reuse")  # the passes of gpusim.jobs.host.real.write_timings, by the event each times


def measure_write_costs(rounds: int) -> dict:
    """The host's per-page cost of a copy fault, a reuse fault and a write without a fault (spec 11.5), from
    :func:`gpusim.jobs.host.real.write_timings` on :data:`WRITE_COST_LAYOUT`: the median over rounds of each pass's time
    per fault (per page for the pass without faults). Each pass's fault count is checked: the faulting passes take
    one per page, give or take the interpreter's own pages (:data:`gpusim.jobs.host.measure.FAULT_SLACK`), the other
    none beyond that slack; ``checked`` says whether every round held."""
    r = run_write_timings(WRITE_COST_LAYOUT, rounds)
    n, out = r["pages"], {"pages": r["pages"], "rounds": rounds, "checked": True}
    for ev in WRITE_PASSES:
        passes = r["passes"][ev]
        want = 0 if ev == "none" else n
        out["checked"] &= all(want <= p["faults"] <= want + FAULT_SLACK * 4 for p in passes)
        per = [p["ns"] / (n if ev == "none" else max(p["faults"], 1)) for p in passes]
        out[f"{ev}_ns"] = float(np.median(per))
        out[f"{ev}_faults"] = [p["faults"] for p in passes]
    return out


def host_write_costs(public: Profile, writes: dict) -> dict:
    """The write costs of a host profile: the three :func:`measure_write_costs` measured here (when its fault
    checks held), the others the public profile's, each saying where it comes from."""
    out = {
        e: {"ns": c.ns, "kind": c.kind, "basis": f"from {public.name}, not measured here: {c.basis}"}
        for e, c in public.write_costs.items()
    }
    if writes["checked"]:
        what = f"{writes['pages']} pages, median of {writes['rounds']} rounds, fault counts checked"
        for ev in WRITE_PASSES:
            out[ev] = {"ns": writes[f"{ev}_ns"], "kind": "measured", "basis": f"gpusim calibrate: {what}"}
    return out


def _median_abs(errors) -> float | None:
    e = [abs(x) for x in errors if x is not None]
    return float(np.median(e)) if e else None


def _plain(x):
    """Tuples as lists, numpy scalars as Python numbers and numbers that are not finite (a spread whose added time
    is not above zero) as None, for YAML and JSON (a profile holds finite numbers only)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _frame_table(mm) -> dict:
    """{table: its PTE row, or ("pmd", head pfn)} of ``mm``, for :func:`_frame_at`."""
    out = {t: mm.pte[row] for row, t in enumerate(mm.table_index.tolist())}
    out.update({t: ("pmd", P.pte_pfn(v)) for t, v in zip(mm.pmd_index.tolist(), mm.pmd.tolist())})
    return out


def _frame_at(fr: dict, a: int) -> int | None:
    """The page frame mapped at address ``a`` (None: nothing present)."""
    t = fr.get(a // 512)
    if t is None:
        return None
    if isinstance(t, tuple):
        return t[1] + a % 512
    v = int(t[a % 512])
    return P.pte_pfn(v) if P.pte_present(v) else None


def predicted_sharing(layout: RealLayout, variant: str, thp_pages: int | None = None) -> list[str]:
    """Per page of ``layout`` (region order): what the simulator's child maps: shared, copied or absent."""
    space, b2a = sim_space(layout, variant, thp_pages)
    r = api.fork(space, variant, backend="cpu")
    pf, cf = _frame_table(r.parent.mm), _frame_table(r.child)
    out = []
    for b in range(layout.pages):
        a = int(b2a[b])
        p, c = _frame_at(pf, a), _frame_at(cf, a)
        out.append("absent" if p is None or c is None else ("shared" if p == c else "copied"))
    return out


# the steps of gpusim.jobs.host.real.write_frames in the write-phase notation
WRITE_STEPS = {"parent": "parent:all", "child": "child:all", "exit": "child:exit"}


def write_outcomes(before: list, parent_after: list, child_after: list | None) -> list[tuple[str, str]]:
    """Per page, from frames: the parent's (``kept`` its frame, got a ``new`` one, ``absent``) and the child's
    (maps the parent's ``original`` frame, its ``own``, ``absent``, or ``exited``) after a write phase."""
    out = []
    for i, b in enumerate(before):
        p = parent_after[i]
        parent = "absent" if p is None else ("kept" if p == b else "new")
        if child_after is None:
            child = "exited"
        else:
            c = child_after[i]
            child = "absent" if c is None else ("original" if c == b else "own")
        out.append((parent, child))
    return out


def predicted_write_frames(layout: RealLayout, variant: str, steps: list, thp_pages: int | None = None) -> list:
    """:func:`write_outcomes` of the simulator's write phase after the fork of ``layout``'s twin (the steps of
    :func:`gpusim.jobs.host.real.write_frames`)."""
    space, b2a = sim_space(layout, variant, thp_pages)
    r = api.fork(space, variant, backend="cpu", writes="; ".join(WRITE_STEPS[s] for s in steps))
    wp = r.write_phase
    tables = [_frame_table(space.mm), _frame_table(wp.parent.mm), None if wp.child_exited else _frame_table(wp.child)]
    addr = [int(a) for a in b2a]
    before, parent, child = ([None if t is None else _frame_at(t, a) for a in addr] for t in tables)
    return write_outcomes(before, parent, None if wp.child_exited else child)


def real_write_frames(layout: RealLayout, steps: list) -> tuple[list | None, dict]:
    """:func:`write_outcomes` of the host kernel's write phase (:func:`gpusim.jobs.host.real.run_write_frames`), and
    what the kernel refused (then None)."""
    real = run_write_frames(layout, steps)
    if real["refused"]:
        return None, real["refused"]
    return write_outcomes(real["parent_before"], real["parent_after"], real["child_after"]), {}


def validate_sharing(variant: str) -> tuple[dict, dict]:
    """Page by page, the real fork's sharing against the simulated child's: (sharing report, refusals)."""
    sharing, refused = {"pages": 0, "agreement": None, "layouts": []}, {}
    agree = total = 0
    for L in sharing_layouts():
        real = run_sharing(L)
        if real["refused"].get("pagemap") or real["refused"].get("pin"):
            refused[L.name] = real["refused"]
            continue
        pred = predicted_sharing(L, variant, real.get("thp_pages") if L.any_thp else None)
        same = sum(a == b for a, b in zip(real["state"], pred))
        agree += same
        total += len(pred)
        sharing["layouts"].append(
            {
                "name": L.name,
                "pages": len(pred),
                "agree": same,
                "real": {k: real["state"].count(k) for k in ("shared", "copied", "absent")},
                "predicted": {k: pred.count(k) for k in ("shared", "copied", "absent")},
            }
        )
    sharing["pages"] = total
    sharing["agreement"] = agree / total if total else None
    return sharing, refused


# the write orders gpusim validate checks page by page (spec 11: who writes first, and the child's exit)
WRITE_ORDERS = (("parent", "child"), ("child", "parent"), ("exit", "parent"))


def validate_writes(variant: str) -> tuple[dict, dict]:
    """Page by page, the real write phase's outcome (who kept its frame, who got a new one) against the simulated
    one, for each of :data:`WRITE_ORDERS` on a layout with pinned pages: (report, refusals)."""
    L = RealLayout("writes-4MiB-pinned", 4 * MiB, fill=0.5, pinned=[(0, 64), (700, 30)])
    report, refused = {"pages": 0, "agreement": None, "orders": []}, {}
    agree = total = 0
    for order in WRITE_ORDERS:
        real, why = real_write_frames(L, list(order))
        if why:
            refused[f"writes {'-'.join(order)}"] = why
            continue
        pred = predicted_write_frames(L, variant, list(order))
        same = sum(a == b for a, b in zip(real, pred))
        agree, total = agree + same, total + len(pred)
        real_counts = {f"{p}/{c}": n for (p, c), n in sorted(Counter(real).items())}
        report["orders"].append({"order": list(order), "pages": len(pred), "agree": same, "real": real_counts})
    report["pages"], report["agreement"] = total, (agree / total if total else None)
    return report, refused


# A held-out layout for the write phase's latency: twice the pages of the cost layout, in two VMAs, with two pinned
# runs (whose pages the parent writes without a fault). Dense, so that the passes write in C (a sparse VMA is
# written page by page from Python, which would time the interpreter).
WRITE_LATENCY_LAYOUT = RealLayout("writes-64MiB-2vmas-pinned", 64 * MiB, vmas=2, pinned=[(0, 512), (9000, 256)])
# the passes of write_timings as write-phase steps, cumulative: each pass's counts are the difference of two runs
WRITE_PASS_STEPS = {
    "copy": "parent:all",
    "none": "parent:all; parent:all",
    "reuse": "parent:all; parent:all; child:all",
}


def predicted_write_passes(layout: RealLayout, variant: str, profile: Profile) -> dict:
    """The modelled time (ns) of each pass of :func:`gpusim.jobs.host.real.write_timings` on ``layout``'s twin: the
    write events the simulator counts in that pass, priced by ``profile``'s write costs."""
    space, _ = sim_space(layout, variant)
    r = api.fork(space, variant, backend="cpu", check=False)
    out, before = {}, 0.0
    for ev, steps in WRITE_PASS_STEPS.items():
        wp = api.write_phase(r, steps, check=False)
        total = write_latency(wp.counts, profile)["latency_ns"]
        out[ev], before = total - before, total
    return out


def validate_write_latency(variant: str, profile: Profile, rounds: int = 5) -> dict:
    """The measured time of each write pass on :data:`WRITE_LATENCY_LAYOUT` (median of ``rounds``) against the
    modelled one: relative errors per pass."""
    real = run_write_timings(WRITE_LATENCY_LAYOUT, rounds)
    pred = predicted_write_passes(WRITE_LATENCY_LAYOUT, variant, profile)
    passes = []
    for ev in WRITE_PASSES:
        measured = float(np.median([p["ns"] for p in real["passes"][ev]]))
        passes.append({"pass": ev, "measured_ns": measured, "predicted_ns": pred[ev], "error": pred[ev] / measured - 1})
    return {"layout": WRITE_LATENCY_LAYOUT.name, "profile": profile.name, "passes": passes}


def latency_cases(results: list[dict], variant: str, profiles: dict) -> tuple[list[dict], dict]:
    """The held-out cases (a measured layout in one state) against each profile's prediction for that state:
    ({profile key: cases}, refusals). The first profile's cases carry the interval and verdict."""
    out, refused = {k: [] for k in profiles}, {}
    base_pred = {k: latency(bare_counts(), variant, p)["latency_ns"] for k, p in profiles.items()}
    for r in results:
        if r["refused"]:
            refused[r["name"]] = r["refused"]
            continue
        counts = state_counts(r, variant)
        for state in STATES:
            if not r["checks"][state]:
                refused[f"{r['name']} ({state})"] = {"state": f"not confirmed: {r['checks']}"}
                continue
            c = counts[state]
            for k, p in profiles.items():
                predicted = latency(c, variant, p, warm=state == "repeated")["latency_ns"] - base_pred[k]
                case = _case(r["name"], state, r[state], predicted)
                out[k].append({**case, "first_touch": r["layout"].first_touch, "frame_breaks": r.get("frame_breaks")})
    return out, refused


def page_checks(variant: str, stored: Profile) -> tuple[dict, dict, dict]:
    """(page sharing, the write phase with its latency by ``stored``, refusals): validate's page-by-page checks."""
    sharing, refused = validate_sharing(variant)
    writes, why = validate_writes(variant)
    refused.update(why)
    if stored.write_costs:
        writes["latency"] = validate_write_latency(variant, stored)
    return sharing, writes, refused


def held_out_cases(
    results: list[dict], variant: str, profiles: dict, refused: dict, process_entries: int, process_rounds: int
) -> dict:
    """{profile key: cases}: the held-out layouts (:func:`latency_cases`) and, with ``process_entries``, the captured
    real process (:func:`process_cases`); what was refused or failed is added to ``refused``."""
    cases, why = latency_cases(results, variant, profiles)
    refused.update(why)
    if process_entries:
        try:
            for k, case in process_cases(variant, profiles, process_entries, process_rounds).items():
                cases[k].append(case)
        except (RuntimeError, OSError) as e:
            refused[f"python-dict-{process_entries}"] = {"process": str(e)}
    return cases


def _case(name: str, state: str, m: dict, predicted: float) -> dict:
    """A held-out case: a measured added time ``m`` (:func:`gpusim.jobs.host.stats.added_summary`) against a
    prediction, with the error over its interval and a verdict."""
    lo, hi = m["interval_ns"]
    return {
        "name": name,
        "state": state,
        "measured_ns": m["added_ns"],
        "interval_ns": [lo, hi],
        "spread": m["spread"],
        "predicted_ns": predicted,
        "error": predicted / m["added_ns"] - 1 if m["added_ns"] > 0 else None,
        "error_interval": [predicted / hi - 1, predicted / lo - 1] if lo > 0 else None,
        "verdict": case_verdict(predicted, m["added_ns"], (lo, hi)),
    }


def process_cases(variant: str, profiles: dict, entries: int, rounds: int) -> dict:
    """A captured real process as a held-out case (:mod:`gpusim.jobs.host.process`): the fork time an interpreter
    holding a churned dict of ``entries`` keys adds to a bare interpreter, measured by their own fork timers
    (``rounds`` rounds, interleaved), against each profile's prediction from their captures: {profile key: case};
    ``whole``: the dict process's whole fork against its prediction (``fork.base`` included)."""
    out = measure_window(entries, rounds, variant, profiles, default_cpu() or 0)
    m = added_summary(out["dict"]["fork_ns"], out["bare"]["fork_ns"])
    cases = {}
    for k in profiles:
        predicted = out["dict"]["predicted"][k]["latency_ns"] - out["bare"]["predicted"][k]["latency_ns"]
        case = _case(f"python-dict-{entries}", "fresh", m, predicted)
        whole = {"measured_ns": float(np.median(out["dict"]["fork_ns"]))}
        whole["predicted_ns"] = out["dict"]["predicted"][k]["latency_ns"]  # fork.base and all its own pages
        whole["error"] = whole["predicted_ns"] / whole["measured_ns"] - 1
        cases[k] = {**case, "first_touch": "captured", "frame_breaks": out["dict"]["frame_breaks"], "whole": whole}
    return cases


def _summary(cases: list[dict]) -> dict:
    mae = _median_abs([c["error"] for c in cases])
    errors = [abs(c["error"]) for c in cases if c["error"] is not None]
    return {
        "median_abs_error": mae,
        "max_abs_error": max(errors) if errors else None,
        "verdict": overall_verdict([c["verdict"] for c in cases], mae),
        "cases": cases,
    }


def band_check(stored: Profile, cases: list[dict], record: bool, path: Path | None = None) -> dict:
    """What the held-out cases measured now say of the stored profile's band: how many lie inside it, and the
    stored profile's median error (its predictions against this window: the machine's drift since it was
    calibrated, with the model's error). With ``record`` and a host profile's file, the check is kept in the
    profile's band, widened to cover that drift: the band shifted by it, joined with the band it had."""
    errors = [c["error"] for c in cases if c["error"] is not None and c["error"] > -1]
    out = {"profile": stored.name, "band": None, "inside": 0, "cases": len(errors), "median_error": None}
    out["recorded"] = None
    if not errors:
        return out
    med = float(np.median(errors))
    out["median_error"] = med
    if stored.band is None:
        return out
    b = stored.band
    out["band"] = [b.low, b.high]
    out["inside"] = sum(1 + b.low <= 1 / (1 + e) <= 1 + b.high for e in errors)  # measured / predicted in the band
    shift = 1 / (1 + med) - 1
    low, high = min(b.low, b.low + shift), max(b.high, b.high + shift)
    out["widened"] = [round(max(low, -0.99), 4), round(high, 4)]
    if not record:
        return out
    path = path or profile_path(stored.name)
    if path.parent.resolve() != PROFILE_DIR.resolve():
        now = datetime.datetime.now(datetime.timezone.utc)
        check = {
            "date": f"{now:%Y-%m-%dT%H:%M:%SZ}",
            "cases": len(errors),
            "inside": out["inside"],
            "median_error": round(med, 4),
        }
        text = path.read_text()
        header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
        data = yaml.safe_load(text)
        data["band"] = {
            "low": out["widened"][0],
            "high": out["widened"][1],
            "basis": b.basis,
            "checks": [*b.checks, check],
        }
        path.write_text(header + yaml.safe_dump(data, sort_keys=False, width=120))
        load_profile(str(path))  # it must load back
        out["recorded"] = str(path)
    return out


def window_profile(results: list[dict], variant: str, public, meas: dict) -> tuple[Profile, dict]:
    """A profile fitted (:func:`fit`) on layouts measured in the validation's own window (``meas``:
    :func:`gpusim.jobs.host.measure.measure`'s result; ``results``: its fit layouts), its ``fork.base`` from the
    window's smallest measuring process (:func:`with_fork_base`)."""
    warm_cache = warm_cache_bytes()
    f = fit(results, variant, public, warm_cache=warm_cache)
    costs, base = with_fork_base(fitted_costs(public, f["scales"], f["used"]), meas, variant)
    prof = Profile(
        name="fitted-in-this-window",
        description="fitted by gpusim validate on the calibration layouts measured with the held-out ones",
        costs=costs,
        warm_cache_bytes=warm_cache,
        warm_factors=f["warm_factors"],
        fit={"base": base},
    )
    return prof, f


def validate(
    profile=None,
    progress=None,
    rounds: int = 21,
    quick: bool = False,
    fit_set=None,
    held_out=None,
    record: bool = True,
    process_entries: int = 4_000_000,
) -> dict:
    """The validation report (see the module docstring); the shape of ``gpusim validate --json``. ``quick``: the
    quick calibration layouts and the held-out layouts up to 512 MiB; ``fit_set`` and ``held_out`` replace them.
    ``record``: keep the band check in the stored host profile (:func:`band_check`); ``process_entries``: the dict of
    the captured real process among the held-out cases (:func:`process_cases`; 0: none)."""
    stored = load_profile(profile)
    public = load_profile("public-xeon-4210r-v6.8")
    variant = kernel_variant()
    sharing, writes, refused = page_checks(variant, stored)
    fit_set = fit_set or calibration_layouts(quick)
    held_out = held_out or [L for L in validation_layouts() if not quick or L.touched_bytes() <= 512 * MiB]
    both = fit_set + held_out
    meas = measure(both, rounds, progress=progress, memory_fraction=0.6, probe=True, c_held=c_holdable(both))
    window, f = window_profile(meas["layouts"][: len(fit_set)], variant, public, meas)
    cases = held_out_cases(
        meas["layouts"][len(fit_set) :],
        variant,
        {"window": window, "stored": stored},
        refused,
        process_entries,
        max(5, rounds // 2),
    )
    latency_report = _summary(cases["window"])
    verdict = latency_report["verdict"]
    if any(r["agreement"] is not None and r["agreement"] < 1.0 for r in (sharing, writes)):
        verdict = "fail"
    return _plain(
        {
            "kernel": platform.release(),
            "variant": variant,
            "profile": stored.name,
            "verdict": verdict,
            "sharing": sharing,
            "writes": writes,
            "latency": {
                **latency_report,
                "fit": {
                    "layouts": [L.name for L in fit_set],
                    "scales": {g: float(s) for g, s in zip(GROUPS, f["scales"])},
                    "median_abs_residual": _median_abs([r["error"] for r in f["residuals"]]),
                },
                "stability": meas["stability"],
            },
            "stored_profile": {
                "profile": stored.name,
                **_summary(cases["stored"]),
                "band_check": band_check(stored, cases["stored"], record, profile_path(profile)),
            },
            "refused": refused,
        }
    )
