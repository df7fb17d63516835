"""Calibrate the cost model on the host kernel, and validate the simulator against it.

Calibration (:func:`calibrate`): real forks of the layouts of :func:`calibration_layouts` are timed
(:mod:`gpusim.host.real`), the simulator gives each layout's event counts (same VMAs, tables, touched and pinned
pages, THPs where the kernel made them; variant of the running kernel, :func:`kernel_variant`), and a non-negative
least-squares fit on the relative error finds one scale factor per group of events (:data:`GROUPS`) that turns the
public profile's costs into this host's: ``cost[e] = scale[group(e)] x public[e]``. The measured quantity is the
fork time a layout adds to the measuring process (the median fork time after mapping it minus the median before, in
the same process), so the interpreter's own memory cancels out; ``fork.base`` is set from the bare fork. Events no
layout exercises (swap, migration, batches, continuations, teardown) keep the public estimates, labelled as such.

Validation (:func:`validate`): (a) page sharing: after a real fork of layouts with pinned and unpinned, present and
absent pages, each page's frame in parent and child (``/proc/self/pagemap``) is compared with what the simulator's
child maps (shared, copied or absent); (b) latency: on layouts not used for fitting, the measured and predicted fork
time added by the layout, and the relative error.

The time a layout adds is measured within one process: its forks before the layout is mapped, then after
(:func:`gpusim.host.real.time_forks`), so that differences between measuring processes cancel out.
"""

from __future__ import annotations

import datetime
import platform
import socket
from pathlib import Path

import numpy as np
import yaml

from gpusim import api
from gpusim.costmodel import host_profile_dir, latency, load_profile
from gpusim.host.real import RealLayout, run_layout
from gpusim.host.twin import sim_space
from gpusim.kernels import pte as P
from gpusim.machine import cpu_description, cpu_model
from gpusim.result import new_counts

MiB = 1 << 20

# fitted groups of cost events (one scale factor each)
GROUPS = {
    "vma": ("vma.dup", "vma.anon_fork", "vma.file_link", "vma.copy", "vma.skip"),
    "table": ("table.call", "table.alloc", "table.upper_alloc", "pass", "check"),
    "pte_none": ("pte.none",),
    "pte_share": ("pte.share", "pte.wrprotect", "pte.excl_clear", "pte.special"),
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
}


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


def calibration_layouts(quick: bool) -> list[RealLayout]:
    """Layouts whose added fork time is well above this VM's run-to-run noise (about 0.1 ms)."""
    sizes = [64 * MiB, 256 * MiB] if quick else [64 * MiB, 256 * MiB, 1024 * MiB, 2048 * MiB]
    out = [RealLayout(f"dense-{s // MiB}MiB", s) for s in sizes]
    out += [
        RealLayout("sparse-256MiB-1/16", 256 * MiB, fill=1 / 16),
        RealLayout("vmas-512x64KiB", 512 * 64 * 1024, vmas=512),
        RealLayout("thp-512MiB", 512 * MiB, thp=True),
        RealLayout("pinned-16MiB-all", 16 * MiB, pinned=[(0, 4096)]),
        RealLayout("pinned-128MiB-10pct", 128 * MiB, pinned=[(1000, 3277)]),
    ]
    if not quick:
        out += [
            RealLayout("sparse-512MiB-1/64", 512 * MiB, fill=1 / 64),
            RealLayout("vmas-2048x16KiB", 2048 * 16 * 1024, vmas=2048),
            RealLayout("thp-2048MiB", 2048 * MiB, thp=True),
            RealLayout("pinned-64MiB-all", 64 * MiB, pinned=[(0, 16384)]),
        ]
    return out


def validation_layouts() -> list[RealLayout]:
    """Layouts not used for fitting: other sizes, sparsities, VMA counts, pinned fractions."""
    return [
        RealLayout("dense-128MiB", 128 * MiB),
        RealLayout("dense-512MiB", 512 * MiB),
        RealLayout("sparse-128MiB-1/4", 128 * MiB, fill=1 / 4),
        RealLayout("vmas-1000x32KiB", 1000 * 32 * 1024, vmas=1000),
        RealLayout("thp-1024MiB", 1024 * MiB, thp=True),
        RealLayout("pinned-128MiB-5pct", 128 * MiB, pinned=[(5000, 1638)]),
        RealLayout("pinned-32MiB-25pct-3vmas", 32 * MiB, vmas=3, pinned=[(100, 1024), (5000, 1024)]),
    ]


def sharing_layouts() -> list[RealLayout]:
    return [
        RealLayout(
            "sharing-16MiB-half-touched", 16 * MiB, vmas=3, fill=0.5, pinned=[(100, 20), (1500, 40), (3000, 256)]
        ),
        RealLayout("sharing-8MiB-dense", 8 * MiB, pinned=[(0, 1), (511, 2), (2047, 1)]),
    ]


def nnls(A: np.ndarray, b: np.ndarray, iters: int = 500) -> np.ndarray:
    """min ||Ax - b|| subject to x >= 0 (Lawson-Hanson active set)."""
    m, n = A.shape
    x = np.zeros(n)
    passive = np.zeros(n, bool)
    w = A.T @ (b - A @ x)
    for _ in range(iters):
        if passive.all() or (w[~passive] <= 1e-12 * max(1.0, np.abs(w).max())).all():
            break
        j = np.argmax(np.where(~passive, w, -np.inf))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-12
            x[~passive] = 0.0
        w = A.T @ (b - A @ x)
    return x


def _counts(layout: RealLayout, variant: str, thp_pages: int | None = None) -> dict:
    """The simulator's counts for a real layout (a bare fork for the empty one)."""
    if layout.pages == 0:
        c = new_counts()
        c["fork.base"] = c["fork.mm"] = 1
        return c
    space, _ = sim_space(layout, variant, thp_pages)
    return api.fork(space, variant, backend="cpu", check=False).counts


def design_row(counts: dict, base_counts: dict, public) -> np.ndarray:
    """One row of the fit: per group, the layout's added events priced at the public profile's costs."""
    return np.array(
        [sum((counts[e] - base_counts[e]) * public.costs[e].ns for e in events) for events in GROUPS.values()]
    )


def fit_scales(X: np.ndarray, y: np.ndarray, prior: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Scale factors (>= 0) minimising the relative error of ``X @ s`` against ``y``, pulled towards 1 (the public
    profile) with weight ``prior`` so that groups the layouts barely tell apart stay near their public cost; groups
    no row exercises keep scale 1. Returns (scales, identified mask)."""
    used = np.abs(X).sum(axis=0) > 0
    w = 1.0 / np.maximum(np.abs(y), 1.0)
    s = np.ones(X.shape[1])
    if used.any():
        k = int(used.sum())
        A = np.vstack([X[:, used] * w[:, None], prior * np.eye(k)])
        b = np.concatenate([y * w, prior * np.ones(k)])
        s[used] = nnls(A, b)
    return s, used


def measure(layouts: list[RealLayout], repeat: int, progress=None) -> list[dict]:
    out = []
    for i, L in enumerate(layouts):
        if progress:
            progress(i, len(layouts), L.name)
        out.append(run_layout(L, "time", repeat))
    if progress:
        progress(len(layouts), len(layouts), "done")
    return out


def profile_dir() -> Path:
    return host_profile_dir()


def fitted_costs(public, scales: np.ndarray, used: np.ndarray, bare_fork_ns: float) -> dict:
    """The host profile's costs: each fitted group's events at ``scale x`` the public cost, the others kept as
    labelled estimates, ``fork.base`` from the bare measuring process's fork."""
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
    costs["fork.base"] = {
        "ns": round(max(0.0, bare_fork_ns - public.costs["fork.mm"].ns), 1),
        "kind": "derived",
        "basis": "the bare measuring process's fork (a small Python interpreter) less fork.mm",
    }
    return costs


def fit(layouts: list[RealLayout], meas: list[dict], variant: str, public) -> dict:
    """The fit of the group scales on the measured layouts (``meas[0]`` is the bare fork): scales, which groups
    the layouts identify, residuals, and the layouts the kernel refused."""
    base_counts = _counts(RealLayout("bare", 0), variant)
    rows, y, names, skipped = [], [], [], []
    for L, m in zip(layouts, meas[1:]):
        if m["refused"]:
            skipped.append({"name": L.name, "refused": m["refused"]})
            continue
        rows.append(design_row(_counts(L, variant, m["thp_pages"] if L.thp else None), base_counts, public))
        y.append(m["added_ns"])
        names.append(L.name)
    X, y = np.array(rows), np.array(y, float)
    scales, used = fit_scales(X, y)
    residuals = [
        {"name": n, "measured_ns": float(a), "fitted_ns": float(b), "error": float(b / a - 1) if a else None}
        for n, a, b in zip(names, y, X @ scales)
    ]
    return {"scales": scales, "used": used, "residuals": residuals, "skipped": skipped}


def measurement_rows(layouts: list[RealLayout], meas: list[dict]) -> list[dict]:
    """What the host profile keeps of each measurement (the bare fork first)."""
    keys = ("layout", "median_ns", "q1_ns", "q3_ns", "base_median_ns", "added_ns", "thp_pages", "refused")
    base = meas[0]
    return [{"name": "bare", "median_ns": base["median_ns"], "q1_ns": base["q1_ns"], "q3_ns": base["q3_ns"]}] + [
        {"name": L.name, **{k: m[k] for k in keys}} for L, m in zip(layouts, meas[1:])
    ]


def calibrate(quick: bool = False, out: str | None = None, repeat: int | None = None, progress=None) -> dict:
    """Measure, fit and write a host profile; returns {"path", "profile", "fit"}."""
    public = load_profile("public-xeon-4210r-v6.8")
    variant = kernel_variant()
    repeat = repeat or (15 if quick else 31)
    layouts = calibration_layouts(quick)
    meas = measure([RealLayout("bare", 0)] + layouts, repeat, progress)
    f = fit(layouts, meas, variant, public)
    host = platform.node() or socket.gethostname()
    now = datetime.datetime.now(datetime.timezone.utc)
    name = f"host-{host}-{now:%Y%m%d-%H%M%S}"
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
        "costs": fitted_costs(public, f["scales"], f["used"], meas[0]["median_ns"]),
        "variant_factors": {},
        "fit": {
            "variant": variant,
            "groups": {
                g: {"scale": float(s), "identified": bool(u)} for g, s, u in zip(GROUPS, f["scales"], f["used"])
            },
            "residuals": f["residuals"],
            "skipped": f["skipped"],
            "repeat": repeat,
        },
        "measurements": measurement_rows(layouts, meas),
    }
    path = Path(out) if out else profile_dir() / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# Written by `gpusim calibrate` on {now:%Y-%m-%d %H:%M} UTC. Costs in ns per event.\n"
        + yaml.safe_dump(profile, sort_keys=False, width=120)
    )
    load_profile(str(path))  # it must load back
    return {"path": str(path), "profile": profile, "fit": profile["fit"]}


def predicted_sharing(layout: RealLayout, variant: str, thp_pages: int | None = None) -> list[str]:
    """Per page of ``layout`` (region order): what the simulator's child maps: shared, copied or absent."""
    space, b2a = sim_space(layout, variant, thp_pages)
    r = api.fork(space, variant, backend="cpu")

    def frames(mm):
        out = {}
        for row, t in enumerate(mm.table_index.tolist()):
            out[t] = mm.pte[row]
        for t, v in zip(mm.pmd_index.tolist(), mm.pmd.tolist()):
            out[t] = ("pmd", P.pte_pfn(v))
        return out

    pf, cf = frames(r.parent.mm), frames(r.child)

    def pfn(fr, a):
        t = fr.get(a // 512)
        if t is None:
            return None
        if isinstance(t, tuple):
            return t[1] + a % 512
        v = int(t[a % 512])
        return P.pte_pfn(v) if P.pte_present(v) else None

    out = []
    for b in range(layout.pages):
        a = int(b2a[b])
        p, c = pfn(pf, a), pfn(cf, a)
        out.append("absent" if p is None or c is None else ("shared" if p == c else "copied"))
    return out


def validate(profile=None, progress=None, repeat: int = 21) -> dict:
    """The validation report (see the module docstring); the shape of ``gpusim validate --json``."""
    prof = load_profile(profile)
    variant = kernel_variant()
    report = {
        "kernel": platform.release(),
        "variant": variant,
        "profile": prof.name,
        "sharing": {"pages": 0, "agreement": None, "layouts": []},
        "latency": {"median_abs_error": None, "cases": []},
        "refused": {},
    }
    agree = total = 0
    for L in sharing_layouts():
        real = run_layout(L, "sharing")
        if real["refused"].get("pagemap") or real["refused"].get("pin"):
            report["refused"][L.name] = real["refused"]
            continue
        pred = predicted_sharing(L, variant, real.get("thp_pages") if L.thp else None)
        same = sum(a == b for a, b in zip(real["state"], pred))
        agree += same
        total += len(pred)
        report["sharing"]["layouts"].append(
            {
                "name": L.name,
                "pages": len(pred),
                "agree": same,
                "real": {k: real["state"].count(k) for k in ("shared", "copied", "absent")},
                "predicted": {k: pred.count(k) for k in ("shared", "copied", "absent")},
            }
        )
    report["sharing"]["pages"] = total
    report["sharing"]["agreement"] = agree / total if total else None
    layouts = validation_layouts()
    meas = measure(layouts, repeat, progress)  # each measures its own bare fork (time_forks)
    base_pred = latency(_counts(RealLayout("bare", 0), variant), variant, prof)["latency_ns"]
    errors = []
    for L, m in zip(layouts, meas):
        if m["refused"]:
            report["refused"][L.name] = m["refused"]
            continue
        c = _counts(L, variant, m["thp_pages"] if L.thp else None)
        predicted = latency(c, variant, prof)["latency_ns"] - base_pred
        measured = m["added_ns"]
        err = predicted / measured - 1 if measured > 0 else None
        if err is not None:
            errors.append(abs(err))
        report["latency"]["cases"].append(
            {"name": L.name, "measured_ns": measured, "predicted_ns": predicted, "error": err}
        )
    report["latency"]["median_abs_error"] = float(np.median(errors)) if errors else None
    return report
