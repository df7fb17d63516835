"""Capture a running process's address space into an Arrow snapshot (read back by :mod:`gpusim.inputs.snapshot`).

:func:`capture` reads ``/proc/PID/maps`` (the VMAs) and ``/proc/PID/pagemap`` (per page: present, swapped, frame
number, exclusively mapped), and, where readable (root), ``/proc/kpagecount`` (map counts) and ``/proc/kpageflags``
(anonymous, THP). The snapshot is one Arrow IPC file: a row per present or swapped page (``addr`` page number,
``vma``, ``present``, ``swapped``, ``pfn``, ``mapcount`` (-1 unknown), ``anon``, ``thp``, ``exclusive``), with the
VMAs and the capture's context as JSON in the schema metadata (``gpusim.vmas``, ``gpusim.capture``).
"""

from __future__ import annotations

import json
import os
import platform
import re

import numpy as np
import pyarrow as pa

from gpusim.inputs.snapshot import PAGE, frames_readable

KPF_ANON, KPF_THP = 12, 22
_MAPS_RE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) (\S+) (\d+)\s*(.*)$")


def read_maps(pid) -> list[dict]:
    out = []
    for line in open(f"/proc/{pid}/maps"):
        m = _MAPS_RE.match(line.rstrip("\n"))
        if not m:
            continue
        start, end = int(m.group(1), 16) // PAGE, int(m.group(2), 16) // PAGE
        path = m.group(7).strip()
        perms = m.group(3)
        if path == "[vsyscall]":  # not part of the mm's VMA tree
            continue
        if path in ("", "[heap]", "[stack]") or path.startswith("[anon"):
            backing = "anon"
        elif path.startswith(("/dev/zero", "/SYSV", "/memfd:", "/dev/shm/")) or perms[3] == "s" and not path:
            backing = "shmem"
        elif path.startswith("["):  # [vdso], [vvar]: special mappings
            backing = "special"
        else:
            backing = "file"
        out.append({"start": start, "end": end, "perms": perms, "path": path, "backing": backing})
    return out


def _read_u64(path: str, first: int, count: int) -> np.ndarray | None:
    try:
        with open(path, "rb") as f:
            f.seek(first * 8)
            data = f.read(count * 8)
    except OSError:
        return None
    return np.frombuffer(data, "<u8")


class _U64File:
    """One of /proc's u64-per-frame files, opened once (None for each value when it cannot be read)."""

    def __init__(self, path: str):
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError:
            self.fd = None

    def at(self, index: int) -> int | None:
        if self.fd is None:
            return None
        try:
            data = os.pread(self.fd, 8, index * 8)
        except OSError:
            return None
        return int.from_bytes(data, "little") if len(data) == 8 else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)


def read_pagemap(pid, vmas: list[dict], max_vma_pages: int) -> tuple[dict, list[int]]:
    """Per present or swapped page of the VMAs: address, VMA, present, swapped, frame number (0 where unreadable)
    and exclusively mapped, from ``/proc/PID/pagemap``; and the VMAs left out (too large, or special)."""
    cols = {k: [] for k in ("addr", "vma", "present", "swapped", "pfn", "exclusive")}
    skipped = []
    for i, v in enumerate(vmas):
        n = v["end"] - v["start"]
        if n > max_vma_pages or v["backing"] == "special":
            skipped.append(i)
            continue
        for lo in range(0, n, 1 << 18):
            e = _read_u64(f"/proc/{pid}/pagemap", v["start"] + lo, min(1 << 18, n - lo))
            if e is None:
                raise PermissionError(f"/proc/{pid}/pagemap is not readable")
            present = ((e >> np.uint64(63)) & np.uint64(1)).astype(bool)
            swapped = ((e >> np.uint64(62)) & np.uint64(1)).astype(bool)
            keep = np.flatnonzero(present | swapped)
            cols["addr"].append(v["start"] + lo + keep)
            cols["vma"].append(np.full(keep.shape[0], i))
            cols["present"].append(present[keep])
            cols["swapped"].append(swapped[keep] & ~present[keep])
            cols["pfn"].append(np.where(present[keep], e[keep] & np.uint64((1 << 55) - 1), np.uint64(0)))
            cols["exclusive"].append(((e[keep] >> np.uint64(56)) & np.uint64(1)).astype(bool))
    types = {"addr": np.int64, "vma": np.int32, "present": bool, "swapped": bool, "pfn": np.int64, "exclusive": bool}
    return {k: (np.concatenate(v) if v else np.zeros(0)).astype(types[k]) for k, v in cols.items()}, skipped


def read_frames(cat: dict, vmas: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(map count (-1 unknown), anonymous, THP) of each page, from ``/proc/kpagecount`` and ``/proc/kpageflags``
    where frame numbers are readable (else anonymous from the VMA); and whether they were."""
    pfn, n = cat["pfn"], cat["pfn"].shape[0]
    mapcount = np.full(n, -1, np.int64)
    anon = np.array([vmas[int(i)]["backing"] == "anon" for i in cat["vma"]], bool) if n else np.zeros(0, bool)
    thp = np.zeros(n, bool)
    frames_known = frames_readable(pfn, cat["present"])
    if frames_known:
        with _U64File("/proc/kpagecount") as counts, _U64File("/proc/kpageflags") as flags:
            for j in np.flatnonzero(cat["present"] & (pfn != 0)):
                c, f = counts.at(int(pfn[j])), flags.at(int(pfn[j]))
                if c is not None:
                    mapcount[j] = c
                if f is not None:
                    anon[j] = bool((f >> KPF_ANON) & 1)
                    thp[j] = bool((f >> KPF_THP) & 1)
    return mapcount, anon, thp, frames_known


def capture(pid: int, max_vma_pages: int = 1 << 26) -> pa.Table:
    """The snapshot of process ``pid`` (see the module docstring). VMAs larger than ``max_vma_pages`` are recorded
    but their pages are not read (reservations of address space)."""
    vmas = read_maps(pid)
    cat, skipped = read_pagemap(pid, vmas, max_vma_pages)
    mapcount, anon, thp, frames_known = read_frames(cat, vmas)
    table = pa.table(
        {
            "addr": cat["addr"],
            "vma": cat["vma"],
            "present": cat["present"],
            "swapped": cat["swapped"],
            "pfn": cat["pfn"],
            "mapcount": mapcount,
            "anon": anon,
            "thp": thp,
            "exclusive": cat["exclusive"],
        }
    )
    capture_info = {"pid": pid, "kernel": platform.release(), "frames": frames_known, "skipped_vmas": skipped}
    meta = {"gpusim.vmas": json.dumps(vmas), "gpusim.capture": json.dumps(capture_info)}
    return table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})


def write_snapshot(table: pa.Table, path: str | os.PathLike) -> None:
    with pa.ipc.new_file(str(path), table.schema) as w:
        w.write_table(table)
