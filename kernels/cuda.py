"""CUDA kernels of the fast engine (numba.cuda), imported only when the ``cuda`` or ``cudasim`` backend is chosen.

The kernel gives each page table a block of threads: consecutive threads take consecutive entries (coalesced
loads and stores of the tables and of the page arrays), each calls the per-entry functions of
:mod:`gpusim.kernels.table` (the per-PTE rules of :mod:`gpusim.kernels.rules`), the block reduces its counts in
shared memory, and thread 0 runs the lock-break cadence over the entries' weights. A table holding a linux-6.18
batch (a large folio; ``folio_pte_batch`` joins entries in address order) is walked by thread 0 alone with the
CPU kernels' walk. Folio refcounts, page mapcounts and swap counts that several entries share are updated with
``cuda.atomic.add``. State arrays are moved to the
device as CuPy arrays (numba device arrays when CuPy is absent) for the launch and copied back, so the engine's
host loop and the CPU kernels see the same arrays. Under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the
kernel runs as Python threads on the numpy arrays themselves.

State arrays that are already on the device (CuPy) stay there: :mod:`gpusim.gpubench` keeps a whole address space,
or a batch of them, resident and times the kernel alone.

Only block-wide primitives are used (``syncthreads_or``, shared memory), not warp shuffles, so that numba's CUDA
simulator, which has none of the warp intrinsics, runs the same kernel.
"""

import math

import numpy as np

if not hasattr(np, "row_stack"):
    # numba-cuda (0.30 at least) registers an overload for np.row_stack when it compiles its first kernel; NumPy 2.5
    # removed that alias of np.vstack. Restore it so that those versions work together.
    np.row_stack = np.vstack

from numba import config, cuda

from gpusim.kernels.atomics import atomic_add
from gpusim.kernels.pte import KIND_PRESENT, pte_kind, pte_special
from gpusim.kernels.flags import BREAK_AT, PTRS_PER_TABLE as PTRS, V_5_8, V_6_18, VM_SHARED, is_cow_mapping
from gpusim.kernels.rules import C_SWAPOFF, MODE_CLASSIFY, MODE_COPY, NR_FAST_COUNTS
from gpusim.kernels.table import (
    batch_candidate, copy_entry, copy_table_fast, end_call, entry_needs_host, entry_weight, lock_break_at, tally,
)

SIMULATOR = bool(config.ENABLE_CUDASIM)
# threads that share one table (a block per table); the simulator runs each thread as a Python thread, so it gets
# few (still several, so that the strided loops, barriers and shared-memory sums are exercised)
THREADS_PER_BLOCK = 5 if SIMULATOR else 32

if not SIMULATOR:
    from numba.extending import overload

    @overload(atomic_add, target="cuda")
    def _ol_atomic_add(arr, i, v):
        return lambda arr, i, v: cuda.atomic.add(arr, i, v)


def fork_tables_kernel(mode, rows, table_index, row_lo, row_hi, call_start, call_end, call_vmaflags, call_first,
                       ppte, cpte, cexists, variant, large_order, row_has_pinned, page_folio, folio_order,
                       folio_refcount, folio_pincount, folio_true_pins, folio_flags, folio_first_pfn, page_mapcount,
                       page_flags, swap_count, swap_levels, nb_mode, nb_every, nb_p_q32, nb_seed, row_fork_seq,
                       nb_list_cs, nb_list_k, needs_host, walk, counts):
    """One block per table row of ``rows``: its threads classify the entries, then copy them (consecutive threads,
    consecutive entries); thread 0 runs the lock-break cadence over the entries' weights. A table holding a
    linux-6.18 batch is only marked in ``walk``, for :func:`walk_tables_kernel` (see
    :func:`gpusim.kernels.cpu.fork_tables` for ``mode``)."""
    i = cuda.blockIdx.x
    if i >= rows.shape[0]:
        return
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    r = rows[i]
    base = table_index[r] * PTRS
    lo = row_lo[r]
    hi = row_hi[r]
    if mode != MODE_COPY:
        need = False
        last_f = np.int64(-1)
        check_folios = variant != V_5_8 and row_has_pinned[r]
        for c in range(lo, hi):
            for a in range(call_start[c] + tid, call_end[c], nt):
                nh, last_f = entry_needs_host(ppte[r, a - base], last_f, variant, large_order, check_folios,
                                              page_folio, folio_order, folio_refcount, folio_pincount, folio_flags,
                                              folio_first_pfn, page_flags, page_mapcount, swap_count, swap_levels)
                need = need or nh
        need = cuda.syncthreads_or(1 if need else 0) != 0
        if tid == 0:
            needs_host[i] = need
        if mode == MODE_CLASSIFY or need:
            return
    is_618 = variant == V_6_18
    if is_618:
        batch = False
        for c in range(lo, hi):
            for a in range(call_start[c] + tid, call_end[c], nt):
                batch = batch or batch_candidate(ppte[r, a - base], is_618, page_folio, folio_order)
        if cuda.syncthreads_or(1 if batch else 0) != 0:
            if tid == 0:
                walk[i] = True
            return
    acc = cuda.local.array(NR_FAST_COUNTS, np.int64)
    for x in range(NR_FAST_COUNTS):
        acc[x] = 0
    weight = cuda.shared.array(PTRS, np.uint8)
    total = cuda.shared.array(NR_FAST_COUNTS, np.int64)
    for x in range(tid, NR_FAST_COUNTS, nt):
        total[x] = 0
    for c in range(lo, hi):
        s = call_start[c]
        e = call_end[c]
        vmf = call_vmaflags[c]
        cow = is_cow_mapping(vmf)
        shared = (vmf & VM_SHARED) != 0
        for a in range(s + tid, e, nt):
            j0 = a - base
            v = ppte[r, j0]
            kind = pte_kind(v)
            ev = copy_entry(r, j0, v, kind, shared, cow, is_618, ppte, cpte, page_folio, folio_order,
                            folio_refcount, folio_true_pins, folio_flags, page_mapcount, page_flags, swap_count)
            tally(acc, kind, kind == KIND_PRESENT and pte_special(v), ev, 1, False)
            weight[a - s] = entry_weight(kind, 1)
        cuda.syncthreads()
        if tid == 0:                              # the cadence: checks and lock breaks, in address order
            progress = 0
            k = 0
            lb = 0
            for j in range(e - s):
                if progress >= BREAK_AT:
                    progress = 0
                    if lock_break_at(s, k, nb_mode, nb_every, nb_p_q32, nb_seed, row_fork_seq[r], nb_list_cs,
                                     nb_list_k):
                        lb += 1
                    k += 1
                progress += weight[j]
            end_call(acc, c, r, call_first, cexists, k, lb)
        cuda.syncthreads()
    for x in range(NR_FAST_COUNTS):
        if acc[x] != 0:
            atomic_add(total, x, acc[x])
    cuda.syncthreads()
    for x in range(tid, NR_FAST_COUNTS, nt):
        counts[i, x] = min(total[x], 1) if x == C_SWAPOFF else total[x]


def walk_tables_kernel(mode, rows, table_index, row_lo, row_hi, call_start, call_end, call_vmaflags, call_first,
                       ppte, cpte, cexists, variant, large_order, row_has_pinned, page_folio, folio_order,
                       folio_refcount, folio_pincount, folio_true_pins, folio_flags, folio_first_pfn, page_mapcount,
                       page_flags, swap_count, swap_levels, nb_mode, nb_every, nb_p_q32, nb_seed, row_fork_seq,
                       nb_list_cs, nb_list_k, needs_host, walk, counts):
    """One thread per table row that :func:`fork_tables_kernel` marked in ``walk``: the address-order walk of the
    CPU kernels (a separate kernel, so that the block walk keeps few registers)."""
    i = cuda.grid(1)
    if i >= rows.shape[0] or not walk[i]:
        return
    r = rows[i]
    copy_table_fast(r, table_index[r] * PTRS, row_lo[r], row_hi[r], call_start, call_end, call_vmaflags, call_first,
                    ppte, cpte, cexists, variant, page_folio, folio_order, folio_refcount, folio_true_pins,
                    folio_flags, folio_first_pfn, page_mapcount, page_flags, swap_count, nb_mode, nb_every,
                    nb_p_q32, nb_seed, row_fork_seq[r], nb_list_cs, nb_list_k, counts[i])


_kernel = cuda.jit(fork_tables_kernel)
_walk_kernel = cuda.jit(walk_tables_kernel)
WALK_THREADS_PER_BLOCK = 64

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
        needs_host, walk, counts = _zeros(n, np.bool_), _zeros(n, np.bool_), _zeros((n, NR_FAST_COUNTS), np.int64)
    else:
        needs_host, walk, counts = np.zeros(n, np.bool_), np.zeros(n, np.bool_), np.zeros((n, NR_FAST_COUNTS), np.int64)
    if n == 0:
        return needs_host, counts
    tpb = threads_per_block or THREADS_PER_BLOCK
    wblocks = math.ceil(n / WALK_THREADS_PER_BLOCK)
    if SIMULATOR:
        import warnings
        with warnings.catch_warnings():         # numpy scalars warn where uint64 arithmetic wraps by design
            warnings.simplefilter("ignore", RuntimeWarning)
            _kernel[n, tpb](*[kw[a] for a in _ARGS], needs_host, walk, counts)
            _walk_kernel[wblocks, WALK_THREADS_PER_BLOCK](*[kw[a] for a in _ARGS], needs_host, walk, counts)
        return needs_host, counts
    if resident:
        stream = launch_stream()
        _kernel[n, tpb, stream](*[kw[a] for a in _ARGS], needs_host, walk, counts)
        _walk_kernel[wblocks, WALK_THREADS_PER_BLOCK, stream](*[kw[a] for a in _ARGS], needs_host, walk, counts)
        return needs_host, counts
    dev = {a: (_to_device(v) if isinstance(v, np.ndarray) else v) for a, v in kw.items()}
    d_needs, d_walk, d_counts = _to_device(needs_host), _to_device(walk), _to_device(counts)
    stream = launch_stream()
    _kernel[n, tpb, stream](*[dev[a] for a in _ARGS], d_needs, d_walk, d_counts)
    _walk_kernel[wblocks, WALK_THREADS_PER_BLOCK, stream](*[dev[a] for a in _ARGS], d_needs, d_walk, d_counts)
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
           a1(i64), i64, i64, u64, u64, a1(i64), a1(i64), a1(i64), a1(b1), a1(b1), a2(i64))
    import numba.cuda.dispatcher as disp
    real = getattr(disp, "get_current_device", None)
    if real is not None:
        # numba-cuda compiles device functions called by a kernel for "the current device"; without a GPU there is
        # none, so let them target the PTX architecture asked for.
        class _Target:
            compute_capability = cc
        disp.get_current_device = lambda: _Target()
    try:
        out = {k.__name__: compile_ptx(k, sig, cc=cc)[0] for k in (fork_tables_kernel, walk_tables_kernel)}
    finally:
        if real is not None:
            disp.get_current_device = real
    return out
