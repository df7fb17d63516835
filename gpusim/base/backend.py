"""The one seam where the engine's backend is chosen.

``reference`` is the pure-Python oracle; ``cpu`` the numba engine (``gpusim.kernels.cpu``); ``cuda`` the
numba.cuda engine over CuPy arrays (``gpusim.kernels.cuda``); ``cudasim`` the same CUDA kernels under numba's CUDA
simulator (small inputs; used by the tests on machines without a GPU); ``auto`` picks ``cuda`` when a usable GPU
and CuPy are present, else ``cpu``. Only this module imports the CUDA side, and only when it is asked for; the
kernels of the CPU engine (and numba) load on first use too, so that naming a backend costs nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys

# numpy is imported where an array is looked at, not here: the command line names backends before it needs numpy
BACKENDS = ("reference", "cpu", "cuda", "cudasim", "auto")


class UnknownBackend(ValueError):
    def __init__(self, name: str):
        super().__init__(f"unknown backend '{name}' (available: {', '.join(BACKENDS)})")


class BackendUnavailable(ValueError):
    pass


def cuda_usable() -> bool:
    """A GPU that CuPy can use, without importing numba.cuda (so that ``cudasim`` stays possible)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device: CPU it is
        return False


def gpu_name() -> str:
    """The current CUDA device's name, through CuPy ("" without one)."""
    try:
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    except Exception:  # no CuPy, no driver, no device
        return ""
    return name.decode() if isinstance(name, bytes) else str(name)


def on_device(a) -> bool:
    """Whether ``a`` is a device array (CuPy's): state kept in device memory, which the cuda engine forks where it
    is."""
    return hasattr(a, "__cuda_array_interface__")  # numpy's arrays have none


def array_module(a):
    """The array module of ``a``: CuPy for a device array, numpy otherwise."""
    if on_device(a):
        import cupy

        return cupy
    import numpy

    return numpy


def array_module_for(name: str):
    """The array module a fast backend's state lives in: CuPy for ``cuda``, numpy for the others."""
    if name == "cuda":
        import cupy

        return cupy
    import numpy

    return numpy


def to_host(a):
    """``a`` as a numpy array (copied from the device when it is a device array)."""
    import numpy

    return a.get() if on_device(a) else numpy.asarray(a)


def device_free_bytes() -> int:
    """Free memory of the current CUDA device (through CuPy; 0 without one)."""
    try:
        import cupy

        return int(cupy.cuda.Device().mem_info[0])
    except Exception:  # no CuPy, no driver, no device
        return 0


MAX_WORKERS = 4096  # parallel tasks a sweep may ask for (processes or Ray tasks): a bound, not a tuning


# ``auto`` forks a space of at most this many PTE slots (a PMD-mapped THP counting 512) on the reference: 4 tables,
# about 10-40 ms there, while a fresh process loads numba and the compiled engine from its cache in 0.3-1.5 s.
# The engines' results are equal (the differential tests), so the choice changes only the time.
REFERENCE_UP_TO = 4 * 512


def resolve(name: str, slots: int | None = None) -> str:
    """The concrete backend for a name: UnknownBackend (a ValueError) for another string, TypeError for no
    string. ``auto`` is ``cuda`` with a usable GPU, else ``cpu``; but the ``reference`` for one fork of a tiny space
    (``slots``: its PTE slots, a PMD counting 512; None: not one such fork), which then loads no compiled code."""
    if not isinstance(name, str):
        raise TypeError(f"backend: one of {', '.join(BACKENDS)}, not {type(name).__name__} {name!r}")
    if name not in BACKENDS:
        raise UnknownBackend(name)
    if name == "auto":
        if slots is not None and slots <= REFERENCE_UP_TO:
            return "reference"
        return "cuda" if cuda_usable() else "cpu"
    return name


def use_cuda_simulator(want: bool) -> None:
    """Choose numba's CUDA simulator (or the real CUDA target) for this process, before ``numba.cuda`` is first
    imported: numba reads ``NUMBA_ENABLE_CUDASIM`` once, so the choice is made once per process. Raises
    :class:`BackendUnavailable` when the process already uses the other one."""
    from numba.core import config

    if "numba.cuda" not in sys.modules and bool(config.ENABLE_CUDASIM) != want:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1" if want else "0"
        config.reload_config()  # numba read the environment when it was imported
    if bool(config.ENABLE_CUDASIM) != want:
        other = "cudasim" if config.ENABLE_CUDASIM else "cuda"
        raise BackendUnavailable(
            f"backend '{'cudasim' if want else 'cuda'}' is not available in a process that "
            f"already uses '{other}' (numba's CUDA simulator is chosen once per process)"
        )


_prepared: set[str] = set()


def kernels(name: str):
    """The kernels module of a fast backend (``cpu``, ``cuda`` or ``cudasim``), ready for use in this process."""
    from gpusim.kernels import cpu  # numba loads with the first engine asked for, not with the command line

    if name == "cpu":
        module = cpu
    elif name in ("cuda", "cudasim"):
        use_cuda_simulator(name == "cudasim")
        if name == "cuda" and not cuda_usable():
            raise BackendUnavailable(
                "backend 'cuda' needs an NVIDIA GPU and CuPy (pip install 'gpusim[cuda12]' "
                "or '[cuda13]'); use --backend cpu or cudasim"
            )
        from gpusim.kernels import cuda as module  # only here: numba.cuda is imported on demand (rule 7)
    else:
        raise UnknownBackend(name)
    if name not in _prepared:
        cpu.prepare()  # every fast engine places batches with its shift_entries
        if module is not cpu:
            module.prepare()
        _prepared.add(name)
    return module
