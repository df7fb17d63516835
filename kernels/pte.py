"""PTE and PMD encoding: an x86-64-like 64-bit layout, as plain integer functions.

Every function here takes and returns plain integers, so the same source serves the pure-Python reference engine
and can be compiled by numba (``njit``) and numba.cuda (device functions). Names follow the kernel helpers
(``pte_write``, ``pte_wrprotect``, ``pte_swp_exclusive``, ``make_readable_migration_entry`` ...).

Bit layout (``uint64``; a value of 0 is ``pte_none``)::

    present entries (bit 0 set)                    non-present entries (bit 0 clear, value != 0)
    bit  0  _PAGE_PRESENT                          bit  0  0
    bit  1  _PAGE_RW          write                bits 1-5  entry type (SWP_*: swap, migration, device-private)
    bit  2  _PAGE_USER        always set           bit  7  _PAGE_SWP_EXCLUSIVE (swap entries, linux-6.18 only)
    bit  5  _PAGE_ACCESSED    young                bits 12-51 offset: swap slot, or pfn of the page
    bit  6  _PAGE_DIRTY       dirty
    bit  7  _PAGE_PSE         huge (PMD entries only)
    bit  9  _PAGE_SPECIAL     zero page / raw pfn (no struct page accounting)
    bits 12-51 pfn

The present bits sit where x86-64 has them (so a /proc/PID/pagemap frame number maps straight into bits 12-51).
The non-present layout is the model's own: x86-64 keeps the swap type at bits 59-63 and inverts the offset, which
buys nothing here; the type field instead distinguishes the kinds that the kernel encodes as special swap types
(migration read / read-exclusive / write, device-private read / write).
"""

from gpusim.kernels.jitable import jitable


def as_u64(x):
    """Identity in Python (values stay Python ints); a cast to uint64 in compiled code, so that every PTE value is
    typed uint64 there (numba unifies int64 with uint64 into float64, which would lose bits above 2**53)."""
    return x


M64 = (1 << 64) - 1  # masks are written as M64 ^ bit, never ~bit: a negative mask cannot meet a uint64
PAGE_PRESENT = 1 << 0
PAGE_RW = 1 << 1
PAGE_USER = 1 << 2
PAGE_ACCESSED = 1 << 5
PAGE_DIRTY = 1 << 6
PAGE_PSE = 1 << 7
PAGE_SPECIAL = 1 << 9
PAGE_SWP_EXCLUSIVE = 1 << 7

PFN_SHIFT = 12
PFN_MASK = (1 << 40) - 1  # 40-bit frame / offset field (bits 12-51)
SWP_TYPE_SHIFT = 1
SWP_TYPE_MASK = 0x1F

# Non-present entry types (bits 1-5). 0 is unused so that every non-present entry is non-zero.
SWP_SWAPFILE = 1
SWP_MIGRATION_READ = 2
SWP_MIGRATION_READ_EXCLUSIVE = 3
SWP_MIGRATION_WRITE = 4
SWP_DEVICE_READ = 5
SWP_DEVICE_WRITE = 6

# PTE kinds as the spec names them (classification of a raw value).
KIND_NONE = 0
KIND_PRESENT = 1
KIND_SWAP = 2
KIND_MIGRATION = 3
KIND_DEVICE_PRIVATE = 4

# Raw frame numbers used by special PTEs; they never index the page arrays.
ZERO_PFN = PFN_MASK  # the shared zero page
RAW_PFN_BASE = 1 << 39  # VM_PFNMAP / VM_MIXEDMAP frames


# --- present entries -------------------------------------------------------------------------------------------


@jitable
def mk_pte(pfn, write, dirty, young, special):
    """A present PTE for ``pfn`` with the given bits (each 0/1 or bool)."""
    v = PAGE_PRESENT | PAGE_USER | ((pfn & PFN_MASK) << PFN_SHIFT)
    if write:
        v |= PAGE_RW
    if dirty:
        v |= PAGE_DIRTY
    if young:
        v |= PAGE_ACCESSED
    if special:
        v |= PAGE_SPECIAL
    return as_u64(v)


@jitable
def pte_none(v):
    return v == 0


@jitable
def pte_present(v):
    return (v & PAGE_PRESENT) != 0


@jitable
def pte_pfn(v):
    return (v >> PFN_SHIFT) & PFN_MASK


@jitable
def pte_write(v):
    return (v & PAGE_RW) != 0


@jitable
def pte_dirty(v):
    return (v & PAGE_DIRTY) != 0


@jitable
def pte_young(v):
    return (v & PAGE_ACCESSED) != 0


@jitable
def pte_special(v):
    return (v & PAGE_SPECIAL) != 0


@jitable
def pte_wrprotect(v):
    return as_u64(v & (M64 ^ PAGE_RW))


@jitable
def pte_mkwrite(v):
    return as_u64(v | PAGE_RW)


@jitable
def pte_mkold(v):
    return as_u64(v & (M64 ^ PAGE_ACCESSED))


@jitable
def pte_mkyoung(v):
    return as_u64(v | PAGE_ACCESSED)


@jitable
def pte_mkclean(v):
    return as_u64(v & (M64 ^ PAGE_DIRTY))


@jitable
def pte_mkdirty(v):
    return as_u64(v | PAGE_DIRTY)


@jitable
def pte_set_pfn(v, pfn):
    return as_u64((v & (M64 ^ (PFN_MASK << PFN_SHIFT))) | ((pfn & PFN_MASK) << PFN_SHIFT))


# --- non-present entries ---------------------------------------------------------------------------------------


@jitable
def swp_entry_to_pte(swp_type, offset):
    return as_u64(((swp_type & SWP_TYPE_MASK) << SWP_TYPE_SHIFT) | ((offset & PFN_MASK) << PFN_SHIFT))


@jitable
def swp_type(v):
    return (v >> SWP_TYPE_SHIFT) & SWP_TYPE_MASK


@jitable
def swp_offset(v):
    return (v >> PFN_SHIFT) & PFN_MASK


@jitable
def pte_swp_exclusive(v):
    return (v & PAGE_SWP_EXCLUSIVE) != 0


@jitable
def pte_swp_mkexclusive(v):
    return as_u64(v | PAGE_SWP_EXCLUSIVE)


@jitable
def pte_swp_clear_exclusive(v):
    return as_u64(v & (M64 ^ PAGE_SWP_EXCLUSIVE))


@jitable
def mk_swap_pte(slot, exclusive):
    v = swp_entry_to_pte(SWP_SWAPFILE, slot)
    if exclusive:
        v |= PAGE_SWP_EXCLUSIVE
    return as_u64(v)


@jitable
def mk_migration_pte(pfn, write, exclusive):
    """A migration entry; ``exclusive`` (read-exclusive) only matters when ``write`` is false."""
    if write:
        t = SWP_MIGRATION_WRITE
    elif exclusive:
        t = SWP_MIGRATION_READ_EXCLUSIVE
    else:
        t = SWP_MIGRATION_READ
    return as_u64(swp_entry_to_pte(t, pfn))


@jitable
def mk_device_private_pte(pfn, write):
    return as_u64(swp_entry_to_pte(SWP_DEVICE_WRITE if write else SWP_DEVICE_READ, pfn))


@jitable
def is_swap_entry(v):
    return (not pte_present(v)) and v != 0 and swp_type(v) == SWP_SWAPFILE


@jitable
def is_migration_entry(v):
    t = swp_type(v)
    return (not pte_present(v)) and v != 0 and SWP_MIGRATION_READ <= t <= SWP_MIGRATION_WRITE


@jitable
def is_writable_migration_entry(v):
    return is_migration_entry(v) and swp_type(v) == SWP_MIGRATION_WRITE


@jitable
def is_readable_exclusive_migration_entry(v):
    return is_migration_entry(v) and swp_type(v) == SWP_MIGRATION_READ_EXCLUSIVE


@jitable
def make_readable_migration_entry(v):
    return as_u64(swp_entry_to_pte(SWP_MIGRATION_READ, swp_offset(v)))


@jitable
def is_device_private_entry(v):
    t = swp_type(v)
    return (not pte_present(v)) and v != 0 and (t == SWP_DEVICE_READ or t == SWP_DEVICE_WRITE)


@jitable
def is_writable_device_private_entry(v):
    return is_device_private_entry(v) and swp_type(v) == SWP_DEVICE_WRITE


@jitable
def make_readable_device_private_entry(v):
    return as_u64(swp_entry_to_pte(SWP_DEVICE_READ, swp_offset(v)))


@jitable
def pte_kind(v):
    """Classify a raw entry into one of the spec's kinds (``KIND_*``); -1 for an undecodable value."""
    if v == 0:
        return KIND_NONE
    if pte_present(v):
        return KIND_PRESENT
    t = swp_type(v)
    if t == SWP_SWAPFILE:
        return KIND_SWAP
    if SWP_MIGRATION_READ <= t <= SWP_MIGRATION_WRITE:
        return KIND_MIGRATION
    if t == SWP_DEVICE_READ or t == SWP_DEVICE_WRITE:
        return KIND_DEVICE_PRIVATE
    return -1


# --- huge PMD entries ------------------------------------------------------------------------------------------


@jitable
def mk_huge_pmd(pfn, write, dirty, young):
    return as_u64(mk_pte(pfn, write, dirty, young, False) | PAGE_PSE)


@jitable
def pmd_trans_huge(v):
    return (v & PAGE_PRESENT) != 0 and (v & PAGE_PSE) != 0


@jitable
def pte_moved(v, page_off, slot_off, page_split, page_off_above):
    """``v`` with its pfn (present non-special, migration, device-private) moved by ``page_off`` (by
    ``page_off_above`` from ``page_split`` on) and its swap slot by ``slot_off``: an entry of one numbering of the
    memory's rows placed in another (a fork of a batch; a chunk of a streamed fork)."""
    k = pte_kind(v)
    if k == KIND_SWAP:  # offsets may be negative: uint64 arithmetic wraps to the same field
        return pte_set_pfn(v, as_u64(swp_offset(v)) + as_u64(slot_off))
    if (k == KIND_PRESENT and not pte_special(v)) or k == KIND_MIGRATION or k == KIND_DEVICE_PRIVATE:
        pfn = as_u64(pte_pfn(v))
        off = page_off if pfn < as_u64(page_split) else page_off_above
        return pte_set_pfn(v, pfn + as_u64(off))
    return v
