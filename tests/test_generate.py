"""The compiled region generator (issue 16, item 3): a thread per table builds what the numpy reference builds;
a space it builds in device memory forks there (on a GPU).

:meth:`gpusim.inputs.regions.RegionSpace.generate` (CPU ``prange``, CUDA kernels under the simulator here and on a GPU
in device memory) must give the arrays :meth:`~gpusim.inputs.regions.RegionSpace.reference_chunk` gives through the one
builder, field by field, dtype and shape included, for every chunking of the space: the catalogue of region kinds
of the stream tests (pins scattered and in runs, swap counts past SWAP_MAP_MAX, THPs, large folios, file and shmem,
VM_DONTCOPY / VM_WIPEONFORK) and random ones.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from budget import budget
from hypothesis import given
from hypothesis import strategies as st
from test_stream import BASE, REGIONS, region_st

import gpusim
from gpusim.base import backend as B
from gpusim.base.backend import cuda_usable
from gpusim.inputs.regions import RegionSpace
from gpusim.kernels.fields import MEMORY_FIELDS, MM_FIELDS
from gpusim.model.variants import EAGER_VARIANTS as VARIANTS

# the stream tests' catalogue and whole 2 MiB extents, half of them THPs (scattered and contiguous pins)
CATALOGUE = REGIONS + [
    dict(BASE, size=8 << 20, vmas=1, thp_fraction=0.5),
    dict(BASE, size=8 << 20, vmas=1, thp_fraction=0.5, pinned_placement="contiguous", pinned_regions=2),
]


def differences(a, b) -> list[str]:
    """The fields in which two chunks differ (values, dtype or shape; where their rows lie in the space)."""
    out = [f"memory.{n}" for n in MEMORY_FIELDS if not same(getattr(a.space.memory, n), getattr(b.space.memory, n))]
    out += [f"mm.{n}" for n in MM_FIELDS if not same(getattr(a.space.mm, n), getattr(b.space.mm, n))]
    for name in ("has_pinned", "on_swapoff_list"):
        if getattr(a.space.mm, name) != getattr(b.space.mm, name):
            out.append(f"mm.{name}")
    if a.space.memory.next_content != b.space.memory.next_content:
        out.append("next_content")
    if (a.lo, a.hi, a.page_base, a.folio_base, a.slot_base) != (b.lo, b.hi, b.page_base, b.folio_base, b.slot_base):
        out.append("chunk bases")
    return out


def same(x, y) -> bool:
    return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(B.to_host(x), B.to_host(y))


def check_chunkings(space: RegionSpace, backend: str, rows_list) -> None:
    for rows in rows_list:
        rows = max(1, rows)
        for lo in range(0, max(1, space.nr_rows), rows):  # as RegionSpace.chunks cuts it: one chunk at least
            hi = min(space.nr_rows, lo + rows)
            assert differences(space.generate(lo, hi, backend), space.reference_chunk(lo, hi)) == [], (rows, lo)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_compiled_generator_builds_what_the_reference_builds(variant, backend):
    space = RegionSpace(CATALOGUE, variant, 11)
    whole = space.generate(0, space.nr_rows, backend).space
    m = whole.memory
    # the catalogue meets every branch of the generator
    assert len(whole.mm.pmd) and (m.folio_order[m.folio_order < 9] > 0).any()
    assert m.folio_pincount.any() and (m.folio_true_pins > 0).sum() > m.folio_pincount.astype(bool).sum()
    assert (m.swap_levels > 0).any() and (m.swap_count == 1).any()
    assert space.reference_chunk(0, space.nr_rows).space.validate().mm.rss.all()  # which the generator equals:
    check_chunkings(space, backend, (space.nr_rows, 3, 1))


def test_the_comparison_sees_a_changed_draw():
    """The equality above is not vacuous: another seed, or one element changed, is a difference."""
    a = RegionSpace(CATALOGUE, "linux-6.18", 11)
    b = RegionSpace(CATALOGUE, "linux-6.18", 12)
    assert "mm.pte" in differences(a.generate(0, a.nr_rows), b.generate(0, b.nr_rows))
    got, want = a.generate(0, a.nr_rows), a.reference_chunk(0, a.nr_rows)
    got.space.memory.swap_levels[-1] += 1
    assert differences(got, want) == ["memory.swap_levels"]


@budget(30)
@given(
    regions=st.lists(region_st, min_size=1, max_size=3),
    variant=st.sampled_from(list(VARIANTS)),
    seed=st.integers(0, 1000),
    rows=st.integers(1, 9),
)
def test_random_regions_generate_as_the_reference_builds(regions, variant, seed, rows):
    space = RegionSpace(regions, variant, seed)
    check_chunkings(space, "cpu", (space.nr_rows, rows))


@budget(6)
@given(regions=st.lists(region_st.map(lambda r: dict(r, size=min(r["size"], 1 << 20))), min_size=1, max_size=2))
def test_random_regions_generate_on_cudasim_too(regions):
    space = RegionSpace(regions, "linux-6.18", 3)
    check_chunkings(space, "cudasim", (space.nr_rows,))


def test_a_region_without_pins_swap_or_thps():
    space = RegionSpace([dict(BASE, pinned_fraction=0, swap_fraction=0, thp_fraction=0, fill=1.0)], "linux-5.10", 0)
    check_chunkings(space, "cpu", (space.nr_rows, 2))
    assert not space.generate(0, space.nr_rows).space.mm.has_pinned


def test_the_generator_benchmark_checks_each_backend_against_the_first(tmp_path):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_generate.py"
    spec = importlib.util.spec_from_file_location("bench_generate", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "g.json"
    assert bench.main(["--sizes", "4MiB", "--backends", "reference,cpu", "--repeat", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["kind"], r["backend"], r["check"]) for r in rows] == [
        ("mixed", "reference", "first"),
        ("mixed", "cpu", "equal to reference"),
        ("anon", "reference", "first"),
        ("anon", "cpu", "equal to reference"),
    ]
    assert all(r["ptes"] == 1024 and r["ptes_per_s"] > 0 for r in rows if r["kind"] == "anon")


@pytest.mark.skipif(not cuda_usable(), reason="no usable NVIDIA GPU with CuPy on this machine")
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_space_generated_in_cuda_device_memory_forks_there_as_on_the_cpu(variant):
    space = RegionSpace(CATALOGUE, variant, 11)
    b = gpusim.fork(space.whole("cuda"), variant, backend="cuda", check=False)
    a = gpusim.fork(space.whole("cpu"), variant, backend="cpu", check=False)
    assert B.on_device(b.memory.page_folio) and B.on_device(b.child.pte)
    assert (b.digest, b.counts, b.outcome, b.child_rss) == (a.digest, a.counts, a.outcome, a.child_rss)


def test_a_fork_of_device_memory_refuses_what_needs_the_host(monkeypatch):
    """Checking invariants, a write phase and another backend read the states on the host: refused in one line."""
    space = RegionSpace([dict(BASE, size=2 << 20)], "linux-6.18", 0).whole()
    monkeypatch.setattr(B, "on_device", lambda a: True)  # as if its arrays were CuPy's
    with pytest.raises(ValueError, match="forks on the cuda backend, not 'cpu'"):
        gpusim.fork(space, "linux-6.18", backend="cpu", check=False)
    with pytest.raises(ValueError, match="pass check=False and no writes"):
        gpusim.fork(space, "linux-6.18", backend="cuda")
    with pytest.raises(ValueError, match="pass check=False and no writes"):
        gpusim.fork(space, "linux-6.18", backend="cuda", check=False, writes="parent:all")
    with pytest.raises(ValueError, match="fork_batch takes address spaces in host memory"):
        gpusim.fork_batch([space], "linux-6.18", backend="cpu")


class OnCard(np.ndarray):
    """A numpy array standing for a CuPy one: the device-resident path's branches run here with numpy's semantics
    (the real CuPy run is the ``resident`` step of ``benchmarks/gpu_check.py``)."""


class FakeCupy:
    """numpy's functions, their array results marked :class:`OnCard`."""

    def __getattr__(self, name):
        fn = getattr(np, name)

        def on_card(*args, **kw):
            out = fn(*args, **kw)
            return out.view(OnCard) if isinstance(out, np.ndarray) else out

        return on_card if callable(fn) else fn


@pytest.mark.parametrize("variant", ["linux-5.10", "linux-6.18", "xu-v1"])
def test_the_device_resident_path_with_numpy_standing_for_cupy(monkeypatch, variant):
    fake, kernels = FakeCupy(), B.kernels
    monkeypatch.setattr(B, "on_device", lambda a: isinstance(a, OnCard))
    monkeypatch.setattr(B, "array_module", lambda a: fake if isinstance(a, OnCard) else np)
    monkeypatch.setattr(B, "array_module_for", lambda name: fake if name == "cuda" else np)
    monkeypatch.setattr(B, "to_host", lambda a: np.array(a))  # a copy, as from the device
    monkeypatch.setattr(B, "kernels", lambda name: kernels("cudasim" if name == "cuda" else name))
    space = RegionSpace(CATALOGUE, variant, 11)
    dev = space.whole("cuda")
    assert isinstance(dev.mm.pte, OnCard) and isinstance(dev.memory.page_folio, OnCard)
    b = gpusim.fork(dev, variant, backend="cuda", check=False)
    a = gpusim.fork(space.whole("cpu"), variant, backend="cpu", check=False)
    assert isinstance(b.memory.page_folio, OnCard) and isinstance(b.child.pte, OnCard) and b.counts["installs"]
    assert (b.digest, b.counts, b.outcome, b.child_rss) == (a.digest, a.counts, a.outcome, a.child_rss)
