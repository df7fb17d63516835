"""Shared test setup: the ``backend`` fixture every differential test runs on, and a private host-profile directory.

``backend`` gives each fast engine in turn: ``cpu``; ``cudasim`` (the CUDA kernels under numba's simulator, ~0.1 ms
a thread: small inputs only, see :data:`SMALL`); ``cuda`` where a GPU is usable, skipped (not failed) elsewhere.
A test that parametrizes ``backend`` itself overrides it. The fixture is session-scoped, so that hypothesis tests
can take it.
"""

import glob
import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import background  # noqa: E402  (after the path: the helpers next to this file)

from gpusim.base.backend import cuda_usable  # noqa: E402

# Host profiles written by `gpusim calibrate` change the default cost profile; the tests never see the user's.
os.environ["GPUSIM_PROFILE_DIR"] = tempfile.mkdtemp(prefix="gpusim-test-profiles-")

FAST_BACKENDS = [
    "cpu",
    "cudasim",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not cuda_usable(), reason="no usable NVIDIA GPU with CuPy on this machine")
    ),
]
SMALL = 4096  # PTEs: the largest input cudasim tests take


@pytest.fixture(params=FAST_BACKENDS, scope="session")
def backend(request):
    """A fast engine's backend name (cpu, cudasim, and cuda where a GPU is)."""
    return request.param


# Tests of the engines' orchestration (batches of forks, chunked launches, the slow path's launches) that cudasim
# runs for a named subset of the variants: the CUDA launch code they exercise does not depend on the variant, and this
# subset takes each of its paths (linux-6.18: large-folio batches and the walk kernel; xu-v1: a fork that can stop
# early, its slow tables in address order; linux-5.10: the preallocating slow path); the per-table state machines they
# run are the code the CPU build compiles, which the CPU engine runs for every variant. The marker's keywords narrow
# other parameters the same way for cudasim (``cudasim_subset(chunk=(1, 3))``: the launch code's cases, not every
# size between them). Deselected, not skipped: pytest reports them as deselected.
CUDASIM_VARIANTS = ("linux-6.18", "xu-v1", "linux-5.10")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cudasim_subset(**values): cudasim runs this test for CUDASIM_VARIANTS (and these values) only"
    )


def cudasim_drops(item) -> bool:
    """Whether cudasim leaves this parametrized case out (:data:`CUDASIM_VARIANTS`, the marker's keywords)."""
    mark = item.get_closest_marker("cudasim_subset")
    params = getattr(getattr(item, "callspec", None), "params", {})
    if mark is None or params.get("backend") != "cudasim":
        return False
    if params.get("variant") not in CUDASIM_VARIANTS:
        return True
    return any(name in params and params[name] not in values for name, values in mark.kwargs.items())


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        (drop if cudasim_drops(item) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if len(items) >= WARM_ABOVE_ITEMS and not os.environ.get("GPUSIM_TEST_WARMING"):
        if any(item.name == "test_cuda_kernels_compile_to_ptx" for item in items):
            background.start("ptx", background.PTX_ARGV, background.PTX_ENV)
        if any(item.name == "test_calibrate_quick_writes_a_profile_that_becomes_the_default" for item in items):
            background.start("calibrate", background.CALIBRATION_ARGV, background.CALIBRATION_ENV)
        if warm_cpu_kernels():
            items.sort(key=run_order)  # stable: in their order, cudasim's first


# For a run of the whole suite, work that needs nothing from this process runs beside it (tests/background.py): the
# PTX compilation of the CUDA kernels (its test takes the output), and, on a fresh clone (numba's cache empty: about
# 75 s of compilation here), a process that compiles the CPU kernels into the cache by running the CPU tests that
# reach every compiled function, while this one runs first the tests that compile nothing (cudasim's: the CUDA
# kernels under the simulator run as Python). numba writes its cache files atomically: either may compile first.
WARM_ABOVE_ITEMS = 1000
WARM_TESTS = (
    [  # in the order this run reaches them (the files' order), so that each kernel is compiled before it is needed
        "tests/test_api_args.py",
        "tests/test_engines.py",
        "tests/test_episode.py",
        "tests/test_generate.py",
        "tests/test_lazy.py",
        "tests/test_state.py",
        "tests/test_writes.py",
        *(f"tests/{name}" for name in ("test_cli.py", "test_frames.py")),  # the LATE tests' own kernels, last
    ],
    "(cpu and not random and not chunking and not mostly) or compiled or digest or parent_scan or streamed_workload"
    " or bench_writes_beside_the_kernel or generated_region_takes_a_frame_order",
)
# Tests that compile kernels of their own (a bench's, a frame order's): this run takes them last, when the warming
# process has compiled those too.
LATE = ("test_bench_writes_beside_the_kernel", "test_a_generated_region_takes_a_frame_order_and_a_chunk_renumbers")


def run_order(item) -> int:
    """0: the tests that compile nothing, first; 1: the others; 2: :data:`LATE`'s."""
    if compiles_nothing(item):
        return 0
    return 2 if item.name.startswith(LATE) else 1


def compiles_nothing(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    if any(
        v == "odf-cowpte" if isinstance(v, str) else isinstance(v, tuple) and "odf-cowpte" in v for v in params.values()
    ):
        return False  # (its accounting pass runs compiled on the CPU whatever the backend)
    return params.get("backend") == "cudasim" or item.module.__name__ == "test_cuda_shape"


def warm_cpu_kernels() -> bool:
    """Start the process that fills numba's cache for the CPU kernels when it is empty; whether it started."""
    if os.environ.get("NUMBA_DISABLE_JIT", "0") != "0":
        return False
    from gpusim.kernels import cpu

    cpu.prepare()  # the cache's stamp settled before the two processes use it
    cache = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(os.path.dirname(cpu.__file__), "__pycache__")
    if glob.glob(os.path.join(cache, "**", "cpu._fork_tables-*.nbi"), recursive=True):
        return False
    files, select = WARM_TESTS
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, "-k", select]
    background.start("warm", argv, {"GPUSIM_TEST_WARMING": "1"}, output=False)
    return True
