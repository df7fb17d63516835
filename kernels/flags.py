"""Every flag and constant of the model, in one place (spec section 1), for the kernels and the package alike.

The values are the kernel's where the kernel has them (``VM_*`` bits, ``SWAP_MAP_MAX``, ``PIN_BIAS``); the rest are
the model's own encodings (folio and page flag bits, rss counter indices, backing kinds, state machine numbers).
The three small rules here (:func:`is_cow_mapping`, :func:`mm_counter`, :func:`swap_cap`) are ``jitable``
(:mod:`gpusim.kernels.jitable`): plain Python for the reference engine, compiled into the fast kernels.
"""

from gpusim.kernels.jitable import jitable

# --- sizes and thresholds (spec 1.1) ---------------------------------------------------------------------------
PAGE_SIZE = 4096  # bytes of a page (the model's pages are 4 KiB)
PTRS_PER_TABLE = 512  # entries of one PTE table (one table = 2 MiB of 4 KiB pages)
BREAK_AT = 32  # copy_pte_range's progress at which it tests for a lock break
PIN_BIAS = 1024  # GUP_PIN_COUNTING_BIAS: references one FOLL_PIN adds to a small folio
# The largest reference or map count an input (a layout, a snapshot) may give a folio or page: the counts are i32,
# and 2**30 of them are left for the forks the space goes through (a fork adds one per PTE that maps the page).
REF_MAX = (1 << 30) - 1
# A page's frame within this many frames of the one after the previous page's keeps the walk's struct page accesses
# in the lines the prefetchers already fetched (8 struct pages: 512 bytes): not a break of the stream (spec 8).
FRAME_NEAR = 8
# The digest's lane sums (gpusim.kernels.digest, its compiled pass gpusim.kernels.lanes): odd 64-bit constants (the
# golden ratio and the splitmix64 multipliers), the block of the compiled pass, and how values are moved.
DIGEST_POSITION = 0x9E3779B97F4A7C15
DIGEST_MULTIPLY = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
DIGEST_SEEDS = (0x243F6A8885A308D3, 0x13198A2E03707344)
DIGEST_BLOCK = 1 << 16
MOVE_NONE, MOVE_ROWS, MOVE_ENTRIES = 0, 1, 2
# Below this many elements the host side uses numpy forms of the compiled passes (gpusim.kernels.scan, the digest's
# gpusim.kernels.lanes: gpusim.model.decode, gpusim.model.state, the invariant checker): a compiled pass saves nothing
# on a few tables, and loading numba and a pass from its cache costs a second in a fresh process (a one-table
# `gpusim fork`); the modules that hold the passes are imported where a larger array needs them. Read at call time,
# so that a test can move it.
COMPILED_FROM = 1 << 15
SWAP_MAP_MAX = 62  # largest count the first byte of a swap map holds
SWAP_CONT_MAX = 127  # largest count one continuation level holds
NULL_ENTRY = -1  # a swap entry of value 0: no slot

# --- VMA flags: the kernel's bit values ------------------------------------------------------------------------
VM_READ = 0x00000001
VM_WRITE = 0x00000002
VM_EXEC = 0x00000004
VM_SHARED = 0x00000008
VM_MAYREAD = 0x00000010
VM_MAYWRITE = 0x00000020
VM_PFNMAP = 0x00000400
VM_DONTCOPY = 0x00020000
VM_HUGETLB = 0x00400000
VM_WIPEONFORK = 0x02000000
VM_MIXEDMAP = 0x10000000
VM_FLAG_NAMES = {
    VM_READ: "VM_READ",
    VM_WRITE: "VM_WRITE",
    VM_EXEC: "VM_EXEC",
    VM_SHARED: "VM_SHARED",
    VM_MAYREAD: "VM_MAYREAD",
    VM_MAYWRITE: "VM_MAYWRITE",
    VM_PFNMAP: "VM_PFNMAP",
    VM_DONTCOPY: "VM_DONTCOPY",
    VM_HUGETLB: "VM_HUGETLB",
    VM_WIPEONFORK: "VM_WIPEONFORK",
    VM_MIXEDMAP: "VM_MIXEDMAP",
}
VM_KNOWN = sum(VM_FLAG_NAMES)
VM_DEFAULT_ANON = VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE

# --- what backs a VMA ------------------------------------------------------------------------------------------
BACKING_ANON = 0
BACKING_FILE = 1
BACKING_SHMEM = 2
BACKINGS = {"anon": BACKING_ANON, "file": BACKING_FILE, "shmem": BACKING_SHMEM}

# --- folio and page flags --------------------------------------------------------------------------------------
FOLIO_ANON = 1 << 0
FOLIO_SWAPBACKED = 1 << 1
FOLIO_DEVICE_PRIVATE = 1 << 2
FOLIO_FREED = 1 << 3

PAGE_ANON_EXCLUSIVE = 1 << 0
PAGE_HWPOISON = 1 << 1

# --- rss counters ----------------------------------------------------------------------------------------------
MM_ANONPAGES = 0
MM_FILEPAGES = 1
MM_SHMEMPAGES = 2
MM_SWAPENTS = 3
RSS_NAMES = ("anon", "file", "shmem", "swapents")

# --- what a fork counts: the one list of names every other list of events is drawn from (:func:`events`): the
# results' columns, the events of a table's locked passes, the kernels' count rows
# The cost events of spec section 8 (and 10), by their dotted names, in the spec's order.
COST_EVENTS = (
    "fork.base",
    "fork.mm",
    "vma.dup",
    "vma.anon_fork",
    "vma.file_link",
    "vma.copy",
    "vma.skip",
    "table.call",
    "table.alloc",
    "table.upper_alloc",
    "pass",
    "restart.lb",
    "restart.sc",
    "restart.ec",
    "check",
    "pte.none",
    "pte.share",
    "pte.special",
    "pte.wrprotect",
    "pte.excl_clear",
    "pte.swap",
    "pte.migration",
    "pte.devpriv",
    "pte.frame_break",
    "batch.start",
    "batch.pte",
    "batch.refused",
    "copy.alloc",
    "copy.alloc_fail",
    "copy.memcpy",
    "copy.install",
    "copy.free_unused",
    "copy.recheck",
    "copy.duplicate_call",
    "swapcont.atomic",
    "swapcont.kernel",
    "swapcont.attach",
    "swapcont.null",
    "teardown.pte",
    "teardown.free",
    "pmd.share",
    "pmd.split",
    # the lazy fork designs (spec 12.8): at fork, at an unshare, and async-fork's deferred copies
    "table.share",
    "pmd.wrprotect",
    "pte.acct",
    "table.share_fallback",
    "table.recover_pte",
    "table.cow_copy",
    "table.cow_pte",
    "table.reuse",
    "table.free",
    "table.zap_shared",
    "async.defer",
    "async.copy.child",
    "async.copy.fault",
    "async.copy.gup",
    "async.copy.vma",
    "pmd.restore",
    "async.sync",
    "async.abort",
)
# Summary counters the scenario tables and invariants speak of.
SUMMARY_COUNTS = (
    "passes",
    "lock_breaks",
    "allocations",
    "unused_frees",
    "installs",
    "shared",
    "pin_shared",
    "swapcont_atomic",
    "swapcont_kernel",
    "levels_added",
    "teardown_frees",
    "hugetlb_skipped",
    "events_applied",
    "events_ignored",
)
COUNT_NAMES = COST_EVENTS + SUMMARY_COUNTS
RSS_COUNTS = tuple(f"rss.{k}" for k in RSS_NAMES)  # a table's rss deltas, in the kernels' count rows


def events(*groups: str, but: tuple = ()) -> tuple:
    """The names of :data:`COUNT_NAMES` in ``groups`` (a name, or a prefix ending in ``.``: every name under it),
    in that list's order, less those in ``but``."""
    for g in (*groups, *but):
        if g not in COUNT_NAMES and not any(n.startswith(g) for n in COUNT_NAMES if g.endswith(".")):
            raise ValueError(f"no count named {g!r}")
    return tuple(
        n for n in COUNT_NAMES if n not in but and any(n == g or (g.endswith(".") and n.startswith(g)) for g in groups)
    )


# --- the error numbers copy_pte_range returns (the kernel's, negated) ------------------------------------------
ENOMEM, EAGAIN, EIO, EHWPOISON = -12, -11, -5, -133

# --- the copy_pte_range state machines a variant runs (gpusim.model.variants.Variant.machine): the kernels know a
# variant by its rules (gpusim.kernels.args.VariantParams), and the slow path picks its state machine by this number
MACHINES = ("linux-5.8", "xu-v1", "xu-v1-oleg", "linux-5.10", "linux-6.18")
M_5_8, M_XU_V1, M_XU_V1_OLEG, M_5_10, M_6_18 = range(len(MACHINES))
# What a fork does with a whole PTE table (gpusim.model.variants.Variant.table_fork; spec 12): copy it (every variant
# of spec 3), share it with no per-page work (odf-paper), share it after accounting every page (odf-cowpte), or defer
# its copy to the child's start or the parent's first fault on it (async-fork).
TABLE_FORKS = ("copy", "share", "share_accounted", "defer")
# How a write-protect fault decides to reuse an anon page (spec 11.2; gpusim.model.variants.Variant.wp_reuse): by its
# mappings alone (reuse_swap_page, before 09854ba94c6a), by its reference count (page_count == 1), or by
# PageAnonExclusive and wp_can_reuse_anon_folio.
WP_REUSE_MAPCOUNT, WP_REUSE_REFCOUNT, WP_REUSE_EXCLUSIVE = 0, 1, 2
# What one write of the write phase does (spec 11.5), in this order everywhere (counts, columns, the compiled
# phase's event numbers); the ``hi`` address of a step that writes every mapped address.
WRITE_EVENTS = ("none", "reuse", "copy", "anon_fault", "pmd_reuse", "pmd_split", "segv", "unmodelled")
WRITERS = ("parent", "child")  # who writes, by their number in the compiled phases (0 the parent, 1 the child)
EV_NONE, EV_REUSE, EV_COPY, EV_ANON_FAULT, EV_PMD_REUSE, EV_PMD_SPLIT, EV_SEGV, EV_UNMODELLED = range(len(WRITE_EVENTS))
WRITE_EVERY = 1 << 62
# One write's events as one number (an episode records it per write, spec 11.6): the first event, and the retry's
# after a PMD split (-1: none): ``first * WRITE_CODE_BASE + second + 1``.
WRITE_CODE_BASE = len(WRITE_EVENTS) + 1
NR_WRITE_CODES = len(WRITE_EVENTS) * WRITE_CODE_BASE
# The slots of an episode's running state (gpusim.kernels.episode, int64): pages, folios and contents used, COW pages,
# the child's private dirty pages, whether the child lives, whether the COW pages need a recount.
ST_PAGES, ST_FOLIOS, ST_CONTENT, ST_COW, ST_PRIVATE, ST_CHILD_LIVE, ST_RECOUNT = range(7)
NR_ST = 7
# How many writes ahead an episode prefetches the next writes' lines: their entries, then (once those arrived) their
# pages' rows, then their folios' rows (0: not). Tuned on large states (results/BENCHMARKS.md, issue 27).
EPISODE_AHEAD = (12, 6, 3)


@jitable
def write_code(first, second):
    return first * WRITE_CODE_BASE + second + 1


@jitable
def is_cow_mapping(vm_flags):
    """Private and may become writable (even if currently read-only). Without a branch, so that it takes numpy
    arrays too."""
    return ((vm_flags & VM_MAYWRITE) != 0) & ((vm_flags & VM_SHARED) == 0)


@jitable
def mm_counter(folio_flags):
    """The rss counter a folio is accounted to: anon, shmem (swap-backed, not anon) or file."""
    if folio_flags & FOLIO_ANON:
        return MM_ANONPAGES
    if folio_flags & FOLIO_SWAPBACKED:
        return MM_SHMEMPAGES
    return MM_FILEPAGES


@jitable
def swap_cap(levels):
    """Largest count a slot with ``levels`` continuation pages holds: 63 * 128**levels - 1."""
    cap = SWAP_MAP_MAX + 1
    for _ in range(levels):
        cap *= SWAP_CONT_MAX + 1
    return cap - 1
