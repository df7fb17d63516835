"""The Python API that mirrors the command line: ``gpusim.workload`` (``gpusim fork --workload``) and
``gpusim.run_sweep`` (``gpusim sweep``)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import yaml
from pydantic import TypeAdapter, ValidationError

from gpusim.backend import resolve
from gpusim.state import AddressSpace
from gpusim.sweep.executors import make_executor
from gpusim.sweep.export import load_results
from gpusim.sweep.point import chunk_rows
from gpusim.sweep.runner import SweepRunner
from gpusim.sweep.spec import SweepFile, Workload, load_sweep
from gpusim.variants import DEFAULT_VARIANT
from gpusim.workloads import build_workload


def workload(kind: str, variant: str = DEFAULT_VARIANT, seed: int = 0, **params) -> AddressSpace:
    """The address space of a workload: ``kind`` (``anon``, ``mixed``, ``layout``, ``scenario``, ``snapshot``) and
    the keys a sweep file's ``workload`` takes, e.g. ``gpusim.workload("anon", size="1GiB", pinned_fraction=0.02)``.
    A bad key or value is a ValueError naming it."""
    try:
        w = TypeAdapter(Workload).validate_python({"kind": kind, **params})
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"][1:] or first["loc"])
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        raise ValueError(f"workload {kind}: {loc}: {msg}") from None
    space, _, _ = build_workload(w, variant, seed)
    return space


def sweep_runner(
    spec_or_path, out: str | Path | None = None, backend: str | None = None
) -> tuple[SweepFile, list, SweepRunner]:
    """(the sweep's spec, its points, a runner into ``out``, default ``results/<name>``) for a sweep file's path or
    a mapping of its keys; ``backend`` overrides the file's. Raises ConfigError (file, line, key) or ValueError."""
    if isinstance(spec_or_path, dict):
        path, text = "<sweep>", yaml.safe_dump(spec_or_path, sort_keys=False)
    else:
        path = spec_or_path
        if Path(path).is_dir():
            raise ValueError("a directory, not a sweep file")
        text = Path(path).read_text() if Path(path).exists() else None
    spec, points = load_sweep(path, text)
    if backend is not None:
        resolve(backend)
        spec = spec.model_copy(update={"backend": backend})
        points = [p.model_copy(update={"config": p.config.model_copy(update={"backend": backend})}) for p in points]
    for p in points:
        chunk_rows(p)  # refused up front when it fits neither whole nor streamed
    return spec, points, SweepRunner(spec, points, out or Path("results") / spec.name, text or "")


def run_sweep(
    spec_or_path,
    out: str | Path | None = None,
    executor: str = "local",
    workers: int | None = None,
    backend: str | None = None,
    verify: bool = False,
    address: str | None = None,
) -> pa.Table:
    """Run a sweep (a file's path, or a mapping of its keys) as ``gpusim sweep`` does, resuming what ``out``
    holds, and return its whole dataset (:func:`gpusim.load_results`)."""
    spec, _, runner = sweep_runner(spec_or_path, out, backend)
    runner.run(executor=make_executor(executor, workers, address, spec.backend), verify=verify)
    return load_results(runner.out)
