"""A software prefetch for the CPU kernels: ``prefetch(array, index)`` asks the CPU to bring the element's cache line
in ahead of its use (LLVM's ``llvm.prefetch``, a hint: it never faults, so an index read from state that later
changes is harmless). The episode's writes (:mod:`gpusim.kernels.episode`) are a chain of dependent random accesses
over the whole state; prefetching the next writes' lines while one write runs turns that chain's memory latency into
overlapped misses. CPU only (the CUDA kernels do not call it)."""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, array, index):
    """Prefetch ``array[index]`` for reading (``index`` an integer, or a tuple of them for a 2-D array)."""
    if not isinstance(array, types.Array):
        return None
    sig = types.void(array, index)

    def codegen(context, builder, signature, args):
        aryty, indty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        if isinstance(indty, types.BaseTuple):
            values = cgutils.unpack_tuple(builder, args[1], len(indty))
            indices = [context.cast(builder, v, t, types.intp) for v, t in zip(values, indty)]
        else:
            indices = [context.cast(builder, args[1], indty, types.intp)]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, indices, wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return sig, codegen
