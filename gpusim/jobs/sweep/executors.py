"""Where a sweep's points run: the executor seam of :class:`gpusim.jobs.sweep.runner.SweepRunner`.

Every executor runs :func:`execute_task` on (point, repetition) tasks: the task computes its rows and writes them
to the dataset under their deterministic file name (atomically), and returns what the driver appends to the
manifest. Only the driver writes the manifest, so a task that is retried, or that a killed run left running and
that finishes later, rewrites the same file with the same rows and nothing is duplicated.

* :class:`InlineExecutor`: in this process, one task at a time (``--workers 1``).
* :class:`LocalExecutor` (the default): a pool of worker processes on this machine (``spawn``): one per core, or,
  with the CUDA backend, one per GPU with ``CUDA_VISIBLE_DEVICES`` set per worker.
* :class:`RayExecutor` (``--executor ray``, extra ``ray``): tasks on a Ray cluster: ``--address``, else
  ``RAY_ADDRESS``, else a local cluster started for the run. A task asks for one GPU when the backend is CUDA.
  Workers write the dataset directly, so its path must be storage that every node sees at the same path (checked
  before the sweep starts).
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path

import pyarrow as pa

from gpusim.base.backend import resolve
from gpusim.inputs.workloads import PAGE_BYTES, state_bytes_bound
from gpusim.jobs.sweep.export import write_rows
from gpusim.jobs.sweep.point import run_point

EXECUTORS = ("local", "ray")
# A worker process costs about 1.5 s to start on the 2-vCPU VM (Python, numba and the kernels loaded from numba's
# cache) and a fork about 0.15 us per PTE end to end with its invariant check: a worker pays for itself from about
# 10 M PTEs of work. With the number of workers left to it, the local executor starts no more than that.
PTES_PER_WORKER = 10_000_000
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def work_ptes(tasks) -> int:
    """About how many PTEs the tasks fork (generator workloads from their sizes; the others count one table)."""
    total = 0
    for p, _ in tasks:
        bound = state_bytes_bound(p.config.workload)
        forks = p.config.fork.chain * p.config.fork.generations
        total += forks * (512 if bound is None else bound // PAGE_BYTES)
    return total


class ExecutorError(ValueError):
    """A user-facing problem with the executor (unknown, not installed, storage not shared)."""


def execute_task(point, repetition: int, out: str, schema_bytes: bytes) -> dict:
    """Run one (point, repetition), write its rows, return its manifest record."""
    schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
    try:
        rows = run_point(point, repetition)
    except Exception as e:  # noqa: BLE001 - recorded as the point's error
        rows = [error_row(point, repetition, f"{type(e).__name__}: {e}")]
    rel = write_rows(Path(out), schema, point, rows)
    errors = [r.get("error") for r in rows if r["outcome"] == "error"]
    return {
        "config_hash": point.config_hash,
        "repetition": repetition,
        "file": rel,
        "errors": len(errors),
        "error": errors[0] if errors else None,
    }


def error_row(point, repetition: int, message: str) -> dict:
    return {
        "config_hash": point.config_hash,
        "repetition": repetition,
        "fork_index": 0,
        "outcome": "error",
        "error": message,
    }


def record_failure(point, repetition: int, out: str, schema_bytes: bytes, message: str) -> dict:
    """The driver's record of a task that died without writing its rows (a worker crash)."""
    schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
    rel = write_rows(Path(out), schema, point, [error_row(point, repetition, message)])
    return {"config_hash": point.config_hash, "repetition": repetition, "file": rel, "errors": 1, "error": message}


class InlineExecutor:
    name = "inline"

    def run(self, tasks, out, schema_bytes, on_done) -> None:
        for p, rep in tasks:
            on_done(p, execute_task(p, rep, str(out), schema_bytes))


def _gpu_count() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001
        return 0


def _init_worker(queue, sweep_pid: int) -> None:
    """Pool initialiser: follow the sweep's process (a worker exits once it is gone, so that a killed sweep leaves no
    process behind: a pool's workers would otherwise wait for work forever, or finish their tasks): on Linux the
    kernel kills the worker when the sweep dies (``PR_SET_PDEATHSIG``, even while a task holds the GIL), elsewhere
    a thread watches the parent; take one GPU id for this worker (CUDA backend)."""
    _die_with_parent()
    if os.getppid() != sweep_pid:  # gone before the signal was asked for
        os._exit(1)
    threading.Thread(target=_exit_with, args=(sweep_pid,), daemon=True, name="exit-with-sweep").start()
    if queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(queue.get())


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def _exit_with(sweep_pid: int) -> None:
    while os.getppid() == sweep_pid:
        time.sleep(0.2)
    os._exit(1)


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int | None, backend: str):
        self.cuda = resolve(backend) == "cuda"
        gpus = _gpu_count() if self.cuda else 0
        self.devices = list(range(gpus))
        self.auto = not workers
        self.workers = workers or (len(self.devices) if self.cuda and self.devices else (os.cpu_count() or 1))

    def run(self, tasks, out, schema_bytes, on_done) -> None:
        if self.auto and not self.cuda:  # no more workers than the work pays for (small sweeps: in this process)
            self.workers = max(1, min(self.workers, -(-work_ptes(tasks) // PTES_PER_WORKER)))
        if self.workers <= 1 or len(tasks) <= 1:
            return InlineExecutor().run(tasks, out, schema_bytes, on_done)
        ctx = mp.get_context("spawn")
        queue = None
        if self.cuda and self.devices:
            queue = ctx.Queue()
            for i in range(self.workers):
                queue.put(self.devices[i % len(self.devices)])
        init = {"initializer": _init_worker, "initargs": (queue, os.getpid())}
        with cf.ProcessPoolExecutor(self.workers, mp_context=ctx, **init) as pool:
            futures = {pool.submit(execute_task, p, rep, str(out), schema_bytes): (p, rep) for p, rep in tasks}
            for f in cf.as_completed(futures):
                p, rep = futures[f]
                try:
                    rec = f.result()
                except Exception as e:  # noqa: BLE001 - a worker died: record, go on
                    rec = record_failure(p, rep, str(out), schema_bytes, f"worker failed: {type(e).__name__}: {e}")
                on_done(p, rec)


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None, workers: int | None, backend: str):
        try:
            import ray
        except ImportError:
            raise ExecutorError("the ray executor needs Ray: pip install -e '.[ray]'") from None
        self.ray = ray
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.cuda = resolve(backend) == "cuda"
        self.workers = workers

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        kw = {"ignore_reinit_error": True, "log_to_driver": False, "include_dashboard": False}
        try:
            if self.address:
                ray.init(address=self.address, **kw)
            else:
                ray.init(num_cpus=self.workers or None, **kw)
        except Exception as e:  # noqa: BLE001 - connection problems are the user's
            where = self.address or "a new local cluster"
            raise ExecutorError(f"cannot start Ray on {where}: {type(e).__name__}: {e}") from None

    def check_shared_storage(self, out: Path) -> None:
        """A task writes a probe file into ``out``; the driver must see it (same path on every node)."""
        ray = self.ray
        probe = f".probe-{uuid.uuid4().hex}"

        @ray.remote(num_cpus=0)
        def _probe(path, name):
            p = Path(path)
            if not p.is_dir():
                return f"{path} does not exist on node {os.uname().nodename}"
            (p / name).write_text("ok")
            return None

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        why = ray.get(_probe.remote(str(out), probe))
        seen = (out / probe).exists()
        if seen:
            (out / probe).unlink()
        if why or not seen:
            raise ExecutorError(
                f"the results directory {out} is not shared storage that the Ray workers see at the same path"
                f"{' (' + why + ')' if why else ''}; use a shared file system path with --out "
                f"({len(nodes)} node(s) in the cluster)"
            )

    def run(self, tasks, out, schema_bytes, on_done) -> None:
        ray = self.ray
        self._connect()
        out = Path(out).resolve()
        self.check_shared_storage(out)
        opts = {"num_gpus": 1} if self.cuda else {"num_cpus": 1}
        remote = ray.remote(max_retries=2, retry_exceptions=False, **opts)(execute_task)
        schema_ref = ray.put(schema_bytes)
        limit = max(1, (self.workers or int(ray.available_resources().get("CPU", 1))) * 2)
        pending, queue = {}, list(tasks)
        while queue or pending:
            while queue and len(pending) < limit:
                p, rep = queue.pop(0)
                pending[remote.remote(p, rep, str(out), schema_ref)] = (p, rep)
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                p, rep = pending.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - the task failed after its retries
                    msg = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()[-1]
                    rec = record_failure(p, rep, str(out), schema_bytes, f"ray task failed: {msg}")
                on_done(p, rec)


def make_executor(name: str, workers: int | None = None, address: str | None = None, backend: str = "auto"):
    if name == "local":
        return LocalExecutor(workers, backend) if workers != 1 else InlineExecutor()
    if name == "ray":
        return RayExecutor(address, workers, backend)
    raise ExecutorError(f"unknown executor '{name}' (known: {', '.join(EXECUTORS)})")
