"""Ground truth from the host kernel: real forks, page sharing via pagemap, the fit, calibration, capture."""

import json
import os
import pathlib
import subprocess
import sys

import background
import numpy as np
import pytest
import yaml

import gpusim
from gpusim import api
from gpusim.jobs.host.calibrate import (
    GROUPS,
    WARM_GROUPS,
    fit_scales,
    kernel_variant,
    own_counts,
    predicted_sharing,
    predicted_write_frames,
    real_write_frames,
    state_row,
    validate,
    warm_factors,
    with_fork_base,
)
from gpusim.jobs.host.capture import capture, read_maps
from gpusim.jobs.host.cbuild import NoBinary
from gpusim.jobs.host.measure import (
    FAULT_SLACK,
    Probe,
    default_cpu,
    expected_wp_faults,
    measure,
    memory_groups,
    state_checks,
)
from gpusim.jobs.host.real import RealLayout, Worker, frame_breaks, run_sharing, touch_order
from gpusim.jobs.host.stats import added_summary, case_verdict, drift, median_diff_interval, overall_verdict
from gpusim.jobs.host.twin import sim_space

MiB = 1 << 20
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc and fork()")


def sharing_or_skip(layout):
    real = run_sharing(layout)
    if real["refused"]:
        pytest.skip(f"the kernel refused: {real['refused']}")
    return real


@linux
def test_pinned_pages_are_copied_and_the_rest_shared_as_simulated():
    L = RealLayout("t", 8 * MiB, vmas=2, fill=0.5, pinned=[(10, 30), (1500, 64)])
    real = sharing_or_skip(L)
    state = real["state"]
    pinned = set(range(10, 40)) | set(range(1500, 1564))
    assert {state[i] for i in pinned} == {"copied"}  # pinned (and so faulted-in) pages
    touched = [i for i in range(L.pages) if i % 2 == 0 and i not in pinned]
    assert {state[i] for i in touched} == {"shared"}
    assert {state[i] for i in range(L.pages) if i % 2 and i not in pinned} == {"absent"}
    assert predicted_sharing(L, kernel_variant()) == state  # page by page


@linux
@pytest.mark.parametrize("steps", [["parent", "child"], ["child", "parent"], ["exit", "parent"]])
def test_writes_after_fork_keep_and_copy_frames_as_simulated(steps):
    """Spec 11 on the host kernel: after a fork, the parent and the child write every page (io_uring-pinned pages
    among them); page by page, who kept its frame and who got a new one is what the simulator's write phase gives
    for this kernel's variant. With linux-6.18's rule the parent keeps every pinned frame and the first writer of a
    shared page gets the copy."""
    L = RealLayout("w", 4 * MiB, fill=0.5, pinned=[(0, 64), (700, 30)])
    real, refused = real_write_frames(L, steps)
    if refused:
        pytest.skip(f"the kernel refused: {refused}")
    assert real == predicted_write_frames(L, kernel_variant(), steps)
    pinned = list(range(64)) + list(range(700, 730))
    assert {real[i][0] for i in pinned} == {"kept"}  # the parent keeps its DMA frames whatever the order
    if steps == ["parent", "child"]:
        assert {real[i] for i in range(64, 700, 2)} == {("new", "original")}  # the parent wrote first: it copied


def test_fit_recovers_a_known_profile_from_noisy_measurements():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, size=(600, len(GROUPS))) * 1e5  # each group priced at public costs, in ns
    true = np.array([0.5, 2.0, 1.3, 0.8, 1.5, 3.0, 1.1, 0.7, 1.2])[: len(GROUPS)]
    y = X @ true * (1 + rng.normal(0, 0.03, size=600))
    s, used = fit_scales(X, y, prior=1e-3)
    assert used.all() and np.allclose(s, true, rtol=0.1)
    y_out = y.copy()
    y_out[:10] *= 4  # ten wild measurements
    robust, _ = fit_scales(X, y_out, prior=1e-3)
    plain, _ = fit_scales(X, y_out, prior=1e-3, huber=None)
    assert np.allclose(robust, true, rtol=0.15)
    assert np.abs(robust / true - 1).mean() < np.abs(plain / true - 1).mean()
    X0 = X.copy()
    X0[:, 2] = 0  # a group no row exercises keeps its public cost
    s, used = fit_scales(X0, X0 @ true)
    assert not used[2] and s[2] == 1.0 and (s >= 0).all()


def test_kernel_variant():
    assert kernel_variant("6.18.44-fc") == "linux-6.18" and kernel_variant("5.15.0-91-generic") == "linux-5.10"
    assert kernel_variant("5.8.0") == "linux-5.8" and kernel_variant("4.19.0") == "linux-5.8"


def test_bootstrap_interval_covers_the_true_difference():
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(100):
        x = 5e6 + rng.normal(0, 3e5, size=15)
        base = 5e5 + rng.normal(0, 5e4, size=15)
        lo, hi = median_diff_interval(x, base, seed=trial, resamples=500)
        hits += lo <= 4.5e6 <= hi
    assert 85 <= hits <= 100  # a 95 % interval, on 15 samples each
    s = added_summary([10.0, 11.0, 12.0, 13.0, 14.0], [1.0, 1.0, 2.0, 2.0, 2.0])
    assert s["added_ns"] == 10.0 and s["interval_ns"][0] <= 10.0 <= s["interval_ns"][1] and s["spread"] > 0
    assert drift([1, 1, 1, 2, 2, 2]) == 1.0 and drift([3]) == 0.0


def test_verdicts():
    assert case_verdict(105, 100, (95, 105)) == "pass"  # the whole error interval within 20 %
    assert case_verdict(150, 100, (95, 105)) == "fail"  # wholly outside
    assert case_verdict(118, 100, (97, 103)) == "pass"  # straddles 20 %, narrow: the point decides
    assert case_verdict(125, 100, (97, 103)) == "fail"
    assert case_verdict(118, 100, (70, 140)) == "too noisy"  # straddles and wide
    assert case_verdict(100, 100, (-5, 200)) == "too noisy"
    assert overall_verdict(["pass", "pass"], 0.05) == "pass"
    assert overall_verdict(["pass", "too noisy"], 0.05) == "too noisy"
    assert overall_verdict(["pass", "fail", "too noisy"], 0.05) == "fail"
    assert overall_verdict(["pass", "pass"], 0.15) == "fail"  # median above 10 %
    assert overall_verdict([], None) == "too noisy"


def test_state_checks_catch_a_state_that_is_not_the_modelled_one():
    L = RealLayout("t", 8 * MiB, fill=0.5, pinned=[(1, 64)])  # 1024 touched, 64 pinned (32 of them touched too)
    exp = expected_wp_faults(L, 0)
    assert exp == 1024 - 32
    good = {"pinned_faults": [0, 1], "redirty_faults": [exp, exp + 2], "check_faults": [0, 0]}
    c = state_checks(L, 0, good)
    assert c["fresh"] and c["repeated"]
    assert not state_checks(L, 0, dict(good, check_faults=[0, 3]))["fresh"]  # a page left write-protected
    assert not state_checks(L, 0, dict(good, pinned_faults=[0, 64]))["fresh"]  # the pins went
    assert not state_checks(L, 0, dict(good, redirty_faults=[exp, exp - 10]))["repeated"]  # pages written between
    assert memory_groups([RealLayout("a", 6 * MiB), RealLayout("b", 6 * MiB), RealLayout("c", 1 * MiB)], 8 * MiB) == [
        [0],
        [1, 2],
    ]


@linux
def test_the_state_before_every_timed_fork_is_the_modelled_one():
    """Pages writable (so anon-exclusive) before each fresh fork, pins in place, and the repeated fork after it
    finds every unpinned touched page write-protected; a THP VMA beside (one fault per huge page)."""
    L = RealLayout("t", 12 * MiB, vmas=3, fill=[1.0, 0.25, 1.0], thp=[False, False, True], pinned=[(10, 40)])
    w = Worker(L, default_cpu())
    try:
        if w.info["refused"]:
            pytest.skip(f"the kernel refused: {w.info['refused']}")
        w.visits(1)  # the first fork of the process
        got = w.visits(3)
    finally:
        w.close()
    assert got["check_faults"] == [0, 0, 0]
    assert max(got["pinned_faults"]) < 20
    exp = expected_wp_faults(L, w.info["thp_pages"])
    assert exp > 1024 and all(exp <= f <= exp + FAULT_SLACK for f in got["redirty_faults"])
    assert all(state_checks(L, w.info["thp_pages"], got)[s] for s in ("fresh", "repeated"))
    assert all(t > 0 for t in got["fresh_ns"] + got["repeated_ns"])


@linux
def test_interleaved_measurement_and_its_summary():
    m = measure([RealLayout("dense-16MiB", 16 * MiB), RealLayout("empty", 16 * MiB, fill=0)], rounds=3)
    dense, empty = m["layouts"]
    for state in ("fresh", "repeated"):
        s = dense[state]
        assert s["n"] == len(dense["samples"][f"{state}_ns"]) >= 3
        assert s["q1_ns"] <= s["median_ns"] <= s["q3_ns"] and s["interval_ns"][0] <= s["interval_ns"][1]
    assert dense["checks"]["fresh"] and dense["checks"]["repeated"] and dense["checks"]["expected_wp_faults"] == 4096
    assert empty["checks"]["expected_wp_faults"] == 0
    assert m["stability"]["groups"] == 1 and len(m["stability"]["bare_fresh_ns"]) == 3


def test_a_measuring_process_that_dies_is_an_error_and_none_is_left(monkeypatch):
    w = Worker(RealLayout("bare", 0), None, timeout=30)
    w.proc.kill()
    with pytest.raises(RuntimeError, match="measuring bare failed"):
        w.visits(1)
    assert w.proc.poll() is not None


@linux
def test_calibrate_quick_writes_a_profile_that_becomes_the_default(tmp_path):
    """A quick calibration (run beside the suite when the whole suite runs: tests/background.py) writes a host
    profile into its directory, and that profile becomes the default there."""
    env = dict(os.environ, **background.CALIBRATION_ENV)
    r = background.result("calibrate", background.CALIBRATION_ARGV, background.CALIBRATION_ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "fresh" in r.stdout and "repeated" in r.stdout and "machine: " in r.stdout
    files = list(pathlib.Path(background.CALIBRATION_DIR).glob("host-*.yaml"))
    assert len(files) == 1
    prof = gpusim.load_profile(str(files[0]))
    assert prof.fit["residuals"] and prof.measurements and prof.costs["pte.share"].kind == "derived"
    assert {r["state"] for r in prof.fit["residuals"]} == {"fresh", "repeated"}
    assert all(m["checks"]["fresh"] for m in prof.measurements if not m["refused"])
    # the write phase's costs measured here (fault counts checked), the others labelled as the public profile's
    assert "write costs (8192 pages" in r.stdout and set(prof.write_costs) == set(gpusim.engines.writes.WRITE_EVENTS)
    w = prof.fit["writes"]
    if w["checked"]:
        assert prof.write_costs["copy"].kind == "measured" and prof.write_costs["copy"].ns == w["copy_ns"]
        assert w["copy_ns"] > w["reuse_ns"] > w["none_ns"] > 0  # a copy costs more than a reuse, a fault than none
    assert "not measured here" in prof.write_costs["segv"].basis
    assert prof.band is not None and prof.band.low <= 0 <= prof.band.high and "dense-1024MiB" in prof.band.basis
    assert "band: " in r.stdout
    # fork.base: the smallest measuring process's fork less the model's price of its own captured address space
    base = prof.fit["base"]
    assert "fork.base " in r.stdout and base["from"] in ("probe", "bare") and base["own"]["vmas"] > 0
    assert prof.costs["fork.base"].ns == pytest.approx(max(0.0, base["measured_ns"] - base["modelled_own_ns"]), abs=0.1)
    assert set(prof.warm_factors) <= {e for g in WARM_GROUPS for e in GROUPS[g]}
    out = subprocess.run(
        [sys.executable, "-m", "gpusim.cli", "fork", "--scenario", "A", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert json.loads(out)["profile"] == prof.name
    env["GPUSIM_PROFILE_DIR"] = str(tmp_path / "empty")
    out = subprocess.run(
        [sys.executable, "-m", "gpusim.cli", "fork", "--scenario", "A", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert json.loads(out)["profile"] == "public-xeon-4210r-v6.8"


@linux
def test_validate_reports_sharing_and_latency_with_intervals_and_verdicts():
    fit_set = [
        RealLayout("dense-32MiB", 32 * MiB),
        RealLayout("dense-96MiB", 96 * MiB),
        RealLayout("sparse-256MiB-1/64", 256 * MiB, fill=1 / 64),
        RealLayout("vmas-256x16KiB", 256 * 16 * 1024, vmas=256),
    ]
    held_out = [RealLayout("dense-64MiB", 64 * MiB), RealLayout("sparse-128MiB-1/8", 128 * MiB, fill=1 / 8)]
    rep = validate("public-xeon-4210r-v6.8", rounds=3, fit_set=fit_set, held_out=held_out, process_entries=20_000)
    assert rep["variant"] == kernel_variant()
    if rep["sharing"]["pages"]:
        assert rep["sharing"]["agreement"] == 1.0
    if rep["writes"]["pages"]:  # the write phase, page by page, in three orders
        assert rep["writes"]["agreement"] == 1.0 and len(rep["writes"]["orders"]) == 3
    passes = rep["writes"]["latency"]["passes"]  # and its latency, per pass, measured against modelled
    assert [p["pass"] for p in passes] == ["copy", "none", "reuse"]
    assert all(p["measured_ns"] > 0 and p["predicted_ns"] > 0 for p in passes)
    cases = rep["latency"]["cases"]
    want = {(L.name, s) for L in held_out for s in ("fresh", "repeated")} | {("python-dict-20000", "fresh")}
    assert {(c["name"], c["state"]) for c in cases} == want  # the captured process among them
    assert next(c for c in cases if c["name"] == "python-dict-20000")["first_touch"] == "captured"
    for c in cases:
        lo, hi = c["interval_ns"]
        assert lo <= hi and c["verdict"] in ("pass", "fail", "too noisy") and c["predicted_ns"] > 0
    assert rep["latency"]["verdict"] in ("pass", "fail", "too noisy") and rep["verdict"] in (
        "pass",
        "fail",
        "too noisy",
    )
    assert rep["latency"]["median_abs_error"] is not None and rep["latency"]["fit"]["layouts"] == [
        L.name for L in fit_set
    ]
    assert rep["stored_profile"]["profile"] == "public-xeon-4210r-v6.8" and len(rep["stored_profile"]["cases"]) == 5
    json.dumps(rep)  # what --json prints


CHILD = r"""
import mmap, ctypes, sys, time
PAGE = 4096
b = mmap.mmap(-1, 8 * 1024 * 1024, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
b.madvise(mmap.MADV_NOHUGEPAGE)
for i in range(0, 2048, 5):
    b[i * PAGE] = 1
print(hex(ctypes.addressof(ctypes.c_char.from_buffer(b))), flush=True)
time.sleep(120)
"""


@linux
def test_capture_reproduces_a_known_layout(tmp_path):
    from gpusim.inputs.snapshot import snapshot_space
    from gpusim.jobs.host.capture import capture, write_snapshot

    p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        base = int(p.stdout.readline(), 16) // 4096
        table = capture(p.pid)
    finally:
        p.kill()
        p.wait()
    path = tmp_path / "s.arrow"
    write_snapshot(table, path)
    vmas = json.loads(table.schema.metadata[b"gpusim.vmas"])
    mine = [v for v in vmas if v["start"] <= base < v["end"]]
    assert len(mine) == 1 and mine[0]["end"] - base >= 2048 and mine[0]["backing"] == "anon"
    addr = table.column("addr").to_numpy()
    pages = addr[(addr >= base) & (addr < base + 2048)] - base
    assert list(pages) == list(range(0, 2048, 5))
    space = snapshot_space(str(path), "linux-6.18", [(base, base + 100)])
    pinned = np.flatnonzero(space.memory.folio_true_pins)
    assert len(pinned) == 20  # pages 0, 5, ..., 95
    r = gpusim.fork(space, "linux-6.18", backend="cpu")
    assert r.outcome == "ok" and r.invariants.ok and r.counts["copy.alloc"] == 20
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpusim.cli",
            "fork",
            "--snapshot",
            str(path),
            "--pin",
            f"{hex(base * 4096)}-{hex((base + 100) * 4096)}",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out)["counts"]["copy.alloc"] == 20


def test_capture_of_a_missing_process_is_a_clear_error():
    r = subprocess.run([sys.executable, "-m", "gpusim.cli", "capture", "999999999"], capture_output=True, text=True)
    assert r.returncode == 2 and "no process 999999999" in r.stderr and "Traceback" not in r.stderr


def test_first_touch_orders():
    """The measuring process's first-touch orders: each a permutation of the touched pages, seeded; runs of K keep
    their pages together in address order; anything else is refused when the layout is made."""
    n = 1000
    assert touch_order("address", n) == list(range(n))
    shuffled = touch_order("random", n, seed=3)
    assert sorted(shuffled) == list(range(n)) and shuffled != list(range(n)) and shuffled == touch_order("random", n, 3)
    runs = touch_order("runs:64", 1024, seed=3)  # 16 whole runs
    assert sorted(runs) == list(range(1024))
    starts = [runs[i] for i in range(0, 1024, 64)]
    assert all(s % 64 == 0 for s in starts) and starts != sorted(starts)
    assert all(runs[i + 1] == runs[i] + 1 for i in range(1023) if (i + 1) % 64)
    assert sorted(touch_order("runs:64", n, seed=3)) == list(range(n))  # a last, shorter run
    for bad in ("shuffled", "runs:0", "runs:x", "runs:"):
        with pytest.raises(ValueError, match="address, random or runs:K"):
            RealLayout("bad", 1 << 20, first_touch=bad)


def test_frame_breaks():
    assert frame_breaks([5, 6, 7, None, 8]) == 1 / 4  # absent pages are passed over
    assert frame_breaks([9, 3, 4, 1]) == 3 / 4
    assert frame_breaks([0, 0, 0]) is None and frame_breaks([None]) is None  # unreadable without root


@linux
@pytest.mark.parametrize("first_touch", ["random", "runs:16", "address"])
def test_the_twin_takes_the_measuring_process_frames(first_touch):
    """The measuring process reports its pages' frames (root only); the twin built with them counts the frame
    breaks the real frames make, table by table, whatever order the pages were first touched in."""
    L = RealLayout("frames-8MiB", 8 * MiB, fill=0.5, first_touch=first_touch, seed=1)
    w = Worker(L)
    try:
        frames = w.info["frames"]
    finally:
        w.close()
    if frames is None:
        pytest.skip("frame numbers are not readable here (pagemap shows them to root only)")
    assert len(frames) == L.pages and sum(f is not None for f in frames) == sum(L.touched())
    want = 0
    for t in range(0, L.pages, 512):  # the twin's tables: one call each
        present = [f for f in frames[t : t + 512] if f is not None]
        brk = [False] + [abs(b - a - 1) >= 8 for a, b in zip(present, present[1:])]  # FRAME_NEAR
        want += sum(x or y for x, y in zip(brk, [False] + brk[:-1]))  # a break, or the page right after one
    space, _ = sim_space(L, kernel_variant(), frames=frames)
    got = gpusim.fork(space, kernel_variant(), backend="cpu").counts["pte.frame_break"]
    assert got == want
    if first_touch == "random":
        assert want > 0.9 * sum(L.touched())
    assert gpusim.fork(sim_space(L, kernel_variant())[0], kernel_variant()).counts["pte.frame_break"] == 0


def test_the_band_check_counts_the_cases_inside_and_records_the_drift_it_saw(tmp_path, monkeypatch):
    from gpusim.analysis.costmodel import PROFILE_DIR
    from gpusim.jobs.host.calibrate import band_check

    monkeypatch.setenv("GPUSIM_PROFILE_DIR", str(tmp_path))
    data = gpusim.load_profile("public-xeon-4210r-v6.8").model_dump(mode="json")
    data.update(name="host-test", band={"low": -0.1, "high": 0.1, "basis": "calibration window: test"})
    path = tmp_path / "host-test.yaml"
    path.write_text("# a header\n" + yaml.safe_dump(data))
    stored = gpusim.load_profile("host-test")
    # predicted / measured - 1: the machine now runs 20 % slower than the profile says in two cases of three
    cases = [{"error": e} for e in (-1 / 6, -1 / 6, 0.0)]
    bc = band_check(stored, cases, record=False)
    assert bc["inside"] == 1 and bc["cases"] == 3 and bc["median_error"] == pytest.approx(-1 / 6)
    assert bc["widened"] == [pytest.approx(-0.1), pytest.approx(0.3)] and bc["recorded"] is None
    assert gpusim.load_profile("host-test").band.high == 0.1  # not recorded
    bc = band_check(stored, cases, record=True)
    again = gpusim.load_profile("host-test")
    assert bc["recorded"] == str(path) and again.band.high == pytest.approx(0.3) and again.band.low == -0.1
    assert again.band.checks[0]["inside"] == 1 and path.read_text().startswith("# a header\n")
    elsewhere = tmp_path / "other" / "mine.yaml"  # a profile named by its path, outside the profile directory
    elsewhere.parent.mkdir()
    elsewhere.write_text(yaml.safe_dump(dict(data, name="host-elsewhere")))
    mine = gpusim.load_profile(str(elsewhere))
    assert band_check(mine, cases, record=False)["recorded"] is None  # found by name nowhere: no lookup, no error
    assert band_check(mine, cases, record=True, path=elsewhere)["recorded"] == str(elsewhere)
    public = gpusim.load_profile("public-xeon-4210r-v6.8")
    assert band_check(public, cases, record=True)["band"] is None  # no band, and a shipped file is never written
    assert not any(p.stat().st_mtime > path.stat().st_mtime for p in PROFILE_DIR.glob("*.yaml"))


def test_each_state_fits_its_own_scale_for_the_per_vma_table_and_huge_pmd_work():
    """A fresh fork from cold pays more per VMA, table and huge PMD than the fork right after it: the fit takes a
    scale per state for those groups (``state_row``) and the profile keeps their ratio (``warm_factors``)."""
    rng = np.random.default_rng(1)
    cold = rng.uniform(0.5, 2.0, len(GROUPS))
    warm = cold.copy()
    idx = [list(GROUPS).index(g) for g in WARM_GROUPS]
    warm[idx] *= 0.6
    rows, y = [], []
    for i in range(400):
        state = ("fresh", "repeated")[i % 2]
        r = rng.uniform(0, 1, len(GROUPS)) * 1e5
        rows.append(state_row(r, state))
        y.append(r @ (cold if state == "fresh" else warm))
    s, used = fit_scales(np.array(rows), np.array(y), prior=1e-4)
    assert np.allclose(s[: len(GROUPS)], cold, rtol=0.01) and used.all()
    f = warm_factors(s, used)
    assert set(f) == {e for g in WARM_GROUPS for e in GROUPS[g]}
    assert all(abs(v - 0.6) < 0.01 for v in f.values())


@linux
def test_the_whole_measuring_process_is_restored_and_captured():
    """The interpreter's own pages are re-dirtied before each fresh fork too (their check pass takes no more than
    the interpreter's own few faults); a restore forks nothing; the capture of the process then holds those pages,
    and fork.base is what is left of its fork once the model has priced them."""
    w = Worker(RealLayout("bare", 0), default_cpu(), evict_bytes=1 << 20)
    try:
        got = w.visits(2)
        assert min(got["own_pages"]) > 100 and max(got["own_check_faults"]) <= FAULT_SLACK
        restored = w.restore()
        assert "fresh_ns" not in restored and restored["own_check_faults"] <= FAULT_SLACK
        snap = capture(w.info["pid"])
        nvmas = len(read_maps(w.info["pid"]))
    finally:
        w.close()
    variant = kernel_variant()
    counts = own_counts(snap, variant)
    assert counts["vma.dup"] + counts["vma.skip"] >= nvmas - 5 and counts["pte.share"] >= 0.9 * restored["own_pages"]
    public = gpusim.load_profile("public-xeon-4210r-v6.8")
    costs = {e: {"ns": c.ns, "kind": c.kind, "basis": c.basis} for e, c in public.costs.items()}
    own = sum(n * costs[e]["ns"] for e, n in counts.items() if e in costs and e != "fork.base")
    meas = {"stability": {"bare_fresh_ns": (0, 2 * own, 0)}, "bare": {"snapshot": snap, "fresh_ns": [2 * own] * 3}}
    with_base, account = with_fork_base(costs, meas, variant)
    assert account["from"] == "bare" and abs(with_base["fork.base"]["ns"] - own) < 1
    assert account["own"]["anon_pages"] > 100 and account["modelled_own_ns"] == pytest.approx(own)
    meas = {"stability": {"bare_fresh_ns": (0, 300_000, 0)}}  # no capture: the whole fork, labelled so
    with_base, account = with_fork_base(costs, meas, variant)
    assert with_base["fork.base"]["ns"] == 300_000 - costs["fork.mm"]["ns"] and account["own"] is None
    assert "its own pages are inside" in with_base["fork.base"]["basis"]


@linux
def test_the_c_probe_forks_with_almost_nothing_of_its_own():
    try:
        p = Probe(default_cpu(), evict_bytes=1 << 20)
    except NoBinary as e:
        pytest.skip(f"no C probe here: {e}")
    try:
        got = p.visits(3)
        assert len(got["fresh_ns"]) == 3 and min(got["fresh_ns"] + got["repeated_ns"]) > 0
        assert max(got["own_check_faults"]) <= FAULT_SLACK and p.restore()["own_pages"] > 0
        snap = capture(p.info["pid"])
        p.proc.kill()
        with pytest.raises(RuntimeError, match="the C fork probe failed"):
            p.visits(1)
        assert p.proc.poll() is not None
    finally:
        p.close()
    anon = snap.column("anon").to_numpy(zero_copy_only=False) & snap.column("present").to_numpy(zero_copy_only=False)
    assert 0 < anon.sum() < 200  # a C program's data, heap and stack: a few dozen pages, not an interpreter's
    # holding a layout: its state restored and checked as a measuring interpreter's is
    L = RealLayout("held", 8 * MiB, vmas=4, fill=0.5, gaps=False)
    p = Probe(default_cpu(), layout=L)
    try:
        p.visits(1)  # the first fork of the process
        got = p.visits(3)
        held = capture(p.info["pid"])
    finally:
        p.close()
    checks = state_checks(L, p.info["thp_pages"], got)
    assert checks["fresh"] and checks["repeated"] and checks["expected_wp_faults"] == 1024
    present = held.column("present").to_numpy(zero_copy_only=False)
    assert present.sum() >= anon.sum() + 1024
    with pytest.raises(ValueError, match="C probe holds"):
        Probe(default_cpu(), layout=RealLayout("pinned", 4 * MiB, pinned=[(0, 4)]))


@linux
def test_packed_vmas_stay_apart_and_a_vma_never_written_has_no_anon_vma():
    """Packed VMAs (no gap) are told apart by their flags: the kernel keeps each one, and the twin places them one
    after the other; a VMA with no page has no anon_vma, in the kernel (its fork skips it) and in the twin."""
    L = RealLayout("packed", 8 * 16 * 4096, vmas=8, fill=[1.0, 0, 1.0, 0, 1.0, 0, 1.0, 0], gaps=False)
    w = Worker(L, default_cpu())
    try:
        maps = read_maps(w.info["pid"])
    finally:
        w.close()
    sizes = [v["end"] - v["start"] for v in maps if v["backing"] == "anon"]
    assert sizes.count(16) >= 8  # eight VMAs of 16 pages, none merged
    space, b2a = sim_space(L, kernel_variant())
    assert b2a.tolist() == list(range(L.pages))  # packed: no gap
    counts = api.fork(space, kernel_variant(), backend="cpu").counts
    assert counts["vma.dup"] == 8 and counts["vma.anon_fork"] == counts["vma.copy"] == 4  # the unwritten: dup only
    with pytest.raises(ValueError, match="no THP"):
        RealLayout("bad", 4 * 2 * MiB, vmas=2, gaps=False, thp=True)


@linux
def test_small_forks_are_predicted_whole_from_their_captures(monkeypatch):
    """validate --small-forks's machinery on small sizes: every held-out process (and the bare interpreter, and
    the C probe where it is built) measured and predicted from its capture, fork.base included, absolute and
    relative to the reference (the last layout)."""
    from inproc import run_cli

    from gpusim.jobs.host import small
    from gpusim.jobs.host.small import validate_small_forks

    fit_set = [
        RealLayout("dense-32MiB", 32 * MiB),
        RealLayout("vmas-256x16KiB", 256 * 16 * 1024, vmas=256),
        RealLayout("vmas-256x16KiB-untouched", 256 * 16 * 1024, vmas=256, fill=0),
    ]
    held = [RealLayout("vmas-300x16KiB-packed", 300 * 16 * 1024, vmas=300, gaps=False), RealLayout("ref", 24 * MiB)]
    rep = validate_small_forks(3, profile="public-xeon-4210r-v6.8", layouts=held, fit_set=fit_set)
    names = [c["name"] for c in rep["cases"]]
    assert names[:2] == ["vmas-300x16KiB-packed", "ref"] and "(bare)" in names
    assert ("(probe)" in names) == (rep["probe_refused"] is None) and rep["reference"] == "ref"
    assert {c["holder"] for c in rep["cases"][:2]} == {"python" if rep["probe_refused"] else "c"}
    ref = rep["cases"][1]
    assert ref["relative_error"] == pytest.approx(0.0)
    for c in rep["cases"]:
        assert c["measured_ns"] > 0 and c["predicted_ns"] >= rep["base"]["ns"] and c["n"] >= 3
    assert [c["name"] for c in rep["stored"]["cases"]] == names and rep["verdict"] in ("pass", "fail")
    json.dumps(rep)
    # the command prints that report: fork.base's account, a row per process, the verdict
    monkeypatch.setattr(small, "validate_small_forks", lambda *a, **k: rep)
    code, out, _ = run_cli("validate", "--small-forks", "--profile", "public-xeon-4210r-v6.8")
    assert code == 0 and out.startswith("fork.base ") and f"verdict: {rep['verdict']}" in out
    assert "vmas-300x16KiB-packed" in out and "(bare)" in out
    code, _, err = run_cli("validate", "--small-forks", "--profile", "no-such-profile")
    assert code != 0 and "unknown cost profile" in err and "Traceback" not in err


def test_a_size_term_is_said_to_beat_the_noise_only_where_it_does():
    from gpusim.jobs.host.small import size_term

    sizes = {f"dense-{s}MiB": s * MiB for s in (64, 128, 256, 512, 2048)}

    def cases(trend: float, jitter: float, level: float = 0.0):
        out = []
        for k, (name, size) in enumerate(sizes.items()):
            e = level + trend * (np.log2(size) - 30) + jitter * (-1) ** k
            out.append({"name": name, "measured_ns": 1e6, "iqr_ns": [0.99e6, 1.01e6], "error": e})
        return out

    steep = size_term(cases(-0.05, 0.002), sizes)  # 5 % per doubling: a term predicts the held-out case
    assert steep["beats_noise"] and steep["slope_per_doubling"] < -0.04
    assert steep["held_out_median_abs_error"]["with"] < steep["held_out_median_abs_error"]["without"]
    flat = size_term(cases(0.0, 0.005), sizes)  # scatter within the noise: no term
    assert not flat["beats_noise"] and abs(flat["slope_per_doubling"]) < 0.01
    level = size_term(cases(0.0, 0.003, level=0.06), sizes)  # every case 6 % high: a level, not a size effect
    assert not level["beats_noise"] and level["median_abs_error"] > 0.05
    assert size_term(cases(0.0, 0.0)[:2], sizes) is None


@linux
def test_without_a_c_compiler_interpreters_measure_alone(monkeypatch):
    """No C probe where it cannot be built: the group's processes are interpreters, the refusal is said once (and
    fork.base then comes from the bare interpreter: test_the_whole_measuring_process_is_restored_and_captured)."""
    import gpusim.jobs.host.measure as M

    def no_binary(source):
        raise NoBinary(f"{source.name}: a C compiler is needed (cc or gcc; or set CC)")

    monkeypatch.setattr(M, "c_binary", no_binary)
    extra = {}
    g = M._open_group([RealLayout("dense-1MiB", MiB)], None, 60, True, {"dense-1MiB"}, extra)
    try:
        assert g.probe is None and all(isinstance(w, Worker) for w in g.workers) and len(g.workers) == 2
    finally:
        g.close()
    assert "a C compiler is needed" in extra["probe_refused"]
    g = M._open_group([], None, 60, True, (), extra)  # not tried again
    g.close()


def test_a_snapshot_vma_has_an_anon_vma_only_where_it_holds_an_anonymous_page():
    """/proc does not show anon_vma: a VMA with an anonymous page (present or swapped) has one; a reservation never
    written, or a private file mapping only read, has none, and the fork skips its page tables (vma.dup only)."""
    import pyarrow as pa

    from gpusim.inputs.snapshot import snapshot_space

    vmas = [
        {"start": 0, "end": 16, "perms": "rw-p", "path": "", "backing": "anon"},  # two present anonymous pages
        {"start": 512, "end": 528, "perms": "---p", "path": "", "backing": "anon"},  # a reservation, nothing in it
        {"start": 1024, "end": 1040, "perms": "r--p", "path": "/lib/x.so", "backing": "file"},  # file pages, read
        {"start": 1536, "end": 1552, "perms": "rw-p", "path": "", "backing": "anon"},  # one page, swapped out
    ]
    rows = [
        (0, 0, True, True),
        (1, 0, True, True),
        (1024, 2, True, False),
        (1025, 2, True, False),
        (1536, 3, False, True),
    ]
    t = pa.table(
        {
            "addr": [r[0] for r in rows],
            "vma": pa.array([r[1] for r in rows], pa.int32()),
            "present": [r[2] for r in rows],
            "swapped": [not r[2] for r in rows],
            "pfn": [0] * len(rows),
            "mapcount": [1] * len(rows),
            "anon": [r[3] for r in rows],
            "thp": [False] * len(rows),
            "exclusive": [True] * len(rows),
        }
    ).replace_schema_metadata({"gpusim.vmas": json.dumps(vmas), "gpusim.capture": "{}"})
    space = snapshot_space(t, kernel_variant())
    assert space.mm.vma_anon_vma.tolist() == [True, False, False, True]
    counts = api.fork(space, kernel_variant(), backend="cpu").counts
    assert counts["vma.dup"] == 4 and counts["vma.copy"] == 2 and counts["vma.file_link"] == 1


@linux
def test_a_layout_a_c_probe_holds_is_measured_over_the_bare_probe():
    """Held by a C probe, a layout's added time is over the bare probe's fork (the same program, nothing else),
    not over the bare interpreter's; its frames are read from outside for the twin, its state checked as ever."""
    m = measure([RealLayout("dense-16MiB", 16 * MiB)], 3, probe=True, c_held={"dense-16MiB"})
    if m.get("probe_refused"):
        pytest.skip(f"no C probe here: {m['probe_refused']}")
    r = m["layouts"][0]
    assert r["holder"] == "c" and r["checks"]["fresh"] and r["checks"]["repeated"]
    assert r["fresh"]["base_median_ns"] == pytest.approx(float(np.median(m["probe"]["fresh_ns"])))
    assert r["fresh"]["base_median_ns"] < m["stability"]["bare_fresh_ns"][1]  # the probe forks faster than the bare
    if r["frames"] is not None:  # root: the twin takes the probe's frames
        assert sum(f is not None for f in r["frames"]) == 4096


def test_a_measurement_without_a_finite_spread_is_written_as_none_and_the_profile_loads(tmp_path):
    """A layout whose added time is not above zero (a loaded machine, two rounds) has an infinite spread: the
    profile writes it as null, and loads back (a profile holds finite numbers only)."""
    from gpusim.jobs.host.calibrate import _plain

    assert _plain({"a": float("inf"), "b": np.float64("nan"), "c": (1.5, np.int64(2))}) == {
        "a": None,
        "b": None,
        "c": [1.5, 2],
    }
    data = gpusim.load_profile("public-xeon-4210r-v6.8").model_dump(mode="json")
    data.update(name="host-inf", measurements=_plain([{"name": "x", "fresh": {"spread": float("inf")}}]))
    path = tmp_path / "host-inf.yaml"
    path.write_text(yaml.safe_dump(data))
    assert gpusim.load_profile(str(path)).measurements[0]["fresh"]["spread"] is None
