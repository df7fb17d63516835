"""Scalar functions for the kernels, declared without loading numba.

The state model, the layout parser, the reference engine and the command line read the PTE encoding, the flags and
the per-PTE rules as plain Python functions; only the kernels compile them. So :mod:`gpusim.kernels.flags`,
:mod:`~gpusim.kernels.pte`, :mod:`~gpusim.kernels.folio` and :mod:`~gpusim.kernels.rules` mark them with
:func:`jitable`, which only records them, and :mod:`gpusim.kernels.jit` (imported by every module that compiles)
hands them to numba's ``register_jitable``: a command that compiles nothing does not import numba (start-up).
"""

FUNCS: list = []
_hook = None


def jitable(fn):
    """Mark a plain scalar function as callable from compiled kernels (CPU and CUDA); returns it unchanged."""
    FUNCS.append(fn)
    if _hook is not None:
        _hook(fn)
    return fn


def on_register(hook) -> None:
    """Called once by :mod:`gpusim.kernels.jit`: ``hook`` registers each function marked so far, and later ones."""
    global _hook
    _hook = hook
    for fn in FUNCS:
        hook(fn)
