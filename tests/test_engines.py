"""Differential tests: every fast engine gives the reference's outcome, counts, child rss and state digest."""

import pytest
from budget import budget
from conftest import SMALL
from differential import compare
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import VARIANTS, injections, layouts, oracles

import gpusim
from gpusim.engines.fast import ForkJob
from gpusim.inputs.catalogue import SCENARIOS
from gpusim.kernels import pte as P
from gpusim.kernels.flags import (
    BACKING_ANON,
    FOLIO_ANON,
    FOLIO_SWAPBACKED,
    PAGE_ANON_EXCLUSIVE,
    VM_MAYREAD,
    VM_MAYWRITE,
    VM_READ,
    VM_WRITE,
)
from gpusim.kernels.rules import MODE_CLASSIFY
from gpusim.model.builder import SpaceBuilder
from gpusim.model.decode import with_offsets
from gpusim.model.oracle import InjectionPlan, LockBreakOracle
from gpusim.model.variants import get_variant

# Every test here runs on each fast engine: the ``backend`` fixture (conftest.py).


SCENARIO_CASES = [(sid, v) for sid in SCENARIOS for v in VARIANTS]


@pytest.mark.parametrize("sid,variant", SCENARIO_CASES, ids=[f"{s}-{v}" for s, v in SCENARIO_CASES])
def test_scenario_catalogue(backend, sid, variant):
    s = SCENARIOS[sid]
    compare(s.layout, variant, s.oracle, s.inject, backend)


@st.composite
def cases(draw):
    layout, width = draw(layouts(max_width=2000))
    frames = (draw(st.sampled_from(["address", "random", "runs:2", "runs:7"])), draw(st.integers(0, 3)))
    return layout, draw(oracles()), draw(injections(width)), frames


def small_enough(backend, layout):
    return backend != "cudasim" or gpusim.parse_layout(layout).nr_ptes <= SMALL


@pytest.mark.parametrize("variant", VARIANTS)
def test_random_layouts(backend, variant):
    @budget(60, backend)
    @given(case=cases())
    def check(case):
        layout, oracle, inject, frames = case
        assume(small_enough(backend, layout))
        compare(layout, variant, oracle, inject, backend, frames)

    check()


@pytest.mark.cudasim_subset  # every variant's tables on cudasim: test_random_layouts and the scenario catalogue
@pytest.mark.parametrize("variant", VARIANTS)
def test_mostly_fast_tables(backend, variant):
    """Dense layouts where most tables take the fast path and a few pinned or swapped pages take the host."""

    @budget(30, backend)  # cudasim: up to three tables (it runs the CUDA launch code in Python, entry by entry)
    @given(oracle=oracles(), tables=st.integers(2, 3 if backend == "cudasim" else 6), data=st.data())
    def check(oracle, tables, data):
        mostly_fast(backend, variant, oracle, tables, data)

    check()


def mostly_fast(backend, variant, oracle, tables, data):
    body = []
    for _ in range(tables):
        body.append(
            data.draw(
                st.sampled_from(
                    [
                        "normal*512",
                        "none*512",
                        "folio512",
                        "folio16*32",
                        "swap*512",
                        "normal*100 pinned normal*411",
                        "zero*512",
                        "migr*512",
                        "normal*511 swap:cnt=62",
                        "folio64:pin normal*448",
                        "normal*200 none*312",
                    ]
                )
            )
        )
    assume(small_enough(backend, " ".join(body)))
    compare(" ".join(body), variant, oracle, (), backend)


# Where the walk's blocks of plain entries (gpusim.kernels.table.plain_block) start, stop and fall back: VMAs and
# calls that start inside a block, shared, file, shmem, read-only and clean mappings, a refcount at the pin
# heuristic's edge and a pinned page inside blocks (of an mm that has pinned), a hole and a dontcopy VMA.
PLAIN_BLOCK_LAYOUTS = [
    "normal*40 vma:shared normal*100 vma:file file*200 vma:shmem:shared shmem*172 vma normal*512",
    "normal*64 normal:ref=1023 normal*447 pinned normal*511",
    "normal:ro*64 normal:clean*64 normal*384 vma:ro normal*512",
    "normal*31 none normal*480 vma:exec normal*100 vma:dontcopy normal*412 vma normal*512",
]


@pytest.mark.cudasim_subset(oracle=("every:3",), frames=(("address", 0),))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("oracle", ["every:3", "bern:0.3:5"])  # ("never": every other test)
@pytest.mark.parametrize("frames", [("address", 0), ("random", 3)])
def test_plain_blocks_equal_the_reference(backend, variant, oracle, frames):
    """The walk's blocks of plain entries give what the reference's entry-by-entry walk gives: counts (the
    lock-break cadence and frame breaks among them), rss, digest; frames out of address order break blocks."""
    for layout in PLAIN_BLOCK_LAYOUTS:
        compare(layout, variant, oracle, (), backend, frames)


@pytest.mark.parametrize("variant", VARIANTS)
def test_keyed_injection_in_a_later_table(backend, variant):
    layout = "normal*512 normal*100 pinned normal*411 normal*512"
    compare(layout, variant, "every:3", ["fail@copy#1@512"], backend)
    compare(layout, variant, "always", ["@LB#2@512: zap(5); pin(1100); write(700)"], backend)
    compare(layout, variant, "never", ["fail@ptetable#1@1024"], backend)


@pytest.mark.parametrize("variant", VARIANTS)
def test_special_entries_in_cow_mappings(backend, variant):
    """Writable special entries (VM_MIXEDMAP / VM_PFNMAP) of private mappings: write-protected in both, no page
    touched; a case the random layouts reach rarely, held on every backend."""
    compare("vma:mixedmap pfn*8 normal*8 zero*4 none*492 vma:pfnmap pfn*16", variant, "never", (), backend)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shared_objects_across_tables(backend, variant):
    """Folios and slots referenced from several tables: atomics on the fast path, the host where order matters."""
    compare("normal*500 folio32 normal*480 folio64:nonex normal*448", variant, "every:5", (), backend)
    compare("swap:cnt=20*8 none*504 swap:cnt=40*8", variant, "never", (), backend)


@pytest.mark.cudasim_subset(chunk=(1, 3))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunking_equals_one_launch(backend, variant, chunk):
    layout = "normal*300 pinned normal*211 folio512 swap*100 none*412 thp:pin normal*600 migw folio16:pin"
    space = gpusim.parse_layout(layout, variant)
    whole = gpusim.fork(space, variant, backend=backend, oracle="every:4")
    parts = gpusim.fork(space, variant, backend=backend, oracle="every:4", chunk_tables=chunk)
    assert parts.digest == whole.digest and parts.counts == whole.counts and parts.outcome == whole.outcome
    ref = gpusim.fork(space, variant, backend="reference", oracle="every:4")
    assert whole.digest == ref.digest


BATCH = [
    "normal*300 pinned normal*211 folio512",
    "thp:pin swap*20 none*492 folio16:pin normal*496",
    "normal*1024",
    "migw migr devw zero file shmem:pin normal*506 mm:has_pinned=0",
    "none*512 swap:cnt=62",
]


@pytest.mark.cudasim_subset(oracle=("bern:0.5:7",))  # the lock breaks' cases; never's: the scenario catalogue
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("oracle", ["never", "bern:0.5:7"])
def test_batch_equals_one_at_a_time(backend, variant, oracle):
    """A batch is one launch over several forks (fork_seq 3, 4, ...): each result equals forking alone, on the
    reference (and, on the CPU engine, on the batch's own engine too; cudasim's single forks are the other tests')."""
    spaces = [gpusim.parse_layout(lay, variant) for lay in BATCH]
    batch = gpusim.fork_batch(spaces, variant, backend=backend, oracle=oracle, fork_seq0=3)
    for i, (space, got) in enumerate(zip(spaces, batch)):
        ref = gpusim.fork(space, variant, backend="reference", oracle=oracle, fork_seq=3 + i)
        alone = ref if backend == "cudasim" else gpusim.fork(space, variant, backend, oracle=oracle, fork_seq=3 + i)
        assert got.digest == alone.digest == ref.digest, (variant, i)
        assert got.counts == alone.counts == ref.counts and got.outcome == ref.outcome
        if got.outcome != "oops":
            assert got.invariants.ok, got.invariants.violations
    chunked = gpusim.fork_batch(spaces, variant, backend=backend, oracle=oracle, fork_seq0=3, chunk_tables=2)
    assert [r.digest for r in chunked] == [r.digest for r in batch]


@pytest.mark.parametrize("variant", VARIANTS)
def test_keyed_failure_that_never_fires_is_unfired(backend, variant):
    """``fail@copy#5`` where the call makes one early copy never fires and is reported as unfired, on every engine
    as on the reference; ``fail@copy#1`` fires (where the variant copies early at all) and is not."""
    layout = "normal*100 pinned normal*411"
    ref, _ = compare(layout, variant, "never", ["fail@copy#5"], backend)
    assert ref.unfired == ["fail@copy#5"] and ref.outcome == "ok"
    ref, _ = compare(layout, variant, "never", ["fail@copy#1", "fail@copy#5"], backend)
    copies = variant != "linux-5.8"
    assert ref.outcome == ("enomem" if copies else "ok")
    assert ref.unfired == (["fail@copy#5"] if copies else ["fail@copy#1", "fail@copy#5"])


def page_mapped_twice(variant: str):
    """One anon-exclusive page mapped from two tables (refcount and mapcount 2): a state the kernel does not make,
    which a given state may hold."""
    b = SpaceBuilder(variant, "created")
    b.add_vmas([0], [1024], [VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE], [BACKING_ANON], [True])
    _, pfn = b.add_folios(1, 0, FOLIO_ANON | FOLIO_SWAPBACKED, 2, PAGE_ANON_EXCLUSIVE, 2)
    b.add_entries([0, 512], with_offsets(P.mk_pte(0, True, True, True, False), pfn)[0])
    return b.freeze(True).validate()


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_exclusive_page_mapped_from_two_tables_goes_to_the_slow_path(backend, variant):
    """linux-6.18 clears the page's anon-exclusive flag at its first share only, so its tables' order matters: the
    classifier sends both to the slow path (where the fast path would race on the flag, which no sequential run
    shows), and the fork equals the reference's."""
    space = page_mapped_twice(variant)
    job = ForkJob(space, variant, LockBreakOracle.parse("never"), InjectionPlan())
    needs, _ = job.launch(gpusim.base.backend.kernels(backend), MODE_CLASSIFY, job.rows, None)
    assert list(needs) == [get_variant(variant).anon_exclusive] * 2
    ref = gpusim.fork(space, variant, backend="reference")
    got = gpusim.fork(space, variant, backend=backend)
    assert (got.digest, got.counts) == (ref.digest, ref.counts) and got.invariants.ok
