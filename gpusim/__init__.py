"""gpusim: a simulator of Linux fork() page-table copying across kernel variants."""

__version__ = "0.1.0"

from gpusim.api import BACKENDS, fork, fork_batch
from gpusim.layout import LayoutError, parse_layout
from gpusim.result import COST_EVENTS, COUNT_NAMES, ForkResult
from gpusim.state import MM, AddressSpace, Memory
from gpusim.variants import DEFAULT_VARIANT, VARIANTS


def load_results(path):
    """A sweep's results directory as a ``pyarrow.Table`` (see :mod:`gpusim.sweep.export`)."""
    from gpusim.sweep.export import load_results as _load

    return _load(path)


def load_profile(name_or_path=None):
    """A cost profile by shipped name or path (see :mod:`gpusim.costmodel`)."""
    from gpusim.costmodel import load_profile as _load

    return _load(name_or_path)


__all__ = [
    "fork",
    "fork_batch",
    "parse_layout",
    "LayoutError",
    "ForkResult",
    "AddressSpace",
    "MM",
    "Memory",
    "VARIANTS",
    "DEFAULT_VARIANT",
    "BACKENDS",
    "COST_EVENTS",
    "COUNT_NAMES",
    "load_results",
    "load_profile",
    "__version__",
]
