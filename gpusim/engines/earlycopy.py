"""Room for a fork's early copies, and their numbering in address order (issue 11, item 2).

The reference numbers the folios and pages it allocates at fork one after the other as it walks the tables in
address order. The compiled slow path (:mod:`gpusim.kernels.slowpath`) runs independent items (tables and THPs) in
parallel instead, so numbering as it goes would depend on which thread came first. So each item allocates from a
segment of its own: its bound (every mapping it holds of a folio that may be pinned, known after the plan pass) and
an exclusive prefix sum of the bounds give each item its first new folio and page. After the run, the segments are
closed up (:func:`gpusim.kernels.cpu.number_in_address_order`): the rows each item used move down to an exclusive
prefix sum of what the items used, and the child entries and logs naming them follow. The result is the
reference's numbering, and the arrays grow once per fork.

New folios and pages are allocated in step (each an order-0 folio of one page), so an item's folios and pages move
by the same amount.
"""

from __future__ import annotations

import numpy as np

from gpusim.base import backend as B
from gpusim.kernels import flags as F
from gpusim.kernels.flags import PIN_BIAS, PTRS_PER_TABLE
from gpusim.kernels.pte import PFN_SHIFT
from gpusim.kernels.slowpath import NR_STATE, ST_DUPLICATES, ST_END_FOLIO, ST_INSTALLS, ST_NEXT_FOLIO, ST_NEXT_PFN
from gpusim.model.decode import without_offsets
from gpusim.model.state import Memory


def maybe_pinned_folios(m: Memory, large_order: int, xp=np) -> tuple[np.ndarray, int]:
    """(bool per folio: it is maybe pinned, or could become so through the references a fork itself takes (the
    small-folio heuristic); the most early copies a fork of ``m`` can make: every mapping of those folios, a PTE or
    a PMD's 512 pages). ``xp``: the array module of ``m``'s arrays (CuPy: computed on the device)."""
    if not m.nr_folios:
        return xp.zeros(0, bool), 0
    if m.nr_pages >= F.COMPILED_FROM and xp is np:
        from gpusim.kernels import scan

        maybe, bound = scan.maybe_pinned_folios(
            m.folio_order,
            m.folio_refcount,
            m.folio_pincount,
            m.folio_pmd_mapcount,
            m.folio_first_pfn,
            m.page_mapcount,
            large_order,
            PIN_BIAS,
        )
        return maybe, int(bound)
    nr = xp.left_shift(np.int64(1), m.folio_order.astype(np.int64))
    mapped = xp.bincount(m.page_folio, weights=m.page_mapcount, minlength=m.nr_folios).astype(np.int64)
    mapped += m.folio_pmd_mapcount.astype(np.int64) * nr
    large = m.folio_order >= large_order
    maybe = xp.where(large, m.folio_pincount > 0, m.folio_refcount.astype(np.int64) + mapped + 1 >= PIN_BIAS)
    return maybe, int(mapped[maybe].sum())


def item_states(bounds: np.ndarray, nr_folios: int, nr_pages: int) -> tuple[np.ndarray, np.ndarray]:
    """(the first row of each item's segment, counted from the first new row; the items' allocator and log states,
    ``(len(bounds), NR_STATE)``, for :func:`gpusim.kernels.cpu.slow_tables`)."""
    seg = np.cumsum(bounds) - bounds
    states = np.zeros((len(bounds), NR_STATE), np.int64)
    states[:, ST_NEXT_FOLIO] = nr_folios + seg
    states[:, ST_NEXT_PFN] = nr_pages + seg
    states[:, ST_INSTALLS] = seg
    states[:, ST_DUPLICATES] = seg
    states[:, ST_END_FOLIO] = nr_folios + seg + bounds
    return seg, states


FOLIO_ROWS = ("folio_order", "folio_refcount", "folio_pincount", "folio_true_pins", "folio_flags")
PAGE_ROWS = ("page_mapcount", "page_flags")


def repeat_where(xp, values: np.ndarray, counts: np.ndarray):
    """``numpy.repeat(values, counts)`` (host arrays in) made with ``xp``: each of the ``sum(counts)`` positions
    finds its item by a binary search of the counts' prefix sums (CuPy's ``repeat`` takes host counts only)."""
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    return xp.asarray(values)[xp.searchsorted(xp.asarray(ends), xp.arange(total), side="right")]


def number_in_address_order(nr_folios, nr_pages, seg, order, mem, sp, cpte, hcpte, xp) -> tuple[int, int, int]:
    """The closing-up of :func:`gpusim.kernels.cpu.number_in_address_order` as array operations of ``xp`` (CuPy:
    where a device-resident fork's state is), every move a gather by prefix sums: an item's used rows, installs and
    duplicates go to the exclusive prefix sums of what the items used, shifted down by ``d``, the item's segment
    start less its new start; the child entries of moved installs (``cpte``, or ``hcpte`` on the host for THPs)
    take the new pfns. ``sp.state`` and ``hcpte`` are host arrays. Returns (the new rows, installs, duplicates)."""
    nf, npg, st = int(nr_folios), int(nr_pages), sp.state
    used, ninst, ndup = st[:, ST_NEXT_FOLIO] - nf - seg, st[:, ST_INSTALLS] - seg, st[:, ST_DUPLICATES] - seg
    d = seg - (np.cumsum(used) - used)  # how far each item's rows move down
    total, ni, nd = int(used.sum()), int(ninst.sum()), int(ndup.sum())
    if (d[used > 0] != 0).any():
        src = xp.arange(total) + repeat_where(xp, d, used)
        for name in FOLIO_ROWS:
            a = getattr(mem, name)
            a[nf : nf + total] = a[nf + src]
        sp.folio_pmd_mapcount[nf : nf + total] = sp.folio_pmd_mapcount[nf + src]
        for name in PAGE_ROWS:
            a = getattr(mem, name)
            a[npg : npg + total] = a[npg + src]
        sp.page_content[npg : npg + total] = sp.page_content[npg + src]
        mem.folio_first_pfn[nf : nf + total] = npg + xp.arange(total)
        mem.page_folio[npg : npg + total] = nf + xp.arange(total)
    shift = repeat_where(xp, d, ninst)
    inst = sp.installs[xp.arange(ni) + repeat_where(xp, seg - (np.cumsum(ninst) - ninst), ninst)]
    inst[:, 1] -= shift
    sp.installs[:ni] = inst
    moved, pfn = shift != 0, inst[:, 1].astype(np.uint64) << np.uint64(PFN_SHIFT)
    rows, slot = repeat_where(xp, order, ninst), inst[:, 0] % PTRS_PER_TABLE
    pte_rows = moved & (rows >= 0)
    r, a = rows[pte_rows], slot[pte_rows]
    cpte[r, a] = without_offsets(cpte[r, a]) | pfn[pte_rows]
    thp = B.to_host(moved & (rows < 0))
    if thp.any():  # a split THP's child table, on the host
        hr, ha, hp = (B.to_host(x)[thp] for x in (-rows - 1, slot, pfn))
        hcpte[hr, ha] = without_offsets(hcpte[hr, ha]) | hp
    dups = sp.duplicates[xp.arange(nd) + repeat_where(xp, seg - (np.cumsum(ndup) - ndup), ndup)]
    dups[:, 0] -= repeat_where(xp, d, ndup)
    sp.duplicates[:nd] = dups
    return total, ni, nd
