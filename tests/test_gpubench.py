"""The device-resident bench: its forks equal the CPU engine's, and its full-size check catches a wrong value."""

import numpy as np
import pytest

from gpusim.jobs.gpubench import DenseForks, bench_resident, check_against_cpu, traffic_bytes_per_pte
from gpusim.model.variants import EAGER_VARIANTS as VARIANTS


def test_resident_forks_equal_cpu_engine(backend):
    rep = bench_resident([1 << 21], backend, "linux-6.18", 1, batch=3)
    assert [(r["forks"], r["check"]) for r in rep["rows"]] == [
        (1, "equal to the CPU engine"),
        (3, "equal to the CPU engine"),
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_resident_fork_equals_api_fork(variant):
    """The resident job forks exactly what gpusim.fork forks (same entries, refcounts, mapcounts, flags)."""
    import gpusim
    from gpusim.inputs.workloads import dense_anon

    job = DenseForks(1024, 1, variant)
    job.build()
    needs, _ = job.launch()
    r = gpusim.fork(dense_anon(1024), variant, backend="reference")
    assert not needs.any()
    assert np.array_equal(job.ppte, r.parent.mm.pte) and np.array_equal(job.cpte, r.child.pte)
    for f in ("folio_refcount", "page_mapcount", "page_flags"):
        assert np.array_equal(job.mem[f], getattr(r.memory, f)), f


@pytest.mark.parametrize("where", ["ppte", "cpte", "page_mapcount", "page_flags", "counts"])
def test_check_catches_one_wrong_value(where):
    job = DenseForks(2048, 2)
    _, (needs, counts) = job.timed(1)
    assert check_against_cpu(job, needs, counts, "linux-6.18") == []
    if where == "counts":
        counts[5, 0] += 1
    elif where in ("ppte", "cpte"):
        getattr(job, where)[7, 300] ^= np.uint64(1 << 13)  # one pfn bit
    else:
        job.mem[where][4000] += 1
    problems = check_against_cpu(job, needs, counts, "linux-6.18")
    assert len(problems) == 1 and problems[0].startswith(where)


def test_traffic_model():
    assert traffic_bytes_per_pte() == 52  # 3 PTE moves of 8 bytes + the page and folio fields touched


def test_streamed_fork_is_checked_chunk_by_chunk(backend):
    """A space forked in chunks is checked per chunk and in its summed counts; a chunk size that does not divide
    the space is refused."""
    from gpusim.jobs.gpubench import bench_streamed

    r = bench_streamed(4096, 1024, "linux-6.18", backend)
    assert (r["chunks"], r["check"]) == (4, "equal to the CPU engine")
    assert r["build_and_fork_s"] == r["build_s"] + r["fork_s"] + r["reduce_s"]
    with pytest.raises(ValueError, match="multiple"):
        bench_streamed(4096, 1000, "linux-6.18", backend)
