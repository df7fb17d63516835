"""Figures of a sweep's dataset (matplotlib, Agg): what a person would rather look at than read.

* ``latency_vs_size.png``: modelled fork latency against simulated memory, one line per variant (log-log);
* ``latency_breakdown.png``: the latency of each point split by component (stacked bars);
* ``latency_vs_pinned.png``: latency against the pinned fraction, per variant (when the sweep varies it);
* ``variant_comparison.png``: median latency per variant for each workload point (grouped bars);
* ``write_phase.png`` (sweeps with ``fork.writes``): per variant, the pinned pages whose DMA the parent lost
  (``dma.parent_diverged``) and those the device writes into the child (``dma.child_aliased``), beside the modelled
  latency of the fork and of the write phase after it;
* ``episode_timeline.png`` (sweeps with ``fork.episode``): per point, the COW memory and the latency the writes
  gain over the episode's time, and the pinned pages whose DMA the parent lost when any did;
* ``stall_vs_total.png`` (sweeps with ``fork.episode``): per workload point, each variant's fork stall against the
  total cost of its fork over the episode (the stall, the latency the writes gain with the table work they trigger,
  and a lazy design's deferred copies in the child; log axes where they span a factor of 10): where the fork
  designs (spec 12) move the cost.

A figure whose axis the sweep does not vary is skipped. Failed rows (``outcome = "error"``) are left out. matplotlib
is imported when figures are drawn, not with this module.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from gpusim.base import checkargs
from gpusim.jobs.sweep.export import load_results, output_path
from gpusim.jobs.sweep.labels import columns, workload_label
from gpusim.kernels.flags import PAGE_SIZE


class _Figures:
    """The rows of a dataset (columns of :func:`gpusim.jobs.sweep.labels.columns`, failed rows dropped) and where their
    figures go."""

    def __init__(self, d: dict, out: Path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt, self.d, self.out = plt, d, out
        self.n = len(d["outcome"])
        self.variants = sorted(set(d["variant"]))
        self.lat_ms = np.array(d["latency_ns"], float) / 1e6
        self.size = np.array(d["nr_ptes"], float) * PAGE_SIZE
        self.written: list[Path] = []

    def save(self, fig, name: str) -> None:
        p = self.out / name
        with warnings.catch_warnings():  # very many bars: bbox_inches below still fits the labels
            warnings.simplefilter("ignore", UserWarning)
            fig.tight_layout()
        fig.savefig(p, dpi=110, bbox_inches="tight")
        self.plt.close(fig)
        self.written.append(p)

    def latency_vs_size(self) -> None:
        d, n, size, lat_ms = self.d, self.n, self.size, self.lat_ms
        if len(set(size)) <= 1:
            return
        fig, ax = self.plt.subplots(figsize=(7, 4.5))
        series: dict = {}
        for i in range(n):  # one line per variant and per value of the other swept keys
            other = workload_label(d, i, skip=("fork.variant", "workload.size"))
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
        self.save(fig, "latency_vs_size.png")

    def breakdown_bars(self) -> tuple[list, dict]:
        """(bar labels, per latency component its median ms per bar): a bar per (point, variant, fork index)."""
        d, n = self.d, self.n
        comps = [c for c in d if c.startswith("latency.") and c.endswith("_ns")]
        fork_index = d.get("fork_index", [0] * n)
        groups: dict = {}
        for i in range(n):
            groups.setdefault((workload_label(d, i), d["variant"][i], fork_index[i]), []).append(i)
        keys = sorted(groups)
        labels = [f"{p} | {v}" + (f" | fork {k}" if k else "") for p, v, k in keys]
        stacks = {c: [np.median([d[c][j] or 0.0 for j in groups[key]]) / 1e6 for key in keys] for c in comps}
        return labels, stacks

    def latency_breakdown(self) -> None:
        labels, stacks = self.breakdown_bars()
        if not labels:
            return
        fig, ax = self.plt.subplots(figsize=(max(6.0, 0.6 * len(labels) + 3), 5))
        bottom = np.zeros(len(labels))
        for c, vals in stacks.items():
            vals = np.array(vals)
            if vals.any():
                ax.bar(range(len(labels)), vals, bottom=bottom, label=c[len("latency.") : -3])
                bottom += vals
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("modelled latency (ms, median)")
        ax.set_title("latency breakdown by component")
        ax.legend(fontsize=8)
        self.save(fig, "latency_breakdown.png")

    def latency_vs_pinned(self) -> None:
        d, n, lat_ms = self.d, self.n, self.lat_ms
        pf = d.get("workload.pinned_fraction")
        if pf is None or len({v for v in pf if v is not None}) <= 1:
            return
        fig, ax = self.plt.subplots(figsize=(7, 4.5))
        for v in self.variants:
            idx = [i for i in range(n) if d["variant"][i] == v and pf[i] is not None]
            xs = sorted(set(pf[i] for i in idx))
            ax.plot(xs, [np.median([lat_ms[i] for i in idx if pf[i] == x]) for x in xs], marker="o", label=v)
        ax.set_xlabel("pinned fraction of the memory")
        ax.set_ylabel("modelled fork latency (ms, median)")
        ax.set_title("fork latency vs pinned memory")
        ax.grid(True, alpha=0.3)
        ax.legend()
        self.save(fig, "latency_vs_pinned.png")

    def variant_comparison(self) -> None:
        d, n, lat_ms, variants = self.d, self.n, self.lat_ms, self.variants
        if len(variants) <= 1:
            return
        label = [workload_label(d, i) for i in range(n)]
        points = sorted(set(label))
        fig, ax = self.plt.subplots(figsize=(max(6.0, 1.2 * len(points) + 3), 4.5))
        w = 0.8 / len(variants)
        for k, v in enumerate(variants):
            med = []
            for p in points:
                vals = [lat_ms[i] for i in range(n) if d["variant"][i] == v and label[i] == p]
                med.append(np.median(vals) if vals else np.nan)
            ax.bar(np.arange(len(points)) + k * w, med, width=w, label=v)
        ax.set_xticks(np.arange(len(points)) + 0.4 - w / 2, points, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("modelled fork latency (ms, median)")
        ax.set_title("variants compared")
        ax.legend(fontsize=8)
        self.save(fig, "variant_comparison.png")


def _medians(d: dict, n: int, variants: list, column: str, scale: float = 1.0) -> list[float]:
    vals = [
        np.array([d[column][i] for i in range(n) if d["variant"][i] == v and d[column][i] is not None], float)
        for v in variants
    ]
    return [float(np.median(x)) * scale if x.size else np.nan for x in vals]


def write_phase(fig_set: "_Figures") -> None:
    """``write_phase.png``: the DMA view and the latencies of fork and write phase, per variant (medians)."""
    d, n, variants = fig_set.d, fig_set.n, fig_set.variants
    if "write_latency_ns" not in d or not any(v is not None for v in d["write_latency_ns"]):
        return
    fig, (ax1, ax2) = fig_set.plt.subplots(1, 2, figsize=(11, 4.5))
    x, w = np.arange(len(variants)), 0.38
    ax1.bar(x - w / 2, _medians(d, n, variants, "dma.parent_diverged"), width=w, label="parent lost its DMA frame")
    ax1.bar(x + w / 2, _medians(d, n, variants, "dma.child_aliased"), width=w, label="device writes into the child")
    pinned = _medians(d, n, variants, "dma.pinned")
    ax1.plot(x, pinned, "k_", markersize=24, label="pinned pages")
    ax1.set_xticks(x, variants, rotation=20)
    ax1.set_ylabel("pages (median)")
    ax1.set_title("DMA after the write phase")
    ax1.legend(fontsize=8)
    ax2.bar(x - w / 2, _medians(d, n, variants, "latency_ns", 1e-6), width=w, label="fork")
    ax2.bar(x + w / 2, _medians(d, n, variants, "write_latency_ns", 1e-6), width=w, label="write phase (COW faults)")
    ax2.set_xticks(x, variants, rotation=20)
    ax2.set_ylabel("modelled latency (ms, median)")
    ax2.set_title("fork and write phase")
    ax2.legend(fontsize=8)
    fig_set.save(fig, "write_phase.png")


def _timeline_series(d: dict, n: int) -> list[tuple[str, int]]:
    """(label, row) of each distinct episode timeline: per point (first repetition), variants whose timelines are the
    same drawn once, labelled together ("all variants" when every one of the sweep's is)."""
    col, groups = "episode.timeline.t_s", {}
    every = sorted(set(d["variant"]))
    for i in range(n):
        if not d.get(col, [None] * n)[i]:
            continue
        other = workload_label(d, i)
        same = (tuple(d["episode.timeline.cow_pages"][i]), tuple(d["episode.timeline.added_latency_ns"][i]))
        same += (tuple(d["episode.timeline.dma_parent_diverged"][i]),)
        groups.setdefault((other, same), {}).setdefault(d["variant"][i], i)
    out = []
    for (other, _), by_variant in sorted(groups.items(), key=lambda kv: (kv[0][0], sorted(kv[1]))):
        names = sorted(by_variant)
        who = "all variants" if names == every and len(every) > 1 else ", ".join(names)
        out.append((who if other == "all" else f"{who}: {other}", next(iter(by_variant.values()))))
    return out


def episode_timeline(fig_set: "_Figures") -> None:
    """``episode_timeline.png``: per point (its first repetition; variants with the same timeline drawn once), the COW
    memory and the latency the writes gain over the episode's time, and the DMA frames the parent lost when any
    did."""
    d = fig_set.d
    series = _timeline_series(d, fig_set.n)
    if not series:
        return
    lost = any(max(d["episode.timeline.dma_parent_diverged"][i] or [0]) > 0 for _, i in series)
    fig, axes = fig_set.plt.subplots(1, 3 if lost else 2, figsize=(16 if lost else 11, 4.5))
    for label, i in series:
        t = np.array(d["episode.timeline.t_s"][i], float)
        step = np.diff(np.concatenate([[0.0], t]))
        axes[0].plot(t, np.array(d["episode.timeline.cow_pages"][i], float) * PAGE_SIZE / 2**20, label=label)
        added = np.array([np.nan if a is None else a for a in d["episode.timeline.added_latency_ns"][i]], float)
        axes[1].plot(t, added / 1e6 / step, label=label)
        if lost:
            axes[2].plot(t, d["episode.timeline.dma_parent_diverged"][i], label=label)
    titles = ("COW memory (pages copied, both copies alive)", "latency the writes gain", "DMA frames the parent lost")
    ylabels = ("MiB", "ms of added latency per second", "pinned pages")
    for ax, title, ylabel in zip(axes, titles, ylabels):
        ax.set_title(title)
        ax.set_xlabel("time since the fork (s)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0), ncol=2)
    fig_set.save(fig, "episode_timeline.png")


def _total_cost_ns(d: dict, i: int) -> float | None:
    """The total cost of row ``i``'s fork over its episode (see the module docstring); None without one."""
    added = d.get("episode.added_latency_ns", [None] * (i + 1))[i]
    if added is None or d["latency_ns"][i] is None:
        return None
    sync = d.get("episode.child_sync_ns", [None] * (i + 1))[i] or 0.0
    return d["latency_ns"][i] + added + sync


def _scale(ax, xs, ys) -> None:
    """Log axes where the values span more than a factor of 10, else linear ones with plain tick labels."""
    for values, set_scale, axis in ((xs, ax.set_xscale, "x"), (ys, ax.set_yscale, "y")):
        v = np.array(values, float)
        if v.min() > 0 and v.max() / v.min() > 10:
            set_scale("log")
        else:
            ax.ticklabel_format(axis=axis, style="plain", useOffset=False)


def stall_vs_total(fig_set: "_Figures") -> None:
    """``stall_vs_total.png``: per workload point (first repetition), each variant's fork stall against its total
    cost over the episode."""
    d, n = fig_set.d, fig_set.n
    points: dict = {}
    for i in range(n):
        if _total_cost_ns(d, i) is not None:
            points.setdefault(workload_label(d, i), {}).setdefault(d["variant"][i], i)
    if not points:
        return
    k = len(points)
    cols = min(k, 3)
    fig, axes = fig_set.plt.subplots((k + cols - 1) // cols, cols, figsize=(5 * cols, 4.2 * ((k + cols - 1) // cols)))
    axes = np.atleast_1d(axes).reshape(-1)
    colours = {v: f"C{j % 10}" for j, v in enumerate(fig_set.variants)}
    for ax, (label, by_variant) in zip(axes, sorted(points.items())):
        for v, i in sorted(by_variant.items()):
            x, y = _total_cost_ns(d, i) / 1e6, d["latency_ns"][i] / 1e6
            ax.scatter([x], [y], color=colours[v], label=v, s=36)
            ax.annotate(v, (x, y), fontsize=7, xytext=(4, 2), textcoords="offset points")
        _scale(
            ax, [_total_cost_ns(d, i) for i in by_variant.values()], [d["latency_ns"][i] for i in by_variant.values()]
        )
        ax.set_xlabel("total cost over the episode (ms)")
        ax.set_ylabel("parent's fork stall (ms)")
        ax.set_title(label if label != "all" else "fork stall vs total cost", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[k:]:
        ax.set_visible(False)
    fig_set.save(fig, "stall_vs_total.png")


PLOTS = "_plots"  # a dataset's figures: a name the readers skip


def plot_results(path, out=None) -> list[Path]:
    """Draw the figures of the dataset in ``path`` into ``out`` (default ``path/_plots``: not a data file to the
    readers of the dataset); returns the files."""
    d = columns(load_results(path), drop_failed=True)
    out = checkargs.path("out", out) if out is not None else Path(path) / PLOTS
    output_path(out, "directory", allowed=PLOTS)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{out}: cannot make the directory: {e.strerror or e}") from None
    if not d["outcome"]:
        return []
    figs = _Figures(d, out)
    figs.latency_vs_size()
    figs.latency_breakdown()
    figs.latency_vs_pinned()
    figs.variant_comparison()
    write_phase(figs)
    episode_timeline(figs)
    stall_vs_total(figs)
    return figs.written
