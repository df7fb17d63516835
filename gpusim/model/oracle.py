"""The lock-break oracle (spec section 4) and the injection plan (spec section 5), with their notations.

Both are pure functions of their keys: the oracle answers ``NB(fork_seq, call_start, k)`` and the plan answers
whether the ``n``-th allocation at a point of a call fails and which events run in the ``n``-th window of a kind.
Nothing depends on execution order, so every engine sees the same answers.

Notations::

    oracle      never | always | every:N | bern:P:SEED | list:(s,k),(s,k)...     (an "NB=" prefix is accepted)
    failure     fail@POINT#N[@A]          POINT in ptetable, copy, swapcont.atomic, swapcont.kernel
                fail@bern:Q:SEED[@A]      seeded: each occurrence fails with probability Q
    window      @W#N[@A]: EVENT(x); EVENT(y)
                W in LB, SC, EC, ANY; EVENT in zap, reclaim, unpin, pin, write, touch

Without ``@A`` an injection applies to every call, each call counting its own occurrences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

M64 = (1 << 64) - 1
ALLOC_POINTS = ("ptetable", "copy", "swapcont.atomic", "swapcont.kernel")
POINT_SALT = {p: i + 1 for i, p in enumerate(ALLOC_POINTS)}
WINDOW_KINDS = ("LB", "SC", "EC", "ANY")
EVENTS = ("zap", "reclaim", "unpin", "pin", "write", "touch")


def smix(z: int) -> int:
    """splitmix64 finaliser, arithmetic mod 2**64."""
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def nb_hash(seed: int, fork_seq: int, call_start: int, k: int) -> int:
    return smix(smix(smix(smix(seed & M64) ^ fork_seq) ^ call_start) ^ k)


def prob_q32(p: float) -> int:
    return min(1 << 32, round(p * (1 << 32)))


class NotationError(ValueError):
    """An oracle or injection string does not follow its notation."""


@dataclass(frozen=True)
class LockBreakOracle:
    """``NB(fork_seq, call_start, k)``: whether the k-th lock-break check of a call breaks the pass."""

    mode: str
    n: int = 0
    p_q32: int = 0
    seed: int = 0
    pairs: frozenset = frozenset()
    text: str = "never"

    def __call__(self, fork_seq: int, call_start: int, k: int) -> bool:
        if self.mode == "never":
            return False
        if self.mode == "always":
            return True
        if self.mode == "every":
            return (k + 1) % self.n == 0
        if self.mode == "bern":
            return (nb_hash(self.seed, fork_seq, call_start, k) >> 32) < self.p_q32
        return (call_start, k) in self.pairs

    @classmethod
    def parse(cls, text: str) -> "LockBreakOracle":
        s = text.strip()
        if not s:
            raise NotationError("an empty oracle (never, always, every:N, bern:P:SEED, list:(s,k),...)")
        if s.startswith("NB="):
            s = s[3:]
        if s in ("never", "always"):
            return cls(s, text=s)
        m = re.fullmatch(r"every:([0-9]+)", s)
        if m:
            if int(m.group(1)) < 1:
                raise NotationError(f"oracle '{text}': every:N needs N >= 1")
            return cls("every", n=int(m.group(1)), text=s)
        m = re.fullmatch(r"bern:([0-9.eE+-]+):([0-9]+)", s)
        if m:
            try:
                p = float(m.group(1))
            except ValueError:
                p = -1.0
            if not 0.0 <= p <= 1.0:
                raise NotationError(f"oracle '{text}': bern:P:SEED needs 0 <= P <= 1")
            return cls("bern", p_q32=prob_q32(p), seed=int(m.group(2)), text=s)
        m = re.fullmatch(r"list:(.*)", s)
        if m:
            body = m.group(1).replace(" ", "")
            pairs = re.findall(r"\(([0-9]+),([0-9]+)\)", body)
            if not pairs or re.sub(r"\([0-9]+,[0-9]+\),?", "", body) != "":
                raise NotationError(f"oracle '{text}': list: takes pairs (call_start,k), e.g. list:(0,3),(512,0)")
            return cls("list", pairs=frozenset((int(a), int(b)) for a, b in pairs), text=s)
        raise NotationError(f"unknown oracle '{text}' (known: never, always, every:N, bern:P:SEED, list:(s,k),...)")


@dataclass(frozen=True)
class Event:
    name: str
    addr: int

    def __str__(self) -> str:
        return f"{self.name}({self.addr})"


@dataclass(frozen=True)
class Injection:
    """One injection: an allocation failure or a window with events. ``call`` None means every call."""

    text: str
    kind: str  # "fail", "fail-bern" or "window"
    point: str = ""  # allocation point (fail)
    window: str = ""  # LB/SC/EC/ANY (window)
    n: int = 0  # 1-based occurrence
    call: int | None = None
    q_q32: int = 0
    seed: int = 0
    events: tuple[Event, ...] = ()


_FAIL_RE = re.compile(r"fail@(?P<point>[a-z.]+)#(?P<n>[0-9]+)(?:@(?P<call>[0-9]+))?")
_BERN_RE = re.compile(r"fail@bern:(?P<q>[0-9.eE+-]+):(?P<seed>[0-9]+)(?:@(?P<call>[0-9]+))?")
_WIN_RE = re.compile(r"@(?P<w>[A-Z]+)#(?P<n>[0-9]+)(?:@(?P<call>[0-9]+))?:(?P<events>.*)", re.S)
_EVENT_RE = re.compile(r"(?P<name>[a-z]+)\((?P<addr>[0-9]+)\)")


def parse_injection(text: str) -> Injection:
    s = text.strip()
    m = _BERN_RE.fullmatch(s)
    if m:
        try:
            q = float(m.group("q"))
        except ValueError:
            q = -1.0
        if not 0.0 <= q <= 1.0:
            raise NotationError(f"injection '{text}': fail@bern:Q:SEED needs 0 <= Q <= 1")
        call = int(m.group("call")) if m.group("call") else None
        return Injection(s, "fail-bern", q_q32=prob_q32(q), seed=int(m.group("seed")), call=call)
    m = _FAIL_RE.fullmatch(s)
    if m:
        if m.group("point") not in ALLOC_POINTS:
            raise NotationError(
                f"injection '{text}': unknown allocation point '{m.group('point')}' (known: {', '.join(ALLOC_POINTS)})"
            )
        n = int(m.group("n"))
        if n < 1:
            raise NotationError(f"injection '{text}': occurrences count from 1")
        call = int(m.group("call")) if m.group("call") else None
        return Injection(s, "fail", point=m.group("point"), n=n, call=call)
    m = _WIN_RE.fullmatch(s)
    if m:
        if m.group("w") not in WINDOW_KINDS:
            raise NotationError(
                f"injection '{text}': unknown window '{m.group('w')}' (known: {', '.join(WINDOW_KINDS)})"
            )
        n = int(m.group("n"))
        if n < 1:
            raise NotationError(f"injection '{text}': occurrences count from 1")
        events = []
        for part in m.group("events").split(";"):
            part = part.strip()
            if not part:
                continue
            em = _EVENT_RE.fullmatch(part.replace(" ", ""))
            if not em or em.group("name") not in EVENTS:
                raise NotationError(
                    f"injection '{text}': bad event '{part}' (known: {', '.join(e + '(x)' for e in EVENTS)})"
                )
            events.append(Event(em.group("name"), int(em.group("addr"))))
        if not events:
            raise NotationError(f"injection '{text}': a window needs at least one event, e.g. @EC#1: zap(100)")
        call = int(m.group("call")) if m.group("call") else None
        return Injection(s, "window", window=m.group("w"), n=n, call=call, events=tuple(events))
    raise NotationError(
        f"unknown injection '{text}' (forms: fail@POINT#N[@A], fail@bern:Q:SEED[@A], @W#N[@A]: event(x); ...)"
    )


@dataclass
class InjectionPlan:
    """The injections of one run, answering by key; it also records which windows fired."""

    injections: tuple[Injection, ...] = ()
    fired: set = field(default_factory=set)

    @classmethod
    def parse(cls, texts) -> "InjectionPlan":
        if isinstance(texts, str):
            texts = [texts]
        out = []
        for t in texts or ():
            # several injections may share one string, separated by '|' or on separate --inject options
            if not str(t).strip():
                raise NotationError("an empty injection (leave --inject out for none)")
            for part in str(t).split("|"):
                if part.strip():
                    out.append(parse_injection(part))
        return cls(tuple(out))

    def alloc_fails(self, fork_seq: int, call_start: int, point: str, n: int, record: bool = True) -> bool:
        """Whether the ``n``-th allocation at ``point`` of the call starting at ``call_start`` fails; a keyed
        failure that answers yes is recorded as fired (unless ``record`` is false: a question asked ahead of the
        walk, which may stop before it gets there)."""
        for i, inj in enumerate(self.injections):
            if inj.call is not None and inj.call != call_start:
                continue
            if inj.kind == "fail" and inj.point == point and inj.n == n:
                if record:
                    self.fired.add(i)
                return True
            if inj.kind == "fail-bern":
                h = nb_hash(inj.seed ^ POINT_SALT[point], fork_seq, call_start, n)
                if (h >> 32) < inj.q_q32:
                    return True
        return False

    def has_failures(self) -> bool:
        return any(inj.kind in ("fail", "fail-bern") for inj in self.injections)

    def window_events(self, call_start: int, kind: str, n: int, n_any: int) -> list[tuple[int, Event]]:
        """Events for the window that is the ``n``-th of ``kind`` and the ``n_any``-th of any kind in a call.

        Returns (injection index, event) in injection order, then list order.
        """
        out = []
        for i, inj in enumerate(self.injections):
            if inj.kind != "window" or (inj.call is not None and inj.call != call_start):
                continue
            if (inj.window == kind and inj.n == n) or (inj.window == "ANY" and inj.n == n_any):
                self.fired.add(i)
                out.extend((i, e) for e in inj.events)
        return out

    def unfired(self) -> list[str]:
        """The windows that never occurred and the keyed allocation failures (``fail@point#n``) whose allocation
        was never made, in injection order (a seeded failure rate has no one occurrence to miss)."""
        keyed = ("window", "fail")
        return [inj.text for i, inj in enumerate(self.injections) if inj.kind in keyed and i not in self.fired]
