"""The CLI: outputs, JSON fields, exit codes, one-line errors without tracebacks. Run in this process
(:mod:`inproc`), but for the smoke tests that start the real command (``gpusim_process``)."""

import json
import subprocess
import sys

import pytest
from inproc import gpusim

from gpusim.kernels.flags import COUNT_NAMES
from gpusim.model.variants import VARIANTS


def gpusim_process(*args):
    """The ``gpusim`` command in a subprocess: its own interpreter, imports and exit."""
    return subprocess.run([sys.executable, "-m", "gpusim.cli", *args], capture_output=True, text=True, timeout=120)


def test_variants():
    p = gpusim_process("variants")
    assert p.returncode == 0
    names = [line.split()[0] for line in p.stdout.splitlines()]
    assert names == list(VARIANTS)


def test_fork_json_fields():
    p = gpusim_process(
        "fork",
        *("--layout", "pinned none*31 normal*480", "--oracle", "always", "--variant", "xu-v1-oleg"),
        *("--backend", "cpu", "--json"),  # the compiled engine (auto would take the reference for one table)
    )
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    for key in (
        "outcome",
        "oops",
        "enomem",
        "variant",
        "backend",
        "counts",
        "child_rss",
        "invariants",
        "unfired",
        "digest",
        "python_tables",
        "engine_wall_s",
    ):
        assert key in d
    for name in COUNT_NAMES:
        assert name in d["counts"], name
    assert d["outcome"] == "ok" and d["variant"] == "xu-v1-oleg" and d["backend"] == "cpu"
    assert (d["counts"]["passes"], d["counts"]["lock_breaks"], d["counts"]["installs"]) == (122, 120, 1)
    assert d["python_tables"] == 0  # the pinned table ran compiled
    assert d["child_rss"] == {"anon": 481, "file": 0, "shmem": 0, "swapents": 0}
    assert d["invariants"]["ok"] is True and len(d["digest"]) == 64


@pytest.mark.parametrize(
    "sid,variant,outcome,extra",
    [
        ("A", "xu-v1", "oops", {"function": "page_duplicate", "addr": 32, "reason": "OLD_PAGE_NULL", "call_start": 0}),
        ("B", "xu-v1", "oops", {"function": "page_duplicate", "addr": 512, "reason": "OLD_PAGE_NULL", "call_start": 0}),
        ("B2", "xu-v1", "oops", None),
        ("A", "xu-v1-oleg", "ok", None),
        ("B", "linux-5.10", "ok", None),
        ("B2", "linux-6.18", "ok", None),
    ],
)
def test_seed_scenarios_from_the_cli(sid, variant, outcome, extra):
    p = gpusim("fork", "--scenario", sid, "--variant", variant, "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["outcome"] == outcome
    if extra:
        assert d["oops"] == extra


def test_enomem_json():
    p = gpusim("fork", "-l", "normal*100 pinned normal*411", "-i", "fail@copy#1", "--json")
    d = json.loads(p.stdout)
    assert p.returncode == 0 and d["outcome"] == "enomem"
    assert d["enomem"] == {"call_start": 0, "point": "copy", "occurrence": 1}
    assert d["child_rss"]["anon"] == 100 and d["child_rss_after_teardown"]["anon"] == 0


def test_unfired_reported():
    d = json.loads(gpusim("fork", "-l", "normal*8", "-i", "@EC#1: zap(3)", "--json").stdout)
    assert d["unfired"] == ["@EC#1: zap(3)"]


def test_human_summary():
    p = gpusim("fork", "--scenario", "H-c")
    assert p.returncode == 0 and "ok" in p.stdout and "invariants: all 13 hold" in p.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["fork", "-l", "normal", "-v", "linux-9.9"], "linux-5.8, xu-v1, xu-v1-oleg, linux-5.10, linux-6.18"),
        (["fork", "-l", "normal*3 normal:bogus"], "layout token 2 'normal:bogus'"),
        (["fork", "-l", "normal*3 frob*2"], "unknown kind 'frob'"),
        (["fork", "-l", "normal", "--oracle", "often"], "unknown oracle 'often'"),
        (["fork", "-l", "normal", "-i", "fail@disk#1"], "unknown allocation point 'disk'"),
        (["fork", "-l", "normal", "--backend", "tpu"], "unknown backend 'tpu'"),
        (["fork", "--scenario", "Z"], "unknown scenario 'Z'"),
        (["fork"], "give --layout, --scenario or --workload"),
        (["scenarios", "-v", "linux-1.0"], "unknown variant"),
        (["fork", "--workload", "anon", "--set", "size=9TiB"], "more than 8TiB"),
        # refused before anything is built: an oracle's draws span the whole fork, so it is not streamed, and no
        # machine CI runs on has the ~750 GiB it needs whole
        (["fork", "--workload", "anon", "--set", "size=8TiB", "--oracle", "every:2"], "--workload anon (not streamed"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, needle):
    p = gpusim(*args)
    assert p.returncode == 2
    assert needle in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_help_documents_notations():
    p = gpusim_process("fork", "--help")
    assert p.returncode == 0
    for needle in (
        "pinned none*31 normal*480",
        "bern:P:SEED",
        "fail@POINT#N",
        "@EC#1: zap(100)",
        "folioN",
        "fail@POINT#N[@A]",
        "@W#N[@A]",
    ):
        assert needle in p.stdout


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_scenarios_table(backend):
    p = gpusim("scenarios", "-v", "xu-v1", "-v", "linux-6.18", "--backend", backend)
    assert p.returncode == 0
    assert "oops@32" in p.stdout and "M-b" in p.stdout and "INVARIANT" not in p.stdout


@pytest.mark.parametrize("backend", ["reference", "cpu", "auto"])
def test_backends_agree_from_the_cli(backend):
    d = json.loads(gpusim("fork", "--scenario", "G'", "--variant", "linux-5.10", "--backend", backend, "--json").stdout)
    ref = json.loads(
        gpusim("fork", "--scenario", "G'", "--variant", "linux-5.10", "--backend", "reference", "--json").stdout
    )
    assert d["digest"] == ref["digest"] and d["counts"] == ref["counts"]
    assert d["ptes_per_s"] > 0 and d["bytes_per_pte"] > 0


def test_bench_json():
    p = gpusim("bench", "--sizes", "4MiB,8MiB", "--repeat", "1", "--vs-kernel", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert [r["ptes"] for r in d["rows"]] == [1024, 2048]
    for r in d["rows"]:
        assert r["ptes_per_s"] > 0 and r["bytes_per_pte"] > 16 and r["kernel_fork_s"] > 0


def test_bench_writes_beside_the_kernel():
    """``bench --writes``: the write phase after each fork, its counts those of a dense space with pins (the parent
    copies every unpinned page, the child reuses them), beside the real kernel's same two passes, whose fault counts
    match the simulated ones (checked, or the pass not run where the kernel refuses the pins)."""
    p = gpusim("bench", "--sizes", "4MiB", "--repeat", "1", "--pinned-fraction", "0.25", "--writes", "--vs-kernel")
    assert p.returncode == 0, p.stderr
    assert "write phase 'parent:all; child:all'" in p.stdout and "NOT as simulated" not in p.stdout
    p = gpusim("bench", "--sizes", "4MiB", "--repeat", "1", "--pinned-fraction", "0.25", "--writes", "--json")
    r = json.loads(p.stdout)["rows"][0]
    parent, child = r["write_counts"]["parent"], r["write_counts"]["child"]
    assert (parent["copy"], parent["none"], child["reuse"], child["none"]) == (768, 256, 768, 256)
    assert r["writes"] == 2048 and r["write_wall_s"] > 0 and r["writes_per_s"] > 0


# Start-up (issue 28): what a command must not load. `gpusim variants` prints names; a one-table fork runs on the
# reference (the backend seam's `auto`), so neither needs numba, SciPy, pyarrow, nor, where gpusim's plain
# coercion applies to this typer (gpusim.cli.app.LAZY_COERCION), pydantic through typer's adapters.
NOT_LOADED = {
    ("variants",): ("numpy", "numba", "scipy", "pyarrow", "pydantic", "typer._adapters"),
    ("fork", "--layout", "normal"): ("numba", "scipy", "pyarrow", "typer._adapters", "gpusim.kernels.scan"),
}


@pytest.mark.parametrize("args", list(NOT_LOADED), ids=" ".join)
def test_start_up_loads_only_what_the_command_needs(args):
    from gpusim.cli.app import LAZY_COERCION

    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('LOADED', ' '.join(sorted(sys.modules)), file=sys.stderr))\n"
        f"sys.argv = ['gpusim', *{list(args)!r}]\n"
        "from gpusim.cli import main\n"
        "main()\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    loaded = set(p.stderr.split("LOADED", 1)[1].split())
    unwanted = [
        m for m in NOT_LOADED[args] if m in loaded and (LAZY_COERCION or m not in ("pydantic", "typer._adapters"))
    ]
    assert not unwanted, f"gpusim {' '.join(args)} loads {unwanted}"
    if args[0] == "fork":
        assert "(reference)" in p.stdout  # auto: a one-table space on the reference


def test_plain_coercion_gives_what_typer_gives():
    """gpusim.cli.app's coercion without pydantic returns, for every parameter of every command, what typer's own
    returns for the values it takes: unset, the parameter's default, a string, a tuple of strings."""
    import typer

    from gpusim.cli.app import LAZY_COERCION, app, plain_coercion, typer_runtime_param

    if not LAZY_COERCION:
        pytest.skip("this typer has another shape: gpusim leaves its coercion alone (start-up slower)")
    group = typer.main.get_command(app)
    checked = 0
    for name, cmd in group.commands.items():
        for param in cmd.params:
            if not hasattr(param, "type_descriptor"):
                continue
            for value in (None, param.default, "5", ("a", "b"), (), 3, 0, -1, True, 2.5):
                known, got = plain_coercion(param, value)
                if not known:
                    continue
                want = typer_runtime_param(param).coerce(value, param=param, ctx=None)
                assert got == want and type(got) is type(want), (name, param.name, value, got, want)
                checked += 1
    assert checked > 100
