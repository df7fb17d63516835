"""Run a sweep: every point x repetition (x fork of a chain or tree) on the chosen backend, written as a Parquet
dataset.

Layout of ``results/<name>/`` (or ``--out``):

* ``schema.arrow``: an empty Arrow IPC file holding the dataset's schema and its metadata (keys ``gpusim.*``);
* ``variant=<v>/<config_hash>-<repetition>.parquet``: the rows of one point and repetition (one row per fork of
  its chain), hive-partitioned by variant (the partitioning schema is stored in the metadata and given explicitly
  when reading: see :func:`gpusim.sweep.export.load_results`);
* ``manifest.jsonl``: one line per finished (point, repetition), appended after its file was written atomically
  (written to a temporary name, then renamed).

Resuming: a run lists the manifest and skips what it names; a file written but not yet in the manifest (a run
killed in between) is rewritten under the same name, so no row is lost or duplicated. A point that raises is
recorded as a row with ``outcome = "error"`` and its message, and the sweep goes on. Tasks run on an executor
(:mod:`gpusim.sweep.executors`: in this process, a local pool of processes, or Ray); only the driver writes the
manifest.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from gpusim.sweep.spec import Point, SweepFile


def point_seed(seed: int, config_hash: str, repetition: int) -> np.random.SeedSequence:
    """The workload seed of one point and repetition: independent of the order in which points run."""
    return np.random.SeedSequence([seed, int(config_hash, 16) & ((1 << 63) - 1), repetition])


def run_point(point: Point, repetition: int) -> list[dict]:
    """The rows of one point and repetition: one per fork (``fork.chain`` forks per process, over
    ``fork.generations`` generations)."""
    import gpusim
    from gpusim.costmodel import load_profile
    from gpusim.workloads import build_workload
    cfg = point.config
    profile = load_profile(cfg.profile)
    ss = point_seed(cfg.seed, point.config_hash, repetition)
    base = {"config_hash": point.config_hash, "repetition": repetition,
            "seed": int(ss.generate_state(1, np.uint64)[0] & np.uint64((1 << 63) - 1)), "error": None}
    t0 = time.perf_counter()
    try:
        space, oracle, inject = build_workload(cfg.workload, cfg.fork.variant, ss)
    except Exception as e:                                  # noqa: BLE001 - recorded, the sweep goes on
        return [dict(base, fork_index=0, outcome="error", error=f"workload: {type(e).__name__}: {e}")]
    build_s = time.perf_counter() - t0
    oracle = cfg.fork.oracle or oracle or "never"
    inject = cfg.fork.inject if cfg.fork.inject is not None else (inject or [])
    rows = []
    # A breadth-first tree of forks: each process of a generation forks `chain` times in a row; its children are
    # the next generation. All processes share one memory, which each fork returns anew.
    procs, memory = [space.mm], space.memory
    level, seq = [0], 0
    for gen in range(cfg.fork.generations):
        next_level = []
        for i in level:
            for _ in range(cfg.fork.chain):
                try:
                    r = gpusim.fork(type(space)(procs[i], memory), cfg.fork.variant, backend=cfg.backend,
                                    oracle=oracle, inject=inject, fork_seq=seq, check=cfg.check)
                except Exception as e:                      # noqa: BLE001
                    rows.append(dict(base, fork_index=seq, generation=gen, outcome="error",
                                     error=f"fork: {type(e).__name__}: {e}"))
                    return rows
                rows.append(fork_row(base, seq, gen, r, build_s, cfg.fork.variant, profile))
                seq += 1
                if r.outcome != "ok":
                    return rows
                procs[i], memory = r.parent.mm, r.memory
                procs.append(r.child)
                next_level.append(len(procs) - 1)
        level = next_level
    return rows


def fork_row(base: dict, seq: int, gen: int, r, build_s: float, variant: str, profile) -> dict:
    from gpusim.costmodel import latency
    lat = latency(r.counts, variant, profile, r.table_stats)
    row = dict(base, fork_index=seq, generation=gen, outcome=r.outcome, backend=r.backend, nr_ptes=r.nr_ptes,
               engine_wall_s=r.engine_wall_s, build_wall_s=build_s,
               ptes_per_s=r.nr_ptes / r.engine_wall_s if r.engine_wall_s > 0 else None,
               bytes_per_pte=r.bytes_per_pte(), latency_ns=lat["latency_ns"],
               lock_hold_max_ns=lat["lock_hold_max_ns"], invariants_ok=r.invariants.ok,
               invariants_checked=r.invariants.checked, invariant_violations="; ".join(r.invariants.violations),
               oops=json.dumps(r.oops) if r.oops else None, enomem=json.dumps(r.enomem) if r.enomem else None,
               digest=r.digest)
    row.update({f"latency.{c}_ns": v for c, v in lat["latency_breakdown_ns"].items()})
    row.update({f"count.{n}": v for n, v in r.counts.items()})
    row.update({f"child_rss.{n}": v for n, v in r.child_rss.items()})
    return row


class SweepRunner:
    """Runs the points of a sweep into ``out`` (see the module docstring)."""

    def __init__(self, spec: SweepFile, points: list[Point], out: str | Path, source_text: str = ""):
        from gpusim.sweep.export import dataset_schema
        self.spec, self.points, self.out = spec, points, Path(out)
        self.schema = dataset_schema(spec, points, source_text)
        self.manifest = self.out / "manifest.jsonl"

    def done(self) -> set[tuple[str, int]]:
        if not self.manifest.exists():
            return set()
        out = set()
        for line in self.manifest.read_text().splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:                    # a line cut short by a kill: not done
                continue
            if (self.out / d["file"]).exists():
                out.add((d["config_hash"], d["repetition"]))
        return out

    def tasks(self) -> list[tuple[Point, int]]:
        done = self.done()
        return [(p, rep) for p in self.points for rep in range(self.spec.repeat)
                if (p.config_hash, rep) not in done]

    def run(self, progress=None, executor=None) -> dict:
        """Run what is not done yet on ``executor`` (default: in this process, one task at a time).
        ``progress(done, total, point)`` is called after each task."""
        from gpusim.sweep.executors import InlineExecutor
        from gpusim.sweep.export import write_schema
        self.out.mkdir(parents=True, exist_ok=True)
        write_schema(self.out, self.schema)
        todo = self.tasks()
        total = len(self.points) * self.spec.repeat
        state = {"done": total - len(todo), "errors": 0}
        with open(self.manifest, "a") as manifest:
            def on_done(point, rec):
                manifest.write(json.dumps({k: rec[k] for k in ("config_hash", "repetition", "file")}) + "\n")
                manifest.flush()
                os.fsync(manifest.fileno())
                state["done"] += 1
                state["errors"] += rec["errors"]
                if progress:
                    progress(state["done"], total, point)

            (executor or InlineExecutor()).run(todo, self.out, self.schema.serialize().to_pybytes(), on_done)
        return {"total": total, "ran": len(todo), "skipped": total - len(todo), "errors": state["errors"]}
