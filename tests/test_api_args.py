"""The Python API is as strict as the command line (issue 31): a wrong argument is a TypeError or ValueError whose
message names it, never a wrong result, another exception or unbounded memory.

The cases the issue lists are tests of their own; then a property test throws values of every type at every argument
of every public function; then a subprocess under an address-space cap asks for more than it may hold."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from budget import budget
from hypothesis import given
from hypothesis import strategies as st

import gpusim
from gpusim.base.machine import NotEnoughMemory

SMALL_LAYOUT = "normal*8 pinned normal*3"


@pytest.fixture(scope="module")
def space():
    return gpusim.parse_layout(SMALL_LAYOUT)


# -- the wrong results of the issue ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, -100, np.int64(-1), 0])
def test_chunk_tables_not_positive_is_refused(space, bad):
    with pytest.raises(ValueError, match="chunk_tables: at least 1"):
        gpusim.fork(space, backend="cpu", chunk_tables=bad)
    with pytest.raises(ValueError, match="chunk_tables: at least 1"):
        gpusim.fork_batch([space], backend="cpu", chunk_tables=bad)


def test_chunk_tables_numpy_integer_forks_as_an_int(space):
    whole = gpusim.fork(space, backend="cpu")
    assert gpusim.fork(space, backend="cpu", chunk_tables=np.int64(1)).digest == whole.digest


# -- the API's errors: each names its argument ------------------------------------------------------------------------

SPACE_CASES = [("normal*10", TypeError, "space"), (None, TypeError, "space"), (5, TypeError, "space")]
FORK_CASES = [
    ({"writes": 123}, TypeError, "writes"),
    ({"writes": ["parent:all", 5]}, TypeError, r"writes\[1\]"),
    ({"writes": "parent:１２"}, ValueError, "writes"),  # full-width digits are no address
    ({"writes": ""}, ValueError, "write phase"),
    ({"oracle": 5}, TypeError, "oracle"),
    ({"oracle": "sometimes"}, ValueError, "oracle"),
    ({"chunk_tables": 1.5}, TypeError, "chunk_tables"),
    ({"chunk_tables": True}, TypeError, "chunk_tables"),
    ({"fork_seq": "x"}, TypeError, "fork_seq"),
    ({"fork_seq": -1}, ValueError, "fork_seq"),
    ({"fork_seq": 2**64}, ValueError, "fork_seq"),
    ({"variant": ["linux-6.18"]}, TypeError, "variant"),
    ({"variant": "linux-9"}, ValueError, "variant"),
    ({"backend": 3}, TypeError, "backend"),
    ({"backend": "tpu"}, ValueError, "backend"),
    ({"check": "yes"}, TypeError, "check"),
    ({"check": 1}, TypeError, "check"),
    ({"inject": 5}, TypeError, "inject"),
    ({"inject": ["fail@copy#1", None]}, TypeError, r"inject\[1\]"),
]


@pytest.mark.parametrize("value, exc, name", SPACE_CASES)
def test_fork_space_must_be_an_address_space(value, exc, name):
    with pytest.raises(exc, match=name):
        gpusim.fork(value)


@pytest.mark.parametrize("kwargs, exc, name", FORK_CASES)
def test_fork_arguments_are_checked(space, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        gpusim.fork(space, **{"backend": "reference", **kwargs})


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        ({"spaces": "normal"}, TypeError, "spaces"),
        ({"spaces": [None]}, TypeError, r"spaces\[0\]"),
        ({"fork_seq0": -1}, ValueError, "fork_seq0"),
        ({"check": "no"}, TypeError, "check"),
    ],
)
def test_fork_batch_arguments_are_checked(space, kwargs, exc, name):
    args = {"spaces": [space], "backend": "reference", **kwargs}
    with pytest.raises(exc, match=name):
        gpusim.fork_batch(**args)


@pytest.mark.parametrize(
    "args, kwargs, exc, name",
    [
        (("anon",), {"size": "1MiB", "seed": -1}, ValueError, "seed"),
        (("anon",), {"size": "1MiB", "seed": 1.5}, TypeError, "seed"),
        (("anon",), {"size": "1MiB", "seed": True}, TypeError, "seed"),
        (("anon",), {"size": "1MiB", "variant": 7}, TypeError, "variant"),
        (("heap",), {}, ValueError, "kind"),
        ((None,), {}, ValueError, "kind"),
        (("anon",), {"size": np.int64(-5)}, ValueError, "size"),
        (("anon",), {"size": "1MiB", "streamed": "yes"}, TypeError, "streamed"),
        (("layout",), {"layout": "normal", "streamed": True}, ValueError, "streamed"),
    ],
)
def test_workload_arguments_are_checked(args, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        gpusim.workload(*args, **kwargs)


def test_workload_reports_every_bad_key():
    with pytest.raises(ValueError) as e:
        gpusim.workload("anon", size=0, pinned_fraction=3, bogus=1)
    lines = str(e.value).splitlines()
    assert len(lines) == 3 and all(line.startswith("workload anon: ") for line in lines)
    assert [line.split(": ")[1] for line in lines] == ["size", "pinned_fraction", "bogus"]


def test_workload_too_large_for_memory_is_refused_before_building():
    with pytest.raises(NotEnoughMemory, match="streamed=True"):
        gpusim.workload("anon", size="8TiB")


def test_streamed_workload_forks_equal_to_the_whole():
    streamed = gpusim.fork_streamed(gpusim.workload("anon", size="8MiB", streamed=True), backend="cpu", chunk_rows=2)
    whole = gpusim.fork(gpusim.workload("anon", size="8MiB"), backend="cpu")
    assert (streamed.digest, streamed.chunks) == (whole.digest, 2)


def test_layout_too_large_over_its_tokens_is_refused():
    with pytest.raises(NotEnoughMemory, match="the layout"):
        gpusim.parse_layout("normal*67108864 " * 8)


@pytest.mark.parametrize(
    "args, exc, name",
    [((None,), TypeError, "layout"), ((b"normal",), TypeError, "layout"), (("normal", ["x"]), TypeError, "variant")],
)
def test_parse_layout_arguments_are_checked(args, exc, name):
    with pytest.raises(exc, match=name):
        gpusim.parse_layout(*args)


SWEEP = {"name": "api-args", "backend": "reference", "workload": {"kind": "layout", "layout": "normal*4"}}


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        ({"spec_or_path": None}, TypeError, "spec_or_path"),
        ({"spec_or_path": 5}, TypeError, "spec_or_path"),
        ({"workers": "two"}, TypeError, "workers"),
        ({"workers": -2}, ValueError, "workers"),
        ({"workers": 0}, ValueError, "workers"),
        ({"verify": "no"}, TypeError, "verify"),
        ({"executor": "slurm"}, ValueError, "executor"),
        ({"backend": 1}, TypeError, "backend"),
        ({"spec_or_path": {**SWEEP, "seed": object()}}, TypeError, "spec_or_path.seed"),
    ],
)
def test_run_sweep_arguments_are_checked(tmp_path, kwargs, exc, name):
    args = {"spec_or_path": SWEEP, "out": tmp_path / "out", **kwargs}
    with pytest.raises(exc, match=name):
        gpusim.run_sweep(**args)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_run_sweep_out_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ValueError, match="out: .* is a file"):
        gpusim.run_sweep(SWEEP, out=f)


def test_run_sweep_takes_numpy_scalars_in_a_mapping(tmp_path):
    spec = {**SWEEP, "seed": np.int64(3), "repeat": np.int32(2)}
    t = gpusim.run_sweep(spec, out=tmp_path / "out", workers=1)
    assert t.num_rows == 2 and set(t.column("seed").to_pylist()) != {None}


def test_load_results_of_no_dataset(tmp_path):
    with pytest.raises(ValueError, match="not a gpusim results directory"):
        gpusim.load_results(tmp_path)
    with pytest.raises(TypeError, match="path"):
        gpusim.load_results(None)


# -- a property test over every public function ------------------------------------------------------------------------

SAFE_NAME = st.text(alphabet="abxyz019_-", min_size=1, max_size=6)
ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10),
    st.sampled_from([2**31, 2**63, -(2**63), 2**64, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    SAFE_NAME,
    st.sampled_from(["", " ", "all", "never", "cpu", "reference", "linux-5.8", "parent:all", "1GiB", "-1", "１"]),
    st.binary(max_size=4),
    st.lists(st.integers(-3, 3), max_size=3),
    st.lists(SAFE_NAME, max_size=2),
    st.dictionaries(SAFE_NAME, st.integers(-3, 3), max_size=2),
    st.sampled_from([np.int64(-1), np.int64(2), np.float64(0.5), np.bool_(True), object(), (1, 2)]),
)

STREAMED = gpusim.workload("anon", size="16KiB", streamed=True, vmas=2)

# Each public function with valid arguments; the property replaces some of them. What a call names in its message
# for a replaced argument: its own name, or (the workload's keys, the sweep's mapping) the key.
CALLS = {
    "fork": (gpusim.fork, {"space": None, "variant": "linux-6.18", "backend": "reference", "oracle": "never"}),
    "fork_args": (
        gpusim.fork,
        {"space": None, "backend": "reference", "inject": (), "fork_seq": 0, "check": True, "chunk_tables": None},
    ),
    "fork_writes": (gpusim.fork, {"space": None, "backend": "reference", "writes": "parent:all"}),
    "fork_batch": (
        gpusim.fork_batch,
        {"spaces": None, "variant": "linux-5.10", "backend": "reference", "fork_seq0": 0, "check": True},
    ),
    "workload": (gpusim.workload, {"kind": "anon", "variant": "linux-6.18", "seed": 0, "size": "64KiB"}),
    "workload_keys": (
        gpusim.workload,
        {"kind": "anon", "size": "1MiB", "fill": 0.5, "pinned_fraction": 0.1, "vmas": 2},
    ),
    "fork_streamed": (
        gpusim.fork_streamed,
        {"space": "streamed", "variant": None, "backend": "reference", "check": True, "chunk_rows": 1},
    ),
    "parse_layout": (gpusim.parse_layout, {"text": "normal*4", "variant": "linux-6.18"}),
    "load_results": (gpusim.load_results, {"path": "no-such-dataset"}),
    "load_profile": (gpusim.load_profile, {"name_or_path": None}),
    "run_sweep": (
        gpusim.run_sweep,
        {"spec_or_path": SWEEP, "out": "out", "executor": "local", "workers": 1, "backend": None, "verify": False},
    ),
}
NAMES = {"text": "layout", "name_or_path": "profile"}  # arguments whose messages say what they are
PATHS = {"path", "out", "spec_or_path", "name_or_path"}  # a bad path's message may name the path instead


@budget(150)
@given(call=st.sampled_from(sorted(CALLS)), data=st.data())
def test_every_public_function_names_a_bad_argument(call, data, tmp_path_factory, space):
    fn, kwargs = CALLS[call]
    kwargs = {
        k: STREAMED if v == "streamed" else [space] if k == "spaces" else space if k == "space" else v
        for k, v in kwargs.items()
    }
    replaced = data.draw(st.lists(st.sampled_from(sorted(kwargs)), min_size=1, max_size=2, unique=True))
    for k in replaced:
        kwargs[k] = data.draw(ANY, label=k)
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("api"))  # relative paths (out, path) land in a fresh directory
    try:
        fn(**kwargs)
    except (TypeError, ValueError) as e:
        names = {NAMES.get(k, k) for k in replaced} | ({"spec_or_path"} if call == "run_sweep" else set())
        names |= {str(kwargs[k]) for k in replaced if k in PATHS and isinstance(kwargs[k], str) and kwargs[k]}
        assert any(n in str(e) for n in names) or (call == "workload" and "workload" in str(e)), (replaced, e)
    finally:
        os.chdir(cwd)


# -- memory: refused at the bound, never grown past it ----------------------------------------------------------------

CAPPED = textwrap.dedent(
    """
    import resource, gpusim
    from gpusim.base.machine import NotEnoughMemory, _read_int
    gpusim.fork(gpusim.workload("anon", size="1MiB"), backend="cpu")  # the compiled code loaded before the cap
    size = _read_int("/proc/self/status", "VmSize:", 1024)
    resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.RLIM_INFINITY))  # 1 GiB more, at most
    for make in (lambda: gpusim.workload("anon", size="32GiB"), lambda: gpusim.parse_layout("normal*8388608"),
                 lambda: gpusim.parse_layout("normal*4194304 normal*4194304")):
        try:
            make()
            raise SystemExit("not refused")
        except NotEnoughMemory:
            pass
    r = gpusim.fork(gpusim.workload("anon", size="512MiB"), backend="cpu")  # what fits, forks
    print(r.outcome, r.invariants.ok)
    """
)


def test_entry_points_refuse_what_does_not_fit_under_a_memory_cap():
    """Under an address-space cap of 1 GiB above what the process holds, the sizes that do not fit are refused up
    front (without the cap-aware bound they would be built and die of MemoryError), and a size that fits forks."""
    out = subprocess.run([sys.executable, "-c", CAPPED], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok", "True"]
