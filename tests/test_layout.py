"""The layout notation: spec 7.1 defaults and the extensions (VMAs, gaps, holes, flags, many tables)."""

import pytest

from gpusim.inputs.layout import LayoutError, parse_layout
from gpusim.kernels import pte as P
from gpusim.kernels.flags import (
    BACKING_FILE,
    FOLIO_ANON,
    FOLIO_SWAPBACKED,
    PAGE_ANON_EXCLUSIVE,
    PIN_BIAS,
    VM_DEFAULT_ANON,
    VM_DONTCOPY,
    VM_SHARED,
    VM_WRITE,
)
from gpusim.model.state import pte_at


def test_defaults():
    s = parse_layout("pinned none*31 normal*480")
    mm, mem = s.mm, s.memory
    assert mm.vma_start.tolist() == [0] and mm.vma_end.tolist() == [512]
    assert int(mm.vma_flags[0]) == VM_DEFAULT_ANON and bool(mm.vma_anon_vma[0]) and mm.has_pinned
    assert mm.table_index.tolist() == [0] and mm.rss.tolist() == [481, 0, 0, 0]
    assert int(mem.folio_refcount[0]) == 1 + PIN_BIAS and int(mem.folio_true_pins[0]) == 1
    v = pte_at(mm, 0)
    assert P.pte_present(v) and P.pte_write(v) and P.pte_dirty(v) and P.pte_young(v)
    assert pte_at(mm, 1) == 0 and mem.page_flags[0] & PAGE_ANON_EXCLUSIVE
    assert len(set(mem.page_content.tolist())) == mem.nr_pages  # content identities are unique


def test_kinds_and_modifiers():
    s = parse_layout("zero file shmem swap:cnt=62 migw migr folio4:pin:nonex=1 normal:ro:clean:old normal:ref=1023")
    mm, mem = s.mm, s.memory
    z = pte_at(mm, 0)
    assert P.pte_special(z) and not P.pte_write(z) and not P.pte_dirty(z)
    f = pte_at(mm, 1)
    assert not P.pte_write(f) and int(mem.folio_refcount[0]) == 2 and not mem.folio_flags[0] & FOLIO_ANON
    assert mem.folio_flags[1] == FOLIO_SWAPBACKED
    sw = pte_at(mm, 3)
    assert P.is_swap_entry(sw) and P.pte_swp_exclusive(sw) and int(mem.swap_count[0]) == 62
    assert P.is_writable_migration_entry(pte_at(mm, 4)) and P.is_migration_entry(pte_at(mm, 5))
    assert not P.is_writable_migration_entry(pte_at(mm, 5))
    fo = int(mem.page_folio[P.pte_pfn(pte_at(mm, 6))])
    assert int(mem.folio_order[fo]) == 2 and int(mem.folio_pincount[fo]) == 1 and int(mem.folio_refcount[fo]) == 5
    first = int(mem.folio_first_pfn[fo])
    assert [bool(mem.page_flags[first + j] & PAGE_ANON_EXCLUSIVE) for j in range(4)] == [True, False, True, True]
    n = pte_at(mm, 10)
    assert not (P.pte_write(n) or P.pte_dirty(n) or P.pte_young(n))
    assert int(mem.folio_refcount[int(mem.page_folio[P.pte_pfn(pte_at(mm, 11))])]) == 1023
    assert mm.rss.tolist() == [1 + 1 + 4 + 2, 1, 1, 1]


def test_variant_dependent_pins_and_swap_exclusive():
    s58 = parse_layout("folio2:pin swap", "linux-5.8")
    s618 = parse_layout("folio2:pin swap", "linux-6.18")
    assert int(s58.memory.folio_refcount[0]) == 2 + PIN_BIAS and int(s58.memory.folio_pincount[0]) == 0
    assert int(s618.memory.folio_refcount[0]) == 3 and int(s618.memory.folio_pincount[0]) == 1
    assert not P.pte_swp_exclusive(pte_at(s58.mm, 2)) and P.pte_swp_exclusive(pte_at(s618.mm, 2))


def test_two_tables():
    s = parse_layout("normal*700 pinned normal*323")
    assert s.mm.table_index.tolist() == [0, 1] and s.mm.vma_end.tolist() == [1024]


def test_vmas_gaps_holes():
    s = parse_layout("normal*10 gap*502 hole*512 normal vma:shared:file:dontcopy file*4 vma:ro normal mm:has_pinned=0")
    mm = s.mm
    assert mm.vma_start.tolist() == [0, 512, 1025, 1029] and mm.vma_end.tolist() == [10, 1025, 1029, 1030]
    assert mm.table_index.tolist() == [0, 2]  # the hole-only table does not exist
    assert int(mm.vma_flags[2]) & VM_SHARED and int(mm.vma_flags[2]) & VM_DONTCOPY
    assert int(mm.vma_backing[2]) == BACKING_FILE and not int(mm.vma_flags[3]) & VM_WRITE
    assert not mm.has_pinned


def test_thp():
    s = parse_layout("thp:pin normal")
    assert s.mm.pmd_index.tolist() == [0] and s.mm.table_index.tolist() == [1]
    assert P.pmd_trans_huge(int(s.mm.pmd[0])) and s.mm.rss.tolist() == [513, 0, 0, 0]
    assert int(s.memory.folio_order[0]) == 9 and int(s.memory.folio_pmd_mapcount[0]) == 1


@pytest.mark.parametrize(
    "text,index,needle",
    [
        ("normal*3 bogus", 2, "unknown kind"),
        ("normal pinned:frob", 2, "does not apply"),
        ("normal normal*0", 2, "count"),
        ("none folio3", 2, "power of two"),
        ("normal thp", 2, "table boundary"),
        ("swap:cnt=63", 1, "does not fit"),
        ("vma:weird normal", 1, "unknown vma flag"),
        ("normal:ref=x", 1, "whole number"),
        ("migr:excl", 1, "linux-6.18"),
        ("mm:pinned normal", 1, "mm modifier"),
        ("normal normal:pin=1048576", 2, "larger than 1048575"),  # refcount + pins x 1024 past REF_MAX
        ("normal:ref=2147483647", 1, "larger than 1073741823"),  # the fork's references would overflow the i32
        ("normal:ref=2147483648", 1, "larger than 1073741823"),
        ("devw:ref=99999999999999999999", 1, "larger than 1073741823"),
        ("swap:lv=9", 1, "larger than 8"),  # the slot's capacity would overflow an i64
        ("swap:cnt=99999999999999999999999", 1, "larger than"),
        (" ".join(["gap*67108864"] * 513), 513, "128 TiB"),
    ],
)
def test_errors_point_at_the_token(text, index, needle):
    with pytest.raises(LayoutError) as ei:
        parse_layout(text, "linux-5.10" if "excl" in text else "linux-6.18")
    e = ei.value
    assert e.index + 1 == index and needle in str(e)
    assert e.pointer().splitlines()[1].index("^") == e.column
