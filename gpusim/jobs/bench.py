"""``gpusim bench``: fork dense 4 KiB anonymous address spaces of several sizes and report the engine's speed,
optionally beside the real kernel's fork() of the same amount of touched memory on this machine.

With ``pinned`` (:class:`Pins`: a fraction of the pages, scattered or in contiguous runs, as the ``anon`` workload
generator places them) the same pages are pinned on both sides: FOLL_PIN in the simulated state, io_uring fixed
buffers in the real process, so the kernel copies them at fork as the simulator does."""

from __future__ import annotations

import platform
import statistics
from dataclasses import dataclass

import numpy as np

from gpusim import api
from gpusim.base import backend as B
from gpusim.base.backend import resolve
from gpusim.base.machine import cpu_description, mem_available_bytes
from gpusim.inputs.workloads import build_workload, dense_anon
from gpusim.jobs.gpubench import bench_resident, copy_bandwidth
from gpusim.jobs.host.measure import FAULT_SLACK, time_layout
from gpusim.jobs.host.real import RealLayout, run_write_timings
from gpusim.jobs.sweep.spec import AnonWorkload
from gpusim.kernels.flags import PAGE_SIZE, PTRS_PER_TABLE
from gpusim.model import decode
from gpusim.model.state import AddressSpace, entries, resident_bytes

# ``--writes``: after the fork both write every page they map (the parent's copy faults, then the child's reuses),
# the passes :func:`gpusim.jobs.host.real.write_timings` times on the real process
BENCH_WRITES = "parent:all; child:all"
# largest size whose end-to-end time (host arrays, PCIe transfers) the cuda bench also measures
E2E_MAX_BYTES = 16 << 30


@dataclass(frozen=True)
class Pins:
    """Pinned pages of a bench workload: ``fraction`` of the pages, ``placement`` scattered or contiguous (in
    ``regions`` runs), placed by the ``anon`` generator with ``seed``."""

    fraction: float = 0.0
    placement: str = "contiguous"
    regions: int = 1
    seed: int = 0


def bench_space(size: int, variant: str, pins: Pins) -> AddressSpace:
    """Dense 4 KiB anonymous memory of ``size`` bytes, with the pinned pages of ``pins``."""
    if not pins.fraction:
        return dense_anon(size // PAGE_SIZE)
    w = AnonWorkload(
        kind="anon",
        size=size,
        pinned_fraction=pins.fraction,
        pinned_placement=pins.placement,
        pinned_regions=pins.regions,
    )
    return build_workload(w, variant, pins.seed)[0]


def pinned_runs(space: AddressSpace) -> list[tuple[int, int]]:
    """(first page, pages) of the runs of pinned pages of a one-VMA space starting at address 0."""
    addr, val = entries(space.mm)
    present = decode.holds_page(val)
    pinned = np.zeros(addr.shape[0], bool)
    pinned[present] = space.memory.folio_true_pins[space.memory.page_folio[decode.offsets(val[present])]] > 0
    a = addr[pinned]
    if not a.size:
        return []
    breaks = np.flatnonzero(np.diff(a) != 1) + 1
    starts, ends = np.r_[a[0], a[breaks]], np.r_[a[breaks - 1], a[-1]] + 1
    return [(int(s), int(e - s)) for s, e in zip(starts, ends)]


def bench_size(size: int, backend: str, variant: str, repeat: int, pins: Pins = Pins()) -> dict:
    space = bench_space(size, variant, pins)
    walls, r = [], None
    for _ in range(repeat):
        r = api.fork(space, variant, backend=backend, check=False)
        walls.append(r.engine_wall_s)
    wall = statistics.median(walls)
    nbytes = resident_bytes(r.parent.mm, r.child, r.memory)
    return {
        "size_bytes": size,
        "ptes": r.nr_ptes,
        "backend": r.backend,
        "variant": variant,
        "engine_wall_s": wall,
        "engine_wall_min_s": min(walls),
        "ns_per_pte": wall / r.nr_ptes * 1e9,
        "ptes_per_s": r.nr_ptes / wall,
        "bytes_per_pte": nbytes / r.nr_ptes,
        "outcome": r.outcome,
        "pinned_fraction": pins.fraction,
        "early_copies": r.counts["installs"],
        "early_copies_per_s": r.counts["installs"] / wall,
        "python_tables": r.python_tables,
        "pinned_runs": pinned_runs(space) if pins.fraction else [],
    }


def add_write_phase(row: dict, space: AddressSpace, backend: str, variant: str, repeat: int) -> None:
    """The write phase :data:`BENCH_WRITES` after a fork of ``space``, as ``gpusim.fork(writes=...)`` runs it (the
    median of ``repeat``): its writes, wall time, writes/s and its time over the fork's."""
    r = api.fork(space, variant, backend=backend, check=False)
    walls, wp = [], None
    for _ in range(repeat):
        wp = api.write_phase(r, BENCH_WRITES, check=False)
        walls.append(wp.wall_s)
    wall = statistics.median(walls)
    writes = sum(sum(c.values()) for c in wp.counts.values())
    row.update(writes=writes, write_counts=wp.counts, write_wall_s=wall, writes_per_s=writes / wall)
    row["write_vs_fork"] = wall / row["engine_wall_s"]


def add_kernel_writes(row: dict, repeat: int) -> None:
    """This machine's kernel running the same two passes on a real process with the row's memory and pins (a child
    that stays alive; :func:`gpusim.jobs.host.real.write_timings`): the median of the parent's copy-fault pass plus the
    child's reuse-fault pass. ``kernel_write_checked``: each pass took the faults the simulator counted (copies,
    reuses), give or take the interpreter's own (the median over the rounds: a round's interpreter may take a
    hundred more) and one per page table (this kernel's passes take about one fault per 512 pages more than they copy
    or reuse pages; not modelled): pinned pages that faulted (not the modelled state) show when they are more than
    that slack."""
    if row["size_bytes"] > mem_available_bytes() // 3:
        row["kernel_write_s"] = None
        return
    t = run_write_timings(RealLayout("dense", row["size_bytes"], pinned=row["pinned_runs"]), max(3, repeat))
    if t["refused"]:
        row["kernel_write_s"] = None
        return
    copy, reuse = t["passes"]["copy"], t["passes"]["reuse"]
    row["kernel_write_s"] = statistics.median(c["ns"] + u["ns"] for c, u in zip(copy, reuse)) / 1e9
    row["kernel_write_faults"] = [[p["faults"] for p in ps] for ps in (copy, reuse)]
    want = (row["write_counts"]["parent"]["copy"], row["write_counts"]["child"]["reuse"])
    slack = FAULT_SLACK * 4 + row["ptes"] // PTRS_PER_TABLE
    faults = row["kernel_write_faults"]
    row["kernel_write_checked"] = all(w <= statistics.median(f) <= w + slack for f, w in zip(faults, want))
    row["write_speedup_vs_kernel"] = row["kernel_write_s"] / row["write_wall_s"]


def bench_batch(size: int, count: int, backend: str, variant: str, repeat: int) -> dict:
    """``count`` forks of ``size`` bytes of dense anon memory in one :func:`gpusim.fork_batch`."""
    spaces = [dense_anon(size // PAGE_SIZE) for _ in range(count)]
    api.fork_batch([dense_anon(1024)] * 2, variant, backend=backend, check=False)  # compile / warm up
    walls = []
    for _ in range(repeat):
        rs = api.fork_batch(spaces, variant, backend=backend, check=False)
        walls.append(sum(r.engine_wall_s for r in rs))
        del rs
    wall = statistics.median(walls)
    return {
        "size_bytes": size,
        "forks": count,
        "backend": backend,
        "engine_wall_s": wall,
        "forks_per_s": count / wall,
        "ptes_per_s": count * size // PAGE_SIZE / wall,
    }


SHAPE_FIELDS = ("threads_per_table", "tables_per_block", "max_registers")


def launch_shape(backend: str, shape: tuple | None):
    """The CUDA kernels' launch shape (:class:`gpusim.kernels.cuda.Shape`) from (threads per table, tables per
    block, register cap), 0 or None meaning the default; None when every value is the default. Raises ValueError
    for a shape the kernel cannot take."""
    given = {k: int(v) for k, v in zip(SHAPE_FIELDS, shape or ()) if v}
    return B.kernels(backend).Shape(**given) if given else None


def gpu_rows(report: dict, sizes, backend, variant, repeat, batch, shape, progress) -> list[dict]:
    """Rows of forks of device-resident state (:mod:`gpusim.jobs.gpubench`), each with the end-to-end ``gpusim.fork``
    time beside it up to :data:`E2E_MAX_BYTES`; adds the device, its copy bandwidth and the batch to ``report``."""
    dev = bench_resident(
        sizes,
        backend,
        variant,
        repeat,
        batch,
        shape=launch_shape(backend, shape),
        progress=progress and (lambda s, k: progress(s) if k == 1 else None),
    )
    rows = [r for r in dev["rows"] if r["forks"] == 1]
    for r in rows:
        r.update(backend=backend, variant=variant, outcome="ok", bytes_per_pte=r["device_bytes_per_pte"])
        r["pinned_runs"] = []  # dense, no pins (the real process of --vs-kernel pins none either)
        if r["size_bytes"] <= E2E_MAX_BYTES:
            r["e2e_wall_s"] = bench_size(r["size_bytes"], backend, variant, repeat)["engine_wall_s"]
    report.update({k: dev[k] for k in ("device", "copy_bandwidth_Bps", "traffic_bytes_per_pte", "resources")})
    if batch:
        report["batch"] = dict(dev["rows"][-1], backend=backend)
    return rows


def host_rows(report: dict, sizes, backend, variant, repeat, batch, progress, pins: Pins, writes=False) -> list[dict]:
    """Rows of ``gpusim.fork`` on state already in RAM (with ``writes``, the write phase after it); adds the batch to
    ``report``."""
    api.fork(bench_space(2 << 20, variant, pins), variant, backend=backend, check=False)  # compile / warm up
    report["copy_bandwidth_Bps"] = copy_bandwidth(np, 512 << 20, 7)
    rows = []
    for size in sizes:
        if progress:
            progress(size)
        row = bench_size(size, backend, variant, repeat, pins)
        # the state's resident bytes per PTE (about what a fork reads or writes once) at the engine's rate, against
        # this machine's copy rate (bytes read + written per second on every thread)
        row["fraction_of_copy_bandwidth"] = row["ptes_per_s"] * row["bytes_per_pte"] / report["copy_bandwidth_Bps"]
        if writes:
            add_write_phase(row, bench_space(size, variant, pins), backend, variant, repeat)
        rows.append(row)
    if batch:
        report["batch"] = bench_batch(min(sizes), batch, backend, variant, repeat)
    return rows


def add_kernel_fork(row: dict, repeat: int) -> None:
    """This machine's kernel forking a real process with the row's touched memory in the state the simulator
    models (pages writable and anon-exclusive, restored and checked before every timed fork; interleaved with a
    bare process's forks: :func:`gpusim.jobs.host.measure.time_layout`), where it fits in half of the available
    memory."""
    if row["size_bytes"] > mem_available_bytes() // 2:
        row["kernel_fork_s"] = None
        row["kernel_skipped"] = "does not fit in half of the available memory"
        return
    k = time_layout(RealLayout("dense", row["size_bytes"], pinned=row["pinned_runs"]), max(5, repeat))
    if k["refused"] or not k["checks"]["fresh"]:
        row["kernel_fork_s"] = None
        why = k["refused"] or {"state": "the state before the fork was not the modelled one"}
        row["kernel_skipped"] = "; ".join(f"{what}: {w}" for what, w in why.items())
        return
    f = k["fresh"]
    row["kernel_fork_s"] = f["median_ns"] / 1e9
    row["kernel_fork_base_s"] = f["base_median_ns"] / 1e9
    row["kernel_fork_interval_s"] = [x / 1e9 for x in f["interval_ns"]]
    row["kernel_ns_per_pte"] = f["added_ns"] / row["ptes"]
    row["speedup_vs_kernel"] = row["kernel_fork_s"] / row["engine_wall_s"]


def run(
    sizes: list[int],
    backend: str,
    variant: str,
    repeat: int,
    vs_kernel: bool,
    progress=None,
    batch: int = 0,
    shape: tuple | None = None,
    pins: Pins = Pins(),
    writes: bool = False,
) -> dict:
    """The bench report. On ``cuda`` the engine's time is that of forks on device-resident state
    (:mod:`gpusim.jobs.gpubench`, checked against the CPU engine at full size), with the end-to-end time of
    ``gpusim.fork`` on host arrays beside it for sizes up to :data:`E2E_MAX_BYTES`; elsewhere, and for pinned
    workloads or ``writes`` on every backend, it is the time of ``gpusim.fork`` on state already in RAM. With
    ``writes`` the write phase :data:`BENCH_WRITES` after each fork is timed as ``gpusim.fork`` runs it, beside the
    real kernel's same passes with ``vs_kernel``."""
    backend = resolve(backend)
    report = {
        "machine": cpu_description(),
        "kernel": platform.release(),
        "variant": variant,
        "kernel_fork_base_s": None,
        "backend": backend,
        "pinned": {"fraction": pins.fraction, "placement": pins.placement, "regions": pins.regions},
    }
    if backend == "cuda" and not pins.fraction and not writes:
        rows = gpu_rows(report, sizes, backend, variant, repeat, batch, shape, progress)
    else:
        rows = host_rows(report, sizes, backend, variant, repeat, batch, progress, pins, writes)
    for row in rows:
        if vs_kernel:
            add_kernel_fork(row, repeat)
            report["kernel_fork_base_s"] = report["kernel_fork_base_s"] or row.get("kernel_fork_base_s")
            if writes:
                add_kernel_writes(row, repeat)
        row.pop("pinned_runs", None)
    report["rows"] = rows
    return report
