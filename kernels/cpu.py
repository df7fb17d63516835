"""CPU kernels of the fast engine (numba ``njit``; ``prange`` over page tables).

One thread owns a whole table (all its calls), so its writes never race: the classification sends to the host
loop every PTE whose folio or swap slot is also referenced from another table, or whose page is mapped twice
(:func:`gpusim.kernels.rules.pte_needs_host`). Per-table counts go to a row of their own and are summed after.
"""

import numpy as np
from numba import njit, prange

from gpusim.kernels.pte import (
    KIND_DEVICE_PRIVATE, KIND_MIGRATION, KIND_NONE, KIND_PRESENT, KIND_SWAP, pte_dirty, pte_kind, pte_pfn,
    pte_present, pte_set_pfn, pte_special, pte_write, pte_wrprotect, swp_offset,
)
from gpusim.kernels.rules import (
    C_ALLOC, C_BATCH_PTE, C_BATCH_START, C_CALL, C_CHECK, C_DEVPRIV, C_EXCL_CLEAR, C_LB, C_MIGRATION, C_NONE, C_PASS,
    C_PIN_SHARED, C_RSS, C_SHARE, C_SHARED, C_SPECIAL, C_SWAP, C_SWAPOFF, C_WRPROTECT, FOLIO_ANON, NR_FAST_COUNTS,
    PAGE_ANON_EXCLUSIVE, V_6_18, VM_SHARED, is_cow_mapping, lock_break, mm_counter, nonpresent_child,
    nonpresent_parent, page_holding_pfn, pte_needs_host, share_child_pte,
)

PTRS = 512


@njit(cache=True)
def count_references(ppte, call_row, call_table, call_start, call_end, page_folio, n_folios, n_slots):
    """How many PTEs of the fork's calls reference each page, folio and slot, and from which tables.

    Returns (page_nref, folio_nref, folio_tmin, folio_tmax, slot_nref, slot_tmin, slot_tmax), all int64.
    """
    n_pages = page_folio.shape[0]
    page_nref = np.zeros(n_pages, np.int64)
    folio_nref = np.zeros(n_folios, np.int64)
    folio_tmin = np.full(n_folios, -1, np.int64)
    folio_tmax = np.full(n_folios, -1, np.int64)
    slot_nref = np.zeros(n_slots, np.int64)
    slot_tmin = np.full(n_slots, -1, np.int64)
    slot_tmax = np.full(n_slots, -1, np.int64)
    for c in range(call_row.shape[0]):
        r = call_row[c]
        if r < 0:
            continue
        t = call_table[c]
        base = t * PTRS
        for a in range(call_start[c], call_end[c]):
            v = ppte[r, a - base]
            if v == 0:
                continue
            pfn = page_holding_pfn(v)
            if pfn >= 0:
                p = np.int64(pfn)
                page_nref[p] += 1
                f = page_folio[p]
                folio_nref[f] += 1
                if folio_tmin[f] < 0:
                    folio_tmin[f] = t
                folio_tmax[f] = t
            elif pte_kind(v) == KIND_SWAP:
                s = np.int64(swp_offset(v))
                slot_nref[s] += 1
                if slot_tmin[s] < 0:
                    slot_tmin[s] = t
                slot_tmax[s] = t
    return page_nref, folio_nref, folio_tmin, folio_tmax, slot_nref, slot_tmin, slot_tmax


@njit(parallel=True, cache=True)
def classify_tables(ppte, table_index, row_lo, row_hi, call_start, call_end, variant, large_order, has_pinned,
                    page_folio, folio_order, folio_refcount, folio_pincount, folio_flags, folio_first_pfn,
                    page_flags, page_nref, folio_nref, folio_tmin, folio_tmax, swap_count, swap_levels, slot_nref,
                    slot_tmin, slot_tmax):
    """``needs_host[r]``: table row ``r`` holds a PTE that the host loop must handle."""
    nrows = ppte.shape[0]
    needs_host = np.zeros(nrows, np.bool_)
    for r in prange(nrows):
        base = table_index[r] * PTRS
        for c in range(row_lo[r], row_hi[r]):
            for a in range(call_start[c], call_end[c]):
                v = ppte[r, a - base]
                if v != 0 and pte_needs_host(v, variant, large_order, has_pinned, page_folio, folio_order,
                                             folio_refcount, folio_pincount, folio_flags, folio_first_pfn,
                                             page_flags, page_nref, folio_nref, folio_tmin, folio_tmax, swap_count,
                                             swap_levels, slot_nref, slot_tmin, slot_tmax):
                    needs_host[r] = True
                    break
            if needs_host[r]:
                break
    return needs_host


@njit(parallel=True, cache=True)
def copy_fast_tables(rows, table_index, row_lo, row_hi, call_start, call_end, call_vmaflags, call_first, ppte, cpte,
                     cexists, variant, page_folio, folio_order, folio_refcount, folio_true_pins, folio_flags,
                     folio_first_pfn, page_mapcount, page_flags, swap_count, nb_mode, nb_every, nb_p_q32, nb_seed,
                     fork_seq, nb_list_cs, nb_list_k):
    """Copy the tables ``rows`` (none of them needs the host) and return their count rows ``(len(rows), NC)``."""
    counts = np.zeros((rows.shape[0], NR_FAST_COUNTS), np.int64)
    is_618 = variant == V_6_18
    for i in prange(rows.shape[0]):
        r = rows[i]
        cnt = counts[i]
        base = table_index[r] * PTRS
        for c in range(row_lo[r], row_hi[r]):
            s = call_start[c]
            e = call_end[c]
            vmf = call_vmaflags[c]
            cow = is_cow_mapping(vmf)
            shared = (vmf & VM_SHARED) != 0
            cnt[C_CALL] += 1
            if call_first[c]:
                cexists[r] = True
                cnt[C_ALLOC] += 1
            progress = 0
            k = 0
            lb = 0
            a = s
            while a < e:
                if progress >= 32:                       # the lock-break test, before the PTE at the cursor
                    progress = 0
                    if lock_break(nb_mode, nb_every, nb_p_q32, nb_seed, fork_seq, s, k, nb_list_cs, nb_list_k):
                        lb += 1
                    k += 1
                j0 = a - base
                v = ppte[r, j0]
                kind = pte_kind(v)
                n = 1
                if kind == KIND_NONE:
                    cnt[C_NONE] += 1
                    progress += 1
                elif kind == KIND_PRESENT:
                    if pte_special(v):
                        child = share_child_pte(v, pte_write(v), shared)
                        if cow and pte_write(v):
                            ppte[r, j0] = pte_wrprotect(v)
                            child = pte_wrprotect(child)
                            cnt[C_WRPROTECT] += 1
                        cpte[r, j0] = child
                        cnt[C_SPECIAL] += 1
                    else:
                        pfn = np.int64(pte_pfn(v))
                        f = page_folio[pfn]
                        order = np.int64(folio_order[f])
                        batch = is_618 and order >= 1 and e - a != 1
                        w_any = pte_write(v)
                        if batch:                        # folio_pte_batch
                            limit = min(e - a, (np.int64(1) << order) - (pfn - folio_first_pfn[f]))
                            d0 = pte_dirty(v)
                            while n < limit:
                                w = ppte[r, j0 + n]
                                if (not pte_present(w) or pte_special(w) or np.int64(pte_pfn(w)) != pfn + n
                                        or (not shared and pte_dirty(w) != d0)):
                                    break
                                w_any = w_any or pte_write(w)
                                n += 1
                        child = share_child_pte(v, w_any, shared)
                        folio_refcount[f] += n
                        cnt[C_RSS + mm_counter(folio_flags[f])] += n
                        anon = (folio_flags[f] & FOLIO_ANON) != 0
                        for j in range(n):
                            page_mapcount[pfn + j] += 1
                            if is_618 and anon and (page_flags[pfn + j] & PAGE_ANON_EXCLUSIVE) != 0:
                                page_flags[pfn + j] &= ~np.uint8(PAGE_ANON_EXCLUSIVE)
                                cnt[C_EXCL_CLEAR] += 1
                        cnt[C_SHARED] += n
                        if folio_true_pins[f] > 0:
                            cnt[C_PIN_SHARED] += n
                        if cow and w_any:
                            for j in range(n):
                                ppte[r, j0 + j] = pte_wrprotect(ppte[r, j0 + j])
                            child = pte_wrprotect(child)
                            cnt[C_WRPROTECT] += n
                        for j in range(n):
                            cpte[r, j0 + j] = pte_set_pfn(child, pfn + j)
                        if batch:
                            cnt[C_BATCH_START] += 1
                            cnt[C_BATCH_PTE] += n
                        else:
                            cnt[C_SHARE] += 1
                    progress += 8 * n
                else:
                    after = nonpresent_parent(v, cow, is_618)
                    ppte[r, j0] = after
                    cpte[r, j0] = nonpresent_child(v, after)
                    off = np.int64(swp_offset(v))
                    if kind == KIND_SWAP:
                        swap_count[off] += 1
                        cnt[C_RSS + 3] += 1
                        cnt[C_SWAP] += 1
                        cnt[C_SWAPOFF] = 1
                    elif kind == KIND_MIGRATION:
                        cnt[C_RSS + mm_counter(folio_flags[page_folio[off]])] += 1
                        cnt[C_MIGRATION] += 1
                    elif kind == KIND_DEVICE_PRIVATE:
                        f = page_folio[off]
                        folio_refcount[f] += 1
                        page_mapcount[off] += 1
                        cnt[C_RSS + mm_counter(folio_flags[f])] += 1
                        if is_618:
                            page_flags[off] &= ~np.uint8(PAGE_ANON_EXCLUSIVE)
                        if folio_true_pins[f] > 0:
                            cnt[C_PIN_SHARED] += 1
                        cnt[C_DEVPRIV] += 1
                    progress += 8
                a += n
            cnt[C_PASS] += 1 + lb
            cnt[C_CHECK] += k
            cnt[C_LB] += lb
    return counts
