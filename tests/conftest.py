"""Shared test setup: the ``backend`` fixture every differential test runs on, and a private host-profile directory.

``backend`` gives each fast engine in turn: ``cpu``; ``cudasim`` (the CUDA kernels under numba's simulator, ~0.1 ms
a thread: small inputs only, see :data:`SMALL`); ``cuda`` where a GPU is usable, skipped (not failed) elsewhere.
A test that parametrizes ``backend`` itself overrides it. The fixture is session-scoped, so that hypothesis tests
can take it.
"""

import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from gpusim.base.backend import cuda_usable  # noqa: E402  (after the path: the helpers next to this file)

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
# run are the code the CPU build compiles, which the CPU engine runs for every variant. Deselected, not skipped:
# pytest reports them as deselected.
CUDASIM_VARIANTS = ("linux-6.18", "xu-v1", "linux-5.10")


def pytest_configure(config):
    config.addinivalue_line("markers", "cudasim_subset: cudasim runs this test for CUDASIM_VARIANTS only")


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        subset = item.get_closest_marker("cudasim_subset") is not None
        if subset and params.get("backend") == "cudasim" and params.get("variant") not in CUDASIM_VARIANTS:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
