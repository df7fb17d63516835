"""Results directories that survive damage and open in the readers users have (issue 14, items 1-5)."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from inproc import gpusim as gpusim_cli
from sweeps import run_sweep, write

import gpusim.jobs.sweep.executors as executors
from gpusim.base.backend import cuda_usable
from gpusim.jobs.sweep.export import DamagedResults, load_results
from gpusim.jobs.sweep.runner import MANIFEST, SweepLocked, SweepRunner
from gpusim.jobs.sweep.spec import load_sweep

SWEEP = """\
name: d
seed: 3
repeat: 2
backend: cpu
workload:
  kind: anon
  size: 2MiB
fork:
  variant: linux-6.18
sweep:
  grid:
    workload.size: [1MiB, 2MiB]
    fork.variant: [linux-5.10, linux-6.18]
"""


def ran(tmp_path, name="out", **kw):
    spec, points = load_sweep(write(tmp_path, SWEEP))
    runner = SweepRunner(spec, points, tmp_path / name)
    return runner, runner.run(**kw)


def digests(path) -> dict:
    t = load_results(path)
    keys = zip(t.column("config_hash").to_pylist(), t.column("repetition").to_pylist())
    return dict(zip(keys, t.column("digest").to_pylist()))


def test_a_truncated_file_is_detected_named_and_redone(tmp_path):
    runner, first = ran(tmp_path)
    assert first["ran"] == 8 and first["failed"] == 0
    want = digests(runner.out)
    victim = sorted(runner.out.glob("variant=*/*.parquet"))[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # a crash or a full disk mid-write elsewhere
    with pytest.raises(DamagedResults, match=victim.name):
        load_results(runner.out)
    again = runner.run()
    assert again["ran"] == 1 and again["redone"] == 1 and again["skipped"] == 7
    assert digests(runner.out) == want


def test_plot_of_a_damaged_directory_is_one_line(tmp_path):
    runner, _ = ran(tmp_path)
    victim = sorted(runner.out.glob("variant=*/*.parquet"))[0]
    victim.write_bytes(b"PAR1 not really")
    r = gpusim_cli("plot", str(runner.out))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "damaged" in r.stderr and victim.name in r.stderr


def test_verify_checks_the_crc_of_a_file_whose_footer_still_reads(tmp_path):
    runner, _ = ran(tmp_path)
    victim = sorted(runner.out.glob("variant=*/*.parquet"))[1]
    data = bytearray(victim.read_bytes())
    data[64] ^= 0xFF  # a flipped byte in the first data page: size, footer and rows unchanged
    victim.write_bytes(bytes(data))
    assert runner.run()["ran"] == 0  # the cheap check does not see it
    again = runner.run(verify=True)
    assert again["ran"] == 1 and again["redone"] == 1


def test_standard_readers_open_the_directory(tmp_path):
    runner, _ = ran(tmp_path)
    (runner.out / "_plots").mkdir()
    (runner.out / "_plots" / "x.png").write_bytes(b"\x89PNG")
    ours = load_results(runner.out)
    assert ours.num_rows == 8
    names = sorted(p.name for p in runner.out.iterdir())
    assert all(n.startswith("_") or n.startswith("variant=") for n in names), names
    t = pq.read_table(runner.out)
    assert t.num_rows == 8 and sorted(set(t.column("variant").to_pylist())) == ["linux-5.10", "linux-6.18"]
    d = ds.dataset(runner.out, format="parquet", partitioning="hive").to_table()
    assert d.num_rows == 8 and d.schema.field("latency_ns").type == pa.float64()
    assert d.schema.field("count.pte.share").type == pa.int64()
    meta = pq.read_schema(runner.out / "_common_metadata").metadata
    assert meta[b"gpusim.sweep"] == b"d" and json.loads(meta[b"gpusim.partitioning"]) == ["variant"]
    assert ours.schema.metadata[b"gpusim.sweep"] == b"d"


def test_pandas_duckdb_polars_read_it(tmp_path):
    runner, _ = ran(tmp_path)
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(runner.out)
    assert len(df) == 8 and set(df["variant"].astype(str)) == {"linux-5.10", "linux-6.18"}
    duckdb = pytest.importorskip("duckdb")
    files = f"{runner.out}/**/*.parquet"
    n = duckdb.sql(f"select count(*), count(distinct variant) from read_parquet('{files}', hive_partitioning=true)")
    assert n.fetchall() == [(8, 2)]
    try:
        import polars as pl
    except ImportError:
        return
    assert pl.read_parquet(f"{runner.out}/**/*.parquet", hive_partitioning=True).height == 8


def test_malformed_manifest_lines_are_removed_and_counted_once(tmp_path):
    runner, _ = ran(tmp_path)
    m = runner.out / MANIFEST
    lines = m.read_text().splitlines()
    cut = lines[-1][: len(lines[-1]) // 2]  # the last record cut short: its point is redone
    m.write_text("\n".join(lines[:-1] + ['{"x": 1}', "123", '{"config_hash": "a", "file": null}', cut]))
    again = runner.run()
    assert again["ran"] == 1 and again["malformed"] == 4
    assert len(digests(runner.out)) == 8
    recs = m.read_text().splitlines()
    assert recs[:-1] == lines[:-1] and json.loads(recs[-1])["file"].endswith(".parquet")  # the good lines kept
    third = runner.run()
    assert third["ran"] == 0 and third["malformed"] == 0


def test_failed_points_are_retried_until_they_succeed(tmp_path, monkeypatch):
    real = executors.run_point
    spec, points = load_sweep(write(tmp_path, SWEEP))
    broken = points[1].config_hash

    def flaky(point, repetition):
        if point.config_hash == broken:
            raise FileNotFoundError("snapshot.arrow")
        return real(point, repetition)

    monkeypatch.setattr(executors, "run_point", flaky)
    runner = SweepRunner(spec, points, tmp_path / "out")
    first = runner.run()
    assert first["errors"] == 2 and first["failed"] == 2
    t = load_results(runner.out)
    assert t.column("outcome").to_pylist().count("error") == 2
    again = runner.run()  # not fixed yet: retried, failed again
    assert again["ran"] == 2 and again["failed"] == 2
    monkeypatch.setattr(executors, "run_point", real)
    fixed = runner.run()
    assert fixed["ran"] == 2 and fixed["failed"] == 0
    assert load_results(runner.out).column("outcome").to_pylist().count("error") == 0
    history = [json.loads(line) for line in (runner.out / MANIFEST).read_text().splitlines()]
    failed = [r for r in history if r["errors"]]
    assert len(failed) == 4 and all("FileNotFoundError: snapshot.arrow" in r["error"] for r in failed)


def test_a_sweep_with_failed_points_exits_1(tmp_path):
    text = (
        "name: s\nbackend: cpu\nworkload:\n  kind: layout\n  layout: normal*4\nsweep:\n  grid:\n"
        '    workload.layout: ["normal*4", "migr:excl"]\n    fork.variant: [linux-5.10]\n'
    )
    f = write(tmp_path, text)
    r = run_sweep(f, "--out", tmp_path / "o", "--workers", "1")
    assert r.returncode == 1 and "1 point repetition(s) failed" in r.stderr and "Traceback" not in r.stderr


def test_a_second_sweep_into_the_same_directory_is_refused(tmp_path):
    runner, _ = ran(tmp_path)
    with runner.lock():
        with pytest.raises(SweepLocked, match="another sweep"):
            runner.run()
        r = run_sweep(tmp_path / "s.yaml", "--out", runner.out, "--workers", "1")
        assert r.returncode == 2 and "another sweep is writing" in r.stderr and "Traceback" not in r.stderr
    assert runner.run()["ran"] == 0  # released


def test_a_directory_written_before_schema_3_is_taken_over(tmp_path):
    runner, _ = ran(tmp_path)
    want = digests(runner.out)
    recs = [json.loads(line) for line in (runner.out / MANIFEST).read_text().splitlines()]
    (runner.out / "manifest.jsonl").write_text(
        "".join(json.dumps({k: r[k] for k in ("config_hash", "repetition", "file")}) + "\n" for r in recs)
    )
    (runner.out / MANIFEST).unlink()
    schema = pq.read_schema(runner.out / "_common_metadata")
    with pa.ipc.new_file(runner.out / "schema.arrow", schema) as w:
        w.write_table(schema.empty_table())
    (runner.out / "_common_metadata").unlink()
    assert digests(runner.out) == want  # the old layout still reads
    assert runner.run()["ran"] == 0
    assert (runner.out / MANIFEST).exists() and not (runner.out / "manifest.jsonl").exists()
    assert not (runner.out / "schema.arrow").exists() and digests(runner.out) == want


def _rename_in_file(path, old: str, new: str) -> None:
    """Rewrite a Parquet file (or a ``_common_metadata`` footer) with column ``old`` named ``new``, as an older
    version of gpusim wrote it."""
    if path.name == "_common_metadata":
        s = pq.read_schema(path)
        pq.write_metadata(pa.schema([f.with_name(new) if f.name == old else f for f in s], metadata=s.metadata), path)
        return
    t = pq.read_table(path)
    pq.write_table(t.rename_columns([new if n == old else n for n in t.column_names]), path)


def test_a_dataset_written_before_a_column_was_renamed_reads_under_the_new_name(tmp_path):
    """Schema 5 named host_tables python_tables: an old directory reads under the new name, and one resumed across
    the change (old files beside new ones, the new schema) gives every row its value."""
    runner, _ = ran(tmp_path)
    want = load_results(runner.out)
    assert "python_tables" in want.column_names and "host_tables" not in want.column_names
    files = sorted(runner.out.glob("variant=*/*.parquet"))
    for f in files[: len(files) // 2]:  # resumed across versions: half the files old, the schema new
        _rename_in_file(f, "python_tables", "host_tables")
    assert load_results(runner.out).equals(want)
    for f in [*files, runner.out / "_common_metadata"]:  # written wholly by the old version
        _rename_in_file(f, "python_tables", "host_tables")
    got = load_results(runner.out)
    assert got.column_names == want.column_names and got.equals(want.replace_schema_metadata(got.schema.metadata))


@pytest.mark.skipif(cuda_usable(), reason="this machine has a GPU")
def test_sweep_on_cuda_without_a_gpu_is_refused_up_front(tmp_path):
    r = run_sweep(write(tmp_path, SWEEP), "--out", tmp_path / "o", "--backend", "cuda")
    assert r.returncode == 2 and "needs an NVIDIA GPU" in r.stderr and not (tmp_path / "o").exists()
    assert os.path.exists(tmp_path / "s.yaml")


def test_bad_paths_are_one_line_errors(tmp_path):
    f = write(tmp_path, SWEEP)
    (tmp_path / "afile").write_text("x")
    for args, says in (
        ([f, "--out", tmp_path / "afile"], "--out is a file"),
        ([tmp_path, "--out", tmp_path / "o"], "a directory, not a sweep file"),
    ):
        r = run_sweep(*args, "--workers", "1")
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) == 1
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "missing" / "snap.arrow"
        r = gpusim_cli("capture", str(child.pid), "-o", str(out))
    finally:
        child.kill()
        child.wait()
    assert r.returncode == 2 and "cannot write the snapshot" in r.stderr and "Traceback" not in r.stderr


def test_python_api_mirrors_the_command_line(tmp_path):
    import gpusim

    space = gpusim.workload("anon", size="4MiB", pinned_fraction=0.01, seed=2)
    r = gpusim.fork(space, "linux-6.18", backend="cpu")
    assert r.outcome == "ok" and r.counts["copy.alloc"] == 10 and r.counts["pte.share"] == 1024 - 10
    with pytest.raises(ValueError, match="workload anon: colour: unknown key"):
        gpusim.workload("anon", size="4MiB", colour="red")
    spec = {
        "name": "api",
        "backend": "cpu",
        "workload": {"kind": "anon", "size": "1MiB"},
        "sweep": {"grid": {"fork.variant": ["linux-5.8", "linux-6.18"]}},
    }
    t = gpusim.run_sweep(spec, out=tmp_path / "o", workers=1)
    assert isinstance(t, pa.Table) and t.num_rows == 2 and t.schema.metadata[b"gpusim.sweep"] == b"api"
    assert gpusim.run_sweep(spec, out=tmp_path / "o", workers=1).equals(t)  # resumed: nothing redone
    f = write(tmp_path, SWEEP)
    assert gpusim.run_sweep(f, out=tmp_path / "p", workers=1).num_rows == 8


def test_export_writes_the_dataset_as_one_file(tmp_path):
    runner, _ = ran(tmp_path)
    want = load_results(runner.out)
    r = gpusim_cli("export", str(runner.out), str(tmp_path / "all.arrow"))
    assert r.returncode == 0 and "8 rows" in r.stdout, r.stderr
    with pa.ipc.open_file(tmp_path / "all.arrow") as f:
        got = f.read_all()
    assert got.equals(want) and got.schema.metadata == want.schema.metadata
    r = gpusim_cli("export", str(runner.out), str(tmp_path / "all.csv"))
    assert r.returncode == 0 and len((tmp_path / "all.csv").read_text().splitlines()) == 9
    r = gpusim_cli("export", str(runner.out), str(tmp_path / "all.xlsx"))
    assert r.returncode == 2 and ".arrow or a .csv" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "text,needles",
    [
        ("name: a\nname: b\nworkload:\n  kind: anon\n", ["s.yaml:2: name: key given twice"]),
        (
            "name: a\nworkload:\n  kind: anon\n  size: 1MiB\nsweep:\n  grid:\n    workload.size: [1MiB, 2MiB]\n"
            "  zip:\n    workload.size: [1MiB]\n",
            ["s.yaml:9: sweep.zip.workload.size: swept in sweep.grid too"],
        ),
        (
            "name: a\nworkload:\n  kind: anon\n  size: 1MiB\nsweep:\n  grid:\n    workload.size: [1MiB, 2MiB, 1MiB]\n",
            ['sweep.grid.workload.size: "1MiB" listed twice'],
        ),
        (  # every problem, one line each, not the first alone
            "name: a\nrepeat: many\nworkload:\n  kind: anon\n  size: 1MiB\ncolour: red\nseed: x\n",
            ["s.yaml:2: repeat:", "s.yaml:6: colour: unknown key", "s.yaml:7: seed:"],
        ),
        ("name: a\nseed: .inf\nworkload:\n  kind: anon\n  size: 1MiB\n", ["s.yaml:2: seed: not a finite number"]),
    ],
)
def test_sweep_file_problems_are_all_listed(tmp_path, text, needles):
    r = run_sweep(write(tmp_path, text), "--out", tmp_path / "o")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for n in needles:
        assert n in r.stderr, (n, r.stderr)
    assert len(r.stderr.strip().splitlines()) == len(needles)


def test_a_profile_with_an_infinite_cost_is_refused(tmp_path):
    from gpusim.analysis.costmodel import PROFILE_DIR, ProfileError, load_profile

    text = (PROFILE_DIR / "public-xeon-4210r-v6.8.yaml").read_text().replace("ns: 1.5,", "ns: .inf,")
    p = tmp_path / "p.yaml"
    p.write_text(text)
    with pytest.raises(ProfileError, match=r"p.yaml:\d+: costs.pte.none.ns: not a finite number"):
        load_profile(str(p))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["fork", "--seed", "abc"], "'--seed'"),
        (["fork", "--workload", "anon", "--set", "size=1MiB", "--seed", "-1"], "'--seed'"),
        (["sweep", "x.yaml", "--workers", "-1"], "'--workers'"),
        (["capture", "-1"], "No such option: -1"),
        (["bench", "--sizes", "0"], "--sizes '0'"),
        (["bench", "--sizes", ""], "--sizes ''"),
        (["fork", "--scenario", "A", "--oracle", ""], "an empty oracle"),
        (["fork", "--layout", "normal", "--oracle", "list:"], "list: takes pairs"),
        (["fork", "--layout", "normal", "--inject", ""], "an empty injection"),
        (["fork", "--layout", "mm:has_pinned=0 mm:has_pinned=1 normal"], "given twice"),
        (["fork", "--scenario", "A", "--profile", ""], "an empty profile name"),
        (["fork", "--layout", "normal:pin=2097152"], "larger than 1048575"),
    ],
)
def test_cli_mistakes_are_one_line(args, needle):
    r = gpusim_cli(*args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_binary_profile_names_the_file(tmp_path):
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00binary")
    r = gpusim_cli("fork", "--scenario", "A", "--profile", str(p))
    assert r.returncode == 2 and f"{p}: not a text (UTF-8) file" in r.stderr


def _snapshot(tmp_path, name="s.arrow", vma=0, drop=None, vmas_json=None):
    n = 10
    cols = {
        "addr": pa.array(range(1000, 1000 + n), pa.int64()),
        "vma": pa.array([vma] * n, pa.int32()),
        "present": pa.array([True] * n),
        "swapped": pa.array([False] * n),
        "pfn": pa.array([0] * n, pa.int64()),
        "mapcount": pa.array([1] * n, pa.int64()),
        "anon": pa.array([True] * n),
        "thp": pa.array([False] * n),
        "exclusive": pa.array([True] * n),
    }
    if drop:
        del cols[drop]
    vmas = vmas_json or json.dumps([{"start": 1000, "end": 1512, "perms": "rw-p", "backing": "anon"}])
    t = pa.table(cols).replace_schema_metadata({b"gpusim.vmas": vmas.encode(), b"gpusim.capture": b"{}"})
    with pa.ipc.new_file(str(tmp_path / name), t.schema) as w:
        w.write_table(t)
    return tmp_path / name


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"vma": 5}, "column 'vma', row 0: VMA index 5 (the snapshot has 1)"),
        ({"vma": -1}, "VMA index -1"),
        ({"drop": "mapcount"}, "column 'mapcount' is missing"),
        ({"vmas_json": "[{oops"}, "metadata gpusim.vmas is not JSON"),
        ({"vmas_json": '[{"start": 1000, "perms": "rw-p", "backing": "anon"}]'}, "gpusim.vmas[0]: end missing"),
        ({"vmas_json": '[{"start": 2000, "end": 2512, "perms": "rw-p", "backing": "anon"}]'}, "outside its VMA 0"),
    ],
)
def test_snapshots_edited_by_hand_are_one_line_errors(tmp_path, kw, needle):
    good = _snapshot(tmp_path, "good.arrow")
    r = gpusim_cli("fork", "--snapshot", str(good), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["counts"]["pte.share"] == 10, r.stderr
    bad = _snapshot(tmp_path, **kw)
    r = gpusim_cli("fork", "--snapshot", str(bad))
    assert r.returncode == 2 and needle in r.stderr and str(bad) in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
