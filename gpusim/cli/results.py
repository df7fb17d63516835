"""``gpusim sweep``, ``gpusim plot`` and ``gpusim export``: sweeps from YAML and their datasets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from gpusim.base.backend import MAX_WORKERS
from gpusim.cli.app import app, bad_input


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
    from gpusim.base.backend import cuda_usable, resolve
    from gpusim.base.yamlerr import ConfigError
    from gpusim.jobs.sweep.executors import ExecutorError, make_executor
    from gpusim.jobs.sweep.pyapi import sweep_runner
    from gpusim.jobs.sweep.runner import OtherSweep, SweepLocked

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

    from gpusim.jobs.sweep.export import load_results
    from gpusim.jobs.sweep.labels import columns, workload_label

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
        from gpusim.jobs.plots import plot_results

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
    from gpusim.jobs.sweep.export import export_results

    try:
        rows = export_results(path, out)
    except (FileNotFoundError, ValueError) as e:
        bad_input(str(e))
    except OSError as e:
        bad_input(f"{out}: cannot write it: {e.strerror or e}")
    typer.echo(f"{out}: {rows} rows")
