"""Window events (spec 5.2): what an injected ``zap``, ``reclaim``, ``pin``, ``unpin``, ``write`` or ``touch`` does to
the state while the PTE locks are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpusim.engines.context import EventRecord, ForkContext, Oops
from gpusim.kernels import pte as P
from gpusim.kernels.flags import FOLIO_ANON, MM_ANONPAGES, MM_SWAPENTS, PAGE_ANON_EXCLUSIVE, PTRS_PER_TABLE, mm_counter

# --- window events (spec 5.2) ----------------------------------------------------------------------------------


def _page_at(fc: ForkContext, v: int) -> int:
    """The pfn an entry maps (present non-special, migration, device-private), else -1."""
    kind = P.pte_kind(v)
    if kind == P.KIND_PRESENT and not P.pte_special(v):
        return P.pte_pfn(v)
    if kind in (P.KIND_MIGRATION, P.KIND_DEVICE_PRIVATE):
        return P.swp_offset(v)
    return -1


@dataclass
class EventTarget:
    """What an event at address ``x`` finds in the parent: its table ``row`` (None: no table) and index ``i``, the
    entry ``v`` and its kind, and the page (``pfn``) and folio (``f``) it maps (-1: none)."""

    x: int
    row: object
    i: int
    v: int
    kind: int
    pfn: int
    f: int


def event_zap(fc: ForkContext, rec: EventRecord, t: EventTarget) -> bool:
    """``zap``: the parent's entry is cleared and drops what it holds (a swap count, or a mapping and a reference;
    a migration entry holds neither)."""
    m = fc.m
    if t.v == 0:
        return False
    rec.applied = True  # recorded as applied even if it oopses below
    t.row[t.i] = 0
    rss = [0, 0, 0, 0]
    if t.kind == P.KIND_SWAP:
        rec.slot = P.swp_offset(t.v)
        if m.swap_count[rec.slot] < 1:
            raise Oops("swap_free", t.x, "UNDERFLOW")
        m.swap_count[rec.slot] -= 1
        rec.count = -1
        rss[MM_SWAPENTS] = -1
    elif t.pfn >= 0:
        rec.pfn, rec.folio = t.pfn, t.f
        rss[mm_counter(m.folio_flags[t.f])] = -1
        if t.kind != P.KIND_MIGRATION:  # present normal or device-private: map and ref held
            if m.folio_refcount[t.f] < 1:
                raise Oops("put_page", t.x, "UNDERFLOW")
            m.page_mapcount[t.pfn] -= 1
            m.folio_refcount[t.f] -= 1
            rec.map, rec.ref = -1, -1
    rec.rss = tuple(rss)
    for k in range(4):
        fc.parent.rss[k] += rss[k]
    return True


def event_reclaim(fc: ForkContext, rec: EventRecord, t: EventTarget) -> bool:
    """``reclaim``: a present anon page is swapped out to a new slot (exclusive if the page was, in 6.18)."""
    m = fc.m
    if t.kind != P.KIND_PRESENT or t.pfn < 0 or not (m.folio_flags[t.f] & FOLIO_ANON):
        return False
    rec.pfn, rec.folio = t.pfn, t.f
    excl = fc.v.anon_exclusive and bool(m.page_flags[t.pfn] & PAGE_ANON_EXCLUSIVE)
    slot = m.alloc_slot(m.page_content[t.pfn])
    rec.new_slot = slot
    t.row[t.i] = P.mk_swap_pte(slot, excl)
    m.page_mapcount[t.pfn] -= 1
    m.folio_refcount[t.f] -= 1
    rec.map, rec.ref = -1, -1
    rec.rss = (-1, 0, 0, 1)
    fc.parent.rss[MM_ANONPAGES] -= 1
    fc.parent.rss[MM_SWAPENTS] += 1
    return True


def event_pin(fc: ForkContext, rec: EventRecord, t: EventTarget) -> bool:
    """``pin`` / ``unpin``: one FOLL_PIN on the folio added or dropped (an unpin needs a true pin)."""
    m = fc.m
    if t.f < 0 or (rec.name == "unpin" and m.folio_true_pins[t.f] < 1):
        return False
    rec.pfn, rec.folio = t.pfn, t.f
    before = m.folio_refcount[t.f]
    rec.pins = 1 if rec.name == "pin" else -1
    fc.add_pin(fc.parent, t.f, rec.pins)
    rec.ref = m.folio_refcount[t.f] - before
    return True


def event_write(fc: ForkContext, rec: EventRecord, t: EventTarget) -> bool:
    """``write``: the page's content changes (a new content identity)."""
    if t.pfn < 0:
        return False
    rec.pfn, rec.folio = t.pfn, t.f
    rec.content = fc.m.page_content[t.pfn] = fc.m.new_content()
    return True


def event_touch(fc: ForkContext, rec: EventRecord, t: EventTarget) -> bool:
    """``touch``: a present entry becomes young and dirty."""
    if t.kind != P.KIND_PRESENT:
        return False
    rec.pfn = t.pfn
    t.row[t.i] = P.pte_mkdirty(P.pte_mkyoung(t.v))
    return True


EVENTS = {
    "zap": event_zap,
    "reclaim": event_reclaim,
    "pin": event_pin,
    "unpin": event_pin,
    "write": event_write,
    "touch": event_touch,
}


def apply_event(fc: ForkContext, call_start: int, window_kind: str, name: str, x: int) -> None:
    """Apply one injected event to the parent; events with nothing to act on are ignored and reported."""
    rec = EventRecord(fc.trace.tick(), call_start, window_kind, name, x, False)
    fc.trace.events.append(rec)
    t, i = divmod(x, PTRS_PER_TABLE)
    if fc.event_hook is not None and name in ("zap", "reclaim", "pin"):
        fc.event_hook(t)  # a lazy design's unshare first (odf-cowpte: the parent's table, if shared)
    row = fc.parent.tables.get(t)
    v = row[i] if row is not None else 0
    pfn = _page_at(fc, v)
    target = EventTarget(x, row, i, v, P.pte_kind(v), pfn, fc.m.page_folio[pfn] if pfn >= 0 else -1)
    rec.applied = EVENTS[name](fc, rec, target)
    if rec.applied:
        fc.counts["events_applied"] += 1
    else:
        fc.counts["events_ignored"] += 1
        fc.ignored.append(f"{name}({x})")
