"""odf-cowpte's accounting pass compiled (spec 12.3, ``copy_cow_pte_range``): the reference's
:func:`gpusim.engines.reference.lazy.odfc_fork_table` loop, entry by entry, over a table the child will share.

Every entry of the shared table is accounted for the child in place: a present page takes a reference and a map
count (its anon-exclusive flag cleared), a swap entry a swap count, a migration entry the child's rss; the entry is
write-protected in a COW mapping, made old (and clean in a shared one), and the parent sees the same value, since
the table is one object. A full swap count takes an atomic continuation (the fork has no injections here, so the
allocation succeeds and the locks are never dropped). The pass stops at the first entry that needs a copy (an
anon-exclusive page that may be pinned) or a device-private entry: the fallback (``recover_pte_range``) copies the
rest of the table with linux-6.18's machine, which the host runs on the fast engine from that address. Calls run in
address order, as the reference's: the CPU kernel takes first, in parallel, the calls whose objects no other
table's pass can affect (:func:`odfc_plain_call`), then the others in address order.
"""

import numpy as np
from numba.extending import register_jitable

from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels.atomics import atomic_add
from gpusim.kernels.flags import (
    FOLIO_ANON,
    FOLIO_DEVICE_PRIVATE,
    MM_SWAPENTS,
    PAGE_ANON_EXCLUSIVE,
    PTRS_PER_TABLE,
    RSS_COUNTS,
    SWAP_MAP_MAX,
    VM_SHARED,
    events,
    is_cow_mapping,
    mm_counter,
    swap_cap,
)
from gpusim.kernels.folio import folio_maybe_dma_pinned
from gpusim.kernels.pte import (
    KIND_DEVICE_PRIVATE,
    KIND_PRESENT,
    KIND_SWAP,
    pte_kind,
    pte_pfn,
    pte_special,
    pte_write,
    swp_offset,
)
from gpusim.kernels.rules import nonpresent_parent, share_child_pte
from gpusim.kernels.table import PLAIN_BLOCK, entry_jitable, entry_needs_slow, plain_entries

# The pass's count row: cost events and summary counters by name, the child's rss deltas, whether the child went on
# the swapoff list.
ODFC_COUNTS = events(
    "pte.acct",
    "shared",
    "pin_shared",
    "pte.wrprotect",
    "pte.excl_clear",
    "pte.swap",
    "pte.migration",
    "swapcont.atomic",
    "swapcont.attach",
)
ODFC_COUNTS += RSS_COUNTS + ("swapoff",)
_I = {name: i for i, name in enumerate(ODFC_COUNTS)}
A_ACCT, A_SHARED, A_PIN_SHARED = _I["pte.acct"], _I["shared"], _I["pin_shared"]
A_WRPROTECT, A_EXCL_CLEAR = _I["pte.wrprotect"], _I["pte.excl_clear"]
A_SWAP, A_MIGRATION = _I["pte.swap"], _I["pte.migration"]
A_CONT_ATOMIC, A_CONT_ATTACH = _I["swapcont.atomic"], _I["swapcont.attach"]
A_RSS, A_SWAPOFF = _I["rss.anon"], _I["swapoff"]

# What a call's pass ended with (besides the address of a fallback, >= 0)
PASS_SHARED = -1  # every entry accounted: the table is shared
PASS_SWAP_FULL = -2  # a swap count at its cap with its first byte not full: not a state the model makes


@register_jitable
def odfc_account(pfn, has_pinned, large_order, mem, acc):
    """``page_try_dup_anon_rmap`` for one present normal entry: the child's reference and map count; False (the
    reference returned) when the page must be copied early. A small folio's page mapped once is this entry's
    alone (plain stores); other pages and folios may be another table's, which a thread of the first phase may
    be accounting at the same time (:func:`odfc_account_calls`: atomic adds)."""
    f = np.int64(mem.page_folio[pfn])
    flags = mem.folio_flags[f]
    anon = (flags & FOLIO_ANON) != 0
    alone = mem.folio_order[f] == 0 and mem.page_mapcount[pfn] == 1
    if alone:
        mem.folio_refcount[f] += 1
    else:
        atomic_add(mem.folio_refcount, f, 1)
    excl = (mem.page_flags[pfn] & PAGE_ANON_EXCLUSIVE) != 0
    if anon and has_pinned and (flags & FOLIO_DEVICE_PRIVATE) == 0 and excl:
        if folio_maybe_dma_pinned(mem.folio_order[f], mem.folio_refcount[f], mem.folio_pincount[f], large_order):
            atomic_add(mem.folio_refcount, f, -1)
            return False
    if mem.page_mapcount[pfn] == 1:
        mem.page_mapcount[pfn] = 2
    else:
        atomic_add(mem.page_mapcount, pfn, 1)
    if anon and excl:  # (a page of a table of the first phase is mapped once if exclusive: its thread's alone)
        mem.page_flags[pfn] &= ~np.uint8(PAGE_ANON_EXCLUSIVE)
        acc[A_EXCL_CLEAR] += 1
    acc[A_RSS + mm_counter(flags)] += 1
    acc[A_ACCT] += 1
    acc[A_SHARED] += 1
    if mem.folio_true_pins[f] > 0:
        acc[A_PIN_SHARED] += 1
    return True


@register_jitable
def odfc_nonpresent(row, j, v, cow, mem, acc):
    """``copy_nonpresent_pte`` into the shared table itself (the parent's entry after it, anon-exclusive as
    linux-6.18's: :func:`gpusim.kernels.rules.nonpresent_parent`): False when a swap count is full."""
    if pte_kind(v) == KIND_SWAP:
        slot = np.int64(swp_offset(v))
        while mem.swap_count[slot] >= swap_cap(mem.swap_levels[slot]):  # swap_duplicate: an atomic continuation
            acc[A_CONT_ATOMIC] += 1
            if mem.swap_count[slot] % (SWAP_MAP_MAX + 1) != SWAP_MAP_MAX:
                return False  # (the first byte not full at the cap: a state the reference would not leave)
            mem.swap_levels[slot] += 1
            acc[A_CONT_ATTACH] += 1
        atomic_add(mem.swap_count, slot, 1)
        acc[A_SWAPOFF] = 1
        row[j] = nonpresent_parent(v, cow, True)
        acc[A_RSS + MM_SWAPENTS] += 1
        acc[A_SWAP] += 1
        return True
    f = np.int64(mem.page_folio[np.int64(swp_offset(v))])  # migration: no reference, no map count
    acc[A_RSS + mm_counter(mem.folio_flags[f])] += 1
    row[j] = nonpresent_parent(v, cow, True)
    acc[A_MIGRATION] += 1
    return True


@register_jitable
def shared_entry(v, cow, shared):
    """The entry a present one becomes in the shared table: the child's entry of a linux-6.18 share
    (:func:`gpusim.kernels.rules.share_child_pte`), write-protected in a COW mapping."""
    return share_child_pte(v, pte_write(v) and not cow, shared)


@entry_jitable
def odfc_account_block(ptes, p, f, cow, shared, mem, acc):
    """:func:`odfc_account` and :func:`shared_entry` for each entry of a block of :func:`plain_entries` (pages
    ``p ..``, folios ``f ..``, each mapped once) in a table of the first phase (none may be pinned), array by
    array."""
    refcount, flags, pins = mem.folio_refcount[f:], mem.folio_flags[f:], mem.folio_true_pins[f:]
    mapcount, page_flags = mem.page_mapcount[p:], mem.page_flags[p:]
    excl = pin = wp = 0
    for j in range(PLAIN_BLOCK):
        refcount[j] += 1
    for j in range(PLAIN_BLOCK):
        mapcount[j] = 2
    for j in range(PLAIN_BLOCK):
        acc[A_RSS + mm_counter(flags[j])] += 1
        pin += pins[j] > 0
    for j in range(PLAIN_BLOCK):
        pf = page_flags[j]
        if (flags[j] & FOLIO_ANON) != 0 and (pf & PAGE_ANON_EXCLUSIVE) != 0:
            page_flags[j] = pf & ~np.uint8(PAGE_ANON_EXCLUSIVE)
            excl += 1
    for j in range(PLAIN_BLOCK):
        v = ptes[j]
        wp += pte_write(v) and cow
        ptes[j] = shared_entry(v, cow, shared)
    acc[A_ACCT] += PLAIN_BLOCK
    acc[A_SHARED] += PLAIN_BLOCK
    acc[A_PIN_SHARED] += pin
    acc[A_WRPROTECT] += wp
    acc[A_EXCL_CLEAR] += excl


@register_jitable
def odfc_account_call(row, base, start, end, vmaflags, has_pinned, large_order, mem, acc, blocks):
    """The pass over ``[start, end)`` of one table (``row``, its first address ``base``): :data:`PASS_SHARED`, the
    address of the fallback, or :data:`PASS_SWAP_FULL`. ``blocks``: a table of the first phase, whose blocks of
    :func:`plain_entries` are accounted at once."""
    cow = is_cow_mapping(vmaflags)
    shared = (vmaflags & VM_SHARED) != 0
    a = start
    while a < end:
        j = a - base
        if blocks and j % PLAIN_BLOCK == 0 and end - a >= PLAIN_BLOCK:
            p, f = plain_entries(row[j : j + PLAIN_BLOCK], mem)
            if p >= 0:
                odfc_account_block(row[j : j + PLAIN_BLOCK], p, f, cow, shared, mem, acc)
                a += PLAIN_BLOCK
                continue
        a += 1
        v = row[j]
        if v == 0:
            continue
        kind = pte_kind(v)
        if kind == KIND_DEVICE_PRIVATE:
            return a - 1
        if kind != KIND_PRESENT:
            if not odfc_nonpresent(row, j, v, cow, mem, acc):
                return PASS_SWAP_FULL
            continue
        if not pte_special(v) and not odfc_account(np.int64(pte_pfn(v)), has_pinned, large_order, mem, acc):
            return a - 1
        if pte_write(v) and cow:
            acc[A_WRPROTECT] += 1
        row[j] = shared_entry(v, cow, shared)
    return PASS_SHARED


PASS_LATER = -3  # (the first phase left the call to the second)


@register_jitable
def odfc_plain_call(row, base, start, end, vp, has_pinned, mem):
    """Whether the pass over a call can run out of address order, beside the others: no entry could need an early
    copy or a swap continuation, and no anon-exclusive page is mapped twice (the fast path's own test,
    :func:`gpusim.kernels.table.entry_needs_slow`): every object it shares with another table then only takes
    references, in any order."""
    check_folios = vp.early_cow and has_pinned
    last_f = np.int64(-1)
    for a in range(start, end):
        need, last_f = entry_needs_slow(row[a - base], last_f, vp, check_folios, mem)
        if need:
            return False
    return True


@register_jitable
def odfc_account_one(rows, starts, ends, vmaflags, ppte, table_index, has_pinned, vp, mem, acc, out, c, blocks):
    """The pass over call ``c`` (``rows[c]``: its table's row of ``ppte``) into ``out[c]``, its counts into row
    ``c`` of ``acc`` (``blocks``: see :func:`odfc_account_call`)."""
    r = rows[c]
    base = table_index[r] * PTRS_PER_TABLE
    lo, hi, flags = starts[c], ends[c], vmaflags[c]
    out[c] = odfc_account_call(ppte[r], base, lo, hi, flags, has_pinned, vp.large_order, mem, acc[c], blocks)


@register_jitable
def fallback_rest_alone(ppte, rows, starts, ends, table_index, page_folio, folio_order, page_mapcount, pmd_mapcount):
    """Whether every page the rest of each fallback (row ``rows[i]`` from ``starts[i]`` to ``ends[i]``) maps, present
    or device-private, is a small folio's mapped at most once and by no PMD: an object of that table alone."""
    for i in range(rows.shape[0]):
        r = rows[i]
        base = table_index[r] * PTRS_PER_TABLE
        for a in range(starts[i], ends[i]):
            v = ppte[r, a - base]
            kind = pte_kind(v)
            if (kind == KIND_PRESENT and not pte_special(v)) or kind == KIND_DEVICE_PRIVATE:
                pfn = np.int64(pte_pfn(v)) if kind == KIND_PRESENT else np.int64(swp_offset(v))
                f = np.int64(page_folio[pfn])
                if folio_order[f] != 0 or page_mapcount[pfn] > 1 or pmd_mapcount[f] != 0:
                    return False
    return True


@register_jitable
def copy_prefixes(src, src_rows, dst, dst_rows, lens):
    """``recover_pte_range``'s copy: the first ``lens[i]`` entries of row ``src_rows[i]`` of ``src`` into row
    ``dst_rows[i]`` of ``dst``; returns how many of them are not empty."""
    n = 0
    for i in range(src_rows.shape[0]):
        for j in range(lens[i]):
            v = src[src_rows[i], j]
            dst[dst_rows[i], j] = v
            n += v != 0
    return n
