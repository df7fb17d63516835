"""The one seam where the engine's backend is chosen.

``reference`` is the pure-Python oracle; ``cpu`` the numba engine (kernels in ``gpusim.kernels.cpu``); ``auto``
picks the fastest one available here. GPU imports would happen only in this module, lazily.
"""

from __future__ import annotations

BACKENDS = ("reference", "cpu", "auto")


class UnknownBackend(ValueError):
    def __init__(self, name: str):
        super().__init__(f"unknown backend '{name}' (available: {', '.join(BACKENDS)})")


def resolve(name: str) -> str:
    """The concrete backend for a name (``auto`` becomes ``cpu`` while no GPU engine is built)."""
    if name not in BACKENDS:
        raise UnknownBackend(name)
    return "cpu" if name == "auto" else name


def kernels(name: str):
    """The kernels module of a fast backend."""
    if name == "cpu":
        from gpusim.kernels import cpu
        return cpu
    raise UnknownBackend(name)
