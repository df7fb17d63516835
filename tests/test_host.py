"""Ground truth from the host kernel: real forks, page sharing via pagemap, the fit, calibration, capture."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gpusim
from gpusim.host.calibrate import GROUPS, fit_scales, kernel_variant, nnls, predicted_sharing, validate
from gpusim.host.real import RealLayout, run_layout

MiB = 1 << 20
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc and fork()")


def sharing_or_skip(layout):
    real = run_layout(layout, "sharing")
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
def test_fork_timing_of_a_real_layout():
    m = run_layout(RealLayout("t", 16 * MiB), "time", repeat=3)
    assert len(m["fork_ns"]) == 3 and m["median_ns"] > 0 and m["q1_ns"] <= m["median_ns"] <= m["q3_ns"]


def test_nnls_and_fit_recover_known_costs():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, size=(400, len(GROUPS))) * 1e5  # each group priced at public costs, in ns
    true = np.array([0.5, 2.0, 1.3, 0.8, 3.0, 1.1])
    y = X @ true * (1 + rng.normal(0, 0.01, size=400))
    s, used = fit_scales(X, y, prior=1e-3)
    assert used.all() and np.allclose(s, true, rtol=0.05)
    A = rng.uniform(size=(20, 4))
    x = nnls(A, A @ np.array([1.0, 0.0, 2.0, 0.5]))
    assert np.allclose(x, [1.0, 0.0, 2.0, 0.5], atol=1e-8)
    x = nnls(A, -A @ np.ones(4))  # the unconstrained answer is negative
    assert (x >= 0).all()


def test_kernel_variant():
    assert kernel_variant("6.18.44-fc") == "linux-6.18" and kernel_variant("5.15.0-91-generic") == "linux-5.10"
    assert kernel_variant("5.8.0") == "linux-5.8" and kernel_variant("4.19.0") == "linux-5.8"


@linux
def test_calibrate_quick_writes_a_profile_that_becomes_the_default(tmp_path):
    env = dict(os.environ, GPUSIM_PROFILE_DIR=str(tmp_path))
    r = subprocess.run(
        [sys.executable, "-m", "gpusim.cli", "calibrate", "--quick", "--repeat", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    files = list(tmp_path.glob("host-*.yaml"))
    assert len(files) == 1
    prof = gpusim.load_profile(str(files[0]))
    assert prof.fit["residuals"] and prof.measurements and prof.costs["pte.share"].kind == "derived"
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
def test_validate_reports_sharing_and_latency():
    rep = validate("public-xeon-4210r-v6.8", repeat=3)
    assert rep["variant"] == kernel_variant()
    if rep["sharing"]["pages"]:
        assert rep["sharing"]["agreement"] == 1.0
    names = [c["name"] for c in rep["latency"]["cases"]]
    assert len(names) >= 5 and all(c["measured_ns"] != 0 for c in rep["latency"]["cases"])
    assert rep["latency"]["median_abs_error"] is not None


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
    from gpusim.host.capture import capture, write_snapshot
    from gpusim.snapshot import snapshot_space

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
