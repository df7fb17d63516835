"""Facts about the machine gpusim runs on, for reports and dataset metadata."""

from __future__ import annotations

import os
import platform


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


def mem_available_bytes() -> int:
    """``MemAvailable`` of ``/proc/meminfo`` (0 where unknown)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class NotEnoughMemory(ValueError):
    """A fork or sweep point needs more memory than this machine has available."""


def require_memory(need: int | None, what: str) -> None:
    """Refuse up front, with one line naming the memory it needs, a job that would not fit in this machine's
    available memory (``need`` None or the machine's memory unknown: nothing to check)."""
    avail = mem_available_bytes()
    if need is not None and avail and need > avail:
        raise NotEnoughMemory(
            f"{what} needs about {need / 2**30:.1f} GiB of memory and {avail / 2**30:.1f} GiB is available on this "
            "machine: use a smaller size"
        )
