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

from gpusim.backend import cuda_usable  # noqa: E402  (after the path: the helpers next to this file)

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
