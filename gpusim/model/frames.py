"""Physical page order: where a space's folios lie in physical memory.

The state numbers frames (a page row is its pfn), so the physical order of a space is the order of its page rows.
The builders lay folios out in address order, one after another: the frames of a freshly populated buffer. A
long-running process is not like that (allocator reuse, frees, compaction scatter its frames), and the kernel's fork
pays for it: its per-PTE work touches each page's ``struct page``, which streams when the frames follow the virtual
order and misses the cache when they do not (spec section 8, ``pte.frame_break``). This module renumbers a built
space's frames:

* :func:`frame_order_keys` and :func:`place_frames` with :func:`ordered`: a ``frame_order`` knob (``address``,
  ``random``, ``runs:K``) for generated spaces, drawn per folio from a hash of ``(seed, folio)`` inside groups (a
  region's table rows), so that a chunk of a generated space is renumbered exactly as the same rows of the whole;
* :func:`place_by_frames`: the order of real frame numbers (a captured process, the measuring process of
  calibration), with the free frames that lay between folios in real memory (up to :data:`FRAME_NEAR` of them), so
  that the model sees the same breaks as the real process.

Renumbering moves every array of a page or folio with it and rewrites the entries that name a page (present
entries with a struct page, migration and device-private entries, huge PMDs); special entries, swap entries and
swap slots are left alone. A free frame is an order-0 folio with no reference, flagged ``FOLIO_FREED``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gpusim.base import backend as B
from gpusim.kernels import pte as P
from gpusim.kernels.fields import MEMORY_FIELDS, MM_FIELDS
from gpusim.kernels.flags import FOLIO_FREED, FRAME_NEAR
from gpusim.model.decode import names_page, offsets, with_offsets, without_offsets
from gpusim.model.state import AddressSpace, Memory

FRAME_ORDERS = ("address", "random", "runs:K")


def parse_frame_order(how: str) -> tuple[str, int]:
    """(``address`` | ``random`` | ``runs``, K) for a ``frame_order`` of :data:`FRAME_ORDERS`; ValueError else."""
    text = str(how)
    if text in ("address", "random"):
        return text, 0
    k = text.removeprefix("runs:")
    if text.startswith("runs:") and k.isdigit() and int(k) > 0:
        return "runs", int(k)
    raise ValueError(f"'{text}' is not a frame order: address, random or runs:K (runs of K folios, K >= 1)")


def _mix(z):
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def frame_order_keys(how: str, seed: int, folio_ids):
    """A sort key per folio (``folio_ids``: each folio's number in the whole space) for the frame order ``how``:
    equal keys for ``address``, a hash of the folio for ``random``, a hash of its run of K folios for ``runs:K``."""
    kind, k = parse_frame_order(how)
    ids = np.asarray(folio_ids).astype(np.uint64)
    if kind == "address":
        return np.zeros(ids.shape, np.uint64)
    if kind == "runs":
        ids = ids // np.uint64(k)
    with np.errstate(over="ignore"):
        return _mix(ids ^ _mix(np.uint64(int(seed) & P.M64)))


def ordered(groups, keys) -> np.ndarray:
    """The folios (their rows) sorted by group, then key, then row: a physical order that keeps each group's frames
    in its own range."""
    return np.lexsort((np.arange(keys.shape[0]), keys, np.asarray(groups, np.int64)))


def place_frames(space: AddressSpace, order, hole_before=None) -> AddressSpace:
    """``space`` with its folios laid out in physical ``order`` (folio rows, each once), ``hole_before`` free frames
    before each (a count per position of ``order``; none without); see the module docstring. A space in device
    memory is renumbered on the host and its arrays go back to the device."""
    device = {n for n, a in _fields(space).items() if B.on_device(a)}
    if not device:
        return _place(space, order, hole_before)
    xp = B.array_module(_fields(space)[next(iter(device))])
    placed = _place(_with_fields(space, {n: B.to_host(a) for n, a in _fields(space).items()}), order, hole_before)
    return _with_fields(placed, {n: xp.asarray(a) if n in device else a for n, a in _fields(placed).items()})


def _fields(space: AddressSpace) -> dict:
    """Every array of a space by name (mm's prefixed ``mm.``, memory's ``memory.``)."""
    return {
        **{f"mm.{n}": getattr(space.mm, n) for n in MM_FIELDS},
        **{f"memory.{n}": getattr(space.memory, n) for n in MEMORY_FIELDS},
    }


def _with_fields(space: AddressSpace, arrays: dict) -> AddressSpace:
    mm = dataclasses.replace(space.mm, **{n[3:]: a for n, a in arrays.items() if n.startswith("mm.")})
    memory = dataclasses.replace(space.memory, **{n[7:]: a for n, a in arrays.items() if n.startswith("memory.")})
    return AddressSpace(mm, memory)


def _place(space: AddressSpace, order, hole_before) -> AddressSpace:
    mem, mm = space.memory, space.mm
    order = np.asarray(order, np.int64)
    nf, npg = mem.nr_folios, mem.nr_pages
    if order.shape[0] != nf or (nf and not np.array_equal(np.sort(order), np.arange(nf))):
        raise ValueError(f"a frame order must name each of the {nf} folios once")
    size = np.left_shift(np.int64(1), mem.folio_order.astype(np.int64))
    holes = np.zeros(nf, np.int64) if hole_before is None else np.asarray(hole_before).astype(np.int64)
    nh = int(holes.sum())
    step = holes + size[order]
    end = np.cumsum(step)
    new_first = np.empty(nf, np.int64)
    new_first[order] = end - size[order]
    k = holes[holes > 0]
    hole_pfn = np.repeat((end - step)[holes > 0], k) + np.arange(nh) - np.repeat(np.cumsum(k) - k, k)
    # every page row moves with its folio
    pf = mem.page_folio.astype(np.int64)
    new_pfn = new_first[pf] + (np.arange(npg, dtype=np.int64) - mem.folio_first_pfn[pf].astype(np.int64))
    arrays = {}
    for name, (dtype, _) in MEMORY_FIELDS.items():
        a = getattr(mem, name)
        if name.startswith("folio_"):
            fill = {"folio_flags": FOLIO_FREED, "folio_first_pfn": 0}.get(name, 0)
            a = np.concatenate([a, np.full(nh, fill, dtype)])
        elif name.startswith("page_"):
            out = np.zeros(npg + nh, dtype)
            out[new_pfn] = a
            a = out
        arrays[name] = a
    arrays["folio_first_pfn"][:nf] = new_first
    arrays["folio_first_pfn"][nf:] = hole_pfn
    arrays["page_folio"][hole_pfn] = np.arange(nf, nf + nh)
    memory = Memory(**arrays, next_content=mem.next_content)
    pte = np.asarray(mm.pte, np.uint64)
    hit = names_page(pte)
    if hit.any():
        pte = pte.copy()
        pte[hit] = with_offsets(without_offsets(pte[hit]), new_pfn[offsets(pte[hit])])
    pmd = np.asarray(mm.pmd, np.uint64)
    if pmd.shape[0]:
        pmd = with_offsets(without_offsets(pmd), new_pfn[offsets(pmd)])
    return AddressSpace(dataclasses.replace(mm, pte=pte, pmd=pmd), memory)


def with_frame_order(space: AddressSpace, how: str, seed: int = 0) -> AddressSpace:
    """``space`` renumbered in the frame order ``how`` (:data:`FRAME_ORDERS`) over all its folios: the knob for a
    space built whole (a layout, a twin)."""
    if parse_frame_order(how)[0] == "address":
        return space
    n = space.memory.nr_folios
    return place_frames(space, ordered(np.zeros(n, np.int64), frame_order_keys(how, seed, np.arange(n))))


def place_by_frames(space: AddressSpace, real_first) -> AddressSpace:
    """``space`` renumbered in the order of each folio's real first frame number (``real_first``, i64 per folio;
    -1 where unknown: those keep their place after the known ones), with as many free frames between two folios that
    follow each other in that order as lay between them in real memory, up to :data:`FRAME_NEAR` (beyond it every
    distance is a break of the stream alike)."""
    real = np.asarray(real_first, np.int64)
    size = np.left_shift(np.int64(1), B.to_host(space.memory.folio_order).astype(np.int64))
    known = real >= 0
    key = np.where(known, real, real.max(initial=0) + 1 + np.arange(real.shape[0]))
    order = np.argsort(key, kind="stable")
    r = key[order]
    hole = np.zeros(order.shape[0], np.int64)
    gap = r[1:] - (r[:-1] + size[order[:-1]])  # free frames between them (negative: the same frame named twice)
    hole[1:] = np.where(known[order[1:]], np.clip(gap, 0, FRAME_NEAR), 0)
    return place_frames(space, order, hole)


def free_frames_between(pfns) -> int:
    """How many free frames :func:`place_by_frames` adds for pages with the real frame numbers ``pfns`` (0 where
    unknown): what a space built from them takes beyond its own pages (for a memory estimate before building it)."""
    f = np.unique(np.asarray(pfns, np.int64))
    f = f[f > 0]
    return int(np.clip(np.diff(f) - 1, 0, FRAME_NEAR).sum()) if f.size > 1 else 0
