"""gpusim: a simulator of Linux fork() page-table copying across kernel variants."""
__version__ = "0.1.0"

from gpusim.api import BACKENDS, fork, fork_batch
from gpusim.layout import LayoutError, parse_layout
from gpusim.result import COST_EVENTS, COUNT_NAMES, ForkResult
from gpusim.state import MM, AddressSpace, Memory
from gpusim.variants import DEFAULT_VARIANT, VARIANTS

__all__ = ["fork", "fork_batch", "parse_layout", "LayoutError", "ForkResult", "AddressSpace", "MM", "Memory", "VARIANTS",
           "DEFAULT_VARIANT", "BACKENDS", "COST_EVENTS", "COUNT_NAMES", "__version__"]
