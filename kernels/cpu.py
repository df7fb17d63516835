"""CPU kernels of the fast engine: numba ``njit`` with ``prange`` over page tables.

One thread walks one table (all its calls): it classifies the table, then, if no PTE needs the slow path, copies it
while the row is still in cache (:mod:`gpusim.kernels.table`). Per-table counts go to rows of their own and are
summed on the host. The tables left to the slow path (:mod:`gpusim.kernels.slowpath`) are planned
(:func:`slow_plan`) and run (:func:`slow_tables`) here too, a thread per table that shares no object with another.
"""

import hashlib
import os
import warnings

import numpy as np
from numba import njit, prange
from numba.core.errors import NumbaIRAssumptionWarning

from gpusim.kernels import episode as ek
from gpusim.kernels import generate as gen
from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels import lazy as lz
from gpusim.kernels import writes as wk
from gpusim.kernels.args import EpisodeWrites, Proc, Scratch, WMem  # noqa: F401  (the write phase's groups, for the host)
from gpusim.kernels.flags import PTRS_PER_TABLE
from gpusim.kernels.pte import pte_moved, pte_set_pfn
from gpusim.kernels.rules import MODE_CLASSIFY, MODE_COPY, NR_FAST_COUNTS
from gpusim.kernels.slowpath import (
    CHECK,
    CLAIM,
    NR_SLOW_COUNTS,
    ST_DUPLICATES,
    ST_INSTALLS,
    ST_NEXT_FOLIO,
    item_objects,
    run_item,
)
from gpusim.kernels.table import copy_table_fast, table_needs_slow


def prepare() -> None:
    """Ready this process for the CPU kernels (:func:`gpusim.base.backend.kernels` calls it before their first use).

    numba's on-disk cache (``cache=True``) is keyed on this file only, not on the kernel modules it calls: when any
    of them changed since the cache was written, the cached machine code is dropped so that it is compiled afresh.
    And inlining the per-entry functions at numba's IR level (:func:`gpusim.kernels.table.entry_jitable`) trips a
    pedantic internal check about the scope of loop variables of the inlined bodies, whose warning is silenced (the
    differential tests check the result).
    """
    warnings.filterwarnings("ignore", message=r".*variable '.*' is not in scope", category=NumbaIRAssumptionWarning)
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.blake2b(digest_size=16)
    for folder, dirs, names in sorted(os.walk(here)):  # the kernel modules, those of subpackages (slowpath/) too
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                h.update(os.path.relpath(path, here).encode() + f.read())
    cache = os.path.join(here, "__pycache__")
    stamp = os.path.join(cache, "gpusim-kernels.stamp")
    try:
        if open(stamp).read() == h.hexdigest():
            return
    except OSError:
        pass
    try:
        os.makedirs(cache, exist_ok=True)
        for name in os.listdir(cache):
            if name.endswith((".nbi", ".nbc")):
                os.remove(os.path.join(cache, name))
        with open(stamp, "w") as f:
            f.write(h.hexdigest())
    except OSError:  # a read-only install: numba then caches elsewhere or not at all
        pass


def fork_tables(mode, rows, vp, tab, calls, mem, nb):
    """Classify and/or copy the table rows ``rows`` of ``tab`` under the variant's rules ``vp`` (argument groups:
    :mod:`gpusim.kernels.args`).

    ``mode``: ``MODE_CLASSIFY`` classify only, ``MODE_CLASSIFY_COPY`` classify then copy the tables that need no
    host, ``MODE_COPY`` copy (all need no host). Writes the state arrays in place.
    Returns (needs_slow bool ``(len(rows),)``, counts i64 ``(len(rows), NR_FAST_COUNTS)``).
    """
    n = rows.shape[0]
    needs_slow = np.zeros(n, np.bool_)
    counts = np.zeros((n, NR_FAST_COUNTS), np.int64)
    _fork_tables(mode, rows, vp, tab, calls, mem, nb, needs_slow, counts)
    return needs_slow, counts


# Without numba's reference counting (_nrt=False): every call of a per-entry function with array arguments would
# otherwise increment and decrement the arrays' shared reference counts atomically, which costs more than the
# entry's own work and makes the threads contend for those counters. The kernel allocates nothing.
@njit(parallel=True, cache=True, _nrt=False)
def _fork_tables(mode, rows, vp, tab, calls, mem, nb, needs_slow, counts):
    for i in prange(rows.shape[0]):
        r = rows[i]
        if mode != MODE_COPY:
            needs_slow[i] = table_needs_slow(r, vp, tab, calls, mem)
        if mode == MODE_CLASSIFY or needs_slow[i]:
            continue
        copy_table_fast(r, vp, tab, calls, mem, nb, counts[i])


def slow_plan(order, maybe, sequential, tab, huge, calls, mem, lo, hi):
    """Plan the slow path's items ``order`` (:mod:`gpusim.kernels.slowpath`: a table row ``x >= 0`` of ``tab``, the
    THP of row ``-x - 1`` of ``huge``): each item's bound on early copies, and whether it must run in address order
    after the others (it shares a folio or a swap slot with another item; every item when ``sequential``: a fork
    that can stop early). ``lo`` / ``hi``: this fork's claims, int64 arrays with an element per folio and per swap
    slot, filled with ``CLAIM_LO`` / ``CLAIM_HI``. Returns (bounds i64, dependent bool), per item."""
    n = order.shape[0]
    bounds = np.zeros(n, np.int64)
    dependent = np.full(n, sequential, np.bool_)
    _slow_plan(order, maybe, tab, huge, calls, mem, lo, hi, bounds, dependent, np.zeros(n, np.bool_))
    return bounds, dependent


@njit(parallel=True, cache=True, _nrt=False)
def _slow_plan(order, maybe, tab, huge, calls, mem, lo, hi, bounds, dependent, claimed):
    n = order.shape[0]
    for i in prange(n):
        bounds[i], claimed[i] = item_objects(i, order[i], CLAIM, maybe, tab, huge, calls, mem, lo, hi)
    for i in prange(n):
        if claimed[i] and not dependent[i]:
            dependent[i] = item_objects(i, order[i], CHECK, maybe, tab, huge, calls, mem, lo, hi)[1]


def slow_tables(order, dependent, vp, tab, htab, huge, calls, mem, nb, sp):
    """The slow path (:mod:`gpusim.kernels.slowpath`) over the items of ``order``: the independent ones in parallel,
    then the ``dependent`` ones one after the other in address order, until one stops the fork. ``sp.state`` and
    ``sp.copy_mm_data`` have a row per item (its allocator and logs; the xu series' struct). Returns (counts i64
    ``(len(order), NR_SLOW_COUNTS)``, status and stopping call per item: 0 and -1 for an item that ran to its end
    or did not run)."""
    n = order.shape[0]
    counts = np.zeros((n, NR_SLOW_COUNTS), np.int64)
    status = np.zeros(n, np.int64)
    call = np.full(n, -1, np.int64)
    _slow_tables(order, dependent, vp, tab, htab, huge, calls, mem, nb, sp, counts, status, call)
    return counts, status, call


@njit(parallel=True, cache=True, _nrt=False)  # no reference counting of the arrays on every call (see _fork_tables)
def _slow_tables(order, dependent, vp, tab, htab, huge, calls, mem, nb, sp, counts, status, call):
    n = order.shape[0]
    for i in prange(n):
        if not dependent[i]:
            status[i], call[i] = run_item(i, order[i], vp, tab, htab, huge, calls, mem, nb, sp, counts)
    for i in range(n):
        if dependent[i]:
            status[i], call[i] = run_item(i, order[i], vp, tab, htab, huge, calls, mem, nb, sp, counts)
            if status[i] != 0:
                return


def number_in_address_order(nr_folios, nr_pages, seg, order, mem, sp, cpte, hcpte):
    """Close up the segments of new rows the items of ``order`` allocated from (``seg``: their first rows, counted
    from ``nr_folios`` / ``nr_pages``; ``sp.state``: how far each got; see :mod:`gpusim.engines.earlycopy`): the rows
    each item used move down to follow the previous item's, the child entries (``cpte``, or ``hcpte`` for a THP) and the
    logs naming them follow, and the logs are closed up at the front of ``sp.installs`` / ``sp.duplicates``.
    Returns (the new rows, installs, duplicates)."""
    out = np.zeros(3, np.int64)
    _number_in_address_order(nr_folios, nr_pages, seg, order, mem, sp, cpte, hcpte, out)
    return int(out[0]), int(out[1]), int(out[2])


@njit(cache=True, _nrt=False)
def _number_in_address_order(nf, npg, seg, order, mem, sp, cpte, hcpte, out):
    # Rows only move down (an item uses at most its bound) and items are taken in order, so moving each row in turn
    # never overwrites one not yet moved.
    dst, ni, nd = 0, 0, 0
    for i in range(order.shape[0]):
        s = seg[i]
        d = s - dst  # how far this item's rows move
        used = sp.state[i, ST_NEXT_FOLIO] - nf - s
        for k in range(used if d else 0):
            fo, fn, po, pn = nf + s + k, nf + dst + k, npg + s + k, npg + dst + k
            mem.folio_order[fn] = mem.folio_order[fo]
            mem.folio_refcount[fn] = mem.folio_refcount[fo]
            mem.folio_pincount[fn] = mem.folio_pincount[fo]
            mem.folio_true_pins[fn] = mem.folio_true_pins[fo]
            mem.folio_flags[fn] = mem.folio_flags[fo]
            sp.folio_pmd_mapcount[fn] = sp.folio_pmd_mapcount[fo]
            mem.folio_first_pfn[fn] = pn
            mem.page_folio[pn] = fn
            mem.page_mapcount[pn] = mem.page_mapcount[po]
            mem.page_flags[pn] = mem.page_flags[po]
            sp.page_content[pn] = sp.page_content[po]
        x = order[i]
        for j in range(s, sp.state[i, ST_INSTALLS]):
            for col in range(4):
                sp.installs[ni, col] = sp.installs[j, col]
            sp.installs[ni, 1] -= d
            if d:
                a = sp.installs[ni, 0] % PTRS_PER_TABLE
                if x >= 0:
                    cpte[x, a] = pte_set_pfn(cpte[x, a], np.uint64(sp.installs[ni, 1]))
                else:
                    hcpte[-x - 1, a] = pte_set_pfn(hcpte[-x - 1, a], np.uint64(sp.installs[ni, 1]))
            ni += 1
        for j in range(s, sp.state[i, ST_DUPLICATES]):
            sp.duplicates[nd, 0] = sp.duplicates[j, 0] - d
            sp.duplicates[nd, 1] = sp.duplicates[j, 1]
            nd += 1
        dst += used
    out[0], out[1], out[2] = dst, ni, nd


NO_SPLIT = np.int64(1) << 62  # every pfn below it: one offset for all


@njit(parallel=True, cache=True, _nrt=False)
def odfc_account_calls(rows, starts, ends, vmaflags, ppte, index, has_pinned, vp, mem, acc, out):
    """odf-cowpte's accounting pass over the calls it shares (:mod:`gpusim.kernels.lazy`): the calls that meet no
    other's objects in order-dependent ways in parallel, then the rest in address order, stopping at a call whose
    pass cannot go on (``PASS_SWAP_FULL``); returns the calls done in that second phase's order (all of them, or
    up to the stopping one). The CUDA backend runs it here too."""
    n = rows.shape[0]
    for c in prange(n):
        r = rows[c]
        if lz.odfc_plain_call(ppte[r], index[r] * PTRS_PER_TABLE, starts[c], ends[c], vp, has_pinned, mem):
            lz.odfc_account_one(rows, starts, ends, vmaflags, ppte, index, has_pinned, vp, mem, acc, out, c, True)
        else:
            out[c] = lz.PASS_LATER
    for c in range(n):
        if out[c] == lz.PASS_LATER:
            lz.odfc_account_one(rows, starts, ends, vmaflags, ppte, index, has_pinned, vp, mem, acc, out, c, False)
            if out[c] == lz.PASS_SWAP_FULL:
                return c + 1
    return n


@njit(cache=True, _nrt=False)
def fallback_rest_alone(ppte, rows, starts, ends, table_index, page_folio, folio_order, page_mapcount, pmd_mapcount):
    return lz.fallback_rest_alone(
        ppte, rows, starts, ends, table_index, page_folio, folio_order, page_mapcount, pmd_mapcount
    )


@njit(cache=True, _nrt=False)
def copy_prefixes(src, src_rows, dst, dst_rows, lens):
    return lz.copy_prefixes(src, src_rows, dst, dst_rows, lens)


@njit(parallel=True, cache=True)
def shift_entries(pte, page_off, slot_off):
    """A copy of ``pte`` (2-D) with each entry moved by :func:`gpusim.kernels.pte.pte_moved`: one fork's tables
    placed in the combined arrays of a batch, or taken back."""
    out = np.empty_like(pte)
    for r in prange(pte.shape[0]):
        for i in range(pte.shape[1]):
            out[r, i] = pte_moved(pte[r, i], page_off, slot_off, NO_SPLIT, 0)
    return out


# The write phase (spec section 11; :mod:`gpusim.kernels.writes`): one step's units, independent ones in parallel
# (a thread per row of the writer), the others after them in address order; the host sums the prefixes between.


@njit(parallel=True, cache=True, _nrt=False)
def write_plan(m, pr, s, r0, lo, hi, every):
    """Each unit's bound on new pages (into ``s.base``) and whether it is independent (``s.safe``)."""
    for u in prange(s.base.shape[0]):
        wk.plan_unit(m, pr, s, u, r0 + u, lo, hi, every)


@njit(parallel=True, cache=True, _nrt=False)
def write_run(m, pr, s, r0, lo, hi, every, rule, anon_exclusive):
    """The units' writes: the independent ones in parallel, then the others in address order."""
    n = s.base.shape[0]
    for u in prange(n):
        if s.safe[u]:
            wk.write_unit(m, pr, s, u, r0 + u, lo, hi, every, rule, anon_exclusive)
    for u in range(n):
        if not s.safe[u]:
            wk.write_unit(m, pr, s, u, r0 + u, lo, hi, every, rule, anon_exclusive)


@njit(parallel=True, cache=True, _nrt=False)
def write_fixup(m, pr, s, r0, pages0, folios0, content0, anon_exclusive):
    """The units' new pages and contents numbered (``s.pp``, ``s.pc`` hold the prefix sums)."""
    n = s.base.shape[0]
    for u in prange(n):
        if s.safe[u]:
            wk.fixup_unit(m, pr, s, u, r0 + u, pages0, folios0, content0, anon_exclusive)
    for u in range(n):
        if not s.safe[u]:
            wk.fixup_unit(m, pr, s, u, r0 + u, pages0, folios0, content0, anon_exclusive)


@njit(cache=True)
def write_gaps(pr, lo, hi, r0, r1, counts):
    """The writes to tables without a row (:func:`gpusim.kernels.writes.write_gaps`)."""
    return wk.write_gaps(pr, lo, hi, r0, r1, counts)


@njit(cache=True)
def write_exit(m, pr):
    """The child's exit (:func:`gpusim.kernels.writes.exit_mmap`)."""
    wk.exit_mmap(m, pr)


@njit(parallel=True, cache=True, _nrt=False)
def generate_rows(anon_exclusive, large_order, page_c0, slot_c0, v, w, o):
    """The region generator's step 2 (:func:`gpusim.kernels.generate.generate_row`): a thread per table row."""
    for r in prange(w.vma.shape[0]):
        gen.generate_row(r, anon_exclusive, large_order, page_c0, slot_c0, v, w, o)


# An episode's writes (spec 11.6; :mod:`gpusim.kernels.episode`): one after another, on one core.


@njit(cache=True, _nrt=False, nogil=True)  # the host draws the next window meanwhile
def episode_writes(m, pa, ch, s, w, st, codes, origin, first_new, rule, anon_exclusive, ahead):
    """The writes in order (:func:`gpusim.kernels.episode.episode_writes`)."""
    ek.episode_writes(m, pa, ch, s, w, st, codes, origin, first_new, rule, anon_exclusive, ahead)


@njit(cache=True, _nrt=False)
def episode_exit(m, ch, st, origin, first_new):
    """The child's exit during an episode (:func:`gpusim.kernels.episode.episode_exit`)."""
    ek.episode_exit(m, ch, st, origin, first_new)


@njit(cache=True)
def episode_dma(pa, ch, live, addr, frame):
    """The DMA view during an episode (:func:`gpusim.kernels.episode.dma_sample`)."""
    return ek.dma_sample(pa, ch, live, addr, frame)


@njit(parallel=True, cache=True)
def episode_private(m, ch):
    """The child's private dirty pages at an episode's start (:func:`gpusim.kernels.episode.child_private_row`
    summed over its rows, in parallel)."""
    n = 0
    for r in prange(ch.tix.shape[0]):
        n += ek.child_private_row(m, ch, r)
    return n
