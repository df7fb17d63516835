"""Fork episodes on the host kernel (spec 11.6): the ground truth for :mod:`gpusim.engines.episode`.

A measuring process (``episode_writer.c``, compiled here with the system's C compiler the first time and kept in the
user's cache) maps and touches an anonymous region (THP on or off), and is captured (:func:`capture`) before it
forks, so that the simulator forks its exact twin (frames, THPs, its own VMAs). The simulator then runs the episode
on the twin (the parent writes, within the region) and gives the measuring process the very writes it drew: their
times and pages. The real parent first makes as many single free pages as its copies may take, backed by the host
(this VM returns free memory to its host in 2 MiB blocks, and a copy into a page the host must fault in again cost
10 us instead of 2: a state of the hypervisor, not of the kernel's COW), then forks a child that stays alive (idle,
or reading its memory as a snapshot writer does) and makes those writes at those times, timing each one; at the end
of each interval of the timeline it stops while this module reads the child's ``Private_Dirty``
(``/proc/PID/smaps_rollup``) and the parent's minor faults. :func:`measure_episode` returns both timelines side by
side: the child's private dirty pages above its level at the fork, the parent's faults, and the per-write latency
percentiles (measured; modelled with a cost profile).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from gpusim import api
from gpusim.analysis.costmodel import (
    code_name,
    episode_report,
    latency,
    latency_summary,
    load_profile,
    mixture_percentiles,
)
from gpusim.engines.episode import Schedule, episode_kernels, parse_episode, run_episode
from gpusim.inputs.snapshot import snapshot_space
from gpusim.jobs.host.capture import capture
from gpusim.jobs.host.cbuild import NoBinary, c_binary
from gpusim.jobs.host.real import PAGE, LineProcess
from gpusim.kernels.flags import WRITE_EVENTS

WRITER_SOURCE = Path(__file__).with_name("episode_writer.c")
CHILD_MODES = ("idle", "read")
WARM_MARGIN_PAGES = 16384


class HostEpisodeError(RuntimeError):
    """A host episode that cannot be measured here (no C compiler, a spec the measuring process cannot follow)."""


def writer_binary() -> Path:
    """The compiled measuring process (:func:`gpusim.jobs.host.cbuild.c_binary`)."""
    try:
        return c_binary(WRITER_SOURCE)
    except NoBinary as e:
        raise HostEpisodeError(f"measuring an episode on this kernel: {e}") from None


class EpisodeWriter(LineProcess):
    """The measuring process holding ``pages`` touched pages (:data:`WRITER_SOURCE`)."""

    def __init__(self, pages: int, thp: bool, child: str = "idle", timeout: float = 600):
        argv = [str(writer_binary()), str(pages), "1" if thp else "0", child]
        super().__init__(argv, f"the episode's measuring process ({pages} pages)", timeout)
        self.info = self.reply()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()


def private_dirty_kb(pid: int) -> int:
    """``Private_Dirty`` of ``/proc/PID/smaps_rollup`` (kB)."""
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1])
    raise HostEpisodeError(f"/proc/{pid}/smaps_rollup has no Private_Dirty")


def minor_faults(pid: int) -> int:
    """The process's minor faults so far (``/proc/PID/stat``, field 10)."""
    stat = open(f"/proc/{pid}/stat").read()
    return int(stat[stat.rindex(")") + 2 :].split()[7])


def parent_schedule(spec, parent, child) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(write times in ns, page addresses, write counts at each interval's end) of the parent's writes in the
    episode ``spec``, drawn as :func:`gpusim.engines.episode.run_episode` draws them."""
    s, times, addrs = Schedule(spec, parent, child), [], []
    ends = np.zeros(spec.intervals, np.int64)
    for j, u0, u1 in s.bounds():
        w = s.window(j, u0, u1, True)
        times.append(np.repeat(w.times, spec.pages_per_write))
        addrs.append(w.addr)
        ends[j] += w.addr.size
    t = np.concatenate(times) if times else np.zeros(0)
    return np.round(t * 1e9).astype(np.int64), np.concatenate(addrs).astype(np.int64), np.cumsum(ends)


def _twin_episode(info: dict, spec, variant: str, profile):
    """The captured measuring process forked by the simulator, and its episode (the writes within the region, each
    write's code kept), timed and priced: (fork result, episode, spec with its range)."""
    space = snapshot_space(capture(info["pid"]), variant)
    spec = dataclasses.replace(spec, range=(info["start_page"], info["start_page"] + info["pages"] - 1))
    t0 = time.perf_counter()
    r = api.fork(space, variant, backend="cpu", check=False)
    ep = run_episode(r.parent, r.child, variant, spec, episode_kernels("cpu"), keep_codes=True)
    ep.wall_s = time.perf_counter() - t0
    prof = load_profile(profile)
    ep.report = episode_report(ep, prof, latency(r.counts, variant, prof)["latency_ns"])
    return r, ep, spec


def _run_writes(writer: EpisodeWriter, times, offsets, ends, workdir: str) -> dict:
    """The measuring process's fork and writes, sampled at each of ``ends``: per sample (writes done, the child's
    Private_Dirty kB, the parent's minor faults), the baseline first; the latencies; how late it fell."""
    sched, lat = os.path.join(workdir, "schedule"), os.path.join(workdir, "latencies")
    with open(sched, "wb") as f:
        np.array([times.size, ends.size], np.int64).tofile(f)
        for a in (times, offsets, ends):
            a.astype(np.int64).tofile(f)
    # the copies the writes may make (a page at most once), and 64 MiB more, in free memory the host backs again
    writer.send(f"warm {min(times.size, writer.info['pages']) + WARM_MARGIN_PAGES}")
    writer.reply()
    writer.send(f"go {sched} {lat}")
    child, pid = writer.reply()["child"], writer.info["pid"]
    samples = [(0, private_dirty_kb(child), minor_faults(pid))]
    writer.send("start")
    for _ in range(ends.size):
        msg = writer.reply()
        samples.append((msg["writes"], private_dirty_kb(child), minor_faults(pid)))
        writer.send("g")
    done = writer.reply()
    return {
        "samples": np.array(samples, np.int64),
        "latency_ns": np.fromfile(lat, np.uint32),
        "late_ns": done["late_ns"],
    }


def quantiles(latency_ns: np.ndarray) -> dict:
    """p50, p99, p99.9 (nearest rank), max and mean of measured latencies (ns), as the model's are summarised."""
    return latency_summary(np.sort(latency_ns).astype(float), np.ones(latency_ns.size))


def measure_episode(
    pages: int, thp: bool, episode, variant: str = "linux-6.18", child: str = "idle", profile=None
) -> dict:
    """The episode ``episode`` (parent writes only; the child lives to the end) after a fork of a measuring process
    holding ``pages`` touched pages (THP on or off), on this kernel and in the simulator (``variant``, priced with
    ``profile``): per interval, the child's private dirty pages above their level at the fork and the parent's
    faults, measured and modelled; the per-write latency percentiles, measured and modelled; the simulator's time."""
    spec = parse_episode(episode)
    if spec.writer != "parent" or spec.child_exit_at_s is not None or spec.range is not None:
        raise HostEpisodeError("a host episode: the parent writes (no writer, child_exit_at or range keys)")
    if child not in CHILD_MODES:
        raise HostEpisodeError(f"child: one of {', '.join(CHILD_MODES)}")
    writer = EpisodeWriter(pages, thp, child)
    try:
        result, ep, spec = _twin_episode(writer.info, spec, variant, profile)
        times, addrs, ends = parent_schedule(spec, result.parent.mm, result.child)
        with tempfile.TemporaryDirectory(prefix="gpusim-episode-") as d:
            real = _run_writes(writer, times, addrs - writer.info["start_page"], ends, d)
    finally:
        writer.close()
    out = _compared(ep, real, thp, pages)
    out["keys"], out["latencies"] = write_keys(ep.codes, addrs), real["latency_ns"]
    return out


def write_keys(codes: np.ndarray, addrs: np.ndarray) -> np.ndarray:
    """Each write's latency class: its write code (the twin's fault) and whether it lies in the page table of the
    write before it (``2 * code + near``): a fault next to the last one finds its page table and struct pages in
    cache, one elsewhere misses them (measured: a copy fault of a random page costs about a fifth more than one of
    the next page)."""
    near = np.zeros(codes.size, np.int64)
    near[1:] = addrs[1:] // 512 == addrs[:-1] // 512
    return 2 * codes.astype(np.int64) + near


def samples_by_key(runs: list[dict]) -> dict:
    """The measured latencies of the writes of ``runs`` (:func:`measure_episode`'s) grouped by :func:`write_keys`:
    the per-class distributions that :func:`gpusim.analysis.costmodel.mixture_percentiles` mixes."""
    keys = np.concatenate([r["keys"] for r in runs])
    lat = np.concatenate([r["latencies"] for r in runs])
    return {int(k): np.sort(lat[keys == k]) for k in np.unique(keys)}


def key_counts(run: dict) -> dict:
    """A run's writes counted by latency class, as one-write request signatures."""
    k, n = np.unique(run["keys"], return_counts=True)
    return {(int(a),): int(b) for a, b in zip(k, n)}


def _compared(ep, real: dict, thp: bool, pages: int) -> dict:
    """The measured and modelled timelines of one episode side by side."""
    s = real["samples"]
    faults_model = np.cumsum(ep.writes[:, 0] - ep.events[:, 0, WRITE_EVENTS.index("none")])  # writes with a fault
    return {
        "spec": ep.spec.as_dict(),
        "pages": pages,
        "thp": thp,
        "t_s": ep.t_s.tolist(),
        "writes": s[1:, 0].tolist(),
        "measured_private_pages": ((s[1:, 1] - s[0, 1]) * 1024 // PAGE).tolist(),
        "modelled_private_pages": (ep.child_private_dirty_pages - ep.child_private_dirty_pages_at_fork).tolist(),
        "measured_faults": (s[1:, 2] - s[0, 2]).tolist(),
        "modelled_faults": faults_model.tolist(),
        "measured_latency_ns": quantiles(real["latency_ns"]),
        "modelled_latency_ns": ep.report["write_latency_ns"],
        "late_ns": real["late_ns"],
        "simulator_s": ep.wall_s,
        "profile": ep.report["profile"],
    }


# (pages, THP, episode) of the episodes that calibrate the per-event latency distributions, and of the held-out
# ones that validate (spec 11.6; issue 27's sizes: 256 MiB to 2 GiB, uniform, hotset and sequential, THP on and off)
CALIBRATION = [
    (65536, False, "duration=2s, rate=50000, pattern=sequential, resolution=0.25"),
    (65536, False, "duration=1s, rate=50000, pattern=uniform, resolution=0.25"),
    (65536, True, "duration=1s, rate=50000, pattern=uniform, resolution=0.25"),
    (65536, True, "duration=1s, rate=50000, pattern=sequential, resolution=0.25"),
]
HELD_OUT = [
    (262144, False, "duration=2s, rate=50000, pattern=uniform, resolution=0.1"),
    (262144, False, "duration=2s, rate=50000, pattern=hotset, resolution=0.1"),
    (524288, False, "duration=2s, rate=100000, pattern=sequential, resolution=0.1"),
    (65536, True, "duration=2s, rate=20000, pattern=uniform, resolution=0.1"),
    (262144, True, "duration=2s, rate=50000, pattern=hotset, hot_fraction=0.05, resolution=0.1"),
    (524288, True, "duration=2s, rate=100000, pattern=sequential, resolution=0.1"),
]
QUICK_HELD_OUT = [HELD_OUT[0], HELD_OUT[3]]
COW_TOLERANCE, LATENCY_TOLERANCE = 0.05, 0.25
COW_FLOOR = 100  # samples with fewer measured private pages are not held to the relative tolerance


def cow_error(run: dict) -> float | None:
    """The largest relative error of the modelled private pages over the samples with at least :data:`COW_FLOOR`
    measured ones (None: none had)."""
    m, p = np.array(run["measured_private_pages"]), np.array(run["modelled_private_pages"])
    keep = m >= COW_FLOOR
    return float(np.max(np.abs(p[keep] - m[keep]) / m[keep])) if keep.any() else None


def validate_episodes(quick: bool = False, variant: str = "linux-6.18", profile=None, progress=None) -> dict:
    """The calibration episodes (their writes' measured latencies grouped by the twin's event), then the held-out
    ones: per case the COW timeline's worst relative error and the latency percentiles measured, modelled from the
    calibrated distributions, and priced with ``profile``'s one cost per event; a verdict."""
    calib = []
    for pages, thp, spec in CALIBRATION:
        calib.append(measure_episode(pages, thp, spec, variant, profile=profile))
        if progress:
            progress(f"calibration {pages * PAGE >> 20} MiB THP {'on' if thp else 'off'}")
    samples = samples_by_key(calib)
    cases = []
    for pages, thp, spec in QUICK_HELD_OUT if quick else HELD_OUT:
        run = measure_episode(pages, thp, spec, variant, profile=profile)
        run["calibrated_latency_ns"] = mixture_percentiles(key_counts(run), samples)
        for k in ("keys", "latencies"):
            run.pop(k)
        run["cow_error"] = cow_error(run)
        meas, mod = run["measured_latency_ns"], run["calibrated_latency_ns"]
        run["latency_error"] = {q: mod[q] / meas[q] - 1 for q in ("p50", "p99")}
        run["ok"] = (run["cow_error"] is None or run["cow_error"] <= COW_TOLERANCE) and all(
            abs(e) <= LATENCY_TOLERANCE for e in run["latency_error"].values()
        )
        cases.append(run)
        if progress:
            progress(f"{pages * PAGE >> 20} MiB THP {'on' if thp else 'off'} {run['spec']['pattern']}")
    noise = {
        f"{code_name(k // 2)}{' (near the last)' if k % 2 else ''}": {
            "p50": float(np.median(v)),
            "p99": float(np.quantile(v, 0.99)),
            "n": int(v.size),
        }
        for k, v in samples.items()
    }
    return {
        "variant": variant,
        "calibration_samples": noise,
        "cases": cases,
        "verdict": "pass" if all(c["ok"] for c in cases) else "fail",
    }
