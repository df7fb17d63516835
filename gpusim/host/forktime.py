"""Time the real kernel's fork() of a process with a given amount of touched anonymous memory.

Run as ``python -m gpusim.host.forktime BYTES [REPEAT]`` in a fresh, small process (so the measuring process's
own memory stays the interpreter's): it maps BYTES of anonymous memory with ``MADV_NOHUGEPAGE`` (4 KiB PTEs),
writes one byte to every page, then times ``fork()`` as the parent sees it (the child exits at once), after one
warm-up fork. Prints one JSON object: ``{"bytes", "pages", "fork_ns": [..], "median_ns"}``.
"""

from __future__ import annotations

import json
import mmap
import os
import statistics
import subprocess
import sys
import time

PAGE = 4096


def measure(nbytes: int, repeat: int = 7) -> dict:
    pages = nbytes // PAGE
    buf = None
    if pages:
        buf = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            buf.madvise(mmap.MADV_NOHUGEPAGE)
        view = memoryview(buf)
        view[::PAGE] = b"\x01" * pages              # touch every page
    times = []
    for i in range(repeat + 1):
        t0 = time.perf_counter_ns()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        t1 = time.perf_counter_ns()
        os.waitpid(pid, 0)
        if i:                                       # the first fork is a warm-up
            times.append(t1 - t0)
    return {"bytes": pages * PAGE, "pages": pages, "fork_ns": times, "median_ns": statistics.median(times)}


def measure_in_subprocess(nbytes: int, repeat: int = 7, timeout: float = 600) -> dict:
    out = subprocess.run([sys.executable, "-m", "gpusim.host.forktime", str(nbytes), str(repeat)],
                         capture_output=True, text=True, timeout=timeout, check=True)
    return json.loads(out.stdout)


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 7)))
