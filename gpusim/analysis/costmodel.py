"""The fork latency model: modelled latency = sum over cost events of count x cost, with a breakdown.

A cost profile (a YAML file, :class:`Profile`) gives every cost event of spec section 8 (and 10) a cost in
nanoseconds, says where each figure comes from and whether it is measured, derived from a measurement, or an
estimate. Profiles shipped with gpusim live in ``gpusim/analysis/profiles/`` and are selected by name; a path selects
any other file (``host`` profiles written by calibration, for instance).

The model adds, per fork:

* ``latency_ns``: ``variant_factor x sum(count[e] x cost[e])`` over every cost event;
* ``latency_breakdown_ns``: the same sum split by component (:data:`COMPONENTS`: fixed per fork, per VMA, per page
  table, per pass and lock cycle, per PTE, early copies, swap-count continuations, huge PMDs, teardown);
* ``latency_low_ns`` / ``latency_high_ns``: the profile's band around ``latency_ns`` (:class:`Band`): how far a fork
  measured on the profile's machine may lie from the model, from the calibration's own spread and the drift that
  ``gpusim validate`` saw since; None for a profile without one (the public profile: not calibrated on this machine);
* ``lock_hold_max_ns``: the longest modelled hold of a page table's PTE locks: for each copied table, the cost of
  the events done inside its passes (:func:`held_events`) divided by its passes, the largest over tables. A table
  copied in one pass (no lock break, no restart) holds the locks for all of it; with several passes the model
  spreads the table's work evenly over them (the events are counted per table, not per pass).

A *warm* fork comes right after another fork over the same pages (the later forks of ``fork.chain``, a child that
forks in turn; calibration's repeated state): the ``struct page`` of each page it walks was just touched, and those
that are still in cache cost no miss at a break in the order of the frames. The model credits a warm fork with
``max(0, 1 - S / C)`` of the cost of :data:`WARM_FREE`, ``S`` the struct pages of the pages it shares (64 bytes each)
and ``C`` the profile's ``warm_cache_bytes`` (a host profile: half the machine's last-level cache, the share a fork's
struct pages keep against its page tables and everything else on a shared cache); a profile without it (the public
one) credits nothing. Measured on this project's VM (``results/BENCHMARKS.md``, issue 26): a frame-break event
adds 35-40 ns to a fork from cold; right after a fork, a 512 MiB buffer with scattered frames (8 MiB of struct pages)
paid between a quarter and nearly all of that from one calibration window to the next, a 1 GiB one (16 MiB) all of
it: the credit is a rough middle. A host profile also has ``warm_factors``: per event of the per-VMA, per-table and
per-huge-PMD work, the ratio of its cost in a warm fork to its cost from cold (the fresh state, every profile's
``costs``), fitted by calibration on the two states (issue 32: from cold, the VMA, page-table and slab structures
a fork walks and allocates miss in cache; right after a fork they are still there).

What it simplifies otherwise: costs are per event, independent of cache state (but for warm forks), NUMA placement,
memory size and contention; the per-variant factor is one number for the whole fork.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpusim.base.machine import user_cache_dir
from gpusim.base.yamlerr import load_yaml_model
from gpusim.kernels.flags import COST_EVENTS, PAGE_SIZE, WRITE_CODE_BASE, WRITE_EVENTS, WRITERS
from gpusim.model.result import TABLE_EVENTS
from gpusim.model.variants import VARIANTS, get_variant

PROFILE_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "public-xeon-4210r-v6.8"

# component -> the prefixes (or names) of the cost events it sums; every cost event falls in the first component that
# names it (the lazy designs' table events before the other table events)
_COMPONENT_EVENTS = {
    "lazy": (
        "table.share",
        "pmd.wrprotect",
        "pte.acct",
        "table.recover_pte",
        "table.cow_",
        "table.reuse",
        "table.free",
        "table.zap_shared",
        "pmd.restore",
        "async.",
    ),
    "fork": ("fork.",),
    "vma": ("vma.",),
    "table": ("table.",),
    "pass": ("pass", "restart.", "check"),
    "pte": ("pte.", "batch."),
    "early_copy": ("copy.",),
    "swap_continuation": ("swapcont.",),
    "huge_pmd": ("pmd.",),
    "teardown": ("teardown.",),
}
# component -> the cost events it sums, in the spec's order
COMPONENTS = {
    comp: tuple(e for e in COST_EVENTS if next(c for c, p in _COMPONENT_EVENTS.items() if e.startswith(p)) == comp)
    for comp in _COMPONENT_EVENTS
}
assert sorted(e for v in COMPONENTS.values() for e in v) == sorted(COST_EVENTS)


# Events a warm fork (see the module docstring) is charged less for: their cost is a cache miss the fork before may
# have made a hit.
WARM_FREE = ("pte.frame_break",)
STRUCT_PAGE_BYTES = 64  # sizeof(struct page) on x86-64


def warm_credit(counts: dict, cache_bytes: float | None) -> float:
    """The share of :data:`WARM_FREE`'s cost a warm fork with ``counts`` is spared (module docstring)."""
    if not cache_bytes:
        return 0.0
    return max(0.0, 1.0 - STRUCT_PAGE_BYTES * counts.get("shared", 0) / cache_bytes)


def event_costs(profile: "Profile", spared: float = 0.0, warm: bool = False) -> dict[str, float]:
    """ns per cost event of ``profile``, :data:`WARM_FREE`'s less the share ``spared`` (:func:`warm_credit`);
    ``warm``: each event times the profile's ``warm_factors`` (module docstring)."""
    f = profile.warm_factors if warm else {}
    return {e: c.ns * (1 - spared if e in WARM_FREE else 1) * f.get(e, 1.0) for e, c in profile.costs.items()}


# Cost events counted since some profiles were written: a profile without one of them (a host profile calibrated
# before) takes the shipped public profile's figure for it, labelled as an estimate that says so.
LATER_EVENTS = ("pte.frame_break", *COMPONENTS["lazy"])


class ProfileError(ValueError):
    pass


class EventCost(BaseModel):
    """The cost of one event: ``ns``, and how it was obtained (``measured``, ``derived`` from a measurement, or an
    ``estimate``), with the reasoning in ``basis``."""

    model_config = ConfigDict(extra="forbid")
    ns: float = Field(ge=0)
    kind: str
    basis: str = ""

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in ("measured", "derived", "estimate"):
            raise ValueError("must be 'measured', 'derived' or 'estimate'")
        return v


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str
    machine: str = ""
    kernel: str = ""
    url: str = ""
    date: str = ""


class Anchor(BaseModel):
    """A measured fork the profile must reproduce: a workload (generator keys) and its measured latency."""

    model_config = ConfigDict(extra="forbid")
    workload: dict
    variant: str
    latency_ns: float
    tolerance: float = 0.02


class Band(BaseModel):
    """A profile's uncertainty: a fork measured on its machine lies within ``latency x (1 + low)`` and
    ``latency x (1 + high)`` as far as the profile's measurements tell (``basis``); ``checks``: what
    ``gpusim validate`` saw of the profile since (each widens the band to cover it)."""

    model_config = ConfigDict(extra="forbid")
    low: float = Field(le=0, gt=-1)
    high: float = Field(ge=0)
    basis: str
    checks: list[dict] = []


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str
    sources: list[Source] = []
    costs: dict[str, EventCost]
    write_costs: dict[str, EventCost] = {}  # the write phase's events (spec 11.5); a profile may have none
    variant_factors: dict[str, EventCost] = {}
    anchors: list[Anchor] = []
    band: Band | None = None  # host profiles: the uncertainty of their predictions (calibrated ones)
    warm_cache_bytes: float | None = Field(None, gt=0)  # host profiles: the cache a warm fork finds (module docstring)
    warm_factors: dict[str, float] = {}  # host profiles: event -> its warm cost over its cold one (module docstring)
    fit: dict = {}  # host profiles: the fit's groups, scales and residuals
    measurements: list[dict] = []  # host profiles: the real forks the fit used

    @model_validator(mode="before")
    @classmethod
    def _later_events(cls, data):
        costs = data.get("costs") if isinstance(data, dict) else None
        if not isinstance(costs, dict) or data.get("name") == DEFAULT_PROFILE:
            return data
        missing = [e for e in LATER_EVENTS if e not in costs]
        if not missing:
            return data
        public = load_profile(DEFAULT_PROFILE)
        added = {
            e: {
                "ns": public.costs[e].ns,
                "kind": "estimate",
                "basis": f"not in this profile (written before gpusim counted it); "
                f"{public.name}: {public.costs[e].basis}",
            }
            for e in missing
        }
        return {**data, "costs": {**costs, **added}}

    @model_validator(mode="after")
    def _complete(self):
        unknown = sorted(set(self.costs) - set(COST_EVENTS))
        if unknown:
            raise ValueError(f"unknown cost events: {', '.join(unknown)}")
        missing = [e for e in COST_EVENTS if e not in self.costs]
        if missing:
            raise ValueError(f"no cost for: {', '.join(missing)}")
        if self.write_costs and sorted(self.write_costs) != sorted(WRITE_EVENTS):
            raise ValueError(f"write_costs: one cost for each of {', '.join(WRITE_EVENTS)}")
        bad = sorted(set(self.variant_factors) - set(VARIANTS))
        if bad:
            raise ValueError(f"variant_factors: unknown variants {', '.join(bad)}")
        bad = sorted(e for e, v in self.warm_factors.items() if e not in COST_EVENTS or not 0 <= v < 100)
        if bad:
            raise ValueError(f"warm_factors: unknown events or factors outside [0, 100): {', '.join(bad)}")
        return self

    def factor(self, variant: str) -> float:
        f = self.variant_factors.get(variant)
        return 1.0 if f is None else f.ns

    def estimates(self) -> list[str]:
        return [e for e in COST_EVENTS if self.costs[e].kind == "estimate"]


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def host_profile_dir() -> Path:
    """Where ``gpusim calibrate`` writes host profiles by default: ``$GPUSIM_PROFILE_DIR``, else
    ``$XDG_DATA_HOME/gpusim/analysis/profiles`` (``~/.local/share/gpusim/analysis/profiles``)."""
    env = os.environ.get("GPUSIM_PROFILE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "gpusim" / "profiles"


def newest_host_profile() -> Path | None:
    """The most recently written ``host-*.yaml`` in :func:`host_profile_dir`, if any."""
    d = host_profile_dir()
    found = sorted(d.glob("host-*.yaml"), key=lambda p: p.stat().st_mtime) if d.is_dir() else []
    return found[-1] if found else None


@functools.lru_cache(maxsize=32)
def _load(path: str, mtime: float) -> Profile:
    return load_yaml_model(path, Profile, cache=user_cache_dir() / "profiles")


def profile_path(name_or_path: str | os.PathLike | None = None) -> Path:
    """The file of a profile by name (``gpusim/analysis/profiles/NAME.yaml``, or a host profile's name in
    :func:`host_profile_dir`) or by path; None means the newest host profile when one exists, else the public one.
    Unknown names raise :class:`ProfileError`."""
    if name_or_path is None:
        newest = newest_host_profile()
        name_or_path = str(newest) if newest else DEFAULT_PROFILE
    text = str(name_or_path)
    if not text.strip():
        raise ProfileError(f"an empty profile name (shipped: {', '.join(profile_names())}; or a profile file's path)")
    hosted = host_profile_dir() / f"{text}.yaml"
    if not Path(text).exists() and hosted.exists():
        text = str(hosted)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or os.sep in text) or not path.exists():
        named = PROFILE_DIR / f"{text}.yaml"
        if named.exists():
            path = named
        elif not path.exists():
            raise ProfileError(
                f"unknown cost profile '{text}' (shipped: {', '.join(profile_names())}; "
                f"or give the path of a profile file)"
            )
    return path


def load_profile(name_or_path: str | os.PathLike | Profile | None = None) -> Profile:
    """A profile by name or path (:func:`profile_path`). Unknown names and invalid files raise
    :class:`ProfileError` with a message naming the file, line and key."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    path = profile_path(name_or_path)
    try:
        return _load(str(path.resolve()), path.stat().st_mtime)
    except (ValidationError, ValueError) as e:
        raise ProfileError(str(e)) from None


def held_events(variant: str) -> tuple[str, ...]:
    """The table events done with the PTE locks held in ``variant``: every :data:`TABLE_EVENTS` but, in xu-v1 and
    xu-v1-oleg, the early copy (``page_duplicate`` allocates and copies after the locks are dropped)."""
    if get_variant(variant).xu_protocol:
        return tuple(e for e in TABLE_EVENTS if e != "copy.memcpy")
    return TABLE_EVENTS


def latency(counts: dict[str, int], variant: str, profile: Profile, table_stats=None, warm: bool = False) -> dict:
    """``latency_ns`` with the profile's band (``latency_low_ns``, ``latency_high_ns``), ``latency_breakdown_ns``
    (by component), ``lock_hold_max_ns`` (None without per-table statistics) and ``profile`` for one fork's
    counts; ``warm``: the fork comes right after another over the same pages (module docstring)."""
    f = profile.factor(variant)
    cost = event_costs(profile, warm_credit(counts, profile.warm_cache_bytes) if warm else 0.0, warm)
    breakdown = {comp: f * sum(counts.get(e, 0) * cost[e] for e in events) for comp, events in COMPONENTS.items()}
    hold = None
    if table_stats is not None:
        hold = lock_hold_max_ns(table_stats, variant, cost, profile.factor(variant))
    total = sum(breakdown.values())
    band = profile.band
    return {
        "latency_ns": total,
        "latency_low_ns": None if band is None else total * (1 + band.low),
        "latency_high_ns": None if band is None else total * (1 + band.high),
        "latency_breakdown_ns": breakdown,
        "lock_hold_max_ns": hold,
        "profile": profile.name,
    }


def write_latency(counts: dict[str, dict[str, int]], profile: Profile, table_counts: dict | None = None) -> dict:
    """The write phase's modelled latency (spec 11.5): ``latency_ns`` and ``latency_breakdown_ns`` per writer and
    event, reported beside the fork's, never added to it; None figures when the profile has no write costs (a
    host profile calibrated before the write phase existed). Under a lazy design (spec 12.8) ``table_counts`` are
    the cost events of the unshares and deferred copies each writer's steps triggered, charged to that writer
    (``table`` in its breakdown), and of the child's deferred copies at its start: ``child_sync_ns``, beside."""
    if not profile.write_costs:
        return {"latency_ns": None, "latency_breakdown_ns": None, "profile": profile.name}
    breakdown = {w: {e: counts[w][e] * profile.write_costs[e].ns for e in WRITE_EVENTS} for w in WRITERS}
    out = {"profile": profile.name}
    if table_counts is not None:
        cost = event_costs(profile)
        priced = {w: priced_events(c, cost) for w, c in table_counts.items()}
        for w in WRITERS:
            breakdown[w]["table"] = priced[w]
        out["child_sync_ns"] = priced["child_sync"]
    total = sum(v for per in breakdown.values() for v in per.values())
    return {"latency_ns": total, "latency_breakdown_ns": breakdown, **out}


def priced_events(counts: dict, cost: dict) -> float:
    """ns of the cost events ``counts`` (event -> count) at ``cost`` (ns by event); names without a cost (summary
    counters) add nothing."""
    return sum(n * cost[e] for e, n in counts.items() if e in cost)


def code_costs(cost: dict) -> np.ndarray:
    """ns of each write code (spec 11.6: one or two write events) at ``cost`` (ns by write event)."""
    per_code = np.zeros(len(WRITE_EVENTS) * WRITE_CODE_BASE)
    for first, e1 in enumerate(WRITE_EVENTS):
        for second in range(-1, len(WRITE_EVENTS)):
            extra = cost[WRITE_EVENTS[second]] if second >= 0 else 0.0
            per_code[first * WRITE_CODE_BASE + second + 1] = cost[e1] + extra
    return per_code


def request_latencies(signatures: dict, cost: dict, extra=()) -> tuple[np.ndarray, np.ndarray]:
    """(latency, requests) of each distinct request of an episode (spec 11.6): a signature is the write codes of its
    page writes, each priced as the sum of its events' ``cost`` (ns by event); sorted by latency. ``extra``: the
    requests that also did table work (a lazy design's), each (its signature, the work's ns): one request each, at
    its signature's latency plus that work's, out of its signature's count."""
    if not signatures:
        return np.zeros(0), np.zeros(0, np.int64)
    per_code = code_costs(cost)
    signatures = dict(signatures)
    for sig, _ in extra:
        signatures[sig] -= 1
    lat = [per_code[list(sig)].sum() for sig in signatures] + [per_code[list(sig)].sum() + ns for sig, ns in extra]
    n = list(signatures.values()) + [1] * len(extra)
    lat, n = np.array(lat), np.array(n, np.int64)
    order = np.argsort(lat, kind="stable")
    return lat[order], n[order]


PERCENTILES = (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))


def latency_summary(latency: np.ndarray, weights: np.ndarray) -> dict:
    """``p50``, ``p99``, ``p999`` (nearest rank: the smallest latency with at least that share of the weight at or
    below it), ``max`` and ``mean`` of ``latency`` (ascending) weighted by ``weights`` (requests, or shares)."""
    cum = np.cumsum(weights)
    at = {
        k: float(latency[min(np.searchsorted(cum, q * cum[-1] * (1 - 1e-12)), latency.size - 1)])
        for k, q in PERCENTILES
    }
    return {**at, "max": float(latency[-1]), "mean": float((latency * weights).sum() / cum[-1])}


def latency_percentiles(signatures: dict, cost: dict, extra=()) -> dict | None:
    """``p50``, ``p99``, ``p999``, ``max`` and ``mean`` (ns) of an episode writer's request latencies (``extra``: see
    :func:`request_latencies`); None when it made no request."""
    lat, n = request_latencies(signatures, cost, extra)
    return latency_summary(lat, n) if n.sum() else None


def mixture_percentiles(signatures: dict, samples: dict, seed: int = 0) -> dict | None:
    """``p50``, ``p99``, ``p999``, ``max`` and ``mean`` of an episode writer's request latencies when each class of
    write has a measured distribution (``samples``: class -> latencies in ns, e.g. write codes, or the classes of
    :func:`gpusim.jobs.host.episodes.write_keys`) instead of one cost: the mixture, weighted by ``signatures``
    (tuple of its writes' classes -> requests), of the signatures' distributions (a request of several writes: the
    sum of draws from each, 4,096 draws, seeded). None when there was no request; a class without samples is a
    ValueError naming it."""
    total = sum(signatures.values())
    if not total:
        return None
    rng = np.random.default_rng(seed)
    values, weights = [], []
    for sig, n in signatures.items():
        missing = [c for c in sig if c not in samples or not len(samples[c])]
        if missing:
            raise ValueError(f"no measured latencies for write class {missing[0]}")
        if len(sig) == 1:
            v = np.asarray(samples[sig[0]], float)
        else:
            v = sum(rng.choice(np.asarray(samples[c], float), 4096) for c in sig)
        values.append(v)
        weights.append(np.full(v.size, n / total / v.size))
    v, w = np.concatenate(values), np.concatenate(weights)
    order = np.argsort(v, kind="stable")
    return latency_summary(v[order], w[order])


def code_name(code: int) -> str:
    """A write code's events: ``copy``, ``pmd_split+copy``."""
    first, second = divmod(code, WRITE_CODE_BASE)
    return WRITE_EVENTS[first] + ("" if second == 0 else f"+{WRITE_EVENTS[second - 1]}")


def _interval(ep, j: int, cost: dict | None, table_ns: np.ndarray) -> dict:
    """Interval ``j`` of an episode's timeline (spec 11.6), its added latency priced at ``cost`` (with a lazy
    design's table work, ``table_ns[j]`` per writer)."""
    out = {
        "t_s": float(ep.t_s[j]),
        "writes": {w: int(ep.writes[j, x]) for x, w in enumerate(WRITERS)},
        "requests": {w: int(ep.requests[j, x]) for x, w in enumerate(WRITERS)},
        "faults": {w: dict(zip(WRITE_EVENTS, ep.events[j, x].tolist())) for x, w in enumerate(WRITERS)},
        "cow_pages": int(ep.cow_pages[j]),
        "child_private_dirty_pages": int(ep.child_private_dirty_pages[j]),
        "dma_parent_diverged": int(ep.dma_parent_diverged[j]),
        "dma_child_aliased": int(ep.dma_child_aliased[j]),
        "added_latency_ns": None,
    }
    if cost is not None:
        per_event = np.array([cost[e] for e in WRITE_EVENTS])
        added = ep.events[j] @ per_event - ep.writes[j] * cost["none"] + table_ns[j]
        out["added_latency_ns"] = {w: float(added[x]) for x, w in enumerate(WRITERS)}
    return out


def episode_report(ep, profile: Profile, stall_ns: float | None) -> dict:
    """An episode's report (spec 11.6): its spec, the timeline, peak COW pages and bytes, the child's private dirty
    bytes at its exit, each writer's request latency percentiles (``write_latency_ns``: the parent's, or the child's
    when only it writes; ``child_write_latency_ns`` when both write) and the fork's stall; latencies None for a
    profile without write costs."""
    cost = {e: c.ns for e, c in profile.write_costs.items()} if profile.write_costs else None
    fork_cost = event_costs(profile)
    extra = [[(sig, priced_events(c, fork_cost)) for sig, c, _, _ in work] for work in ep.table_work]
    table_ns = np.zeros((len(ep.t_s), 2))
    for x, work in enumerate(ep.table_work):
        for (_, ns), (_, _, j, writer) in zip(extra[x], work):
            table_ns[j, writer] += ns
    pct = [None, None] if cost is None else [latency_percentiles(s, cost, e) for s, e in zip(ep.signatures, extra)]
    main = 1 if ep.spec.writer == "child" else 0
    timeline = [_interval(ep, j, cost, table_ns) for j in range(len(ep.t_s))]
    added = None if cost is None else sum(sum(t["added_latency_ns"].values()) for t in timeline)
    lazy = {}
    if ep.table_counts is not None:  # spec 12.8: the table work charged to each writer, and the child's sync
        lazy = {w: priced_events(c, fork_cost) for w, c in ep.table_counts.items()}
        lazy = {"table_ns": {w: lazy[w] for w in WRITERS}, "child_sync_ns": lazy["child_sync"]}
    return {
        "spec": ep.spec.as_dict(),
        "timeline": timeline,
        "cow_pages_peak": ep.cow_pages_peak,
        "cow_bytes_peak": ep.cow_pages_peak * PAGE_SIZE,
        "child_private_dirty_bytes": ep.child_private_dirty_pages_at_exit * PAGE_SIZE,
        "write_latency_ns": pct[main],
        "child_write_latency_ns": pct[1] if ep.spec.writer == "both" else None,
        "added_latency_ns": added,
        "writes": int(ep.writes.sum()),
        "faults": {w: dict(zip(WRITE_EVENTS, ep.events[:, x].sum(axis=0).tolist())) for x, w in enumerate(WRITERS)},
        "domain_pages": ep.domain_pages,
        "stall_ns": stall_ns,
        "profile": profile.name,
        **lazy,
    }


def lock_hold_max_ns(table_stats, variant: str, cost: dict, factor: float = 1.0) -> float:
    """The longest modelled PTE-lock hold over the fork's tables (see the module docstring), each event at ``cost``
    (ns by event); 0 without tables."""
    if len(table_stats.table) == 0:
        return 0.0
    held = set(held_events(variant))
    per_event = np.array([cost[e] if e in held else 0.0 for e in TABLE_EVENTS])
    per_table = table_stats.events @ per_event / np.maximum(table_stats.passes, 1)
    return float(per_table.max()) * factor
