"""The Arrow schema of a sweep's dataset, its metadata, writing rows and reading a dataset back.

One tidy row per (point, repetition, fork of the chain). Columns: the point's config flattened to dotted names
(``workload.size``, ``fork.variant``, ...; lists as JSON), the row key (``config_hash``, ``repetition``,
``fork_index``), ``seed``, ``outcome`` and ``error``, ``backend`` and ``device``, ``nr_ptes``, wall times, PTEs/s,
bytes/PTE, ``latency_ns`` with its band (``latency_low_ns``, ``latency_high_ns``: null for a profile without one),
``lock_hold_max_ns``, ``latency.<component>_ns``, ``count.<event>`` for every count,
``child_rss.<counter>``, invariant status, oops / ENOMEM details and the state digest. The dataset is partitioned
by ``variant`` (hive layout, explicit partitioning schema). Metadata keys start with ``gpusim.``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from gpusim.analysis.costmodel import COMPONENTS, load_profile
from gpusim.base import checkargs
from gpusim.base.backend import gpu_name, resolve
from gpusim.base.machine import cpu_description
from gpusim.engines.writes import DMA_FIELDS, WRITE_EVENTS, WRITERS
from gpusim.jobs.sweep.spec import sweep_hash
from gpusim.kernels.flags import COUNT_NAMES, RSS_NAMES

# 2: host_tables; 3: non-data files prefixed with "_" (_common_metadata, _manifest.jsonl); 4: the write phase's
# columns (older files read them as null); 5: host_tables named python_tables (the tables the Python loop copied);
# 6: the latency band and the frame-break count; 7: the episode's columns (older files read them as null); 8: the
# lazy fork designs' count columns (spec 12.8; older files read them as null); 9: the page tables each process
# holds, and the table work of the write phase and the episode per writer and the child's sync (spec 12.8)
SCHEMA_VERSION = "9"
# columns an older schema wrote under another name: read under the new one (a dataset resumed across versions
# holds both; each row takes the name its file has)
RENAMED_COLUMNS = {"host_tables": "python_tables"}
SCHEMA_FILE = "_common_metadata"  # a Parquet footer: the dataset's schema (partition column included) and metadata
LEGACY_SCHEMA_FILE = "schema.arrow"  # before schema 3: an empty Arrow IPC file
PARTITIONING = pa.schema([("variant", pa.string())])


def _fixed_fields() -> list[pa.Field]:
    f64, i64, s, b = pa.float64(), pa.int64(), pa.string(), pa.bool_()
    fields = [
        ("config_hash", s),
        ("repetition", i64),
        ("fork_index", i64),
        ("generation", i64),
        ("seed", i64),
        ("outcome", s),
        ("error", s),
        ("backend", s),
        ("device", s),
        ("nr_ptes", i64),
        ("engine_wall_s", f64),
        ("build_wall_s", f64),
        ("python_tables", i64),
        ("ptes_per_s", f64),
        ("bytes_per_pte", f64),
        ("latency_ns", f64),
        ("latency_low_ns", f64),
        ("latency_high_ns", f64),
        ("lock_hold_max_ns", f64),
    ]
    fields += [(f"latency.{c}_ns", f64) for c in COMPONENTS]
    fields += [(f"count.{n}", i64) for n in COUNT_NAMES]
    fields += [(f"child_rss.{n}", i64) for n in RSS_NAMES]
    # the write phase after the fork (null without one): counts per writer, the DMA view, latency, invariants
    fields += [(f"write.{w}.{e}", i64) for w in WRITERS for e in WRITE_EVENTS]
    fields += [(f"dma.{k}", i64) for k in DMA_FIELDS]
    fields += [("write_latency_ns", f64), ("write_wall_s", f64), ("write_invariants_ok", b)]
    fields += [(f"{x}.table_ns.{w}", f64) for x in ("write", "episode") for w in WRITERS]
    fields += [("write.child_sync_ns", f64), ("episode.child_sync_ns", f64)]
    fields += [("page_table_bytes.parent", i64), ("page_table_bytes.child", i64)]
    # the episode after the fork (spec 11.6; null without one): totals, the parent's latency percentiles, faults per
    # writer and event, and the timeline, one list per quantity (an element per interval)
    fields += [(f"episode.{k}", f64 if k.endswith("_ns") else i64) for k in EPISODE_TOTALS]
    fields += [(f"episode.write_latency_{q}_ns", f64) for q in EPISODE_PERCENTILES]
    fields += [(f"episode.faults.{w}.{e}", i64) for w in WRITERS for e in WRITE_EVENTS]
    fields += [(f"episode.timeline.{k}", pa.list_(t)) for k, t in _timeline_fields(f64, i64)]
    fields += [("episode.wall_s", f64), ("episode.invariants_ok", b)]
    fields += [
        ("invariants_ok", b),
        ("invariants_checked", b),
        ("invariant_violations", s),
        ("oops", s),
        ("enomem", s),
        ("digest", s),
    ]
    return [pa.field(n, t) for n, t in fields]


# An episode's totals and the percentiles of the parent's request latency, as dataset columns (``episode.KEY``)
EPISODE_TOTALS = (
    "cow_pages_peak",
    "cow_bytes_peak",
    "child_private_dirty_bytes",
    "writes",
    "added_latency_ns",
    "stall_ns",
)
EPISODE_PERCENTILES = ("p50", "p99", "p999", "max")


def _timeline_fields(f64, i64) -> list:
    names = ("writes", "copy_faults", "cow_pages", "child_private_dirty_pages", "dma_parent_diverged")
    return [("t_s", f64), *((k, i64) for k in names), ("added_latency_ns", f64)]


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def param_values(point) -> dict:
    return flatten(point.config.model_dump(mode="json", exclude={"name", "description", "repeat"}))


def _arrow_type(values: list) -> pa.DataType:
    vals = [v for v in values if v is not None]
    if vals and all(isinstance(v, bool) for v in vals):
        return pa.bool_()
    if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return pa.int64()
    if vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return pa.float64()
    return pa.string()


def _cell(v, t: pa.DataType):
    if v is None:
        return None
    if t == pa.string():
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    if t == pa.float64():
        return float(v)
    return v


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("gpusim", "numpy", "numba", "numba-cuda", "cupy-cuda12x", "cupy-cuda13x", "pyarrow", "pydantic"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def device_info(backend: str) -> dict:
    info = {"cpu": cpu_description(), "gpu": "", "driver": ""}
    try:
        if resolve(backend) == "cuda":
            import cupy

            info["gpu"] = gpu_name()
            info["driver"] = str(cupy.cuda.runtime.driverGetVersion())
    except Exception:  # noqa: BLE001 - metadata only
        pass
    return info


def dataset_schema(spec, points, source_text: str = "") -> pa.Schema:
    """The schema of a sweep's rows (partition column ``variant`` included) with its ``gpusim.*`` metadata."""
    params = [param_values(p) for p in points]
    keys = sorted({k for d in params for k in d})
    fields = [pa.field(k, _arrow_type([d.get(k) for d in params])) for k in keys]
    fixed = _fixed_fields()
    names = {f.name for f in fixed}
    fields = [f for f in fields if f.name not in names] + fixed + [pa.field("variant", pa.string())]
    dev = device_info(spec.backend)
    profiles = sorted({p.config.profile or "" for p in points})
    meta = {
        "gpusim.schema_version": SCHEMA_VERSION,
        "gpusim.version": library_versions().get("gpusim", "unknown"),
        "gpusim.git_commit": git_commit(),
        "gpusim.library_versions": json.dumps(library_versions(), sort_keys=True),
        "gpusim.cpu": dev["cpu"],
        "gpusim.gpu": dev["gpu"],
        "gpusim.driver": dev["driver"],
        "gpusim.kernel": platform.release(),
        "gpusim.sweep": spec.name,
        "gpusim.sweep_hash": sweep_hash(spec),
        "gpusim.sweep_file": source_text,
        "gpusim.profile": json.dumps(
            {name or "default": load_profile(name or None).model_dump(mode="json") for name in profiles}, sort_keys=True
        ),
        "gpusim.partitioning": json.dumps([f.name for f in PARTITIONING]),
        "gpusim.row_key": json.dumps(["config_hash", "repetition", "fork_index"]),
    }
    return pa.schema(fields, metadata={k.encode(): v.encode() for k, v in meta.items()})


def file_schema(schema: pa.Schema) -> pa.Schema:
    """The schema of the Parquet files: the dataset's without the partition columns."""
    return pa.schema([f for f in schema if f.name not in PARTITIONING.names], metadata=schema.metadata)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_schema(out: Path, schema: pa.Schema) -> None:
    _atomic_write(Path(out) / SCHEMA_FILE, lambda tmp: pq.write_metadata(schema, tmp))


class DamagedResults(ValueError):
    """A results directory with files that cannot be read."""


class NotResults(FileNotFoundError, ValueError):
    """A path that holds no gpusim dataset (a FileNotFoundError, and a ValueError as every bad argument of the
    Python API is)."""


def read_schema(root: Path) -> pa.Schema:
    """The dataset's schema with its metadata (``_common_metadata``, or a pre-3 directory's ``schema.arrow``)."""
    if (root / SCHEMA_FILE).is_file():
        return pq.read_schema(root / SCHEMA_FILE)
    if (root / LEGACY_SCHEMA_FILE).is_file():
        with pa.ipc.open_file(root / LEGACY_SCHEMA_FILE) as r:
            return r.schema
    raise NotResults(f"{root}: not a gpusim results directory (no {SCHEMA_FILE})")


def dataset_root(path: Path) -> Path | None:
    """The gpusim dataset directory that holds ``path`` (the path itself or a directory above it), or None."""
    p = Path(os.path.abspath(path))
    for d in (p, *p.parents):
        if (d / SCHEMA_FILE).is_file() or (d / LEGACY_SCHEMA_FILE).is_file():
            return d
    return None


def data_files(root: Path) -> list[str]:
    """The dataset's Parquet files; DamagedResults naming those whose footer cannot be read."""
    files = sorted(str(p) for p in root.glob("variant=*/*.parquet"))
    bad = []
    for f in files:
        try:
            pq.read_metadata(f)
        except (OSError, ValueError) as e:
            bad.append(f"{f} ({str(e).splitlines()[0]})")
    if bad:
        raise DamagedResults(
            f"{len(bad)} damaged file(s) in {root}: {'; '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} "
            "(run the sweep again: it redoes them)"
        )
    return files


def write_rows(out: Path, schema: pa.Schema, point, rows: list[dict]) -> str:
    """Write one point-repetition's rows; returns the file's path relative to ``out``."""
    fs = file_schema(schema)
    params = param_values(point)
    device = schema.metadata.get(b"gpusim.gpu", b"").decode() or schema.metadata.get(b"gpusim.cpu", b"").decode()
    cols = {f.name: [] for f in fs}
    for r in rows:
        full = {**params, "device": device, **r}
        for f in fs:
            cols[f.name].append(_cell(full.get(f.name), f.type))
    table = pa.table({n: pa.array(v, type=fs.field(n).type) for n, v in cols.items()}, schema=fs)
    variant = point.config.fork.variant
    rel = f"variant={variant}/{point.config_hash}-{rows[0]['repetition'] if rows else 0}.parquet"
    path = Path(out) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return rel


def export_results(path: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write the dataset in ``path`` as one file for tools that want one: ``.arrow`` (Arrow IPC, with the schema's
    ``gpusim.*`` metadata) or ``.csv`` (no metadata). Returns the rows written. ``out`` may not lie inside a
    dataset (the readers would take it for a damaged data file)."""
    out = checkargs.path("out", out)
    output_path(out, "file")
    t = load_results(path)
    if out.suffix == ".arrow":

        def write(tmp):
            with pa.ipc.new_file(tmp, t.schema) as w:
                w.write_table(t)

    elif out.suffix == ".csv":
        t = csv_ready(t)

        def write(tmp):
            pacsv.write_csv(t, tmp)

    else:
        raise ValueError(f"{out}: the output is a .arrow or a .csv file")
    _atomic_write(out, write)
    return t.num_rows


def csv_ready(t: pa.Table) -> pa.Table:
    """``t`` with its list columns (an episode's timeline) as JSON text, which CSV can hold."""
    for i, f in enumerate(t.schema):
        if pa.types.is_list(f.type):
            text = [None if v is None else json.dumps(v) for v in t.column(i).to_pylist()]
            t = t.set_column(i, pa.field(f.name, pa.string()), pa.array(text, pa.string()))
    return t


def output_path(out: Path, kind: str, allowed: str | None = None) -> None:
    """ValueError, one line, for where an output ``kind`` (``file`` or ``directory``) cannot go: inside a gpusim
    dataset (but in its ``allowed`` subdirectory), below something that is not a directory, or over something of
    the other kind; a file's directory must exist."""
    root = dataset_root(out.parent if kind == "file" else out)
    if root is not None and not (allowed and Path(os.path.abspath(out)).is_relative_to(root / allowed)):
        raise ValueError(
            f"{out}: inside the gpusim dataset {root}, where readers take every file for data: write it elsewhere"
        )
    if out.exists() and out.is_dir() != (kind == "directory"):
        raise ValueError(f"{out}: {'a directory' if out.is_dir() else 'not a directory'}, where a {kind} goes")
    parent = out.parent
    for d in (parent, *parent.parents):
        if d.exists():
            if not d.is_dir():
                raise ValueError(f"{out}: {d} is not a directory")
            break
    if kind == "file" and not parent.is_dir():
        raise ValueError(f"{out}: the directory {parent} does not exist")


def load_results(path: str | os.PathLike) -> pa.Table:
    """A sweep's dataset as one pyarrow Table, read with its stored schema and explicit partitioning."""
    root = checkargs.path("path", path)
    schema = read_schema(root)
    files = data_files(root)
    if not files:
        return renamed_columns(schema.empty_table())
    part = ds.partitioning(PARTITIONING, flavor="hive")
    read = schema
    for old, new in RENAMED_COLUMNS.items():  # older files may hold the old name where the schema has the new one
        if new in read.names and old not in read.names:
            read = read.append(pa.field(old, read.field(new).type))
    dataset = ds.dataset(files, schema=read, format="parquet", partitioning=part, partition_base_dir=str(root))
    return renamed_columns(dataset.to_table()).replace_schema_metadata(schema.metadata)


def renamed_columns(table: pa.Table) -> pa.Table:
    """``table`` with the columns of :data:`RENAMED_COLUMNS` under their new names: an old name alone is renamed in
    place; beside the new name, each row takes the value its file wrote (the other is null) and the old one goes."""
    for old, new in RENAMED_COLUMNS.items():
        if old not in table.column_names:
            continue
        i = table.column_names.index(old)
        if new in table.column_names:
            j = table.column_names.index(new)
            table = table.set_column(j, new, pc.coalesce(table[new], table[old])).remove_column(i)
        else:
            table = table.set_column(i, new, table[old])
    return table
