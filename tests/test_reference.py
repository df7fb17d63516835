"""The reference engine beyond the catalogue: VMA rules, many tables, call-keyed injections, window events,
non-present entries, special PTEs, shared mappings, hwpoison, teardown of early copies."""

import pytest

import gpusim
from gpusim.kernels import pte as P
from gpusim.kernels.flags import FOLIO_FREED, PAGE_ANON_EXCLUSIVE
from gpusim.model.state import pte_at

ALL = ("linux-5.8", "xu-v1", "xu-v1-oleg", "linux-5.10", "linux-6.18")


def fork(layout, variant="linux-6.18", **kw):
    r = gpusim.fork(gpusim.parse_layout(layout, variant), variant, backend="reference", **kw)
    if r.outcome != "oops":
        assert r.invariants.ok, r.invariants.violations
    return r


def test_dontcopy_wipeonfork_noanon_hugetlb():
    r = fork("vma:dontcopy normal*8 vma:wipeonfork normal*8 vma:noanon file*8 vma:hugetlb none*8 vma normal*8")
    c = r.counts
    assert r.child.vma_start.tolist() == [8, 16, 24, 32]  # the DONTCOPY VMA has no child VMA
    assert (c["vma.skip"], c["vma.dup"], c["vma.copy"], c["hugetlb_skipped"]) == (1, 4, 1, 1)
    assert c["table.call"] == 1 and c["shared"] == 8
    assert all(pte_at(r.child, a) == 0 for a in range(0, 32))
    assert not bool(r.child.vma_anon_vma[0])  # WIPEONFORK child has no anon_vma


def test_pfnmap_copied_without_anon_vma():
    r = fork("vma:pfnmap:noanon pfn*4 pfn:ro")
    assert r.counts["pte.special"] == 5 and r.counts["shared"] == 0
    assert r.child_rss == {"anon": 0, "file": 0, "shmem": 0, "swapents": 0}
    for a in range(4):
        assert not P.pte_write(pte_at(r.parent.mm, a)) and not P.pte_write(pte_at(r.child, a))
        assert P.pte_pfn(pte_at(r.child, a)) == P.pte_pfn(pte_at(r.parent.mm, a))


def test_shared_mapping_keeps_write_and_cleans_child():
    r = fork("vma:shared:shmem shmem:clean shmem")
    for a in range(2):
        assert pte_at(r.parent.mm, a) == gpusim.parse_layout("vma:shared:shmem shmem:clean shmem").mm.pte[0, a]
        assert not P.pte_dirty(pte_at(r.child, a)) and not P.pte_young(pte_at(r.child, a))
    assert r.child_rss["shmem"] == 2


@pytest.mark.parametrize("variant", ALL)
def test_two_tables_two_calls(variant):
    r = fork("normal*700 pinned normal*323", variant)
    assert r.counts["table.call"] == 2 and r.counts["table.alloc"] == 2
    assert r.counts["installs"] == (0 if variant == "linux-5.8" else 1)


def test_call_keyed_injection_only_hits_that_call():
    r = fork("pinned normal*511 pinned normal*511", inject=["fail@copy#1@512"])
    assert r.outcome == "enomem" and r.enomem == {"call_start": 512, "point": "copy", "occurrence": 1}
    # the early copy of the first call was installed, then freed by the teardown
    assert r.counts["installs"] == 1 and r.counts["teardown_frees"] == 1
    assert r.memory.folio_flags[-1] & FOLIO_FREED and int(r.memory.folio_refcount[-1]) == 0


def test_unkeyed_injection_applies_to_every_call():
    r = fork("pinned normal*511 pinned normal*511", inject=["@EC#1: write(0); write(512)"])
    assert r.unfired == [] and r.counts["events_applied"] == 4  # fired once per call


@pytest.mark.parametrize("variant,expect_new", [("xu-v1-oleg", False), ("linux-5.10", True), ("linux-6.18", True)])
def test_write_in_ec_window_copy_moment(variant, expect_new):
    """xu copies in page_duplicate, before the window; 5.10/6.18 copy at the retry, after it (spec 5.3)."""
    space = gpusim.parse_layout("normal*4 pinned normal*4", variant)
    r = fork("normal*4 pinned normal*4", variant, inject=["@EC#1: write(4)"])
    q = P.pte_pfn(pte_at(r.child, 4))
    src = P.pte_pfn(pte_at(r.parent.mm, 4))
    assert (int(r.memory.page_content[q]) == int(r.memory.page_content[src])) == expect_new
    assert (int(r.memory.page_content[q]) == int(space.memory.page_content[src])) != expect_new


@pytest.mark.parametrize(
    "variant,allocs,passes", [("xu-v1", 2, 3), ("xu-v1-oleg", 2, 3), ("linux-5.10", 1, 2), ("linux-6.18", 1, 2)]
)
def test_touch_in_ec_window(variant, allocs, passes):
    """touch on a clean PTE makes xu's pte_same fail: the copy is dropped and the index re-tested."""
    r = fork("normal*4 pinned:clean normal*4", variant, inject=["@EC#1: touch(4)"])
    c = r.counts
    assert (c["allocations"], c["passes"], c["installs"]) == (allocs, passes, 1)
    assert c["unused_frees"] == allocs - 1


@pytest.mark.parametrize("variant", ["xu-v1-oleg", "linux-5.10", "linux-6.18"])
def test_reclaim_in_ec_window(variant):
    r = fork("normal*4 pinned normal*4", variant, inject=["@EC#1: reclaim(4)"])
    assert P.is_swap_entry(pte_at(r.parent.mm, 4)) and P.is_swap_entry(pte_at(r.child, 4))
    assert r.counts["installs"] == 0 and r.child_rss["swapents"] == 1
    assert int(r.memory.swap_count[-1]) == 2


@pytest.mark.parametrize("variant", ALL)
def test_migration_downgrade(variant):
    r = fork("migw migr normal", variant)
    for a in (0, 1):
        assert P.is_migration_entry(pte_at(r.parent.mm, a)) and not P.is_writable_migration_entry(pte_at(r.child, a))
    assert not P.is_writable_migration_entry(pte_at(r.parent.mm, 0))
    assert r.child_rss["anon"] == 3 and r.counts["pte.migration"] == 2


def test_read_exclusive_migration_6_18():
    r = fork("migr:excl")
    assert pte_at(r.parent.mm, 0) == P.mk_migration_pte(0, False, False) == pte_at(r.child, 0)


@pytest.mark.parametrize("variant", ALL)
def test_device_private(variant):
    r = fork("devw devr:nonex", variant)
    assert not P.is_writable_device_private_entry(pte_at(r.parent.mm, 0))
    assert int(r.memory.folio_refcount[0]) == 2 and int(r.memory.page_mapcount[0]) == 2
    assert r.counts["pte.devpriv"] == 2 and r.counts["installs"] == 0
    assert bool(r.memory.page_flags[0] & PAGE_ANON_EXCLUSIVE) == (variant != "linux-6.18")


def test_hwpoison_6_18_fails_the_fork():
    r = fork("normal*4 pinned:hwpoison normal*4")
    assert r.outcome == "enomem" and r.enomem["point"] == "hwpoison"
    assert r.counts["allocations"] == 1 and r.counts["unused_frees"] == 1  # the prealloc is freed


def test_has_pinned_clear_means_no_early_copy():
    for v in ALL:
        r = fork("thp:pin pinned*4 folio4:pin mm:has_pinned=0", v)
        assert r.counts["installs"] == 0 and r.counts["pmd.split"] == 0


def test_6_18_batch_merges_write_bits():
    r = fork("folio4:ro normal folio4")
    assert r.counts["batch.start"] == 2 and r.counts["batch.pte"] == 8
    r = fork("vma:shared:shmem folio4 vma:shared normal")  # not COW: write kept, merged over the batch
    assert all(P.pte_write(pte_at(r.child, a)) for a in range(4))


def test_upper_level_tables_counted_once_per_region():
    r = fork("normal gap*262143 normal")  # tables 0 and 512: two PMD tables, one PUD table
    assert r.counts["table.alloc"] == 2 and r.counts["table.upper_alloc"] == 3


def test_swap_continuation_levels():
    r = fork("swap:cnt=8063:lv=1 swap:cnt=62 swap:cnt=7999:lv=1")
    assert r.memory.swap_levels.tolist() == [2, 1, 1]
    assert r.memory.swap_count.tolist() == [8064, 63, 8000]
    assert r.counts["swapcont_atomic"] == 2 and r.counts["restart.sc"] == 0


def test_ignored_events_reported():
    r = fork("normal*4 pinned normal*4", inject=["@EC#1: reclaim(1000); unpin(0); pin(7)"])
    assert r.ignored_events == ["reclaim(1000)", "unpin(0)"] and r.memory.folio_true_pins[-2] >= 0
    assert r.parent.mm.has_pinned


def test_oops_is_reported_not_raised():
    r = gpusim.fork(
        gpusim.parse_layout("pinned none*31 normal*480", "xu-v1"), "xu-v1", backend="reference", oracle="always"
    )
    assert r.outcome == "oops" and not r.invariants.checked
    assert r.oops == {"function": "page_duplicate", "addr": 32, "reason": "OLD_PAGE_NULL", "call_start": 0}
