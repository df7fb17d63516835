"""The Python API that mirrors the command line: ``gpusim.workload`` (``gpusim fork --workload``) and
``gpusim.run_sweep`` (``gpusim sweep``)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import yaml

from gpusim.base import checkargs
from gpusim.base.backend import BACKENDS, MAX_WORKERS, resolve
from gpusim.base.machine import require_memory
from gpusim.inputs.regions import RegionSpace
from gpusim.inputs.workloads import GENERATED_KINDS, build_workload, fork_memory_bytes, region_space
from gpusim.jobs.sweep.executors import EXECUTORS, make_executor
from gpusim.jobs.sweep.export import load_results
from gpusim.jobs.sweep.point import chunk_rows
from gpusim.jobs.sweep.runner import SweepRunner
from gpusim.jobs.sweep.spec import SweepFile, load_sweep, workload_spec
from gpusim.model.state import AddressSpace
from gpusim.model.variants import DEFAULT_VARIANT, get_variant
from gpusim.stream import default_chunk_rows, stream_memory_bytes


def workload(
    kind: str, variant: str = DEFAULT_VARIANT, seed: int = 0, streamed: bool = False, **params
) -> AddressSpace | RegionSpace:
    """The address space of a workload: ``kind`` (``anon``, ``mixed``, ``layout``, ``scenario``, ``snapshot``) and
    the keys a sweep file's ``workload`` takes, e.g. ``gpusim.workload("anon", size="1GiB", pinned_fraction=0.02)``.
    A bad argument, key or value is a TypeError or ValueError naming it, each bad key on a line of its own.

    A space whose fork would not fit in this machine's available memory is refused before anything is built
    (:class:`gpusim.base.machine.NotEnoughMemory`, a ValueError). ``streamed=True`` (``anon`` and ``mixed``) returns the
    planned space instead, built chunk by chunk only when forked: ``gpusim.fork_streamed(space)``."""
    variant = get_variant(variant).name
    seed = checkargs.integer("seed", seed, 0, checkargs.I64_MAX)
    streamed = checkargs.boolean("streamed", streamed)
    w = workload_spec(kind, checkargs.plain(params, "params"), f"workload {kind}")
    if streamed:
        if w.kind not in GENERATED_KINDS:
            raise ValueError(f"streamed: only the generated kinds (anon, mixed) stream, not {w.kind}")
        require_memory(stream_memory_bytes(w, default_chunk_rows()), f"workload {kind} (streamed)")
        return region_space(w, variant, seed)
    how = "streamed=True (forked chunk by chunk with gpusim.fork_streamed)" if w.kind in GENERATED_KINDS else ""
    require_memory(fork_memory_bytes(w), f"workload {kind}", how)
    space, _, _ = build_workload(w, variant, seed)
    return space


def sweep_runner(
    spec_or_path, out: str | Path | None = None, backend: str | None = None
) -> tuple[SweepFile, list, SweepRunner]:
    """(the sweep's spec, its points, a runner into ``out``, default ``results/<name>``) for a sweep file's path or
    a mapping of its keys; ``backend`` overrides the file's. Raises ConfigError (file, line, key) or ValueError."""
    if isinstance(spec_or_path, dict):
        d = checkargs.plain(spec_or_path, "spec_or_path")
        path, text = "spec_or_path", yaml.safe_dump(d, sort_keys=False)
    else:
        path = checkargs.path("spec_or_path", spec_or_path)
        if path.is_dir():
            raise ValueError(f"spec_or_path: {path} is a directory, not a sweep file")
        text = path.read_text() if path.exists() else None
    out = checkargs.path("out", out, optional=True)
    if out is not None and out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} is a file, not a results directory")
    spec, points = load_sweep(path, text)
    if checkargs.text("backend", backend, BACKENDS, optional=True) is not None:
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
    holds, and return its whole dataset (:func:`gpusim.load_results`). A wrong argument is a TypeError or
    ValueError naming it."""
    checkargs.text("executor", executor, EXECUTORS)
    workers = checkargs.optional_integer("workers", workers, 1, MAX_WORKERS)
    verify = checkargs.boolean("verify", verify)
    address = checkargs.text("address", address, optional=True)
    spec, _, runner = sweep_runner(spec_or_path, out, backend)
    runner.run(executor=make_executor(executor, workers, address, spec.backend), verify=verify)
    return load_results(runner.out)
