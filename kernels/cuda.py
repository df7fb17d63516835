"""CUDA kernels of the fast engine (numba.cuda), imported only when the ``cuda`` or ``cudasim`` backend is chosen.

The block kernel gives each page table a row of threads of a block (a block holds a few tables, :class:`Shape`):
consecutive threads take consecutive entries (coalesced loads and stores of the tables and of the page arrays),
each calls the per-entry functions of :mod:`gpusim.kernels.table` (the per-PTE rules of
:mod:`gpusim.kernels.rules`) and counts into its own row of shared memory; one thread of the table runs the
lock-break cadence (:func:`gpusim.kernels.table.check_point`) over the entries' weights, then the table's threads
sum the rows, a count each, with no atomics (issue 16: 64-bit shared-memory atomics of every thread on the same
few addresses serialised the old reduction). A table holding a linux-6.18 batch (a large folio;
``folio_pte_batch`` joins entries in address order) is walked by a second kernel, a thread per table, with the CPU
kernels' walk. Folio refcounts, page mapcounts and swap counts that several entries share are updated with
``cuda.atomic.add``. Arguments come in the groups of :mod:`gpusim.kernels.args`.

Host (numpy) state arrays are moved to the device as CuPy arrays (numba device arrays when CuPy is absent) for the
launch and the written ones copied back, so the engine's Python loop and the CPU kernels see the same arrays. State
arrays that are already on the device (CuPy) stay there: :mod:`gpusim.jobs.gpubench` keeps a whole address space, or a
batch of them, resident and times the kernel alone. Under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the
kernels run as Python threads on the numpy arrays themselves.

Only block-wide primitives are used (barriers, shared memory), not warp shuffles, so that numba's CUDA simulator,
which has none of the warp intrinsics, runs the same kernel. :class:`ForkGraph` captures a launch on
device-resident state as a CUDA graph, replayed without numba's per-launch argument handling.
"""

import dataclasses
import math
import warnings

import numpy as np
from numba import config, cuda
from numba.extending import overload

from gpusim.kernels import args as A
from gpusim.kernels import generate as gen
from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels import writes as wk
from gpusim.kernels.args import Proc, Scratch, WMem  # noqa: F401  (the write phase's groups, for the host)
from gpusim.kernels.atomics import atomic_add, atomic_max, atomic_min
from gpusim.kernels.flags import PTRS_PER_TABLE, VM_SHARED, is_cow_mapping
from gpusim.kernels.pte import KIND_PRESENT, pte_kind, pte_special
from gpusim.kernels.rules import C_FRAME_BREAK, C_SWAPOFF, MODE_CLASSIFY, MODE_COPY, NR_FAST_COUNTS, call_frame_breaks
from gpusim.kernels.slowpath import CHECK, CLAIM, NR_SLOW_COUNTS, item_objects, run_item
from gpusim.kernels.table import (
    batch_candidate,
    check_folios_of,
    check_point,
    copy_entry,
    copy_table_fast,
    end_call,
    entry_needs_slow,
    entry_weight,
    tally,
)

SIMULATOR = bool(config.ENABLE_CUDASIM)
# threads that share one table, and tables that share one block (:class:`Shape`); the simulator runs each thread as
# a Python thread, so it gets few (still several, so that the strided loops, barriers and shared-memory sums are
# exercised, and two tables per block, so that a table that stops early beside one that does not is too)
THREADS_PER_TABLE = 5 if SIMULATOR else 32
TABLES_PER_BLOCK = 2 if SIMULATOR else 4
WALK_THREADS_PER_BLOCK = 64
SLOW_THREADS_PER_BLOCK = 4 if SIMULATOR else 64  # the slow path: a thread per item

if not SIMULATOR:

    @overload(atomic_add, target="cuda")
    def _ol_atomic_add(arr, i, v):
        return lambda arr, i, v: cuda.atomic.add(arr, i, v)

    @overload(atomic_min, target="cuda")
    def _ol_atomic_min(arr, i, v):
        return lambda arr, i, v: cuda.atomic.min(arr, i, v)

    @overload(atomic_max, target="cuda")
    def _ol_atomic_max(arr, i, v):
        return lambda arr, i, v: cuda.atomic.max(arr, i, v)


def prepare() -> None:
    """Ready this process for the CUDA kernels (:func:`gpusim.base.backend.kernels` calls it before their first use):
    numba-cuda (0.30 at least) registers an overload of ``np.row_stack`` when it compiles its first kernel, an alias
    of ``np.vstack`` that NumPy 2.5 removed; restore the alias so that those versions work together."""
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack


@cuda.jit(device=True)
def block_classify(r, lane, nt, classify, batches, vp, tab, calls, mem):
    """One pass over the entries this thread takes (every ``nt``-th from ``lane``) of row ``r``: whether any needs
    the host (with ``classify``) and whether any could start a large-folio batch (with ``batches``). Each entry is
    read once for both questions."""
    need = False
    batch = False
    last_f = np.int64(-1)
    check_folios = check_folios_of(vp, tab, r)
    base = tab.table_index[r] * PTRS_PER_TABLE
    for c in range(tab.row_lo[r], tab.row_hi[r]):
        for a in range(calls.start[c] + lane, calls.end[c], nt):
            v = tab.ppte[r, a - base]
            if classify:
                nh, last_f = entry_needs_slow(v, last_f, vp, check_folios, mem)
                need = need or nh
            if batches:
                batch = batch or batch_candidate(v, True, mem)
    return need, batch


@cuda.jit(device=True)
def copy_entries(r, lane, nt, anon_exclusive, tab, calls, mem, part, weight):
    """The entries of row ``r`` this thread takes (none of them in a batch), every call of the row: copied, their
    counts added to the thread's row ``part`` and their weights put in ``weight`` (the table's row of the block's
    shared array, by column)."""
    base = tab.table_index[r] * PTRS_PER_TABLE
    for c in range(tab.row_lo[r], tab.row_hi[r]):
        cow = is_cow_mapping(calls.vmaflags[c])
        shared = (calls.vmaflags[c] & VM_SHARED) != 0
        for a in range(calls.start[c] + lane, calls.end[c], nt):
            j0 = a - base
            v = tab.ppte[r, j0]
            kind = pte_kind(v)
            ev = copy_entry(r, j0, v, kind, shared, cow, anon_exclusive, tab, mem)
            tally(part, kind, kind == KIND_PRESENT and pte_special(v), ev, 1, False)
            weight[j0] = entry_weight(kind, 1)


@cuda.jit(device=True)
def cadence(r, tab, calls, nb, part, weight):
    """The lock-break cadence of every call of row ``r`` over its entries' weights, in address order (checks and
    lock breaks), and each call's counts (its frame breaks too: the copy leaves the entries' frames as they were):
    run by one thread of the table."""
    base = tab.table_index[r] * PTRS_PER_TABLE
    fork_seq = tab.fork_seq[r]
    for c in range(tab.row_lo[r], tab.row_hi[r]):
        s = calls.start[c]
        progress = 0
        k = 0
        lb = 0
        for a in range(s, calls.end[c]):
            progress, k, lb = check_point(progress, s, k, lb, nb, fork_seq)
            progress += weight[a - base]
        end_call(part, c, r, calls, tab, k, lb)
        part[C_FRAME_BREAK] += call_frame_breaks(tab.ppte[r], s - base, calls.end[c] - base)


# The block's shared arrays: a row of entry weights per table, a row of counts per thread (an odd number of 32-bit
# words, so that the threads of a warp write different banks).
MAX_TABLES_PER_BLOCK = 2 if SIMULATOR else 4
MAX_THREADS = 16 if SIMULATOR else 128  # 12 KiB of counts: 16 blocks of 128 threads fit in a multiprocessor
PART_WORDS = NR_FAST_COUNTS | 1


def fork_tables_kernel(mode, rows, vp, tab, calls, mem, nb, needs_slow, walk, counts):
    """A block holds ``blockDim.y`` tables of ``rows``, ``blockDim.x`` threads each: the threads of a table classify
    its entries (one pass: does one need the host? could one start a large-folio batch?), then copy them
    (consecutive threads, consecutive entries), each counting into its own row of shared memory; one thread per
    table runs the lock-break cadence; the table's threads then sum the rows, one count each (no atomics). A table
    holding a large-folio batch is only marked in ``walk``, for :func:`walk_tables_kernel` (see
    :func:`gpusim.kernels.cpu.fork_tables` for ``mode``). Every thread reaches every barrier: a table that stops
    early (the host's, or the walk's) skips work between them."""
    lane = cuda.threadIdx.x
    nt = cuda.blockDim.x
    w = cuda.threadIdx.y
    tid = w * nt + lane
    i = cuda.blockIdx.x * cuda.blockDim.y + w
    active = i < rows.shape[0]
    r = rows[i] if active else 0
    stop = cuda.shared.array(MAX_TABLES_PER_BLOCK, np.int32)
    batch = cuda.shared.array(MAX_TABLES_PER_BLOCK, np.int32)
    weight = cuda.shared.array((MAX_TABLES_PER_BLOCK, PTRS_PER_TABLE), np.uint8)
    part = cuda.shared.array((MAX_THREADS, PART_WORDS), np.int32)
    acc = part[tid]
    for x in range(PART_WORDS):
        acc[x] = 0
    if lane == 0:
        stop[w] = 0 if active else 1
        batch[w] = 0
    cuda.syncthreads()
    if active:
        need, has_batch = block_classify(
            r, lane, nt, mode != MODE_COPY, vp.batching and mode != MODE_CLASSIFY, vp, tab, calls, mem
        )
        if need:
            stop[w] = 1
        if has_batch:
            batch[w] = 1
    cuda.syncthreads()
    if active and lane == 0:
        if mode != MODE_COPY:
            needs_slow[i] = stop[w] != 0
        if mode == MODE_CLASSIFY:
            stop[w] = 1
        elif stop[w] == 0 and batch[w] != 0:  # left to the walk kernel
            walk[i] = True
            stop[w] = 2
    cuda.syncthreads()
    go = stop[w] == 0
    if go:
        copy_entries(r, lane, nt, vp.anon_exclusive, tab, calls, mem, acc, weight[w])
    cuda.syncthreads()
    if go and lane == 0:
        cadence(r, tab, calls, nb, acc, weight[w])
    cuda.syncthreads()
    if go:
        for x in range(lane, NR_FAST_COUNTS, nt):
            total = 0
            for t in range(w * nt, w * nt + nt):
                total += part[t, x]
            counts[i, x] = min(total, 1) if x == C_SWAPOFF else total


def walk_tables_kernel(mode, rows, vp, tab, calls, mem, nb, needs_slow, walk, counts):
    """One thread per table row that :func:`fork_tables_kernel` marked in ``walk``: the address-order walk of the
    CPU kernels (a separate kernel, so that the block walk keeps few registers)."""
    i = cuda.grid(1)
    if i >= rows.shape[0] or not walk[i]:
        return
    copy_table_fast(rows[i], vp, tab, calls, mem, nb, counts[i])


def slow_claim_kernel(order, maybe, tab, huge, calls, mem, lo, hi, bounds, claimed, dependent):
    """A thread per item of the slow path: its claims on the objects it names, and its bound (the first step of
    :func:`gpusim.kernels.cpu.slow_plan`)."""
    i = cuda.grid(1)
    if i < order.shape[0]:
        bounds[i], claimed[i] = item_objects(i, order[i], CLAIM, maybe, tab, huge, calls, mem, lo, hi)


def slow_check_kernel(order, maybe, tab, huge, calls, mem, lo, hi, bounds, claimed, dependent):
    """A thread per item that claimed an object: whether another item claimed it too."""
    i = cuda.grid(1)
    if i < order.shape[0] and claimed[i] and not dependent[i]:
        dependent[i] = item_objects(i, order[i], CHECK, maybe, tab, huge, calls, mem, lo, hi)[1]


def slow_items_kernel(serial, order, dependent, vp, tab, htab, huge, calls, mem, nb, sp, counts, status, call):
    """The slow path's items (:func:`gpusim.kernels.slowpath.run_item`): a thread per independent item; or, with
    ``serial``, one thread that runs the dependent items in address order until one stops the fork."""
    i = cuda.grid(1)
    if not serial:
        if i < order.shape[0] and not dependent[i]:
            status[i], call[i] = run_item(i, order[i], vp, tab, htab, huge, calls, mem, nb, sp, counts)
        return
    if i != 0:
        return
    for j in range(order.shape[0]):
        if dependent[j]:
            status[j], call[j] = run_item(j, order[j], vp, tab, htab, huge, calls, mem, nb, sp, counts)
            if status[j] != 0:
                return


def write_plan_kernel(m, pr, s, r0, lo, hi, every):
    """The write phase (:mod:`gpusim.kernels.writes`): a thread per unit plans it (its bound, whether it is
    independent)."""
    u = cuda.grid(1)
    if u < s.base.shape[0]:
        wk.plan_unit(m, pr, s, u, r0 + u, lo, hi, every)


def write_run_kernel(serial, m, pr, s, r0, lo, hi, every, rule, anon_exclusive):
    """A thread per independent unit runs its writes; or, with ``serial``, one thread the others in address order."""
    u = cuda.grid(1)
    n = s.base.shape[0]
    if not serial:
        if u < n and s.safe[u]:
            wk.write_unit(m, pr, s, u, r0 + u, lo, hi, every, rule, anon_exclusive)
        return
    if u == 0:
        for x in range(n):
            if not s.safe[x]:
                wk.write_unit(m, pr, s, x, r0 + x, lo, hi, every, rule, anon_exclusive)


def write_fixup_kernel(serial, m, pr, s, r0, pages0, folios0, content0, anon_exclusive):
    """The units' new pages and contents numbered, as :func:`write_run_kernel` runs them."""
    u = cuda.grid(1)
    n = s.base.shape[0]
    if not serial:
        if u < n and s.safe[u]:
            wk.fixup_unit(m, pr, s, u, r0 + u, pages0, folios0, content0, anon_exclusive)
        return
    if u == 0:
        for x in range(n):
            if not s.safe[x]:
                wk.fixup_unit(m, pr, s, x, r0 + x, pages0, folios0, content0, anon_exclusive)


def write_gaps_kernel(pr, lo, hi, r0, r1, counts, ok):
    """One thread counts the writes to tables without a row."""
    if cuda.grid(1) == 0:
        ok[0] = wk.write_gaps(pr, lo, hi, r0, r1, counts)


def write_exit_kernel(m, pr):
    """One thread runs the child's exit."""
    if cuda.grid(1) == 0:
        wk.exit_mmap(m, pr)


def generate_rows_kernel(anon_exclusive, large_order, page_c0, slot_c0, v, w, o):
    """The region generator's step 2 (:func:`gpusim.kernels.generate.generate_row`): a thread per table row."""
    r = cuda.grid(1)
    if r < w.vma.shape[0]:
        gen.generate_row(r, anon_exclusive, large_order, page_c0, slot_c0, v, w, o)


WRITE_KERNELS = (write_plan_kernel, write_run_kernel, write_fixup_kernel, write_gaps_kernel, write_exit_kernel)
wplan_kernel, wrun_kernel, wfixup_kernel, wgaps_kernel, wexit_kernel = (cuda.jit(k) for k in WRITE_KERNELS)
walk_kernel = cuda.jit(walk_tables_kernel)
claim_kernel = cuda.jit(slow_claim_kernel)
check_kernel = cuda.jit(slow_check_kernel)
items_kernel = cuda.jit(slow_items_kernel)
gen_kernel = cuda.jit(generate_rows_kernel)


def _to_device(a):
    try:
        import cupy

        return cupy.asarray(a)
    except ImportError:
        return cuda.to_device(a)


def _device_module():
    """CuPy for the outputs of a launch on resident state (numba's device arrays have no ``zeros``)."""
    import cupy

    return cupy


def _to_host(d, out: np.ndarray) -> None:
    if hasattr(d, "get"):
        d.get(out=out)
    else:
        d.copy_to_host(out)


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


@dataclasses.dataclass(frozen=True)
class Shape:
    """How the block kernel is launched: threads per table, tables per block (a block is a ``(threads_per_table,
    tables_per_block)`` grid of threads), and a cap on the registers of a thread (None: the compiler's choice;
    fewer registers let more threads wait on memory at once, at the risk of spills)."""

    threads_per_table: int = THREADS_PER_TABLE
    tables_per_block: int = TABLES_PER_BLOCK
    max_registers: int | None = None

    def __post_init__(self):
        t, w = self.threads_per_table, self.tables_per_block
        if t < 1 or w < 1 or w > MAX_TABLES_PER_BLOCK or t * w > MAX_THREADS:
            raise ValueError(
                f"a block holds 1 to {MAX_TABLES_PER_BLOCK} tables and at most {MAX_THREADS} threads "
                f"(asked: {w} tables of {t} threads)"
            )


# The default shapes, from an H200 (results/BENCHMARKS.md, 2026-11-30): a launch of many tables (several waves of
# blocks) runs fastest with 16 threads per table (17.9 G PTEs/s at 1 TiB, against 16.5 G with 32); a launch that
# fits in one wave is bound by one table's latency, which more threads per table shorten (1 GiB: 0.133 ms with 16;
# 0.086 ms with 32 in the kernel before its classifying passes were merged; 32 with the merged pass not measured).
DEFAULT_SHAPE = Shape()
MANY_TABLES = 1 << 16
MANY_TABLES_SHAPE = Shape(threads_per_table=16) if not SIMULATOR else DEFAULT_SHAPE
_FORK_KERNELS = {}


def default_shape(n: int) -> Shape:
    """The launch shape of ``n`` table rows when none is asked for."""
    return MANY_TABLES_SHAPE if n >= MANY_TABLES else DEFAULT_SHAPE


def fork_kernel_for(max_registers: int | None):
    """The block kernel compiled with at most ``max_registers`` registers per thread (one dispatcher per cap)."""
    if SIMULATOR:
        max_registers = None
    if max_registers not in _FORK_KERNELS:
        opts = {} if max_registers is None else {"max_registers": int(max_registers)}
        _FORK_KERNELS[max_registers] = cuda.jit(fork_tables_kernel, **opts)
    return _FORK_KERNELS[max_registers]


def resources(shape: Shape | None = None) -> dict:
    """Registers and local memory per thread, shared memory per block, of the block kernel as compiled for
    ``shape`` and of the walk kernel (after a launch has compiled them)."""
    out = {}
    cap = (shape or DEFAULT_SHAPE).max_registers
    for name, k in (("fork_tables_kernel", fork_kernel_for(cap)), ("walk_tables_kernel", walk_kernel)):
        try:  # numba gives a dict by signature when none is named: the kernels have one signature each
            got = {
                "registers": k.get_regs_per_thread(),
                "local_bytes": k.get_local_mem_per_thread(),
                "shared_bytes": k.get_shared_mem_per_block(),
            }
            out[name] = {f: next(iter(v.values()), None) if isinstance(v, dict) else v for f, v in got.items()}
        except Exception as e:  # noqa: BLE001  (the report is informative; numba versions differ)
            out[name] = {"error": str(e)}
    return out


def _launch(n: int, shape: Shape, stream, args: tuple) -> None:
    """Both kernels over ``n`` rows (``args``: every parameter, outputs included)."""
    w = shape.tables_per_block
    grid, block = (math.ceil(n / w), (shape.threads_per_table, w))
    wblocks = math.ceil(n / WALK_THREADS_PER_BLOCK)
    fork = fork_kernel_for(shape.max_registers)
    if stream is None:
        fork[grid, block](*args)
        walk_kernel[wblocks, WALK_THREADS_PER_BLOCK](*args)
    else:
        fork[grid, block, stream](*args)
        walk_kernel[wblocks, WALK_THREADS_PER_BLOCK, stream](*args)


def outputs(n: int, xp):
    """The outputs of a launch over ``n`` rows (needs_slow, walk, counts), zeroed, as arrays of ``xp``."""
    return xp.zeros(n, np.bool_), xp.zeros(n, np.bool_), xp.zeros((n, NR_FAST_COUNTS), np.int64)


def fork_tables(mode, rows, vp, tab, calls, mem, nb, shape: Shape | None = None, out=None):
    """Same contract as :func:`gpusim.kernels.cpu.fork_tables`: writes the state arrays in place and returns
    (needs_slow, counts).

    Host (numpy) arrays are copied to the device for the launch and the written ones back after it. When the state
    arrays are already device arrays (``tab.ppte`` says which), nothing moves: the kernels run on them on CuPy's
    current stream and needs_slow and counts are returned as device arrays too (state kept resident between
    forks); ``out`` (from :func:`outputs`) then gives the output arrays, so that nothing is allocated or copied
    from the host (a launch that a CUDA graph can capture: :class:`ForkGraph`)."""
    n = int(rows.shape[0])
    shape = shape or default_shape(n)
    groups = (tab, calls, mem, nb)
    if SIMULATOR:  # Python threads over the numpy arrays themselves
        out = outputs(n, np)
        if n:
            with warnings.catch_warnings():  # numpy scalars warn where uint64 arithmetic wraps by design
                warnings.simplefilter("ignore", RuntimeWarning)
                _launch(n, shape, None, (mode, rows, vp, *groups, *out))
        return out[0], out[2]
    resident = on_device(tab.ppte)
    if not resident:
        groups = tuple(type(g)(*(_to_device(a) if isinstance(a, np.ndarray) else a for a in g)) for g in groups)
        rows = _to_device(rows)
    if out is None:  # made where the state is: on the device for resident state, never through host memory
        out = outputs(n, _device_module()) if resident else tuple(_to_device(a) for a in outputs(n, np))
    else:
        out[1].fill(False)  # walk: only its marks are written
    if n:
        _launch(n, shape, launch_stream(), (mode, rows, vp, *groups, *out))
    if resident:
        return out[0], out[2]
    for host, dev in zip((tab, calls, mem, nb), groups):
        for name in A.written(host):
            _to_host(getattr(dev, name), getattr(host, name))
    needs_slow, counts = np.zeros(n, np.bool_), np.zeros((n, NR_FAST_COUNTS), np.int64)
    _to_host(out[0], needs_slow)
    _to_host(out[2], counts)
    return needs_slow, counts


class ForkGraph:
    """One launch of :func:`fork_tables` on device-resident state, captured as a CUDA graph (CuPy's stream
    capture) and replayed: the kernels' arguments are prepared once, so a replay costs the GPU's work and one
    graph launch, not numba's handling of some 200 kernel parameters twice. The graph holds the arrays' addresses:
    every replay forks whatever those arrays hold then (restore the state between replays to fork it afresh)."""

    def __init__(self, args: tuple, shape: Shape | None = None):
        import cupy

        n = int(args[1].shape[0])
        self.out = outputs(n, cupy)
        cupy.cuda.Device().synchronize()  # the state and the outputs, made on other streams, are complete
        self.stream = cupy.cuda.Stream(non_blocking=True)
        with self.stream:
            fork_tables(*args, shape=shape, out=self.out)  # compiled and loaded outside the capture
            self.stream.synchronize()
            self.stream.begin_capture()
            try:
                fork_tables(*args, shape=shape, out=self.out)
            finally:
                self.graph = self.stream.end_capture()

    def launch(self):
        """Replay the fork on the graph's stream; returns (needs_slow, counts) as device arrays."""
        self.graph.launch(self.stream)
        return self.out[0], self.out[2]


def _run(kernels, args: tuple, back: tuple) -> None:
    """Launch ``kernels`` (a list of (kernel, threads in all, leading scalars)) in turn over ``args``: host (numpy)
    arrays, and groups of them, are copied to the device first, and the arrays of ``args[k]`` for ``k`` in ``back``
    copied back after; under the simulator the kernels run on the host arrays themselves."""
    if SIMULATOR:
        with warnings.catch_warnings():  # numpy scalars warn where uint64 arithmetic wraps by design
            warnings.simplefilter("ignore", RuntimeWarning)
            for kernel, threads, lead in kernels:
                if threads:
                    kernel[math.ceil(threads / SLOW_THREADS_PER_BLOCK), SLOW_THREADS_PER_BLOCK](*lead, *args)
        return

    def dev(a):
        if isinstance(a, np.ndarray):
            return _to_device(a)
        if isinstance(a, tuple):  # a group
            return type(a)(*(dev(x) for x in a))
        return a

    dargs = tuple(dev(a) for a in args)
    stream = launch_stream()
    for kernel, threads, lead in kernels:
        if threads:
            kernel[math.ceil(threads / SLOW_THREADS_PER_BLOCK), SLOW_THREADS_PER_BLOCK, stream](*lead, *dargs)
    for k in back:
        pairs = zip(args[k], dargs[k]) if isinstance(args[k], tuple) else [(args[k], dargs[k])]
        for h, d in pairs:
            if isinstance(h, np.ndarray):
                _to_host(d, h)


def slow_plan(order, maybe, sequential, tab, huge, calls, mem, lo, hi):
    """Same contract as :func:`gpusim.kernels.cpu.slow_plan`: a thread per item, claims by atomic min / max."""
    n = int(order.shape[0])
    bounds, claimed, dependent = np.zeros(n, np.int64), np.zeros(n, np.bool_), np.full(n, sequential, np.bool_)
    args, back = A.kernel_args("slow_claim_kernel", locals())
    _run([(claim_kernel, n, ()), (check_kernel, n, ())], args, back)
    return bounds, dependent


def slow_tables(order, dependent, vp, tab, htab, huge, calls, mem, nb, sp):
    """Same contract as :func:`gpusim.kernels.cpu.slow_tables`: a thread per independent item, then one thread
    for the dependent ones in address order. The state arrays come back to the host."""
    n = int(order.shape[0])
    counts, status, call = np.zeros((n, NR_SLOW_COUNTS), np.int64), np.zeros(n, np.int64), np.full(n, -1, np.int64)
    args, back = A.kernel_args("slow_items_kernel", locals(), 1)
    serial = 1 if bool(np.asarray(dependent).any()) else 0
    _run([(items_kernel, n, (0,)), (items_kernel, serial, (1,))], args, back)
    return counts, status, call


# The write phase: same contracts as the CPU engine's (:mod:`gpusim.kernels.cpu`); the groups are host arrays,
# copied to the device for each launch and back (the state stays on the host between the steps' launches).


def write_plan(m, pr, s, r0, lo, hi, every):
    args, back = A.kernel_args("write_plan_kernel", locals())
    _run([(wplan_kernel, s.base.shape[0], ())], args, back)


def write_run(m, pr, s, r0, lo, hi, every, rule, anon_exclusive):
    n, serial = s.base.shape[0], int(not bool(np.all(s.safe)))
    args, back = A.kernel_args("write_run_kernel", locals(), 1)
    _run([(wrun_kernel, n, (False,)), (wrun_kernel, serial, (True,))], args, back)


def write_fixup(m, pr, s, r0, pages0, folios0, content0, anon_exclusive):
    n, serial = s.base.shape[0], int(not bool(np.all(s.safe)))
    args, back = A.kernel_args("write_fixup_kernel", locals(), 1)
    _run([(wfixup_kernel, n, (False,)), (wfixup_kernel, serial, (True,))], args, back)


def write_gaps(pr, lo, hi, r0, r1, total):
    """Adds the gaps' counts to ``total``; whether every gap was written."""
    counts, ok = np.zeros(total.shape[0], np.int64), np.zeros(1, np.bool_)  # the kernel's own outputs
    args, back = A.kernel_args("write_gaps_kernel", locals())
    _run([(wgaps_kernel, 1, ())], args, back)
    total += counts
    return bool(ok[0])


def write_exit(m, pr):
    args, back = A.kernel_args("write_exit_kernel", locals())
    _run([(wexit_kernel, 1, ())], args, back)


def generate_rows(anon_exclusive, large_order, page_c0, slot_c0, v, w, o):
    """Same contract as :func:`gpusim.kernels.cpu.generate_rows`: on device arrays (CuPy) the state is built in
    device memory and stays there; host arrays are copied in and the outputs back."""
    args, back = A.kernel_args("generate_rows_kernel", locals())
    _run([(gen_kernel, w.vma.shape[0], ())], args, back)


def compile_ptx_all(cc=(9, 0)) -> dict[str, str]:
    """PTX of every CUDA kernel, compiled without a GPU (catches typing errors the simulator cannot see)."""
    import numba.cuda.dispatcher as disp
    from numba.cuda import compile_ptx

    prepare()
    real = getattr(disp, "get_current_device", None)
    if real is not None:
        # numba-cuda compiles device functions called by a kernel for "the current device"; without a GPU there is
        # none, so let them target the PTX architecture asked for.
        class _Target:
            compute_capability = cc

        disp.get_current_device = lambda: _Target()
    try:
        kernels = (fork_tables_kernel, walk_tables_kernel, slow_claim_kernel, slow_check_kernel, slow_items_kernel)
        out = {}
        for k in (*kernels, *WRITE_KERNELS, generate_rows_kernel):
            out[k.__name__] = compile_ptx(k, A.kernel_signature(k.__name__), cc=cc)[0]
    finally:
        if real is not None:
            disp.get_current_device = real
    return out
