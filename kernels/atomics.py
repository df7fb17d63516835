"""Atomic read-modify-write on array elements, one name for every target.

``atomic_add(arr, i, v)`` adds ``v`` to ``arr[i]``, ``atomic_min`` / ``atomic_max`` (signed integers) lower or
raise it to ``v``; each returns the old value. Compiled for the CPU each is one LLVM ``atomicrmw`` (numba's
``prange`` has no atomics of its own; monotonic ordering suffices: every update must land, no order between them is
needed). The CUDA kernels register ``cuda.atomic.add`` / ``min`` / ``max`` for the CUDA target
(:mod:`gpusim.kernels.cuda`). Called from Python (numba's CUDA simulator runs kernels as Python threads) they take
a lock.
"""

import threading

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

_lock = threading.Lock()


def atomic_add(arr, i, v):
    with _lock:
        old = arr[i]
        arr[i] = old + v
        return old


def atomic_min(arr, i, v):
    with _lock:
        old = arr[i]
        arr[i] = min(old, v)
        return old


def atomic_max(arr, i, v):
    with _lock:
        old = arr[i]
        arr[i] = max(old, v)
        return old


def _rmw(op):
    def impl(typingctx, arr, idx, val):
        if not isinstance(arr, types.Array):
            return None
        sig = arr.dtype(arr, idx, arr.dtype)

        def codegen(context, builder, signature, args):
            arr_t = signature.args[0]
            ary, i, v = args
            view = context.make_array(arr_t)(context, builder, ary)
            ptr = cgutils.get_item_pointer(context, builder, arr_t, view, [i])
            v = context.cast(builder, v, signature.args[2], arr_t.dtype)
            return builder.atomic_rmw(op, ptr, v, "monotonic")

        return sig, codegen

    return impl


_cpu_add = intrinsic(_rmw("add"))
_cpu_min = intrinsic(_rmw("min"))
_cpu_max = intrinsic(_rmw("max"))


@overload(atomic_add, target="cpu")
def _ol_add(arr, i, v):
    return lambda arr, i, v: _cpu_add(arr, i, v)


@overload(atomic_min, target="cpu")
def _ol_min(arr, i, v):
    return lambda arr, i, v: _cpu_min(arr, i, v)


@overload(atomic_max, target="cpu")
def _ol_max(arr, i, v):
    return lambda arr, i, v: _cpu_max(arr, i, v)
