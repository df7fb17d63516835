"""Per-folio pin rules (spec 1.6) as plain integer functions, shared by the layout builder, the engines and the
invariant checker, and compilable by numba like :mod:`gpusim.kernels.pte`.

``large_order`` is the variant's threshold: folios of that order or more keep an exact folio-wide pincount
(order >= 1 in linux-6.18, >= 2 before); smaller ones take ``PIN_BIAS`` references per pin.
"""

from gpusim.kernels.flags import PIN_BIAS
from gpusim.kernels.jitable import jitable


@jitable
def is_large_for_pins(order, large_order):
    return order >= large_order


@jitable
def folio_maybe_dma_pinned(order, refcount, pincount, large_order):
    """``page_maybe_dma_pinned`` / ``folio_maybe_dma_pinned``: exact for large folios, a heuristic otherwise.
    Written without a branch, so that it takes numpy arrays too (the invariant checker's vectorised form)."""
    large = order >= large_order
    return (large & (pincount > 0)) | (~large & (refcount >= PIN_BIAS))


@jitable
def pin_refcount_delta(order, large_order):
    """References one FOLL_PIN adds to a folio (``add_pin``); the pincount grows by 1 only for large folios."""
    return 1 if order >= large_order else PIN_BIAS
