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

# Inlining the per-entry functions at numba's IR level (gpusim.kernels.table.entry_jitable) trips a pedantic
# internal check about the scope of loop variables of the inlined bodies; the differential tests check the result.
warnings.filterwarnings("ignore", message=r"variable '.*' is not in scope", category=NumbaIRAssumptionWarning)


def _drop_stale_cache() -> None:
    """numba's on-disk cache (``cache=True``) is keyed on this file only, not on the kernel modules it calls; when
    any of them changed since the cache was written, drop the cached machine code so it is compiled afresh."""
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
    except OSError:                              # a read-only install: numba then caches elsewhere or not at all
        pass


_drop_stale_cache()

from gpusim.kernels.pte import (
    KIND_DEVICE_PRIVATE, KIND_MIGRATION, KIND_PRESENT, KIND_SWAP, pte_kind, pte_pfn, pte_set_pfn, pte_special,
    swp_offset,
)
from gpusim.kernels.flags import PTRS_PER_TABLE as PTRS
from gpusim.kernels.rules import MODE_CLASSIFY, MODE_COPY, NR_FAST_COUNTS
from gpusim.kernels.table import copy_table_fast, table_needs_host



def fork_tables(mode, rows, *args):
    """Classify and/or copy the table rows ``rows``.

    ``mode``: 0 classify only, 1 classify then copy the tables that need no host, 2 copy (all need no host).
    ``row_has_pinned`` and ``row_fork_seq`` (in ``args``, see :func:`gpusim.engine.kernel_args`) are per table
    row: a launch may hold the tables of several forks.
    Returns (needs_host bool ``(len(rows),)``, counts i64 ``(len(rows), NR_FAST_COUNTS)``).
    """
    n = rows.shape[0]
    needs_host = np.zeros(n, np.bool_)
    counts = np.zeros((n, NR_FAST_COUNTS), np.int64)
    _fork_tables(mode, rows, *args, needs_host, counts)
    return needs_host, counts


# Without numba's reference counting (_nrt=False): every call of a per-entry function with array arguments would
# otherwise increment and decrement the arrays' shared reference counts atomically, which costs more than the
# entry's own work and makes the threads contend for those counters. The kernel allocates nothing.
@njit(parallel=True, cache=True, _nrt=False)
def _fork_tables(mode, rows, table_index, row_lo, row_hi, call_start, call_end, call_vmaflags, call_first, ppte,
                 cpte, cexists, variant, large_order, row_has_pinned, page_folio, folio_order, folio_refcount,
                 folio_pincount, folio_true_pins, folio_flags, folio_first_pfn, page_mapcount, page_flags, swap_count,
                 swap_levels, nb_mode, nb_every, nb_p_q32, nb_seed, row_fork_seq, nb_list_cs, nb_list_k, needs_host,
                 counts):
    for i in prange(rows.shape[0]):
        r = rows[i]
        base = table_index[r] * PTRS
        if mode != MODE_COPY:
            needs_host[i] = table_needs_host(r, base, row_lo[r], row_hi[r], call_start, call_end, ppte, variant,
                                             large_order, row_has_pinned[r], page_folio, folio_order,
                                             folio_refcount, folio_pincount, folio_flags, folio_first_pfn,
                                             page_flags, page_mapcount, swap_count, swap_levels)
        if mode == MODE_CLASSIFY or needs_host[i]:
            continue
        copy_table_fast(r, base, row_lo[r], row_hi[r], call_start, call_end, call_vmaflags, call_first, ppte, cpte,
                        cexists, variant, page_folio, folio_order, folio_refcount, folio_true_pins, folio_flags,
                        folio_first_pfn, page_mapcount, page_flags, swap_count, nb_mode, nb_every, nb_p_q32,
                        nb_seed, row_fork_seq[r], nb_list_cs, nb_list_k, counts[i])


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
