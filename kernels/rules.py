"""The per-PTE rules of the fast path, written once as scalar functions (``jitable``): numba compiles them
into the CPU kernels (``kernels/cpu.py``) and the CUDA kernels (``kernels/cuda.py``); called from Python they run
as plain Python. Kernel bodies only index, bound-check, call these and store.

The fast path handles the order-independent work of ``copy_pte_range``: empty entries, sharing (single PTEs and
linux-6.18 batches), special PTEs, swap duplication that needs no continuation, migration and device-private
entries, plus the lock-break cadence. :func:`small_folio_needs_slow`, :func:`large_folio_needs_slow`,
:func:`shared_exclusive_page` and :func:`slot_needs_slow` flag every PTE whose handling could depend on the order of
the walk or needs a slow path (early copy, swap-count continuation); a table holding one goes to the slow path,
which runs the variant's state machine on it. These rules read only values the fork can raise (refcount, mapcount)
or does not change, so reading them while other tables are being copied can only make an answer more
conservative, and a table sent to the slow path is handled exactly whatever the reason.
"""

import numpy as np

from gpusim.kernels.flags import (
    FOLIO_ANON,
    FOLIO_DEVICE_PRIVATE,
    FRAME_NEAR,
    PAGE_ANON_EXCLUSIVE,
    PIN_BIAS,
    RSS_COUNTS,
    RSS_NAMES,
    WP_REUSE_EXCLUSIVE,
    WP_REUSE_MAPCOUNT,
    WP_REUSE_REFCOUNT,
    events,
    swap_cap,
)
from gpusim.kernels.jitable import jitable
from gpusim.kernels.pte import (
    KIND_DEVICE_PRIVATE,
    KIND_MIGRATION,
    KIND_SWAP,
    as_u64,
    is_readable_exclusive_migration_entry,
    is_writable_device_private_entry,
    is_writable_migration_entry,
    make_readable_device_private_entry,
    make_readable_migration_entry,
    pte_kind,
    pte_mkclean,
    pte_mkold,
    pte_mkwrite,
    pte_pfn,
    pte_present,
    pte_special,
    pte_swp_clear_exclusive,
    pte_wrprotect,
)

# what a fork_tables launch does: classify only, classify then copy the tables that need no host, copy only
MODE_CLASSIFY, MODE_CLASSIFY_COPY, MODE_COPY = 0, 1, 2

# lock-break oracle modes
NB_NEVER, NB_ALWAYS, NB_EVERY, NB_BERN, NB_LIST = 0, 1, 2, 3, 4

# Columns of the per-table count rows the fast kernels fill (summed on the host).
FAST_COUNTS = (
    events(
        "table.call",
        "table.alloc",
        "pass",
        "check",
        "pte.",
        "batch.start",
        "batch.pte",
        "lock_breaks",
        "shared",
        "pin_shared",
    )
    + RSS_COUNTS
    + ("swapoff",)
)
FAST_INDEX = {name: i for i, name in enumerate(FAST_COUNTS)}  # each constant below takes its number by name
C_NONE = FAST_INDEX["pte.none"]
C_SHARE = FAST_INDEX["pte.share"]
C_SPECIAL = FAST_INDEX["pte.special"]
C_WRPROTECT = FAST_INDEX["pte.wrprotect"]
C_EXCL_CLEAR = FAST_INDEX["pte.excl_clear"]
C_SWAP = FAST_INDEX["pte.swap"]
C_MIGRATION = FAST_INDEX["pte.migration"]
C_DEVPRIV = FAST_INDEX["pte.devpriv"]
C_FRAME_BREAK = FAST_INDEX["pte.frame_break"]
C_BATCH_START = FAST_INDEX["batch.start"]
C_BATCH_PTE = FAST_INDEX["batch.pte"]
C_PASS = FAST_INDEX["pass"]
C_CHECK = FAST_INDEX["check"]
C_LB = FAST_INDEX["lock_breaks"]
C_SHARED = FAST_INDEX["shared"]
C_PIN_SHARED = FAST_INDEX["pin_shared"]
C_CALL = FAST_INDEX["table.call"]
C_ALLOC = FAST_INDEX["table.alloc"]
C_RSS = FAST_INDEX["rss.anon"]
C_SWAPOFF = FAST_INDEX["swapoff"]
assert [FAST_INDEX[f"rss.{k}"] for k in RSS_NAMES] == list(range(C_RSS, C_RSS + len(RSS_NAMES)))  # C_RSS + counter
NR_FAST_COUNTS = len(FAST_COUNTS)


@jitable
def share_child_pte(first, w_any, vm_shared):
    """The child's PTE for a shared present entry, before write protection: old, write merged, clean if shared."""
    child = pte_mkold(first)
    if w_any:
        child = pte_mkwrite(child)
    else:
        child = pte_wrprotect(child)
    if vm_shared:
        child = pte_mkclean(child)
    return as_u64(child)


@jitable
def nonpresent_parent(v, cow, anon_exclusive):
    """The parent's entry after ``copy_nonpresent_pte`` duplicated it (the child gets :func:`nonpresent_child`)."""
    k = pte_kind(v)
    if k == KIND_SWAP:
        return as_u64(pte_swp_clear_exclusive(v) if anon_exclusive else v)
    if k == KIND_MIGRATION:
        if cow and (is_writable_migration_entry(v) or is_readable_exclusive_migration_entry(v)):
            return as_u64(make_readable_migration_entry(v))
        return as_u64(v)
    if k == KIND_DEVICE_PRIVATE:
        if cow and is_writable_device_private_entry(v):
            return as_u64(make_readable_device_private_entry(v))
    return as_u64(v)


@jitable
def nonpresent_child(v, parent_after):
    if pte_kind(v) == KIND_SWAP:
        return as_u64(pte_swp_clear_exclusive(v))
    return as_u64(parent_after)


@jitable
def smix_u64(z):
    """splitmix64 finaliser on uint64 (wrapping arithmetic)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@jitable
def nb_hash_u64(seed, fork_seq, call_start, k):
    """``nb_hash`` of spec 4 for compiled code (``gpusim.model.oracle.nb_hash`` is the Python twin; the spec's test
    vectors check both)."""
    h = smix_u64(np.uint64(seed))
    h = smix_u64(h ^ np.uint64(fork_seq))
    h = smix_u64(h ^ np.uint64(call_start))
    return smix_u64(h ^ np.uint64(k))


@jitable
def lock_break(mode, every_n, p_q32, seed, fork_seq, call_start, k):
    """``NB(fork_seq, call_start, k)`` for compiled code, every mode but ``list`` (see :func:`in_break_list`)."""
    if mode == NB_NEVER or mode == NB_LIST:
        return False
    if mode == NB_ALWAYS:
        return True
    if mode == NB_EVERY:
        return (k + 1) % every_n == 0
    return (nb_hash_u64(seed, fork_seq, call_start, k) >> np.uint64(32)) < np.uint64(p_q32)


@jitable
def in_break_list(list_cs, list_k, call_start, k):
    """The ``list:`` oracle: whether ``(call_start, k)`` is listed."""
    for i in range(list_cs.shape[0]):
        if list_cs[i] == call_start and list_k[i] == k:
            return True
    return False


@jitable
def small_folio_needs_slow(refcount, maxrefs):
    """A folio that uses the refcount pin heuristic: this fork's own references (at most ``maxrefs``, one per
    mapping) could push its refcount to ``PIN_BIAS`` while the walk is under way."""
    return refcount + maxrefs + 1 >= PIN_BIAS


@jitable
def large_folio_needs_slow(f, anon_exclusive, folio_order, folio_pincount, folio_flags, folio_first_pfn, page_flags):
    """A folio with an exact pincount: an early copy may be due (under the anon-exclusive rule: only for
    anon-exclusive pages)."""
    if folio_pincount[f] <= 0:
        return False
    if not anon_exclusive:
        return True
    if (folio_flags[f] & FOLIO_ANON) == 0 or (folio_flags[f] & FOLIO_DEVICE_PRIVATE) != 0:
        return False
    first = folio_first_pfn[f]
    for j in range(np.int64(1) << np.int64(folio_order[f])):
        if page_flags[first + j] & PAGE_ANON_EXCLUSIVE:
            return True
    return False


@jitable
def shared_exclusive_page(page_flags, page_mapcount):
    """An anon-exclusive page mapped more than once (inconsistent in the kernel, possible in a given state):
    linux-6.18 clears the flag at the first share only, so the order of the shares matters; send it to the slow path.
    With this rule the fast path never changes the flags of a page mapped twice, so it needs no atomic ``and``."""
    return (page_flags & PAGE_ANON_EXCLUSIVE) != 0 and page_mapcount != 1


@jitable
def slot_needs_slow(count, levels):
    """Whether duplicating a slot could need a swap-count continuation in this fork: the fork adds at most
    ``count`` references (each of the parent's is counted), so ``2 * count <= cap(levels)`` is always safe."""
    return 2 * count > swap_cap(levels)


@jitable
def wp_reuse_pte(rule, excl_page, order, refcount, map_page, map_max, map_sum, pmdmap, nr, mapped_by_writer):
    """Spec 11.2's ``wp_reuse_pte``: whether a write-protect fault on an anon page reuses it (else it copies).
    ``excl_page``: the page is anon-exclusive; ``map_page``, ``map_max``, ``map_sum``: its map count and the largest
    and the sum over its folio's ``nr`` pages; ``pmdmap``: the folio's PMD mappings; ``mapped_by_writer``: the
    writer's PTEs mapping the folio plus ``nr`` per PMD of its mapping it."""
    if rule == WP_REUSE_MAPCOUNT:  # reuse_swap_page(): mappings only, the refcount (pins) never read
        count = map_page if order == 0 else map_max + pmdmap
        return count <= 1
    if rule == WP_REUSE_REFCOUNT:  # 09854ba94c6a: page_count(head) == 1
        return refcount == 1 and map_page == 1
    if excl_page:
        return True
    if order == 0:
        return refcount == 1
    large_map = map_sum + nr * pmdmap
    return large_map > 1 and large_map == mapped_by_writer and large_map == refcount


@jitable
def wp_reuse_pmd(rule, excl_head, refcount, map_max, pmdmap):
    """Spec 11.2's ``wp_reuse_pmd``: whether a write to a PMD-mapped THP reuses the PMD (else it is split)."""
    if rule == WP_REUSE_EXCLUSIVE:
        return excl_head or refcount == 1
    return map_max + pmdmap <= 1


@jitable
def maps_page(v):
    """A present entry with a struct page the fork touches (not a special PTE: zero page, raw pfn)."""
    return pte_present(v) and not pte_special(v)


@jitable
def frame_run(last, broke, pfn, n):
    """The walk's stream of frames after ``n`` pages of consecutive frames from ``pfn`` (a page, or a batch of a
    large folio): returns (the ``pte.frame_break`` events among them, the last frame, whether the last page broke the
    stream), ``last`` and ``broke`` being the same before them (``last`` -1 at a call's start). A page breaks the
    stream when its frame is :data:`FRAME_NEAR` or more frames away from the one after the previous page's; an event
    is a page that breaks it or comes right after one that did (spec 8)."""
    brk = last >= 0 and abs(pfn - last - 1) >= FRAME_NEAR
    ev = 1 if brk or broke else 0
    if n > 1:
        if brk:
            ev += 1  # the next page of the run comes right after the break
        brk = False
    return ev, pfn + n - 1, brk


@jitable
def call_frame_breaks(row, lo, hi):
    """The ``pte.frame_break`` events of one ``copy_pte_range`` call over columns ``[lo, hi)`` of a parent table's
    entries ``row``: :func:`frame_run` over the entries that map a page (:func:`maps_page`), one at a time, in the
    walk's order. The kernel's per-PTE work touches each page's ``struct page``, which streams from memory while the
    frames follow each other, and costs a cache miss at a break and at the access after it, before the prefetcher
    follows the new run (the rule that fitted this machine's forks best, ``results/BENCHMARKS.md``). Counted on the
    parent's entries (a call changes their protection, never their frames): the CUDA block walk counts it so after
    its copy; the CPU walk counts each entry as it copies it, with the same :func:`frame_run`."""
    n = 0
    last = np.int64(-1)
    broke = False
    for j in range(lo, hi):
        v = row[j]
        if maps_page(v):
            ev, last, broke = frame_run(last, broke, np.int64(pte_pfn(v)), 1)
            n += ev
    return n
