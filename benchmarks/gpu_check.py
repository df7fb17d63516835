"""One call on a lent GPU machine: install, check the cuda engine against the CPU engine, and measure it.

Run from the repository root: ``python3 benchmarks/gpu_check.py OUTDIR [--quick]``. Every step runs in a
subprocess with its own time limit, logs to ``OUTDIR/<step>.log`` (JSON results to ``OUTDIR/<step>.json``), and a
failing step does not stop the next. The last lines printed are a summary. Steps, most valuable first:

1. ``smoke``: environment (GPU, numba, numba-cuda, CuPy versions) and one small fork on cuda equal to cpu.
2. ``bench``: ``gpusim bench --backend cuda`` on device-resident state from 1 GiB to 1 TiB (268 M PTEs), a batch of
   1 GiB forks, each checked against the CPU engine at full size (plain launches, and up to 256 M PTEs CUDA graph
   replays too), the kernels' registers, beside this machine's kernel fork times.
3. ``stream``: 64 TiB (16 G PTEs) of dense anon generated and forked on the card in chunks, every chunk checked
   (:func:`gpusim.jobs.gpubench.bench_streamed`).
4. ``shapes``: threads per table, tables per block and register caps of the block kernel, at 1 TiB, checked.
5. ``tests``: the differential test suite's ``cuda`` parametrisation (catalogue and hypothesis).
6. ``pinned``: 25 %-pinned anon memory (scattered and contiguous pins) forked by ``gpusim.fork`` on cuda and on cpu
   (the slow path's CUDA kernels: issue 11), same digest, outcome and counts, early copies per second on each.
7. ``equal``: ``gpusim.fork`` through host memory on cuda and on cpu, same digest, outcome and counts, at full size
   (dense anon with and without pinned pages, two variants).
8. ``writes``: the write phase after the fork (issue 15: its CUDA kernels) on cuda and on cpu, 1 and 16 GiB with 2 %
   pinned, equal (counts, DMA view, digest of the states after it) and timed on each.
9. ``generate``: the region generator's CUDA kernel (issue 16, item 3) builds mixed workloads (pins scattered and in
   runs, THPs, large folios, swap past SWAP_MAP_MAX, file and shmem) and dense anon of 1 GiB to 256 GiB in device
   memory: every array equal to the CPU generator's, both timed (``benchmarks/bench_generate.py``).
10. ``resident``: mixed workloads (1 and 16 GiB, three variants) and the pinned target's workload (1 TiB, 268 M
    PTEs, 25 % pinned) generated in device memory and forked there by ``gpusim.fork`` (``check=False``; the digest
    reduced on the card), equal to the CPU engine's fork of the same space (digest, counts, outcome, rss), timed.
11. ``sweep``: the same sweep of generated workloads (sizes x 25 % pins x THPs x swap x two variants) run by
    ``gpusim sweep`` on cuda and on cpu (one worker per core), end to end: the forks' digests equal, the walls'
    ratio (the GPU sweep target).
12. ``pinned_big``: the ``pinned`` step at 1 TiB (268 M PTEs, 25 % pinned: the pinned target's size), through host
    memory.
13. ``launch``: the time of the kernel calls inside ``gpusim.fork`` (one table, 1 GiB; ``benchmarks/bench_launch.py``).
14. ``cpu``: ``gpusim bench --backend cpu --vs-kernel`` on this machine's cores.
"""

import json
import os
import subprocess
import sys
import time

OUT = sys.argv[1] if len(sys.argv) > 1 else "gpu-out"
QUICK = "--quick" in sys.argv
# whole-script budget in seconds (--deadline=N): a step gets what is left of it, and is skipped under 20 s
DEADLINE = next((float(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--deadline=")), 1e9)
T0 = time.time()
os.makedirs(OUT, exist_ok=True)
PY = sys.executable

SMOKE = r"""
import json, subprocess, numba, numpy
print(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem",
                      "--format=csv"], capture_output=True, text=True).stdout)
import cupy
from importlib.metadata import version
print({p: version(p) for p in ("numba", "numba-cuda", "numpy") if p}, "cupy", cupy.__version__)
import gpusim
from gpusim.inputs.workloads import dense_anon
from gpusim.base.backend import cuda_usable
print("cuda usable:", cuda_usable())
for pe in (0, 700):
    s = dense_anon(8192, pin_every=pe)
    a = gpusim.fork(s, "linux-6.18", backend="cpu")
    b = gpusim.fork(s, "linux-6.18", backend="cuda")
    print("smoke pin_every", pe, "equal:", a.digest == b.digest and a.counts == b.counts, "invariants", b.invariants.ok)
    assert a.digest == b.digest and a.counts == b.counts and b.invariants.ok
"""

EQUAL = r"""
import json, sys, time
import gpusim
from gpusim.inputs.workloads import dense_anon
for backend in ("cpu", "cuda"):  # compile every kernel, the slow path's too, before anything is timed
    gpusim.fork(dense_anon(4096, pin_every=700), "linux-6.18", backend=backend, check=False)
out = []
for pages, pin_every, variant in %s:
    t0 = time.perf_counter()
    s = dense_anon(pages, pin_every=pin_every)
    a = gpusim.fork(s, variant, backend="cpu", check=False)
    b = gpusim.fork(s, variant, backend="cuda", check=False)
    same = (a.digest == b.digest and a.counts == b.counts and a.outcome == b.outcome and a.child_rss == b.child_rss)
    row = {"pages": pages, "pin_every": pin_every, "variant": variant, "equal": same, "digest": b.digest[:16],
           "cpu_wall_s": a.engine_wall_s, "cuda_wall_s": b.engine_wall_s, "total_s": time.perf_counter() - t0}
    print(json.dumps(row), flush=True)
    out.append(row)
    del s, a, b
json.dump(out, open(sys.argv[1], "w"))
assert all(r["equal"] for r in out)
"""

WRITES = r"""
import json, statistics, sys
import gpusim
from gpusim.api import write_phase
from gpusim.jobs.bench import Pins, bench_space
from gpusim.model.state import digest
STEPS = "parent:all; child:all; parent:4096-70000; child:exit"
out = []
for size, variant in %s:
    s = bench_space(size, variant, Pins(0.02))
    row = {"size_bytes": size, "variant": variant, "steps": STEPS}
    phases = {}
    for backend in ("cpu", "cuda"):
        r = gpusim.fork(s, variant, backend=backend, check=False)
        walls = []
        for _ in range(3):
            wp = write_phase(r, STEPS, check=False)
            walls.append(wp.wall_s)
        phases[backend] = wp
        row[backend + "_write_s"] = statistics.median(walls)
    a, b = phases["cpu"], phases["cuda"]
    row["equal"] = a.as_dict() == b.as_dict() and digest(a.parent.mm, a.child, a.memory) == digest(
        b.parent.mm, b.child, b.memory)
    row["counts"] = a.counts
    print(json.dumps(row), flush=True)
    out.append(row)
json.dump(out, open(sys.argv[1], "w"))
assert all(r["equal"] for r in out)
"""

PINNED = r"""
import json, sys, time
import gpusim
from gpusim.jobs.bench import Pins, bench_space
out = []
for size, placement, variant in %s:
    t0 = time.perf_counter()
    s = bench_space(size, variant, Pins(0.25, placement))
    a = gpusim.fork(s, variant, backend="cpu", check=False)
    gpusim.fork(s, variant, backend="cuda", check=False)  # compile / warm up
    b = gpusim.fork(s, variant, backend="cuda", check=False)
    same = (a.digest == b.digest and a.counts == b.counts and a.outcome == b.outcome and a.child_rss == b.child_rss)
    row = {"size": size, "placement": placement, "variant": variant, "equal": same, "python_tables": b.python_tables,
           "early_copies": b.counts["installs"], "cpu_wall_s": a.engine_wall_s, "cuda_wall_s": b.engine_wall_s,
           "cuda_early_copies_per_s": b.counts["installs"] / b.engine_wall_s, "total_s": time.perf_counter() - t0}
    print(json.dumps(row), flush=True)
    out.append(row)
    del s, a, b
json.dump(out, open(sys.argv[1], "w"))
assert all(r["equal"] and r["python_tables"] == 0 for r in out)
"""

SHAPES = r"""
import json, sys
from gpusim.jobs.gpubench import bench_resident
from gpusim.kernels.cuda import Shape
rows = []
for tpt, w, regs in %s:
    shape = Shape(tpt, w, regs)
    rep = bench_resident([%d], "cuda", "linux-6.18", 3, check=True, shape=shape)
    r = dict(rep["rows"][0], threads_per_table=tpt, tables_per_block=w, max_registers=regs,
             resources=rep["resources"])
    print(json.dumps({k: r[k] for k in ("threads_per_table", "tables_per_block", "max_registers", "ptes",
                                         "engine_wall_s", "ptes_per_s", "fraction_of_copy_bandwidth", "check")}),
          json.dumps(rep["resources"]["fork_tables_kernel"]), flush=True)
    rows.append(r)
json.dump(rows, open(sys.argv[1], "w"))
"""

# Forks of address spaces generated in device memory (issue 16, items 3 and 5): generated there by the region
# generator's kernel, forked where they are (no PCIe), digest reduced there; against the CPU engine's fork of the
# same space generated in host memory.
RESIDENT = r"""
import json, sys, time
import cupy
import gpusim
from gpusim.inputs.regions import RegionSpace
sys.path.insert(0, "benchmarks")
from bench_generate import regions  # the workload kinds, defined once
def sync():
    cupy.cuda.Device().synchronize()
out = []
for size, kind, variant in %s:
    space = RegionSpace(regions(kind, size), variant, 5)
    small = RegionSpace(regions(kind, 4 << 20), variant, 5).whole("cuda")
    gpusim.fork(small, variant, backend="cuda", check=False).digest; sync()  # compile (not timed)
    t0 = time.perf_counter(); dev = space.whole("cuda"); sync(); gen_s = time.perf_counter() - t0
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        b = gpusim.fork(dev, variant, backend="cuda", check=False); sync()
        walls.append((time.perf_counter() - t0, b.engine_wall_s))
        digest_t0 = time.perf_counter(); d = b.digest; digest_s = time.perf_counter() - digest_t0
    wall, engine = min(walls)
    del dev
    host = space.whole("cpu")
    t0 = time.perf_counter()
    a = gpusim.fork(host, variant, backend="cpu", check=False)
    cpu_s = time.perf_counter() - t0
    same = (a.digest == d and a.counts == b.counts and a.outcome == b.outcome and a.child_rss == b.child_rss)
    row = {"size": size, "kind": kind, "variant": variant, "ptes": space.nr_ptes, "equal": same,
           "outcome": b.outcome, "early_copies": b.counts["installs"], "generate_s": gen_s, "fork_wall_s": wall,
           "engine_wall_s": engine, "digest_s": digest_s, "ptes_per_s": space.nr_ptes / engine,
           "end_to_end_ptes_per_s": space.nr_ptes / wall, "cpu_fork_wall_s": cpu_s, "cpu_engine_s": a.engine_wall_s,
           "cpu_over_cuda_engine": a.engine_wall_s / engine}
    print(json.dumps(row), flush=True)
    out.append(row)
    del b, a, host, d
    cupy.get_default_memory_pool().free_all_blocks()
json.dump(out, open(sys.argv[1], "w"))
assert all(r["equal"] for r in out)
"""

# The same sweep of generated workloads on each backend, end to end as a user runs it (`gpusim sweep`: a pool of one
# worker per core on the CPU, one per GPU on cuda), its forks' digests compared.
SWEEP = r"""
import json, os, subprocess, sys, time
import pyarrow.dataset as ds
out_dir = sys.argv[1]
sizes, variants = %s
GRID = {"workload.size": sizes, "workload.pinned_fraction": [0.0, 0.25], "workload.thp_fraction": [0.0, 0.5],
        "workload.swap_fraction": [0.0, 0.1], "fork.variant": variants}
rows = {}
for backend in ("cuda", "cpu"):
    spec = os.path.join(out_dir, "sweep-" + backend + ".yaml")
    json.dump({"name": "gpu-check-" + backend, "seed": 3, "repeat": 1, "backend": backend, "check": False,
               "workload": {"kind": "anon", "size": "1GiB", "swap_count_max": 100},
               "fork": {"variant": "linux-6.18"}, "sweep": {"grid": GRID}}, open(spec, "w"))  # JSON is YAML
    res = os.path.join(out_dir, "sweep-" + backend)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "gpusim.cli", "sweep", spec, "--out", res]
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(backend, p.returncode, p.stdout[-1500:], p.stderr[-1500:], flush=True)
    t = ds.dataset(res, partitioning="hive").to_table().to_pylist()
    total = lambda k: sum(r[k] or 0 for r in t)
    errors = sum(r["error"] is not None for r in t)
    rows[backend] = {"wall_s": wall, "rc": p.returncode, "forks": len(t), "errors": errors,
                     "engine_s": total("engine_wall_s"), "build_s": total("build_wall_s"), "ptes": total("nr_ptes"),
                     "digests": sorted(str(r["digest"]) for r in t)}
same = rows["cuda"]["digests"] == rows["cpu"]["digests"]
report = {b: {k: v for k, v in r.items() if k != "digests"} for b, r in rows.items()}
report["cpu_over_cuda_wall"] = rows["cpu"]["wall_s"] / rows["cuda"]["wall_s"]
report["check"] = "same digests on both backends" if same else "digests differ"
print(json.dumps(report), flush=True)
json.dump(report, open(os.path.join(out_dir, "sweep.json"), "w"))
assert same and rows["cuda"]["rc"] == 0 and rows["cpu"]["rc"] == 0
"""

STREAM = r"""
import json, sys
from gpusim.jobs.gpubench import bench_streamed
from gpusim.kernels.cuda import Shape
shape = Shape(*json.loads(sys.argv[2])) if len(sys.argv) > 2 else None
out = []
for total, chunk in %s:
    r = bench_streamed(total, chunk, "linux-6.18", shape=shape)
    r["shape"] = sys.argv[2:]
    print(json.dumps(r), flush=True)
    out.append(r)
json.dump(out, open(sys.argv[1], "w"))
assert all(r["check"] == "equal to the CPU engine" for r in out)
"""

big = "1GiB,16GiB,256GiB" if QUICK else "1GiB,16GiB,1TiB"
# (threads per table, tables per block, register cap) of the block kernel, timed at SHAPE_BYTES
shapes = [
    (32, 1, None),
    (32, 2, None),
    (32, 4, None),
    (64, 1, None),
    (64, 2, None),
    (128, 1, None),
    (16, 4, None),
    (32, 1, 64),
    (32, 4, 64),
    (32, 1, 40),
    (32, 4, 40),
]
if "--few-shapes" in sys.argv:
    shapes = [(32, 4, None), (16, 4, None), (32, 2, None), (32, 4, 40)]
SHAPE_BYTES = (1 << 40) if not QUICK else (1 << 34)
# (total pages, pages per chunk) of the streamed fork: 64 TiB (16 G PTEs) in chunks of 2 TiB
stream_cases = [(1 << 34, 1 << 29)] if not QUICK else [(1 << 30, 1 << 27)]
equal_cases = (
    [(1 << 20, 0, "linux-6.18"), (1 << 20, 4099, "xu-v1")]
    if QUICK
    else [
        (1 << 25, 0, "linux-6.18"),
        (1 << 24, 32771, "linux-6.18"),
        (1 << 24, 32771, "xu-v1"),
        (1 << 24, 0, "linux-5.8"),
    ]
)
pinned_cases = [
    (1 << 30, placement, variant)
    for placement in ("scattered", "contiguous")
    for variant in ("linux-5.10", "linux-6.18", "xu-v1-oleg")
] + ([] if QUICK else [(16 << 30, "scattered", "linux-6.18")])
resident_cases = [(1 << 30, "mixed", v) for v in ("linux-5.10", "linux-6.18", "xu-v1")]
resident_cases += [(16 << 30, "mixed", "linux-6.18")] + ([] if QUICK else [(1 << 40, "pinned", "linux-6.18")])
generate_sizes = "1GiB,16GiB" if QUICK else "1GiB,16GiB,256GiB"
sweep_cases = (["1GiB", "4GiB" if QUICK else "16GiB"], ["linux-5.10", "linux-6.18"])
write_cases = [(1 << 30, v) for v in ("linux-5.8", "linux-6.18")] + ([] if QUICK else [(16 << 30, "linux-6.18")])
STEPS = [
    ("smoke", [PY, "-c", SMOKE], 90),
    ("shapes", [PY, "-c", SHAPES % (shapes, SHAPE_BYTES), f"{OUT}/shapes.json"], 120),
    (
        "bench",
        [
            PY,
            "-m",
            "gpusim.cli",
            "bench",
            "--backend",
            "cuda",
            "--sizes",
            big,
            "--repeat",
            "5",
            "--batch",
            "256" if QUICK else "1024",
            "--json",
        ]
        + ([] if "--no-kernel" in sys.argv else ["--vs-kernel"]),
        180,
    ),
    (
        "tests",
        [
            PY,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "tests/test_engines.py",
            "tests/test_writes.py",
            "tests/test_generate.py",
            "-k",
            "cuda and not cudasim",
        ],
        150,
    ),
    ("pinned", [PY, "-c", PINNED % pinned_cases, f"{OUT}/pinned.json"], 150),
    ("stream", [PY, "-c", STREAM % stream_cases, f"{OUT}/stream.json"], 90),
    ("writes", [PY, "-c", WRITES % write_cases, f"{OUT}/writes.json"], 120),
    (
        "generate",
        [PY, "benchmarks/bench_generate.py", "--sizes", generate_sizes, "--backends", "cpu,cuda"]
        + ["--json", f"{OUT}/generate.json"],
        150,
    ),
    ("resident", [PY, "-c", RESIDENT % resident_cases, f"{OUT}/resident.json"], 240),
    ("sweep", [PY, "-c", SWEEP % (sweep_cases,), OUT], 150),
    ("pinned_big", [PY, "-c", PINNED % [(1 << 40, "scattered", "linux-6.18")], f"{OUT}/pinned_big.json"], 180),
    ("equal", [PY, "-c", EQUAL % equal_cases, f"{OUT}/equal.json"], 120),
    ("launch", [PY, "benchmarks/bench_launch.py", "--backend", "cuda"], 60),
    (
        "cpu",
        [
            PY,
            "-m",
            "gpusim.cli",
            "bench",
            "--backend",
            "cpu",
            "--sizes",
            "1GiB,16GiB",
            "--repeat",
            "5",
            "--vs-kernel",
            "--json",
        ],
        90,
    ),
]

only = [a for a in sys.argv[2:] if not a.startswith("--")]
summary = []


def best_shape() -> list | None:
    """The fastest checked shape of this run's ``shapes`` step: (threads per table, tables per block, register cap)."""
    try:
        rows = json.load(open(f"{OUT}/shapes.json"))
    except (OSError, ValueError):
        return None
    rows = [r for r in rows if r.get("check") == "equal to the CPU engine"]
    best = max(rows, key=lambda r: r["ptes_per_s"], default=None)
    return best and [best["threads_per_table"], best["tables_per_block"], best["max_registers"]]


for name, cmd, limit in STEPS:
    if only and name not in only:
        continue
    shape = best_shape()
    if shape and name == "bench":  # the shapes step ran first: measure the best shape
        cmd = cmd + ["--threads-per-table", str(shape[0]), "--tables-per-block", str(shape[1])]
        cmd += ["--max-registers", str(shape[2])] if shape[2] else []
    if shape and name == "stream":
        cmd = cmd + [json.dumps(shape)]
    t0 = time.time()
    limit = min(limit, DEADLINE - (t0 - T0))
    if limit < 20:
        summary.append(f"{name}: skipped (deadline)")
        continue
    with open(f"{OUT}/{name}.log", "w") as log:
        try:
            p = subprocess.run(
                cmd,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                timeout=limit,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
            rc, stdout = p.returncode, p.stdout
        except subprocess.TimeoutExpired as e:
            rc, stdout = "timeout", (e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or "")
        log.write("\n--- stdout ---\n" + stdout)
    if "gpusim.cli" in cmd and rc == 0:
        with open(f"{OUT}/{name}.json", "w") as f:
            f.write(stdout)
    summary.append(f"{name}: rc={rc} in {time.time() - t0:.0f} s")
    print(summary[-1], flush=True)
    print(stdout[-3000:], flush=True)

print("\n".join(["== summary =="] + summary))
