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
