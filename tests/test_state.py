"""The state model: validation errors are clear, the digest is canonical, the PTE encoding round-trips."""

import dataclasses

import numpy as np
import pytest

import gpusim
from gpusim.kernels import pte as P
from gpusim.kernels.flags import swap_cap
from gpusim.state import StateError, digest, empty_mm


def space():
    return gpusim.parse_layout("thp normal*4 swap folio4")


def test_valid_layout_validates():
    space().validate()


@pytest.mark.parametrize(
    "field,value,needle",
    [("folio_refcount", np.zeros(3, np.int64), "dtype"), ("page_folio", np.zeros((2, 2), np.int32), "shape")],
)
def test_memory_dtype_and_shape(field, value, needle):
    s = space()
    bad = dataclasses.replace(s.memory, **{field: value})
    with pytest.raises(StateError, match=needle):
        bad.validate()


def test_cross_references():
    s = space()
    pte = s.mm.pte.copy()
    pte[0, 0] = P.mk_pte(10**6, True, True, True, False)
    with pytest.raises(StateError, match="PTE at 512 .* maps a pfn outside"):
        dataclasses.replace(s, mm=dataclasses.replace(s.mm, pte=pte)).validate()
    pte[0, 0] = P.mk_swap_pte(99, False)
    with pytest.raises(StateError, match="slot outside the 1 slots"):
        dataclasses.replace(s, mm=dataclasses.replace(s.mm, pte=pte)).validate()
    count = s.memory.swap_count.copy()
    count[0] = 63
    with pytest.raises(StateError, match="capacity 62"):
        dataclasses.replace(s.memory, swap_count=count).validate()
    pf = s.memory.page_folio.copy()
    pf[513] = 0
    with pytest.raises(StateError, match="page_folio"):
        dataclasses.replace(s.memory, page_folio=pf).validate()


def test_vma_order():
    s = space()
    mm = dataclasses.replace(
        s.mm,
        vma_start=np.array([0, 3], np.int64),
        vma_end=np.array([5, 9], np.int64),
        vma_flags=np.zeros(2, np.uint64),
        vma_backing=np.zeros(2, np.uint8),
        vma_anon_vma=np.ones(2, bool),
    )
    with pytest.raises(StateError, match="overlap"):
        mm.validate()


def test_digest_is_canonical():
    a, b = space(), space()
    assert digest(a.mm, empty_mm(), a.memory) == digest(b.mm, empty_mm(), b.memory)
    c = b.memory.page_content.copy()
    c[0] += 1
    assert digest(a.mm, empty_mm(), a.memory) != digest(b.mm, empty_mm(), dataclasses.replace(b.memory, page_content=c))
    # equal values in non-contiguous or big-endian arrays give the same digest
    be = dataclasses.replace(a.memory, folio_refcount=a.memory.folio_refcount.astype(">i4"))
    assert digest(a.mm, empty_mm(), be) == digest(a.mm, empty_mm(), a.memory)


def test_swap_cap():
    assert [swap_cap(lv) for lv in range(3)] == [62, 63 * 128 - 1, 63 * 128 * 128 - 1]


def test_pte_encoding():
    v = P.mk_pte(12345, True, False, True, False)
    assert P.pte_present(v) and P.pte_write(v) and not P.pte_dirty(v) and P.pte_young(v)
    assert P.pte_pfn(v) == 12345 and v & 0xFFF == P.PAGE_PRESENT | P.PAGE_RW | P.PAGE_USER | P.PAGE_ACCESSED
    assert P.pte_pfn(P.pte_wrprotect(P.pte_mkold(v))) == 12345
    s = P.mk_swap_pte(7, True)
    assert P.pte_kind(s) == P.KIND_SWAP and P.swp_offset(s) == 7 and P.pte_swp_exclusive(s) and s != 0
    assert P.pte_kind(P.mk_swap_pte(0, False)) == P.KIND_SWAP  # slot 0 is not pte_none
    m = P.mk_migration_pte(5, False, True)
    assert P.is_readable_exclusive_migration_entry(m) and P.make_readable_migration_entry(m) == P.mk_migration_pte(
        5, False, False
    )
    assert P.pte_kind(P.mk_device_private_pte(3, True)) == P.KIND_DEVICE_PRIVATE
    assert P.pmd_trans_huge(P.mk_huge_pmd(512, True, True, True)) and not P.pmd_trans_huge(v)


def test_entries_outside_vmas_and_thp_placement():
    s = gpusim.parse_layout("normal*4 gap*4 normal")
    pte = s.mm.pte.copy()
    pte[0, 5] = pte[0, 0]
    with pytest.raises(StateError, match="PTE at 5 .* outside every VMA"):
        dataclasses.replace(s, mm=dataclasses.replace(s.mm, pte=pte)).validate()
    t = gpusim.parse_layout("thp")
    mm = dataclasses.replace(t.mm, vma_end=np.array([300], np.int64))
    with pytest.raises(StateError, match="not inside one VMA"):
        dataclasses.replace(t, mm=mm).validate()


def test_fork_validates_its_input():
    s = gpusim.parse_layout("normal*4")
    bad = dataclasses.replace(s.memory, folio_refcount=s.memory.folio_refcount.astype(np.int64))
    with pytest.raises(StateError, match="dtype"):
        gpusim.fork(dataclasses.replace(s, memory=bad))
