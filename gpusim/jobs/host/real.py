"""Real address spaces on the host kernel: build one, time its fork(), read its page frames after a fork.

A :class:`RealLayout` describes anonymous memory the way gpusim's generators do (``kind: anon`` regions): size, the
fraction of pages touched, THP on or off (both per VMA if wanted), the number of VMAs, and pinned ranges. This file
run as a script is the measuring process: a small interpreter that imports only the standard library, so that its
own memory stays the interpreter's and a bare one forks in a few hundred microseconds:

* each VMA is mapped at a 2 MiB boundary of one reservation, as :func:`gpusim.inputs.regions.build_regions` places
  them, so the kernel and the simulator see the same page tables;
* pages are touched by writing one byte (``MADV_NOHUGEPAGE``, or ``MADV_HUGEPAGE`` for THP VMAs);
* pinned ranges are registered as io_uring fixed buffers (``IORING_REGISTER_BUFFERS``: a long-term FOLL_PIN, so the
  kernel copies those pages at fork), through raw syscalls with ctypes; ``RLIMIT_MEMLOCK`` is raised where allowed.
  Pinning faults the pages in, so a pinned page is present whether or not it was touched.

``serve`` (driven by :class:`Worker`) then times forks on request, each visit restoring and checking the modelled
state first (:func:`_visit`); ``sharing`` makes one fork and both processes read their page frames from
``/proc/self/pagemap`` (root is needed to see frame numbers): each page is *shared* (same frame), *copied*
(different frames) or *absent*. Where the kernel refuses something (no io_uring, no frame numbers), the answer
says so in ``refused``, and callers skip that part.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import random
import resource
import select
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
    ``round(1/fill)``-th page of the region), ``thp`` to ask for transparent huge pages, ``pinned``: (first page,
    pages) ranges of the whole region, pinned as io_uring fixed buffers. ``fill`` and ``thp`` may be lists with one
    value per VMA, for mixed layouts."""

    name: str
    size: int
    vmas: int = 1
    fill: float | list = 1.0
    thp: bool | list = False
    pinned: list = field(default_factory=list)
    # the order the pages are first touched in, which sets the order of their frames: "address", "random" (a
    # shuffle of the touched pages, seeded by ``seed``) or "runs:K" (runs of K pages in address order, the runs
    # shuffled): a long-running process's frames are scattered so
    first_touch: str = "address"
    seed: int = 0
    # each VMA at a 2 MiB boundary, a table apart (True), or packed one after the other (False: every other one
    # MADV_NOHUGEPAGE, so that neighbours differ in flags and do not merge; no THP then)
    gaps: bool = True

    def __post_init__(self):
        touch_order(self.first_touch, 1, self.seed)  # refused here, not in the measuring process
        if not self.gaps and self.any_thp:
            raise ValueError(f"{self.name}: packed VMAs (gaps=False) are told apart by their THP advice: no THP")

    def vma_span(self, n: int) -> int:
        """The pages a VMA of ``n`` pages takes up to the next one's start."""
        return -(-n // TABLE_PAGES) * TABLE_PAGES if self.gaps else n

    @property
    def pages(self) -> int:
        return self.size // PAGE

    def vma_pages(self) -> list[int]:
        n, k = self.pages, self.vmas
        if n == 0:
            return []
        return [n // k + (1 if i < n % k else 0) for i in range(k)]

    def fill_of(self, v: int) -> float:
        return self.fill[v] if isinstance(self.fill, list) else self.fill

    def thp_of(self, v: int) -> bool:
        return bool(self.thp[v]) if isinstance(self.thp, list) else bool(self.thp)

    @property
    def any_thp(self) -> bool:
        return any(self.thp_of(v) for v in range(self.vmas))

    def stride(self, v: int = 0) -> int:
        """VMA ``v``'s stride: page ``i`` of the region in it is touched when ``i % stride == 0`` (0: none)."""
        f = self.fill_of(v)
        return max(1, round(1 / f)) if f > 0 else 0

    def touched(self) -> list[bool]:
        """Whether each page of the region (concatenated VMAs) is touched."""
        out = []
        for v, n in enumerate(self.vma_pages()):
            s, b0 = self.stride(v), len(out)
            out += [s > 0 and (b0 + i) % s == 0 for i in range(n)]
        return out

    def touched_bytes(self) -> int:
        """Memory the layout takes once set up (touched and pinned pages)."""
        return PAGE * sum(a or any(f <= i < f + n for f, n in self.pinned) for i, a in enumerate(self.touched()))


def touch_order(how: str, n: int, seed: int = 0) -> list[int]:
    """The order of ``n`` touched pages' first touch (indices into them) for a ``first_touch`` of
    :class:`RealLayout`."""
    if how == "address":
        return list(range(n))
    if how == "random":
        order = list(range(n))
        random.Random(seed).shuffle(order)
        return order
    k = how.removeprefix("runs:")
    if how.startswith("runs:") and k.isdigit() and int(k) > 0:
        k = int(k)
        runs = list(range(0, n, k))
        random.Random(seed).shuffle(runs)
        return [i for r in runs for i in range(r, min(r + k, n))]
    raise ValueError(f"first_touch '{how}': address, random or runs:K (K pages a run)")


def frame_breaks(frames: list) -> float | None:
    """The fraction of present pages whose frame is not the previous present page's + 1 (region order; the first
    page counts as a break), or None when frame numbers are not readable (they read as 0 without root)."""
    present = [f for f in frames if f is not None]
    if not present or not any(present):
        return None
    breaks = 1 + sum(1 for a, b in zip(present, present[1:]) if b != a + 1)
    return breaks / len(present)


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
    for n in sizes:
        got = libc.mmap(addr, n * PAGE, PROT_RW, MAP_PRIVATE | MAP_ANON | MAP_FIXED, -1, 0)
        if got != addr:
            raise OSError(ctypes.get_errno(), "mmap failed")
        vmas.append((addr, b, n))
        b += n
        addr += layout.vma_span(n) * PAGE
    for v, (a, _, n) in enumerate(vmas):  # after mapping them all: packed neighbours merge until told apart here
        if layout.gaps or v % 2 == 0:
            libc.madvise(a, n * PAGE, 14 if layout.thp_of(v) else 15)  # MADV_HUGEPAGE / MADV_NOHUGEPAGE
    _first_touch(layout, vmas)
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


def _first_touch(layout: RealLayout, vmas: list) -> None:
    """One byte written to every stride-th page of the region, in the layout's ``first_touch`` order."""
    if layout.first_touch == "address":
        _Writes.of(layout, vmas)[0].write()
        return
    pages = []  # (view, byte offset) of each touched page, region order
    for v, (a, b0, n) in enumerate(vmas):
        stride = layout.stride(v)
        if stride:
            view = memoryview((ctypes.c_char * (n * PAGE)).from_address(a)).cast("B")
            pages += [(view, i * PAGE) for i in range((-b0) % stride, n, stride)]
    for i in touch_order(layout.first_touch, len(pages), layout.seed):
        view, off = pages[i]
        view[off] = 1


def _thp_pages() -> int:
    total = 0
    try:
        for line in open("/proc/self/smaps_rollup"):
            if line.startswith("AnonHugePages:"):
                total = int(line.split()[1]) * 1024 // PAGE
    except OSError:
        pass
    return total


def page_frames(pid, vmas) -> list:
    """Frame number of each page (None: not present), region order."""
    out = []
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        for a, _, n in vmas:
            f.seek(a // PAGE * 8)
            for (v,) in struct.iter_unpack("<Q", f.read(n * 8)):
                out.append(v & ((1 << 55) - 1) if v >> 63 else None)
    return out


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class _Writes:
    """One byte written to each of a set of pages, prepared once as strided slice assignments. Before counting,
    :meth:`write` makes the same copies into a scratch buffer, so that the interpreter's own pages involved (these
    objects, the copy's temporary buffer), which a fork write-protects too, are written first: the minor faults
    counted are the writes' own."""

    def __init__(self, parts: list):
        self.parts = parts  # (memoryview of a VMA, slice of its bytes, source bytes)
        self.scratch = memoryview(bytearray(2 * max((len(p[2]) for p in parts), default=0)))

    @classmethod
    def of(cls, layout: RealLayout, vmas: list) -> tuple["_Writes", "_Writes"]:
        """The writes to the touched pages (pinned ones included: pinning faults them in) and to the pinned."""
        touched, pinned = [], []
        for v, (a, b0, n) in enumerate(vmas):
            stride = layout.stride(v)
            view = memoryview((ctypes.c_char * (n * PAGE)).from_address(a)).cast("B")
            if stride:
                first = (-b0) % stride
                touched.append(
                    (view, slice(first * PAGE, n * PAGE, stride * PAGE), b"\x01" * len(range(first, n, stride)))
                )
            for f, cnt in layout.pinned:
                lo, hi = max(f, b0), min(f + cnt, b0 + n)
                if lo < hi:
                    pinned.append((view, slice((lo - b0) * PAGE, (hi - b0) * PAGE, PAGE), b"\x01" * (hi - lo)))
        return cls(touched + pinned), cls(pinned)

    def write(self) -> int:
        """Write every page; returns the minor faults taken (a write to a write-protected page takes one)."""
        for _view, _sl, src in self.parts:  # the same strided copies into a scratch buffer first: the interpreter's
            self.scratch[: 2 * len(src) : 2] = src  # pages these objects and the copy's temporary live on are
        _ = _minflt() - _minflt()  # written before counting (a fork write-protected them too)
        f0 = _minflt()
        for view, sl, src in self.parts:
            view[sl] = src
        return _minflt() - f0


def _fork_ns() -> int:
    """One fork() as the parent sees it; the child exits at once and is reaped."""
    t0 = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    t1 = time.perf_counter_ns()
    os.waitpid(pid, 0)
    return t1 - t0


def _pin_cpu(cpu) -> str | None:
    """Run this process (and the children it forks) on one CPU; returns why not, or None."""
    if cpu is None:
        return "not asked"
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError) as e:
        return f"sched_setaffinity refused: {e}"
    return None


def own_pages(skip=()) -> list[int]:
    """The addresses of this process's present pages in its private writable mappings (``rw-p`` in
    ``/proc/self/maps``), outside the ``skip`` ranges ((low, high) byte addresses: a layout's VMAs, written by their
    own passes): the interpreter's heap, arenas, stack and the written data of its libraries."""
    out = []
    with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pm:
        for line in maps:
            f = line.split()
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            if f[1] != "rw-p" or any(a <= lo and hi <= b for a, b in skip):
                continue
            pm.seek(lo // PAGE * 8)
            for i, (v,) in enumerate(struct.iter_unpack("<Q", pm.read((hi - lo) // PAGE * 8))):
                if v >> 63:
                    out.append(lo + i * PAGE)
    return out


def redirty(addrs: list) -> int:
    """A byte of each page copied onto itself (a store; no object made or freed, which could unmap an arena): each
    page writable and, its only mapper, anon-exclusive again. Returns the minor faults taken."""
    move = ctypes.memmove
    f0 = _minflt()
    for a in addrs:
        move(a, a, 1)
    return _minflt() - f0


class Evictor:
    """A shared anonymous buffer of ``nbytes`` (a fork shares it: no page table of it is copied) read through
    before a fresh fork, so that the fork finds its caches cold, as a process that has been running finds them:
    the passes that restore the state fault every page in and would leave the struct pages and page tables of a
    small layout in cache. 0 bytes: nothing done."""

    def __init__(self, nbytes: int):
        self.buf = mmap.mmap(-1, nbytes) if nbytes else None
        if self.buf is not None:
            self.buf.write(b"\0" * nbytes)  # populated once: later reads fault nothing in

    def __call__(self) -> None:
        if self.buf is not None:
            self.buf.find(b"\1", 0)  # reads every byte, in C (from 0: the default starts at the position)


NO_EVICTION = Evictor(0)


def _visit(touched: "_Writes", pinned: "_Writes", skip=(), fork: bool = True, evict: Evictor = NO_EVICTION) -> dict:
    """One visit of the round-robin: restore and check the modelled state, then time a fork in it (``fresh``) and
    the fork right after (``repeated``: every page the first fork write-protected is still so). The whole process
    is in the modelled state, the interpreter's own pages (:func:`own_pages` outside the layout's ``skip``) too, so
    that a capture of it describes the state its forks start from.

    * ``pinned_faults``: writing the pinned pages; 0 when the pins held through the last forks (the kernel copied
      those pages for the children, so the parent's stayed writable);
    * ``redirty_faults``: writing every touched page: one fault per page the last forks left write-protected (a
      THP: one per huge page), after which each page is writable and, its only mapper, anon-exclusive again;
    * ``check_faults``: writing them all again: 0 when no touched page is left write-protected, the state the
      simulator models (a writable private anonymous PTE implies PageAnonExclusive since Linux 5.19);
    * ``own_pages``, ``own_faults``, ``own_check_faults``: the same for the interpreter's own pages (the check may
      see a few faults of the interpreter's own making).

    Before the fresh fork, ``evict`` reads through a buffer larger than the caches: the fork starts cold, as the
    model's fresh state does. Without ``fork``: the state restored and checked, no fork timed (for a capture)."""
    own = None  # freed before the listing: a page listed is still mapped when written
    own = own_pages(skip)
    p = pinned.write()
    w = touched.write()
    o = redirty(own)
    c = touched.write()
    oc = redirty(own)
    out = {"pinned_faults": p, "redirty_faults": w, "check_faults": c}
    out.update(own_pages=len(own), own_faults=o, own_check_faults=oc)
    if fork:
        evict()
        out["fresh_ns"] = _fork_ns()
        out["repeated_ns"] = _fork_ns()
    return out


def serve() -> None:
    """The measuring process: the first line of stdin is ``{"layout": ..., "cpu": ..., "evict_bytes": ...}``
    (:class:`Evictor`); it sets the layout up, answers one JSON line (with its ``pid``, for a capture), then answers
    each ``{"visits": k}`` line with k visits (:func:`_visit`), each ``{"restore": true}`` with a visit that forks
    nothing, until ``{"quit": true}`` or the end of stdin."""
    first = json.loads(sys.stdin.readline())
    layout = RealLayout(**first["layout"])
    vmas, refused = _setup(layout)
    pinning = _pin_cpu(first.get("cpu"))
    touched, pinned = _Writes.of(layout, vmas)
    skip = [(a, a + n * PAGE) for a, _, n in vmas]
    evict = Evictor(int(first.get("evict_bytes", 0)))
    info = {
        "pid": os.getpid(),
        "thp_pages": _thp_pages() if layout.any_thp else 0,
        "refused": refused,
        "cpu": None if pinning else first.get("cpu"),
        "cpu_pinning": pinning,
    }
    frames = page_frames(os.getpid(), vmas) if vmas else []
    info["frame_breaks"] = frame_breaks(frames)
    info["frames"] = frames if info["frame_breaks"] is not None else None  # region order; None: not present
    print(json.dumps(info), flush=True)
    del info, frames  # the interpreter's own memory: as little as a bare process's as can be
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("quit"):
            break
        if msg.get("restore"):
            print(json.dumps(_visit(touched, pinned, skip, fork=False)), flush=True)
            continue
        visits = [_visit(touched, pinned, skip, evict=evict) for _ in range(int(msg["visits"]))]
        print(json.dumps({k: [v[k] for v in visits] for k in visits[0]}), flush=True)


def sharing(layout: RealLayout) -> dict:
    vmas, refused = _setup(layout)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            data = json.dumps(page_frames("self", vmas)).encode()
        except OSError as e:
            data = json.dumps({"error": str(e)}).encode()
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        child = json.loads(f.read())
    os.waitpid(pid, 0)
    parent = page_frames("self", vmas)
    if isinstance(child, dict) or all(v in (None, 0) for v in parent):
        refused["pagemap"] = "frame numbers are not readable (root is needed) or pagemap is refused"
        return {"layout": asdict(layout), "refused": refused}
    state = []
    for p, c in zip(parent, child):
        state.append("absent" if p is None or c is None else ("shared" if p == c else "copied"))
    return {
        "layout": asdict(layout),
        "state": state,
        "thp_pages": _thp_pages() if layout.any_thp else 0,
        "refused": refused,
    }


def _write_pages(vmas, present: list, value: int) -> None:
    """Write one byte to each page of the region that ``present`` marks, in ascending order: a VMA whose pages are
    all present in one strided copy (C, about 30 ns a page without a fault), the others page by page."""
    i = 0
    for a, _, n in vmas:
        if all(present[i : i + n]):
            view = memoryview((ctypes.c_char * (n * PAGE)).from_address(a)).cast("B")
            view[::PAGE] = bytes([value]) * n
        else:
            for j in range(n):
                if present[i + j]:
                    ctypes.memset(a + j * PAGE, value, 1)
        i += n


def _timed_writes(vmas, present: list, value: int) -> dict:
    """:func:`_write_pages`, timed: nanoseconds and minor faults of the pass."""
    f0, t0 = _minflt(), time.perf_counter_ns()
    _write_pages(vmas, present, value)
    t1 = time.perf_counter_ns()
    return {"ns": t1 - t0, "faults": _minflt() - f0}


def _child_loop(vmas, present, cmd_r: int, out_w: int) -> None:
    """The forked child of :func:`write_frames` and :func:`write_timings`: it lives until told to exit, writing its
    pages (``write``: answers with its frames; ``timed``: with the pass's time and faults) or reporting its frames."""
    cmds, out = os.fdopen(cmd_r, "r"), os.fdopen(out_w, "w")
    for line in cmds:
        cmd = line.strip()
        if cmd == "exit":
            os._exit(0)
        if cmd == "timed":
            out.write(json.dumps(_timed_writes(vmas, present, 2)) + "\n")
        else:
            if cmd == "write":
                _write_pages(vmas, present, 2)
            out.write(json.dumps(page_frames("self", vmas)) + "\n")
        out.flush()
    os._exit(0)


class _Child:
    """A forked child that stays alive (:func:`_child_loop`), asked over pipes."""

    def __init__(self, vmas, present):
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(cmd_w)
            os.close(out_r)
            _child_loop(vmas, present, cmd_r, out_w)
        os.close(cmd_r)
        os.close(out_w)
        self.cmds, self.answers, self.alive = os.fdopen(cmd_w, "w"), os.fdopen(out_r, "r"), True

    def ask(self, cmd: str):
        self.cmds.write(cmd + "\n")
        self.cmds.flush()
        if cmd == "exit":
            os.waitpid(self.pid, 0)
            self.alive = False
            return None
        return json.loads(self.answers.readline())


def write_timings(layout: RealLayout, rounds: int) -> dict:
    """The three write outcomes of spec 11.5 timed on the host, ``rounds`` times: after a fork whose child stays
    alive, the parent writes every present page (each a copy fault: the page is shared), writes them again (no
    fault), then the child writes its pages (each a reuse fault: the parent has moved off them); the child exits.
    Per pass: nanoseconds, minor faults and pages."""
    vmas, refused = _setup(layout)
    present = [f is not None for f in page_frames("self", vmas)]
    passes = {"copy": [], "none": [], "reuse": []}
    for _ in range(rounds):
        child = _Child(vmas, present)
        passes["copy"].append(_timed_writes(vmas, present, 1))
        passes["none"].append(_timed_writes(vmas, present, 3))
        passes["reuse"].append(child.ask("timed"))
        child.ask("exit")
    return {"layout": asdict(layout), "pages": sum(present), "passes": passes, "refused": refused}


def write_frames(layout: RealLayout, steps: list) -> dict:
    """A fork followed by writes (spec 11, checked on the host): the parent and the child (which stays alive until an
    ``exit`` step) write one byte to every present page of the region, in the order of ``steps`` (``parent``,
    ``child``, ``exit``); the frames of every page: the parent's before the fork, the child's right after it, and both
    after the steps (the child's None once it exited)."""
    vmas, refused = _setup(layout)
    before = page_frames("self", vmas)
    present = [f is not None for f in before]
    child = _Child(vmas, present)
    child_at_fork = child.ask("frames")
    for step in steps:
        if step == "parent":
            _write_pages(vmas, present, 1)
        elif step == "child":
            child.ask("write")
        elif step == "exit":
            child.ask("exit")
    child_after = child.ask("frames") if child.alive else None
    parent_after = page_frames("self", vmas)
    if child.alive:
        child.ask("exit")
    if all(v in (None, 0) for v in before):
        refused["pagemap"] = "frame numbers are not readable (root is needed) or pagemap is refused"
    return {
        "layout": asdict(layout),
        "steps": steps,
        "parent_before": before,
        "child_at_fork": child_at_fork,
        "parent_after": parent_after,
        "child_after": child_after,
        "refused": refused,
    }


class LineProcess:
    """A child process driven by JSON lines over its stdin and stdout (``argv``, ``what`` it is for the errors): a
    reply that does not come within ``timeout`` seconds, or a process that dies, is a RuntimeError with its last
    line of stderr (the process is killed: none is left behind); :meth:`close` asks it to quit, then kills it."""

    def __init__(self, argv: list, what: str, timeout: float = 600):
        self.what, self.timeout = what, timeout
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def reply(self) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            why = (self.proc.stderr.read().strip().splitlines() or [f"no answer within {self.timeout:.0f} s"])[-1]
            raise RuntimeError(f"{self.what} failed: {why}")
        return json.loads(line)

    def ask(self, msg: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        return self.reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(10)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class MeasuringProcess(LineProcess):
    """A process that answers :func:`serve`'s requests (this file's interpreter, or the C fork probe)."""

    def visits(self, k: int) -> dict:
        """k visits (:func:`_visit`): lists of fork times and fault counts."""
        return self.ask({"visits": k})

    def restore(self) -> dict:
        """The modelled state restored and checked, no fork (:func:`_visit`): what a capture then describes."""
        return self.ask({"restore": True})


class Worker(MeasuringProcess):
    """A measuring process (:func:`serve`) holding one layout (:class:`LineProcess`)."""

    def __init__(self, layout: RealLayout, cpu: int | None = None, timeout: float = 600, evict_bytes: int = 0):
        self.layout = layout
        argv = [sys.executable, "-I", "-S", os.path.abspath(__file__), "serve"]  # the standard library only
        super().__init__(argv, f"measuring {layout.name}", timeout)
        self.info = self.ask({"layout": asdict(layout), "cpu": cpu, "evict_bytes": evict_bytes})


def _run_here(mode: str, job, name: str, timeout: float) -> dict:
    """This file run as ``mode`` in a fresh process, ``job`` (JSON) on its stdin (thousands of pinned ranges do not
    fit in argv); its JSON answer."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), mode],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"measuring {name} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout)


def run_write_frames(layout: RealLayout, steps: list, timeout: float = 600) -> dict:
    """:func:`write_frames` in a fresh process."""
    return _run_here("writes", {"layout": asdict(layout), "steps": steps}, layout.name, timeout)


def run_write_timings(layout: RealLayout, rounds: int, timeout: float = 600) -> dict:
    """:func:`write_timings` in a fresh process."""
    return _run_here("write-timings", {"layout": asdict(layout), "rounds": rounds}, layout.name, timeout)


def run_sharing(layout: RealLayout, timeout: float = 600) -> dict:
    """Set up ``layout`` in a fresh process, fork it once and read the page frames of parent and child
    (:func:`sharing`)."""
    return _run_here("sharing", asdict(layout), layout.name, timeout)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    elif sys.argv[1] == "writes":
        job = json.loads(sys.stdin.read())
        print(json.dumps(write_frames(RealLayout(**job["layout"]), job["steps"])))
    elif sys.argv[1] == "write-timings":
        job = json.loads(sys.stdin.read())
        print(json.dumps(write_timings(RealLayout(**job["layout"]), job["rounds"])))
    else:
        print(json.dumps(sharing(RealLayout(**json.loads(sys.stdin.read())))))
