"""How many examples the property tests draw: the ``ci`` budget by default (the README's test command in a few
minutes on a 2-core machine), ``GPUSIM_TESTS=deep`` for long runs (ten times the examples everywhere, and cudasim's
as many as the CPU engine's).

cudasim runs the per-entry code that the CPU build compiles (``kernels/table.py``, ``rules.py``, ``slowpath.py``: one
source); what only it runs is the CUDA orchestration of ``kernels/cuda.py`` (blocks of tables, the walk kernel, the
slow path's kernels, shared-memory sums), which every example reaches. So it draws a fifteenth of the CPU's examples in
the ``ci`` budget (at least four), and each of its examples is held to the reference like the CPU's."""

import os

from hypothesis import HealthCheck, settings

DEEP = os.environ.get("GPUSIM_TESTS", "ci") == "deep"
CUDASIM_SHARE = 15
# The process that fills numba's cache beside a run of the whole suite on a fresh clone (tests/conftest.py) runs tests
# only for the kernels their first examples compile: a few examples each, so that it is done, and leaves the second
# core to the run, sooner.
WARMING = bool(os.environ.get("GPUSIM_TEST_WARMING"))
WARMING_EXAMPLES = 2


def examples(n: int, backend: str | None = None) -> int:
    """The examples a test whose ``ci`` budget on the CPU is ``n`` draws on ``backend``."""
    if WARMING:
        return min(n, WARMING_EXAMPLES)
    if DEEP:
        return 10 * n
    return max(4, n // CUDASIM_SHARE) if backend == "cudasim" else n


def budget(n: int, backend: str | None = None) -> settings:
    """Hypothesis settings of :func:`examples` (no deadline: the first example of a backend compiles its code)."""
    return settings(max_examples=examples(n, backend), deadline=None, suppress_health_check=[HealthCheck.too_slow])
