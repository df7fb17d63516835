"""The one builder of address spaces: VMAs, folios with their pages, pins, swap slots, PTEs and huge PMDs, frozen
into an :class:`~gpusim.model.state.AddressSpace`.

The layout parser, the workload generators, the simulator's twin of a real process and captured snapshots all
build through :class:`SpaceBuilder`, so the rules of assembly live here once: ``add_pin`` with the variant's notion
of a large folio (spec 1.6), content identities, the rss counters the tables imply, ``has_pinned`` and
``on_swapoff_list``, and the dtypes of the state model. Every ``add_*`` takes arrays (or scalars standing for a
whole run), so a generator adds a million folios in one call.
"""

from __future__ import annotations

import numpy as np

from gpusim.kernels.fields import MEMORY_FIELDS
from gpusim.kernels.folio import is_large_for_pins, pin_refcount_delta
from gpusim.model.decode import rss_of
from gpusim.model.state import MM, AddressSpace, Memory, tables_from_entries
from gpusim.model.variants import get_variant

_FOLIO = ("order", "refcount", "pincount", "true_pins", "pmd_mapcount", "flags", "first_pfn")
_PAGE = ("folio", "mapcount", "flags", "content")
_SLOT = ("count", "levels", "content")
_VMA = ("start", "end", "flags", "backing", "anon_vma")


def _run(v, n: int) -> np.ndarray:
    """``v`` (a scalar or an array of ``n``) as an int64 array of ``n``."""
    a = np.asarray(v, dtype=np.int64)
    return np.broadcast_to(a, (n,)) if a.ndim == 0 else a.reshape(n)


class SpaceBuilder:
    """An address space under construction for ``variant`` (which folios count as large for pins).

    ``content`` says how content identities are numbered: ``"created"``, one counter over pages and slots in the
    order they are added (the layout notation: a layout's contents follow its tokens); ``"pages_first"``, pages
    ``1 .. N`` in pfn order, then slots (the generators, the host twin and snapshots). ``content_base`` (with
    ``"pages_first"``) numbers a part of a larger space: (the first page's content, the first slot's, the space's
    ``next_content``).
    """

    def __init__(self, variant: str, content: str = "pages_first", content_base: tuple[int, int, int] | None = None):
        if content not in ("created", "pages_first"):
            raise ValueError(f"content numbering '{content}' is neither 'created' nor 'pages_first'")
        self.large_order = get_variant(variant).large_pin_order
        self.content = content
        self.content_base = content_base
        self.folio = {k: [] for k in _FOLIO}
        self.page = {k: [] for k in _PAGE}
        self.slot = {k: [] for k in _SLOT}
        self.vma = {k: [] for k in _VMA}
        self.addr: list[np.ndarray] = []
        self.val: list[np.ndarray] = []
        self.pmd_table: list[np.ndarray] = []
        self.pmd_val: list[np.ndarray] = []
        self.pins: list[tuple[np.ndarray, np.ndarray]] = []
        self.nr_folios = self.nr_pages = self.nr_slots = 0
        self.next_content = 1

    def _contents(self, n: int) -> np.ndarray:
        if self.content == "pages_first":
            return np.zeros(n, np.int64)  # numbered at freeze
        c = np.arange(self.next_content, self.next_content + n, dtype=np.int64)
        self.next_content += n
        return c

    def add_vmas(self, start, end, flags, backing, anon_vma) -> None:
        """VMAs ``[start, end)`` (page numbers) with their ``VM_*`` flags, ``BACKING_*`` and anon_vma; added in
        address order."""
        n = np.asarray(start).size
        for k, v in zip(_VMA, (start, end, flags, backing, anon_vma)):
            self.vma[k].append(_run(v, n))

    def add_folios(
        self, count: int, order, flags, refcount, page_flags=0, page_mapcount=1, pmd_mapcount=0
    ) -> tuple[np.ndarray, np.ndarray]:
        """``count`` folios of ``2**order`` pages each (``order`` one for all, or one each): ``flags``
        (``FOLIO_*``), ``refcount`` and ``pmd_mapcount`` per folio, ``page_flags`` (``PAGE_*``) and
        ``page_mapcount`` per page (scalars or arrays). Returns (folio ids, first pfns), both i64 ``(count,)``."""
        count = int(count)
        ids = self.nr_folios + np.arange(count, dtype=np.int64)
        if np.ndim(order) == 0:
            order = int(order)
            npg = count << order
            first = self.nr_pages + (np.arange(count, dtype=np.int64) << order)
            page_folio = np.repeat(ids, 1 << order)
        else:
            sizes = np.left_shift(1, np.asarray(order, np.int64))
            npg = int(sizes.sum())
            first = self.nr_pages + np.cumsum(sizes) - sizes
            page_folio = np.repeat(ids, sizes)
        for k, v in (
            ("order", order),
            ("refcount", refcount),
            ("pincount", 0),
            ("true_pins", 0),
            ("pmd_mapcount", pmd_mapcount),
            ("flags", flags),
            ("first_pfn", first),
        ):
            self.folio[k].append(_run(v, count))
        for k, v in (
            ("folio", page_folio),
            ("mapcount", page_mapcount),
            ("flags", page_flags),
            ("content", self._contents(npg)),
        ):
            self.page[k].append(_run(v, npg))
        self.nr_folios += count
        self.nr_pages += npg
        return ids, first

    def add_pins(self, folios, k=1) -> None:
        """``add_pin`` (spec 1.6) ``k`` times on each of ``folios``: PIN_BIAS references each for a small folio, one
        reference and one pincount for a large one; applied when the state is frozen."""
        folios = np.asarray(folios, np.int64).reshape(-1)
        if folios.size:
            self.pins.append((folios, _run(k, folios.size)))

    def add_slots(self, count, levels) -> np.ndarray:
        """Swap slots with their counts and continuation levels (arrays, or scalars for one slot). Returns their
        numbers."""
        n = np.asarray(count).size
        ids = self.nr_slots + np.arange(n, dtype=np.int64)
        for k, v in (("count", count), ("levels", levels), ("content", self._contents(n))):
            self.slot[k].append(_run(v, n))
        self.nr_slots += n
        return ids

    def add_entries(self, addr, val) -> None:
        """PTEs ``val`` at page addresses ``addr``; each table holding one exists (an entry of 0 makes an empty
        table)."""
        addr = np.asarray(addr, np.int64).reshape(-1)
        self.addr.append(addr)
        self.val.append(np.broadcast_to(np.asarray(val, np.uint64), addr.shape))

    def add_pmds(self, table, val) -> None:
        """Huge PMDs ``val`` over whole tables ``table``."""
        table = np.asarray(table, np.int64).reshape(-1)
        self.pmd_table.append(table)
        self.pmd_val.append(np.broadcast_to(np.asarray(val, np.uint64), table.shape))

    @property
    def pinned(self) -> bool:
        """Whether any pin was added."""
        return any(int(k.sum()) for _, k in self.pins)

    def memory(self) -> Memory:
        def cat(kind: str, parts: dict) -> dict:  # each field once, straight in the model's dtype
            out = {}
            for k, v in parts.items():
                dt = MEMORY_FIELDS[f"{kind}_{k}"][0]
                out[k] = np.concatenate(v, dtype=dt, casting="unsafe") if v else np.zeros(0, dt)
            return out

        fo, pg, sl = cat("folio", self.folio), cat("page", self.page), cat("swap", self.slot)
        for ids, k in self.pins:
            order = fo["order"][ids]
            orders, at = np.unique(order, return_inverse=True)
            delta = np.array([pin_refcount_delta(int(o), self.large_order) for o in orders], np.int64)[at]
            for name, add in (
                ("refcount", k * delta),
                ("pincount", k * is_large_for_pins(order, self.large_order)),
                ("true_pins", k),
            ):  # in the field's own dtype: numpy's add.at is slow when it must cast
                np.add.at(fo[name], ids, np.broadcast_to(add, ids.shape).astype(fo[name].dtype))
        if self.content == "pages_first":
            page1, slot1, self.next_content = self.content_base or (1, self.nr_pages + 1, 0)
            pg["content"] = np.arange(page1, page1 + self.nr_pages, dtype=np.uint64)
            sl["content"] = np.arange(slot1, slot1 + self.nr_slots, dtype=np.uint64)
            self.next_content = self.next_content or self.nr_pages + self.nr_slots + 1
        return Memory.build(
            **{f"folio_{k}": v for k, v in fo.items()},
            **{f"page_{k}": v for k, v in pg.items()},
            **{f"swap_{k}": v for k, v in sl.items()},
            next_content=self.next_content,
        )

    def freeze(self, has_pinned: bool | None = None, on_swapoff_list: bool | None = None) -> AddressSpace:
        """The address space built (not validated: call its ``validate``). ``has_pinned`` is the parent's
        MMF_HAS_PINNED (default: whether any pin was added); ``on_swapoff_list`` (default: whether a slot
        exists)."""
        memory = self.memory()
        cat = lambda parts, dt: np.concatenate(parts, dtype=dt, casting="unsafe") if parts else np.zeros(0, dt)  # noqa: E731
        tables, pte = tables_from_entries(cat(self.addr, np.int64), cat(self.val, np.uint64))
        pmd_t, pmd_v = cat(self.pmd_table, np.int64), cat(self.pmd_val, np.uint64)
        order = np.argsort(pmd_t, kind="stable")
        mm = MM(
            vma_start=cat(self.vma["start"], np.int64),
            vma_end=cat(self.vma["end"], np.int64),
            vma_flags=cat(self.vma["flags"], np.uint64),
            vma_backing=cat(self.vma["backing"], np.uint8),
            vma_anon_vma=cat(self.vma["anon_vma"], np.bool_),
            table_index=tables,
            pte=pte,
            pmd_index=pmd_t[order],
            pmd=pmd_v[order],
            rss=rss_of(pte, pmd_v, memory),
            has_pinned=self.pinned if has_pinned is None else bool(has_pinned),
            on_swapoff_list=self.nr_slots > 0 if on_swapoff_list is None else bool(on_swapoff_list),
        )
        return AddressSpace(mm, memory)
