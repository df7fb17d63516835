"""A real process for the model to predict (issue 26): an interpreter holding a large dict built by inserts and
deletes, its fork timed by itself and predicted from its capture.

* :data:`TARGET`: ``python -I -S`` building a dict of ``entries`` keys (100-byte values), deleting a random half and
  inserting as many new keys, then waiting for commands: each re-dirties every present page of its private
  writable mappings (a byte copied onto itself: each page writable and exclusive again, the state a capture
  describes), checks that a second pass takes no fault, and may time one ``fork()`` from cold (the caches read
  through first: :class:`gpusim.jobs.host.real.Evictor`; the measuring process's
  :func:`gpusim.jobs.host.real._fork_ns`: the child exits at once). Pinned to one CPU, so that the child cannot run
  before the parent reads its clock.
* :data:`FRAGMENTER` (the simulated churn of a long-running machine): maps some memory, touches it, frees every
  other page in a random order and keeps the rest, so that the freed frames cannot merge into larger blocks and the
  allocator hands them out in the order they were freed: what a process populates next gets scattered frames.
* :func:`measure_window`: the dict and a bare interpreter, their forks interleaved over rounds, then each captured
  (:func:`gpusim.jobs.host.capture.capture`) and forked by the simulator with each profile (:func:`predicted`).
"""

from __future__ import annotations

import random
import subprocess
import sys

from gpusim import api
from gpusim.analysis.costmodel import latency
from gpusim.inputs.snapshot import snapshot_space
from gpusim.jobs.host import real
from gpusim.jobs.host.capture import capture
from gpusim.jobs.host.measure import FAULT_SLACK, evict_bytes

TARGET = r"""
import importlib.util, json, os, random, sys
entries = int(sys.argv[1]); cpu = int(sys.argv[2])
spec = importlib.util.spec_from_file_location("real", sys.argv[3])  # the measuring process's module (stdlib only)
real = sys.modules["real"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real)
evict = real.Evictor(int(sys.argv[4]))
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
print(json.dumps({"pid": os.getpid(), "entries": len(d)}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd.get("quit"):
        break
    addrs = None  # freed before the listing: a page listed is still mapped when written
    addrs = real.own_pages()
    first = real.redirty(addrs)
    check = real.redirty(addrs)
    out = {"pages": len(addrs), "redirty_faults": first, "check_faults": check}
    if cmd.get("fork"):
        evict()  # from cold, as the measuring processes fork (gpusim.jobs.host.real.Evictor)
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


class Proc(real.LineProcess):
    """A target process (:data:`TARGET`) holding a dict of ``entries`` keys (0: a bare interpreter), pinned to
    ``cpu`` (:class:`gpusim.jobs.host.real.LineProcess`)."""

    def __init__(self, entries: int, cpu: int, timeout: float = 600):
        argv = [sys.executable, "-I", "-S", "-c", TARGET, str(entries), str(cpu), real.__file__, str(evict_bytes())]
        super().__init__(argv, f"the process holding a dict of {entries} keys", timeout)
        self.info = self.reply()


def predicted(pid: int, variant: str, profiles: dict) -> tuple[dict, float | None]:
    """The simulator's fork of process ``pid`` captured now: ({profile key: :func:`gpusim.analysis.costmodel.latency`},
    the fraction of its present pages whose frame is not the previous page's + 1, None without frame numbers)."""
    t = capture(pid)
    r = api.fork(snapshot_space(t, variant), variant, backend="cpu", check=False)
    present = t.column("present").to_numpy(zero_copy_only=False)
    breaks = real.frame_breaks(t.column("pfn").to_numpy()[present].tolist())
    return {k: latency(r.counts, variant, p) for k, p in profiles.items()}, breaks


def measure_window(entries: int, rounds: int, variant: str, profiles: dict, cpu: int, fragment: int = 0) -> dict:
    """The dict of ``entries`` keys and a bare interpreter (after a :data:`FRAGMENTER` of ``fragment`` bytes, when
    not 0), ``rounds`` rounds of one re-dirtied fork each in a random order, then each captured and predicted:
    ``{"bare" | "dict": {"fork_ns": [samples], "predicted": {profile key: latency}, "frame_breaks": f}}``. A fork
    whose second re-dirty pass took faults (the state is not the captured one) is left out."""
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
        out = {k: {"fork_ns": []} for k in procs}
        rng = random.Random(0)
        for k in procs:
            procs[k].ask({"fork": True})  # warm-up
        for _ in range(rounds):
            for k in rng.sample(list(procs), len(procs)):
                r = procs[k].ask({"fork": True})
                if r["check_faults"] <= FAULT_SLACK:  # the listing of pages itself may fault a few in
                    out[k]["fork_ns"].append(r["fork_ns"])
        for k, p in procs.items():
            p.ask({})  # re-dirtied, no fork: the state the capture describes
            out[k]["predicted"], out[k]["frame_breaks"] = predicted(p.info["pid"], variant, profiles)
        return out
    finally:
        for p in procs.values():
            p.close()
        if frag is not None:
            frag.kill()
            frag.wait()
