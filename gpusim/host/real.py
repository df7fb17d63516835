"""Real address spaces on the host kernel: build one, time its fork(), read its page frames after a fork.

A :class:`RealLayout` describes anonymous memory the way gpusim's generators do (``kind: anon`` regions): size, the
fraction of pages touched, THP on or off, the number of VMAs, and pinned ranges. :func:`run_layout` sets it up in
a fresh, small Python process (this file run as a script: it imports only the standard library), so the measuring
process's own memory stays the interpreter's:

* each VMA is mapped at a 2 MiB boundary of one reservation, one 2 MiB table apart from the next region, as
  :func:`gpusim.regions.build_regions` places them, so the kernel and the simulator see the same page tables;
* pages are touched by writing one byte (``MADV_NOHUGEPAGE``, or ``MADV_HUGEPAGE`` for THP layouts);
* pinned ranges are registered as io_uring fixed buffers (``IORING_REGISTER_BUFFERS``: a long-term FOLL_PIN, so the
  kernel copies those pages at fork), through raw syscalls with ctypes; ``RLIMIT_MEMLOCK`` is raised where allowed.
  Pinning faults the pages in, so a pinned page is present whether or not it was touched.

Then either ``fork()`` is timed as the parent sees it (the child exits at once; a warm-up fork first; median and
quartiles over the repetitions), or one fork is made and both processes read their page frames from
``/proc/self/pagemap`` (root is needed to see frame numbers): each page is *shared* (same frame), *copied*
(different frames) or *absent*.

Where the kernel refuses something (no io_uring, no frame numbers), the JSON says so in ``refused``, and callers skip
that part.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import resource
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

PAGE = 4096
TABLE_PAGES = 512
SYS_IO_URING_SETUP, SYS_IO_URING_REGISTER = 425, 427  # x86-64 and arm64 share these numbers
IORING_REGISTER_BUFFERS = 0
MAX_IOVEC_BYTES = 1 << 30
MAX_RING_BUFFERS = 1 << 14  # IORING_MAX_REG_BUFFERS


@dataclass
class RealLayout:
    """Private anonymous memory: ``size`` bytes in ``vmas`` equal VMAs, ``fill`` of the pages touched (every
    ``round(1/fill)``-th page), ``thp`` to ask for transparent huge pages, ``pinned``: (first page, pages) ranges of
    the whole region, pinned as io_uring fixed buffers."""

    name: str
    size: int
    vmas: int = 1
    fill: float = 1.0
    thp: bool = False
    pinned: list = field(default_factory=list)

    @property
    def pages(self) -> int:
        return self.size // PAGE

    def vma_pages(self) -> list[int]:
        n, k = self.pages, self.vmas
        if n == 0:
            return []
        return [n // k + (1 if i < n % k else 0) for i in range(k)]

    def stride(self) -> int:
        return max(1, round(1 / self.fill)) if self.fill > 0 else 0

    def touched(self) -> list[bool]:
        """Whether each page of the region (concatenated VMAs) is touched."""
        s = self.stride()
        return [s > 0 and i % s == 0 for i in range(self.pages)]


# --- inside the measuring process --------------------------------------------------------------------------------


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _pin_io_uring(base_addr: int, ranges: list) -> str | None:
    """Register the ranges as io_uring fixed buffers; returns why not, or None when pinned."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
        if hard != resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    iovs = []
    for first, n in ranges:
        off, left = first * PAGE, n * PAGE
        while left:
            ln = min(left, MAX_IOVEC_BYTES)
            iovs.append((base_addr + off, ln))
            off, left = off + ln, left - ln
    _pin_io_uring.keep = []  # the buffers stay registered while the rings live (the process's life)
    for lo in range(0, len(iovs), MAX_RING_BUFFERS):  # a ring takes at most IORING_MAX_REG_BUFFERS
        part = iovs[lo : lo + MAX_RING_BUFFERS]
        params = ctypes.create_string_buffer(120)
        fd = libc.syscall(SYS_IO_URING_SETUP, ctypes.c_uint(4), params)
        if fd < 0:
            return f"io_uring_setup failed: {os.strerror(ctypes.get_errno())}"
        arr = (_Iovec * len(part))(*[_Iovec(a, ln) for a, ln in part])
        rc = libc.syscall(
            SYS_IO_URING_REGISTER,
            ctypes.c_int(fd),
            ctypes.c_uint(IORING_REGISTER_BUFFERS),
            arr,
            ctypes.c_uint(len(part)),
        )
        if rc < 0:
            return f"io_uring_register(IORING_REGISTER_BUFFERS) failed: {os.strerror(ctypes.get_errno())}"
        _pin_io_uring.keep.append((fd, arr))
    return None


def _setup(layout: RealLayout):
    """Map and touch the layout; returns (list of (mmap, base page index, pages), refusals)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    sizes = layout.vma_pages()
    if not sizes:
        return [], {}
    span = sum(-(-n // TABLE_PAGES) * TABLE_PAGES for n in sizes) + 2 * TABLE_PAGES
    PROT_NONE, PROT_RW = 0, mmap.PROT_READ | mmap.PROT_WRITE
    MAP_PRIVATE, MAP_ANON, MAP_FIXED, MAP_NORESERVE = 0x02, 0x20, 0x10, 0x4000
    res = libc.mmap(None, span * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANON | MAP_NORESERVE, -1, 0)
    if res in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap reservation failed")
    start = -(-res // (TABLE_PAGES * PAGE)) * (TABLE_PAGES * PAGE)  # 2 MiB aligned
    libc.munmap(res, span * PAGE)  # the VMAs go back at fixed places
    vmas, addr, b = [], start, 0
    advice = 14 if layout.thp else 15  # MADV_HUGEPAGE / MADV_NOHUGEPAGE
    for n in sizes:
        got = libc.mmap(addr, n * PAGE, PROT_RW, MAP_PRIVATE | MAP_ANON | MAP_FIXED, -1, 0)
        if got != addr:
            raise OSError(ctypes.get_errno(), "mmap failed")
        libc.madvise(addr, n * PAGE, advice)
        vmas.append((addr, b, n))
        b += n
        addr += -(-n // TABLE_PAGES) * TABLE_PAGES * PAGE
    stride = layout.stride()
    for a, b0, n in vmas:  # one byte written to every stride-th page of the region
        if stride:
            first = (-b0) % stride
            view = memoryview((ctypes.c_char * (n * PAGE)).from_address(a)).cast("B")
            view[first * PAGE :: stride * PAGE] = b"\x01" * len(range(first, n, stride))
    refused = {}
    if layout.pinned:
        # pinned ranges are given in region pages; register each piece in the VMAs that hold it
        pieces = []
        for first, cnt in layout.pinned:
            for a, b0, n in vmas:
                lo, hi = max(first, b0), min(first + cnt, b0 + n)
                if lo < hi:
                    pieces.append((a + (lo - b0) * PAGE, hi - lo))
        why = _pin_io_uring(0, [(p // PAGE, n) for p, n in pieces]) if pieces else None
        if why:
            refused["pin"] = why
    return vmas, refused


def _thp_pages() -> int:
    total = 0
    try:
        for line in open("/proc/self/smaps_rollup"):
            if line.startswith("AnonHugePages:"):
                total = int(line.split()[1]) * 1024 // PAGE
    except OSError:
        pass
    return total


def _frames(pid, vmas) -> list:
    """Frame number of each page (None: not present), region order."""
    out = []
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        for a, _, n in vmas:
            f.seek(a // PAGE * 8)
            for (v,) in struct.iter_unpack("<Q", f.read(n * 8)):
                out.append(v & ((1 << 55) - 1) if v >> 63 else None)
    return out


def _time(repeat: int) -> list[int]:
    times = []
    for i in range(repeat + 1):
        t0 = time.perf_counter_ns()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        t1 = time.perf_counter_ns()
        os.waitpid(pid, 0)
        if i:  # the first fork is a warm-up
            times.append(t1 - t0)
    return times


def time_forks(layout: RealLayout, repeat: int) -> dict:
    """Forks of this process before the layout is set up (``base_*``) and after (``*``), so that the time the
    layout adds is measured within one process."""
    base = _time(repeat)
    vmas, refused = _setup(layout)
    thp = _thp_pages() if layout.thp else 0
    times = _time(repeat)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {
        "layout": asdict(layout),
        "fork_ns": times,
        "median_ns": statistics.median(times),
        "q1_ns": q[0],
        "q3_ns": q[2],
        "base_fork_ns": base,
        "base_median_ns": statistics.median(base),
        "added_ns": statistics.median(times) - statistics.median(base),
        "thp_pages": thp,
        "refused": refused,
    }


def sharing(layout: RealLayout) -> dict:
    vmas, refused = _setup(layout)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            data = json.dumps(_frames("self", vmas)).encode()
        except OSError as e:
            data = json.dumps({"error": str(e)}).encode()
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        child = json.loads(f.read())
    os.waitpid(pid, 0)
    parent = _frames("self", vmas)
    if isinstance(child, dict) or all(v in (None, 0) for v in parent):
        refused["pagemap"] = "frame numbers are not readable (root is needed) or pagemap is refused"
        return {"layout": asdict(layout), "refused": refused}
    state = []
    for p, c in zip(parent, child):
        state.append("absent" if p is None or c is None else ("shared" if p == c else "copied"))
    return {
        "layout": asdict(layout),
        "state": state,
        "thp_pages": _thp_pages() if layout.thp else 0,
        "refused": refused,
    }


def run_layout(layout: RealLayout, mode: str = "time", repeat: int = 7, timeout: float = 600) -> dict:
    """Set up ``layout`` in a fresh process and ``time`` its forks or read its ``sharing`` map."""
    out = subprocess.run(  # the layout goes through stdin: thousands of pinned ranges do not fit in argv
        [sys.executable, os.path.abspath(__file__), mode, str(repeat)],
        input=json.dumps(asdict(layout)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"measuring {layout.name} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout)


if __name__ == "__main__":
    _layout = RealLayout(**json.loads(sys.stdin.read()))
    if sys.argv[1] == "time":
        print(json.dumps(time_forks(_layout, int(sys.argv[2]))))
    else:
        print(json.dumps(sharing(_layout)))
