"""``gpusim bench``: the simulator's speed, and the real kernel's beside it."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from gpusim.base.backend import BACKENDS
from gpusim.cli.app import app, bad_input
from gpusim.model.variants import DEFAULT_VARIANT, get_variant


@app.command()
def bench(
    sizes: str = typer.Option("1GiB,4GiB,16GiB,64GiB", "--sizes", help="Simulated sizes of dense 4 KiB anon memory."),
    backend: str = typer.Option("auto", "--backend", help=f"Engine: {', '.join(BACKENDS)}."),
    variant: str = typer.Option(DEFAULT_VARIANT, "--variant", "-v"),
    repeat: int = typer.Option(3, "--repeat", min=1, help="Forks per size (the median is reported)."),
    vs_kernel: bool = typer.Option(
        False,
        "--vs-kernel",
        help="Also time this machine's kernel forking a real process with the same touched memory.",
    ),
    batch: int = typer.Option(
        0,
        "--batch",
        min=0,
        help="Also fork this many address spaces of the smallest size in one batch and print forks/s.",
    ),
    threads_per_table: int = typer.Option(
        0, "--threads-per-table", min=0, help="cuda: threads per page table in the fork kernel (0: the default)."
    ),
    tables_per_block: int = typer.Option(
        0, "--tables-per-block", min=0, help="cuda: page tables per block of the fork kernel (0: the default)."
    ),
    max_registers: int = typer.Option(
        0, "--max-registers", min=0, max=255, help="cuda: cap on the fork kernel's registers per thread (0: none)."
    ),
    pinned_fraction: float = typer.Option(
        0.0,
        "--pinned-fraction",
        min=0.0,
        max=1.0,
        help="Pin this fraction of the pages (FOLL_PIN; io_uring "
        "fixed buffers in the real process with --vs-kernel): early COW at fork.",
    ),
    pinned_placement: str = typer.Option("contiguous", "--pinned-placement", help="contiguous or scattered."),
    pinned_regions: int = typer.Option(1, "--pinned-regions", min=1, help="contiguous: number of pinned runs."),
    writes: bool = typer.Option(
        False,
        "--writes",
        help="Also time the write phase 'parent:all; child:all' after each fork (with --vs-kernel, beside the "
        "kernel's same two passes on the real process: copy faults, then reuses).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Fork dense 4 KiB anonymous address spaces and print PTEs/s, ns/PTE, bytes/PTE and engine wall time.

    With --pinned-fraction the same pages are pinned in the simulated and (--vs-kernel) the real process, and the
    early copies per second are printed too.

    On a GPU (cuda) the engine wall time is that of forks on state already in device memory, each checked against
    the CPU engine at full size; the end-to-end time through host memory is printed beside it (sizes up to
    16 GiB), with the fraction of the device's measured copy bandwidth that the minimum traffic per PTE achieves."""
    pins = (pinned_fraction, pinned_placement, pinned_regions)
    shape = (threads_per_table, tables_per_block, max_registers)
    report = bench_report(sizes, backend, variant, repeat, vs_kernel, batch, shape, pins, as_json, writes)
    if as_json:
        typer.echo(json.dumps(report))
        return
    print_bench(report, vs_kernel, batch)
    if writes:
        print_bench_writes(report, vs_kernel)


def bench_report(sizes: str, backend, variant, repeat, vs_kernel, batch, shape, pins, quiet, writes=False) -> dict:
    """Check ``gpusim bench``'s options (one line and exit 2 when wrong) and run it."""
    from gpusim.base.backend import resolve
    from gpusim.base.units import parse_size
    from gpusim.jobs.bench import Pins, launch_shape, run

    try:
        get_variant(variant)
        size_list = [parse_size(s) for s in sizes.split(",") if s.strip()]
        if not size_list or min(size_list) < 4096:
            raise ValueError(f"--sizes '{sizes}': one or more sizes of at least 4KiB, comma-separated")
        if any(shape) and resolve(backend) != "cuda":
            raise ValueError("--threads-per-table, --tables-per-block and --max-registers shape the cuda kernels")
        launch_shape(resolve(backend), shape)
        if pins[1] not in ("contiguous", "scattered"):
            raise ValueError(f"--pinned-placement '{pins[1]}': contiguous or scattered")
    except ValueError as e:
        bad_input(str(e))
    status = None if quiet else Console(stderr=True)
    return run(
        size_list,
        backend,
        variant,
        repeat,
        vs_kernel,
        progress=(lambda s: status.print(f"forking {s / 2**30:g} GiB ...", highlight=False)) if status else None,
        batch=batch,
        shape=shape,
        pins=Pins(*pins),
        writes=writes,
    )


def bench_row(r: dict, gpu: bool, vs_kernel: bool, pinned: bool) -> list[str]:
    """The cells of one size of ``gpusim bench``'s table."""
    cells = [
        f"{r['size_bytes'] / 2**30:g} GiB",
        f"{r['ptes']:,}",
        r["backend"],
        f"{r['engine_wall_s'] * 1e3:.2f} ms",
        f"{r['ns_per_pte']:.3f}",
        f"{r['ptes_per_s'] / 1e9:.3f} G",
        f"{r['bytes_per_pte']:.1f}",
    ]
    if pinned:
        cells += [f"{r['early_copies']:,}", f"{r['early_copies_per_s'] / 1e6:.2f} M"]
    if not gpu and "fraction_of_copy_bandwidth" in r:
        cells.append(f"{100 * r['fraction_of_copy_bandwidth']:.1f}%")
    if gpu:
        cells += [
            f"{100 * r['fraction_of_copy_bandwidth']:.1f}%",
            f"{r['e2e_wall_s'] * 1e3:.1f} ms" if "e2e_wall_s" in r else "",
            r.get("check", ""),
        ]
    if vs_kernel:
        if r.get("kernel_fork_s"):
            cells += [
                f"{r['kernel_fork_s'] * 1e3:.2f} ms",
                f"{r['kernel_ns_per_pte']:.1f}",
                f"{r['speedup_vs_kernel']:.1f}x",
            ]
        else:
            cells += ["n/a", "", ""]
    return cells


def print_bench_writes(report: dict, vs_kernel: bool) -> None:
    """``gpusim bench --writes``: the write phase after each fork."""
    from gpusim.jobs.bench import BENCH_WRITES

    t = Table(title=f"write phase '{BENCH_WRITES}' after the fork ({report['backend']})", title_justify="left")
    cols = ["size", "writes", "copies", "reuses", "wall", "writes/s", "wall / fork"]
    cols += ["kernel passes", "speedup", "kernel faults"] if vs_kernel else []
    for col in cols:
        t.add_column(col, justify="right")
    for r in report["rows"]:
        c = r["write_counts"]
        cells = [f"{r['size_bytes'] / 2**30:g} GiB", f"{r['writes']:,}", f"{c['parent']['copy']:,}"]
        cells += [f"{c['child']['reuse']:,}", f"{r['write_wall_s'] * 1e3:.1f} ms", f"{r['writes_per_s'] / 1e6:.1f} M"]
        cells.append(f"{r['write_vs_fork']:.2f}x")
        if vs_kernel and r.get("kernel_write_s"):
            cells += [f"{r['kernel_write_s'] * 1e3:.1f} ms", f"{r['write_speedup_vs_kernel']:.1f}x"]
            cells.append("as simulated" if r["kernel_write_checked"] else "NOT as simulated")
        elif vs_kernel:
            cells += ["n/a", "", ""]
        t.add_row(*cells)
    Console(highlight=False, width=200).print(t)


def print_bench(report: dict, vs_kernel: bool, batch: int) -> None:
    """``gpusim bench``'s table and lines for people."""
    pinned = bool(report["pinned"]["fraction"])
    gpu = report["backend"] == "cuda" and not pinned
    title = f"gpusim bench: {report['machine']}, kernel {report['kernel']}, {report['variant']}"
    if pinned:
        p = report["pinned"]
        title += f", {100 * p['fraction']:g}% of the pages pinned ({p['placement']}"
        title += f", {p['regions']} runs)" if p["placement"] == "contiguous" else ")"
    if not gpu:
        title += f" (copy bandwidth {report['copy_bandwidth_Bps'] / 1e9:.1f} GB/s read+write, all threads)"
    if gpu:
        title += (
            f", {report['device']} (copy bandwidth {report['copy_bandwidth_Bps'] / 1e12:.2f} TB/s read+write, "
            f"{report['traffic_bytes_per_pte']} bytes of traffic per PTE at least)"
        )
    t = Table(title=title, title_justify="left")
    cols = ["size", "PTEs", "backend", "engine wall", "ns/PTE", "PTEs/s", "bytes/PTE"]
    cols += ["early copies", "copies/s"] if pinned else []
    cols += ["% copy BW", "end-to-end", "check"] if gpu else ["% copy BW"]
    cols += ["kernel fork", "kernel ns/PTE", "speedup"] if vs_kernel else []
    for col in cols:
        t.add_column(col, justify="right")
    for r in report["rows"]:
        t.add_row(*bench_row(r, gpu, vs_kernel, pinned))
    Console(highlight=False, width=200).print(t)
    if vs_kernel and report["kernel_fork_base_s"]:
        typer.echo(
            f"kernel fork of the bare measuring process: {report['kernel_fork_base_s'] * 1e3:.2f} ms "
            f"(subtracted in kernel ns/PTE, not in speedup); kernel forks timed in the modelled state "
            f"(pages writable and anon-exclusive before each fork)"
        )
    if batch:
        b = report["batch"]
        where = "state resident on the device, " if gpu else ""
        typer.echo(
            f"batch: {b['forks']} forks of {b['size_bytes'] / 2**30:g} GiB in one launch ({where}"
            f"{b['backend']}): {b['engine_wall_s'] * 1e3:.1f} ms, {b['forks_per_s']:.1f} forks/s, "
            f"{b['ptes_per_s'] / 1e6:.1f} M PTEs/s" + (f", check: {b['check']}" if "check" in b else "")
        )
