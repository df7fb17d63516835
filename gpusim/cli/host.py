"""``gpusim calibrate``, ``gpusim validate`` and ``gpusim capture``: the real kernel of this machine."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from gpusim.cli.app import app, bad_input


@app.command()
def calibrate(
    quick: bool = typer.Option(False, "--quick", help="Fewer layouts and rounds (about 20 seconds)."),
    out: Optional[str] = typer.Option(
        None,
        "--out",
        "-o",
        help="Profile file to write (default: the host profile directory, see `gpusim.jobs.host.calibrate`).",
    ),
    rounds: int = typer.Option(
        0, "--rounds", min=0, help="Round-robin rounds over the layouts, two forks each (0: 9 quick, 15 full)."
    ),
) -> None:
    """Time real forks of known layouts on this kernel (interleaved, in the fresh and the repeated state), fit the
    cost model, and write a host profile."""
    from gpusim.jobs.host.calibrate import calibrate as run_calibrate

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
    typer.echo("warm (repeated state) scales: " + ", ".join(f"{g} {v:.3f}" for g, v in fit["warm_scales"].items()))
    typer.echo(_base_line(fit["base"]))
    typer.echo(_stability_line(fit["stability"]))
    band = result["profile"]["band"]
    typer.echo(f"band: {100 * band['low']:+.1f}%..{100 * band['high']:+.1f}% around each prediction ({band['basis']})")
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


def _base_line(b: dict) -> str:
    """How calibration set ``fork.base`` (:func:`gpusim.jobs.host.calibrate.with_fork_base`)."""
    who = {"probe": "the C fork probe", "bare": "the bare measuring interpreter"}[b["from"]]
    out = f"fork.base {b['ns'] / 1e3:.1f} us: {who}'s fork {b['measured_ns'] / 1e3:.1f} us less the model's "
    out += f"{b['modelled_own_ns'] / 1e3:.1f} us for its own address space"
    if b["own"] is not None:
        out += f" ({b['own']['vmas']} VMAs, {b['own']['anon_pages']} anonymous pages)"
    c = b.get("bare_check")
    if c:
        out += (
            f"; the bare interpreter then predicted {c['predicted_ns'] / 1e3:.1f} us, measured "
            f"{c['measured_ns'] / 1e3:.1f} us ({100 * c['error']:+.1f}%)"
        )
    return out


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
    process_entries: int = typer.Option(
        4_000_000,
        "--process-entries",
        min=0,
        help="Keys of the dict the captured real process holds, a held-out case (0: leave it out).",
    ),
    record: bool = typer.Option(
        True,
        "--record/--no-record",
        help="Keep the band check in the stored host profile, its band widened to cover the drift seen now.",
    ),
    episodes: bool = typer.Option(
        False,
        "--episodes",
        help="Instead: fork episodes (spec 11.6) measured here against the simulator: the child's private dirty "
        "pages over time and the parent's write latency (needs a C compiler).",
    ),
    small_forks: bool = typer.Option(
        False,
        "--small-forks",
        help="Instead: whole small processes (THP-only, many VMAs, dense 64-512 MiB, the bare interpreter, a C "
        "probe) predicted from their captures, fork.base included, against their forks measured in this window.",
    ),
) -> None:
    """Compare the simulator with this kernel: page sharing after a real fork, and latency on held-out layouts in
    the fresh and the repeated state, each case with its interval and a verdict (pass, fail, too noisy); say how
    the stored profile's band holds now."""
    # long: the command's options, one typer declaration each, then the report's lines
    if episodes:
        validate_episodes_command(profile, quick, as_json)
        return
    if small_forks:
        validate_small_forks_command(profile, min(rounds, 11), as_json)
        return
    from gpusim.jobs.host.calibrate import validate as run_validate

    try:
        from gpusim.analysis.costmodel import load_profile

        load_profile(profile)
    except ValueError as e:
        bad_input(str(e))
    console = Console(stderr=True, highlight=False)
    rep = run_validate(
        profile,
        progress=None if as_json else _round_progress(console),
        rounds=rounds,
        quick=quick,
        record=record,
        process_entries=process_entries,
    )
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
    for c in lat["cases"]:
        if "whole" in c:
            w = c["whole"]
            typer.echo(
                f"{c['name']}, its whole fork: measured {w['measured_ns'] / 1e6:.2f} ms, predicted from its capture "
                f"{w['predicted_ns'] / 1e6:.2f} ms ({100 * w['error']:+.1f}%, fork.base included)"
            )
    typer.echo(f"stored profile {st['profile']} (its own window): {_errors_line(st)}")
    typer.echo(_band_line(st["band_check"]))
    typer.echo(_stability_line(lat["stability"]))
    for name, why in rep["refused"].items():
        typer.echo(f"skipped {name}: {why}")
    typer.echo(f"verdict: {rep['verdict']}")


def validate_small_forks_command(profile, rounds: int, as_json: bool) -> None:
    """``gpusim validate --small-forks`` (:mod:`gpusim.jobs.host.small`): a line per process and a verdict."""
    from gpusim.analysis.costmodel import load_profile
    from gpusim.jobs.host.small import TOLERANCE, validate_small_forks

    try:
        load_profile(profile)
    except ValueError as e:
        bad_input(str(e))
    console = Console(stderr=True, highlight=False)
    rep = validate_small_forks(rounds, None if as_json else _round_progress(console), profile)
    if as_json:
        typer.echo(json.dumps(rep))
        return
    typer.echo(_base_line(rep["base"]) + " (the model fitted in this window)")
    t = Table(
        title=f"whole forks from cold, measured (median of {rep['rounds']}) and predicted from each process's "
        f"capture; relative: to {rep['reference']}; stored: profile {rep['stored']['profile']}",
        title_justify="left",
    )
    for col in ("process", "measured (ms)", "predicted (ms)", "error", "relative", "stored", "within"):
        t.add_column(col, justify="left" if col == "process" else "right")
    for c, s in zip(rep["cases"], rep["stored"]["cases"]):
        rel = "n/a" if c["relative_error"] is None else f"{100 * c['relative_error']:+.1f}%"
        t.add_row(
            c["name"] + (" [C]" if c["holder"] == "c" and not c["name"].startswith("(") else ""),
            f"{c['measured_ns'] / 1e6:.3f}",
            f"{c['predicted_ns'] / 1e6:.3f}",
            f"{100 * c['error']:+.1f}%",
            rel,
            f"{100 * s['error']:+.1f}%",
            f"{TOLERANCE:.0%}" if c["pass"] else "no",
        )
    Console(highlight=False, width=160).print(t)
    st = rep["size_term"]
    if st:
        h = st["held_out_median_abs_error"]
        typer.echo(
            f"size term (dense, a line in log2 size against a constant, held out one at a time): "
            f"{100 * st['slope_per_doubling']:+.1f}% per doubling; median error {100 * h['without']:.1f}% without, "
            f"{100 * h['with']:.1f}% with, noise {100 * st['noise']:.1f}%: "
            f"{'beats' if st['beats_noise'] else 'within'} the noise in this window"
        )
    if rep["probe_refused"]:
        typer.echo(f"no C probe: {rep['probe_refused']}")
    typer.echo(f"verdict: {rep['verdict']}")


def validate_episodes_command(profile, quick: bool, as_json: bool) -> None:
    """``gpusim validate --episodes``: the host episodes against the simulator, a line per case and a verdict."""
    from gpusim.jobs.host.episodes import COW_TOLERANCE, LATENCY_TOLERANCE, HostEpisodeError, validate_episodes

    console = Console(stderr=True, highlight=False)
    try:
        rep = validate_episodes(quick, profile=profile, progress=None if as_json else lambda m: console.print(m))
    except HostEpisodeError as e:
        bad_input(str(e))
    if as_json:
        typer.echo(json.dumps(rep))
        return
    for name, s in rep["calibration_samples"].items():
        typer.echo(f"calibration: {name}: {s['n']:,} writes, p50 {s['p50']:,.0f} ns, p99 {s['p99']:,.0f} ns")
    for c in rep["cases"]:
        m, q = c["measured_latency_ns"], c["calibrated_latency_ns"]
        cow = "no sample over the floor" if c["cow_error"] is None else f"{c['cow_error']:.2%}"
        typer.echo(
            f"{c['pages'] * 4096 >> 20} MiB THP {'on' if c['thp'] else 'off'} {c['spec']['pattern']}: "
            f"private pages worst error {cow} (tolerance {COW_TOLERANCE:.0%}); latency p50 {m['p50']:,.0f} ns "
            f"measured, {q['p50']:,.0f} modelled; p99 {m['p99']:,.0f} / {q['p99']:,.0f} (tolerance "
            f"{LATENCY_TOLERANCE:.0%}); {'pass' if c['ok'] else 'fail'}"
        )
    typer.echo(f"verdict: {rep['verdict']}")


def _band_line(bc: dict) -> str:
    """What the held-out cases say of the stored profile's band."""
    if bc["band"] is None:
        return f"stored profile {bc['profile']}: no band (not calibrated on this machine)"
    lo, hi = bc["band"]
    line = (
        f"its band {100 * lo:+.1f}%..{100 * hi:+.1f}% holds {bc['inside']} of {bc['cases']} held-out cases; "
        f"median error now {100 * bc['median_error']:+.1f}%"
    )
    if bc["recorded"]:
        w = bc["widened"]
        line += f"; band now {100 * w[0]:+.1f}%..{100 * w[1]:+.1f}% (recorded in {bc['recorded']})"
    return line


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
    cols = (
        "layout",
        "state",
        "frame breaks",
        "measured (ms)",
        "interval (ms)",
        "predicted (ms)",
        "error",
        "verdict",
        "stored",
    )
    for col in cols:
        t.add_column(col, justify="left" if col in ("layout", "state", "verdict") else "right")

    def pct(e):
        return f"{100 * e:+.1f}%" if e is not None else "n/a"

    for c, s in zip(cases, stored):
        lo, hi = c["interval_ns"]
        t.add_row(
            c["name"],
            c["state"],
            "n/a" if c.get("frame_breaks") is None else f"{100 * c['frame_breaks']:.0f}%",
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
    from gpusim.jobs.host.capture import capture as run_capture
    from gpusim.jobs.host.capture import write_snapshot

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
    frames = (
        "read: its frames keep their physical order"
        if meta["frames"]
        else "not readable: map counts unknown, frames taken in address order"
    )
    typer.echo(
        f"{out}: {len(json.loads(table.schema.metadata[b'gpusim.vmas']))} VMAs, {table.num_rows} pages "
        f"(frame numbers {frames})"
    )
