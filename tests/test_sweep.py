"""Sweeps: expansion, malformed files, the dataset (schema, metadata, rows), resuming after SIGKILL, plots."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from sweeps import kill_part_way, result_rows, run_sweep, write

import gpusim
from gpusim.base.yamlerr import ConfigError
from gpusim.jobs.sweep.point import build_backend, run_point
from gpusim.jobs.sweep.runner import SweepRunner
from gpusim.jobs.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parent.parent

SMALL = """\
name: t
seed: 4
repeat: 2
backend: cpu
workload:
  kind: anon
  size: 4MiB
fork:
  variant: linux-6.18
sweep:
  grid:
    workload.size: [2MiB, 4MiB]
    fork.variant: [linux-5.10, linux-6.18]
  zip:
    workload.pinned_fraction: [0.0, 0.01]
    workload.pinned_placement: [scattered, contiguous]
"""


def test_grid_zip_and_repeat_expand(tmp_path):
    spec, points = load_sweep(write(tmp_path, SMALL))
    assert len(points) == 2 * 2 * 2 and spec.repeat == 2
    combos = {
        (
            p.config.workload.size,
            p.config.fork.variant,
            p.config.workload.pinned_fraction,
            p.config.workload.pinned_placement,
        )
        for p in points
    }
    assert len(combos) == 8
    assert all((pf == 0.0) == (pl == "scattered") for _, _, pf, pl in combos)  # zip keeps lists in step
    assert len({p.config_hash for p in points}) == 8


def test_the_same_sweep_forks_the_same_spaces_on_every_backend(tmp_path):
    """A point's draws do not depend on how it runs (backend, checks, cost profile): its identity does."""
    rows = {}
    for backend, check in (("cpu", "true"), ("cudasim", "false")):
        text = SMALL.replace("backend: cpu", f"backend: {backend}\ncheck: {check}")
        _, points = load_sweep(write(tmp_path, text, f"{backend}.yaml"))
        pinned = [p for p in points if p.config.workload.pinned_fraction and p.config.workload.size == 4 << 20]
        rows[backend] = [run_point(p, 1)[0] for p in pinned]
    a, b = rows["cpu"], rows["cudasim"]
    assert len(a) == 2 and {r["config_hash"] for r in a}.isdisjoint(r["config_hash"] for r in b)
    same = lambda r: (r["seed"], r["digest"], r["count.installs"], r["outcome"])  # noqa: E731
    assert [same(r) for r in a] == [same(r) for r in b] and a[0]["digest"] != a[1]["digest"]
    assert any(r["count.installs"] for r in a) and {r["backend"] for r in b} == {"cudasim"}


def test_auto_runs_every_point_of_a_sweep_on_one_engine(tmp_path):
    """``auto`` takes the reference for one fork of a tiny space (start-up), but a sweep resolves it once: its tiny
    points run on the engine of the others (here ``cpu``, no GPU in the tests' process)."""
    text = SMALL.replace("backend: cpu", "backend: auto").replace("repeat: 2", "repeat: 1")
    _, points = load_sweep(write(tmp_path, text, "auto.yaml"))
    tiny = [p for p in points if p.config.workload.size == 2 << 20][:1]
    assert [r["backend"] for r in run_point(tiny[0], 1)] == ["cpu"]
    assert gpusim.fork(gpusim.parse_layout("normal*8")).backend == "reference"


def test_a_gpu_sweep_generates_its_spaces_on_the_card_when_nothing_reads_them_on_the_host(tmp_path, monkeypatch):
    def where(**keys):
        text = SMALL + "".join(f"{k}: {v}\n" for k, v in keys.items())
        return build_backend(load_sweep(write(tmp_path, text.replace("backend: cpu\n", "")))[1][0].config)

    monkeypatch.setattr(gpusim.base.backend, "device_free_bytes", lambda: 1 << 40)  # as on a card with 1 TiB free
    assert where(backend="cuda", check="false") == "cuda"  # generated, forked and hashed on the card
    assert where(backend="cuda", check="true") == "cpu"  # the invariant checker reads the states on the host
    assert where(backend="cudasim", check="false") == "cpu"
    assert where(backend="cpu", check="false") == "cpu"
    monkeypatch.setattr(gpusim.base.backend, "device_free_bytes", lambda: 64 << 20)  # the fork would not fit the card
    assert where(backend="cuda", check="false") == "cpu"


@pytest.mark.parametrize(
    "text,line,needle",
    [
        ("name: t\nworkload:\n  kind: anon\n   size: 1GiB\n", 4, "YAML syntax"),  # bad indentation
        ("name: t\nworkload:\n  kind: anon\n  size: 1GiB\n  sise: 2\n", 5, "workload.sise: unknown key"),
        ("name: t\nrepeat: many\nworkload:\n  kind: anon\n  size: 1GiB\n", 2, "repeat"),  # wrong type
        ("name: t\nworkload:\n  kind: anon\n  size: 12 parsecs\n", 4, "is not a number of bytes"),  # bad unit
        ("name: t\nworkload:\n  kind: anon\n  size: 1GiB\nfork:\n  variant: linux-9\n", 6, "unknown variant"),
        (
            "name: t\nworkload:\n  kind: anon\n  size: 1GiB\nsweep:\n  grid:\n    workload.fill: [0.5, 2]\n",
            7,
            "workload.fill = 2",
        ),
        (
            "name: t\nworkload:\n  kind: anon\n  size: 1GiB\nsweep:\n  zip:\n    workload.fill: [0.5]\n"
            "    workload.size: [1GiB, 2GiB]\n",
            6,
            "different lengths",
        ),
    ],
)
def test_malformed_files_name_file_line_and_key(tmp_path, text, line, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_sweep(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:{line}: ") and needle in msg and "\n" not in msg


def test_cli_reports_bad_files_without_traceback(tmp_path):
    p = write(tmp_path, "name: t\nworkload:\n  kind: anon\n  size: 1GiB\n  sise: 2\n")
    r = run_sweep(p)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{p}:5: workload.sise: unknown key" in r.stderr


def test_dataset_rows_schema_and_metadata(tmp_path):
    spec, points = load_sweep(write(tmp_path, SMALL))
    out = tmp_path / "out"
    summary = SweepRunner(spec, points, out).run()
    assert summary == {"total": 16, "ran": 16, "skipped": 0, "errors": 0, "failed": 0, "malformed": 0, "redone": 0}
    t = gpusim.load_results(out)
    assert t.num_rows == 16
    keys = {(h, r) for h, r in zip(t.column("config_hash").to_pylist(), t.column("repetition").to_pylist())}
    assert len(keys) == 16
    md = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
    for k in (
        "gpusim.schema_version",
        "gpusim.version",
        "gpusim.git_commit",
        "gpusim.library_versions",
        "gpusim.cpu",
        "gpusim.profile",
        "gpusim.partitioning",
    ):
        assert k in md
    assert json.loads(md["gpusim.partitioning"]) == ["variant"]
    assert t.schema.field("variant").type == pa.string()  # explicit partitioning
    assert t.schema.field("workload.size").type == pa.int64()
    assert t.schema.field("count.copy.alloc").type == pa.int64()
    assert set(t.column("variant").to_pylist()) == {"linux-5.10", "linux-6.18"}
    assert all(t.column("invariants_ok").to_pylist()) and set(t.column("outcome").to_pylist()) == {"ok"}
    lat = t.column("latency_ns").to_pylist()
    parts = [t.column(c).to_pylist() for c in t.column_names if c.startswith("latency.")]
    assert all(abs(sum(p[i] for p in parts) - lat[i]) < 1e-6 * lat[i] for i in range(t.num_rows))
    # a second run finds everything done
    assert SweepRunner(spec, points, out).run()["ran"] == 0


def test_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path):
    text = (
        "name: f\nbackend: cpu\nworkload:\n  kind: layout\n  layout: normal*4\nsweep:\n  grid:\n"
        '    workload.layout: ["normal*4", "migr:excl", "normal*8"]\n    fork.variant: [linux-5.10]\n'
    )
    spec, points = load_sweep(write(tmp_path, text))
    summary = SweepRunner(spec, points, tmp_path / "o").run()
    assert summary["errors"] == 1 and summary["ran"] == 3
    t = gpusim.load_results(tmp_path / "o")
    outs = dict(zip(t.column("workload.layout").to_pylist(), t.column("outcome").to_pylist()))
    assert outs == {"normal*4": "ok", "migr:excl": "error", "normal*8": "ok"}
    err = [e for e in t.column("error").to_pylist() if e]
    assert len(err) == 1 and "linux-6.18" in err[0]


KILL = """\
name: k
seed: 9
repeat: 3
backend: cpu
workload:
  kind: anon
  size: 2MiB
  pinned_fraction: 0.05
fork:
  variant: linux-6.18
  chain: 2
sweep:
  grid:
    workload.size: [1MiB, 2MiB, 3MiB, 4MiB]
    fork.variant: [linux-5.10, xu-v1-oleg, linux-6.18]
"""


def test_sigkill_mid_run_then_rerun_gives_exactly_the_full_set(tmp_path):
    f = write(tmp_path, KILL)
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_sweep(f, "--out", full).returncode == 0
    manifest = killed / "_manifest.jsonl"
    done_before = kill_part_way([f, "--out", killed], manifest, 5, 120)
    assert 5 <= done_before < 36
    # lose the last manifest line too, as if the kill had come between writing a file and recording it
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:-1]) + "\n")
    assert run_sweep(f, "--out", killed).returncode == 0
    got = result_rows(killed)
    assert len(got) == 4 * 3 * 3 * 2
    assert got == result_rows(full)


def test_plots_for_a_small_sweep(tmp_path):
    spec, points = load_sweep(write(tmp_path, SMALL))
    out = tmp_path / "out"
    SweepRunner(spec, points, out).run()
    r = subprocess.run([sys.executable, "-m", "gpusim.cli", "plot", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in (out / "_plots").glob("*.png"))
    assert files == ["latency_breakdown.png", "latency_vs_pinned.png", "latency_vs_size.png", "variant_comparison.png"]
    assert all((out / "_plots" / n).stat().st_size > 10_000 for n in files)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "workloads").glob("*.yaml")))
def test_presets_validate(name):
    spec, points = load_sweep(ROOT / "workloads" / name)
    assert points and spec.name == name.removesuffix(".yaml")


def test_fork_chain_and_tree(tmp_path):
    text = (
        "name: tree\nbackend: cpu\nworkload:\n  kind: anon\n  size: 2MiB\n  pinned_fraction: 0.05\n"
        "fork:\n  variant: linux-6.18\n  chain: 2\n  generations: 2\n"
    )
    spec, points = load_sweep(write(tmp_path, text))
    SweepRunner(spec, points, tmp_path / "o").run()
    t = gpusim.load_results(tmp_path / "o")
    assert sorted(zip(t.column("fork_index").to_pylist(), t.column("generation").to_pylist())) == [
        (0, 0),
        (1, 0),
        (2, 1),
        (3, 1),
        (4, 1),
        (5, 1),
    ]
    assert set(t.column("outcome").to_pylist()) == {"ok"} and all(t.column("invariants_ok").to_pylist())
    copies = dict(zip(t.column("fork_index").to_pylist(), t.column("count.copy.alloc").to_pylist()))
    assert copies[0] == copies[1] > 0  # the parent's pinned pages are copied at each of its forks
    assert copies[2] == copies[3] == copies[4] == copies[5] == 0  # children never pinned (no has_pinned)


def test_too_large_tree_is_refused(tmp_path):
    text = "name: t\nworkload:\n  kind: anon\n  size: 2MiB\nfork:\n  chain: 8\n  generations: 5\n"
    with pytest.raises(ConfigError, match=r":5: fork: .*forks \(at most 4096\)"):
        load_sweep(write(tmp_path, text))


def test_a_point_that_would_not_fit_is_refused_before_anything_runs(tmp_path):
    # a chain of forks takes each child whole, so it is not streamed; no machine CI runs on holds 8 TiB whole
    text = "name: big\nworkload:\n  kind: anon\n  size: 1MiB\nfork:\n  chain: 2\n"
    text += "sweep:\n  grid:\n    workload.size: [1MiB, 8TiB]\n"
    p = run_sweep(write(tmp_path, text), "--out", tmp_path / "out")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "(workload anon) (not streamed: each fork of a chain" in p.stderr and "GiB of memory" in p.stderr
    assert not (tmp_path / "out").exists()  # nothing started, nothing half-written


@pytest.mark.parametrize("variant", ["linux-6.18", "odf-paper"])
def test_a_streamed_points_row_has_the_whole_forks_columns(tmp_path, monkeypatch, variant):
    """A point streamed in chunks (here forced to two tables a chunk) writes the row the whole fork writes: its
    counts, digest and the page tables of each process."""
    from gpusim.jobs.sweep import point as point_module

    text = f"name: s\nbackend: cpu\nworkload:\n  kind: anon\n  size: 8MiB\nfork:\n  variant: {variant}\n"
    spec, points = load_sweep(write(tmp_path, text))
    whole = run_point(points[0], 0)[0]
    monkeypatch.setattr(point_module, "chunk_rows", lambda point: 2)
    streamed = run_point(points[0], 0)[0]
    assert streamed["outcome"] == "ok" and streamed["digest"] == whole["digest"]
    for key in ("page_table_bytes.parent", "page_table_bytes.child", "count.table.alloc", "count.table.share"):
        assert streamed[key] == whole[key], key
