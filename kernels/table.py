"""The walk of one page table by the fast path, written once for every target.

:func:`table_needs_host` classifies a table (does any PTE need the host loop?) and :func:`copy_table_fast` copies
one that does not: ``copy_pte_range`` for each of its calls, with the lock-break cadence. Both are
``register_jitable``: the CPU kernels (``prange`` over tables) and the CUDA kernels (a thread per table) compile
the same source, and numba's CUDA simulator runs it as Python. Shared pages, folios and swap slots are updated with
:mod:`gpusim.kernels.atomics`; an object referenced once (mapcount or swap count 1) with plain stores.
"""

import numpy as np
from numba.extending import register_jitable

from gpusim.kernels.atomics import atomic_add
from gpusim.kernels.pte import (
    KIND_DEVICE_PRIVATE, KIND_MIGRATION, KIND_NONE, KIND_PRESENT, KIND_SWAP, pte_dirty, pte_kind, pte_pfn,
    pte_present, pte_set_pfn, pte_special, pte_write, pte_wrprotect, swp_offset,
)
from gpusim.kernels.rules import (
    C_ALLOC, C_BATCH_PTE, C_BATCH_START, C_CALL, C_CHECK, C_DEVPRIV, C_EXCL_CLEAR, C_LB, C_MIGRATION, C_NONE, C_PASS,
    C_PIN_SHARED, C_RSS, C_SHARE, C_SHARED, C_SPECIAL, C_SWAP, C_SWAPOFF, C_WRPROTECT, FOLIO_ANON,
    NB_LIST, PAGE_ANON_EXCLUSIVE, V_5_8, V_6_18, VM_SHARED, in_break_list, is_cow_mapping, large_folio_needs_host,
    lock_break, mm_counter,
    nonpresent_child, nonpresent_parent, share_child_pte, shared_exclusive_page, slot_needs_host,
    small_folio_needs_host,
)

PTRS = 512


@register_jitable
def table_needs_host(r, base, lo, hi, call_start, call_end, ppte, variant, large_order, has_pinned, page_folio,
                     folio_order, folio_refcount, folio_pincount, folio_flags, folio_first_pfn, page_flags,
                     page_mapcount, swap_count, swap_levels):
    last_f = -1
    check_folios = variant != V_5_8 and has_pinned       # without a pin test no folio can need the host
    for c in range(lo, hi):
        for a in range(call_start[c], call_end[c]):
            v = ppte[r, a - base]
            kind = pte_kind(v)
            if kind == KIND_PRESENT or kind == KIND_DEVICE_PRIVATE:
                if kind == KIND_PRESENT and pte_special(v):
                    continue
                pfn = np.int64(pte_pfn(v))
                if variant == V_6_18 and shared_exclusive_page(page_flags[pfn], page_mapcount[pfn]):
                    return True
                if kind == KIND_DEVICE_PRIVATE:
                    continue
                f = page_folio[pfn]
                if f == last_f or not check_folios:      # consecutive PTEs of one folio: evaluate it once
                    continue
                last_f = f
                if folio_order[f] >= large_order:
                    if large_folio_needs_host(f, variant, folio_order, folio_pincount, folio_flags,
                                              folio_first_pfn, page_flags):
                        return True
                else:
                    first = folio_first_pfn[f]
                    maxrefs = 0
                    for j in range(np.int64(1) << np.int64(folio_order[f])):
                        maxrefs += page_mapcount[first + j]
                    if small_folio_needs_host(folio_refcount[f], maxrefs):
                        return True
            elif kind == KIND_SWAP:
                s = np.int64(swp_offset(v))
                if slot_needs_host(swap_count[s], swap_levels[s]):
                    return True
    return False


@register_jitable
def copy_table_fast(r, base, lo, hi, call_start, call_end, call_vmaflags, call_first, ppte, cpte, cexists, variant,
                    page_folio, folio_order, folio_refcount, folio_true_pins, folio_flags, folio_first_pfn,
                    page_mapcount, page_flags, swap_count, nb_mode, nb_every, nb_p_q32, nb_seed, fork_seq,
                    nb_list_cs, nb_list_k, cnt):
    """``copy_pte_range`` for every call of one table that needs no host: the fast path and the check cadence."""
    is_618 = variant == V_6_18
    # counters live in locals (registers) and reach the count row once, at the end
    n_none = n_wrprotect = n_special = n_excl = n_shared = n_pin_shared = n_bstart = n_bpte = n_share = 0
    n_swap = n_mig = n_dev = n_call = n_alloc = n_pass = n_check = n_lb = 0
    rss0 = rss1 = rss2 = rss3 = swapoff = 0
    for c in range(lo, hi):
        s = call_start[c]
        e = call_end[c]
        vmf = call_vmaflags[c]
        cow = is_cow_mapping(vmf)
        shared = (vmf & VM_SHARED) != 0
        n_call += 1
        if call_first[c]:
            cexists[r] = True
            n_alloc += 1
        progress = 0
        k = 0
        lb = 0
        a = s
        while a < e:
            if progress >= 32:                           # the lock-break test, before the PTE at the cursor
                progress = 0
                if nb_mode == NB_LIST:
                    if in_break_list(nb_list_cs, nb_list_k, s, k):
                        lb += 1
                elif lock_break(nb_mode, nb_every, nb_p_q32, nb_seed, fork_seq, s, k):
                    lb += 1
                k += 1
            j0 = a - base
            v = ppte[r, j0]
            kind = pte_kind(v)
            n = 1
            if kind == KIND_NONE:
                n_none += 1
                progress += 1
            elif kind == KIND_PRESENT:
                if pte_special(v):
                    child = share_child_pte(v, pte_write(v), shared)
                    if cow and pte_write(v):
                        ppte[r, j0] = pte_wrprotect(v)
                        child = pte_wrprotect(child)
                        n_wrprotect += 1
                    cpte[r, j0] = child
                    n_special += 1
                else:
                    pfn = np.int64(pte_pfn(v))
                    f = page_folio[pfn]
                    order = np.int64(folio_order[f])
                    batch = is_618 and order >= 1 and e - a != 1
                    w_any = pte_write(v)
                    if batch:                            # folio_pte_batch
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
                    anon = (folio_flags[f] & FOLIO_ANON) != 0
                    alone = order == 0 and page_mapcount[pfn] == 1      # no other PTE can touch this folio
                    if alone:
                        folio_refcount[f] += 1
                    else:
                        atomic_add(folio_refcount, f, n)
                    mc = mm_counter(folio_flags[f])
                    rss0 += n if mc == 0 else 0
                    rss1 += n if mc == 1 else 0
                    rss2 += n if mc == 2 else 0
                    for j in range(n):
                        p = pfn + j
                        if page_mapcount[p] == 1:
                            page_mapcount[p] = 2
                            if is_618 and anon and (page_flags[p] & PAGE_ANON_EXCLUSIVE) != 0:
                                page_flags[p] &= ~np.uint8(PAGE_ANON_EXCLUSIVE)
                                n_excl += 1
                        else:                            # shared page: not exclusive (else the table is host's)
                            atomic_add(page_mapcount, p, 1)
                    n_shared += n
                    if folio_true_pins[f] > 0:
                        n_pin_shared += n
                    if cow and w_any:
                        for j in range(n):
                            ppte[r, j0 + j] = pte_wrprotect(ppte[r, j0 + j])
                        child = pte_wrprotect(child)
                        n_wrprotect += n
                    for j in range(n):
                        cpte[r, j0 + j] = pte_set_pfn(child, np.uint64(pfn + j))
                    if batch:
                        n_bstart += 1
                        n_bpte += n
                    else:
                        n_share += 1
                progress += 8 * n
            else:
                after = nonpresent_parent(v, cow, is_618)
                ppte[r, j0] = after
                cpte[r, j0] = nonpresent_child(v, after)
                off = np.int64(swp_offset(v))
                if kind == KIND_SWAP:
                    if swap_count[off] == 1:
                        swap_count[off] = 2
                    else:
                        atomic_add(swap_count, off, 1)
                    rss3 += 1
                    n_swap += 1
                    swapoff = 1
                elif kind == KIND_MIGRATION:
                    mc = mm_counter(folio_flags[page_folio[off]])
                    rss0 += 1 if mc == 0 else 0
                    rss1 += 1 if mc == 1 else 0
                    rss2 += 1 if mc == 2 else 0
                    n_mig += 1
                elif kind == KIND_DEVICE_PRIVATE:
                    f = page_folio[off]
                    atomic_add(folio_refcount, f, 1)
                    if page_mapcount[off] == 1:
                        page_mapcount[off] = 2
                        if is_618:
                            page_flags[off] &= ~np.uint8(PAGE_ANON_EXCLUSIVE)
                    else:                                # shared page: not exclusive (else the table is host's)
                        atomic_add(page_mapcount, off, 1)
                    mc = mm_counter(folio_flags[f])
                    rss0 += 1 if mc == 0 else 0
                    rss1 += 1 if mc == 1 else 0
                    rss2 += 1 if mc == 2 else 0
                    if folio_true_pins[f] > 0:
                        n_pin_shared += 1
                    n_dev += 1
                progress += 8
            a += n
        n_pass += 1 + lb
        n_check += k
        n_lb += lb
    cnt[C_NONE] += n_none
    cnt[C_WRPROTECT] += n_wrprotect
    cnt[C_SPECIAL] += n_special
    cnt[C_EXCL_CLEAR] += n_excl
    cnt[C_SHARED] += n_shared
    cnt[C_PIN_SHARED] += n_pin_shared
    cnt[C_BATCH_START] += n_bstart
    cnt[C_BATCH_PTE] += n_bpte
    cnt[C_SHARE] += n_share
    cnt[C_SWAP] += n_swap
    cnt[C_MIGRATION] += n_mig
    cnt[C_DEVPRIV] += n_dev
    cnt[C_CALL] += n_call
    cnt[C_ALLOC] += n_alloc
    cnt[C_PASS] += n_pass
    cnt[C_CHECK] += n_check
    cnt[C_LB] += n_lb
    cnt[C_RSS] += rss0
    cnt[C_RSS + 1] += rss1
    cnt[C_RSS + 2] += rss2
    cnt[C_RSS + 3] += rss3
    if swapoff:
        cnt[C_SWAPOFF] = 1
