"""One task of a sweep: a point and repetition run into result rows (what every executor runs).

The workload is built from a seed derived from the sweep's seed, the point's config hash (of what the draws depend
on: not the backend, cost profile or checks) and the repetition (:func:`point_seed`), so a task gives the same rows
wherever and whenever it runs, and the same sweep forks the same address spaces on every backend. Then the forks of
the point's ``fork.chain`` and ``fork.generations`` run in order, each row carrying the counts, modelled latency,
invariant status and state digest of one fork (:func:`fork_row`).
"""

from __future__ import annotations

import json
import time

import numpy as np

from gpusim.analysis.costmodel import latency, load_profile, write_latency
from gpusim.api import fork, fork_episode, write_phase
from gpusim.base import backend as B
from gpusim.engines.writes import WRITERS, generated_steps
from gpusim.inputs.workloads import GENERATED_KINDS, build_workload, fork_memory_bytes, region_space
from gpusim.jobs.sweep.export import EPISODE_PERCENTILES, EPISODE_TOTALS
from gpusim.jobs.sweep.spec import Point, config_hash
from gpusim.model.state import AddressSpace
from gpusim.model.variants import get_variant
from gpusim.stream import fork_streamed, stream_rows


def point_seed(seed: int, config_hash: str, repetition: int) -> np.random.SeedSequence:
    """The workload seed of one point and repetition: independent of the order in which points run."""
    return np.random.SeedSequence([seed, int(config_hash, 16) & ((1 << 63) - 1), repetition])


def chunk_rows(point: Point) -> int | None:
    """Tables per chunk when the point's fork is streamed (its space is larger than one chunk; a single fork
    without an oracle or injections), else None (:func:`gpusim.stream.stream_rows`: raises
    :class:`~gpusim.base.machine.NotEnoughMemory` when it fits neither way)."""
    cfg = point.config
    chained = cfg.fork.chain > 1 or cfg.fork.generations > 1
    what = f"point {point.config_hash} (workload {cfg.workload.kind})"
    return stream_rows(cfg.workload, what, cfg.fork.oracle, cfg.fork.inject, chained)


def run_point(point: Point, repetition: int) -> list[dict]:
    """The rows of one point and repetition: one per fork (``fork.chain`` forks per process, over
    ``fork.generations`` generations); a streamed fork's row has the plan's time as its ``build_wall_s`` (its
    chunks are built as it goes)."""
    cfg = point.config
    profile = load_profile(cfg.profile)
    ss = point_seed(cfg.seed, config_hash(cfg, draws=True), repetition)
    base = {
        "config_hash": point.config_hash,
        "repetition": repetition,
        "seed": int(ss.generate_state(1, np.uint64)[0] & np.uint64((1 << 63) - 1)),
        "error": None,
    }
    t0 = time.perf_counter()
    try:
        per_chunk = chunk_rows(point)
        space, oracle, inject = (
            (region_space(cfg.workload, cfg.fork.variant, ss), None, None)
            if per_chunk
            else build_workload(cfg.workload, cfg.fork.variant, ss, build_backend(cfg))
        )
    except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
        return [dict(base, fork_index=0, outcome="error", error=f"workload: {type(e).__name__}: {e}")]
    build_s = time.perf_counter() - t0
    if per_chunk:
        return [run_streamed(point, space, per_chunk, base, build_s, profile)]
    oracle = cfg.fork.oracle or oracle or "never"
    inject = cfg.fork.inject if cfg.fork.inject is not None else (inject or [])
    return run_tree(point, space, oracle, inject, base, build_s, profile)


def sweep_backend(cfg) -> str:
    """The engine of a sweep's forks: ``auto`` resolved once (not by each space's size), the reference for a variant
    whose fork the fast engines do not run (odf-cowpte)."""
    if cfg.backend == "auto" and not get_variant(cfg.fork.variant).compiled:
        return "reference"
    return B.resolve(cfg.backend)


def build_backend(cfg) -> str:
    """Where a point's workload is generated: in device memory when it forks on ``cuda``, nothing reads its states
    on the host (no invariant check, write phase or injections: :func:`gpusim.api.refuse_resident`) and the fork
    fits in the card's free memory, so that the state never crosses PCIe; otherwise in host memory (by the CPU's
    generator)."""
    on_card = B.resolve(cfg.backend) == "cuda" and not cfg.check and cfg.fork.writes is None and not cfg.fork.inject
    on_card = on_card and cfg.fork.episode is None
    if not on_card or cfg.workload.kind not in GENERATED_KINDS:
        return "cpu"
    need = fork_memory_bytes(cfg.workload)
    return "cuda" if need is not None and need <= B.device_free_bytes() else "cpu"


def run_tree(point: Point, space: AddressSpace, oracle, inject, base: dict, build_s: float, profile) -> list[dict]:
    """The rows of a point's forks: a breadth-first tree, each process of a generation forking ``chain`` times
    in a row, its children the next generation. All processes share one memory, which each fork returns anew."""
    cfg = point.config
    rows = []
    procs, memory = [space.mm], space.memory
    level, seq = [0], 0
    for gen in range(cfg.fork.generations):
        next_level = []
        for i in level:
            for _ in range(cfg.fork.chain):
                try:
                    r = fork(
                        space if seq == 0 else AddressSpace.of_fork(procs[i], memory),
                        cfg.fork.variant,
                        backend=sweep_backend(cfg),  # one engine for the whole sweep, whatever the space's size
                        oracle=oracle,
                        inject=inject,
                        fork_seq=seq,
                        check=cfg.check,
                    )
                except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
                    err = f"fork: {type(e).__name__}: {e}"
                    return [*rows, dict(base, fork_index=seq, generation=gen, outcome="error", error=err)]
                if cfg.fork.writes is not None and r.outcome == "ok":
                    try:
                        r.write_phase = write_phase(r, point_writes(cfg.fork.writes, r, base["seed"]), cfg.check)
                    except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
                        err = f"writes: {type(e).__name__}: {e}"
                        return [*rows, dict(base, fork_index=seq, generation=gen, outcome="error", error=err)]
                if cfg.fork.episode is not None and r.outcome == "ok":
                    try:
                        r.episode = fork_episode(r, cfg.fork.episode, cfg.check, profile)
                    except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
                        err = f"episode: {type(e).__name__}: {e}"
                        return [*rows, dict(base, fork_index=seq, generation=gen, outcome="error", error=err)]
                rows.append(fork_row(base, seq, gen, r, build_s, cfg.fork.variant, profile))
                seq += 1
                if r.outcome != "ok":
                    return rows
                procs[i], memory = r.parent.mm, r.memory
                procs.append(r.child)
                next_level.append(len(procs) - 1)
        level = next_level
    return rows


def point_writes(writes, r, seed: int):
    """The write phase of a point: its notation, or the steps drawn (by the repetition's seed) from what the
    parent and the child map after the fork."""
    if isinstance(writes, str):
        return writes
    rng = np.random.default_rng([seed, 11])  # 11: the write phase's stream of the seed
    fractions = {"parent": writes.parent, "child": writes.child}
    return generated_steps(r.parent.mm, r.child, fractions, writes.order, writes.child_exits, rng)


def write_columns(r, profile) -> dict:
    """The write phase's columns of a row (nulls without one)."""
    wp = r.write_phase
    if wp is None:
        return {}
    out = {f"write.{w}.{e}": n for w, counts in wp.counts.items() for e, n in counts.items()}
    out.update({f"dma.{k}": v for k, v in wp.dma.items()})
    lat = write_latency(wp.counts, profile, wp.table_counts)
    out["write_latency_ns"] = lat["latency_ns"]
    if "child_sync_ns" in lat:  # a lazy design's (spec 12.8)
        out.update({f"write.table_ns.{w}": lat["latency_breakdown_ns"][w]["table"] for w in WRITERS})
        out["write.child_sync_ns"] = lat["child_sync_ns"]
    out["write_wall_s"] = wp.wall_s
    out["write_invariants_ok"] = None if wp.invariants is None else wp.invariants.ok
    return out


def episode_columns(r) -> dict:
    """The episode's columns of a row (nulls without one): totals, latency percentiles, and the timeline as lists."""
    ep = r.episode
    if ep is None:
        return {}
    rep = ep.report
    out = {f"episode.{k}": rep[k] for k in EPISODE_TOTALS}
    pct = rep["write_latency_ns"] or {}
    out.update({f"episode.write_latency_{q}_ns": pct.get(q) for q in EPISODE_PERCENTILES})
    out.update({f"episode.faults.{w}.{e}": n for w, per in rep["faults"].items() for e, n in per.items()})
    tl = rep["timeline"]
    out["episode.timeline.t_s"] = [t["t_s"] for t in tl]
    out["episode.timeline.writes"] = [sum(t["writes"].values()) for t in tl]
    out["episode.timeline.copy_faults"] = [sum(f["copy"] for f in t["faults"].values()) for t in tl]
    for k in ("cow_pages", "child_private_dirty_pages", "dma_parent_diverged"):
        out[f"episode.timeline.{k}"] = [t[k] for t in tl]
    added = [t["added_latency_ns"] for t in tl]
    out["episode.timeline.added_latency_ns"] = [None if a is None else sum(a.values()) for a in added]
    if "table_ns" in rep:  # a lazy design's (spec 12.8)
        out.update({f"episode.table_ns.{w}": ns for w, ns in rep["table_ns"].items()})
        out["episode.child_sync_ns"] = rep["child_sync_ns"]
    out["episode.wall_s"] = ep.wall_s
    out["episode.invariants_ok"] = None if ep.invariants is None else ep.invariants.ok
    return out


def run_streamed(point: Point, space, per_chunk: int, base: dict, build_s: float, profile) -> dict:
    """The row of a point's streamed fork (no write phase or episode: refused as an error row)."""
    cfg = point.config
    if cfg.fork.writes is not None or cfg.fork.episode is not None:
        what = "writes: a streamed fork has no write phase"
        if cfg.fork.episode is not None:
            what = "episode: a streamed fork keeps no state for an episode"
        err = f"{what} (make the workload smaller than one chunk)"
        return dict(base, fork_index=0, generation=0, outcome="error", error=err)
    try:
        r = fork_streamed(space, cfg.fork.variant, cfg.backend, check=cfg.check, chunk_rows=per_chunk)
    except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
        return dict(base, fork_index=0, generation=0, outcome="error", error=f"fork: {type(e).__name__}: {e}")
    return fork_row(base, 0, 0, r, build_s, cfg.fork.variant, profile)


def fork_row(base: dict, seq: int, gen: int, r, build_s: float, variant: str, profile) -> dict:
    lat = latency(r.counts, variant, profile, r.table_stats, warm=seq > 0)  # after a fork of its pages
    row = dict(
        base,
        fork_index=seq,
        generation=gen,
        outcome=r.outcome,
        backend=r.backend,
        nr_ptes=r.nr_ptes,
        engine_wall_s=r.engine_wall_s,
        python_tables=r.python_tables,
        build_wall_s=build_s,
        ptes_per_s=r.nr_ptes / r.engine_wall_s if r.engine_wall_s > 0 else None,
        bytes_per_pte=r.bytes_per_pte(),
        latency_ns=lat["latency_ns"],
        latency_low_ns=lat["latency_low_ns"],
        latency_high_ns=lat["latency_high_ns"],
        lock_hold_max_ns=lat["lock_hold_max_ns"],
        invariants_ok=r.invariants.ok,
        invariants_checked=r.invariants.checked,
        invariant_violations="; ".join(r.invariants.violations),
        oops=json.dumps(r.oops) if r.oops else None,
        enomem=json.dumps(r.enomem) if r.enomem else None,
        digest=r.digest,
    )
    row.update({f"latency.{c}_ns": v for c, v in lat["latency_breakdown_ns"].items()})
    row.update({f"count.{n}": v for n, v in r.counts.items()})
    row.update({f"child_rss.{n}": v for n, v in r.child_rss.items()})
    row["page_table_bytes.parent"], row["page_table_bytes.child"] = r.page_table_bytes()
    row.update(write_columns(r, profile))
    row.update(episode_columns(r))
    return row
