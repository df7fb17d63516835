"""Fuzzing the inputs users write by hand: layouts, sweep files, snapshot files. Whatever hypothesis makes of them,
the command line either gives a valid result (exit 0) or refuses with exit 2 and one line per problem, each naming
what is wrong; never a traceback, never another exit code.

The CLI runs in this process (``gpusim.cli.main`` with its arguments and output redirected): an exception that
escapes it fails the test, as a traceback would fail a user."""

import json
import string

import pyarrow as pa
import pyarrow.parquet as pq
from budget import budget
from hypothesis import event, given
from hypothesis import strategies as st
from inproc import run_cli

FUZZ = budget(100)


def assert_refused_or_valid(code: int, out: str, err: str, one_line: bool = True) -> None:
    assert code in (0, 2), (code, out[-500:], err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out
    if code == 2:
        lines = err.strip().splitlines()
        assert lines and lines[0].startswith("gpusim: error: "), err
        if one_line:
            assert len(lines) == 1, err


# -- layouts ---------------------------------------------------------------------------------------------------------

# Tokens users write (with modifiers that fit them), and the mistakes they make: unknown kinds and modifiers,
# numbers out of range or not numbers, counts too large or negative, stray characters.
GOOD_TOKENS = {
    "normal": ["", ":ro", ":clean", ":old", ":pin", ":pin=2", ":ref=3", ":nonex", ":hwpoison"],
    "pinned": ["", ":ro"],
    "none": [""],
    "zero": [""],
    "file": ["", ":ro"],
    "shmem": [""],
    "swap": ["", ":cnt=2", ":lv=1", ":cnt=300:lv=2", ":nonex"],
    "migr": ["", ":excl"],
    "migw": [""],
    "devr": [""],
    "devw": [""],
    "folio4": ["", ":pin", ":nonex=1,2"],
    "folio16": ["", ":ref=20"],
    "hole": [""],
    "gap": [""],
    "thp": [""],
    "vma": ["", ":shared", ":ro", ":dontcopy", ":wipeonfork", ":file", ":noanon"],
    "mm": [":has_pinned=0", ":has_pinned=1"],
}
BAD_PIECES = [":ref=2147483648", ":ref=-1", ":lv=9", ":cnt=-1", ":cnt=99999999999", ":pin=99999999", ":bogus", ":"]
BAD_PIECES += [":ref=x", "*-1", "*99999999999", "*0", "*x", "**2", "!", "~", ":has_pinned=2", "3", ":nonex=600"]


# numeric modifiers by kind, and values at and beyond their limits
NUMERIC = {"normal": ["ref", "pin"], "pinned": ["ref"], "swap": ["cnt", "lv"], "folio4": ["ref", "pin", "nonex"]}
NUMERIC.update({"folio16": ["ref", "pin"], "mm": ["has_pinned"], "file": ["ref"], "devw": ["ref"]})
EDGES = ["-1", "0", "1", "2", "8", "9", "3", "4", "127", "128", "1024", "2147483647", "2147483648", "x", "1.5"]
EDGES += ["9223372036854775808", "100000000000000000000", "", "2,3"]


@st.composite
def layout_tokens(draw):
    kind = draw(st.sampled_from(sorted(GOOD_TOKENS)))
    token = kind + draw(st.sampled_from(GOOD_TOKENS[kind]))
    if kind in NUMERIC and draw(st.integers(0, 2)) == 0:  # a number at or past its limit
        token += f":{draw(st.sampled_from(NUMERIC[kind]))}={draw(st.sampled_from(EDGES))}"
    if kind not in ("vma", "mm") and draw(st.booleans()):
        token += f"*{draw(st.integers(1, 40))}"
    if draw(st.integers(0, 5)) == 0:  # a mistake
        token += draw(st.one_of(st.sampled_from(BAD_PIECES), st.text(string.printable.strip(), max_size=3)))
    if draw(st.integers(0, 30)) == 0:
        token = draw(st.sampled_from(["folio3", "folio1024", "bogus", "thp:ro*2", "vma:hugetlb", "pfn"]))
    return token


@st.composite
def layouts(draw):
    return " ".join(draw(st.lists(layout_tokens(), min_size=1, max_size=10)))


def test_every_number_at_its_edges():
    """Every numeric modifier of every kind that takes one, at each value of :data:`EDGES`, alone and after a
    repetition count: a result or one line, exhaustively (the random layouts meet these only now and then)."""
    for kind, names in NUMERIC.items():
        for name in names:
            for value in EDGES:
                for layout in (f"{kind}:{name}={value}", f"normal*3 {kind}:{name}={value}*2"):
                    code, out, err = run_cli("fork", "--layout", layout, "--backend", "reference", "--json")
                    assert_refused_or_valid(code, out, err)


@FUZZ
@given(layout=layouts())
def test_layout_notation_fuzz(layout):
    code, out, err = run_cli("fork", "--layout", layout, "--backend", "reference", "--json")
    event(f"exit {code}")
    assert_refused_or_valid(code, out, err)
    if code == 0:
        assert json.loads(out)["outcome"] in ("ok", "enomem", "oops")


# -- sweep files -----------------------------------------------------------------------------------------------------

SWEEP = """name: fuzz
seed: 1
repeat: 1
backend: cpu
workload:
  kind: anon
  size: 1MiB
  pinned_fraction: 0.01
fork:
  variant: linux-6.18
  oracle: never
sweep:
  grid:
    workload.size: [1MiB, 2MiB]
    fork.variant: [linux-5.8, linux-6.18]
"""
GOOD_VALUES = ["2MiB", "512KiB", "0.0", "0.02", "linux-5.10", "xu-v1", "2", "[1MiB]", "[linux-5.8, xu-v1-oleg]"]
GOOD_VALUES += ["[0.0, 0.5]", "scattered", "every:3", "3"]
BAD_VALUES = ["-1", "0", "1e999", ".nan", ".inf", "-.inf", "abc", "[]", "{}", "~", "99999999999999999999", "true"]
BAD_VALUES += ["[1MiB, 1MiB]", "[a, b]", "1.5", "{x: 1}", "'", '"', "&a", "*a", "!!python/none"]
VALUES = st.one_of(st.sampled_from(GOOD_VALUES), st.sampled_from(BAD_VALUES))


@st.composite
def sweep_texts(draw):
    lines = SWEEP.splitlines()
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["value", "value", "value", "delete", "duplicate", "unknown", "indent"]))
        if op == "value" and ":" in lines[i]:
            lines[i] = lines[i].split(":", 1)[0] + ": " + draw(VALUES)
        elif op == "delete":
            del lines[i]
            if not lines:
                lines = [""]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "unknown":
            indent = len(lines[i]) - len(lines[i].lstrip())
            lines.insert(i, " " * indent + draw(st.sampled_from(["colour", "size_", "grid", "zip"])) + ": 1")
        else:
            lines[i] = " " + lines[i]
    text = "\n".join(lines) + "\n"
    if draw(st.integers(0, 9)) == 0:  # cut short, or a byte that is not UTF-8
        text = text[: draw(st.integers(0, len(text)))] + draw(st.sampled_from(["", "\udcff"]))
    return text


@FUZZ
@given(text=sweep_texts())
def test_sweep_file_fuzz(tmp_path_factory, text):
    d = tmp_path_factory.mktemp("sweep")
    f = d / "fuzz.yaml"
    f.write_bytes(text.encode("utf-8", "surrogateescape"))
    code, out, err = run_cli("sweep", str(f), "--out", str(d / "out"), "--workers", "1")
    event(f"exit {code}")
    assert_refused_or_valid(code, out, err, one_line=False)  # a sweep file's problems: one line each
    if code == 2:
        assert all(str(f) in line for line in err.strip().splitlines()), err
    else:
        assert (d / "out" / "_manifest.jsonl").exists()


# -- snapshot files --------------------------------------------------------------------------------------------------

ROWS = 10
GOOD = {
    "addr": pa.array(range(1000, 1000 + ROWS), pa.int64()),
    "vma": pa.array([0] * ROWS, pa.int32()),
    "present": pa.array([True] * ROWS),
    "swapped": pa.array([False] * ROWS),
    "pfn": pa.array(range(ROWS), pa.int64()),
    "mapcount": pa.array([1] * ROWS, pa.int64()),
    "anon": pa.array([True] * ROWS),
    "thp": pa.array([False] * ROWS),
    "exclusive": pa.array([True] * ROWS),
}
GOOD_VMAS = [{"start": 1000, "end": 1512, "perms": "rw-p", "backing": "anon"}]
WILD = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 511, 512, 2**31, 2**63 - 1, 1000, 1511, 1512]),
    st.text(max_size=5),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
)


def wild_column(draw):
    kind = draw(st.sampled_from(["int", "str", "float", "bool", "short"]))
    if kind == "int":
        return pa.array(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=ROWS, max_size=ROWS)), pa.int64())
    if kind == "str":
        return pa.array([draw(st.text(max_size=3))] * ROWS)
    if kind == "float":
        return pa.array([draw(st.floats(allow_nan=True))] * ROWS, pa.float64())
    if kind == "bool":
        return pa.array(draw(st.lists(st.booleans(), min_size=ROWS, max_size=ROWS)))
    return pa.array([1] * (ROWS - 1) + [None], pa.int64())  # a null


@st.composite
def snapshots(draw):
    cols = dict(GOOD)
    vmas = [dict(v) for v in GOOD_VMAS]
    meta = {}
    for _ in range(draw(st.integers(0, 2))):
        op = draw(st.sampled_from(["drop", "column", "vma", "vmas_text", "no_vmas", "capture"]))
        name = draw(st.sampled_from(sorted(GOOD)))
        if op == "drop":
            cols.pop(name, None)
        elif op == "column":
            cols[name] = wild_column(draw)
        elif op == "vma":
            vmas[0][draw(st.sampled_from(["start", "end", "perms", "backing", "extra"]))] = draw(WILD)
        elif op == "vmas_text":
            meta["gpusim.vmas"] = draw(st.sampled_from(["", "[", "{}", "[1]", "null", '[{"start": 1}]', "\x00"]))
        elif op == "no_vmas":
            meta["gpusim.vmas"] = None
        else:
            meta["gpusim.capture"] = draw(st.sampled_from(["", "[", "{}", '{"pid": -1}']))
    fmt = draw(st.sampled_from(["arrow", "parquet"]))
    cut = draw(st.integers(0, 4000)) if draw(st.integers(0, 5)) == 0 else None
    return cols, vmas, meta, fmt, cut


@FUZZ
@given(case=snapshots())
def test_snapshot_file_fuzz(tmp_path_factory, case):
    cols, vmas, meta, fmt, cut = case
    md = {"gpusim.vmas": json.dumps(vmas, default=str), "gpusim.capture": "{}"}
    md.update(meta)
    t = pa.table(cols).replace_schema_metadata({k.encode(): v.encode() for k, v in md.items() if v is not None})
    f = tmp_path_factory.mktemp("snap") / f"s.{fmt}"
    if fmt == "arrow":
        with pa.ipc.new_file(str(f), t.schema) as w:
            w.write_table(t)
    else:
        pq.write_table(t, str(f))
    if cut is not None:
        f.write_bytes(f.read_bytes()[:cut])
    code, out, err = run_cli("fork", "--snapshot", str(f), "--backend", "reference", "--json")
    event(f"exit {code}")
    assert_refused_or_valid(code, out, err)
    if code == 2:
        assert str(f) in err, err
    else:
        assert json.loads(out)["outcome"] in ("ok", "enomem", "oops")


def test_snapshot_map_counts_are_range_checked(tmp_path):
    """A map count the i32 counts cannot take through a fork, negative, or empty is one line naming the file, the
    column and the row (they were a traceback, a silent wrap to a negative count, and silently 1)."""
    for value, dtype, needle in (
        (2**31 - 1, pa.int64(), "map count 2147483647 outside 0..1073741823"),
        (2**40, pa.int64(), "map count 1099511627776 outside"),
        (-5, pa.int64(), "map count -5 outside"),
        (2**64 - 1, pa.uint64(), "outside"),
        (None, pa.int64(), "column 'mapcount', row 9: empty (null)"),
    ):
        cols = dict(GOOD)
        cols["mapcount"] = pa.array([1] * (ROWS - 1) + [value], dtype)
        t = pa.table(cols).replace_schema_metadata({b"gpusim.vmas": json.dumps(GOOD_VMAS).encode()})
        f = tmp_path / "s.arrow"
        with pa.ipc.new_file(str(f), t.schema) as w:
            w.write_table(t)
        code, out, err = run_cli("fork", "--snapshot", str(f), "--backend", "reference", "--json")
        assert code == 2 and needle in err and str(f) in err and len(err.strip().splitlines()) == 1, err
