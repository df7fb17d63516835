"""The layout notation of spec 7.1, parsed into an :class:`~gpusim.state.AddressSpace`.

A layout is a space-separated list of tokens ``kind(:mod)*(*count)?``. Page tokens take addresses from left to
right starting at 0; structural tokens take none. With no ``vma`` token the whole layout is one private anonymous
VMA with ``VM_READ|VM_WRITE|VM_MAYREAD|VM_MAYWRITE`` and an anon_vma, and the parent has ``has_pinned`` set, as the
spec's tests assume.

Page tokens (default PTE: present, W=1, dirty=1, young=1):

==========  ==================================================================================================
``none``    an empty entry in an existing table
``normal``  a new order-0 anon folio, ref 1, map 1, anon-exclusive; ``pinned`` is ``normal:pin``
``zero``    the zero page: present, special, W=0, dirty=0
``file``    a page-cache folio (not anon), ref 2, map 1, W=0; ``shmem`` is the same, swap-backed
``swap``    a swap entry of a fresh slot, count 1, levels 0 (``exclusive`` in linux-6.18)
``migw``    a write migration entry to a fresh anon folio (ref 1, map 0); ``migr`` a read one
``devw``    a writable device-private entry to a fresh anon device folio (ref 1, map 1); ``devr`` read-only
``pfn``     a raw pfn (special, no struct page), for VM_PFNMAP / VM_MIXEDMAP VMAs
``folioN``  N = 2..512 (a power of two) PTEs mapping one order-log2(N) anon folio, ref N, each page map 1
``thp``     a PMD-mapped order-9 anon folio over a whole table (width 512, table-aligned), ref 1
``hole``    an address of the current VMA where the parent has no entry and, by itself, no page table
``gap``     an address outside any VMA; ends the current VMA
==========  ==================================================================================================

Modifiers: ``ro`` (W=0), ``clean`` (dirty=0), ``old`` (young=0), ``pin`` / ``pin=K`` (K FOLL_PIN references,
applied after ``ref``), ``ref=K`` (folio refcount), ``nonex`` / ``nonex=i,j`` (``anon_exclusive`` cleared on all /
the listed pages of the folio; on ``swap``, a non-exclusive entry), ``cnt=K`` and ``lv=L`` (swap count and
continuation levels), ``excl`` (``migr`` read-exclusive, linux-6.18 only), ``hwpoison`` (page poisoned).

Structural tokens (width 0):

* ``vma(:flag)*`` starts a new VMA at the current address (the previous one ends there). Flags: ``shared``,
  ``ro`` (no VM_WRITE, still a COW mapping), ``nomaywrite`` (no VM_WRITE nor VM_MAYWRITE), ``exec``, ``file``,
  ``shmem``, ``noanon`` (no anon_vma), ``dontcopy``, ``wipeonfork``, ``pfnmap``, ``mixedmap``, ``hugetlb``.
  After a ``gap``, page tokens reopen a VMA with the flags of the one before the gap.
* ``mm:has_pinned=0|1`` sets the parent's ``has_pinned`` (default 1), whatever the pins of the layout.

A page table exists wherever a token other than ``hole``/``gap`` covers an address; the others are then NONE, so
``normal*700 pinned normal*323`` spans two tables (two ``copy_pte_range`` calls).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from gpusim.kernels import pte as P
from gpusim.kernels.folio import is_large_for_pins, pin_refcount_delta
from gpusim.kernels.flags import (
    BACKING_ANON, BACKING_FILE, BACKING_SHMEM, FOLIO_ANON, FOLIO_DEVICE_PRIVATE, FOLIO_SWAPBACKED, PAGE_ANON_EXCLUSIVE, PAGE_HWPOISON, PTRS_PER_TABLE, VM_DEFAULT_ANON,
    VM_DONTCOPY, VM_EXEC, VM_HUGETLB, VM_MAYWRITE, VM_MIXEDMAP, VM_PFNMAP, VM_SHARED, VM_WIPEONFORK, VM_WRITE,
    swap_cap,
)
from gpusim.decode import rss_of
from gpusim.state import MM, AddressSpace, Memory
from gpusim.variants import DEFAULT_VARIANT, get_variant

MAX_COUNT = 1 << 26                  # per-token repeat bound, so a typo cannot ask for terabytes


class LayoutError(ValueError):
    """A layout token is malformed; ``index`` (0-based) and ``column`` point at it."""

    def __init__(self, message: str, text: str, index: int, column: int, token: str):
        self.text, self.index, self.column, self.token = text, index, column, token
        super().__init__(f"layout token {index + 1} '{token}' (column {column + 1}): {message}")

    def pointer(self) -> str:
        """The layout with a caret under the offending token (for human output)."""
        return f"{self.text}\n{' ' * self.column}{'^' * max(1, len(self.token))}"


PAGE_KINDS = {"none", "normal", "pinned", "zero", "file", "shmem", "swap", "migw", "migr", "devw", "devr", "pfn",
              "thp", "hole", "gap"}
_ALLOWED_MODS = {
    "none": set(), "hole": set(), "gap": set(),
    "normal": {"ro", "clean", "old", "pin", "ref", "nonex", "hwpoison"},
    "pinned": {"ro", "clean", "old", "pin", "ref", "nonex", "hwpoison"},
    "zero": {"old"},
    "file": {"ro", "clean", "old", "pin", "ref", "hwpoison"},
    "shmem": {"ro", "clean", "old", "pin", "ref", "hwpoison"},
    "swap": {"cnt", "lv", "nonex"},
    "migw": {"ref"}, "migr": {"ref", "excl"},
    "devw": {"ref", "nonex"}, "devr": {"ref", "nonex"},
    "pfn": {"ro", "clean", "old"},
    "folio": {"ro", "clean", "old", "pin", "ref", "nonex", "hwpoison"},
    "thp": {"ro", "clean", "old", "pin", "ref", "nonex"},
}
_VMA_FLAGS = {"shared", "ro", "nomaywrite", "exec", "file", "shmem", "anon", "noanon", "dontcopy", "wipeonfork",
              "pfnmap", "mixedmap", "hugetlb"}
_TOKEN_RE = re.compile(r"^(?P<body>[^*]+)(?:\*(?P<count>[^*]*))?$")


@dataclass
class _Vma:
    start: int
    flags: int = VM_DEFAULT_ANON
    backing: int = BACKING_ANON
    anon_vma: bool = True
    end: int = -1


class _Builder:
    """Accumulates folios, pages, slots and PTEs as Python lists, then freezes them into arrays."""

    def __init__(self, variant: str):
        self.variant = variant
        self.v = get_variant(variant)
        self.large_order = self.v.large_pin_order
        self.addr = 0
        self.vmas: list[_Vma] = []
        self.open: _Vma | None = None
        self.template: _Vma | None = None
        self.ptes: dict[int, int] = {}
        self.tables: set[int] = set()
        self.pmds: dict[int, int] = {}
        self.folio = {k: [] for k in ("order", "ref", "pin", "true", "pmdmap", "flags", "first")}
        self.page = {k: [] for k in ("folio", "map", "flags", "content")}
        self.slot = {k: [] for k in ("count", "levels", "content")}
        self.content = 1
        self.has_pinned = True
        self.has_pinned_override: bool | None = None

    def next_content(self) -> int:
        c = self.content
        self.content += 1
        return c

    def new_folio(self, order: int, flags: int, page_map: int, page_flags: int) -> tuple[int, int]:
        f = len(self.folio["order"])
        first = len(self.page["folio"])
        for k, v in (("order", order), ("ref", 0), ("pin", 0), ("true", 0), ("pmdmap", 0), ("flags", flags),
                     ("first", first)):
            self.folio[k].append(v)
        for _ in range(1 << order):
            self.page["folio"].append(f)
            self.page["map"].append(page_map)
            self.page["flags"].append(page_flags)
            self.page["content"].append(self.next_content())
        return f, first

    def add_pin(self, f: int, k: int) -> None:
        """``add_pin`` of spec 1.6, ``k`` times, with the variant's notion of a large folio."""
        order = self.folio["order"][f]
        self.folio["ref"][f] += k * pin_refcount_delta(order, self.large_order)
        self.folio["pin"][f] += k if is_large_for_pins(order, self.large_order) else 0
        self.folio["true"][f] += k
        if k:
            self.has_pinned = True

    def vma_for_page(self) -> _Vma:
        if self.open is None:
            t = self.template
            self.open = _Vma(self.addr, t.flags, t.backing, t.anon_vma) if t else _Vma(self.addr)
            self.vmas.append(self.open)
        return self.open

    def close_vma(self) -> None:
        if self.open is not None:
            self.open.end = self.addr
            if self.open.end == self.open.start:
                self.vmas.remove(self.open)
            self.template = self.open
            self.open = None

    def set_pte(self, v: int) -> None:
        self.ptes[self.addr] = v
        self.tables.add(self.addr // PTRS_PER_TABLE)
        self.addr += 1

    def freeze(self) -> AddressSpace:
        self.close_vma()
        i64 = np.int64
        memory = Memory.build(
            folio_order=self.folio["order"], folio_refcount=self.folio["ref"], folio_pincount=self.folio["pin"],
            folio_true_pins=self.folio["true"], folio_pmd_mapcount=self.folio["pmdmap"],
            folio_flags=self.folio["flags"], folio_first_pfn=self.folio["first"], page_folio=self.page["folio"],
            page_mapcount=self.page["map"], page_flags=self.page["flags"], page_content=self.page["content"],
            swap_count=self.slot["count"], swap_levels=self.slot["levels"], swap_content=self.slot["content"],
            next_content=self.content,
        )
        tables = sorted(self.tables)
        pte = np.zeros((len(tables), PTRS_PER_TABLE), dtype=np.uint64)
        row = {t: i for i, t in enumerate(tables)}
        for a, v in self.ptes.items():
            pte[row[a // PTRS_PER_TABLE], a % PTRS_PER_TABLE] = v
        pmd_tables = sorted(self.pmds)
        mm = MM(
            vma_start=np.array([v.start for v in self.vmas], dtype=i64),
            vma_end=np.array([v.end for v in self.vmas], dtype=i64),
            vma_flags=np.array([v.flags for v in self.vmas], dtype=np.uint64),
            vma_backing=np.array([v.backing for v in self.vmas], dtype=np.uint8),
            vma_anon_vma=np.array([v.anon_vma for v in self.vmas], dtype=np.bool_),
            table_index=np.array(tables, dtype=i64),
            pte=pte,
            pmd_index=np.array(pmd_tables, dtype=i64),
            pmd=np.array([self.pmds[t] for t in pmd_tables], dtype=np.uint64),
            rss=rss_of(pte, np.array([self.pmds[t] for t in pmd_tables], dtype=np.uint64), memory),
            has_pinned=self.has_pinned if self.has_pinned_override is None else self.has_pinned_override,
            on_swapoff_list=bool(self.slot["count"]),
        )
        return AddressSpace(mm, memory).validate()


def _int_mod(val: str | None, name: str, lo: int = 0) -> int:
    if val is None or not re.fullmatch(r"\d+", val):
        raise ValueError(f"modifier '{name}' needs a whole number, as in {name}=2")
    n = int(val)
    if n < lo:
        raise ValueError(f"modifier '{name}' must be at least {lo}")
    return n


def parse_layout(text: str, variant: str = DEFAULT_VARIANT) -> AddressSpace:
    """Parse a layout (module docstring) into an address space for ``variant``.

    The variant matters for two things only: which folios count as large for ``add_pin`` (order >= 1 in
    linux-6.18, >= 2 before), and whether swap entries start exclusive (linux-6.18 only).
    """
    b = _Builder(variant)                   # an unknown variant is an UnknownVariant (ValueError) here
    tokens = [(m.group(0), m.start()) for m in re.finditer(r"\S+", text)]
    if not tokens:
        raise LayoutError("the layout is empty", text, 0, 0, "")
    for idx, (tok, col) in enumerate(tokens):
        try:
            _apply_token(b, tok)
        except LayoutError:
            raise
        except ValueError as e:
            raise LayoutError(str(e), text, idx, col, tok) from None
    try:
        return b.freeze()
    except ValueError as e:
        raise LayoutError(str(e), text, len(tokens) - 1, tokens[-1][1], tokens[-1][0]) from None


def _apply_token(b: _Builder, tok: str) -> None:
    m = _TOKEN_RE.match(tok)
    if not m:
        raise ValueError("a token is kind(:mod)*(*count)?")
    parts = m.group("body").split(":")
    kind, mods = parts[0], parts[1:]
    count = 1
    if m.group("count") is not None:
        if not re.fullmatch(r"\d+", m.group("count")) or int(m.group("count")) < 1:
            raise ValueError("the count after '*' must be a whole number >= 1")
        count = int(m.group("count"))
        if count > MAX_COUNT:
            raise ValueError(f"count {count} is larger than {MAX_COUNT}")
    if kind == "vma":
        if m.group("count") is not None:
            raise ValueError("a vma token takes no count")
        _start_vma(b, mods)
        return
    if kind == "mm":
        if m.group("count") is not None:
            raise ValueError("an mm token takes no count")
        for mod in mods:
            name, _, val = mod.partition("=")
            if name != "has_pinned" or val not in ("0", "1"):
                raise ValueError(f"unknown mm modifier '{mod}' (known: has_pinned=0, has_pinned=1)")
            b.has_pinned_override = val == "1"
        return
    order = None
    fm = re.fullmatch(r"folio(\d+)", kind)
    if fm:
        n = int(fm.group(1))
        if n < 2 or n > 512 or n & (n - 1):
            raise ValueError(f"folio size {n} must be a power of two from 2 to 512")
        order = n.bit_length() - 1
        allowed = _ALLOWED_MODS["folio"]
    elif kind in PAGE_KINDS:
        allowed = _ALLOWED_MODS[kind]
    else:
        known = ", ".join(sorted(PAGE_KINDS | {"folioN", "vma", "mm"}))
        raise ValueError(f"unknown kind '{kind}' (known: {known})")
    parsed: dict[str, str | None] = {}
    for mod in mods:
        name, eq, val = mod.partition("=")
        if name not in allowed:
            ok = ", ".join(sorted(allowed)) or "none"
            raise ValueError(f"modifier '{name}' does not apply to '{kind}' (allowed: {ok})")
        if name in parsed:
            raise ValueError(f"modifier '{name}' given twice")
        parsed[name] = val if eq else None
    for _ in range(count):
        _emit(b, kind, order, parsed)


def _start_vma(b: _Builder, mods: list[str]) -> None:
    b.close_vma()
    v = _Vma(b.addr)
    for mod in mods:
        if mod not in _VMA_FLAGS:
            raise ValueError(f"unknown vma flag '{mod}' (known: {', '.join(sorted(_VMA_FLAGS))})")
        if mod == "shared":
            v.flags |= VM_SHARED
        elif mod == "ro":
            v.flags &= ~VM_WRITE
        elif mod == "nomaywrite":
            v.flags &= ~(VM_WRITE | VM_MAYWRITE)
        elif mod == "exec":
            v.flags |= VM_EXEC
        elif mod == "file":
            v.backing = BACKING_FILE
        elif mod == "shmem":
            v.backing = BACKING_SHMEM
        elif mod == "anon":
            v.backing = BACKING_ANON
        elif mod == "noanon":
            v.anon_vma = False
        else:
            v.flags |= {"dontcopy": VM_DONTCOPY, "wipeonfork": VM_WIPEONFORK, "pfnmap": VM_PFNMAP,
                        "mixedmap": VM_MIXEDMAP, "hugetlb": VM_HUGETLB}[mod]
    b.open = v
    b.vmas.append(v)


def _exclusive_pages(parsed: dict, nr: int) -> list[bool]:
    if "nonex" not in parsed:
        return [True] * nr
    if parsed["nonex"] is None:
        return [False] * nr
    ex = [True] * nr
    for s in parsed["nonex"].split(","):
        if not re.fullmatch(r"\d+", s) or int(s) >= nr:
            raise ValueError(f"nonex index '{s}' is not a page of this {nr}-page folio")
        ex[int(s)] = False
    return ex


def _emit(b: _Builder, kind: str, order: int | None, parsed: dict) -> None:
    write = "ro" not in parsed
    dirty = "clean" not in parsed
    young = "old" not in parsed
    pins = 0
    if kind == "pinned" or "pin" in parsed:
        pins = 1 if parsed.get("pin") is None else _int_mod(parsed["pin"], "pin")
    if kind == "gap":
        b.close_vma()
        b.addr += 1
        return
    b.vma_for_page()
    if kind == "hole":
        b.addr += 1
    elif kind == "none":
        b.set_pte(0)
    elif kind == "zero":
        b.set_pte(P.mk_pte(P.ZERO_PFN, False, False, young, True))
    elif kind == "pfn":
        b.set_pte(P.mk_pte(P.RAW_PFN_BASE + b.addr, write, dirty, young, True))
    elif kind in ("normal", "pinned", "file", "shmem"):
        anon = kind in ("normal", "pinned")
        ex = _exclusive_pages(parsed, 1)[0] if anon else False
        flags = FOLIO_ANON | FOLIO_SWAPBACKED if anon else (FOLIO_SWAPBACKED if kind == "shmem" else 0)
        pflags = (PAGE_ANON_EXCLUSIVE if ex else 0) | (PAGE_HWPOISON if "hwpoison" in parsed else 0)
        f, pfn = b.new_folio(0, flags, 1, pflags)
        b.folio["ref"][f] = _int_mod(parsed["ref"], "ref", 1) if "ref" in parsed else (1 if anon else 2)
        b.add_pin(f, pins)
        b.set_pte(P.mk_pte(pfn, write and anon, dirty, young, False))
    elif order is not None:
        nr = 1 << order
        ex = _exclusive_pages(parsed, nr)
        f, pfn = b.new_folio(order, FOLIO_ANON | FOLIO_SWAPBACKED, 1, 0)
        for j in range(nr):
            b.page["flags"][pfn + j] = (PAGE_ANON_EXCLUSIVE if ex[j] else 0) | (
                PAGE_HWPOISON if "hwpoison" in parsed else 0)
        b.folio["ref"][f] = _int_mod(parsed["ref"], "ref", 1) if "ref" in parsed else nr
        b.add_pin(f, pins)
        for j in range(nr):
            b.set_pte(P.mk_pte(pfn + j, write, dirty, young, False))
    elif kind == "thp":
        if b.addr % PTRS_PER_TABLE:
            raise ValueError(f"a thp must start at a table boundary; it would start at {b.addr}")
        ex = _exclusive_pages(parsed, 1)[0]
        f, pfn = b.new_folio(9, FOLIO_ANON | FOLIO_SWAPBACKED, 0, 0)
        b.page["flags"][pfn] = PAGE_ANON_EXCLUSIVE if ex else 0
        b.folio["ref"][f] = _int_mod(parsed["ref"], "ref", 1) if "ref" in parsed else 1
        b.folio["pmdmap"][f] = 1
        b.add_pin(f, pins)
        b.pmds[b.addr // PTRS_PER_TABLE] = P.mk_huge_pmd(pfn, write, dirty, young)
        b.addr += PTRS_PER_TABLE
    elif kind == "swap":
        levels = _int_mod(parsed["lv"], "lv") if "lv" in parsed else 0
        cnt = _int_mod(parsed["cnt"], "cnt", 1) if "cnt" in parsed else 1
        if cnt > swap_cap(levels):
            raise ValueError(f"cnt={cnt} does not fit in a slot with {levels} continuation level(s) "
                             f"(at most {swap_cap(levels)}); add lv=")
        slot = len(b.slot["count"])
        b.slot["count"].append(cnt)
        b.slot["levels"].append(levels)
        b.slot["content"].append(b.next_content())
        excl = b.v.anon_exclusive and "nonex" not in parsed
        b.set_pte(P.mk_swap_pte(slot, excl))
    elif kind in ("migw", "migr"):
        if "excl" in parsed and not b.v.anon_exclusive:
            raise ValueError("read-exclusive migration entries exist only in linux-6.18")
        f, pfn = b.new_folio(0, FOLIO_ANON | FOLIO_SWAPBACKED, 0, PAGE_ANON_EXCLUSIVE)
        b.folio["ref"][f] = _int_mod(parsed["ref"], "ref", 1) if "ref" in parsed else 1
        b.set_pte(P.mk_migration_pte(pfn, kind == "migw", "excl" in parsed))
    elif kind in ("devw", "devr"):
        ex = _exclusive_pages(parsed, 1)[0]
        f, pfn = b.new_folio(0, FOLIO_ANON | FOLIO_SWAPBACKED | FOLIO_DEVICE_PRIVATE, 1,
                             PAGE_ANON_EXCLUSIVE if ex else 0)
        b.folio["ref"][f] = _int_mod(parsed["ref"], "ref", 1) if "ref" in parsed else 1
        b.set_pte(P.mk_device_private_pte(pfn, kind == "devw"))
    else:  # pragma: no cover - PAGE_KINDS and this chain are kept in step
        raise ValueError(f"unhandled kind '{kind}'")
