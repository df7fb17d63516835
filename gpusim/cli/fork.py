"""``gpusim fork``, ``gpusim scenarios`` and ``gpusim variants``: one fork, the catalogue, the variants.

The fork command's input flags map onto the workload spec of a sweep (:data:`gpusim.jobs.sweep.spec.Workload`)
and its fork flags onto :class:`gpusim.jobs.sweep.spec.ForkSpec`, so one input means the same here and in a YAML file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from gpusim.base.backend import BACKENDS
from gpusim.cli.app import app, bad_input
from gpusim.model.variants import DEFAULT_VARIANT, VARIANTS, get_variant

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


@app.command()
def variants() -> None:
    """List the kernel variants, one line each."""
    for v in VARIANTS.values():
        mark = " (default)" if v.name == DEFAULT_VARIANT else ""
        typer.echo(f"{v.name:<12} {v.summary}{mark}")


@app.command(help=FORK_HELP)
def fork(
    # long: the command's options, one typer declaration each
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
    episode: Optional[str] = typer.Option(
        None,
        "--episode",
        help="After the fork, the writes while the child lives, over time (spec 11.6): key=value pairs, e.g. "
        "'duration=10s, rate=50000, pattern=zipf' (every key: README, 'Fork episodes').",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    try:
        if stream_tables is not None and workload is None:
            bad_input("--stream-tables goes with --workload")
        spec, what = fork_workload(layout, scenario, workload, sets, snapshot, pin)
        options = ForkOptions(variant, oracle, inject, writes, backend, seed, stream_tables, episode)
        if layout is not None:
            options = scenario_defaults(scenario, options)
        result, lat = fork_and_model(spec, what, options, profile)
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
    if episode is not None:
        print_episode(result)


@dataclasses.dataclass(frozen=True)
class ForkOptions:
    """``gpusim fork``'s options for the fork itself (those of a sweep's ``fork`` section, and how it runs)."""

    variant: str
    oracle: str | None
    inject: list[str] | None
    writes: str | None
    backend: str
    seed: int
    stream_tables: int | None
    episode: str | None = None


def fork_workload(layout, scenario, workload, sets, snapshot, pin):
    """(the workload spec, the flag that gave it) of ``gpusim fork``'s input flags
    (:data:`gpusim.jobs.sweep.spec.Workload`): ``--layout``, ``--scenario``, ``--workload KIND --set key=value ...``
    (values read as YAML scalars) or ``--snapshot`` with its ``--pin`` ranges, each the kind of the same name.
    ``--scenario`` with ``--layout`` is the layout, the scenario giving the fork its oracle and injections
    (:func:`scenario_defaults`)."""
    from gpusim.jobs.sweep.spec import workload_spec

    if snapshot is not None:
        if layout is not None or scenario is not None or workload is not None:
            bad_input("give one of --layout, --scenario, --workload and --snapshot")
        return workload_spec("snapshot", {"path": snapshot, "pinned": pin or []}, "--snapshot"), "--snapshot"
    if pin:
        bad_input("--pin goes with --snapshot")
    if workload is not None:
        if layout is not None or scenario is not None:
            bad_input("give one of --layout, --scenario and --workload")
        what = f"--workload {workload}"
        return workload_spec(workload, set_values(sets or []), what), what
    if sets:
        bad_input("--set goes with --workload")
    if layout is not None:
        return workload_spec("layout", {"layout": layout}, "--layout"), "--layout"
    if scenario is not None:
        return workload_spec("scenario", {"scenario": scenario}, "--scenario"), "--scenario"
    bad_input("give --layout, --scenario or --workload")


def set_values(sets: list[str]) -> dict:
    """``--set key=value`` options as the keys of a workload spec, each value read as a YAML scalar."""
    import yaml

    d = {}
    for item in sets:
        key, eq, val = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--set '{item}': expected key=value")
        try:
            d[key.strip()] = yaml.safe_load(val)
        except yaml.YAMLError:
            raise ValueError(f"--set '{item}': the value is not a YAML scalar") from None
    return d


def scenario_defaults(scenario: str | None, options: ForkOptions) -> ForkOptions:
    """``--scenario`` beside ``--layout``: the scenario's oracle and injections where the options give none."""
    if scenario is None:
        return options
    from gpusim.inputs.catalogue import get_scenario

    s = get_scenario(scenario)
    return dataclasses.replace(
        options, oracle=s.oracle if options.oracle is None else options.oracle, inject=options.inject or list(s.inject)
    )


def fork_and_model(spec, what: str, options: ForkOptions, profile):
    """``gpusim fork``'s fork of the workload ``spec`` (given by the flag ``what``) with ``options``, its write phase
    and their modelled latencies: (result, the fork's latency)."""
    from gpusim.analysis.costmodel import latency, load_profile, write_latency

    get_variant(options.variant)
    prof = load_profile(profile)
    space, options, rows = fork_input(spec, what, options)
    if options.writes is not None and rows:
        bad_input("--writes: a streamed fork has no write phase (leave out --stream-tables, or fork less)")
    if options.episode is not None and rows:
        bad_input("--episode: a streamed fork keeps no state for an episode (leave out --stream-tables, or fork less)")
    result = run_fork(space, options, rows, prof)
    if result.write_phase is not None:
        result.write_phase.latency = write_latency(result.write_phase.counts, prof, result.write_phase.table_counts)
    return result, latency(result.counts, options.variant, prof, result.table_stats)


def print_latency(lat: dict) -> None:
    """The modelled latency line of ``gpusim fork``'s summary."""
    band = (
        "no band: the profile was not calibrated on this machine"
        if lat["latency_low_ns"] is None
        else f"band {lat['latency_low_ns'] / 1e6:.3f}-{lat['latency_high_ns'] / 1e6:.3f} ms"
    )
    Console(highlight=False).print(
        f"modelled latency {lat['latency_ns'] / 1e6:.3f} ms ({band}; profile {lat['profile']}); longest PTE-lock hold "
        f"{lat['lock_hold_max_ns'] / 1e3:.1f} us; "
        + ", ".join(f"{k} {v / 1e6:.3f}" for k, v in lat["latency_breakdown_ns"].items() if v)
        + " ms",
        soft_wrap=True,
    )


def fork_input(spec, what: str, options: ForkOptions):
    """(address space, options, tables per chunk) of a workload spec, as a sweep point builds it
    (:func:`gpusim.inputs.workloads.build_workload`: a catalogue scenario gives its oracle and injections unless the
    options give them). A generated space to stream is a :class:`gpusim.inputs.regions.RegionSpace` with its tables
    per chunk (:func:`gpusim.stream.stream_rows`, or ``--stream-tables``); else the tables per chunk are None. What
    does not fit the memory is refused before anything is built."""
    from gpusim.inputs.workloads import GENERATED_KINDS, build_workload, region_space

    rows = None
    if options.stream_tables is not None or spec.kind in GENERATED_KINDS:  # the others are never streamed
        from gpusim.stream import stream_rows, streaming_refused

        if options.stream_tables is not None:
            reason = streaming_refused(options.oracle, options.inject)
            reason = reason or (None if spec.kind in GENERATED_KINDS else "not generated")
            if reason:
                raise ValueError(f"--stream-tables: this fork cannot be streamed: {reason}")
        rows = options.stream_tables or stream_rows(spec, what, options.oracle, options.inject)
    if rows:
        return region_space(spec, options.variant, options.seed), options, rows
    space, oracle, inject = build_workload(spec, options.variant, options.seed)
    options = dataclasses.replace(
        options, oracle=oracle if options.oracle is None else options.oracle, inject=options.inject or inject
    )
    return space, options, None


def run_fork(space, options: ForkOptions, rows: int | None, profile=None):
    """``gpusim fork``'s fork: whole (then the write phase, if any), or streamed in chunks of ``rows`` tables with
    a progress bar on a terminal."""
    oracle = "never" if options.oracle is None else options.oracle  # an empty --oracle is refused by its parser
    if not rows:
        from gpusim.api import fork

        inject = options.inject or ()
        return fork(
            space,
            options.variant,
            backend=options.backend,
            oracle=oracle,
            inject=inject,
            writes=options.writes,
            episode=options.episode,
            profile=profile,
        )
    from gpusim.stream import fork_streamed

    with chunk_progress(space.nr_rows) as progress:
        return fork_streamed(space, options.variant, options.backend, chunk_rows=rows, progress=progress)


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
    print_invariants(out, r)
    if r.unfired:
        out.print(f"unfired injections: {', '.join(r.unfired)}", markup=False)
    if r.ignored_events:
        out.print(f"ignored events: {', '.join(r.ignored_events)}", markup=False)
    chunks = getattr(r, "chunks", 0)
    streamed = f" in {chunks} chunk(s) of up to {r.chunk_rows} tables" if chunks else ""
    out.print(f"digest {r.digest[:16]}…  engine {r.engine_wall_s * 1e3:.2f} ms{streamed}")


def print_invariants(out, r) -> None:
    """The invariants' line of a fork's summary (spec 6's, or L1-L7 for a lazy design, with its tables)."""
    lazy = get_variant(r.variant).lazy
    if not r.invariants.checked:
        out.print("invariants: not checked (oops)")
    elif r.invariants.ok:
        out.print("invariants: [green]" + ("L1-L7 of spec 12.9 hold" if lazy else "all 13 hold") + "[/]")
    else:
        out.print(f"invariants: [red]{len(r.invariants.violations)} violation(s)[/]")
        for v in r.invariants.violations:
            out.print(f"  {v}", markup=False)
    if lazy:
        done = ", ".join(f"{r.counts[e]} {e}" for e in LAZY_FORK_EVENTS if r.counts[e]) or "nothing shared or deferred"
        out.print(f"tables: {done}", markup=False)


# the lazy designs' table events a summary names (spec 12.8)
LAZY_FORK_EVENTS = ("table.share", "table.share_fallback", "pte.acct", "async.defer")
LAZY_WRITE_EVENTS = (
    "table.cow_copy",
    "table.reuse",
    "table.free",
    "table.zap_shared",
    *(f"async.copy.{t}" for t in ("child", "fault", "gup", "vma")),
    "async.abort",
)


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
    for who, counts in (wp.table_counts or {}).items():
        done = ", ".join(f"{n} {ev}" for ev, n in counts.items() if n and ev in LAZY_WRITE_EVENTS)
        if done:
            out.print(f"write phase, {who} (tables): {done}", markup=False)
    if wp.outcome != "ok":
        out.print(f"write phase ended {wp.outcome}: {wp.oops}", markup=False)
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


def _ns(x: float) -> str:
    return f"{x:.0f} ns" if x < 1e3 else f"{x / 1e3:.1f} us" if x < 1e6 else f"{x / 1e6:.2f} ms"


def print_episode(r) -> None:
    """The episode's lines of ``gpusim fork``'s summary: what the writes did, COW memory, latency, a timeline."""
    out = Console(highlight=False, soft_wrap=True)
    ep = r.episode
    if ep is None:
        out.print(f"episode: not run (the fork ended {r.outcome})")
        return
    rep, mib = ep.report, 2**20
    for who, counts in rep["faults"].items():
        if any(counts.values()):
            done = ", ".join(f"{n:,} {e}" for e, n in counts.items() if n)
            out.print(f"episode, {who} ({rep['domain_pages'].get(who, 0):,} pages written over): {done}", markup=False)
    out.print(
        f"COW memory peak {rep['cow_bytes_peak'] / mib:,.1f} MiB; the child's private dirty memory at its exit "
        f"{rep['child_private_dirty_bytes'] / mib:,.1f} MiB"
    )
    if "table_ns" in rep:  # a lazy design's table work (spec 12.8)
        work = ", ".join(f"{who} {ns / 1e6:,.3f} ms" for who, ns in rep["table_ns"].items())
        requests = sum(len(w) for w in ep.table_work)
        out.print(
            f"table work: {work} ({requests:,} requests did it first; a child's also at its exit); the child's "
            f"deferred copies at its start {rep['child_sync_ns'] / 1e6:,.3f} ms"
        )
    for key, who in (("write_latency_ns", "writes"), ("child_write_latency_ns", "child's writes")):
        p = rep[key]
        if p is not None:
            added = f"; added {rep['added_latency_ns'] / 1e6:,.1f} ms in all" if key == "write_latency_ns" else ""
            out.print(
                f"modelled latency of the {who}: p50 {_ns(p['p50'])}, p99 {_ns(p['p99'])}, p99.9 {_ns(p['p999'])}, "
                f"max {_ns(p['max'])}{added} (fork stall {_ns(rep['stall_ns'])}; each fault at the profile's one "
                "cost: `gpusim validate --episodes` measures the spread)"
            )
    print_timeline(out, rep["timeline"])
    if ep.invariants is not None and not ep.invariants.ok:
        for v in ep.invariants.violations:
            out.print(f"  {v}", markup=False)


def print_timeline(out: Console, timeline: list, rows: int = 10) -> None:
    """At most ``rows`` intervals of an episode's timeline, evenly spread, the last one included."""
    pick = sorted({round(i * (len(timeline) - 1) / max(rows - 1, 1)) for i in range(min(rows, len(timeline)))})
    t = Table("t (s)", "writes", "copy faults", "COW MiB", "child private MiB", "added latency (ms)", box=None)
    for j in pick:
        iv = timeline[j]
        added = iv["added_latency_ns"]
        t.add_row(
            f"{iv['t_s']:g}",
            f"{sum(iv['writes'].values()):,}",
            f"{sum(f['copy'] for f in iv['faults'].values()):,}",
            f"{iv['cow_pages'] * 4096 / 2**20:,.1f}",
            f"{iv['child_private_dirty_pages'] * 4096 / 2**20:,.1f}",
            "-" if added is None else f"{sum(added.values()) / 1e6:,.2f}",
        )
    out.print(t)


@app.command()
def scenarios(
    variant: Optional[List[str]] = typer.Option(None, "--variant", "-v", help="Variants to run (default: all)."),
    backend: str = typer.Option("auto", "--backend", help=f"Engine: {', '.join(BACKENDS)}."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per scenario and variant."),
) -> None:
    """Run the spec's scenario catalogue (A ... M-b) under each variant and print a table of outcomes."""
    try:
        names = variant or [n for n, v in VARIANTS.items() if not v.lazy]  # the catalogue is spec 7's
        for v in names:
            get_variant(v)
        from gpusim.base.backend import resolve

        resolve(backend)
    except ValueError as e:
        bad_input(str(e))
    from gpusim.api import fork as run_fork
    from gpusim.engines.reference.lazy import Unsupported
    from gpusim.inputs.catalogue import SCENARIOS
    from gpusim.inputs.layout import parse_layout

    table = Table(title="scenario catalogue: outcome passes/lock-breaks/early-copies/shared", title_justify="left")
    table.add_column("id")
    for v in names:
        table.add_column(v)
    for sid, s in SCENARIOS.items():
        cells = []
        for v in names:
            try:
                r = run_fork(parse_layout(s.layout, v), v, backend=backend, oracle=s.oracle, inject=s.inject)
            except Unsupported as e:  # a layout a lazy design's model rejects (spec 12)
                if as_json:
                    typer.echo(json.dumps({"scenario": sid, "variant": v, "rejected": e.reason}))
                cells.append(f"[dim]rejected {e.reason}[/]")
                continue
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
