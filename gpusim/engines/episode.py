"""The fork episode (spec 11.6): the writes of the parent (and the child) over model time while the child lives,
generated from a few numbers, each through the write phase's rules (spec 11.1-11.2), and what they did interval by
interval: events per writer, COW pages, the child's private dirty pages, the DMA view.

An episode is given by an :class:`EpisodeSpec` (:func:`parse_episode`: ``"duration=10s, rate=50000,
pattern=zipf"``, or a mapping). :class:`Schedule` draws each writer's requests (fixed spacing or Poisson arrivals)
and the pages they write (``uniform``, ``zipf``, ``hotset``, ``sequential`` over the pages the writer maps), window
by window: a window lies in one interval of the timeline, on one side of the child's exit, and holds at most
:data:`WINDOW_WRITES` writes, so memory stays bounded whatever the episode's length; the draws do not depend on the
windows. A runner applies a window's writes in time order: :class:`ReferenceRunner` in the reference's Python (the
oracle, :func:`gpusim.engines.writes.handle_mm_fault` write by write, its samples counted from the state),
:class:`CompiledRunner` in the compiled kernels (:mod:`gpusim.kernels.episode`: one core, the samples kept up to
date write by write). Both give the same :class:`Episode`, states included; the fork's backend picks the runner
(a CUDA fork runs its episode on the CPU kernels: the writes depend on one another, and one GPU thread is slower
than a core). Latencies are priced from the events by :func:`gpusim.analysis.costmodel.episode_report`.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from gpusim.base import backend as _backend
from gpusim.engines.writes import (
    WRITERS,
    WriteContext,
    compiled_end,
    compiled_start,
    deferred_copy,
    exit_mmap,
    handle_mm_fault,
    mapped,
    pinned_frames,
    scratch,
)
from gpusim.kernels import pte as P
from gpusim.kernels.flags import (
    EPISODE_AHEAD,
    FOLIO_FREED,
    NR_ST,
    NR_WRITE_CODES,
    PTRS_PER_TABLE,
    ST_CHILD_LIVE,
    ST_CONTENT,
    ST_COW,
    ST_FOLIOS,
    ST_PAGES,
    ST_PRIVATE,
    WRITE_CODE_BASE,
    WRITE_EVENTS,
)
from gpusim.model import decode
from gpusim.model.state import MM, AddressSpace, Memory, entries
from gpusim.model.variants import get_variant

PATTERNS = ("uniform", "zipf", "hotset", "sequential")
EPISODE_WRITERS = ("parent", "child", "both")
ARRIVALS = ("fixed", "poisson")
WINDOW_WRITES = 1 << 20  # the page writes of one window, at most (expected, for Poisson arrivals)
MAX_EPISODE_WRITES = 10**10  # the expected page writes of an episode
MAX_INTERVALS = 10**6
MAX_DURATION_S = 10**6
MAX_RATE = 10**9
MAX_PAGES_PER_WRITE = 64
_GAP_BLOCK = 1 << 16  # Poisson gaps are drawn this many at a time (the draws do not depend on it)


class EpisodeError(ValueError):
    """An episode spec that cannot be run: one line naming its keys' problems."""


@dataclass(frozen=True)
class EpisodeSpec:
    """An episode (spec 11.6), in seconds and requests per second; :func:`parse_episode` builds it."""

    duration_s: float
    rate: float
    pattern: str = "uniform"
    zipf_s: float = 1.0
    hot_fraction: float = 0.1
    hot_share: float = 0.9
    pages_per_write: int = 1
    writer: str = "parent"
    child_rate: float | None = None
    arrivals: str = "fixed"
    resolution_s: float = 0.1
    child_exit_at_s: float | None = None
    range: tuple[int, int] | None = None
    seed: int = 0

    @property
    def exit_s(self) -> float:
        return self.duration_s if self.child_exit_at_s is None else self.child_exit_at_s

    def rates(self) -> tuple[float, float]:
        """(the parent's, the child's) requests per second (0: it does not write)."""
        parent = self.rate if self.writer != "child" else 0.0
        child = (self.rate if self.child_rate is None else self.child_rate) if self.writer != "parent" else 0.0
        return parent, child

    @property
    def intervals(self) -> int:
        return max(1, math.ceil(self.duration_s / self.resolution_s - 1e-9))

    def as_dict(self) -> dict:
        """The spec in its keys (``parse_episode`` reads it back)."""
        out = {
            "duration": self.duration_s,
            "rate": self.rate,
            "pattern": self.pattern,
            "pages_per_write": self.pages_per_write,
            "writer": self.writer,
            "arrivals": self.arrivals,
            "resolution": self.resolution_s,
            "seed": self.seed,
        }
        if self.pattern == "zipf":
            out["zipf_s"] = self.zipf_s
        if self.pattern == "hotset":
            out.update(hot_fraction=self.hot_fraction, hot_share=self.hot_share)
        if self.child_rate is not None:
            out["child_rate"] = self.child_rate
        if self.child_exit_at_s is not None:
            out["child_exit_at"] = self.child_exit_at_s
        if self.range is not None:
            out["range"] = f"{self.range[0]}-{self.range[1]}"
        return out


_TIME = re.compile(r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(us|ms|s|min|h)?")
_TIME_UNITS = {None: 1.0, "us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
_RATE = re.compile(r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKM]?)")
_RATE_UNITS = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6}


def _number(value, pattern, units, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what}, not {value}")
    if isinstance(value, (int, float)):
        x = float(value)
    else:
        m = pattern.fullmatch(str(value).strip())
        if not m:
            raise ValueError(f"{what}, not '{value}'")
        x = float(m.group(1)) * units[m.group(2)]
    if not math.isfinite(x):
        raise ValueError(f"{what}, not {value}")
    return x


def _seconds(value) -> float:
    return _number(value, _TIME, _TIME_UNITS, "a time (seconds, or with a unit: 100ms, 10s, 2min)")


def _rate(value) -> float:
    return _number(value, _RATE, _RATE_UNITS, "requests per second (50000, 50k, 1M)")


def _integer(value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise ValueError(f"an integer {lo}..{hi}, not '{value}'")
    x = int(value)
    if not lo <= x <= hi:
        raise ValueError(f"an integer {lo}..{hi}, not {x}")
    return x


def _choice(choices):
    def read(value) -> str:
        if value not in choices:
            raise ValueError(f"one of {', '.join(choices)}, not '{value}'")
        return value

    return read


def _within(read, lo: float, hi: float, lo_open: bool = False, text: str = ""):
    def check(value):
        x = read(value)
        if x < lo or x > hi or (lo_open and x == lo):
            raise ValueError(text or f"{'above' if lo_open else 'at least'} {lo:g} and at most {hi:g}, not {x:g}")
        return x

    return check


def _range(value) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(0x[0-9a-fA-F]+|[0-9]+)\s*-\s*(0x[0-9a-fA-F]+|[0-9]+)\s*", str(value))
    if not m or int(m.group(1), 0) > int(m.group(2), 0):
        raise ValueError(f"A-B (pages, A <= B), not '{value}'")
    return int(m.group(1), 0), int(m.group(2), 0)


_PLAIN = re.compile(r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)()")


def _fraction(value) -> float:
    return _number(value, _PLAIN, {"": 1.0}, "a number")


# each key: (the field it sets, how it is read and checked)
_KEYS = {
    "duration": ("duration_s", _within(_seconds, 0, MAX_DURATION_S, True)),
    "rate": ("rate", _within(_rate, 0, MAX_RATE, True)),
    "pattern": ("pattern", _choice(PATTERNS)),
    "zipf_s": ("zipf_s", _within(_fraction, 0, 10, True)),
    "hot_fraction": ("hot_fraction", _within(_fraction, 0, 1, True)),
    "hot_share": ("hot_share", _within(_fraction, 0, 1)),
    "pages_per_write": ("pages_per_write", lambda v: _integer(v, 1, MAX_PAGES_PER_WRITE)),
    "writer": ("writer", _choice(EPISODE_WRITERS)),
    "child_rate": ("child_rate", _within(_rate, 0, MAX_RATE, True)),
    "arrivals": ("arrivals", _choice(ARRIVALS)),
    "resolution": ("resolution_s", _within(_seconds, 1e-6, MAX_DURATION_S)),
    "child_exit_at": ("child_exit_at_s", _within(_seconds, 0, MAX_DURATION_S)),
    "range": ("range", _range),
    "seed": ("seed", lambda v: _integer(v, 0, (1 << 63) - 1)),
}
EPISODE_KEYS = tuple(_KEYS)


def episode_items(value) -> dict:
    """The keys and values of an episode spec: ``"key=value, key=value"`` or a mapping."""
    if isinstance(value, dict):
        return dict(value)
    if not isinstance(value, str):
        kind = type(value).__name__
        raise EpisodeError(f"episode: a string 'duration=10s, rate=50000, ...' or a mapping, not {kind}")
    out = {}
    for part in value.replace(";", ",").split(","):
        if not part.strip():
            continue
        key, eq, val = part.partition("=")
        if not eq:
            raise EpisodeError(f"episode: '{part.strip()}' is not key=value (keys: {', '.join(EPISODE_KEYS)})")
        out[key.strip()] = val.strip()
    return out


def parse_episode(value) -> EpisodeSpec:
    """An :class:`EpisodeSpec` from its notation or mapping (or one as it is). Every problem is named in one line:
    ``episode: rate: ...; pattern: ...``."""
    if isinstance(value, EpisodeSpec):
        return value
    items, fields, problems = episode_items(value), {}, []
    for key, val in items.items():
        if key not in _KEYS:
            problems.append(f"{key}: not a key (keys: {', '.join(EPISODE_KEYS)})")
            continue
        name, read = _KEYS[key]
        try:
            fields[name] = read(val)
        except ValueError as e:
            problems.append(f"{key}: {e}")
    problems += [f"{k}: missing" for k in ("duration", "rate") if k not in items]
    if not problems:
        problems = _coherence(EpisodeSpec(**fields), items)
    if problems:
        raise EpisodeError("episode: " + "; ".join(problems))
    return EpisodeSpec(**fields)


def _coherence(spec: EpisodeSpec, items: dict) -> list[str]:
    """The problems of keys that are right alone and wrong together."""
    out = []
    if spec.writer == "parent" and spec.child_rate is not None:
        out.append("child_rate: the child does not write (writer=parent; writer=both or child)")
    if spec.child_exit_at_s is not None and spec.child_exit_at_s > spec.duration_s:
        out.append(f"child_exit_at: at most the duration ({spec.duration_s:g} s)")
    for key, pattern in (("zipf_s", "zipf"), ("hot_fraction", "hotset"), ("hot_share", "hotset")):
        if key in items and spec.pattern != pattern:
            out.append(f"{key}: goes with pattern={pattern}")
    if spec.duration_s / spec.resolution_s > MAX_INTERVALS:
        out.append(f"resolution: at most {MAX_INTERVALS:,} intervals (duration / resolution)")
    total = sum(spec.rates()) * spec.duration_s * spec.pages_per_write
    if total > MAX_EPISODE_WRITES:
        out.append(f"rate: {total:.3g} page writes in all, more than {MAX_EPISODE_WRITES:.0e}")
    return out


class _Stream:
    """One writer's requests and the pages they write (spec 11.6), drawn window by window."""

    def __init__(self, spec: EpisodeSpec, who: int, rate: float, domain: np.ndarray):
        seeds = np.random.SeedSequence([spec.seed, who]).spawn(3)
        gaps, pages, perm = (np.random.Generator(np.random.PCG64(s)) for s in seeds)
        self.spec, self.who, self.rate, self.domain = spec, who, rate, domain
        self.gaps, self.pages = gaps, pages
        self.perm = perm.permutation(domain.size) if spec.pattern in ("zipf", "hotset") else None
        self.pending, self.last, self.pos = np.zeros(0), 0.0, 0

    def times(self, u0: float, u1: float) -> np.ndarray:
        """The requests' times in [u0, u1) (windows come in order, without gaps)."""
        if self.spec.arrivals == "fixed":
            return np.arange(_requests_before(u0, self.rate), _requests_before(u1, self.rate)) / self.rate
        while self.pending.size == 0 or self.pending[-1] < u1:
            gaps = -np.log1p(-self.gaps.random(_GAP_BLOCK)) / self.rate
            drawn = self.last + np.cumsum(gaps)
            self.last = float(drawn[-1])
            self.pending = np.concatenate([self.pending, drawn])
        k = int(np.searchsorted(self.pending, u1))
        out, self.pending = self.pending[:k], self.pending[k:]
        return out

    def addresses(self, n: int) -> np.ndarray:
        """The next ``n`` page writes' addresses."""
        d, spec, size = self.domain, self.spec, self.domain.size
        if spec.pattern == "sequential":
            idx = (self.pos + np.arange(n, dtype=np.int64)) % size
            self.pos = int((self.pos + n) % size)
            return d[idx]
        if spec.pattern == "uniform":
            return d[np.minimum((self.pages.random(n) * size).astype(np.int64), size - 1)]
        if spec.pattern == "zipf":
            u, s, top = self.pages.random(n), spec.zipf_s, size + 1.0
            x = top**u if s == 1 else (top ** (1 - s) * u + (1 - u)) ** (1 / (1 - s))
            rank = np.clip(np.floor(x).astype(np.int64), 1, size)
            return d[self.perm[rank - 1]]
        u = self.pages.random(2 * n).reshape(n, 2)
        m = min(size, max(1, math.ceil(spec.hot_fraction * size)))
        hot = (u[:, 0] < spec.hot_share) | (m == size)  # every page hot: every write is
        k = np.where(hot, u[:, 1] * m, m + u[:, 1] * (size - m)).astype(np.int64)
        return d[self.perm[np.minimum(k, size - 1)]]


def _requests_before(u: float, rate: float) -> int:
    """Fixed arrivals: the requests before time ``u`` (request j at j / rate), rounding errors of ``u`` forgiven."""
    x = u * rate
    return math.ceil(x - 1e-9 * max(1.0, x))


def writer_domain(mm: MM, spec: EpisodeSpec) -> np.ndarray:
    """The addresses a writer's pattern draws from: where it maps a page when the episode starts, within ``range``."""
    d = mapped(mm)
    if spec.range is not None:
        d = d[(d >= spec.range[0]) & (d <= spec.range[1])]
    return d


@dataclass(frozen=True)
class Window:
    """The writes of one window, in time order: per request its writer (0 parent, 1 child), per page write its
    address (a request's ``pages_per_write`` writes are consecutive)."""

    interval: int
    start_s: float
    request_who: np.ndarray
    addr: np.ndarray
    times: np.ndarray  # per request, seconds

    @property
    def who(self) -> np.ndarray:
        return np.repeat(self.request_who, self.addr.size // max(self.request_who.size, 1))


class Schedule:
    """The windows of an episode: each in one interval, on one side of the child's exit."""

    def __init__(self, spec: EpisodeSpec, parent: MM, child: MM):
        self.spec = spec
        rates = spec.rates()
        self.streams = []
        for who, (mm, rate) in enumerate(zip((parent, child), rates)):
            if rate <= 0:
                continue
            d = writer_domain(mm, spec)
            if d.size == 0:
                where = " in range" if spec.range else ""
                raise EpisodeError(f"episode: the {WRITERS[who]} maps no page to write{where}")
            self.streams.append(_Stream(spec, who, rate, d))

    def room(self) -> int:
        """The new pages the writes may make, at most: a writer copies each page of its domain once at most, and a
        write makes one page at most (with fixed arrivals the writes are known: the fewer of the two)."""
        spec, out = self.spec, 0
        for s in self.streams:
            end = min(spec.duration_s, spec.exit_s) if s.who == 1 else spec.duration_s
            writes = _requests_before(end, s.rate) * spec.pages_per_write if spec.arrivals == "fixed" else None
            out += s.domain.size if writes is None else min(s.domain.size, writes)
        return out

    def bounds(self) -> list[tuple[int, float, float]]:
        """(interval, start, end) of every window, in order."""
        spec, out = self.spec, []
        per_s = sum(spec.rates()) * spec.pages_per_write
        for j in range(spec.intervals):
            t0, t1 = j * spec.resolution_s, min((j + 1) * spec.resolution_s, spec.duration_s)
            cuts = [t0, spec.exit_s, t1] if t0 < spec.exit_s < t1 else [t0, t1]
            for a, b in zip(cuts, cuts[1:]):
                parts = max(1, math.ceil(per_s * (b - a) / WINDOW_WRITES))
                edges = [a + (b - a) * q / parts for q in range(parts)] + [b]
                out += [(j, u0, u1) for u0, u1 in zip(edges, edges[1:])]
        return out

    def window(self, j: int, u0: float, u1: float, child_alive: bool) -> Window:
        k = self.spec.pages_per_write
        times, whos, addrs = [], [], []
        for s in self.streams:
            if s.who == 1 and not child_alive:
                continue
            t = s.times(u0, u1)
            times.append(t)
            whos.append(np.full(t.size, s.who, np.uint8))
            addrs.append(s.addresses(t.size * k).reshape(t.size, k))
        if not times:
            return Window(j, u0, np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0))
        t = np.concatenate(times)
        order = np.argsort(t, kind="stable")  # at equal times the parent's first
        return Window(j, u0, np.concatenate(whos)[order], np.concatenate(addrs)[order].reshape(-1), t[order])


@dataclass
class Episode:
    """What an episode did. Per interval ``j`` (ending at ``t_s[j]``) and writer (0 parent, 1 child): ``writes``
    (page writes), ``requests``, ``events`` (of :data:`WRITE_EVENTS`); sampled at the interval's end: ``cow_pages``,
    ``child_private_dirty_pages``, ``dma_parent_diverged``, ``dma_child_aliased``. ``signatures[w]``: the requests
    of writer ``w`` by the sorted write codes of their page writes (their latency, priced by the cost model).
    ``cow_pages_peak`` and ``child_private_dirty_pages_at_exit`` include the state just before the child's exit
    (``..._at_fork``: before the first write);
    ``parent`` / ``child``: the states at the end."""

    spec: EpisodeSpec
    t_s: np.ndarray
    writes: np.ndarray
    requests: np.ndarray
    events: np.ndarray
    cow_pages: np.ndarray
    child_private_dirty_pages: np.ndarray
    dma_parent_diverged: np.ndarray
    dma_child_aliased: np.ndarray
    signatures: list
    cow_pages_peak: int
    child_private_dirty_pages_at_exit: int
    child_private_dirty_pages_at_fork: int
    domain_pages: dict
    parent: AddressSpace
    child: MM
    report: dict | None = None
    invariants: object = None
    wall_s: float = 0.0
    codes: np.ndarray | None = None  # with ``keep_codes``: each page write's write code, in order
    # a lazy design's (spec 12): per requesting writer, the requests whose writes did table work first (an unshare,
    # a deferred copy), each (its signature, the cost events of that work, its interval, the writer charged); the
    # cost events of the table work per writer (its writes' and its exit's) and of the child's deferred copies at
    # its start (``child_sync``); the table objects and what exited children stayed charged with at the end
    table_work: tuple = ((), ())
    table_counts: dict | None = None
    tables: object = None
    exit_rss: list | None = None
    child2: MM | None = None  # (no second fork in an episode: for the checker of a write phase's states)

    @property
    def memory(self) -> Memory:
        return self.parent.memory

    def as_dict(self) -> dict:
        out = dict(self.report) if self.report is not None else {"spec": self.spec.as_dict()}
        if self.invariants is not None:
            out["invariants"] = self.invariants.as_dict()
        out["wall_s"] = self.wall_s
        return out


class _Tally:
    """The timeline's counts, window by window."""

    def __init__(self, spec: EpisodeSpec):
        n = spec.intervals
        self.k = spec.pages_per_write
        self.writes = np.zeros((n, 2), np.int64)
        self.requests = np.zeros((n, 2), np.int64)
        self.events = np.zeros((n, 2, len(WRITE_EVENTS)), np.int64)
        self.samples = np.zeros((n, 4), np.int64)
        self.signatures = [{}, {}]
        self.table_work = ([], [])

    def add(self, w: Window, codes: np.ndarray) -> None:
        who = w.who.astype(np.int64)
        c = codes.astype(np.int64)
        first, second = c // WRITE_CODE_BASE, c % WRITE_CODE_BASE - 1
        nev = len(WRITE_EVENTS)
        ev = np.bincount(who * nev + first, minlength=2 * nev)
        ev += np.bincount((who * nev + second)[second >= 0], minlength=2 * nev)
        self.events[w.interval] += ev.reshape(2, nev)
        self.writes[w.interval] += np.bincount(who, minlength=2)
        self.requests[w.interval] += np.bincount(w.request_who, minlength=2)
        rows = np.sort(c.reshape(-1, self.k), axis=1) if self.k > 1 else c.reshape(-1, 1)
        for x in (0, 1):
            mine = rows[w.request_who == x]
            if mine.size:
                got = self.signatures[x]
                for sig, n in _signatures(mine):
                    got[sig] = got.get(sig, 0) + n

    def add_table_work(self, w: Window, codes: np.ndarray, work: list) -> None:
        """The requests of window ``w`` whose writes did table work (``work``: (page write index, cost events)), by
        request (a request's writes' work summed)."""
        by_request: dict[int, dict] = {}
        for j, counts in work:
            got = by_request.setdefault(j // self.k, {})
            for e, n in counts.items():
                got[e] = got.get(e, 0) + n
        who = w.who
        for r, counts in sorted(by_request.items()):
            sig = tuple(sorted(codes[r * self.k : (r + 1) * self.k].tolist()))
            self.table_work[int(w.request_who[r])].append((sig, counts, w.interval, int(who[r * self.k])))


def _signatures(rows: np.ndarray) -> list[tuple[tuple, int]]:
    """(signature, requests) of requests whose page writes' codes are the sorted ``rows``: a signature as one number
    in base NR_WRITE_CODES where it fits 63 bits (counted directly up to 72**3 of them), else by rows."""
    k = rows.shape[1]
    if k > 10:
        sig, n = np.unique(rows, axis=0, return_counts=True)
        return list(zip(map(tuple, sig.tolist()), n.tolist()))
    key = rows @ (NR_WRITE_CODES ** np.arange(k - 1, -1, -1, dtype=np.int64))
    if k <= 3:
        n = np.bincount(key)
        sig = np.flatnonzero(n)
        n = n[sig]
    else:
        sig, n = np.unique(key, return_counts=True)
    digits = (sig[:, None] // NR_WRITE_CODES ** np.arange(k - 1, -1, -1, dtype=np.int64)) % NR_WRITE_CODES
    return list(zip(map(tuple, digits.tolist()), n.tolist()))


def run_episode(
    parent: AddressSpace, child: MM, variant: str, episode, kernels=None, keep_codes=False, lazy=None
) -> Episode:
    """The episode ``episode`` (an :class:`EpisodeSpec` or its notation) after a fork whose final states are
    ``parent`` and ``child`` (not modified): compiled with ``kernels`` that have ``episode_writes``, else the
    reference's Python; both give the same :class:`Episode` (with ``keep_codes``, every write's code too). After a
    lazy design's fork (spec 12), ``lazy``: (the fork's table objects, its ``fork_args``, a function pricing cost
    events in ns, for the pace of async-fork's child sync); it runs in the reference's Python
    (:class:`ReferenceRunner`)."""
    spec = parse_episode(episode)
    schedule = Schedule(spec, parent.mm, child)
    room = schedule.room()
    if lazy is not None:
        runner = ReferenceRunner(parent, child, variant, lazy)
    elif kernels is not None and hasattr(kernels, "episode_writes"):
        runner = CompiledRunner(parent, child, variant, kernels, room)
    else:
        runner = ReferenceRunner(parent, child, variant)
    tally, kept = _Tally(spec), []
    at_fork = runner.sample()[1]
    before_exit = _run_windows(spec, schedule, runner, tally, kept if keep_codes else None)
    after, child_after = runner.finish()
    peak = int(max(tally.samples[:, 0].max(), before_exit[0]))
    n = spec.intervals
    ep = Episode(
        spec,
        np.minimum((np.arange(n) + 1) * spec.resolution_s, spec.duration_s),
        tally.writes,
        tally.requests,
        tally.events,
        *tally.samples.T,
        tally.signatures,
        peak,
        int(before_exit[1]),
        int(at_fork),
        {WRITERS[s.who]: int(s.domain.size) for s in schedule.streams},
        after,
        child_after,
    )
    if keep_codes:
        ep.codes = np.concatenate(kept) if kept else np.zeros(0, np.uint8)
    if lazy is not None:
        wc = runner.wc
        ep.table_work, ep.table_counts = tally.table_work, wc.table_counts
        ep.tables, ep.exit_rss = wc.tables(), wc.exit_rss
    return ep


def _run_windows(spec: EpisodeSpec, schedule: Schedule, runner, tally: _Tally, kept: list | None) -> tuple:
    """Every window's writes on ``runner``, counted into ``tally`` (codes into ``kept``), sampled at each interval's
    end; the child exits at its time. The next window is drawn, and the last one counted, while the runner writes
    (a thread: the compiled writes release the GIL). Returns the sample just before the exit."""
    windows = [(j, u0, u1) for j, u0, u1 in schedule.bounds()]
    before_exit, alive = None, True

    def draw(k):
        j, u0, u1 = windows[k]
        return schedule.window(j, u0, u1, u0 < spec.exit_s)

    if windows[0][1] >= spec.exit_s:  # the child exits before the first write
        before_exit, alive = runner.sample(), False
        runner.exit()
    with ThreadPoolExecutor(1) as pool:
        cur = draw(0)  # every interval has a window at least
        job = pool.submit(runner.write, cur.request_who, cur.who, cur.addr, cur.times)
        for k in range(len(windows)):
            nxt = draw(k + 1) if k + 1 < len(windows) else None  # drawn while the runner writes ``cur``
            codes = job.result()
            work = runner.take_table_work()
            j, _, u1 = windows[k]
            if u1 >= min((j + 1) * spec.resolution_s, spec.duration_s):
                tally.samples[j] = runner.sample()
            if alive and (nxt is None or nxt.start_s >= spec.exit_s):
                before_exit, alive = runner.sample(), False
                runner.exit()
            if nxt is not None:
                job = pool.submit(runner.write, nxt.request_who, nxt.who, nxt.addr, nxt.times)
            tally.add(cur, codes)
            if work:
                tally.add_table_work(cur, codes, work)
            if kept is not None:
                kept.append(codes)
            cur = nxt
    if alive:
        before_exit = runner.sample()
        runner.exit()
    return before_exit


def child_private_dirty(child: MM, memory: Memory) -> int:
    """The child's private dirty pages (spec 11.6): its mappings of a dirty page mapped once."""
    _, val = entries(child)
    ok = decode.maps_frame(val) & ((val & np.uint64(P.PAGE_DIRTY)) != 0)
    pfn = decode.offsets(val[ok]).astype(np.int64)
    once = memory.page_mapcount[pfn] + memory.folio_pmd_mapcount[memory.page_folio[pfn]] == 1
    n = int(once.sum())
    for v in child.pmd[(child.pmd & np.uint64(P.PAGE_DIRTY)) != 0].tolist():
        pages = P.pte_pfn(v) + np.arange(PTRS_PER_TABLE)
        n += int((memory.page_mapcount[pages] + memory.folio_pmd_mapcount[memory.page_folio[pages]] == 1).sum())
    return n


def _code(events: list[str]) -> int:
    first = WRITE_EVENTS.index(events[0])
    second = WRITE_EVENTS.index(events[1]) if len(events) > 1 else -1
    return first * WRITE_CODE_BASE + second + 1


class ReferenceRunner:
    """The episode's writes in the reference's Python (:func:`gpusim.engines.writes.handle_mm_fault`), one at a time;
    its samples counted from the state (the oracle of :class:`CompiledRunner`'s running counts).

    After a lazy design's fork (``lazy``: see :func:`run_episode`) a write first does the table work its design
    makes (an unshare, the parent's deferred copy), charged to its writer and kept beside its write code
    (:meth:`take_table_work`). async-fork's child copies its deferred tables as it starts (spec 12.4), in address
    order, each taking the model time its cost events price at: the parent's writes before the child reached a
    table copy it first, and the child's own first write waits for the whole sync."""

    def __init__(self, parent: AddressSpace, child: MM, variant: str, lazy=None):
        tables, fork_args, self.price = lazy if lazy is not None else (None, None, None)
        self.wc = WriteContext(parent, child, variant, tables, fork_args)
        self.origin = {}  # new page -> the page it was copied from
        self.dma = pinned_frames(parent.mm, parent.memory)  # the DMA addresses and frames at the fork
        self.alive = True
        self.work: list[tuple[int, dict]] = []  # (page write index in the window, cost events) since the last take
        self.sync_s = 0.0  # async-fork: the model time the child's sync has reached

    def take_table_work(self) -> list:
        work, self.work = self.work, []
        return work

    def sync_until(self, t_s: float) -> None:
        """async-fork: the child's deferred copies that its sync finishes by model time ``t_s``."""
        wc = self.wc
        pending = wc.procs["parent"].mm.pending
        if not pending or not self.alive or wc.stopped[0] != "ok":
            return
        wc.charge("child_sync")
        counts = wc.table_counts["child_sync"]
        if not counts["async.sync"]:
            counts["async.sync"] = 1
        while pending and self.sync_s <= t_s and wc.stopped[0] == "ok":
            before = dict(counts)
            deferred_copy(wc, min(pending), "child")
            self.sync_s += self.price({e: n - before[e] for e, n in counts.items() if n != before[e]}) / 1e9

    def lazy_write(self, j: int, who: str, a: int, t_s: float) -> list[str]:
        """One write after a lazy design's fork: the child's sync up to its time, the write, its table work kept."""
        wc = self.wc
        self.sync_until(math.inf if who == "child" else t_s)
        p = wc.procs[who]
        if a // PTRS_PER_TABLE not in p.mm.wp:
            return handle_mm_fault(wc, p, a)
        wc.charge(who)
        before = dict(wc.table_counts[who])
        events = handle_mm_fault(wc, p, a)
        delta = {e: n - before[e] for e, n in wc.table_counts[who].items() if n != before[e]}
        if delta:
            self.work.append((j, delta))
        return events

    def frame(self, who: str, a: int) -> tuple[int, bool]:
        """The page ``who`` maps at ``a`` (-1: none), and whether the mapping is writable."""
        mm = self.wc.procs[who].mm
        t, i = divmod(a, PTRS_PER_TABLE)
        if t in mm.pmds:
            return P.pte_pfn(mm.pmds[t]) + i, P.pte_write(mm.pmds[t])
        v = mm.entry(a)
        if P.pte_kind(v) != P.KIND_PRESENT or P.pte_special(v):
            return -1, False
        return P.pte_pfn(v), P.pte_write(v)

    def write(self, request_who, who, addr, times=None) -> np.ndarray:
        codes = np.zeros(addr.size, np.uint8)
        m = self.wc.m
        per = addr.size // max(request_who.size, 1)
        for k, (x, a) in enumerate(zip(who.tolist(), addr.tolist())):
            victim = self.frame(WRITERS[x], a)[0]
            if self.wc.fc is not None:
                events = self.lazy_write(k, WRITERS[x], a, float(times[k // per]))
            else:
                events = handle_mm_fault(self.wc, self.wc.procs[WRITERS[x]], a)
            if "copy" in events:
                self.origin[len(m.page_folio) - 1] = victim
            codes[k] = _code(events)
        return codes

    def exit(self) -> None:
        self.sync_until(math.inf)
        exit_mmap(self.wc)
        self.alive = False

    def sample(self) -> tuple[int, int, int, int]:
        m = self.wc.m

        def alive(pfn):
            return not m.folio_flags[m.page_folio[pfn]] & FOLIO_FREED

        cow = sum(1 for q, o in self.origin.items() if alive(q) and alive(o))
        parent, child = self.wc.states()
        private = child_private_dirty(child, parent.memory) if self.alive else 0
        addr, frame = self.dma
        diverged = sum(self.frame("parent", a)[0] != f for a, f in zip(addr.tolist(), frame.tolist()))
        aliased = 0
        if self.alive:
            aliased = sum(self.frame("child", a) == (f, True) for a, f in zip(addr.tolist(), frame.tolist()))
        return cow, private, diverged, aliased

    def finish(self) -> tuple[AddressSpace, MM]:
        return self.wc.states()


class CompiledRunner:
    """The episode's writes in the compiled kernels (:mod:`gpusim.kernels.episode`), window by window."""

    def __init__(self, parent: AddressSpace, child: MM, variant: str, kernels, room: int):
        self.parent0, self.child0, self.k = parent, child, kernels
        self.v = get_variant(variant)
        tables = {w: np.union1d(mm.table_index, mm.pmd_index) for w, mm in (("parent", parent.mm), ("child", child))}
        self.mem, self.procs, used = compiled_start(parent, child, tables, room, kernels)
        self.st = np.zeros(NR_ST, np.int64)
        self.st[[ST_PAGES, ST_FOLIOS, ST_CONTENT]] = used
        self.st[ST_CHILD_LIVE] = 1
        self.st[ST_PRIVATE] = kernels.episode_private(self.mem, self.procs[1])
        self.sc = scratch(kernels, 1, parent.mm.rss.shape[0], 4)
        self.origin = np.full(room, -1, np.int64)
        self.first_new = parent.memory.nr_pages
        self.dma = pinned_frames(parent.mm, parent.memory)  # the DMA addresses and frames at the fork
        self.ahead = EPISODE_AHEAD

    def write(self, request_who, who, addr, times=None) -> np.ndarray:
        codes = np.zeros(addr.size, np.uint8)
        p, c = self.procs
        self.k.episode_writes(
            self.mem, p, c, self.sc, self.located(who, addr), self.st, codes, self.origin, self.first_new,
            self.v.wp_reuse, self.v.anon_exclusive, self.ahead,
        )  # fmt: skip
        return codes

    def take_table_work(self) -> list:
        return []  # (no lazy design runs here)

    def located(self, who: np.ndarray, addr: np.ndarray):
        """The writes as ``kernels.EpisodeWrites`` (their rows and VMAs found by the kernel)."""
        n = addr.size
        return self.k.EpisodeWrites(who, addr, np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64))

    def exit(self) -> None:
        self.k.episode_exit(self.mem, self.procs[1], self.st, self.origin, self.first_new)

    def sample(self) -> tuple[int, int, int, int]:
        diverged, aliased = self.k.episode_dma(*self.procs, bool(self.st[ST_CHILD_LIVE]), *self.dma)
        return int(self.st[ST_COW]), int(self.st[ST_PRIVATE]), int(diverged), int(aliased)

    def finish(self) -> tuple[AddressSpace, MM]:
        used = self.st[[ST_PAGES, ST_FOLIOS, ST_CONTENT]].tolist()
        return compiled_end(self.parent0, self.child0, self.mem, self.procs, used, not self.st[ST_CHILD_LIVE])


def episode_kernels(backend: str):
    """The kernels an episode runs on for a fork on ``backend``: the CPU's for every fast backend (the writes depend
    on one another: one core), none (the reference's Python) for ``reference``."""
    return None if backend == "reference" else _backend.kernels("cpu")
