"""Capture a running process's address space into an Arrow snapshot, and turn a snapshot into a gpusim state.

:func:`capture` reads ``/proc/PID/maps`` (the VMAs) and ``/proc/PID/pagemap`` (per page: present, swapped, frame
number, exclusively mapped), and, where readable (root), ``/proc/kpagecount`` (map counts) and ``/proc/kpageflags``
(anonymous, THP). The snapshot is one Arrow IPC file: a row per present or swapped page (``addr`` page number,
``vma``, ``present``, ``swapped``, ``pfn``, ``mapcount`` (-1 unknown), ``anon``, ``thp``, ``exclusive``), with the
VMAs and the capture's context as JSON in the schema metadata (``gpusim.vmas``, ``gpusim.capture``).

:func:`snapshot_space` builds the address space gpusim forks: each VMA with flags from its permissions (a private
mapping is assumed to have VM_MAYWRITE, as mappings of writable files and anonymous memory do; /proc does not show
it), a present page as an order-0 folio with the captured map count (the pages of a 2 MiB-aligned run of THP pages as
a PMD-mapped THP), a swapped page as a swap entry of count 1. /proc does not expose pins: give pinned address ranges
explicitly.
"""

from __future__ import annotations

import json
import os
import platform
import re

import numpy as np
import pyarrow as pa

PAGE = 4096
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
        if path == "[vsyscall]":                  # not part of the mm's VMA tree
            continue
        if path in ("", "[heap]", "[stack]") or path.startswith("[anon"):
            backing = "anon"
        elif path.startswith(("/dev/zero", "/SYSV", "/memfd:", "/dev/shm/")) or perms[3] == "s" and not path:
            backing = "shmem"
        elif path.startswith("["):                   # [vdso], [vvar]: special mappings
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


def capture(pid: int, max_vma_pages: int = 1 << 26) -> pa.Table:
    """The snapshot of process ``pid`` (see the module docstring). VMAs larger than ``max_vma_pages`` are recorded
    but their pages are not read (reservations of address space)."""
    vmas = read_maps(pid)
    cols = {k: [] for k in ("addr", "vma", "present", "swapped", "pfn", "exclusive")}
    skipped = []
    for i, v in enumerate(vmas):
        n = v["end"] - v["start"]
        if n > max_vma_pages or v["backing"] == "special":
            skipped.append(i)
            continue
        for lo in range(0, n, 1 << 18):
            cnt = min(1 << 18, n - lo)
            e = _read_u64(f"/proc/{pid}/pagemap", v["start"] + lo, cnt)
            if e is None:
                raise PermissionError(f"/proc/{pid}/pagemap is not readable")
            present = (e >> np.uint64(63)) & np.uint64(1)
            swapped = (e >> np.uint64(62)) & np.uint64(1)
            keep = np.flatnonzero((present | swapped) != 0)
            cols["addr"].append(v["start"] + lo + keep)
            cols["vma"].append(np.full(keep.shape[0], i))
            cols["present"].append(present[keep].astype(bool))
            cols["swapped"].append(swapped[keep].astype(bool) & ~present[keep].astype(bool))
            cols["pfn"].append(np.where(present[keep] != 0, e[keep] & np.uint64((1 << 55) - 1),
                                        np.uint64(0)).astype(np.int64))
            cols["exclusive"].append(((e[keep] >> np.uint64(56)) & np.uint64(1)).astype(bool))
    cat = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}
    pfn = cat["pfn"].astype(np.int64)
    n = pfn.shape[0]
    mapcount = np.full(n, -1, np.int64)
    anon = np.array([vmas[int(i)]["backing"] == "anon" for i in cat["vma"]], bool) if n else np.zeros(0, bool)
    thp = np.zeros(n, bool)
    frames_known = n and (pfn[cat["present"].astype(bool)] != 0).any()
    if frames_known:
        for j in np.flatnonzero(cat["present"].astype(bool) & (pfn != 0)):
            c = _read_u64("/proc/kpagecount", int(pfn[j]), 1)
            f = _read_u64("/proc/kpageflags", int(pfn[j]), 1)
            if c is not None and len(c):
                mapcount[j] = int(c[0])
            if f is not None and len(f):
                anon[j] = bool((int(f[0]) >> KPF_ANON) & 1)
                thp[j] = bool((int(f[0]) >> KPF_THP) & 1)
    table = pa.table({"addr": pa.array(cat["addr"].astype(np.int64)), "vma": pa.array(cat["vma"].astype(np.int32)),
                      "present": pa.array(cat["present"].astype(bool)),
                      "swapped": pa.array(cat["swapped"].astype(bool)),
                      "pfn": pa.array(pfn), "mapcount": pa.array(mapcount), "anon": pa.array(anon),
                      "thp": pa.array(thp), "exclusive": pa.array(cat["exclusive"].astype(bool))})
    meta = {"gpusim.vmas": json.dumps(vmas),
            "gpusim.capture": json.dumps({"pid": pid, "kernel": platform.release(), "frames": bool(frames_known),
                                          "skipped_vmas": skipped})}
    return table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})


def write_snapshot(table: pa.Table, path: str | os.PathLike) -> None:
    with pa.ipc.new_file(str(path), table.schema) as w:
        w.write_table(table)


def read_snapshot(path: str | os.PathLike) -> pa.Table:
    try:
        with pa.ipc.open_file(str(path)) as r:
            t = r.read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise ValueError(f"{path}: not a gpusim snapshot ({e})") from None
    if b"gpusim.vmas" not in (t.schema.metadata or {}):
        raise ValueError(f"{path}: not a gpusim snapshot (no gpusim.vmas metadata)")
    return t


def parse_range(text: str) -> tuple[int, int]:
    """``START-END`` (bytes, hex with 0x or decimal) -> (first page, end page)."""
    m = re.fullmatch(r"\s*(0x[0-9a-fA-F]+|\d+)\s*-\s*(0x[0-9a-fA-F]+|\d+)\s*", text)
    if not m:
        raise ValueError(f"pinned range '{text}' is not START-END (addresses, 0x... or decimal)")
    a, b = int(m.group(1), 0), int(m.group(2), 0)
    if b <= a:
        raise ValueError(f"pinned range '{text}' is empty")
    return a // PAGE, -(-b // PAGE)


def snapshot_space(path_or_table, variant: str, pinned: list[tuple[int, int]] = ()):
    """The address space of a snapshot, with one FOLL_PIN on each present page of the ``pinned`` page ranges."""
    from gpusim.kernels import pte as P
    from gpusim.kernels.folio import is_large_for_pins, pin_refcount_delta
    from gpusim.decode import rss_of
    from gpusim.kernels.flags import (
        FOLIO_ANON, FOLIO_SWAPBACKED, PAGE_ANON_EXCLUSIVE, VM_EXEC, VM_MAYREAD, VM_MAYWRITE, VM_READ, VM_SHARED,
        VM_WRITE,
    )
    from gpusim.state import MM, AddressSpace, Memory, tables_from_entries
    from gpusim.variants import get_variant
    t = read_snapshot(path_or_table) if not isinstance(path_or_table, pa.Table) else path_or_table
    vmas = json.loads(t.schema.metadata[b"gpusim.vmas"])
    large = get_variant(variant).large_pin_order
    addr = t.column("addr").to_numpy().astype(np.int64)
    vma = t.column("vma").to_numpy().astype(np.int64)
    present = t.column("present").to_numpy(zero_copy_only=False)
    mapc = t.column("mapcount").to_numpy().astype(np.int64)
    anon = t.column("anon").to_numpy(zero_copy_only=False)
    thp = t.column("thp").to_numpy(zero_copy_only=False)
    excl = t.column("exclusive").to_numpy(zero_copy_only=False)
    backing_of = {"anon": 0, "file": 1, "shmem": 2, "special": 1}
    flags = []
    for v in vmas:
        f = 0
        r, w, x, s = v["perms"]
        if r == "r":
            f |= VM_READ | VM_MAYREAD
        if w == "w":
            f |= VM_WRITE
        if x == "x":
            f |= VM_EXEC
        if s == "s":
            f |= VM_SHARED | (VM_MAYWRITE if w == "w" else 0)
        else:
            f |= VM_MAYWRITE
        flags.append(f)
    pin = np.zeros(addr.shape[0], bool)
    for lo, hi in pinned:
        pin |= (addr >= lo) & (addr < hi)
    # THPs: 512 present THP pages of one VMA from a 2 MiB boundary
    is_thp_head = np.zeros(addr.shape[0], bool)
    cand = np.flatnonzero(present & thp & (addr % 512 == 0))
    for i in cand.tolist():
        j = i + 511
        if j < addr.shape[0] and addr[j] == addr[i] + 511 and thp[i:j + 1].all() and present[i:j + 1].all() \
                and (vma[i:j + 1] == vma[i]).all():
            is_thp_head[i] = True
    in_thp = np.zeros(addr.shape[0], bool)
    for i in np.flatnonzero(is_thp_head).tolist():
        in_thp[i:i + 512] = True
    small = np.flatnonzero(present & ~in_thp)
    heads = np.flatnonzero(is_thp_head)
    ns, nh = small.shape[0], heads.shape[0]
    folio_anon = np.concatenate([anon[small], np.ones(nh, bool)])
    shmem = np.array([vmas[int(v)]["backing"] == "shmem" for v in vma[small]] + [False] * nh, bool)
    fl = np.where(folio_anon, FOLIO_ANON | FOLIO_SWAPBACKED, np.where(shmem, FOLIO_SWAPBACKED, 0))
    m_small = np.maximum(mapc[small], 1)
    ref = np.concatenate([m_small + (~anon[small]).astype(np.int64), np.ones(nh, np.int64)])
    pins_small = pin[small]
    pins_head = np.array([pin[i:i + 512].any() for i in heads.tolist()], bool)
    order = np.concatenate([np.zeros(ns, np.int64), np.full(nh, 9)])
    d_small = pin_refcount_delta(0, large)
    d_head = pin_refcount_delta(9, large)
    ref[:ns] += pins_small * d_small
    ref[ns:] += pins_head * d_head
    pincount = np.concatenate([np.zeros(ns, np.int64), pins_head * int(is_large_for_pins(9, large))])
    true = np.concatenate([pins_small, pins_head]).astype(np.int64)
    npg = ns + 512 * nh
    first = np.concatenate([np.arange(ns), ns + 512 * np.arange(nh)])
    page_folio = np.concatenate([np.arange(ns), ns + np.repeat(np.arange(nh), 512)])
    page_map = np.concatenate([m_small, np.zeros(512 * nh, np.int64)])
    pflags = np.concatenate([np.where(anon[small] & excl[small] & (m_small == 1), PAGE_ANON_EXCLUSIVE, 0),
                             np.tile(np.r_[PAGE_ANON_EXCLUSIVE, np.zeros(511, np.int64)], nh)])
    swapped = np.flatnonzero(~present)
    memory = Memory.build(folio_order=order, folio_refcount=ref, folio_pincount=pincount, folio_true_pins=true,
                          folio_pmd_mapcount=np.concatenate([np.zeros(ns), np.ones(nh)]), folio_flags=fl,
                          folio_first_pfn=first, page_folio=page_folio, page_mapcount=page_map, page_flags=pflags,
                          page_content=np.arange(1, npg + 1), swap_count=np.ones(swapped.shape[0]),
                          swap_levels=np.zeros(swapped.shape[0]),
                          swap_content=np.arange(npg + 1, npg + 1 + swapped.shape[0]),
                          next_content=npg + 1 + swapped.shape[0])
    vflags = np.array(flags, np.uint64)
    writable = (vflags[vma[small]] & np.uint64(VM_WRITE)) != 0
    base_rw = np.uint64(P.mk_pte(0, True, True, True, False))
    base_ro = np.uint64(P.mk_pte(0, False, True, True, False))
    val_small = np.where(writable & anon[small], base_rw, base_ro) | (np.arange(ns, dtype=np.uint64)
                                                                     << np.uint64(P.PFN_SHIFT))
    excl_sw = get_variant(variant).anon_exclusive
    val_sw = np.uint64(P.mk_swap_pte(0, excl_sw)) | (np.arange(swapped.shape[0], dtype=np.uint64)
                                                     << np.uint64(P.PFN_SHIFT))
    a_all = np.concatenate([addr[small], addr[swapped]])
    v_all = np.concatenate([val_small, val_sw])
    tables, pte = tables_from_entries(a_all, v_all)
    pmd_t = addr[heads] // 512
    pmd_v = np.array([P.mk_huge_pmd(ns + 512 * k, bool(vflags[vma[h]] & np.uint64(VM_WRITE)), True, True)
                      for k, h in enumerate(heads.tolist())], np.uint64)
    has_anon = np.zeros(len(vmas), bool)
    has_anon[vma[present & anon]] = True
    mm = MM(vma_start=np.array([v["start"] for v in vmas], np.int64),
            vma_end=np.array([v["end"] for v in vmas], np.int64), vma_flags=vflags,
            vma_backing=np.array([backing_of[v["backing"]] for v in vmas], np.uint8),
            vma_anon_vma=np.array([v["backing"] == "anon" or bool(has_anon[i]) for i, v in enumerate(vmas)], bool),
            table_index=tables, pte=pte, pmd_index=pmd_t.astype(np.int64), pmd=pmd_v,
            rss=rss_of(pte, pmd_v, memory), has_pinned=bool(len(pinned)), on_swapoff_list=bool(swapped.shape[0]))
    space = AddressSpace(mm, memory)
    space.validate()
    return space
