"""Time real forks of several layouts in one window, interleaved, in the state the simulator models.

Every layout is held by its own measuring process (:class:`gpusim.jobs.host.real.Worker`), all alive at once (in groups
that fit in half of the available memory, each with its own bare process), pinned to one CPU where the kernel
allows. After a warm-up visit each, :func:`measure` visits them round-robin in a shuffled order per round; a visit
restores the modelled state, checks it and times two forks (:func:`gpusim.jobs.host.real._visit`):

* ``fresh``: touched pages writable and anon-exclusive, pins in place, the interpreter's own pages re-dirtied too,
  then the caches read through (:func:`evict_bytes`): the fork gpusim simulates from a built space, starting cold as
  a running process's does;
* ``repeated``: the fork right after it, every unpinned page still write-protected and shared-once: the second fork
  of ``fork.chain``.

A layout whose interval (:func:`gpusim.jobs.host.stats.added_summary`) is wider than the noise limit in either state
gets extra rounds (with the bare process), up to as many again; what is still too wide is reported as such.
The state checks come from the fault counts of each visit: see :func:`state_checks`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

from gpusim.base.machine import last_level_cache_bytes, mem_available_bytes
from gpusim.jobs.host.capture import capture
from gpusim.jobs.host.cbuild import NoBinary, c_binary
from gpusim.jobs.host.real import PAGE, TABLE_PAGES, MeasuringProcess, RealLayout, Worker, frame_breaks, page_frames
from gpusim.jobs.host.stats import NOISE_LIMIT, added_summary, drift, quartiles
from gpusim.jobs.host.twin import thp_extents, vma_places

STATES = ("fresh", "repeated")
FAULT_SLACK = 16  # faults the interpreter may take on its own pages around a counted write pass, plus one per
PARTS_PER_SLACK_FAULT = 32  # this many slices written (one per VMA and pinned range)


def evict_bytes() -> int:
    """What a measuring process reads through before each fresh fork (:class:`gpusim.jobs.host.real.Evictor`):
    twice the last-level cache (64 MiB where the machine does not say), at most 256 MiB."""
    llc = last_level_cache_bytes() or 32 * 1024 * 1024
    return int(min(2 * llc, 256 * 1024 * 1024))


def default_cpu() -> int | None:
    """The CPU the measuring processes run on: the last one this process may use (None: not settable here)."""
    try:
        return max(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def memory_groups(layouts: list[RealLayout], budget: int) -> list[list[int]]:
    """Indices of ``layouts`` in groups whose touched memory adds up to at most ``budget`` (at least one each)."""
    groups, size = [[]], 0
    for i, L in enumerate(layouts):
        need = L.touched_bytes()
        if groups[-1] and size + need > budget:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += need
    return groups if groups[0] else []


def expected_wp_faults(layout: RealLayout, thp_pages: int) -> int:
    """Write faults a write pass over the touched pages takes after a fork: one per unpinned touched 4 KiB page,
    one per THP."""
    touched = np.array(layout.touched(), bool)
    pinned = np.zeros(layout.pages, bool)
    for first, n in layout.pinned:
        pinned[first : first + n] = True
    touched |= pinned
    ext = thp_extents(layout, touched, vma_places(layout), thp_pages)
    in_thp = np.zeros(layout.pages, bool)
    for b0, _ in ext:
        in_thp[b0 : b0 + TABLE_PAGES] = True
    return int((touched & ~pinned & ~in_thp).sum()) + len(ext)


def state_checks(layout: RealLayout, thp_pages: int, faults: dict) -> dict:
    """Whether each timed fork saw its state, from the visits' fault counts (lists over the timed visits):

    * fresh: the check pass before every fresh fork took no fault (every touched page writable, so anon-exclusive),
      and writing the pinned pages took fewer faults than half of them (a lost pin makes every pinned page fault:
      the fork would have shared and write-protected it);
    * repeated: the re-dirtying pass after every pair took as many faults as the forks leave write-protected pages
      (:func:`expected_wp_faults`), within the interpreter's own few: nothing wrote them between the two forks.

    The interpreter's own pages are re-dirtied before each fresh fork too; their check pass may take the
    interpreter's own few faults (:data:`FAULT_SLACK`), no more."""
    npinned = sum(n for _, n in layout.pinned)
    expected = expected_wp_faults(layout, thp_pages)
    pins_ok = all(f < max(2, npinned / 2) for f in faults["pinned_faults"])
    own_ok = all(f <= FAULT_SLACK for f in faults.get("own_check_faults", ()))
    fresh_ok = all(f == 0 for f in faults["check_faults"]) and pins_ok and own_ok
    wp = faults["redirty_faults"]
    slack = FAULT_SLACK + (layout.vmas + len(layout.pinned)) // PARTS_PER_SLACK_FAULT
    repeated_ok = all(expected <= f <= expected + slack for f in wp)
    return {
        "fresh": fresh_ok,
        "repeated": repeated_ok,
        "expected_wp_faults": expected,
        "redirty_faults": [min(wp), max(wp)] if wp else None,
        "check_faults_max": max(faults["check_faults"], default=0),
        "pinned_faults_max": max(faults["pinned_faults"], default=0),
        "own_check_faults_max": max(faults.get("own_check_faults", ()), default=0),
    }


PROBE_SOURCE = Path(__file__).with_name("fork_probe.c")


def probe_holds(layout: RealLayout) -> bool:
    """Whether the C probe can hold ``layout``: equal VMAs, one fill and one THP advice for all, first touch in
    address order, no pins."""
    L = layout
    uniform = not isinstance(L.fill, list) and not isinstance(L.thp, list) and L.pages % max(L.vmas, 1) == 0
    return uniform and not L.pinned and L.first_touch == "address"


def layout_frames(pid: int, region: int, layout: RealLayout) -> dict:
    """The frames of a C probe's layout (region order, None where not present) and their breaks, read from its
    pagemap as a measuring interpreter reads its own (:func:`gpusim.jobs.host.real.frame_breaks`; None without
    root)."""
    places = [(region + a0 * PAGE, b0, n) for b0, a0, n in vma_places(layout)]
    try:
        frames = page_frames(pid, places)
    except OSError:
        return {"frames": None, "frame_breaks": None}
    breaks = frame_breaks(frames)
    return {"frames": frames if breaks is not None else None, "frame_breaks": breaks}


class Probe(MeasuringProcess):
    """The smallest measuring process (:data:`PROBE_SOURCE`, C): nothing of its own but a C program's few pages, its
    fork nearly all the kernel's fixed cost; or that and a ``layout`` (:func:`probe_holds`). It answers as a
    :class:`gpusim.jobs.host.real.Worker` does."""

    def __init__(self, cpu: int | None = None, timeout: float = 600, evict_bytes: int = 0, layout=None):
        self.layout = layout or RealLayout("probe", 0)
        argv = [str(c_binary(PROBE_SOURCE)), str(-1 if cpu is None else cpu), str(evict_bytes)]
        if layout is not None and layout.pages:
            if not probe_holds(layout):
                raise ValueError(f"{layout.name}: the C probe holds equal VMAs, one fill and THP advice, no pins")
            L = layout
            argv += [str(L.vmas), str(L.pages // L.vmas), str(L.stride(0)), str(int(L.any_thp)), str(int(L.gaps))]
        super().__init__(argv, f"the C fork probe{'' if layout is None else f' holding {layout.name}'}", timeout)
        self.info = self.reply()
        if layout is not None and layout.pages:
            self.info.update(layout_frames(self.info["pid"], self.info["region"], layout))


class _Group:
    """The workers of one memory group (index 0: the bare process; the C probe last, when asked and built) and
    their timed visits."""

    def __init__(self, layouts: list[RealLayout], cpu, timeout: float, probe: bool = False, c_held=frozenset()):
        self.workers, self.samples, self.probe = [], [], None
        evict = evict_bytes()
        try:
            for L in [RealLayout("bare", 0), *layouts]:
                held = L.name in c_held
                self.workers.append(Probe(cpu, timeout, evict, L) if held else Worker(L, cpu, timeout, evict))
                self.samples.append({})
            if probe:
                self.workers.append(Probe(cpu, timeout, evict))
                self.samples.append({})
                self.probe = len(self.workers) - 1
        except BaseException:
            self.close()
            raise

    def visit(self, i: int, keep: bool = True) -> None:
        got = self.workers[i].visits(1)
        if keep:
            for k, v in got.items():
                self.samples[i].setdefault(k, []).extend(v)

    def baseline(self, i: int) -> int:
        """The process whose fork worker ``i``'s is measured against: the bare C probe for a layout a C probe holds
        (the same program with nothing else), the bare interpreter for one an interpreter holds."""
        return self.probe if isinstance(self.workers[i], Probe) and self.probe is not None else 0

    def summary(self, i: int, state: str, seed: int = 0) -> dict:
        base = self.samples[self.baseline(i)]
        return added_summary(self.samples[i][f"{state}_ns"], base[f"{state}_ns"], seed)

    def too_wide(self, i: int, noise_limit: float) -> bool:
        return max(self.summary(i, s)["spread"] for s in STATES) > noise_limit

    def capture(self, i: int) -> dict:
        """Worker ``i``'s whole process, its state restored first (:func:`gpusim.jobs.host.capture.capture`):
        ``{"snapshot": the Arrow table, "restore": the restoring visit's fault counts}``."""
        w = self.workers[i]
        restore = w.restore()
        return {"snapshot": capture(w.info["pid"]), "restore": restore}

    def close(self) -> None:
        for w in self.workers:
            w.close()


def _run_group(g: _Group, rounds: int, rng: random.Random, noise_limit: float, tick) -> None:
    live = [i for i, w in enumerate(g.workers) if not w.info["refused"]]
    if g.probe is not None:
        tick(None, more=rounds)  # the probe's visits, beyond the layouts' and the bare process's planned
    for i in live:
        g.visit(i, keep=False)  # warm-up
    for _ in range(rounds):
        for i in rng.sample(live, len(live)):
            g.visit(i)
            tick(g.workers[i].layout.name)
    for _ in range(rounds):  # extra rounds for the layouts still too wide to judge
        wide = [i for i in live[1:] if i != g.probe and g.too_wide(i, noise_limit)]
        if not wide:
            break
        bases = sorted({g.baseline(i) for i in wide})
        tick(None, more=len(wide) + len(bases))
        for i in rng.sample([*bases, *wide], len(wide) + len(bases)):
            g.visit(i)
            tick(g.workers[i].layout.name)


def _result(g: _Group, i: int) -> dict:
    w = g.workers[i]
    out = {"name": w.layout.name, "layout": w.layout, **w.info, "holder": "c" if isinstance(w, Probe) else "python"}
    if w.info["refused"]:
        return out
    s = g.samples[i]
    for state in STATES:
        out[state] = g.summary(i, state)
        out[state]["drift"] = drift(s[f"{state}_ns"])
    out["samples"] = {k: s[k] for k in ("fresh_ns", "repeated_ns")}
    out["checks"] = state_checks(w.layout, w.info["thp_pages"], s)
    out["own_pages"] = quartiles(s["own_pages"])  # the interpreter's own re-dirtied pages at each visit
    return out


def _open_group(layouts: list[RealLayout], cpu, timeout: float, probe: bool, c_held, extra: dict) -> _Group:
    """A group's processes; where the C probe cannot be built, interpreters only (``extra["probe_refused"]`` says
    why, and later groups do not try again)."""
    if "probe_refused" not in extra:
        try:
            return _Group(layouts, cpu, timeout, probe, frozenset(c_held))
        except NoBinary as e:
            extra["probe_refused"] = str(e)
    return _Group(layouts, cpu, timeout)


def _captured(captures, i: int) -> bool:
    """Whether :func:`measure`'s ``captures`` asks for layout ``i``'s capture."""
    return captures == "all" or (not isinstance(captures, str) and i in captures)


def measure(
    layouts: list[RealLayout],
    rounds: int,
    seed: int = 0,
    cpu="auto",
    progress=None,
    noise_limit: float = NOISE_LIMIT,
    timeout: float = 600,
    memory_fraction: float = 0.5,
    captures="bare",
    probe: bool = False,
    c_held=frozenset(),
) -> dict:
    """``{"layouts": [one result per layout, in order], "stability": ...}``: each result has the setup's facts
    (``thp_pages``, ``refused``, ``cpu``), per state the added-time summary and its drift, the raw samples and the
    state checks; ``stability`` the bare process's quartiles and drift per state, the CPU and the rounds. The
    layouts are measured in one window when their touched memory fits in ``memory_fraction`` of the available
    memory, else in groups one after the other (``stability["groups"]``). ``captures``: which processes are captured
    after their rounds (:meth:`_Group.capture`): the first group's ``bare`` process (``"bare"``: the result's
    ``"bare"``), and with it each layout (``"all"``) or the layouts of these indices (a set; their results'
    ``"capture"``), or none (``"none"``). ``probe``: the C fork probe
    (:class:`Probe`) visited in the first group's rounds too, and captured: the result's ``"probe"`` (absent where it
    cannot be built: ``"probe_refused"`` says why). ``c_held``: names of layouts held by a C probe
    (:class:`Probe`) instead of an interpreter (where the probe is built; their results say ``"holder": "c"``, and
    their added time is over the bare C probe's fork, in their group's rounds: :meth:`_Group.baseline`)."""
    cpu = default_cpu() if cpu == "auto" else cpu
    rng = random.Random(seed)
    groups = memory_groups(layouts, int(mem_available_bytes() * memory_fraction))
    count = {"done": 0, "total": rounds * (len(layouts) + len(groups))}

    def tick(name, more: int = 0):
        """One visit done (``name``), or ``more`` visits planned (extra rounds)."""
        count["total"] += more
        count["done"] += 0 if more else 1
        if progress and not more:
            progress(count["done"], count["total"], name)

    results, bare, bare_capture, extra = [None] * len(layouts), [], None, {}
    for idx in groups:
        g = None
        try:
            held_here = any(layouts[i].name in c_held for i in idx)
            g = _open_group([layouts[i] for i in idx], cpu, timeout, (probe and not bare) or held_here, c_held, extra)
            _run_group(g, rounds, rng, noise_limit, tick)
            for k, i in enumerate(idx):
                results[i] = _result(g, k + 1)
                if _captured(captures, i) and not results[i]["refused"]:
                    results[i]["capture"] = g.capture(k + 1)
            if captures != "none" and not bare:
                bare_capture = g.capture(0)
            if g.probe is not None and "probe" not in extra:
                extra["probe"] = {**g.capture(g.probe), "fresh_ns": g.samples[g.probe]["fresh_ns"]}
            bare.append(g.samples[0])
        finally:
            if g is not None:
                g.close()
    out = {"layouts": results, "stability": {**stability(bare, cpu, rounds), "groups": len(groups)}, **extra}
    if bare_capture is not None:
        out["bare"] = {**bare_capture, "fresh_ns": bare[0]["fresh_ns"]}
    return out


def stability(bare_samples: list[dict], cpu, rounds: int) -> dict:
    """How steady the machine was: the bare process's fork quartiles and drift per state (first group's)."""
    out = {"cpu": cpu, "rounds": rounds}
    if bare_samples and bare_samples[0]:
        for state in STATES:
            x = bare_samples[0][f"{state}_ns"]
            out[f"bare_{state}_ns"] = quartiles(x)
            out[f"bare_{state}_drift"] = drift(x)
    return out


def time_layout(layout: RealLayout, rounds: int) -> dict:
    """One layout against a bare process, interleaved (:func:`measure`): its result."""
    return measure([layout], rounds)["layouts"][0]
