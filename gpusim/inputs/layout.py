"""The layout notation of spec 7.1, parsed into an :class:`~gpusim.model.state.AddressSpace`.

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
Numbers are range-checked rather than wrapped: ``ref`` up to 2**30 - 1 and ``pin`` as many as fit on top of it
within that (1,024 references each; the i32 refcount keeps 2**30 for the forks the space goes through), ``lv`` up
to 8 and ``cnt`` what those levels hold; a token repeats at most 2**26 times and the whole layout spans at most
2**35 pages (the 128 TiB of an x86-64 user address space).

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

from gpusim.base.machine import fork_memory_for_pages, require_memory
from gpusim.kernels import pte as P
from gpusim.kernels.flags import (
    BACKING_ANON,
    BACKING_FILE,
    BACKING_SHMEM,
    FOLIO_ANON,
    FOLIO_DEVICE_PRIVATE,
    FOLIO_SWAPBACKED,
    PAGE_ANON_EXCLUSIVE,
    PAGE_HWPOISON,
    PIN_BIAS,
    PTRS_PER_TABLE,
    REF_MAX,
    VM_DEFAULT_ANON,
    VM_DONTCOPY,
    VM_EXEC,
    VM_HUGETLB,
    VM_MAYWRITE,
    VM_MIXEDMAP,
    VM_PFNMAP,
    VM_SHARED,
    VM_WIPEONFORK,
    VM_WRITE,
    swap_cap,
)
from gpusim.model.builder import SpaceBuilder
from gpusim.model.decode import with_offsets
from gpusim.model.state import AddressSpace
from gpusim.model.variants import DEFAULT_VARIANT, get_variant

MAX_COUNT = 1 << 26  # per-token repeat bound, so a typo cannot ask for terabytes
MAX_SPAN_PAGES = 1 << 35  # the layout's whole span: x86-64's 128 TiB of user address space
I32_MAX = (1 << 31) - 1  # the counts of the state are i32
MAX_SWAP_LEVELS = 8  # 64 x 128**8 - 1 is the largest swap count an i64 holds


class LayoutError(ValueError):
    """A layout token is malformed; ``index`` (0-based) and ``column`` point at it."""

    def __init__(self, message: str, text: str, index: int, column: int, token: str):
        self.text, self.index, self.column, self.token = text, index, column, token
        super().__init__(f"layout token {index + 1} '{token}' (column {column + 1}): {message}")

    def pointer(self) -> str:
        """The layout with a caret under the offending token (for human output)."""
        return f"{self.text}\n{' ' * self.column}{'^' * max(1, len(self.token))}"


PAGE_KINDS = {
    "none",
    "normal",
    "pinned",
    "zero",
    "file",
    "shmem",
    "swap",
    "migw",
    "migr",
    "devw",
    "devr",
    "pfn",
    "thp",
    "hole",
    "gap",
}
_ALLOWED_MODS = {
    "none": set(),
    "hole": set(),
    "gap": set(),
    "normal": {"ro", "clean", "old", "pin", "ref", "nonex", "hwpoison"},
    "pinned": {"ro", "clean", "old", "pin", "ref", "nonex", "hwpoison"},
    "zero": {"old"},
    "file": {"ro", "clean", "old", "pin", "ref", "hwpoison"},
    "shmem": {"ro", "clean", "old", "pin", "ref", "hwpoison"},
    "swap": {"cnt", "lv", "nonex"},
    "migw": {"ref"},
    "migr": {"ref", "excl"},
    "devw": {"ref", "nonex"},
    "devr": {"ref", "nonex"},
    "pfn": {"ro", "clean", "old"},
    "folio": {"ro", "clean", "old", "pin", "ref", "nonex", "hwpoison"},
    "thp": {"ro", "clean", "old", "pin", "ref", "nonex"},
}
_VMA_FLAGS = {
    "shared",
    "ro",
    "nomaywrite",
    "exec",
    "file",
    "shmem",
    "anon",
    "noanon",
    "dontcopy",
    "wipeonfork",
    "pfnmap",
    "mixedmap",
    "hugetlb",
}
_TOKEN_RE = re.compile(r"^(?P<body>[^*]+)(?:\*(?P<count>[^*]*))?$")


@dataclass
class _Vma:
    start: int
    flags: int = VM_DEFAULT_ANON
    backing: int = BACKING_ANON
    anon_vma: bool = True
    end: int = -1


class _Layout:
    """The parser's cursor over a :class:`~gpusim.model.builder.SpaceBuilder`: the next address, the VMAs being opened
    and closed by tokens, and the ``mm:has_pinned`` override."""

    def __init__(self, variant: str):
        self.v = get_variant(variant)
        self.space = SpaceBuilder(variant, content="created")
        self.addr = 0
        self.vmas: list[_Vma] = []
        self.open: _Vma | None = None
        self.template: _Vma | None = None
        self.has_pinned_override: bool | None = None

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

    def set_ptes(self, val, n: int) -> None:
        """``n`` entries from the cursor (``val``: one value for all, or one each)."""
        self.space.add_entries(self.addr + np.arange(n, dtype=np.int64), val)
        self.addr += n

    def freeze(self) -> AddressSpace:
        self.close_vma()
        vs = self.vmas
        self.space.add_vmas(
            [v.start for v in vs],
            [v.end for v in vs],
            [v.flags for v in vs],
            [v.backing for v in vs],
            [v.anon_vma for v in vs],
        )
        # the spec's layouts are of a parent that has pinned (has_pinned set) unless mm:has_pinned=0 says not
        has_pinned = True if self.has_pinned_override is None else self.has_pinned_override
        return self.space.freeze(has_pinned).validate()


def _int_mod(val: str | None, name: str, lo: int = 0, hi: int = I32_MAX) -> int:
    if val is None or not re.fullmatch(r"[0-9]+", val):
        raise ValueError(f"modifier '{name}' needs a whole number, as in {name}=2")
    if len(val) > 20 or int(val) > hi:
        raise ValueError(f"modifier '{name}={val}' is larger than {hi}")
    n = int(val)
    if n < lo:
        raise ValueError(f"modifier '{name}' must be at least {lo}")
    return n


def parse_layout(text: str, variant: str = DEFAULT_VARIANT) -> AddressSpace:
    """Parse a layout (module docstring) into an address space for ``variant``.

    The variant matters for two things only: which folios count as large for ``add_pin`` (order >= 1 in
    linux-6.18, >= 2 before), and whether swap entries start exclusive (linux-6.18 only).
    """
    if not isinstance(text, str):
        raise TypeError(f"layout: a string in the layout notation (e.g. 'normal*512'), not {type(text).__name__}")
    b = _Layout(variant)  # an unknown variant is an UnknownVariant (ValueError) here
    tokens = [(m.group(0), m.start()) for m in re.finditer(r"\S+", text)]
    if not tokens:
        raise LayoutError("the layout is empty", text, 0, 0, "")
    require_memory(fork_memory_for_pages(_pages_bound(tokens)), "the layout")
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


def _pages_bound(tokens) -> int:
    """An upper bound of the entries a layout's tokens make (each token's width times its count; ``gap`` and
    ``hole`` make none), read before anything is built, so that a layout too large for memory is refused whole
    however its pages are spread over tokens. Malformed tokens count 0 here: the parse names them."""
    total = 0
    for tok, _ in tokens:
        m = _TOKEN_RE.match(tok)
        if not m:
            continue
        kind = m.group("body").split(":")[0]
        count = m.group("count")
        n = min(int(count), MAX_COUNT) if count and re.fullmatch(r"[0-9]{1,12}", count) else 1
        fm = re.fullmatch(r"folio([0-9]{1,3})", kind)
        width = PTRS_PER_TABLE if kind == "thp" else int(fm.group(1)) if fm else 1
        total += 0 if kind in ("gap", "hole", "vma", "mm") else n * width
    return total


def _apply_token(b: _Layout, tok: str) -> None:
    m = _TOKEN_RE.match(tok)
    if not m:
        raise ValueError("a token is kind(:mod)*(*count)?")
    parts = m.group("body").split(":")
    kind, mods = parts[0], parts[1:]
    count = 1
    if m.group("count") is not None:
        if not re.fullmatch(r"[0-9]+", m.group("count")) or int(m.group("count")) < 1:
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
            if b.has_pinned_override is not None:
                raise ValueError("mm:has_pinned given twice")
            b.has_pinned_override = val == "1"
        return
    order = None
    fm = re.fullmatch(r"folio([0-9]+)", kind)
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
    span = count * (PTRS_PER_TABLE if kind == "thp" else 1 << (order or 0))
    if b.addr + span > MAX_SPAN_PAGES:
        raise ValueError(
            f"the layout would span {b.addr + span} pages, more than the {MAX_SPAN_PAGES} (128 TiB) of a user "
            "address space"
        )
    _emit(b, kind, order, parsed, count)


def _start_vma(b: _Layout, mods: list[str]) -> None:
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
            v.flags |= {
                "dontcopy": VM_DONTCOPY,
                "wipeonfork": VM_WIPEONFORK,
                "pfnmap": VM_PFNMAP,
                "mixedmap": VM_MIXEDMAP,
                "hugetlb": VM_HUGETLB,
            }[mod]
    b.open = v
    b.vmas.append(v)


def _exclusive_pages(parsed: dict, nr: int) -> np.ndarray:
    """Per page of an ``nr``-page folio: whether it is anon-exclusive (``nonex`` clears all, ``nonex=i,j`` some)."""
    if "nonex" not in parsed:
        return np.ones(nr, bool)
    if parsed["nonex"] is None:
        return np.zeros(nr, bool)
    ex = np.ones(nr, bool)
    for s in parsed["nonex"].split(","):
        if not re.fullmatch(r"[0-9]+", s) or int(s) >= nr:
            raise ValueError(f"nonex index '{s}' is not a page of this {nr}-page folio")
        ex[int(s)] = False
    return ex


def _ref(parsed: dict, default: int) -> int:
    return _int_mod(parsed["ref"], "ref", 1, REF_MAX) if "ref" in parsed else default


def _bits(parsed: dict) -> tuple[bool, bool, bool]:
    """(write, dirty, young) of a page token's PTEs."""
    return "ro" not in parsed, "clean" not in parsed, "old" not in parsed


def _pins(kind: str, parsed: dict, ref: int) -> int:
    """FOLL_PIN references a token asks for (``pinned``, ``pin``, ``pin=K``), on top of refcount ``ref``."""
    if kind == "pinned" or "pin" in parsed:
        most = (REF_MAX - ref) // PIN_BIAS
        return 1 if parsed.get("pin") is None else _int_mod(parsed["pin"], "pin", hi=most)
    return 0


def _emit(b: _Layout, kind: str, order: int | None, parsed: dict, count: int) -> None:
    """``count`` copies of one page token (with its modifiers) from the cursor."""
    if kind == "gap":
        b.close_vma()
        b.addr += count
        return
    b.vma_for_page()
    write, dirty, young = _bits(parsed)
    if kind == "hole":
        b.addr += count
    elif kind == "none":
        b.set_ptes(0, count)
    elif kind == "zero":
        b.set_ptes(P.mk_pte(P.ZERO_PFN, False, False, young, True), count)
    elif kind == "pfn":
        b.set_ptes(
            with_offsets(P.mk_pte(0, write, dirty, young, True), P.RAW_PFN_BASE + b.addr + np.arange(count)), count
        )
    elif kind in ("normal", "pinned", "file", "shmem"):
        _emit_small(b, kind, parsed, count)
    elif order is not None:
        _emit_folios(b, order, parsed, count)
    elif kind == "thp":
        _emit_thps(b, parsed, count)
    elif kind == "swap":
        _emit_swap(b, parsed, count)
    elif kind in ("migw", "migr", "devw", "devr"):
        _emit_special_swap(b, kind, parsed, count)
    else:  # pragma: no cover - PAGE_KINDS and this chain are kept in step
        raise ValueError(f"unhandled kind '{kind}'")


def _emit_small(b: _Layout, kind: str, parsed: dict, count: int) -> None:
    """``normal`` / ``pinned`` (order-0 anon folios), ``file`` and ``shmem`` (page-cache folios)."""
    write, dirty, young = _bits(parsed)
    anon = kind in ("normal", "pinned")
    ex = bool(_exclusive_pages(parsed, 1)[0]) if anon else False
    flags = FOLIO_ANON | FOLIO_SWAPBACKED if anon else (FOLIO_SWAPBACKED if kind == "shmem" else 0)
    poison = PAGE_HWPOISON if "hwpoison" in parsed else 0
    ref = _ref(parsed, 1 if anon else 2)
    pins = _pins(kind, parsed, ref)
    ids, pfn = b.space.add_folios(count, 0, flags, ref, (PAGE_ANON_EXCLUSIVE if ex else 0) | poison, 1)
    b.space.add_pins(ids, pins)
    b.set_ptes(with_offsets(P.mk_pte(0, write and anon, dirty, young, False), pfn), count)


def _emit_folios(b: _Layout, order: int, parsed: dict, count: int) -> None:
    """``folioN``: PTE-mapped anon folios of ``2**order`` pages, each page mapped once."""
    write, dirty, young = _bits(parsed)
    nr = 1 << order
    pflags = np.where(_exclusive_pages(parsed, nr), PAGE_ANON_EXCLUSIVE, 0) | (
        PAGE_HWPOISON if "hwpoison" in parsed else 0
    )
    ref = _ref(parsed, nr)
    pins = _pins("folio", parsed, ref)
    ids, first = b.space.add_folios(count, order, FOLIO_ANON | FOLIO_SWAPBACKED, ref, np.tile(pflags, count), 1)
    b.space.add_pins(ids, pins)
    b.set_ptes(with_offsets(P.mk_pte(0, write, dirty, young, False), first[0] + np.arange(count * nr)), count * nr)


def _emit_thps(b: _Layout, parsed: dict, count: int) -> None:
    """``thp``: PMD-mapped order-9 anon folios over whole tables; the head page carries the PMD's exclusive flag."""
    write, dirty, young = _bits(parsed)
    if b.addr % PTRS_PER_TABLE:
        raise ValueError(f"a thp must start at a table boundary; it would start at {b.addr}")
    head = np.zeros(PTRS_PER_TABLE, np.int64)
    head[0] = PAGE_ANON_EXCLUSIVE if _exclusive_pages(parsed, 1)[0] else 0
    ref = _ref(parsed, 1)
    pins = _pins("thp", parsed, ref)
    ids, first = b.space.add_folios(
        count, 9, FOLIO_ANON | FOLIO_SWAPBACKED, ref, np.tile(head, count), 0, pmd_mapcount=1
    )
    b.space.add_pins(ids, pins)
    b.space.add_pmds(
        b.addr // PTRS_PER_TABLE + np.arange(count), with_offsets(P.mk_huge_pmd(0, write, dirty, young), first)
    )
    b.addr += count * PTRS_PER_TABLE


def _emit_swap(b: _Layout, parsed: dict, count: int) -> None:
    """``swap``: entries of fresh slots (count ``cnt``, ``lv`` continuation levels), exclusive in linux-6.18."""
    levels = _int_mod(parsed["lv"], "lv", hi=MAX_SWAP_LEVELS) if "lv" in parsed else 0
    cnt = _int_mod(parsed["cnt"], "cnt", 1, hi=swap_cap(MAX_SWAP_LEVELS)) if "cnt" in parsed else 1
    if cnt > swap_cap(levels):
        raise ValueError(
            f"cnt={cnt} does not fit in a slot with {levels} continuation level(s) "
            f"(at most {swap_cap(levels)}); add lv="
        )
    slots = b.space.add_slots(np.full(count, cnt), np.full(count, levels))
    excl = b.v.anon_exclusive and "nonex" not in parsed
    b.set_ptes(with_offsets(P.mk_swap_pte(0, excl), slots), count)


def _emit_special_swap(b: _Layout, kind: str, parsed: dict, count: int) -> None:
    """``migw`` / ``migr``: migration entries to fresh anon folios (unmapped while migrating); ``devw`` / ``devr``:
    device-private entries to fresh device folios (mapped once)."""
    if kind in ("migw", "migr"):
        if "excl" in parsed and not b.v.anon_exclusive:
            raise ValueError("read-exclusive migration entries exist only in linux-6.18")
        _, pfn = b.space.add_folios(count, 0, FOLIO_ANON | FOLIO_SWAPBACKED, _ref(parsed, 1), PAGE_ANON_EXCLUSIVE, 0)
        b.set_ptes(with_offsets(P.mk_migration_pte(0, kind == "migw", "excl" in parsed), pfn), count)
        return
    ex = bool(_exclusive_pages(parsed, 1)[0])
    _, pfn = b.space.add_folios(
        count,
        0,
        FOLIO_ANON | FOLIO_SWAPBACKED | FOLIO_DEVICE_PRIVATE,
        _ref(parsed, 1),
        PAGE_ANON_EXCLUSIVE if ex else 0,
        1,
    )
    b.set_ptes(with_offsets(P.mk_device_private_pte(0, kind == "devw"), pfn), count)
