"""Processes the test run starts beside itself, so that a second core works while the run's own process does:
the warm-up of numba's cache on a fresh clone, the PTX compilation of the CUDA kernels and a quick calibration of
the host (``tests/conftest.py``
starts them for a run of the whole suite; a test takes its process's output with :func:`result`, or runs the
command itself when none was started). Every one ends with the run: none is left behind."""

import atexit
import os
import shutil
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STARTED: dict[str, subprocess.Popen] = {}

# The CUDA kernels compiled to PTX in a fresh process without the simulator; prints, per kernel, how many atomic
# add, min and max instructions it holds (tests/test_kernels.py reads them).
PTX_CODE = (
    "import json; from gpusim.kernels.cuda import compile_ptx_all; "
    "print(json.dumps({k: [v.count('atom.global.' + op) for op in ('add', 'min', 'max')] "
    "for k, v in compile_ptx_all().items()}))"
)
PTX_ARGV = [sys.executable, "-c", PTX_CODE]
PTX_ENV = {"NUMBA_ENABLE_CUDASIM": "0"}

# A quick calibration of this host into a profile directory of its own (tests/test_host.py reads what it wrote): most
# of its time is the kernel's (touching and forking its measuring processes), so it overlaps the run's own work.
CALIBRATION_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"gpusim-test-calibration-{os.getpid()}")
CALIBRATION_ARGV = [sys.executable, "-m", "gpusim.cli", "calibrate", "--quick", "--rounds", "2"]
CALIBRATION_ENV = {"GPUSIM_PROFILE_DIR": CALIBRATION_DIR}


def start(name: str, argv: list, env: dict | None = None, output: bool = True) -> None:
    """Start ``argv`` (in its own process group) under ``name``; ``output``: keep its stdout and stderr."""
    pipe = subprocess.PIPE if output else subprocess.DEVNULL
    _STARTED[name] = subprocess.Popen(
        argv, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=pipe, stderr=pipe, text=True, start_new_session=True
    )


def result(name: str, argv: list, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The finished process ``name``: the one started early, or ``argv`` run now."""
    proc = _STARTED.pop(name, None)
    if proc is None:
        return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@atexit.register
def stop_all() -> None:
    for proc in _STARTED.values():
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    _STARTED.clear()
    shutil.rmtree(CALIBRATION_DIR, ignore_errors=True)
