"""Figures of a sweep's dataset (matplotlib, Agg): what a person would rather look at than read.

* ``latency_vs_size.png``: modelled fork latency against simulated memory, one line per variant (log-log);
* ``latency_breakdown.png``: the latency of each point split by component (stacked bars);
* ``latency_vs_pinned.png``: latency against the pinned fraction, per variant (when the sweep varies it);
* ``variant_comparison.png``: median latency per variant for each workload point (grouped bars).

A figure whose axis the sweep does not vary is skipped. Failed rows (``outcome = "error"``) are left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PAGE = 4096


def _frame(table):
    cols = table.column_names
    data = {c: table.column(c).to_pylist() for c in cols}
    keep = [i for i, o in enumerate(data["outcome"]) if o != "error" and data["latency_ns"][i] is not None]
    return {c: [v[i] for i in keep] for c, v in data.items()}, len(keep)


def human_size(n: float) -> str:
    for unit, k in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << k:
            return f"{n / (1 << k):g}{unit}"
    return f"{n:g}B"


def _workload_label(d: dict, i: int, skip: tuple = ("fork.variant",)) -> str:
    """A short label of row ``i``: the parameters that vary across the rows, as this row has them (unset ones left
    out); where the sweep mixes workload kinds, a generated workload also shows its size and non-default keys."""
    from gpusim.sweep.spec import AnonWorkload
    params = [c for c in d if (c.startswith("workload.") or c.startswith("fork.")) and c not in skip]
    varying = [c for c in params if len({str(v) for v in d[c] if v is not None}) > 1]
    kinds = d.get("workload.kind", [None] * (i + 1))
    if len(set(kinds)) > 1 and kinds[i] in ("anon", "mixed"):
        import json
        defaults = {f"workload.{k}": json.dumps(f.default) if isinstance(f.default, list) else f.default
                    for k, f in AnonWorkload.model_fields.items()}
        varying += [c for c in params if c not in varying and c in defaults and d[c][i] is not None
                    and (c == "workload.size" or d[c][i] != defaults[c])]
    parts = []
    for c in varying:
        v = d[c][i]
        if v is None or (c == "workload.kind" and len(varying) > 1):
            continue
        name = c.split(".", 1)[1]
        if name == "size" and isinstance(v, (int, float)):
            parts.append(human_size(v))
        elif name in ("scenario", "layout"):
            parts.append(f"{name} {v}")
        else:
            parts.append(f"{name.replace('_fraction', '')}={v}")
    return ", ".join(parts) or "all"


def plot_results(path, out=None) -> list[Path]:
    """Draw the figures of the dataset in ``path`` into ``out`` (default ``path/plots``); returns the files."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from gpusim.sweep.export import load_results
    d, n = _frame(load_results(path))
    out = Path(out) if out else Path(path) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if n == 0:
        return written
    variants = sorted(set(d["variant"]))
    lat_ms = np.array(d["latency_ns"], float) / 1e6
    size = np.array(d["nr_ptes"], float) * PAGE

    def save(fig, name):
        import warnings
        p = out / name
        with warnings.catch_warnings():             # very many bars: bbox_inches below still fits the labels
            warnings.simplefilter("ignore", UserWarning)
            fig.tight_layout()
        fig.savefig(p, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(p)

    if len(set(size)) > 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        series: dict = {}
        for i in range(n):                      # one line per variant and per value of the other swept keys
            other = _workload_label(d, i, skip=("fork.variant", "workload.size"))
            series.setdefault((d["variant"][i], other), []).append(i)
        for (v, other), idx in sorted(series.items()):
            xs = sorted(set(size[idx]))
            med = [np.median([lat_ms[i] for i in idx if size[i] == x]) for x in xs]
            ax.plot(np.array(xs) / 2**30, med, marker="o", label=v if other == "all" else f"{v}, {other}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("simulated memory (GiB)")
        ax.set_ylabel("modelled fork latency (ms, median)")
        ax.set_title("fork latency vs size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        save(fig, "latency_vs_size.png")

    comps = [c for c in d if c.startswith("latency.") and c.endswith("_ns")]
    labels, stacks = [], {c: [] for c in comps}
    keys = []
    for i in range(n):
        key = (d["variant"][i], _workload_label(d, i), d.get("fork_index", [0] * n)[i])
        if key in keys:
            continue
        keys.append(key)
        same = [j for j in range(n) if (d["variant"][j], _workload_label(d, j), d.get("fork_index", [0] * n)[j])
                == key]
        labels.append(f"{key[1]} | {key[0]}" + (f" | fork {key[2]}" if key[2] else ""))
        for c in comps:
            stacks[c].append(np.median([d[c][j] or 0.0 for j in same]) / 1e6)
    order = sorted(range(len(keys)), key=lambda i: (keys[i][1], keys[i][0], keys[i][2]))
    keys = [keys[i] for i in order]
    labels = [labels[i] for i in order]
    stacks = {c: [v[i] for i in order] for c, v in stacks.items()}
    if keys:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(keys) + 3), 5))
        bottom = np.zeros(len(keys))
        for c in comps:
            vals = np.array(stacks[c])
            if vals.any():
                ax.bar(range(len(keys)), vals, bottom=bottom, label=c[len("latency."):-3])
                bottom += vals
        ax.set_xticks(range(len(keys)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("modelled latency (ms, median)")
        ax.set_title("latency breakdown by component")
        ax.legend(fontsize=8)
        save(fig, "latency_breakdown.png")

    pf = d.get("workload.pinned_fraction")
    if pf is not None and len({v for v in pf if v is not None}) > 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for v in variants:
            idx = [i for i in range(n) if d["variant"][i] == v and pf[i] is not None]
            xs = sorted(set(pf[i] for i in idx))
            ax.plot(xs, [np.median([lat_ms[i] for i in idx if pf[i] == x]) for x in xs], marker="o", label=v)
        ax.set_xlabel("pinned fraction of the memory")
        ax.set_ylabel("modelled fork latency (ms, median)")
        ax.set_title("fork latency vs pinned memory")
        ax.grid(True, alpha=0.3)
        ax.legend()
        save(fig, "latency_vs_pinned.png")

    if len(variants) > 1:
        points = sorted({_workload_label(d, i) for i in range(n)})
        fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(points) + 3), 4.5))
        w = 0.8 / len(variants)
        for k, v in enumerate(variants):
            med = []
            for p in points:
                vals = [lat_ms[i] for i in range(n) if d["variant"][i] == v and _workload_label(d, i) == p]
                med.append(np.median(vals) if vals else np.nan)
            ax.bar(np.arange(len(points)) + k * w, med, width=w, label=v)
        ax.set_xticks(np.arange(len(points)) + 0.4 - w / 2, points, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("modelled fork latency (ms, median)")
        ax.set_title("variants compared")
        ax.legend(fontsize=8)
        save(fig, "variant_comparison.png")
    return written
