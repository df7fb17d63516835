"""The simulator's twin of a :class:`~gpusim.jobs.host.real.RealLayout`: the address space gpusim forks in place of the
real process that :mod:`gpusim.jobs.host.real` builds and measures.

Same VMAs (each at a 2 MiB boundary, one table apart, as the real process maps them, or packed), an anon_vma in
those with a page (a VMA never written has none: the kernel's fork skips it), same page tables, a present
private anonymous page wherever the real process touched one or pinned one (pinning faults a page in), THP extents
where the kernel made THPs, and one FOLL_PIN on every pinned page (on the whole folio of a THP).
"""

from __future__ import annotations

import numpy as np

from gpusim.jobs.host.real import TABLE_PAGES, RealLayout
from gpusim.kernels import pte as P
from gpusim.kernels.flags import BACKING_ANON, FOLIO_ANON, FOLIO_SWAPBACKED, PAGE_ANON_EXCLUSIVE, VM_DEFAULT_ANON
from gpusim.model.builder import SpaceBuilder
from gpusim.model.decode import with_offsets
from gpusim.model.frames import place_by_frames
from gpusim.model.state import AddressSpace


def vma_places(layout: RealLayout) -> list[tuple[int, int, int]]:
    """(first page of the region, first simulated address, pages) of each VMA: each at a table boundary, or packed
    (:attr:`RealLayout.gaps`)."""
    out, addr, base = [], 0, 0
    for n in layout.vma_pages():
        out.append((base, addr, n))
        base += n
        addr += layout.vma_span(n)
    return out


def thp_extents(layout: RealLayout, touched: np.ndarray, places: list, thp_pages: int | None) -> list[tuple]:
    """(first page, first address) of the 2 MiB extents backed by THPs: whole extents of a VMA whose pages are all
    touched, up to ``thp_pages`` worth (None: all of them)."""
    out = []
    budget = None if thp_pages is None else thp_pages // TABLE_PAGES
    for v, (b0, a0, n) in enumerate(places):
        if not layout.thp_of(v):
            continue
        for t in range(n // TABLE_PAGES):
            if budget is not None and len(out) >= budget:
                break
            if touched[b0 + t * TABLE_PAGES : b0 + (t + 1) * TABLE_PAGES].all():
                out.append((b0 + t * TABLE_PAGES, a0 + t * TABLE_PAGES))
    return out


def sim_space(
    layout: RealLayout, variant: str, thp_pages: int | None = None, frames: list | None = None
) -> tuple[AddressSpace, np.ndarray]:
    """The simulator's address space for ``layout`` (see the module docstring), and the simulated address of each
    page of the region (i64 ``(pages,)``). ``thp_pages``: how many pages the kernel backs by THPs, from
    ``/proc/self/smaps``; ``frames``: the real process's frame number of each page of the region (None where not
    present), from its pagemap: the twin's frames then lie in their order (:func:`gpusim.model.frames.place_by_frames`),
    else in address order."""
    touched = np.array(layout.touched(), bool)
    pinned = np.zeros(layout.pages, bool)
    for first, n in layout.pinned:
        pinned[first : first + n] = True
    touched |= pinned  # pinning faults the pages in
    places = vma_places(layout)
    ext = thp_extents(layout, touched, places, thp_pages)
    in_thp = np.zeros(layout.pages, bool)
    for b0, _ in ext:
        in_thp[b0 : b0 + TABLE_PAGES] = True
    b2a = np.zeros(layout.pages, np.int64)
    for b0, a0, n in places:
        b2a[b0 : b0 + n] = a0 + np.arange(n)
    sb = SpaceBuilder(variant)
    written = [bool(touched[b0 : b0 + n].any()) for b0, _, n in places]
    sb.add_vmas([a0 for _, a0, _ in places], [a0 + n for _, a0, n in places], VM_DEFAULT_ANON, BACKING_ANON, written)
    small = np.flatnonzero(touched & ~in_thp)
    ids, pfn = sb.add_folios(small.shape[0], 0, FOLIO_ANON | FOLIO_SWAPBACKED, 1, PAGE_ANON_EXCLUSIVE, 1)
    sb.add_pins(ids[pinned[small]])
    sb.add_entries(b2a[small], with_offsets(P.mk_pte(0, True, True, True, False), pfn))
    head = np.zeros(TABLE_PAGES, np.int64)
    head[0] = PAGE_ANON_EXCLUSIVE
    tids, tfirst = sb.add_folios(
        len(ext), 9, FOLIO_ANON | FOLIO_SWAPBACKED, 1, np.tile(head, len(ext)), 0, pmd_mapcount=1
    )
    sb.add_pins([f for f, (b0, _) in zip(tids.tolist(), ext) if pinned[b0 : b0 + TABLE_PAGES].any()])
    sb.add_pmds([a0 // TABLE_PAGES for _, a0 in ext], with_offsets(P.mk_huge_pmd(0, True, True, True), tfirst))
    space = sb.freeze(has_pinned=bool(layout.pinned))
    if frames is not None:
        real = np.array([-1 if f is None else f for f in frames], np.int64)
        first = np.full(space.memory.nr_folios, -1, np.int64)
        first[ids] = real[small]
        first[tids] = real[[b0 for b0, _ in ext]] if ext else first[tids]
        space = place_by_frames(space, first)
    return space.validate(), b2a
