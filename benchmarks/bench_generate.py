"""How fast the region generator builds address spaces, by backend (issue 16, item 3).

``python benchmarks/bench_generate.py [--sizes 1GiB,16GiB] [--kinds mixed,anon] [--backends reference,cpu,cuda]
[--repeat 3] [--json OUT]``

For each size and kind, the whole space is planned once and built by each backend (``reference``: numpy through the
one builder; ``cpu``: the compiled generator, a thread per table; ``cuda``: the same kernel on the GPU, building in
device memory, timed to the end of the kernel), best of ``--repeat``. Prints PTEs/s, the state's bytes per PTE
and each backend's time over the first one's; every build is checked against the first backend's, array by array
(a device build is copied back for the check, which is not timed). ``mixed`` holds pins scattered and in runs, THPs,
large folios, swap counts past SWAP_MAP_MAX, file and shmem; ``anon`` is dense 4 KiB anonymous memory; ``pinned``
the same with 25 % of its pages pinned.
"""

import argparse
import json
import time

import numpy as np

from gpusim.base.units import parse_size
from gpusim.inputs.regions import RegionSpace
from gpusim.jobs.sweep.spec import Region
from gpusim.kernels.fields import MEMORY_FIELDS


def region(**keys) -> dict:
    """A region's keys, the sweep files' defaults for those not given."""
    return Region(**keys).model_dump()


def regions(kind: str, size: int) -> list[dict]:
    """The regions of a workload kind: ``anon`` (dense 4 KiB anon), ``pinned`` (the same, 25 % pinned, scattered:
    the pinned target's workload) or ``mixed``."""
    if kind == "anon":
        return [region(size=size)]
    if kind == "pinned":
        return [region(size=size, pinned_fraction=0.25)]
    return [
        region(size=size // 2, pinned_fraction=0.25, thp_fraction=0.2, swap_fraction=0.1, swap_count_max=200),
        region(
            size=size // 4,
            folio_order=4,
            fill=0.7,
            pinned_fraction=0.25,
            pinned_placement="contiguous",
            pinned_regions=4,
        ),
        region(size=size // 8, backing="file"),
        region(size=size // 8, backing="shmem", shared=True),
    ]


def host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def arrays(space) -> dict:
    out = {n: getattr(space.memory, n) for n in MEMORY_FIELDS}
    out.update({f"mm.{n}": getattr(space.mm, n) for n in ("pte", "pmd", "table_index", "pmd_index", "rss")})
    return out


def build(space: RegionSpace, backend: str):
    """(seconds, the built space): the whole space, to the end of the device's work."""
    t0 = time.perf_counter()
    built = space.chunk(0, space.nr_rows, backend).space
    if backend == "cuda":
        import cupy

        cupy.cuda.Device().synchronize()
    return time.perf_counter() - t0, built


def run(size: int, kind: str, backends: list[str], repeat: int) -> list[dict]:
    space = RegionSpace(regions(kind, size), "linux-6.18", 7)
    rows, first = [], None
    for backend in backends:
        space.chunk(0, min(2, space.nr_rows), backend)  # compile (not timed)
        best, built = min((build(space, backend) for _ in range(repeat)), key=lambda x: x[0])
        got = {k: host(v) for k, v in arrays(built).items()}
        nbytes = sum(v.nbytes for k, v in got.items() if not k.startswith("mm.") or k == "mm.pte")
        if first is None:
            first, check = (best, got), "first"
        else:
            bad = [k for k, v in got.items() if v.dtype != first[1][k].dtype or not np.array_equal(v, first[1][k])]
            check = f"equal to {backends[0]}" if not bad else f"differs from {backends[0]}: {bad}"
        rows.append(
            {
                "size_bytes": size,
                "kind": kind,
                "backend": backend,
                "ptes": space.nr_ptes,
                "pages": space.nr_pages,
                "build_s": best,
                "ptes_per_s": space.nr_ptes / best,
                "state_bytes_per_pte": nbytes / max(1, space.nr_ptes),
                "time_over_first": best / first[0],
                "check": check,
            }
        )
        del built, got
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1GiB,4GiB")
    ap.add_argument("--kinds", default="mixed,anon")
    ap.add_argument("--backends", default="reference,cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    out = []
    for size in [parse_size(s) for s in a.sizes.split(",")]:
        for kind in a.kinds.split(","):
            for row in run(size, kind, a.backends.split(","), a.repeat):
                out.append(row)
                print(
                    f"{row['size_bytes'] >> 20:>9} MiB {kind:5} {row['backend']:9} {row['build_s'] * 1e3:9.2f} ms "
                    f"{row['ptes_per_s'] / 1e9:7.3f} G PTEs/s {row['state_bytes_per_pte']:5.1f} B/PTE "
                    f"x{row['time_over_first']:.2f}  {row['check']}",
                    flush=True,
                )
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)
    return 0 if all(not r["check"].startswith("differs") for r in out) else 1


if __name__ == "__main__":
    raise SystemExit(main())
