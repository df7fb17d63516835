"""Measurements of a fast engine on state already in its own memory: what ``gpusim bench`` prints on a GPU.

The CPU bench times forks of state already in RAM. On a GPU the same means state already in device memory: a
:class:`DenseForks` builds the dense-anon workload directly with the array module of the engine (CuPy for
``cuda``; numpy for ``cpu`` and ``cudasim``), holds one fork or a batch of forks (segments of tables, as
:func:`gpusim.engines.fast.fork_fast_batch` lays them out), launches the engine's ``fork_tables`` once over all their
tables and times it with CUDA events (a host clock off the GPU). Each repetition forks a freshly built copy of the
same address spaces; building is not timed, nor are PCIe transfers (``gpusim.fork`` on host arrays adds those:
``bench`` prints that end-to-end time too).

After the timed forks the device state is checked against the CPU engine, element by element, at full size: the
dense workload is the same table repeated with pfns shifted by 512 per table, so every table's parent and child
entries (pfns unshifted), folio refcounts, mapcounts, page flags and per-table counts must equal those the CPU
kernels give for one table (:func:`reference_table`). A single mismatch fails the check.

:func:`copy_bandwidth` measures the device's copy rate (bytes read + written per second), against which the bench
reports the fraction achieved by the engine's minimum traffic per PTE (:data:`DENSE_ANON_TRAFFIC`).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from gpusim.base import backend as B
from gpusim.engines.fast import CallIndex, oracle_params, variant_params
from gpusim.inputs.workloads import dense_anon_arrays, dense_anon_mm
from gpusim.kernels import scan
from gpusim.kernels.args import Calls, Tables, memory_arrays
from gpusim.kernels.fields import MEMORY_FIELDS
from gpusim.kernels.flags import PAGE_SIZE, PTRS_PER_TABLE
from gpusim.kernels.rules import MODE_CLASSIFY_COPY
from gpusim.model import decode
from gpusim.model.oracle import LockBreakOracle
from gpusim.model.plan import plan_fork
from gpusim.model.variants import DEFAULT_VARIANT, get_variant

# The fewest bytes one dense-anon PTE moves: (array, times its element is moved: 1 read or write, 2 both).
DENSE_ANON_TRAFFIC = (
    ("ppte", 2),
    ("cpte", 1),
    ("page_folio", 1),
    ("folio_order", 1),
    ("folio_flags", 1),
    ("folio_true_pins", 1),
    ("folio_refcount", 2),
    ("page_mapcount", 2),
    ("page_flags", 2),
)


def traffic_bytes_per_pte() -> int:
    size = {name: dt.itemsize for name, (dt, _) in MEMORY_FIELDS.items()}
    size["ppte"] = size["cpte"] = np.dtype(np.uint64).itemsize
    return sum(size[name] * k for name, k in DENSE_ANON_TRAFFIC)


# per-element fields compared by the check, as (T, 512) blocks
_PAGE_FIELDS = ("folio_refcount", "page_mapcount", "page_flags")


class DenseForks:
    """``forks`` dense-anon address spaces of ``nr_pages`` pages each (a multiple of 512), forked in one launch of
    ``kernels.fork_tables`` over arrays of ``xp``."""

    def __init__(self, nr_pages: int, forks: int = 1, variant: str = DEFAULT_VARIANT, xp=np, kernels=None):
        if nr_pages < PTRS_PER_TABLE or nr_pages % PTRS_PER_TABLE:
            raise ValueError(f"nr_pages must be a positive multiple of {PTRS_PER_TABLE}")
        if kernels is None:
            kernels = B.kernels("cpu")
        self.xp, self.kernels, self.n, self.K = xp, kernels, int(nr_pages), int(forks)
        self.v = get_variant(variant)
        T = self.T = self.n // PTRS_PER_TABLE
        meta = dense_anon_mm(self.n, np.empty((T, 0), np.uint64))  # VMAs and table numbers; no entries
        calls = CallIndex(meta, plan_fork(meta))
        C, K = calls.plan.nr_calls, self.K
        off = np.repeat(np.arange(K, dtype=np.int64) * C, T)
        a = xp.asarray
        self.row_meta = {
            "table_index": a(np.tile(meta.table_index, K)),
            "row_lo": a(np.tile(calls.row_lo, K) + off),
            "row_hi": a(np.tile(calls.row_hi, K) + off),
            "has_pinned": a(np.zeros(K * T, np.bool_)),
            "fork_seq": a(np.repeat(np.arange(K, dtype=np.int64), T)),
        }
        self.calls = Calls(*(a(np.tile(c, K)) for c in calls.group()))
        nb = oracle_params(LockBreakOracle.parse("never"))
        self.nb = nb._replace(list_cs=a(nb.list_cs), list_k=a(nb.list_k))
        self.which = a(np.arange(K * T, dtype=np.int64))
        self.mem = self.ppte = self.cpte = self.cexists = None

    @property
    def nr_ptes(self) -> int:
        return self.K * self.n

    def build(self) -> None:
        """(Re)build the parent state of every fork and an empty child (not timed)."""
        self.mem = self.ppte = self.cpte = self.cexists = None  # free before allocating
        self.mem, self.ppte = dense_anon_arrays(self.K * self.n, self.xp, content=False)
        self.cpte = self.xp.zeros_like(self.ppte)
        self.cexists = self.xp.zeros(self.K * self.T, np.bool_)

    def args(self) -> tuple:
        """The arguments of ``kernels.fork_tables`` over every table of the job."""
        tab = Tables(ppte=self.ppte, cpte=self.cpte, cexists=self.cexists, **self.row_meta)
        return (
            MODE_CLASSIFY_COPY,
            self.which,
            variant_params(self.v),
            tab,
            self.calls,
            memory_arrays(self.mem),
            self.nb,
        )

    def launch(self, shape=None):
        if shape is not None:
            return self.kernels.fork_tables(*self.args(), shape=shape)
        return self.kernels.fork_tables(*self.args())

    def timed(self, repeat: int, shape=None) -> tuple[list[float], tuple]:
        """Build and fork ``repeat`` times; returns (seconds of each launch, (needs_slow, counts) of the last)."""
        walls, out = [], None
        for _ in range(repeat):
            self.build()
            with _Timer(self.xp) as t:
                out = self.launch(shape)
            walls.append(t.seconds)
        return walls, out

    def graph_timed(self, repeat: int, shape=None) -> tuple[list[float], tuple]:
        """Fork ``repeat`` times by replaying one CUDA graph of the launch (:class:`gpusim.kernels.cuda.ForkGraph`):
        the state is built once, kept, and copied back (not timed) before each replay. Returns what
        :meth:`timed` returns."""
        self.build()
        keep = [(a, a.copy()) for a in self._state()]
        graph = self.kernels.ForkGraph(self.args(), shape)  # waits for the state built on the default stream
        walls, out = [], None
        for _ in range(repeat):
            with graph.stream:  # the restore, then the replay, in order on the graph's stream
                for a, k in keep:
                    a[...] = k
                with _Timer(self.xp) as t:
                    out = graph.launch()
            walls.append(t.seconds)
        return walls, out

    def _state(self) -> list:
        return [self.ppte, self.cpte, self.cexists, *self.mem.values()]


class _Timer:
    """CUDA events on the current CuPy stream for CuPy arrays, else a host clock."""

    def __init__(self, xp):
        self.gpu = xp is not np
        if self.gpu:
            import cupy

            self.cupy = cupy
            self.start, self.end = cupy.cuda.Event(), cupy.cuda.Event()

    def __enter__(self):
        if self.gpu:
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.gpu:
            self.end.record()
            self.end.synchronize()
            self.seconds = self.cupy.cuda.get_elapsed_time(self.start, self.end) / 1e3
        else:
            self.seconds = time.perf_counter() - self.t0


def reference_table(variant: str) -> dict:
    """One dense-anon table forked by the CPU kernels: parent and child entries, the per-page fields, and its count
    row (numpy)."""
    one = DenseForks(PTRS_PER_TABLE, 1, variant)
    one.build()
    needs, counts = one.launch()
    assert not needs.any()
    out = {"ppte": one.ppte[0], "cpte": one.cpte[0], "counts": counts[0]}
    out.update({f: one.mem[f] for f in _PAGE_FIELDS})
    return out


def check_against_cpu(job: DenseForks, needs, counts, variant: str) -> list[str]:
    """Mismatches between a forked :class:`DenseForks` and the CPU engine's table, at full size (empty: equal)."""
    xp = job.xp
    ref = {k: xp.asarray(v) for k, v in reference_table(variant).items()}
    rows = job.K * job.T
    shift = xp.arange(rows, dtype=np.int64)[:, None] * PTRS_PER_TABLE
    problems = []
    if bool(xp.asarray(needs).any()):
        problems.append(f"{int(xp.asarray(needs).sum())} tables flagged for the slow path (CPU engine: none)")
    for name in ("ppte", "cpte"):
        got = getattr(job, name)
        bad = decode.without_offsets(got) != decode.without_offsets(ref[name])[None, :]
        bad |= decode.offsets(got) != decode.offsets(ref[name])[None, :] + shift
        if bool(bad.any()):
            problems.append(f"{name}: {int(bad.sum())} entries differ from the CPU engine's")
    for f in _PAGE_FIELDS:
        bad = job.mem[f].reshape(rows, PTRS_PER_TABLE) != ref[f][None, :]
        if bool(bad.any()):
            problems.append(f"{f}: {int(bad.sum())} values differ from the CPU engine's")
    bad = xp.asarray(counts) != ref["counts"][None, :]
    if bool(bad.any()):
        problems.append(f"counts: {int(bad.any(axis=1).sum())} tables differ from the CPU engine's")
    if not bool(job.cexists.all()):
        problems.append("some child tables were not allocated")
    return problems


def copy_bandwidth(xp, nbytes: int = 2 << 30, repeat: int = 10) -> float:
    """Bytes read plus written per second by a copy of ``nbytes`` (median of ``repeat``): device to device with
    CuPy, host to host on every thread with numpy (:func:`gpusim.kernels.scan.copy_all_threads`)."""
    src = xp.ones(nbytes // 8, np.uint64)
    dst = xp.empty_like(src)
    copy = scan.copy_all_threads if xp is np else lambda a, b: b.__setitem__(Ellipsis, a)
    copy(src, dst)  # warm-up (and compile)
    walls = []
    for _ in range(repeat):
        with _Timer(xp) as t:
            copy(src, dst)
        walls.append(t.seconds)
    return 2 * src.nbytes / statistics.median(walls)


# Forks up to this many PTEs are also timed as CUDA graph replays (the state is kept twice: a copy to restore).
GRAPH_MAX_PTES = 1 << 28


def job_row(job: DenseForks, walls: list[float], traffic: int, copy_bw: float | None) -> dict:
    """A row of the bench: the job's size, the median launch and the rates it gives."""
    wall = statistics.median(walls)
    row = {
        "size_bytes": job.n * PAGE_SIZE,
        "forks": job.K,
        "ptes": job.nr_ptes,
        "engine_wall_s": wall,
        "engine_wall_min_s": min(walls),
        "ns_per_pte": wall / job.nr_ptes * 1e9,
        "ptes_per_s": job.nr_ptes / wall,
        "forks_per_s": job.K / wall,
        "device_bytes_per_pte": sum(int(a.nbytes) for a in job._state()) / job.nr_ptes,
    }
    if copy_bw:
        row["fraction_of_copy_bandwidth"] = row["ptes_per_s"] * traffic / copy_bw
    return row


def graph_row(job: DenseForks, repeat: int, shape, traffic: int, copy_bw: float | None, check: bool) -> dict:
    """The ``graph_*`` fields of a row: the job's fork timed as CUDA graph replays, and checked; where the graph
    cannot be made (a numba or CuPy version that refuses the capture), ``graph_error`` says why."""
    try:
        walls, (needs, counts) = job.graph_timed(repeat, shape)
    except Exception as e:  # noqa: BLE001  (reported in the row; the plain launch's figures stand)
        return {"graph_error": f"{type(e).__name__}: {e}"}
    g = job_row(job, walls, traffic, copy_bw)
    out = {f"graph_{k}": g[k] for k in ("engine_wall_s", "engine_wall_min_s", "ptes_per_s", "forks_per_s")}
    if check:
        out["graph_check"] = checked(check_against_cpu(job, needs, counts, job.v.name))
    return out


def checked(problems: list[str]) -> str:
    return "equal to the CPU engine" if not problems else "; ".join(problems)


def bench_resident(
    sizes: list[int],
    backend: str,
    variant: str,
    repeat: int,
    batch: int = 0,
    check: bool = True,
    shape=None,
    progress=None,
) -> dict:
    """Forks of device-resident dense-anon state (see the module's docstring); sizes in bytes of simulated memory.
    On ``cuda`` forks of up to :data:`GRAPH_MAX_PTES` are timed a second way, as replays of a CUDA graph of the
    launch (``graph_*`` fields), and checked too."""
    kernels = B.kernels(backend)
    xp = B.array_module_for(backend)
    traffic = traffic_bytes_per_pte()
    report = {"backend": backend, "variant": variant, "traffic_bytes_per_pte": traffic, "rows": []}
    if backend == "cuda":
        report["device"] = B.gpu_name()
        report["copy_bandwidth_Bps"] = copy_bandwidth(xp)
        report["resources"] = None
    warm = DenseForks(PTRS_PER_TABLE, 1, variant, xp, kernels)
    warm.timed(1, shape)  # compile
    if backend == "cuda":
        report["resources"] = kernels.resources(shape)
    jobs = [(s // PAGE_SIZE, 1) for s in sizes] + ([(min(sizes) // PAGE_SIZE, batch)] if batch else [])
    for nr_pages, forks in jobs:
        if progress:
            progress(nr_pages * PAGE_SIZE, forks)
        job = DenseForks(nr_pages, forks, variant, xp, kernels)
        walls, (needs, counts) = job.timed(repeat, shape)
        row = job_row(job, walls, traffic, report.get("copy_bandwidth_Bps"))
        if check:
            row["check"] = checked(check_against_cpu(job, needs, counts, variant))
        if backend == "cuda" and job.nr_ptes <= GRAPH_MAX_PTES:
            row.update(graph_row(job, repeat, shape, traffic, report.get("copy_bandwidth_Bps"), check))
        report["rows"].append(row)
        del job, needs, counts
    return report


def bench_streamed(
    total_pages: int, chunk_pages: int, variant: str, backend: str = "cuda", shape=None, check: bool = True
) -> dict:
    """A dense-anon address space of ``total_pages`` generated and forked on the GPU in chunks of ``chunk_pages``
    (whole tables; each chunk built in device memory, forked, reduced to its counts there, then dropped), so that it
    may exceed device memory. A chunk's tables are numbered from 0 and map pages from 0: copy_pte_range of a table
    reads and writes only what that table maps, so a chunk forks as the same tables of the whole space do (the
    argument of :mod:`gpusim.stream`), at other addresses. Every chunk is checked against the CPU engine at full
    size (:func:`check_against_cpu`; not timed). Times: building, forking, summing the counts, and all three, summed
    over the chunks."""
    xp = B.array_module_for(backend)
    kernels = B.kernels(backend)
    if total_pages % chunk_pages or chunk_pages % PTRS_PER_TABLE:
        raise ValueError("total_pages must be a multiple of chunk_pages, itself a multiple of 512")
    DenseForks(PTRS_PER_TABLE, 1, variant, xp, kernels).timed(1, shape)  # compile (not timed)
    job = DenseForks(chunk_pages, 1, variant, xp, kernels)
    ref_counts = reference_table(variant)["counts"]
    sums, problems = xp.zeros(len(ref_counts), np.int64), []
    build_s = fork_s = reduce_s = check_s = 0.0
    t0 = time.perf_counter()
    for c in range(total_pages // chunk_pages):
        with _Timer(xp) as t:
            job.build()
        build_s += t.seconds
        with _Timer(xp) as t:
            needs, counts = job.launch(shape)
        fork_s += t.seconds
        with _Timer(xp) as t:
            sums += xp.asarray(counts).sum(axis=0)
        reduce_s += t.seconds
        if check:
            with _Timer(xp) as t:
                problems += [f"chunk {c}: {p}" for p in check_against_cpu(job, needs, counts, variant)]
            check_s += t.seconds
        del needs, counts
    wall = time.perf_counter() - t0
    expect = ref_counts * (total_pages // PTRS_PER_TABLE)
    if check and not bool((xp.asarray(expect) == sums).all()):
        problems.append("the summed counts differ from the CPU engine's table times the tables")
    return {
        "ptes": total_pages,
        "size_bytes": total_pages * PAGE_SIZE,
        "chunk_ptes": chunk_pages,
        "chunks": total_pages // chunk_pages,
        "build_s": build_s,
        "fork_s": fork_s,
        "reduce_s": reduce_s,
        "build_and_fork_s": build_s + fork_s + reduce_s,
        "check_s": check_s,
        "wall_s": wall,
        "fork_ptes_per_s": total_pages / fork_s,
        "check": checked(problems) if check else "not checked",
    }
