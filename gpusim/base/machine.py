"""Facts about the machine gpusim runs on, for reports and dataset metadata."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import resource
from pathlib import Path

from gpusim.kernels.fields import MEMORY_FIELDS, MM_FIELDS


def user_cache_dir() -> Path:
    """gpusim's files that can be made again (compiled helpers, parsed profiles): ``$XDG_CACHE_HOME/gpusim``, else
    ``~/.cache/gpusim``. Not created here."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpusim"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform module knows."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_description() -> str:
    """``<model>, <n> cpus``."""
    return f"{cpu_model()}, {os.cpu_count()} cpus"


def last_level_cache_bytes() -> int | None:
    """The size of the largest CPU cache this machine reports (``/sys/devices/system/cpu/cpu0/cache``), or None."""
    best = None
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        names = os.listdir(root)
    except OSError:
        return None
    for name in names:
        try:
            text = open(os.path.join(root, name, "size")).read().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            size = int(digits) * unit
            best = size if best is None else max(best, size)
    return best


def _read_int(path: str, prefix: str = "", scale: int = 1) -> int | None:
    """The number on the line of ``path`` that starts with ``prefix`` (the whole file without one), or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    word = line[len(prefix) :].split()[0]
                    return int(word) * scale if word.isdigit() else None
    except (OSError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """Bytes this process's memory cgroup lets it grow by (v2 ``memory.max``, v1 ``memory.limit_in_bytes``), or
    None where it sets no limit."""
    try:
        lines = open("/proc/self/cgroup").read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrl, rel = line.split(":", 2)
        if ctrl == "":  # v2
            limit, used = f"/sys/fs/cgroup{rel}/memory.max", f"/sys/fs/cgroup{rel}/memory.current"
        elif "memory" in ctrl.split(","):  # v1
            base = f"/sys/fs/cgroup/memory{rel}"
            limit, used = f"{base}/memory.limit_in_bytes", f"{base}/memory.usage_in_bytes"
        else:
            continue
        lim, cur = _read_int(limit), _read_int(used)
        if lim is not None and cur is not None and lim < 1 << 60:
            return max(0, lim - cur)
    return None


def mem_available_bytes() -> int:
    """The memory this process can still take (0 where unknown): ``MemAvailable`` of ``/proc/meminfo``, less where
    its memory cgroup or its address-space limit (``RLIMIT_AS``, against its ``VmSize``) leaves less."""
    room = [_read_int("/proc/meminfo", "MemAvailable:", 1024), _cgroup_room()]
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    size = _read_int("/proc/self/status", "VmSize:", 1024)
    if soft != resource.RLIM_INFINITY and size is not None:
        room.append(max(1, soft - size))
    known = [r for r in room if r is not None]
    return min(known) if known else 0


# The bytes of one mapped 4 KiB page in the state: its PTE, its page row and (order 0) its folio row; a swapped
# page holds a swap slot instead of the page and folio rows, which is less.
PAGE_BYTES = MM_FIELDS["pte"][0].itemsize + sum(
    dt.itemsize for name, (dt, _) in MEMORY_FIELDS.items() if name.startswith(("page_", "folio_"))
)
# A fork holds several copies of the state at its peak: the input, the engine's working copy, the child's tables,
# the result, and the invariant checker's decoded entries. Measured with `/usr/bin/time -f %M gpusim fork
# --workload anon --set size=S` (2-vCPU VM, 2026-11-30): 3.3x (16 GiB) to 5.3x (1 GiB) of the state's bytes above
# the interpreter's own 190 MiB; the estimate takes 4x of an upper bound of the state plus 256 MiB.
FORK_COPIES = 4
PROCESS_BYTES = 256 << 20


def fork_memory_for_pages(pages: int) -> int:
    """About the most memory a fork of an address space of ``pages`` mapped 4 KiB pages holds at once."""
    return PROCESS_BYTES + FORK_COPIES * pages * PAGE_BYTES


class NotEnoughMemory(ValueError):
    """A fork or sweep point needs more memory than this machine has available."""


def require_memory(need: int | None, what: str, instead: str = "") -> None:
    """Refuse up front, with one line naming the memory it needs, a job that would not fit in this machine's
    available memory (``need`` None or the machine's memory unknown: nothing to check); ``instead`` names another
    way than a smaller size."""
    avail = mem_available_bytes()
    if need is not None and avail and need > avail:
        raise NotEnoughMemory(
            f"{what} needs about {need / 2**30:.1f} GiB of memory and {avail / 2**30:.1f} GiB is available on this "
            f"machine: use a smaller size{f', or {instead}' if instead else ''}"
        )


# glibc's mallopt parameters (malloc.h) and its defaults for the trim threshold
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
GLIBC_TRIM_DEFAULT = 128 * 1024
HEAP_BLOCK_MAX = 32 << 20  # glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)


def _glibc():
    """This process's C library when it is glibc with ``mallopt`` and ``malloc_trim``, else None."""
    try:
        libc = ctypes.CDLL(None)
        if platform.libc_ver()[0] != "glibc" or not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
            return None
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def reused_heap():
    """Within the block, arrays of up to 32 MiB come from glibc's heap and freed ones stay there for the next: a
    loop that builds and drops arrays of the same sizes (a streamed fork, chunk after chunk) reuses the same memory
    instead of mapping fresh pages and faulting every one of them in again (measured: a third of a streamed fork's
    time on this VM). After it, the heap is trimmed back. Nothing changes where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_MAX)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_DEFAULT)
        libc.malloc_trim(0)
