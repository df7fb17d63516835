"""What a fork returns: the outcome, the final states, the event counts, the trace and the invariant report."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpusim.kernels.flags import COUNT_NAMES, RSS_NAMES, events
from gpusim.model.state import MM, AddressSpace, Memory, digest, resident_bytes
from gpusim.model.tables import TableObjects

# Events whose work is done inside a pass of copy_pte_range, with the PTE locks held (spec 2.1). Early-copy
# allocations are made after the locks are dropped; xu-v1's page_duplicate copies outside them too (see
# gpusim.analysis.costmodel.held_events).
TABLE_EVENTS = events("check", "pte.", "batch.", "copy.memcpy", "copy.install", "copy.recheck", "swapcont.atomic")


@dataclass(frozen=True)
class TableStats:
    """Per copied page table (one row per table, in no particular order): ``table`` i64 ``(N,)`` its number,
    ``passes`` i64 ``(N,)`` the passes of copy_pte_range over it, ``events`` i64 ``(N, len(TABLE_EVENTS))`` the
    counts of :data:`TABLE_EVENTS` in it. Tables copied by a huge-PMD share alone have no row."""

    table: object
    passes: object
    events: object

    @classmethod
    def concat(cls, parts: list["TableStats"]) -> "TableStats":
        parts = [p for p in parts if p is not None]
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, len(TABLE_EVENTS)), np.int64))
        return cls(
            np.concatenate([p.table for p in parts]),
            np.concatenate([p.passes for p in parts]),
            np.concatenate([p.events for p in parts]),
        )


# Summary counters that are the same number as a cost event.
ALIASES = {
    "passes": "pass",
    "installs": "copy.install",
    "unused_frees": "copy.free_unused",
    "allocations": "copy.alloc",
    "swapcont_atomic": "swapcont.atomic",
    "swapcont_kernel": "swapcont.kernel",
    "levels_added": "swapcont.attach",
    "teardown_frees": "teardown.free",
}


def new_counts() -> dict[str, int]:
    return dict.fromkeys(COUNT_NAMES, 0)


def finish_counts(counts: dict[str, int]) -> dict[str, int]:
    """Fill the summary counters that alias a cost event."""
    for alias, name in ALIASES.items():
        counts[alias] = counts[name]
    return counts


@dataclass(frozen=True)
class InvariantReport:
    ok: bool
    violations: tuple[str, ...] = ()
    checked: bool = True  # False after an oops: invariants are not checked (spec 2.3)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "violations": list(self.violations), "checked": self.checked}


@dataclass
class ForkResult:
    """The result of one simulated fork.

    ``parent`` is the parent after the fork (its memory is the shared memory after the fork); ``child`` the child
    mm over that memory (empty after an ENOMEM teardown). ``counts`` are read when the fork stops, before any
    teardown, except ``teardown.*``; ``child_rss`` likewise, ``child_rss_after_teardown`` after it.
    """

    outcome: str  # "ok" | "enomem" | "oops"
    variant: str
    backend: str
    parent: AddressSpace
    child: MM
    counts: dict[str, int]
    child_rss: dict[str, int]
    child_rss_after_teardown: dict[str, int] | None = None
    oops: dict | None = None
    enomem: dict | None = None
    unfired: list[str] = field(default_factory=list)
    ignored_events: list[str] = field(default_factory=list)
    invariants: InvariantReport = InvariantReport(True, (), False)
    digest_hex: str | None = field(default=None, repr=False)  # computed when first read (see ``digest``)
    engine_wall_s: float = 0.0
    nr_ptes: int = 0
    trace: object | None = None
    trace_complete: bool = True  # False when a fast engine copied tables outside the Python loop
    table_stats: TableStats | None = None
    python_tables: int = 0  # page tables the Python loop (the reference's state machines) copied
    write_phase: object | None = None  # gpusim.engines.writes.WritePhase, when writes followed the fork
    episode: object | None = None  # gpusim.engines.episode.Episode, when an episode followed the fork
    tables: TableObjects | None = None  # the lazy designs' shared and pending tables (spec 12.1); None: all private
    fork_args: tuple | None = None  # (oracle, injections, fork number): a lazy design's deferred copies use them

    @property
    def memory(self) -> Memory:
        return self.parent.memory

    @property
    def digest(self) -> str:
        """The canonical digest of the final states (:func:`gpusim.model.state.digest`), computed when first read: a
        fork whose digest nobody reads (a chunk of a streamed fork hashes its own pieces) does not pay for it."""
        if self.digest_hex is None:
            self.digest_hex = digest(self.parent.mm, self.child, self.memory, self.tables)
        return self.digest_hex

    def as_dict(self) -> dict:
        """The JSON object of ``gpusim fork --json``."""
        return {
            "outcome": self.outcome,
            "oops": self.oops,
            "enomem": self.enomem,
            "variant": self.variant,
            "backend": self.backend,
            "counts": dict(self.counts),
            "child_rss": dict(self.child_rss),
            "child_rss_after_teardown": self.child_rss_after_teardown,
            "invariants": self.invariants.as_dict(),
            "unfired": list(self.unfired),
            "ignored_events": list(self.ignored_events),
            "digest": self.digest,
            "engine_wall_s": self.engine_wall_s,
            "nr_ptes": self.nr_ptes,
            "ptes_per_s": self.nr_ptes / self.engine_wall_s if self.engine_wall_s > 0 else None,
            "bytes_per_pte": self.bytes_per_pte(),
            "python_tables": self.python_tables,
            "write_phase": None if self.write_phase is None else self.write_phase.as_dict(),
            "episode": None if self.episode is None else self.episode.as_dict(),
            "tables": None if self.tables is None else self.tables.as_dict(),
        }

    def bytes_per_pte(self) -> float | None:
        """Resident bytes of the final parent, child and memory arrays per simulated PTE slot."""
        if not self.nr_ptes:
            return None
        return resident_bytes(self.parent.mm, self.child, self.memory) / self.nr_ptes

    def page_table_bytes(self) -> tuple[int, int]:
        """Bytes of the PTE tables (4 KiB each) the parent and the child hold after the fork: a table they share
        (spec 12.1) counted once, for the parent."""
        child = self.child.nr_tables
        if self.tables is not None and self.child.nr_tables:
            child = int((self.tables.of("child")[0] < 0).sum())
        return PAGE_TABLE_BYTES * self.parent.mm.nr_tables, PAGE_TABLE_BYTES * child


PAGE_TABLE_BYTES = 4096


def rss_dict(rss) -> dict[str, int]:
    return {name: int(v) for name, v in zip(RSS_NAMES, rss)}
