"""Run a sweep: every point x repetition (x fork of a chain or tree) on the chosen backend, written as a Parquet
dataset.

Layout of ``results/<name>/`` (or ``--out``); every file that is not data starts with ``_``, so that the standard
readers (``pyarrow.dataset`` with hive partitioning, ``pyarrow.parquet``, pandas, duckdb, polars) open the directory
as it is:

* ``variant=<v>/<config_hash>-<repetition>.parquet``: the rows of one point and repetition (one row per fork of
  its chain), hive-partitioned by variant (the partitioning schema is stored in the metadata and given explicitly
  when reading: see :func:`gpusim.jobs.sweep.export.load_results`);
* ``_common_metadata``: a Parquet footer holding the dataset's schema and its metadata (keys ``gpusim.*``);
* ``_manifest.jsonl``: one line per finished (point, repetition), appended whole (fsynced) after its file was
  written atomically (to a temporary name, then renamed): the file, its rows, bytes and CRC-32, and its errors;
* ``_lock``: held (``flock``) by the sweep writing the directory; a second one refuses;
* ``_plots/``: what ``gpusim plot`` draws.

Resuming: a run reads the manifest and counts a (point, repetition) as done when its record's file is there with the
recorded size and a Parquet footer giving the recorded rows (``verify=True``: the CRC-32 too); anything else is run
again under the same name, so no row is lost or duplicated. A point that raises is recorded as a row with
``outcome = "error"`` and its message; the sweep goes on, and the next run retries it (the manifest keeps the failed
record as history). Malformed manifest lines (a write cut short) are removed by the next run, which counts them.
A directory belongs to one sweep (its name and :func:`gpusim.jobs.sweep.spec.sweep_hash` in ``_common_metadata``):
another sweep into it is refused before anything is written. Tasks run on an executor
(:mod:`gpusim.jobs.sweep.executors`: in this process, a local pool of processes, or Ray); only the driver writes the
manifest.
"""

from __future__ import annotations

import fcntl
import json
import os
import zlib
from pathlib import Path

import pyarrow.parquet as pq

from gpusim.jobs.sweep.executors import InlineExecutor
from gpusim.jobs.sweep.export import LEGACY_SCHEMA_FILE, dataset_schema, read_schema, write_schema
from gpusim.jobs.sweep.spec import Point, SweepFile

MANIFEST = "_manifest.jsonl"
LEGACY_MANIFEST = "manifest.jsonl"  # before schema 3
LOCK = "_lock"
RECORD_TYPES = {
    "config_hash": str,
    "repetition": int,
    "file": str,
    "rows": int,
    "bytes": int,
    "crc32": int,
    "errors": int,
}


class SweepLocked(ValueError):
    """Another sweep is writing the output directory."""


class OtherSweep(ValueError):
    """The output directory holds another sweep's results."""


def file_record(out: Path, rel: str) -> dict:
    """What the manifest keeps to verify a written file: its rows, bytes and CRC-32."""
    data = (out / rel).read_bytes()
    return {"rows": pq.read_metadata(out / rel).num_rows, "bytes": len(data), "crc32": zlib.crc32(data)}


def record_ok(out: Path, rec: dict, verify: bool) -> bool:
    """Whether ``rec``'s file is there as recorded: its size, a readable footer with its rows (and its CRC-32)."""
    path = out / rec["file"]
    try:
        if path.stat().st_size != rec["bytes"] or pq.read_metadata(path).num_rows != rec["rows"]:
            return False
        return not verify or zlib.crc32(path.read_bytes()) == rec["crc32"]
    except (OSError, ValueError, KeyError):  # missing, truncated (pyarrow raises ArrowInvalid, a ValueError)
        return False


def parse_record(line: str) -> dict | None:
    """A manifest line as a record, or None when it is not one (cut short, or not of the shape written)."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(d, dict) or any(
        not isinstance(d.get(k), t) or isinstance(d.get(k), bool) for k, t in RECORD_TYPES.items()
    ):
        return None
    return d


class SweepRunner:
    """Runs the points of a sweep into ``out`` (see the module docstring)."""

    def __init__(self, spec: SweepFile, points: list[Point], out: str | Path, source_text: str = ""):
        self.spec, self.points, self.out = spec, points, Path(out)
        self.schema = dataset_schema(spec, points, source_text)
        self.manifest = self.out / MANIFEST
        self.malformed = 0  # manifest lines skipped by the last done()
        self.redone = 0  # records whose file failed verification in the last done()

    def records(self) -> list[dict]:
        """The manifest's records in order (malformed lines skipped and counted in ``malformed``)."""
        self.malformed = 0
        if not self.manifest.exists():
            return []
        out = []
        for line in self.manifest.read_text(errors="replace").splitlines():
            rec = parse_record(line)
            if rec is None:
                self.malformed += line.strip() != ""
            else:
                out.append(rec)
        return out

    def keys(self) -> set[tuple[str, int]]:
        """This sweep's (point, repetition) pairs."""
        return {(p.config_hash, rep) for p in self.points for rep in range(self.spec.repeat)}

    def done(self, verify: bool = False) -> set[tuple[str, int]]:
        """This sweep's (point, repetition) pairs finished without error whose files verify (see the module
        docstring)."""
        last, mine = {}, self.keys()
        for rec in self.records():
            if (rec["config_hash"], rec["repetition"]) in mine:
                last[(rec["config_hash"], rec["repetition"])] = rec
        out, self.redone = set(), 0
        for key, rec in last.items():
            if not record_ok(self.out, rec, verify):
                self.redone += 1
            elif rec["errors"] == 0:
                out.add(key)
        return out

    def tasks(self, verify: bool = False) -> list[tuple[Point, int]]:
        done = self.done(verify)
        return [(p, rep) for p in self.points for rep in range(self.spec.repeat) if (p.config_hash, rep) not in done]

    def migrate(self) -> None:
        """A directory written before schema 3 (``manifest.jsonl``, ``schema.arrow``): its files take their names."""
        old = self.out / LEGACY_MANIFEST
        if old.exists() and not self.manifest.exists():
            lines = [parse_legacy(line, self.out) for line in old.read_text(errors="replace").splitlines()]
            self.manifest.write_text("".join(json.dumps(d) + "\n" for d in lines if d))
            old.unlink()
        (self.out / LEGACY_SCHEMA_FILE).unlink(missing_ok=True)

    def check_owner(self) -> None:
        """OtherSweep when the directory holds another sweep's results: another name, or the same name with other
        contents (:func:`gpusim.jobs.sweep.spec.sweep_hash`; a directory written before the hash was kept is checked by
        name)."""
        try:
            meta = read_schema(self.out).metadata or {}
        except (OSError, ValueError):  # nothing there yet (or only a damaged footer, rewritten by this run)
            return
        mine = self.schema.metadata
        name, h = (meta.get(b"gpusim.sweep", b"").decode(), meta.get(b"gpusim.sweep_hash", b"").decode())
        my_name, my_hash = mine[b"gpusim.sweep"].decode(), mine[b"gpusim.sweep_hash"].decode()
        if name != my_name or (h and h != my_hash):
            what = f"the sweep '{name}'" + (" with other points or keys" if name == my_name else "")
            raise OtherSweep(
                f"{self.out}: holds the results of {what} (sweep hash {h or 'not recorded'}, this one {my_hash}); "
                "give this sweep another --out (out=), or remove that directory to start again"
            )

    def repair_manifest(self) -> int:
        """Rewrite the manifest without its malformed lines (atomically); returns how many there were."""
        records = self.records()
        bad = self.malformed
        if bad:
            tmp = self.manifest.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
            with open(tmp, "w") as f:
                f.write("".join(json.dumps(r) + "\n" for r in records))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.manifest)
        return bad

    def lock(self):
        """Hold the directory's lock (an open file; closing it releases the lock); SweepLocked when taken."""
        self.out.mkdir(parents=True, exist_ok=True)
        f = open(self.out / LOCK, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise SweepLocked(
                f"{self.out}: another sweep is writing this directory (its lock {LOCK} is held)"
            ) from None
        return f

    def run(self, progress=None, executor=None, verify: bool = False, announce=None) -> dict:
        """Run what is not done yet on ``executor`` (default: in this process, one task at a time), once the
        directory is this sweep's (:meth:`check_owner`) and no other sweep writes it (:meth:`lock`).
        ``announce(tasks)`` is called once the run is sure to go ahead, ``progress(done, total, point)`` after each
        task. Returns the counts: ``total``, ``ran``, ``skipped`` (done before), ``errors`` (tasks of this run that
        failed), ``failed`` (pairs not done at the end), ``malformed`` manifest lines (removed), ``redone`` files
        that failed verification."""
        with self.lock():
            self.check_owner()
            self.migrate()
            malformed = self.repair_manifest()
            write_schema(self.out, self.schema)
            todo = self.tasks(verify)
            if announce:
                announce(len(todo))
            total = len(self.points) * self.spec.repeat
            state = {"done": total - len(todo), "errors": 0}
            with open(self.manifest, "ab") as manifest:
                if manifest.tell() and (self.manifest.read_bytes()[-1:] != b"\n"):
                    manifest.write(b"\n")  # a line cut short stays a line of its own

                def on_done(point, rec):
                    rec = {**rec, **file_record(self.out, rec["file"])}
                    keys = ("config_hash", "repetition", "file", "rows", "bytes", "crc32", "errors", "error")
                    manifest.write((json.dumps({k: rec.get(k) for k in keys}) + "\n").encode())
                    manifest.flush()
                    os.fsync(manifest.fileno())
                    state["done"] += 1
                    state["errors"] += rec["errors"] > 0
                    if progress:
                        progress(state["done"], total, point)

                (executor or InlineExecutor()).run(todo, self.out, self.schema.serialize().to_pybytes(), on_done)
            redone = self.redone
            failed = total - len(self.done())
        return {
            "total": total,
            "ran": len(todo),
            "skipped": total - len(todo),
            "errors": state["errors"],
            "failed": failed,
            "malformed": malformed,
            "redone": redone,
        }


def parse_legacy(line: str, out: Path) -> dict | None:
    """A line of a pre-3 manifest (config_hash, repetition, file) as a record, verified from its file as it is."""
    try:
        d = json.loads(line)
        rec = {"config_hash": d["config_hash"], "repetition": d["repetition"], "file": d["file"]}
        outcome = pq.read_table(out / rec["file"], columns=["outcome"]).column("outcome").to_pylist()
        errors = sum(o == "error" for o in outcome)
        return {**rec, **file_record(out, rec["file"]), "errors": errors, "error": None}
    except (json.JSONDecodeError, TypeError, KeyError, OSError, ValueError):
        return None
