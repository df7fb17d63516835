"""One call on a lent GPU machine: install, check the cuda engine against the CPU engine, and measure it.

Run from the repository root: ``python3 benchmarks/gpu_check.py OUTDIR [--quick]``. Every step runs in a
subprocess with its own time limit, logs to ``OUTDIR/<step>.log`` (JSON results to ``OUTDIR/<step>.json``), and a
failing step does not stop the next. The last lines printed are a summary. Steps, most valuable first:

1. ``smoke``: environment (GPU, numba, numba-cuda, CuPy versions) and one small fork on cuda equal to cpu.
2. ``pinned``: 25 %-pinned anon memory (scattered and contiguous pins) forked by ``gpusim.fork`` on cuda and on cpu
   (the slow path's CUDA kernels: issue 11), same digest, outcome and counts, early copies per second on each.
3. ``bench``: ``gpusim bench --backend cuda`` on device-resident state from 1 GiB to 4 TiB (1 G PTEs), a batch of
   1 GiB forks, each checked against the CPU engine at full size, beside this machine's kernel fork times.
4. ``equal``: ``gpusim.fork`` through host memory on cuda and on cpu, same digest, outcome and counts, at full size
   (dense anon with and without pinned pages, two variants).
5. ``launch``: the time of the kernel calls inside ``gpusim.fork`` (one table, 1 GiB; ``benchmarks/bench_launch.py``).
6. ``tests``: the differential test suite's ``cuda`` parametrisation (catalogue and hypothesis).
7. ``tpb``: threads per block of the fork kernel, 32 to 256, at 1 TiB.
8. ``cpu``: ``gpusim bench --backend cpu --vs-kernel`` on this machine's cores.
"""

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
from gpusim.workloads import dense_anon
from gpusim.backend import cuda_usable
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
from gpusim.workloads import dense_anon
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

PINNED = r"""
import json, sys, time
import gpusim
from gpusim.bench import Pins, bench_space
out = []
for size, placement, variant in %s:
    t0 = time.perf_counter()
    s = bench_space(size, variant, Pins(0.25, placement))
    a = gpusim.fork(s, variant, backend="cpu", check=False)
    gpusim.fork(s, variant, backend="cuda", check=False)  # compile / warm up
    b = gpusim.fork(s, variant, backend="cuda", check=False)
    same = (a.digest == b.digest and a.counts == b.counts and a.outcome == b.outcome and a.child_rss == b.child_rss)
    row = {"size": size, "placement": placement, "variant": variant, "equal": same, "host_tables": b.host_tables,
           "early_copies": b.counts["installs"], "cpu_wall_s": a.engine_wall_s, "cuda_wall_s": b.engine_wall_s,
           "cuda_early_copies_per_s": b.counts["installs"] / b.engine_wall_s, "total_s": time.perf_counter() - t0}
    print(json.dumps(row), flush=True)
    out.append(row)
    del s, a, b
json.dump(out, open(sys.argv[1], "w"))
assert all(r["equal"] and r["host_tables"] == 0 for r in out)
"""

TPB = r"""
import json, sys
from gpusim.gpubench import bench_resident
rows = []
for tpb in (32, 64, 128, 256, 512):
    r = bench_resident([%d], "cuda", "linux-6.18", 3, check=False, threads_per_block=tpb)["rows"][0]
    r["threads_per_block"] = tpb
    print(json.dumps({k: r[k] for k in ("threads_per_block", "ptes", "engine_wall_s", "ptes_per_s",
                                         "fraction_of_copy_bandwidth")}), flush=True)
    rows.append(r)
json.dump(rows, open(sys.argv[1], "w"))
from gpusim.kernels import cuda as K
for name, k in (("fork_tables_kernel", K.fork_kernel), ("walk_tables_kernel", K.walk_kernel)):
    try:
        print(name, "registers/thread", k.get_regs_per_thread(), "local bytes/thread", k.get_local_mem_per_thread(),
              "shared bytes/block", k.get_shared_mem_per_block())
    except Exception as e:
        print(name, "no resource report:", e)
"""

big = "1GiB,16GiB,256GiB" if QUICK else "1GiB,16GiB,256GiB,1TiB,4TiB"
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
    (size, placement, variant)
    for size in ([1 << 30] if QUICK else [1 << 30, 4 << 30])
    for placement in ("scattered", "contiguous")
    for variant in ("linux-5.10", "linux-6.18", "xu-v1-oleg")
]
STEPS = [
    ("smoke", [PY, "-c", SMOKE], 90),
    ("pinned", [PY, "-c", PINNED % pinned_cases, f"{OUT}/pinned.json"], 150),
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
    ("equal", [PY, "-c", EQUAL % equal_cases, f"{OUT}/equal.json"], 120),
    ("launch", [PY, "benchmarks/bench_launch.py", "--backend", "cuda"], 60),
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
            "-k",
            "cuda and not cudasim",
        ],
        150,
    ),
    ("tpb", [PY, "-c", TPB % ((1 << 40) if not QUICK else (1 << 34)), f"{OUT}/tpb.json"], 60),
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
for name, cmd, limit in STEPS:
    if only and name not in only:
        continue
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
