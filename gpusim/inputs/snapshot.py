"""Snapshots as workloads: an Arrow snapshot written by ``gpusim capture`` (:mod:`gpusim.jobs.host.capture`) turned into
the address space gpusim forks.

Each VMA gets flags from its permissions (a private mapping is assumed to have VM_MAYWRITE, as mappings of writable
files and anonymous memory do; /proc does not show it) and an anon_vma where it holds an anonymous page, present or
swapped (/proc does not show anon_vma either: a VMA never written, a PROT_NONE reservation, a file mapping only read,
has none, and the kernel's fork skips its page tables; one written and since emptied is taken to have none too), a
present page becomes an order-0 folio with the captured map count (the pages of a 2 MiB-aligned run of THP pages a
PMD-mapped THP), a swapped page a swap entry of count 1.
/proc does not expose pins: pinned address ranges are given explicitly (:func:`parse_range`).
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING

import numpy as np

from gpusim.base.machine import fork_memory_for_pages, require_memory
from gpusim.kernels import pte as P
from gpusim.kernels.flags import (
    BACKING_FILE,
    BACKINGS,
    FOLIO_ANON,
    FOLIO_SWAPBACKED,
    PAGE_ANON_EXCLUSIVE,
    PAGE_SIZE,
    REF_MAX,
    VM_EXEC,
    VM_MAYREAD,
    VM_MAYWRITE,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
)
from gpusim.model.builder import SpaceBuilder
from gpusim.model.decode import with_offsets
from gpusim.model.frames import free_frames_between, place_by_frames
from gpusim.model.state import AddressSpace
from gpusim.model.variants import get_variant

if TYPE_CHECKING:
    import pyarrow as pa

PAGE = PAGE_SIZE


def read_snapshot(path: str | os.PathLike) -> pa.Table:
    import pyarrow as pa  # here, not at the top: a command that reads no snapshot does not load pyarrow (start-up)

    try:
        with pa.ipc.open_file(str(path)) as r:
            t = r.read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise ValueError(f"{path}: not a gpusim snapshot ({e})") from None
    if b"gpusim.vmas" not in (t.schema.metadata or {}):
        raise ValueError(f"{path}: not a gpusim snapshot (no gpusim.vmas metadata)")
    check_snapshot(t, path)
    return t


PAGE_COLUMNS = ("addr", "vma", "present", "mapcount", "anon", "thp", "exclusive")
BOOL_COLUMNS = ("present", "anon", "thp", "exclusive")
VMA_KEYS = {"start": int, "end": int, "perms": str, "backing": str}


def snapshot_vmas(t: pa.Table, where) -> list[dict]:
    """The VMAs of a snapshot's ``gpusim.vmas`` metadata, checked; ValueError naming ``where`` and the field."""
    try:
        vmas = json.loads(t.schema.metadata[b"gpusim.vmas"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{where}: metadata gpusim.vmas is not JSON ({e})") from None
    if not isinstance(vmas, list):
        raise ValueError(f"{where}: metadata gpusim.vmas is not a list of VMAs")
    for i, v in enumerate(vmas):
        bad = [k for k, typ in VMA_KEYS.items() if not isinstance(v, dict) or not isinstance(v.get(k), typ)]
        if bad:
            raise ValueError(f"{where}: metadata gpusim.vmas[{i}]: {', '.join(bad)} missing or of the wrong type")
        if not 0 <= v["start"] < v["end"] <= 1 << 45:  # page numbers, below 57-bit virtual addresses
            raise ValueError(f"{where}: metadata gpusim.vmas[{i}]: start and end are not pages with start < end")
        if not re.fullmatch(r"[r-][w-][x-][ps]", v["perms"]):
            raise ValueError(
                f"{where}: metadata gpusim.vmas[{i}]: perms '{v['perms']}' is not as /proc/PID/maps has it"
            )
    return vmas


def check_snapshot(t: pa.Table, where) -> None:
    """ValueError naming ``where`` and the column or field when a snapshot (edited by hand, say) is not one gpusim
    reads: a page column missing, not of integers (booleans for the flags) or with an empty value, a map count
    outside 0 .. :data:`~gpusim.kernels.flags.REF_MAX`, a VMA index outside the VMAs, an address outside its VMA."""
    import pyarrow as pa

    for name in PAGE_COLUMNS:
        if name not in t.column_names:
            raise ValueError(f"{where}: column '{name}' is missing")
        typ = t.schema.field(name).type
        if name in BOOL_COLUMNS and not pa.types.is_boolean(typ):
            raise ValueError(f"{where}: column '{name}' holds {typ}, not booleans")
        if name not in BOOL_COLUMNS and not pa.types.is_integer(typ):
            raise ValueError(f"{where}: column '{name}' holds {typ}, not integers")
        if t.column(name).null_count:
            r = int(np.flatnonzero(t.column(name).is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"{where}: column '{name}', row {r}: empty (null)")
    if "pfn" in t.column_names:  # optional: frame numbers, 0 where unreadable
        typ = t.schema.field("pfn").type
        if not pa.types.is_integer(typ):
            raise ValueError(f"{where}: column 'pfn' holds {typ}, not integers")
        pfn = t.column("pfn")
        bad = np.flatnonzero(pfn.is_null().to_numpy(zero_copy_only=False))
        if not bad.size:
            bad = np.flatnonzero(pfn.to_numpy(zero_copy_only=False).astype(np.int64) < 0)
        if bad.size:
            r = int(bad[0])
            raise ValueError(f"{where}: column 'pfn', row {r}: not a frame number (empty or negative)")
    mapc = t.column("mapcount").to_numpy(zero_copy_only=False)
    bad = np.flatnonzero((mapc < 0) | (mapc > REF_MAX))
    if bad.size:
        r = int(bad[0])
        raise ValueError(f"{where}: column 'mapcount', row {r}: map count {int(mapc[r])} outside 0..{REF_MAX}")
    vmas = snapshot_vmas(t, where)
    vma = t.column("vma").to_numpy(zero_copy_only=False).astype(np.int64)
    bad = np.flatnonzero((vma < 0) | (vma >= len(vmas)))
    if bad.size:
        r = int(bad[0])
        raise ValueError(f"{where}: column 'vma', row {r}: VMA index {int(vma[r])} (the snapshot has {len(vmas)})")
    addr = t.column("addr").to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.array([v["start"] for v in vmas], np.int64)
    ends = np.array([v["end"] for v in vmas], np.int64)
    outside = np.flatnonzero((addr < starts[vma]) | (addr >= ends[vma])) if len(vmas) else np.zeros(0, np.int64)
    if outside.size:
        r = int(outside[0])
        raise ValueError(f"{where}: column 'addr', row {r}: page {int(addr[r])} is outside its VMA {int(vma[r])}")


def parse_range(text: str) -> tuple[int, int]:
    """``START-END`` (bytes, hex with 0x or decimal) -> (first page, end page)."""
    m = re.fullmatch(r"\s*(0x[0-9a-fA-F]+|[0-9]+)\s*-\s*(0x[0-9a-fA-F]+|[0-9]+)\s*", text)
    if not m:
        raise ValueError(f"pinned range '{text}' is not START-END (addresses, 0x... or decimal)")
    a, b = int(m.group(1), 0), int(m.group(2), 0)
    if b > 1 << 64:
        raise ValueError(f"pinned range '{text}' ends past 2**64 (a 64-bit address space)")
    if b <= a:
        raise ValueError(f"pinned range '{text}' is empty")
    return a // PAGE, -(-b // PAGE)


def vma_flags(perms: str) -> int:
    """``VM_*`` flags of a mapping from its ``/proc/PID/maps`` permissions (a private mapping is assumed to have
    VM_MAYWRITE; a shared one has it when it is writable)."""
    r, w, x, s = perms
    f = (VM_READ | VM_MAYREAD if r == "r" else 0) | (VM_WRITE if w == "w" else 0) | (VM_EXEC if x == "x" else 0)
    if s == "s":
        return f | VM_SHARED | (VM_MAYWRITE if w == "w" else 0)
    return f | VM_MAYWRITE


def thp_heads(addr: np.ndarray, vma: np.ndarray, present: np.ndarray, thp: np.ndarray) -> np.ndarray:
    """Rows that start a PMD-mapped THP: 512 present THP pages of one VMA from a 2 MiB boundary (pagemap does not
    say whether a THP is PMD-mapped; an aligned run of 512 is taken to be)."""
    heads = np.zeros(addr.shape[0], bool)
    for i in np.flatnonzero(present & thp & (addr % 512 == 0)).tolist():
        j = i + 511
        if (
            j < addr.shape[0]
            and addr[j] == addr[i] + 511
            and thp[i : j + 1].all()
            and present[i : j + 1].all()
            and (vma[i : j + 1] == vma[i]).all()
        ):
            heads[i] = True
    return heads


class _Pages:
    """A snapshot's page rows as arrays: address, VMA, captured map count, present, anonymous, exclusively mapped,
    and whether a ``pinned`` range holds the page."""

    def __init__(self, t: pa.Table, pinned):
        col = {
            name: t.column(name).to_numpy(zero_copy_only=False)
            for name in ("addr", "vma", "present", "mapcount", "anon", "thp", "exclusive")
        }
        self.addr, self.vma, self.mapc = (col[k].astype(np.int64) for k in ("addr", "vma", "mapcount"))
        self.pfn = _frames(t)
        self.present, self.anon, self.excl, self.thp = col["present"], col["anon"], col["exclusive"], col["thp"]
        self.pin = np.zeros(self.addr.shape[0], bool)
        for lo, hi in pinned:
            self.pin |= (self.addr >= lo) & (self.addr < hi)


def _add_small_pages(
    sb: SpaceBuilder, p: _Pages, rows: np.ndarray, vflags: np.ndarray, shmem: np.ndarray
) -> np.ndarray:
    """Present pages outside THPs: one order-0 folio each, with the captured map count (the page cache holds one
    more reference), exclusive if anonymous, exclusively mapped and mapped once. Returns their folio ids."""
    m = np.maximum(p.mapc[rows], 1)
    a = p.anon[rows]
    fl = np.where(a, FOLIO_ANON | FOLIO_SWAPBACKED, np.where(shmem[p.vma[rows]], FOLIO_SWAPBACKED, 0))
    pflags = np.where(a & p.excl[rows] & (m == 1), PAGE_ANON_EXCLUSIVE, 0)
    ids, pfn = sb.add_folios(rows.shape[0], 0, fl, m + ~a, pflags, m)
    sb.add_pins(ids[p.pin[rows]])
    writable = (vflags[p.vma[rows]] & np.uint64(VM_WRITE)) != 0
    base = np.where(
        writable & a, np.uint64(P.mk_pte(0, True, True, True, False)), np.uint64(P.mk_pte(0, False, True, True, False))
    )
    sb.add_entries(p.addr[rows], with_offsets(base, pfn))
    return ids


def _add_thps(sb: SpaceBuilder, p: _Pages, heads: np.ndarray, vflags: np.ndarray) -> np.ndarray:
    """PMD-mapped THPs at the rows ``heads``; a THP with a pinned page is pinned once. Returns their folio ids."""
    head = np.zeros(512, np.int64)
    head[0] = PAGE_ANON_EXCLUSIVE
    tids, tfirst = sb.add_folios(
        heads.shape[0], 9, FOLIO_ANON | FOLIO_SWAPBACKED, 1, np.tile(head, heads.shape[0]), 0, pmd_mapcount=1
    )
    sb.add_pins([f for f, h in zip(tids.tolist(), heads.tolist()) if p.pin[h : h + 512].any()])
    sb.add_pmds(
        p.addr[heads] // 512,
        [
            P.mk_huge_pmd(int(q), bool(vflags[p.vma[h]] & np.uint64(VM_WRITE)), True, True)
            for q, h in zip(tfirst.tolist(), heads.tolist())
        ],
    )
    return tids


def snapshot_space(path_or_table, variant: str, pinned: list[tuple[int, int]] = ()) -> AddressSpace:
    """The address space of a snapshot, with one FOLL_PIN on each present page of the ``pinned`` page ranges, its
    frames in the order of the captured frame numbers (:func:`gpusim.model.frames.place_by_frames`; in address order
    where the capture could not read them: :func:`frames_known`)."""
    import pyarrow as pa

    if isinstance(path_or_table, pa.Table):
        t = path_or_table
        check_snapshot(t, "snapshot")
    else:
        t = read_snapshot(path_or_table)
    p = _Pages(t, pinned)
    known = frames_readable(p.pfn, p.present)
    extra = free_frames_between(p.pfn) if known else 0  # the free frames between its frames
    require_memory(fork_memory_for_pages(t.num_rows + extra), "the snapshot's fork")  # one row per page
    vmas = snapshot_vmas(t, "snapshot")
    heads = np.flatnonzero(thp_heads(p.addr, p.vma, p.present, p.thp))
    in_thp = np.zeros(p.addr.shape[0], bool)
    for i in heads.tolist():
        in_thp[i : i + 512] = True
    vflags = np.array([vma_flags(v["perms"]) for v in vmas], np.uint64)
    has_anon = np.zeros(len(vmas), bool)  # an anon_vma where the VMA holds an anonymous page, present or swapped
    has_anon[p.vma[(p.present & p.anon) | ~p.present]] = True
    sb = SpaceBuilder(variant)
    sb.add_vmas(
        [v["start"] for v in vmas],
        [v["end"] for v in vmas],
        vflags,
        [BACKINGS.get(v["backing"], BACKING_FILE) for v in vmas],  # [vdso] and the like: as files
        has_anon,
    )
    small = np.flatnonzero(p.present & ~in_thp)
    ids = _add_small_pages(sb, p, small, vflags, np.array([v["backing"] == "shmem" for v in vmas], bool))
    tids = _add_thps(sb, p, heads, vflags)
    swapped = np.flatnonzero(~p.present)  # a slot of count 1 each
    slots = sb.add_slots(np.ones(swapped.shape[0], np.int64), np.zeros(swapped.shape[0], np.int64))
    sb.add_entries(p.addr[swapped], with_offsets(P.mk_swap_pte(0, get_variant(variant).anon_exclusive), slots))
    space = sb.freeze(has_pinned=bool(len(pinned)))
    if known:
        real = np.full(space.memory.nr_folios, -1, np.int64)
        real[ids], real[tids] = p.pfn[small], p.pfn[heads]
        space = place_by_frames(space, np.where(real > 0, real, -1))
    return space.validate()


def _frames(t: pa.Table) -> np.ndarray:
    """The frame number of each page row (i64; 0 where the capture could not read it, or without a ``pfn``
    column)."""
    if "pfn" not in t.column_names:
        return np.zeros(t.num_rows, np.int64)
    return t.column("pfn").to_numpy(zero_copy_only=False).astype(np.int64)


def frames_readable(pfn, present) -> bool:
    """Whether frame numbers were read for pages with these ``pfn`` and ``present`` columns: some present page has
    one (pagemap shows 0 to a reader without root)."""
    return bool(np.asarray(pfn)[np.asarray(present, bool)].any())


def frames_known(t: pa.Table) -> bool:
    """Whether a snapshot holds the frame numbers of its present pages (a capture as root)."""
    return frames_readable(_frames(t), t.column("present").to_numpy(zero_copy_only=False))
