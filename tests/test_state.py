"""The state model: validation errors are clear, the digest is canonical, the PTE encoding round-trips."""

import dataclasses

import numpy as np
import pytest

import gpusim
from gpusim.kernels import pte as P
from gpusim.kernels.digest import lane_sums
from gpusim.kernels.flags import swap_cap
from gpusim.model.state import StateError, digest, empty_mm


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


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.uint64, np.bool_])
def test_digest_sums_do_not_depend_on_the_split(dtype):
    a = np.random.default_rng(1).integers(0, 2**31, 200_000).astype(dtype)
    seed = np.uint64(7)
    whole = lane_sums(a, 0, seed)
    for cut in (1, 4096, 65_536, 123_457):
        x, y = lane_sums(a[:cut], 0, seed), lane_sums(a[cut:], cut, seed)
        assert tuple((int(p) + int(q)) % 2**64 for p, q in zip(x, y)) == tuple(int(w) for w in whole)


def test_digest_changes_with_any_one_element():
    a = space()
    base = digest(a.mm, empty_mm(), a.memory)
    for name in ("page_mapcount", "folio_order", "page_content"):
        for i in range(getattr(a.memory, name).shape[0]):
            c = getattr(a.memory, name).copy()
            c[i] ^= 1
            assert digest(a.mm, empty_mm(), dataclasses.replace(a.memory, **{name: c})) != base, (name, i)
    pte = a.mm.pte.copy()
    pte[0, 511] ^= np.uint64(1 << 63)
    assert digest(dataclasses.replace(a.mm, pte=pte), empty_mm(), a.memory) != base
    # a field's values moved to another field, or two elements swapped, change it too
    c = a.memory.page_content.copy()
    c[[0, 1]] = c[[1, 0]]
    assert digest(a.mm, empty_mm(), dataclasses.replace(a.memory, page_content=c)) != base


def test_a_valid_space_is_frozen_and_validated_once(monkeypatch):
    s = space().validate()
    with pytest.raises(ValueError, match="read-only"):
        s.memory.page_mapcount[0] += 1
    calls = []
    monkeypatch.setattr(type(s.memory), "validate", lambda self: calls.append(1))
    s.validate()
    gpusim.fork(s, backend="cpu")
    assert calls == []
    fresh = dataclasses.replace(s, memory=dataclasses.replace(s.memory))
    fresh.validate()
    assert calls == [1]


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


def test_compiled_and_numpy_decoders_agree(monkeypatch):
    """Large arrays go through the compiled passes (kernels/scan.py), small ones through numpy: same answers."""
    from gpusim.engines import earlycopy
    from gpusim.kernels import flags, scan
    from gpusim.model import decode, state

    rng = np.random.default_rng(3)
    sp = gpusim.parse_layout(
        "normal*9 swap*5 migw migr devw devr zero pfn folio4:pin*2 none*484 thp thp:pin", "linux-6.18"
    )
    vals = np.concatenate([rng.integers(0, 2**63, 3000, dtype=np.int64).view(np.uint64), state.entries(sp.mm)[1]])
    vals[rng.integers(0, vals.size, 500)] = 0
    funcs = (decode.kinds, decode.holds_page, decode.page_pfns, decode.swap_slots, decode.names_page)
    small = [f(vals) for f in funcs]
    ents, maybe = state.entries(sp.mm), earlycopy.maybe_pinned_folios(sp.memory, 4)
    mixed = gpusim.parse_layout("vma:file file*5 vma:shmem shmem*4 vma normal*5 swap*2 migr")
    rss = [decode.rss_of(s.mm.pte, s.mm.pmd, s.memory) for s in (sp, mixed)]
    pfns = decode.page_pfns(sp.mm.pte)
    refs = (np.bincount(pfns, minlength=sp.memory.nr_pages), np.bincount(sp.memory.page_folio[pfns]))
    monkeypatch.setattr(flags, "COMPILED_FROM", 1)
    for f, want in zip(funcs, small):
        assert np.array_equal(f(vals), want), f.__name__
    assert all(np.array_equal(a, b) for a, b in zip(state.entries(sp.mm), ents))
    assert all(np.array_equal(decode.rss_of(s.mm.pte, s.mm.pmd, s.memory), r) for s, r in zip((sp, mixed), rss))
    assert rss[1].tolist() == [6, 5, 4, 2]
    got = scan.child_references(state.entries(sp.mm)[1], sp.memory.page_folio, sp.memory.nr_pages, sp.memory.nr_folios)
    assert np.array_equal(got[0], refs[0]) and np.array_equal(got[1][: len(refs[1])], refs[1])
    got = earlycopy.maybe_pinned_folios(sp.memory, 4)
    assert np.array_equal(got[0], maybe[0]) and got[1] == maybe[1] and maybe[0].any()
