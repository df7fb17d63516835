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
from pathlib import Path

from gpusim.sweep.executors import InlineExecutor
from gpusim.sweep.export import dataset_schema, write_schema
from gpusim.sweep.spec import Point, SweepFile


class SweepRunner:
    """Runs the points of a sweep into ``out`` (see the module docstring)."""

    def __init__(self, spec: SweepFile, points: list[Point], out: str | Path, source_text: str = ""):
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
            except json.JSONDecodeError:  # a line cut short by a kill: not done
                continue
            if (self.out / d["file"]).exists():
                out.add((d["config_hash"], d["repetition"]))
        return out

    def tasks(self) -> list[tuple[Point, int]]:
        done = self.done()
        return [(p, rep) for p in self.points for rep in range(self.spec.repeat) if (p.config_hash, rep) not in done]

    def run(self, progress=None, executor=None) -> dict:
        """Run what is not done yet on ``executor`` (default: in this process, one task at a time).
        ``progress(done, total, point)`` is called after each task."""
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
