"""Atomic read-modify-write on array elements for numba CPU kernels (``prange`` has no atomics of its own).

``atomic_add(arr, i, v)`` adds ``v`` to ``arr[i]`` with one LLVM ``atomicrmw add`` (monotonic ordering suffices:
the kernels only need every increment to land, not an order between them) and returns the old value.
``atomic_and(arr, i, v)`` likewise for bitwise and. Used where pages, folios or swap slots may be shared by PTEs
of several tables.
"""

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


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
            return builder.atomic_rmw(op, ptr, v, "monotonic")

        return sig, codegen
    return impl


atomic_add = intrinsic(_rmw("add"))
atomic_and = intrinsic(_rmw("and"))
