"""A real process's fork predicted from its capture (issue 26): an interpreter holding a large dict built by inserts
and deletes, its frames in the order this machine's allocator gave them, on a machine fragmented or not.

Usage (root, so that pagemap shows frame numbers): python benchmarks/bench_real_process.py [--entries 4000000]
    [--rounds 15] [--fragment 2GiB] [--profile PROFILE]

What it does, all in one window:

1. ``--fragment S`` (the simulated churn of a long-running machine): a helper process maps S of anonymous memory,
   touches it, frees every other page in a random order (``MADV_DONTNEED``) and keeps the rest, so that the freed
   frames cannot merge back into larger blocks and the allocator hands them out in the order they were freed: the
   frames a process populates next come out scattered, as after hours of allocations and frees. ``0``: none.
2. The target: ``python -I -S`` building a dict of ``--entries`` keys (100-byte values), deleting a random half and
   inserting as many new keys, then waiting; a bare ``python -I -S`` beside it (the fork the target adds to).
   Both pinned to one CPU, so that the child (which exits at once) cannot run before the parent reads its clock.
3. ``--rounds`` rounds, the two processes in a random order each round: the process re-dirties every present page
   of its private writable mappings (a byte written with its own value: each page writable and exclusive again,
   the state a capture describes), checks that a second pass takes no fault, and times one ``fork()``.
4. Both captured (:func:`gpusim.jobs.host.capture.capture`) right after a re-dirty; each snapshot is forked by the
   simulator (the running kernel's variant) and priced by ``--profile`` (default: the newest host profile), with
   its band.

Prints, per process, the measured fork (median and quartiles), the prediction and its band, the error, and the
fraction of present pages whose frame does not follow the previous page's; and the same for the time the dict adds
to the bare interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys

import numpy as np

from gpusim.jobs.host import real as real_module

TARGET = r"""
import ctypes, importlib.util, json, os, random, resource, struct, sys
entries = int(sys.argv[1]); cpu = int(sys.argv[2])
spec = importlib.util.spec_from_file_location("real", sys.argv[3])  # the measuring process's module (stdlib only)
real = sys.modules["real"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real)
os.sched_setaffinity(0, {cpu})
d = {}
if entries:
    r = random.Random(1)
    for i in range(entries):
        d[i] = os.urandom(16) * 6 + bytes(4)
    for k in r.sample(range(entries), entries // 2):
        del d[k]
    for i in range(entries, entries + entries // 2):
        d[i] = os.urandom(16) * 6 + bytes(4)
PAGE = 4096

def pages():
    out = []
    with open("/proc/self/maps") as m, open("/proc/self/pagemap", "rb") as pm:
        for line in m:
            f = line.split()
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            if f[1] != "rw-p":
                continue
            pm.seek(lo // PAGE * 8)
            for i, (v,) in enumerate(struct.iter_unpack("<Q", pm.read((hi - lo) // PAGE * 8))):
                if v >> 63:
                    out.append(lo + i * PAGE)
    return out

move = ctypes.memmove

def redirty(addrs):
    # a byte of each page copied onto itself: a store, no object made or freed (a freed arena would be unmapped)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for a in addrs:
        move(a, a, 1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

print(json.dumps({"pid": os.getpid(), "entries": len(d)}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd.get("quit"):
        break
    addrs = None  # freed before the listing: a page listed is still mapped when written
    addrs = pages()
    first = redirty(addrs)
    check = redirty(addrs)
    out = {"pages": len(addrs), "redirty_faults": first, "check_faults": check}
    if cmd.get("fork"):
        out["fork_ns"] = real._fork_ns()  # the child exits at once; the parent's view of fork()
    print(json.dumps(out), flush=True)
"""

FRAGMENTER = r"""
import mmap, random, sys
size = int(sys.argv[1])
b = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
b.madvise(mmap.MADV_NOHUGEPAGE)
n = size // 4096
for i in range(n):
    b[i * 4096] = 1
odd = list(range(1, n, 2))
random.Random(2).shuffle(odd)
for i in odd:
    b.madvise(mmap.MADV_DONTNEED, i * 4096, 4096)
print("ready", flush=True)
sys.stdin.read()
"""


class Proc:
    def __init__(self, entries: int, cpu: int):
        self.p = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", TARGET, str(entries), str(cpu), real_module.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = json.loads(self.p.stdout.readline())

    def ask(self, **cmd) -> dict:
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def predicted(pid: int, variant: str, profile):
    """(latency dict, frame-break fraction of present pages) of the simulator's fork of the captured process."""
    from gpusim import api
    from gpusim.analysis.costmodel import latency
    from gpusim.inputs.snapshot import frames_known, snapshot_space
    from gpusim.jobs.host.capture import capture

    t = capture(pid)
    space = snapshot_space(t, variant)
    r = api.fork(space, variant, backend="cpu", check=False)
    pfn = t.column("pfn").to_numpy()[t.column("present").to_numpy(zero_copy_only=False)]
    breaks = float((np.diff(pfn) != 1).mean()) if frames_known(t) and pfn.size > 1 else None
    return latency(r.counts, variant, profile), breaks


def measure_window(entries: int, rounds: int, fragment: int, variant: str, profile, cpu: int) -> dict:
    """Steps 1-4 of the module docstring: {process: (fork quartiles, predicted latency, frame breaks, forks)}."""
    from gpusim.jobs.host.measure import FAULT_SLACK

    frag, procs = None, {}
    try:
        if fragment:
            frag = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", FRAGMENTER, str(fragment)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            frag.stdout.readline()
        procs = {"bare": Proc(0, cpu), "dict": Proc(entries, cpu)}
        samples = {k: [] for k in procs}
        rng = random.Random(0)
        for k in procs:
            procs[k].ask(fork=True)  # warm-up
        for _ in range(rounds):
            for k in rng.sample(list(procs), len(procs)):
                r = procs[k].ask(fork=True)
                if r["check_faults"] <= FAULT_SLACK:  # the listing of pages itself may fault a few in
                    samples[k].append(r["fork_ns"])
        out = {}
        for k, p in procs.items():
            p.ask()  # re-dirtied, no fork: the state the capture describes
            lat, breaks = predicted(p.info["pid"], variant, profile)
            out[k] = (np.percentile(samples[k], [25, 50, 75]), lat, breaks, len(samples[k]))
        return out
    finally:
        for p in procs.values():
            p.close()
        if frag is not None:
            frag.kill()
            frag.wait()


def main() -> None:
    from gpusim.analysis.costmodel import load_profile
    from gpusim.base.units import parse_size
    from gpusim.jobs.host.calibrate import kernel_variant
    from gpusim.jobs.host.measure import default_cpu

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=4_000_000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--fragment", default="0")
    ap.add_argument("--profile", default=None)
    args = ap.parse_args()
    profile = load_profile(args.profile)
    variant = kernel_variant()
    cpu = default_cpu() or 0
    size = parse_size(args.fragment) if args.fragment != "0" else 0
    out = measure_window(args.entries, args.rounds, size, variant, profile, cpu)
    print(
        f"profile {profile.name}; variant {variant}; fragmenting helper {args.fragment}; "
        f"{args.entries} dict entries; {args.rounds} rounds on CPU {cpu}"
    )
    for k, (q, lat, breaks, n) in out.items():
        band = (
            "no band"
            if lat["latency_low_ns"] is None
            else f"band {lat['latency_low_ns'] / 1e6:.2f}-{lat['latency_high_ns'] / 1e6:.2f}"
        )
        fb = "unreadable" if breaks is None else f"{breaks:.3f}"
        print(
            f"{k:>5}: measured {q[1] / 1e6:7.2f} ms (IQR {q[0] / 1e6:.2f}-{q[2] / 1e6:.2f}, {n} forks); "
            f"predicted {lat['latency_ns'] / 1e6:7.2f} ms ({band}); error {lat['latency_ns'] / q[1] - 1:+.1%}; "
            f"frame breaks {fb}"
        )
    mb, md = out["bare"][0][1], out["dict"][0][1]
    pb, pd = out["bare"][1]["latency_ns"], out["dict"][1]["latency_ns"]
    print(
        f"added by the dict: measured {(md - mb) / 1e6:.2f} ms, predicted {(pd - pb) / 1e6:.2f} ms, "
        f"error {(pd - pb) / (md - mb) - 1:+.1%}"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
