"""The walk of page tables by the fast path, written once for every target.

Per entry: :func:`entry_needs_slow` (does this entry need the slow path?), :func:`copy_entry` and
:func:`share_pages` (copy one entry, or a linux-6.18 batch, with its reference, mapcount, flag and swap-count
updates), :func:`tally` (its counts) and :func:`entry_weight` (its share of the lock-break cadence, which
:func:`check_point` runs). Per block of :data:`PLAIN_BLOCK` entries that are all plain (consecutive frames of small
folios mapped once, the common case: :func:`plain_block`), the same updates array by array
(:func:`share_plain_block`, :func:`plain_block_maybe_pinned`), in loops the compiler keeps in vector registers. Per
table: :func:`table_needs_slow` and :func:`copy_table_fast`, the address-order walk
that the CPU kernels (``prange`` over tables) run, and that the CUDA kernel runs on one thread for a table holding a
batch; the CUDA kernel's block-per-table walk calls the same per-entry functions (``gpusim.kernels.cuda``). All are
``register_jitable``: numba compiles them for each target and its CUDA simulator runs them as Python. Arrays come
in the groups of :mod:`gpusim.kernels.args` (``tab``, ``calls``, ``mem``, ``nb``). Shared pages, folios and swap
slots are updated with :mod:`gpusim.kernels.atomics`; an object referenced once (mapcount or swap count 1) with
plain stores.
"""

import numpy as np
from numba.extending import register_jitable

from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels.atomics import atomic_add
from gpusim.kernels.flags import (
    BREAK_AT,
    FOLIO_ANON,
    MM_ANONPAGES,
    MM_FILEPAGES,
    MM_SHMEMPAGES,
    PAGE_ANON_EXCLUSIVE,
    PTRS_PER_TABLE,
    VM_SHARED,
    is_cow_mapping,
    mm_counter,
)
from gpusim.kernels.pte import (
    KIND_DEVICE_PRIVATE,
    KIND_MIGRATION,
    KIND_NONE,
    KIND_PRESENT,
    KIND_SWAP,
    pte_dirty,
    pte_kind,
    pte_pfn,
    pte_present,
    pte_set_pfn,
    pte_special,
    pte_write,
    pte_wrprotect,
    swp_offset,
)
from gpusim.kernels.rules import (
    C_ALLOC,
    C_BATCH_PTE,
    C_BATCH_START,
    C_CALL,
    C_CHECK,
    C_DEVPRIV,
    C_EXCL_CLEAR,
    C_FRAME_BREAK,
    C_LB,
    C_MIGRATION,
    C_NONE,
    C_PASS,
    C_PIN_SHARED,
    C_RSS,
    C_SHARE,
    C_SHARED,
    C_SPECIAL,
    C_SWAP,
    C_SWAPOFF,
    C_WRPROTECT,
    NB_LIST,
    frame_run,
    in_break_list,
    large_folio_needs_slow,
    lock_break,
    maps_page,
    nonpresent_child,
    nonpresent_parent,
    share_child_pte,
    shared_exclusive_page,
    slot_needs_slow,
    small_folio_needs_slow,
)


def entry_jitable(fn):
    """``register_jitable`` for the per-entry functions, inlined by LLVM into the kernels that call them: called
    once per entry, a function call would pass every array argument as seven scalars, which costs more than the
    entry's own work."""
    return register_jitable(forceinline=True)(fn)


@entry_jitable
def entry_needs_slow(v, last_f, vp, check_folios, mem):
    """Whether one parent entry needs the slow path. Returns (needs, folio it evaluated or ``last_f``): a walk that
    passes the folio back as ``last_f`` evaluates consecutive PTEs of one folio once."""
    kind = pte_kind(v)
    if kind == KIND_PRESENT or kind == KIND_DEVICE_PRIVATE:
        if kind == KIND_PRESENT and pte_special(v):
            return False, last_f
        pfn = np.int64(pte_pfn(v))
        if vp.anon_exclusive and shared_exclusive_page(mem.page_flags[pfn], mem.page_mapcount[pfn]):
            return True, last_f
        if kind == KIND_DEVICE_PRIVATE or not check_folios:  # without a pin test no folio can need the host
            return False, last_f
        f = np.int64(mem.page_folio[pfn])
        if f == last_f:
            return False, last_f
        if mem.folio_order[f] >= vp.large_order:
            return large_folio_needs_slow(
                f,
                vp.anon_exclusive,
                mem.folio_order,
                mem.folio_pincount,
                mem.folio_flags,
                mem.folio_first_pfn,
                mem.page_flags,
            ), f
        first = mem.folio_first_pfn[f]
        maxrefs = 0
        for j in range(np.int64(1) << np.int64(mem.folio_order[f])):
            maxrefs += mem.page_mapcount[first + j]
        return small_folio_needs_slow(mem.folio_refcount[f], maxrefs), f
    if kind == KIND_SWAP:
        o = np.int64(swp_offset(v))
        return slot_needs_slow(mem.swap_count[o], mem.swap_levels[o]), last_f
    return False, last_f


# Entries the walk takes as one block where they are all plain (plain_block): a table's columns 0, 32, 64, ...
PLAIN_BLOCK = 32


@entry_jitable
def plain_block(r, j0, tab, mem):
    """(first pfn, first folio) of the :data:`PLAIN_BLOCK` entries from column ``j0`` of row ``r`` when every one is
    :func:`share_exclusive_page`'s case (present, not special, a small folio's page that no other PTE maps) and they
    map consecutive frames of consecutive folios, so that the block's pages and folios are rows ``p .. p + B - 1``
    and ``f .. f + B - 1``, nobody else's; else (-1, -1). One pass over the block without an early exit."""
    return plain_entries(tab.ppte[r, j0 : j0 + PLAIN_BLOCK], mem)


@entry_jitable
def plain_entries(ptes, mem):
    """:func:`plain_block` of the :data:`PLAIN_BLOCK` entries ``ptes`` (a view of a row)."""
    v = ptes[0]
    p = np.int64(pte_pfn(v))
    if not pte_present(v) or p + PLAIN_BLOCK > mem.page_folio.shape[0]:
        return np.int64(-1), np.int64(-1)
    f = np.int64(mem.page_folio[p])
    if f + PLAIN_BLOCK > mem.folio_order.shape[0]:
        return np.int64(-1), np.int64(-1)
    # views of the block's rows: indices from 0, which the compiler can keep in vectors (no negative-index fixup)
    folio, mapcount = mem.page_folio[p:], mem.page_mapcount[p:]
    order = mem.folio_order[f:]
    bad = 0
    for j in range(PLAIN_BLOCK):
        w = ptes[j]
        bad |= (
            (not pte_present(w))
            | pte_special(w)
            | (np.int64(pte_pfn(w)) != p + j)
            | (np.int64(folio[j]) != f + j)
            | (order[j] != 0)
            | (mapcount[j] != 1)
        )
    if bad:
        return np.int64(-1), np.int64(-1)
    return p, f


@entry_jitable
def plain_block_at(r, j0, left, tab, mem):
    """:func:`plain_block` where a block starts: column ``j0`` a multiple of :data:`PLAIN_BLOCK` with at least that
    many entries ``left`` in the call; else (-1, -1)."""
    if j0 % PLAIN_BLOCK != 0 or left < PLAIN_BLOCK:
        return np.int64(-1), np.int64(-1)
    return plain_block(r, j0, tab, mem)


@entry_jitable
def plain_block_maybe_pinned(f, mem):
    """Whether a folio of a :func:`plain_block` (folios ``f ..``, each mapped once) may be pinned:
    :func:`entry_needs_slow`'s pin test of each."""
    refcount = mem.folio_refcount[f:]
    hit = False
    for j in range(PLAIN_BLOCK):
        hit |= small_folio_needs_slow(refcount[j], 1)
    return hit


@register_jitable
def check_folios_of(vp, tab, r):
    """Whether the walk of row ``r`` must test folios for pins: the variant copies early and the mm has pinned."""
    return vp.early_cow and tab.has_pinned[r]


@register_jitable
def table_needs_slow(r, vp, tab, calls, mem):
    """Whether any entry of table row ``r`` needs the slow path."""
    last_f = np.int64(-1)
    check_folios = check_folios_of(vp, tab, r)
    blocks = not check_folios or vp.large_order > 0  # a block's small folios use the refcount heuristic
    base = tab.table_index[r] * PTRS_PER_TABLE
    for c in range(tab.row_lo[r], tab.row_hi[r]):
        a, e = calls.start[c], calls.end[c]
        while a < e:
            j0 = a - base
            p, f = plain_block_at(r, j0, e - a, tab, mem) if blocks else (np.int64(-1), np.int64(-1))
            if p >= 0:  # no page mapped twice; a folio that may be pinned needs the host
                if check_folios and plain_block_maybe_pinned(f, mem):
                    return True
                a += PLAIN_BLOCK
                continue
            need, last_f = entry_needs_slow(tab.ppte[r, j0], last_f, vp, check_folios, mem)
            if need:
                return True
            a += 1
    return False


# What copying one entry (or a batch) did, packed in one integer for tally(): bits 0-1 the rss counter of the
# folio, bit 2 the folio is truly pinned, bit 3 write-protected, bits 4+ anon-exclusive flags cleared.
EV_PIN = 4
EV_WRPROTECT = 8
EV_EXCL_SHIFT = 4


@entry_jitable
def share_exclusive_page(r, j0, v, pfn, f, shared, cow, anon_exclusive, tab, mem):
    """:func:`share_pages` for one entry mapping a page of a small folio that no other PTE maps (mapcount 1): no
    other thread can reach the page or its folio, so every update is a plain store. Returns the :func:`tally`
    code."""
    child = share_child_pte(v, pte_write(v), shared)
    flags = mem.folio_flags[f]
    mem.folio_refcount[f] += 1
    mem.page_mapcount[pfn] = 2
    excl = 0
    if anon_exclusive and (flags & FOLIO_ANON) != 0 and (mem.page_flags[pfn] & PAGE_ANON_EXCLUSIVE) != 0:
        mem.page_flags[pfn] &= ~np.uint8(PAGE_ANON_EXCLUSIVE)
        excl = 1
    ev = mm_counter(flags) + (EV_PIN if mem.folio_true_pins[f] > 0 else 0) + (excl << EV_EXCL_SHIFT)
    if cow and pte_write(v):
        tab.ppte[r, j0] = pte_wrprotect(v)
        child = pte_wrprotect(child)
        ev += EV_WRPROTECT
    tab.cpte[r, j0] = child  # the child's entry maps v's page already
    return ev


@entry_jitable
def share_plain_block(r, j0, p, f, shared, cow, anon_exclusive, tab, mem):
    """:func:`share_exclusive_page` for each entry of a block found by :func:`plain_block` (pages ``p ..``, folios
    ``f ..``), array by array. Returns what :func:`tally_plain` counts of it: (file, shmem, pinned, write-protected,
    anon-exclusive flags cleared)."""
    file = shmem = pin = wp = excl = 0
    refcount, flags, pins = mem.folio_refcount[f:], mem.folio_flags[f:], mem.folio_true_pins[f:]
    mapcount, page_flags = mem.page_mapcount[p:], mem.page_flags[p:]
    ptes, child_ptes = tab.ppte[r, j0 : j0 + PLAIN_BLOCK], tab.cpte[r, j0 : j0 + PLAIN_BLOCK]
    for j in range(PLAIN_BLOCK):
        refcount[j] += 1
    for j in range(PLAIN_BLOCK):
        mapcount[j] = 2
    for j in range(PLAIN_BLOCK):
        c = mm_counter(flags[j])
        file += c == MM_FILEPAGES
        shmem += c == MM_SHMEMPAGES
        pin += pins[j] > 0
    if anon_exclusive:
        for j in range(PLAIN_BLOCK):
            pf = page_flags[j]
            if (flags[j] & FOLIO_ANON) != 0 and (pf & PAGE_ANON_EXCLUSIVE) != 0:
                page_flags[j] = pf & ~np.uint8(PAGE_ANON_EXCLUSIVE)
                excl += 1
    for j in range(PLAIN_BLOCK):
        v = ptes[j]
        child = share_child_pte(v, pte_write(v), shared)
        if cow and pte_write(v):
            ptes[j] = pte_wrprotect(v)
            child = pte_wrprotect(child)
            wp += 1
        child_ptes[j] = child
    return file, shmem, pin, wp, excl


@entry_jitable
def walk_plain_block(r, j0, p, f, s, shared, cow, excl, tab, mem, nb, fork_seq, cadence, frames):
    """The walk over a :func:`plain_block` (pages ``p ..``, folios ``f ..``) of the call starting at ``s``: the
    lock-break cadence entry by entry (``cadence``: progress, checks, lock breaks), the shares, the block's frames
    as one run, as page by page (``frames``: the last frame, whether it broke the stream). Returns
    (:func:`tally_plain`'s counts, the cadence, the frames) after it."""
    progress, k, lb = cadence
    for _ in range(PLAIN_BLOCK):
        progress, k, lb = check_point(progress, s, k, lb, nb, fork_seq)
        progress += entry_weight(KIND_PRESENT, 1)
    file, shmem, pin, wp, cleared = share_plain_block(r, j0, p, f, shared, cow, excl, tab, mem)
    fb, last, broke = frame_run(frames[0], frames[1], p, PLAIN_BLOCK)
    return (PLAIN_BLOCK, file, shmem, pin, wp, cleared, fb), (progress, k, lb), (last, broke)


@entry_jitable
def share_pages(r, j0, v, n, w_any, pfn, f, order, shared, cow, anon_exclusive, tab, mem):
    """Share ``n`` consecutive entries (from row ``r``, column ``j0``) mapping pages ``pfn ..`` of folio ``f``
    with the child: references, mapcounts, anon-exclusive flags, write protection, the child's entries. A small
    folio's page that no other PTE maps is :func:`share_exclusive_page`'s; the rest may meet other threads."""
    if order == 0 and mem.page_mapcount[pfn] == 1:  # n is 1: a batch is of a large folio
        return share_exclusive_page(r, j0, v, pfn, f, shared, cow, anon_exclusive, tab, mem)
    child = share_child_pte(v, w_any, shared)
    anon = (mem.folio_flags[f] & FOLIO_ANON) != 0
    atomic_add(mem.folio_refcount, f, n)
    excl = 0
    for j in range(n):
        p = pfn + j
        if mem.page_mapcount[p] == 1:
            mem.page_mapcount[p] = 2
            if anon_exclusive and anon and (mem.page_flags[p] & PAGE_ANON_EXCLUSIVE) != 0:
                mem.page_flags[p] &= ~np.uint8(PAGE_ANON_EXCLUSIVE)
                excl += 1
        else:  # shared page: not exclusive (else the table is host's)
            atomic_add(mem.page_mapcount, p, 1)
    ev = mm_counter(mem.folio_flags[f]) + (EV_PIN if mem.folio_true_pins[f] > 0 else 0) + (excl << EV_EXCL_SHIFT)
    if cow and w_any:
        for j in range(n):
            tab.ppte[r, j0 + j] = pte_wrprotect(tab.ppte[r, j0 + j])
        child = pte_wrprotect(child)
        ev += EV_WRPROTECT
    for j in range(n):
        tab.cpte[r, j0 + j] = pte_set_pfn(child, np.uint64(pfn + j))
    return ev


@entry_jitable
def copy_entry(r, j0, v, kind, shared, cow, anon_exclusive, tab, mem):
    """Copy one entry that is not part of a large-folio batch; returns its :func:`tally` code."""
    if kind == KIND_NONE:
        return 0
    if kind == KIND_PRESENT:
        if pte_special(v):
            child = share_child_pte(v, pte_write(v), shared)
            ev = 0
            if cow and pte_write(v):
                tab.ppte[r, j0] = pte_wrprotect(v)
                child = pte_wrprotect(child)
                ev = EV_WRPROTECT
            tab.cpte[r, j0] = child
            return ev
        pfn = np.int64(pte_pfn(v))
        f = mem.page_folio[pfn]
        return share_pages(
            r, j0, v, 1, pte_write(v), pfn, f, np.int64(mem.folio_order[f]), shared, cow, anon_exclusive, tab, mem
        )
    after = nonpresent_parent(v, cow, anon_exclusive)
    tab.ppte[r, j0] = after
    tab.cpte[r, j0] = nonpresent_child(v, after)
    off = np.int64(swp_offset(v))
    if kind == KIND_SWAP:
        if mem.swap_count[off] == 1:
            mem.swap_count[off] = 2
        else:
            atomic_add(mem.swap_count, off, 1)
        return 0
    f = mem.page_folio[off]
    if kind == KIND_MIGRATION:
        return mm_counter(mem.folio_flags[f])
    # device-private: the page stays mapped by both
    atomic_add(mem.folio_refcount, f, 1)
    if mem.page_mapcount[off] == 1:
        mem.page_mapcount[off] = 2
        if anon_exclusive:
            mem.page_flags[off] &= ~np.uint8(PAGE_ANON_EXCLUSIVE)
    else:  # shared page: not exclusive (else the table is host's)
        atomic_add(mem.page_mapcount, off, 1)
    return mm_counter(mem.folio_flags[f]) + (EV_PIN if mem.folio_true_pins[f] > 0 else 0)


@entry_jitable
def tally(acc, kind, special, ev, n, batch):
    """Add what copying one entry (or a batch of ``n``) did to the count row ``acc`` (``FAST_COUNTS``)."""
    if kind == KIND_NONE:
        acc[C_NONE] += 1
    elif kind == KIND_PRESENT:
        if special:
            acc[C_SPECIAL] += 1
            if ev & EV_WRPROTECT:
                acc[C_WRPROTECT] += 1
            return
        acc[C_RSS + (ev & 3)] += n
        acc[C_SHARED] += n
        if ev & EV_PIN:
            acc[C_PIN_SHARED] += n
        if ev & EV_WRPROTECT:
            acc[C_WRPROTECT] += n
        acc[C_EXCL_CLEAR] += ev >> EV_EXCL_SHIFT
        if batch:
            acc[C_BATCH_START] += 1
            acc[C_BATCH_PTE] += n
        else:
            acc[C_SHARE] += 1
    elif kind == KIND_SWAP:
        acc[C_RSS + 3] += 1
        acc[C_SWAP] += 1
        acc[C_SWAPOFF] = 1
    elif kind == KIND_MIGRATION:
        acc[C_RSS + (ev & 3)] += 1
        acc[C_MIGRATION] += 1
    elif kind == KIND_DEVICE_PRIVATE:
        acc[C_RSS + (ev & 3)] += 1
        if ev & EV_PIN:
            acc[C_PIN_SHARED] += 1
        acc[C_DEVPRIV] += 1


# tally_plain's counts: (pages, of them file, shmem, truly pinned, write-protected, anon-exclusive flags cleared,
# frame breaks)
NO_PLAIN = (0, 0, 0, 0, 0, 0, 0)


@entry_jitable
def plain_counts(ev, fb):
    """:func:`tally_plain`'s counts of one page :func:`share_exclusive_page` shared (``ev``: its code), with its
    ``fb`` frame breaks."""
    c = ev & 3
    pin, wp = (ev & EV_PIN) != 0, (ev & EV_WRPROTECT) != 0
    return (1, int(c == MM_FILEPAGES), int(c == MM_SHMEMPAGES), int(pin), int(wp), ev >> EV_EXCL_SHIFT, fb)


@entry_jitable
def add_plain(t, u):
    return (t[0] + u[0], t[1] + u[1], t[2] + u[2], t[3] + u[3], t[4] + u[4], t[5] + u[5], t[6] + u[6])


@entry_jitable
def tally_plain(acc, t):
    """:func:`tally` of exclusive small-folio pages shared one by one or by blocks, from their counts ``t`` (see
    :data:`NO_PLAIN`)."""
    n, file, shmem, pin, wp, excl, fb = t
    acc[C_RSS + MM_ANONPAGES] += n - file - shmem
    acc[C_RSS + MM_FILEPAGES] += file
    acc[C_RSS + MM_SHMEMPAGES] += shmem
    acc[C_SHARED] += n
    acc[C_SHARE] += n
    acc[C_PIN_SHARED] += pin
    acc[C_WRPROTECT] += wp
    acc[C_EXCL_CLEAR] += excl
    acc[C_FRAME_BREAK] += fb


@register_jitable
def entry_weight(kind, n):
    """Progress an item adds to the lock-break cadence: 1 for an empty entry, 8 per entry otherwise."""
    return 1 if kind == KIND_NONE else 8 * n


@register_jitable
def lock_break_at(s, k, nb, fork_seq):
    """The oracle's answer at the ``k``-th check of the call starting at ``s``."""
    if nb.mode == NB_LIST:
        return in_break_list(nb.list_cs, nb.list_k, s, k)
    return lock_break(nb.mode, nb.every, nb.p_q32, nb.seed, fork_seq, s, k)


@entry_jitable
def check_point(progress, s, k, lb, nb, fork_seq):
    """The lock-break cadence before the item at the cursor of the call starting at ``s`` (spec 2.1): once the
    progress reached ``BREAK_AT``, it restarts from 0 and the oracle is asked (its ``k``-th check). Returns the new
    (progress, checks made, lock breaks)."""
    if progress >= BREAK_AT:
        progress = 0
        if lock_break_at(s, k, nb, fork_seq):
            lb += 1
        k += 1
    return progress, k, lb


@register_jitable
def end_call(acc, c, r, calls, tab, k, lb):
    """Counts of one finished call: its passes (one plus the lock breaks), checks, and the child table."""
    acc[C_CALL] += 1
    if calls.first[c]:
        tab.cexists[r] = True
        acc[C_ALLOC] += 1
    acc[C_PASS] += 1 + lb
    acc[C_CHECK] += k
    acc[C_LB] += lb


@register_jitable
def batch_candidate(v, batching, mem):
    """A present entry of a large folio where the variant batches: ``folio_pte_batch`` may join it to its
    neighbours."""
    if not batching or pte_kind(v) != KIND_PRESENT or pte_special(v):
        return False
    return mem.folio_order[mem.page_folio[np.int64(pte_pfn(v))]] >= 1


@register_jitable
def folio_pte_batch(r, j0, v, limit_call, shared, tab, mem):
    """How many entries from column ``j0`` (at most ``limit_call``) map consecutive pages of the folio of ``v``
    with the dirty bit of ``v`` (shared mappings ignore it), and whether any of them is writable."""
    pfn = np.int64(pte_pfn(v))
    f = mem.page_folio[pfn]
    limit = min(limit_call, (np.int64(1) << np.int64(mem.folio_order[f])) - (pfn - mem.folio_first_pfn[f]))
    d0 = pte_dirty(v)
    w_any = pte_write(v)
    n = 1
    while n < limit:
        w = tab.ppte[r, j0 + n]
        if (
            not pte_present(w)
            or pte_special(w)
            or np.int64(pte_pfn(w)) != pfn + n
            or (not shared and pte_dirty(w) != d0)
        ):
            break
        w_any = w_any or pte_write(w)
        n += 1
    return n, w_any


@entry_jitable
def copy_item(r, j0, v, kind, left, batching, shared, cow, excl, tab, mem, acc, last, broke):
    """Copy the entry at column ``j0`` of row ``r`` (a linux-6.18 batch from it where the variant batches, at most
    ``left`` entries) and count it, the frame stream being (``last``, ``broke``) before it. Returns (entries
    copied, the frame stream after them)."""
    n = 1
    batch = batch_candidate(v, batching, mem) and left != 1
    if batch:
        n, w_any = folio_pte_batch(r, j0, v, left, shared, tab, mem)
        pfn = np.int64(pte_pfn(v))
        f = mem.page_folio[pfn]
        ev = share_pages(r, j0, v, n, w_any, pfn, f, np.int64(mem.folio_order[f]), shared, cow, excl, tab, mem)
    else:
        ev = copy_entry(r, j0, v, kind, shared, cow, excl, tab, mem)
    if maps_page(v):
        fb, last, broke = frame_run(last, broke, np.int64(pte_pfn(v)), n)
        acc[C_FRAME_BREAK] += fb
    tally(acc, kind, kind == KIND_PRESENT and pte_special(v), ev, n, batch)
    return n, last, broke


@register_jitable
def copy_table_fast(r, vp, tab, calls, mem, nb, acc):
    """``copy_pte_range`` for every call of table row ``r`` (which needs no host), in address order: the fast
    path, the large-folio batches (where the variant batches) and the check cadence. Counts are added to ``acc``."""
    excl = vp.anon_exclusive
    base = tab.table_index[r] * PTRS_PER_TABLE
    fork_seq = tab.fork_seq[r]
    for c in range(tab.row_lo[r], tab.row_hi[r]):
        s = calls.start[c]
        e = calls.end[c]
        cow = is_cow_mapping(calls.vmaflags[c])
        shared = (calls.vmaflags[c] & VM_SHARED) != 0
        progress = 0
        k = 0
        lb = 0
        last = np.int64(-1)  # the stream of frames (kernels.rules.frame_run)
        broke = False
        # What tally() counts for the call's exclusive small-folio pages (most entries of most forks), kept in
        # registers: added to the count row once per call, not entry by entry (the row and the state's arrays may
        # alias for the compiler, so each such add would be a load and a store after every state update).
        plain = NO_PLAIN
        a = s
        while a < e:
            j0 = a - base
            p, f = plain_block_at(r, j0, e - a, tab, mem)
            if p >= 0:
                got, (progress, k, lb), (last, broke) = walk_plain_block(
                    r, j0, p, f, s, shared, cow, excl, tab, mem, nb, fork_seq, (progress, k, lb), (last, broke)
                )
                plain = add_plain(plain, got)
                a += PLAIN_BLOCK
                continue
            progress, k, lb = check_point(progress, s, k, lb, nb, fork_seq)
            v = tab.ppte[r, j0]
            kind = pte_kind(v)
            if kind == KIND_PRESENT and not pte_special(v):
                pfn = np.int64(pte_pfn(v))
                f = np.int64(mem.page_folio[pfn])
                if mem.folio_order[f] == 0 and mem.page_mapcount[pfn] == 1:  # never a batch: copy_entry's case
                    ev = share_exclusive_page(r, j0, v, pfn, f, shared, cow, excl, tab, mem)
                    fb, last, broke = frame_run(last, broke, pfn, 1)
                    plain = add_plain(plain, plain_counts(ev, fb))
                    progress += entry_weight(kind, 1)
                    a += 1
                    continue
            n, last, broke = copy_item(
                r, j0, v, kind, e - a, vp.batching, shared, cow, excl, tab, mem, acc, last, broke
            )
            progress += entry_weight(kind, n)
            a += n
        tally_plain(acc, plain)
        end_call(acc, c, r, calls, tab, k, lb)
