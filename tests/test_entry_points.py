"""The command line's defects of issue 31, each a test: sweep files whose write phase is empty, every bad grid value
named, a results directory that belongs to one sweep, outputs never inside a dataset, no output before a refusal,
notations that take ASCII digits only, a malformed manifest line repaired and reported once."""

import fcntl
import json
import textwrap

import pyarrow.parquet as pq
import pytest
from inproc import run_cli
from test_fuzz import assert_refused_or_valid

import gpusim


def sweep_file(tmp_path, name: str, body: str):
    p = tmp_path / f"{name}.yaml"
    p.write_text(textwrap.dedent(body))
    return str(p)


TINY = """
name: {name}
backend: reference
workload: {{kind: layout, layout: "normal*{pages}"}}
"""


def tiny(tmp_path, name="tiny", pages=8):
    return sweep_file(tmp_path, f"{name}-{pages}", TINY.format(name=name, pages=pages))


@pytest.mark.parametrize("writes", ["{}", "{parent: 0.0, child: 0.0}", "{parent: 0, order: interleaved}"])
def test_an_empty_generated_write_phase_is_refused_at_validation(tmp_path, writes):
    f = sweep_file(tmp_path, "w", TINY.format(name="w", pages=8) + f"fork:\n  writes: {writes}\n")
    code, out, err = run_cli("sweep", f, "--out", str(tmp_path / "out"))
    assert code == 2 and "fork.writes: an empty write phase" in err and not out
    assert not (tmp_path / "out").exists()


def test_a_small_positive_fraction_writes_a_page(tmp_path):
    f = sweep_file(tmp_path, "w", TINY.format(name="w", pages=8) + "fork:\n  writes: {parent: 0.01}\n")
    code, _, err = run_cli("sweep", f, "--out", str(tmp_path / "out"), "--workers", "1")
    assert code == 0, err
    t = gpusim.load_results(tmp_path / "out")
    assert t.column("write.parent.copy").to_pylist() == [1]


def test_the_dict_form_of_writes_reports_without_noise(tmp_path):
    f = sweep_file(
        tmp_path,
        "w",
        TINY.format(name="w", pages=8) + "fork:\n  writes: {parent: 0.5}\nsweep:\n  grid:\n"
        "    fork.writes.parent: [0.5, 2.0]\n    fork.writes.child: [0.1, -1]\n",
    )
    code, _, err = run_cli("sweep", f)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, err
    assert "fork.writes.parent = 2.0: Input should be less than or equal to 1" in lines[0] + lines[1]
    assert "fork.writes.child = -1" in err and ".str" not in err and "generated" not in err


def test_every_bad_grid_value_is_named(tmp_path):
    body = TINY.format(name="g", pages=8).replace('kind: layout, layout: "normal*8"', "kind: anon, size: 1MiB")
    f = sweep_file(tmp_path, "g", body + 'sweep:\n  grid:\n    workload.size: [1MiB, 0, "12 parsecs", -5]\n')
    code, _, err = run_cli("sweep", f)
    assert code == 2
    named = [line.split("workload.size = ")[1].split(":")[0] for line in err.strip().splitlines()]
    assert named == ["0", "'12 parsecs'", "-5"]
    assert all(line.removeprefix("gpusim: error: ").startswith(f"{f}:") for line in err.strip().splitlines())


def test_a_results_directory_belongs_to_one_sweep(tmp_path):
    out = str(tmp_path / "out")
    assert run_cli("sweep", tiny(tmp_path, "first"), "--out", out, "--workers", "1")[0] == 0
    before = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    for other in (tiny(tmp_path, "second"), tiny(tmp_path, "first", pages=9)):  # another name; other points
        code, stdout, err = run_cli("sweep", other, "--out", out, "--workers", "1")
        assert code == 2 and "holds the results of the sweep 'first'" in err and not stdout, err
        assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == before  # nothing written
    with pytest.raises(ValueError, match="holds the results of the sweep 'first'"):
        gpusim.run_sweep(tiny(tmp_path, "second"), out=out)
    meta = pq.read_schema(tmp_path / "out" / "_common_metadata").metadata
    assert meta[b"gpusim.sweep"] == b"first" and len(meta[b"gpusim.sweep_hash"]) == 16


def test_a_sweep_on_another_backend_or_with_more_repetitions_is_the_same_sweep(tmp_path):
    out = str(tmp_path / "out")
    f = tiny(tmp_path)
    assert run_cli("sweep", f, "--out", out, "--workers", "1")[0] == 0
    assert run_cli("sweep", f, "--out", out, "--workers", "1", "--backend", "cpu")[0] == 0
    g = sweep_file(tmp_path, "more", TINY.format(name="tiny", pages=8) + "repeat: 2\n")
    code, _, err = run_cli("sweep", g, "--out", out, "--workers", "1")
    assert code == 0, err
    assert "1 run, 1 already done, 0 failed" in " ".join(err.split())  # this run's pairs only: never negative
    assert gpusim.load_results(out).num_rows == 2  # (--backend resumes the same points: their rows were done)


def test_a_locked_directory_is_refused_before_printing_the_plan(tmp_path):
    out = tmp_path / "out"
    f = tiny(tmp_path)
    assert run_cli("sweep", f, "--out", str(out), "--workers", "1")[0] == 0
    with open(out / "_lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, stdout, err = run_cli("sweep", f, "--out", str(out), "--workers", "1")
    assert code == 2 and not stdout and err.startswith("gpusim: error: ") and "another sweep" in err
    assert len(err.strip().splitlines()) == 1


def test_a_malformed_manifest_line_is_repaired_and_reported_once(tmp_path):
    out = tmp_path / "out"
    f = tiny(tmp_path)
    assert run_cli("sweep", f, "--out", str(out), "--workers", "1")[0] == 0
    with open(out / "_manifest.jsonl", "a") as m:
        m.write('{"config_hash": "cut sho')
    first = run_cli("sweep", f, "--out", str(out), "--workers", "1")
    second = run_cli("sweep", f, "--out", str(out), "--workers", "1")
    assert "1 malformed manifest line(s) removed" in " ".join(first[2].split())  # (rich folds long lines)
    assert "manifest line" not in second[2] and second[0] == 0
    assert all(json.loads(line) for line in (out / "_manifest.jsonl").read_text().splitlines())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "ds"
    gpusim.run_sweep({"name": "ds", "backend": "reference", "workload": {"kind": "layout", "layout": "normal*4"}}, out)
    return out


@pytest.mark.parametrize("where", ["inside.arrow", "variant=linux-6.18/x.csv", "_plots/x.arrow"])
def test_export_never_writes_inside_a_dataset(dataset, where):
    code, _, err = run_cli("export", str(dataset), str(dataset / where))
    assert_refused_or_valid(code, "", err)
    assert code == 2 and "inside the gpusim dataset" in err
    assert not (dataset / where).exists()
    assert pq.read_table(dataset).num_rows == 1  # the dataset still opens in the readers


def test_export_to_a_missing_directory_names_it(dataset, tmp_path):
    code, _, err = run_cli("export", str(dataset), str(tmp_path / "nowhere" / "all.arrow"))
    assert code == 2 and f"the directory {tmp_path / 'nowhere'} does not exist" in err and ".tmp-" not in err


@pytest.mark.parametrize("out", ["FILE", "/dev/null", "/sys/gpusim-plots", "FILE/below", "DS", "DS/variant=x"])
def test_plot_out_that_cannot_be_is_one_line(dataset, tmp_path, out):
    (tmp_path / "FILE").write_text("")
    target = out.replace("FILE", str(tmp_path / "FILE")).replace("DS", str(dataset))
    code, stdout, err = run_cli("plot", str(dataset), "--out", target)
    assert_refused_or_valid(code, stdout, err)
    assert code == 2


def test_plot_into_the_datasets_plots_directory(dataset):
    code, _, err = run_cli("plot", str(dataset), "--out", str(dataset / "_plots" / "mine"))
    assert code == 0, err


@pytest.mark.parametrize(
    "args",
    [
        ("fork", "--layout", "normal*4", "--writes", "parent:１２"),
        ("fork", "--layout", "normal*１２"),
        ("fork", "--layout", "normal", "--oracle", "every:３"),
        ("fork", "--workload", "anon", "--set", "size=１MiB"),
    ],
)
def test_notations_take_ascii_digits_only(args):
    code, out, err = run_cli(*args)
    assert_refused_or_valid(code, out, err)
    assert code == 2


def test_pinned_ranges_beyond_64_bits_are_refused(tmp_path):
    from gpusim.inputs.snapshot import parse_range

    with pytest.raises(ValueError, match="2\\*\\*64"):
        parse_range(f"0-{1 << 65:#x}")
    assert parse_range(f"0-{1 << 64:#x}")[1] == 1 << 52


def test_a_layout_too_large_over_its_tokens_is_one_line():
    code, out, err = run_cli("fork", "--layout", "normal*67108864 " * 8)
    assert code == 2 and "the layout needs about" in err and len(err.strip().splitlines()) == 1
