"""CUDA kernels of the fast engine (numba.cuda), imported only when the ``cuda`` or ``cudasim`` backend is chosen.

The kernel gives each page table one thread, which runs the same table walk as the CPU kernels
(:mod:`gpusim.kernels.table`; the per-PTE rules of :mod:`gpusim.kernels.rules`). Folio refcounts, page mapcounts
and swap counts that several tables share are updated with ``cuda.atomic.add``. State arrays are moved to the
device as CuPy arrays (numba device arrays when CuPy is absent) for the launch and copied back, so the engine's
host loop and the CPU kernels see the same arrays. Under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the
kernel runs as Python threads on the numpy arrays themselves.

State arrays that are already on the device (CuPy) stay there: :mod:`gpusim.gpubench` keeps a whole address space,
or a batch of them, resident and times the kernel alone.

Known limit: one thread per table reads its 512 entries with a stride of 4 KiB between neighbouring threads (not
coalesced); a warp-per-table walk is the next step for speed (see ``results/BENCHMARKS.md``).
"""

import math

import numpy as np

if not hasattr(np, "row_stack"):
    # numba-cuda (0.30 at least) registers an overload for np.row_stack when it compiles its first kernel; NumPy 2.5
    # removed that alias of np.vstack. Restore it so that those versions work together.
    np.row_stack = np.vstack

from numba import config, cuda

from gpusim.kernels.atomics import atomic_add
from gpusim.kernels.rules import MODE_CLASSIFY, MODE_COPY, NR_FAST_COUNTS
from gpusim.kernels.table import copy_table_fast, table_needs_host

SIMULATOR = bool(config.ENABLE_CUDASIM)
THREADS_PER_BLOCK = 64

if not SIMULATOR:
    from numba.extending import overload

    @overload(atomic_add, target="cuda")
    def _ol_atomic_add(arr, i, v):
        return lambda arr, i, v: cuda.atomic.add(arr, i, v)


def fork_tables_kernel(mode, rows, table_index, row_lo, row_hi, call_start, call_end, call_vmaflags, call_first,
                       ppte, cpte, cexists, variant, large_order, row_has_pinned, page_folio, folio_order,
                       folio_refcount, folio_pincount, folio_true_pins, folio_flags, folio_first_pfn, page_mapcount,
                       page_flags, swap_count, swap_levels, nb_mode, nb_every, nb_p_q32, nb_seed, row_fork_seq,
                       nb_list_cs, nb_list_k, needs_host, counts):
    """One thread per table row of ``rows``: classify it, then copy it if no PTE needs the host (see
    :func:`gpusim.kernels.cpu.fork_tables` for ``mode``)."""
    i = cuda.grid(1)
    if i >= rows.shape[0]:
        return
    r = rows[i]
    base = table_index[r] * 512
    if mode != MODE_COPY:
        needs_host[i] = table_needs_host(r, base, row_lo[r], row_hi[r], call_start, call_end, ppte, variant,
                                         large_order, row_has_pinned[r], page_folio, folio_order,
                                         folio_refcount, folio_pincount, folio_flags, folio_first_pfn, page_flags,
                                         page_mapcount, swap_count, swap_levels)
    if mode == MODE_CLASSIFY or needs_host[i]:
        return
    copy_table_fast(r, base, row_lo[r], row_hi[r], call_start, call_end, call_vmaflags, call_first, ppte, cpte,
                    cexists, variant, page_folio, folio_order, folio_refcount, folio_true_pins, folio_flags,
                    folio_first_pfn, page_mapcount, page_flags, swap_count, nb_mode, nb_every, nb_p_q32, nb_seed,
                    row_fork_seq[r], nb_list_cs, nb_list_k, counts[i])


_kernel = cuda.jit(fork_tables_kernel)

# arguments the kernel writes (copied back to the host arrays after a real-GPU launch)
_WRITTEN = ("ppte", "cpte", "cexists", "folio_refcount", "page_mapcount", "page_flags", "swap_count")
_ARGS = ("mode", "rows", "table_index", "row_lo", "row_hi", "call_start", "call_end", "call_vmaflags",
         "call_first", "ppte", "cpte", "cexists", "variant", "large_order", "row_has_pinned", "page_folio",
         "folio_order", "folio_refcount", "folio_pincount", "folio_true_pins", "folio_flags", "folio_first_pfn",
         "page_mapcount", "page_flags", "swap_count", "swap_levels", "nb_mode", "nb_every", "nb_p_q32", "nb_seed",
         "row_fork_seq", "nb_list_cs", "nb_list_k")


def _to_device(a):
    try:
        import cupy
        return cupy.asarray(a)
    except ImportError:
        return cuda.to_device(a)


def _to_host(d, out: np.ndarray) -> None:
    if hasattr(d, "get"):
        d.get(out=out)
    else:
        d.copy_to_host(out)


def _zeros(shape, dtype):
    try:
        import cupy
        return cupy.zeros(shape, dtype)
    except ImportError:
        return cuda.to_device(np.zeros(shape, dtype))


def on_device(a) -> bool:
    """A device array (CuPy or numba): the engine leaves it where it is."""
    return not isinstance(a, np.ndarray) and hasattr(a, "__cuda_array_interface__")


def launch_stream():
    """CuPy's current stream as a numba stream (the kernels run in order with the CuPy work around them)."""
    try:
        import cupy
    except ImportError:
        return cuda.default_stream()
    ptr = cupy.cuda.get_current_stream().ptr
    return cuda.external_stream(ptr) if ptr else cuda.default_stream()


def fork_tables(*args, threads_per_block: int | None = None):
    """Same contract as :func:`gpusim.kernels.cpu.fork_tables`: writes the state arrays in place and returns
    (needs_host, counts).

    Host (numpy) arrays are copied to the device for the launch and back after it. When the state arrays are
    already device arrays (``ppte`` says which), nothing moves: the kernel runs on them on CuPy's current stream
    and needs_host and counts are returned as device arrays too (state kept resident between forks)."""
    kw = dict(zip(_ARGS, args))
    n = int(kw["rows"].shape[0])
    resident = not SIMULATOR and on_device(kw["ppte"])
    if resident:
        needs_host, counts = _zeros(n, np.bool_), _zeros((n, NR_FAST_COUNTS), np.int64)
    else:
        needs_host, counts = np.zeros(n, np.bool_), np.zeros((n, NR_FAST_COUNTS), np.int64)
    if n == 0:
        return needs_host, counts
    tpb = min(threads_per_block or THREADS_PER_BLOCK, n)
    blocks = math.ceil(n / tpb)
    if SIMULATOR:
        import warnings
        with warnings.catch_warnings():         # numpy scalars warn where uint64 arithmetic wraps by design
            warnings.simplefilter("ignore", RuntimeWarning)
            _kernel[blocks, tpb](*[kw[a] for a in _ARGS], needs_host, counts)
        return needs_host, counts
    if resident:
        _kernel[blocks, tpb, launch_stream()](*[kw[a] for a in _ARGS], needs_host, counts)
        return needs_host, counts
    dev = {a: (_to_device(v) if isinstance(v, np.ndarray) else v) for a, v in kw.items()}
    d_needs, d_counts = _to_device(needs_host), _to_device(counts)
    _kernel[blocks, tpb, launch_stream()](*[dev[a] for a in _ARGS], d_needs, d_counts)
    for a in _WRITTEN:
        _to_host(dev[a], kw[a])
    _to_host(d_needs, needs_host)
    _to_host(d_counts, counts)
    return needs_host, counts


def compile_ptx_all(cc=(9, 0)) -> dict[str, str]:
    """PTX of every CUDA kernel, compiled without a GPU (catches typing errors the simulator cannot see)."""
    from numba import types as t
    from numba.cuda import compile_ptx
    a1 = lambda dt: t.Array(dt, 1, "C")                                  # noqa: E731
    a2 = lambda dt: t.Array(dt, 2, "C")                                  # noqa: E731
    i64, u64, u8, b1 = t.int64, t.uint64, t.uint8, t.boolean
    i32 = t.int32
    sig = (i64, a1(i64), a1(i64), a1(i64), a1(i64), a1(i64), a1(i64), a1(i64), a1(b1), a2(u64), a2(u64), a1(b1),
           i64, i64, a1(b1), a1(i32), a1(u8), a1(i32), a1(i32), a1(i32), a1(u8), a1(i32), a1(i32), a1(u8), a1(i64),
           a1(i64), i64, i64, u64, u64, a1(i64), a1(i64), a1(i64), a1(b1), a2(i64))
    import numba.cuda.dispatcher as disp
    real = getattr(disp, "get_current_device", None)
    if real is not None:
        # numba-cuda compiles device functions called by a kernel for "the current device"; without a GPU there is
        # none, so let them target the PTX architecture asked for.
        class _Target:
            compute_capability = cc
        disp.get_current_device = lambda: _Target()
    try:
        ptx, _ = compile_ptx(fork_tables_kernel, sig, cc=cc)
    finally:
        if real is not None:
            disp.get_current_device = real
    return {"fork_tables_kernel": ptx}
