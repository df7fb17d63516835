"""CPU kernels of the fast engine: numba ``njit`` with ``prange`` over page tables.

One thread walks one table (all its calls): it classifies the table, then, if no PTE needs the host loop, copies it
while the row is still in cache (:mod:`gpusim.kernels.table`). Per-table counts go to rows of their own and are
summed on the host.
"""

import hashlib
import os
import warnings

import numpy as np
from numba import njit, prange
from numba.core.errors import NumbaIRAssumptionWarning

from gpusim.kernels.pte import (
    KIND_DEVICE_PRIVATE,
    KIND_MIGRATION,
    KIND_PRESENT,
    KIND_SWAP,
    pte_kind,
    pte_pfn,
    pte_set_pfn,
    pte_special,
    swp_offset,
)
from gpusim.kernels.rules import MODE_CLASSIFY, MODE_COPY, NR_FAST_COUNTS
from gpusim.kernels.slowpath import NR_SLOW_COUNTS, copy_huge_pmd, copy_table_slow
from gpusim.kernels.table import copy_table_fast, table_needs_host


def prepare() -> None:
    """Ready this process for the CPU kernels (:func:`gpusim.backend.kernels` calls it before their first use).

    numba's on-disk cache (``cache=True``) is keyed on this file only, not on the kernel modules it calls: when any
    of them changed since the cache was written, the cached machine code is dropped so that it is compiled afresh.
    And inlining the per-entry functions at numba's IR level (:func:`gpusim.kernels.table.entry_jitable`) trips a
    pedantic internal check about the scope of loop variables of the inlined bodies, whose warning is silenced (the
    differential tests check the result).
    """
    warnings.filterwarnings("ignore", message=r"variable '.*' is not in scope", category=NumbaIRAssumptionWarning)
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            with open(os.path.join(here, name), "rb") as f:
                h.update(name.encode() + f.read())
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


def fork_tables(mode, rows, variant, large_order, tab, calls, mem, nb):
    """Classify and/or copy the table rows ``rows`` of ``tab`` (argument groups: :mod:`gpusim.kernels.args`).

    ``mode``: ``MODE_CLASSIFY`` classify only, ``MODE_CLASSIFY_COPY`` classify then copy the tables that need no
    host, ``MODE_COPY`` copy (all need no host). Writes the state arrays in place.
    Returns (needs_host bool ``(len(rows),)``, counts i64 ``(len(rows), NR_FAST_COUNTS)``).
    """
    n = rows.shape[0]
    needs_host = np.zeros(n, np.bool_)
    counts = np.zeros((n, NR_FAST_COUNTS), np.int64)
    _fork_tables(mode, rows, variant, large_order, tab, calls, mem, nb, needs_host, counts)
    return needs_host, counts


# Without numba's reference counting (_nrt=False): every call of a per-entry function with array arguments would
# otherwise increment and decrement the arrays' shared reference counts atomically, which costs more than the
# entry's own work and makes the threads contend for those counters. The kernel allocates nothing.
@njit(parallel=True, cache=True, _nrt=False)
def _fork_tables(mode, rows, variant, large_order, tab, calls, mem, nb, needs_host, counts):
    for i in prange(rows.shape[0]):
        r = rows[i]
        if mode != MODE_COPY:
            needs_host[i] = table_needs_host(r, variant, large_order, tab, calls, mem)
        if mode == MODE_CLASSIFY or needs_host[i]:
            continue
        copy_table_fast(r, variant, tab, calls, mem, nb, counts[i])


def host_tables(order, variant, large_order, tab, htab, huge, calls, mem, nb, sp):
    """The slow path (:mod:`gpusim.kernels.slowpath`) over the tables of ``order``, one after the other in that
    (address) order, until one stops the fork: an item ``x >= 0`` is row ``x`` of ``tab``, ``x < 0`` the THP of row
    ``-x - 1`` of ``htab`` / ``huge``. Returns (counts i64 ``(len(order), NR_SLOW_COUNTS)``, the index into
    ``order`` where the fork stopped or -1, its status, the call where it stopped)."""
    counts = np.zeros((order.shape[0], NR_SLOW_COUNTS), np.int64)
    i, st, c = _host_tables(order, variant, large_order, tab, htab, huge, calls, mem, nb, sp, counts)
    return counts, i, st, c


@njit(cache=True, _nrt=False)  # no reference counting of the arrays on every call (see _fork_tables)
def _host_tables(order, variant, large_order, tab, htab, huge, calls, mem, nb, sp, counts):
    for i in range(order.shape[0]):
        x = order[i]
        st, c = 0, -1
        if x >= 0:
            st, c = copy_table_slow(x, variant, large_order, tab, calls, mem, nb, counts[i], sp)
        elif copy_huge_pmd(-x - 1, variant, large_order, htab, huge, calls, mem, counts[i], sp):
            st, c = copy_table_slow(-x - 1, variant, large_order, htab, calls, mem, nb, counts[i], sp)
        if st != 0:
            return i, st, c
    return -1, 0, -1


@njit(parallel=True, cache=True)
def shift_entries(pte, page_off, slot_off):
    """A copy of ``pte`` (2-D) with pfns (present non-special, migration, device-private) moved by ``page_off``
    and swap slots by ``slot_off``: one fork's tables placed in the combined arrays of a batch, or taken back."""
    out = np.empty_like(pte)
    for r in prange(pte.shape[0]):
        for i in range(pte.shape[1]):
            v = pte[r, i]
            k = pte_kind(v)
            if k == KIND_SWAP:
                v = pte_set_pfn(v, np.uint64(np.int64(swp_offset(v)) + slot_off))
            elif (k == KIND_PRESENT and not pte_special(v)) or k == KIND_MIGRATION or k == KIND_DEVICE_PRIVATE:
                v = pte_set_pfn(v, np.uint64(np.int64(pte_pfn(v)) + page_off))
            out[r, i] = v
    return out
