"""The ``gpusim`` command line: ``variants``, ``fork``, ``scenarios``, ``bench``, ``sweep``, ``plot``, ``export``,
``calibrate``, ``validate`` and ``capture``.

Bad input (an unknown variant, a malformed layout, oracle or injection) prints one line to stderr and exits 2,
with no traceback. A simulated fork exits 0 whatever its outcome (ok, enomem or oops). Each command imports the
modules it runs inside its own function, so that starting the command line does not load every job's
dependencies (start-up time).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from gpusim.backend import BACKENDS, MAX_WORKERS
from gpusim.variants import DEFAULT_VARIANT, VARIANTS, get_variant

FORK_HELP = """Simulate one fork() of an address space and print what the kernel variant did.

\b
LAYOUT notation (spec 7.1): tokens kind(:mod)*(*count), addresses from 0.
  kinds:  none normal pinned zero file shmem swap migw migr devw devr pfn folioN thp hole gap
  mods:   ro clean old pin pin=K ref=K nonex nonex=i,j cnt=K lv=L excl hwpoison
  vma(:flag)*  starts a VMA: shared ro nomaywrite exec file shmem noanon dontcopy wipeonfork
               pfnmap mixedmap hugetlb      mm:has_pinned=0|1  sets the parent's has_pinned
  default: one private anonymous writable VMA with an anon_vma, has_pinned set.
  e.g.  "pinned none*31 normal*480"     "normal*700 pinned normal*323"   (two tables)
        "vma:file file*100 file:pin file*411"    "none*16 folio16:pin normal*480"   "thp:pin"

\b
ORACLE (lock-break answers, spec 4): never | always | every:N | bern:P:SEED | list:(s,k),...
  e.g.  --oracle always     --oracle bern:0.5:1     --oracle "list:(0,3),(512,0)"

\b
INJECTIONS (spec 5), repeat --inject; without @A they apply to every call:
  fail@POINT#N[@A]       POINT: ptetable copy swapcont.atomic swapcont.kernel
  fail@bern:Q:SEED[@A]   each allocation fails with probability Q
  @W#N[@A]: EV(x); ...   W: LB SC EC ANY;  EV: zap reclaim unpin pin write touch
  e.g.  --inject fail@copy#1     --inject "@EC#1: zap(100)"     --inject "@SC#1@512: zap(520)"
"""

FORK_HELP = FORK_HELP.replace("[@A]", "\\[@A]")  # rich markup would read [@A] as a tag

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="gpusim: simulate Linux fork() page-table copying (early COW for pinned pages).",
)
err = Console(stderr=True, highlight=False)


def bad_input(msg: str) -> None:
    err.print(f"gpusim: error: {msg}", markup=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def variants() -> None:
    """List the kernel variants, one line each."""
    for v in VARIANTS.values():
        mark = " (default)" if v.name == DEFAULT_VARIANT else ""
        typer.echo(f"{v.name:<12} {v.summary}{mark}")


@app.command(help=FORK_HELP)
def fork(
    layout: Optional[str] = typer.Option(None, "--layout", "-l", help="Address space in layout notation."),
    scenario: Optional[str] = typer.Option(
        None,
        "--scenario",
        "-s",
        help="A scenario of the spec's catalogue (A, B2, H-c, M-b, ...); "
        "its layout, oracle and injections, unless given.",
    ),
    variant: str = typer.Option(DEFAULT_VARIANT, "--variant", "-v", help="Kernel variant (see `gpusim variants`)."),
    oracle: Optional[str] = typer.Option(None, "--oracle", help="Lock-break oracle (default never)."),
    inject: Optional[List[str]] = typer.Option(None, "--inject", "-i", help="Injection; repeatable."),
    backend: str = typer.Option("auto", "--backend", help=f"Engine: {', '.join(BACKENDS)}."),
    workload: Optional[str] = typer.Option(
        None, "--workload", "-w", help="A workload generator (anon, mixed) instead of a layout."
    ),
    sets: Optional[List[str]] = typer.Option(
        None, "--set", help="key=value for the workload generator (size=1GiB, pinned_fraction=0.1, ...); repeatable."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the workload generator."),
    snapshot: Optional[str] = typer.Option(None, "--snapshot", help="A snapshot written by `gpusim capture`."),
    pin: Optional[List[str]] = typer.Option(
        None, "--pin", help="With --snapshot: a pinned address range START-END (0x... or decimal); repeatable."
    ),
    profile: Optional[str] = typer.Option(
        None, "--profile", "-p", help="Cost profile: a shipped name or a file path (default: public-xeon-4210r-v6.8)."
    ),
    stream_tables: Optional[int] = typer.Option(
        None, "--stream-tables", min=1, help="--workload: fork in chunks of N page tables (default: when it is big)."
    ),
    writes: Optional[str] = typer.Option(
        None,
        "--writes",
        help="After the fork, a write phase: steps WHO:RANGE separated by ';' (WHO parent or child; RANGE all, "
        "A or A-B, or child:exit), e.g. 'parent:all; child:all'.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    try:
        inputs = (layout, scenario, workload, sets, seed, snapshot, pin, oracle, inject, stream_tables)
        result, lat = fork_and_model(variant, profile, backend, writes, inputs)
    except typer.Exit:
        raise
    except ValueError as e:
        bad_input(str(e))
    if as_json:
        typer.echo(json.dumps({**result.as_dict(), **lat}))
        return
    print_summary(result)
    if writes is not None:
        print_write_phase(result)
    print_latency(lat)


def fork_and_model(variant: str, profile, backend: str, writes, inputs: tuple):
    """``gpusim fork``'s fork (:func:`fork_input`'s ``inputs``), its write phase and their modelled latencies:
    (result, the fork's latency)."""
    from gpusim.costmodel import latency, load_profile, write_latency

    get_variant(variant)
    prof = load_profile(profile)
    workload, stream_tables = inputs[2], inputs[-1]
    if stream_tables is not None and workload is None:
        bad_input("--stream-tables goes with --workload")
    space, oracle, inject, rows = fork_input(variant, *inputs)
    oracle = "never" if oracle is None else oracle  # an empty --oracle is refused by the oracle parser
    if writes is not None and rows:
        bad_input("--writes: a streamed fork has no write phase (leave out --stream-tables, or fork less)")
    result = run_fork(space, variant, backend=backend, oracle=oracle, inject=inject or (), rows=rows, writes=writes)
    if result.write_phase is not None:
        result.write_phase.latency = write_latency(result.write_phase.counts, prof)
    return result, latency(result.counts, variant, prof, result.table_stats)


def print_latency(lat: dict) -> None:
    """The modelled latency line of ``gpusim fork``'s summary."""
    Console(highlight=False).print(
        f"modelled latency {lat['latency_ns'] / 1e6:.3f} ms (profile {lat['profile']}); longest PTE-lock hold "
        f"{lat['lock_hold_max_ns'] / 1e3:.1f} us; "
        + ", ".join(f"{k} {v / 1e6:.3f}" for k, v in lat["latency_breakdown_ns"].items() if v)
        + " ms",
        soft_wrap=True,
    )


def fork_input(variant, layout, scenario, workload, sets, seed, snapshot, pin, oracle, inject, stream_tables=None):
    """(address space, oracle, injections, tables per chunk) of ``gpusim fork``'s options: a snapshot, a workload
    generator, or a layout (a scenario gives its layout, oracle and injections unless they are given too). A
    generated space to stream is a :class:`gpusim.regions.RegionSpace` with its tables per chunk (else None)."""
    if snapshot is not None:
        if layout is not None or scenario is not None or workload is not None:
            bad_input("give one of --layout, --scenario, --workload and --snapshot")
    elif pin:
        bad_input("--pin goes with --snapshot")
    if workload is not None:
        if layout is not None or scenario is not None:
            bad_input("give one of --layout, --scenario and --workload")
    elif sets:
        bad_input("--set goes with --workload")
    from gpusim.catalogue import get_scenario
    from gpusim.layout import parse_layout

    if snapshot is not None:
        from gpusim.snapshot import parse_range, snapshot_space

        return snapshot_space(snapshot, variant, [parse_range(r) for r in pin or []]), oracle, inject, None
    if workload is not None:
        space, rows = workload_from_cli(workload, sets or [], variant, seed, oracle, inject, stream_tables)
        return space, oracle, inject, rows
    if scenario is not None:
        s = get_scenario(scenario)
        layout = layout if layout is not None else s.layout
        oracle = oracle if oracle is not None else s.oracle
        inject = inject if inject else list(s.inject)
    if layout is None:
        bad_input("give --layout, --scenario or --workload")
    return parse_layout(layout, variant), oracle, inject, None


def run_fork(space, variant: str, backend: str, oracle, inject, rows: int | None, writes=None):
    """``gpusim fork``'s fork: whole (then the write phase ``writes``, if any), or streamed in chunks of ``rows``
    tables with a progress bar on a terminal."""
    if not rows:
        from gpusim.api import fork

        return fork(space, variant, backend=backend, oracle=oracle, inject=inject, writes=writes)
    from gpusim.stream import fork_streamed

    with chunk_progress(space.nr_rows) as progress:
        return fork_streamed(space, variant, backend, chunk_rows=rows, progress=progress)


@contextlib.contextmanager
def chunk_progress(tables: int, tty: bool | None = None):
    """A progress bar over the tables of a streamed fork on a terminal (stderr, or ``tty``), else nothing: yields
    the callback for :func:`gpusim.stream.fork_streamed` (or None)."""
    if not (sys.stderr.isatty() if tty is None else tty):
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("fork, in chunks"), BarColumn(), MofNCompleteColumn(), TextColumn("tables"))
    console = Console(stderr=True, force_terminal=tty)  # nothing else prints meanwhile: no redirection of streams
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True, redirect_stderr=False) as bar:
        task = bar.add_task("fork", total=tables)
        yield lambda done, total: bar.update(task, completed=done)


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
    from gpusim.backend import resolve
    from gpusim.bench import Pins, launch_shape, run
    from gpusim.units import parse_size

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
    from gpusim.bench import BENCH_WRITES

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


@app.command()
def sweep(
    file: str = typer.Argument(..., help="A sweep file (YAML), e.g. workloads/quick.yaml."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Results directory (default results/<name>)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Override the file's backend."),
    executor: str = typer.Option("local", "--executor", help="local (processes on this machine) or ray."),
    address: Optional[str] = typer.Option(
        None, "--address", help="ray: the cluster (default RAY_ADDRESS, else a local cluster started for the run)."
    ),
    workers: int = typer.Option(
        0,
        "--workers",
        min=0,
        max=MAX_WORKERS,
        help="Parallel tasks (0: one per core, or per GPU with cuda; 1: in this process).",
    ),
    verify: bool = typer.Option(
        False, "--verify", help="Check the CRC-32 of every finished file too (always: its size, footer and rows)."
    ),
) -> None:
    """Run every point x repetition of a sweep and write a Parquet dataset (resumable: run it again to finish;
    points that failed are retried). Exits 1 when points are still failed at the end."""
    from gpusim.backend import cuda_usable, resolve
    from gpusim.sweep.executors import ExecutorError, make_executor
    from gpusim.sweep.pyapi import sweep_runner
    from gpusim.sweep.runner import OtherSweep, SweepLocked
    from gpusim.yamlerr import ConfigError

    if out is not None and Path(out).exists() and not Path(out).is_dir():
        bad_input(f"{out}: --out is a file, not a results directory")
    try:
        spec, points, runner = sweep_runner(file, out, backend)
        ex = make_executor(executor, workers or None, address, spec.backend)
    except ConfigError as e:
        bad_input(str(e))
    except ValueError as e:
        bad_input(f"{file}: {e}")
    if ex.name == "local" and resolve(spec.backend) == "cuda" and not cuda_usable():
        bad_input("backend 'cuda' needs an NVIDIA GPU and CuPy on this machine; use --backend cpu or cudasim")
    console = Console(stderr=True, highlight=False)

    def announce(todo: int) -> None:  # once the directory is this sweep's and locked: nothing printed before a refusal
        console.print(
            f"sweep {spec.name}: {len(points)} points x {spec.repeat} repetitions, {todo} to run on {ex.name} -> "
            f"{runner.out}"
        )

    try:
        if sys.stderr.isatty():
            summary = run_with_progress_bar(runner, ex, console, len(points) * spec.repeat, spec.name, verify, announce)
        else:
            summary = runner.run(executor=ex, verify=verify, announce=announce)
    except (ExecutorError, SweepLocked, OtherSweep) as e:
        bad_input(str(e))
    except OSError as e:  # an --out that is a file, or not writable
        bad_input(f"{runner.out}: cannot write the results there: {e.strerror or e}")
    print_sweep_summary(runner.out)
    report_sweep(console, summary, runner.out)


def report_sweep(console, summary: dict, out) -> None:
    """The closing lines of ``gpusim sweep``; exit 1 while point repetitions are failed."""
    notes = [f"{summary['redone']} damaged or missing file(s) redone"] if summary["redone"] else []
    notes += [f"{summary['malformed']} malformed manifest line(s) removed"] if summary["malformed"] else []
    console.print(
        f"{summary['ran']} run, {summary['skipped']} already done, {summary['errors']} failed in this run"
        + "".join(f", {n}" for n in notes)
        + f"; dataset: {out}"
    )
    if summary["failed"]:
        console.print(f"{summary['failed']} point repetition(s) failed: run the sweep again to retry them")
        raise typer.Exit(1)


def run_with_progress_bar(runner, ex, console, total: int, name: str, verify: bool = False, announce=None) -> dict:
    """``runner.run`` on ``ex`` with a rich progress bar (on a terminal), shown once the run goes ahead."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False, auto_refresh=True) as bar:
        bar.stop()  # started when the run is sure to go ahead

        def start(todo: int) -> None:
            if announce:
                announce(todo)
            bar.add_task(name, total=total, completed=total - todo)
            bar.start()

        def step(done, _total, _p) -> None:
            bar.update(bar.task_ids[0], completed=done)

        return runner.run(progress=step, executor=ex, verify=verify, announce=start)


def print_sweep_summary(path) -> None:
    import numpy as np

    from gpusim.sweep.export import load_results
    from gpusim.sweep.labels import columns, workload_label

    table = load_results(path)
    d = columns(table)
    n = table.num_rows
    groups: dict = {}
    for i in range(n):
        key = (d["variant"][i], workload_label(d, i), d["fork_index"][i])
        groups.setdefault(key, []).append(i)
    t = Table(title=f"{table.schema.metadata.get(b'gpusim.sweep', b'').decode()}: {n} rows", title_justify="left")
    for col in (
        "variant",
        "point",
        "fork",
        "runs",
        "outcome",
        "PTEs",
        "latency (ms)",
        "lock hold (us)",
        "early copies",
        "engine wall",
    ):
        t.add_column(col, justify="right" if col not in ("variant", "point", "outcome") else "left")
    order = lambda kv: (d["nr_ptes"][kv[1][0]] or 0, kv[0][1], kv[0][0], kv[0][2])  # noqa: E731
    for (v, label, k), idx in sorted(groups.items(), key=order):
        outs = sorted({d["outcome"][i] for i in idx})
        lat = [d["latency_ns"][i] for i in idx if d["latency_ns"][i] is not None]
        hold = [d["lock_hold_max_ns"][i] for i in idx if d["lock_hold_max_ns"][i] is not None]
        wall = [d["engine_wall_s"][i] for i in idx if d["engine_wall_s"][i] is not None]
        t.add_row(
            v,
            label,
            str(k),
            str(len(idx)),
            ",".join(outs),
            f"{d['nr_ptes'][idx[0]] or 0:,}",
            f"{np.median(lat) / 1e6:.3f}" if lat else "",
            f"{np.median(hold) / 1e3:.1f}" if hold else "",
            str(d["count.copy.alloc"][idx[0]] or 0),
            f"{np.median(wall) * 1e3:.1f} ms" if wall else "",
        )
    Console(highlight=False, width=200).print(t)


@app.command()
def plot(
    path: str = typer.Argument(..., help="A results directory written by `gpusim sweep`."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Where the PNGs go (default PATH/_plots)."),
) -> None:
    """Draw a sweep's figures: latency vs size, breakdown, latency vs pinned fraction, variants compared."""
    try:
        from gpusim.plots import plot_results

        files = plot_results(path, out)
    except ValueError as e:  # not a results directory, damaged files in it, or an --out that cannot be
        bad_input(str(e))
    except OSError as e:  # a figure that cannot be written there
        bad_input(f"{out or path}: cannot write the figures there: {e.strerror or e}")
    for f in files:
        typer.echo(str(f))
    if not files:
        typer.echo("no rows to plot")


@app.command()
def export(
    path: str = typer.Argument(..., help="A results directory written by `gpusim sweep`."),
    out: str = typer.Argument(..., help="The file to write: .arrow (Arrow IPC, with the metadata) or .csv."),
) -> None:
    """Write a sweep's whole dataset as one file, for tools that want a single file."""
    from gpusim.sweep.export import export_results

    try:
        rows = export_results(path, out)
    except (FileNotFoundError, ValueError) as e:
        bad_input(str(e))
    except OSError as e:
        bad_input(f"{out}: cannot write it: {e.strerror or e}")
    typer.echo(f"{out}: {rows} rows")


@app.command()
def calibrate(
    quick: bool = typer.Option(False, "--quick", help="Fewer layouts and rounds (about 20 seconds)."),
    out: Optional[str] = typer.Option(
        None,
        "--out",
        "-o",
        help="Profile file to write (default: the host profile directory, see `gpusim.host.calibrate`).",
    ),
    rounds: int = typer.Option(
        0, "--rounds", min=0, help="Round-robin rounds over the layouts, two forks each (0: 9 quick, 15 full)."
    ),
) -> None:
    """Time real forks of known layouts on this kernel (interleaved, in the fresh and the repeated state), fit the
    cost model, and write a host profile."""
    from gpusim.host.calibrate import calibrate as run_calibrate

    console = Console(stderr=True, highlight=False)
    result = run_calibrate(quick, out, rounds or None, progress=_round_progress(console))
    fit = result["fit"]
    t = Table(title=f"fit on {fit['variant']} rules ({len(fit['residuals'])} rows)", title_justify="left")
    for col in ("layout", "state", "measured (ms)", "fitted (ms)", "error"):
        t.add_column(col, justify="left" if col in ("layout", "state") else "right")
    for r in fit["residuals"]:
        t.add_row(
            r["name"],
            r["state"],
            f"{r['measured_ns'] / 1e6:.3f}",
            f"{r['fitted_ns'] / 1e6:.3f}",
            f"{100 * r['error']:+.1f}%",
        )
    Console(highlight=False, width=160).print(t)
    mar = fit["median_abs_residual"]
    typer.echo(f"median absolute residual: {'n/a' if mar is None else f'{100 * mar:.1f}%'}")
    typer.echo(
        "scales: "
        + ", ".join(
            f"{g} {v['scale']:.3f}" + ("" if v["identified"] else " (not measured)") for g, v in fit["groups"].items()
        )
    )
    typer.echo(_stability_line(fit["stability"]))
    w = fit["writes"]
    typer.echo(
        f"write costs ({w['pages']} pages, {w['rounds']} rounds): copy fault {w['copy_ns'] / 1e3:.2f} us, reuse fault "
        f"{w['reuse_ns'] / 1e3:.2f} us, write without a fault {w['none_ns']:.0f} ns"
        + ("" if w["checked"] else " (fault counts off: not used; the public profile's kept)")
    )
    for s in fit["skipped"]:
        typer.echo(f"skipped {s['name']}: {s['refused']}")
    typer.echo(f"profile written: {result['path']}")


def _round_progress(console: Console):
    """Progress of an interleaved measurement: one line per tenth of the visits."""
    step = {"next": 0}

    def show(i: int, n: int, name: str) -> None:
        if i >= step["next"] or i == n:
            console.print(f"[{i}/{n}] visits ({name})", highlight=False)
            step["next"] = i + max(1, n // 10)

    return show


def _stability_line(st: dict) -> str:
    cpu = "not pinned to a CPU" if st.get("cpu") is None else f"pinned to CPU {st['cpu']}"
    if "bare_fresh_ns" not in st:
        return f"machine: {cpu}"
    q1, med, q3 = st["bare_fresh_ns"]
    return (
        f"machine: {cpu}, {st['rounds']} rounds; bare fork {med / 1e3:.0f} us (IQR {q1 / 1e3:.0f}-{q3 / 1e3:.0f}), "
        f"drift {100 * st['bare_fresh_drift']:+.0f}% first half to second"
    )


@app.command()
def validate(
    profile: Optional[str] = typer.Option(
        None, "--profile", "-p", help="Cost profile (default: the newest host profile, else the public one)."
    ),
    rounds: int = typer.Option(21, "--rounds", min=3, help="Round-robin rounds over the layouts."),
    quick: bool = typer.Option(
        False, "--quick", help="Fit on the quick calibration layouts; held-out layouts up to 512 MiB only."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Compare the simulator with this kernel: page sharing after a real fork, and latency on held-out layouts in
    the fresh and the repeated state, each case with its interval and a verdict (pass, fail, too noisy)."""
    from gpusim.host.calibrate import validate as run_validate

    try:
        from gpusim.costmodel import load_profile

        load_profile(profile)
    except ValueError as e:
        bad_input(str(e))
    console = Console(stderr=True, highlight=False)
    rep = run_validate(profile, progress=None if as_json else _round_progress(console), rounds=rounds, quick=quick)
    if as_json:
        typer.echo(json.dumps(rep))
        return
    typer.echo(f"kernel {rep['kernel']} -> variant {rep['variant']}; profile {rep['profile']}")
    print_page_checks(rep)
    lat, st = rep["latency"], rep["stored_profile"]
    Console(highlight=False, width=160).print(_latency_table(lat["cases"], st["cases"]))
    typer.echo(
        f"model fitted in this window ({', '.join(lat['fit']['layouts'])}): "
        f"{_errors_line(lat)}; latency verdict: {lat['verdict']}"
    )
    typer.echo(f"stored profile {st['profile']} (its own window): {_errors_line(st)}")
    typer.echo(_stability_line(lat["stability"]))
    for name, why in rep["refused"].items():
        typer.echo(f"skipped {name}: {why}")
    typer.echo(f"verdict: {rep['verdict']}")


def print_page_checks(rep: dict) -> None:
    """``gpusim validate``'s page-by-page checks: the fork's sharing, and the write phase's frames."""

    def agreement(r):
        return "n/a" if r["agreement"] is None else f"{100 * r['agreement']:.2f}%"

    sh, wr = rep["sharing"], rep["writes"]
    typer.echo(f"page sharing: {sh['pages']} pages compared, agreement {agreement(sh)}")
    for lay in sh["layouts"]:
        typer.echo(f"  {lay['name']}: real {lay['real']}, simulated {lay['predicted']}")
    typer.echo(f"write phase (each writer kept its frame or got a new one): {wr['pages']} pages, {agreement(wr)} agree")
    for o in wr["orders"]:
        typer.echo(f"  {' then '.join(o['order'])}: {o['agree']} of {o['pages']} pages agree; real {o['real']}")
    lat = wr.get("latency")
    if lat:
        typer.echo(f"write-phase latency on {lat['layout']} (profile {lat['profile']}), measured -> modelled:")
        for p in lat["passes"]:
            typer.echo(
                f"  {p['pass']}: {p['measured_ns'] / 1e6:.2f} ms -> {p['predicted_ns'] / 1e6:.2f} ms "
                f"({100 * p['error']:+.1f}%)"
            )


def _errors_line(summary: dict) -> str:
    mae, mx = summary["median_abs_error"], summary["max_abs_error"]
    return (
        f"median absolute error {'n/a' if mae is None else f'{100 * mae:.1f}%'}, "
        f"largest {'n/a' if mx is None else f'{100 * mx:.1f}%'}"
    )


def _latency_table(cases: list[dict], stored: list[dict]) -> Table:
    t = Table(
        title="latency on layouts not used for fitting (fork time added to a bare process, 95% interval; "
        "predicted by the model fitted in this window, and by the stored profile)",
        title_justify="left",
    )
    cols = ("layout", "state", "measured (ms)", "interval (ms)", "predicted (ms)", "error", "verdict", "stored")
    for col in cols:
        t.add_column(col, justify="left" if col in ("layout", "state", "verdict") else "right")

    def pct(e):
        return f"{100 * e:+.1f}%" if e is not None else "n/a"

    for c, s in zip(cases, stored):
        lo, hi = c["interval_ns"]
        t.add_row(
            c["name"],
            c["state"],
            f"{c['measured_ns'] / 1e6:.3f}",
            f"{lo / 1e6:.3f}-{hi / 1e6:.3f}",
            f"{c['predicted_ns'] / 1e6:.3f}",
            pct(c["error"]),
            c["verdict"],
            pct(s["error"]),
        )
    return t


@app.command()
def capture(
    pid: int = typer.Argument(..., help="The process to capture."),
    out: str = typer.Option("snapshot.arrow", "--out", "-o", help="Snapshot file (Arrow IPC)."),
) -> None:
    """Read a running process's VMAs and pages from /proc into a snapshot that `gpusim fork --snapshot` takes."""
    from gpusim.host.capture import capture as run_capture
    from gpusim.host.capture import write_snapshot

    try:
        table = run_capture(pid)
    except FileNotFoundError:
        bad_input(f"no process {pid}")
    except PermissionError as e:
        bad_input(f"{e} (capture needs the right to read /proc/{pid}/pagemap: the same user, or root)")
    try:
        write_snapshot(table, out)
    except OSError as e:  # a missing directory, no right to write there, a directory in the way
        bad_input(f"{out}: cannot write the snapshot: {e.strerror or e}")
    meta = json.loads(table.schema.metadata[b"gpusim.capture"])
    typer.echo(
        f"{out}: {len(json.loads(table.schema.metadata[b'gpusim.vmas']))} VMAs, {table.num_rows} pages "
        f"(frame numbers {'read' if meta['frames'] else 'not readable: map counts unknown'})"
    )


def workload_from_cli(
    kind: str, sets: list[str], variant: str, seed: int, oracle=None, inject=None, stream_tables=None
):
    """(the address space of ``--workload KIND --set key=value ...`` (values read as YAML scalars), None), or
    (its :class:`gpusim.regions.RegionSpace`, tables per chunk) when it is to be streamed
    (:func:`gpusim.stream.stream_rows`, or ``stream_tables``)."""
    import yaml

    from gpusim.stream import stream_rows, streaming_refused
    from gpusim.sweep.spec import workload_spec
    from gpusim.workloads import build_workload, region_space

    d = {}
    for item in sets:
        key, eq, val = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--set '{item}': expected key=value")
        try:
            d[key.strip()] = yaml.safe_load(val)
        except yaml.YAMLError:
            raise ValueError(f"--set '{item}': the value is not a YAML scalar") from None
    w = workload_spec(kind, d, f"--workload {kind}")
    if stream_tables is not None:
        reason = streaming_refused(oracle, inject) or (None if w.kind in ("anon", "mixed") else "not generated")
        if reason:
            raise ValueError(f"--stream-tables: this fork cannot be streamed: {reason}")
    rows = stream_tables or stream_rows(w, f"--workload {kind}", oracle, inject)
    if rows:
        return region_space(w, variant, seed), rows
    space, _, _ = build_workload(w, variant, seed)
    return space, None


def print_summary(r) -> None:
    out = Console(highlight=False)
    c = r.counts
    colour = {"ok": "green", "enomem": "yellow", "oops": "red"}[r.outcome]
    head = f"[bold {colour}]{r.outcome}[/]"
    if r.oops:
        o = r.oops
        head += f"  oops@{o['function']}:{o['addr']} ({o['reason']}, call {o['call_start']})"
    if r.enomem:
        e = r.enomem
        head += f"  ENOMEM at {e['point']}#{e['occurrence']} (call {e['call_start']})"
    out.print(f"{head}   {r.variant} ({r.backend}), {r.nr_ptes} PTE slots", soft_wrap=True)
    t = Table(show_header=False, box=None, pad_edge=False)
    for _ in range(4):
        t.add_column()
        t.add_column(justify="right")
    pairs = [
        ("calls", c["table.call"]),
        ("passes", c["passes"]),
        ("lock breaks", c["lock_breaks"]),
        ("checks", c["check"]),
        ("shared", c["shared"]),
        ("early copies", c["installs"]),
        ("copy allocs", c["allocations"]),
        ("unused frees", c["unused_frees"]),
        ("pin_shared", c["pin_shared"]),
        ("swapcont atomic", c["swapcont_atomic"]),
        ("swapcont kernel", c["swapcont_kernel"]),
        ("levels added", c["levels_added"]),
        ("pmd share", c["pmd.share"]),
        ("pmd split", c["pmd.split"]),
        ("batches", c["batch.start"]),
        ("teardown frees", c["teardown_frees"]),
    ]
    for i in range(0, len(pairs), 4):
        row = []
        for name, val in pairs[i : i + 4]:
            row += [name, str(val)]
        t.add_row(*row)
    out.print(t)
    rss = r.child_rss
    out.print(
        f"child rss: anon {rss['anon']}, file {rss['file']}, shmem {rss['shmem']}, "
        f"swapents {rss['swapents']}" + (" (before teardown)" if r.child_rss_after_teardown else "")
    )
    if not r.invariants.checked:
        out.print("invariants: not checked (oops)")
    elif r.invariants.ok:
        out.print("invariants: [green]all 13 hold[/]")
    else:
        out.print(f"invariants: [red]{len(r.invariants.violations)} violation(s)[/]")
        for v in r.invariants.violations:
            out.print(f"  {v}", markup=False)
    if r.unfired:
        out.print(f"unfired injections: {', '.join(r.unfired)}", markup=False)
    if r.ignored_events:
        out.print(f"ignored events: {', '.join(r.ignored_events)}", markup=False)
    chunks = getattr(r, "chunks", 0)
    streamed = f" in {chunks} chunk(s) of up to {r.chunk_rows} tables" if chunks else ""
    out.print(f"digest {r.digest[:16]}…  engine {r.engine_wall_s * 1e3:.2f} ms{streamed}")


def print_write_phase(r) -> None:
    """The write phase's lines of ``gpusim fork``'s summary: what each writer's writes did, and the DMA view."""
    out = Console(highlight=False, soft_wrap=True)
    wp = r.write_phase
    if wp is None:
        out.print(f"write phase: not run (the fork ended {r.outcome})")
        return
    for who, counts in wp.counts.items():
        done = ", ".join(f"{n} {ev}" for ev, n in counts.items() if n) or "no writes"
        out.print(f"write phase, {who}: {done}", markup=False)
    d = wp.dma
    if not d["pinned"]:
        out.print("DMA: no pinned page in the parent")
    elif not d["parent_diverged"]:
        out.print(f"DMA: [green]the parent kept all {d['pinned']} of its pinned frames[/]")
    else:
        alias = f"; the child maps {d['child_aliased']} of them writable" if d["child_aliased"] else ""
        out.print(f"DMA: [red]the parent lost {d['parent_diverged']} of its {d['pinned']} pinned frames[/]{alias}")
    lat = wp.latency or {}
    if lat.get("latency_ns") is not None:
        out.print(f"write phase modelled latency {lat['latency_ns'] / 1e6:.3f} ms (beside the fork's, not in it)")
    if wp.invariants is not None and not wp.invariants.ok:
        for v in wp.invariants.violations:
            out.print(f"  {v}", markup=False)


@app.command()
def scenarios(
    variant: Optional[List[str]] = typer.Option(None, "--variant", "-v", help="Variants to run (default: all)."),
    backend: str = typer.Option("auto", "--backend", help=f"Engine: {', '.join(BACKENDS)}."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per scenario and variant."),
) -> None:
    """Run the spec's scenario catalogue (A ... M-b) under each variant and print a table of outcomes."""
    try:
        names = variant or list(VARIANTS)
        for v in names:
            get_variant(v)
        from gpusim.backend import resolve

        resolve(backend)
    except ValueError as e:
        bad_input(str(e))
    from gpusim.api import fork as run_fork
    from gpusim.catalogue import SCENARIOS
    from gpusim.layout import parse_layout

    table = Table(title="scenario catalogue: outcome passes/lock-breaks/early-copies/shared", title_justify="left")
    table.add_column("id")
    for v in names:
        table.add_column(v)
    for sid, s in SCENARIOS.items():
        cells = []
        for v in names:
            r = run_fork(parse_layout(s.layout, v), v, backend=backend, oracle=s.oracle, inject=s.inject)
            if as_json:
                typer.echo(json.dumps({"scenario": sid, **r.as_dict()}))
                continue
            c = r.counts
            head = f"oops@{r.oops['addr']}" if r.oops else r.outcome
            if r.outcome != "oops" and not r.invariants.ok:
                head += " INVARIANT!"
            colour = {"ok": "green", "enomem": "yellow", "oops": "red"}[r.outcome]
            cells.append(f"[{colour}]{head}[/] {c['passes']}/{c['lock_breaks']}/{c['installs']}/{c['shared']}")
        if not as_json:
            table.add_row(sid, *cells)
    if not as_json:
        out = Console(highlight=False)
        if not out.is_terminal:
            out = Console(highlight=False, width=160)
        out.print(table)


def main() -> None:
    """The command line; a usage error (an option's value, an unknown option) is one line naming it, exit 2."""
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # the command-line library's own errors (typer vendors click): matched by their shape
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # the help is printed already
            sys.exit(2)
        err.print(f"gpusim: error: {' '.join(e.format_message().split())}", markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    if type(code).__name__ == "Abort":
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
