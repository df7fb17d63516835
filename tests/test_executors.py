"""Executors: a local pool and a real Ray cluster (head on loopback) give the rows the in-process run gives; failures
are recorded; a killed Ray run resumes to exactly the full set."""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
from sweeps import kill_part_way, result_rows, run_sweep, write

import gpusim

ray = pytest.importorskip("ray", reason="the ray extra is not installed")  # CI installs it with the test extra

SWEEP = """\
name: ex
seed: 5
repeat: 2
backend: cpu
workload:
  kind: anon
  size: 2MiB
  pinned_fraction: 0.02
fork:
  variant: linux-6.18
sweep:
  grid:
    workload.size: [1MiB, 2MiB, 4MiB]
    fork.variant: [linux-5.10, linux-6.18]
"""

FAILING = """\
name: f
backend: cpu
workload:
  kind: layout
  layout: normal*4
sweep:
  grid:
    workload.layout: ["normal*4", "migr:excl", "normal*8"]
    fork.variant: [linux-5.10]
"""

COMPARED = (
    "outcome",
    "digest",
    "latency_ns",
    "lock_hold_max_ns",
    "count.pass",
    "count.copy.alloc",
    "nr_ptes",
    "invariants_ok",
    "seed",
    "error",
)


def rows(path):
    return result_rows(path, COMPARED)


# The test cluster and every driver share one token (Ray's token authentication), so that a token file another
# Ray left in ~/.ray cannot get in the way.
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex, "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def cluster():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, **RAY_ENV)
    start = subprocess.run(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert start.returncode == 0, start.stderr[-3000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True, env=env, timeout=120
        )


@pytest.fixture(scope="module")
def inline_rows(tmp_path_factory):
    d = tmp_path_factory.mktemp("inline")
    f = write(d, SWEEP)
    r = run_sweep(f, "--out", d / "out", "--workers", "1", env=RAY_ENV)
    assert r.returncode == 0, r.stderr
    return f, rows(d / "out")


def test_local_pool_equals_inline(inline_rows, tmp_path):
    f, want = inline_rows
    r = run_sweep(f, "--out", tmp_path / "out", "--executor", "local", "--workers", "2", env=RAY_ENV)
    assert r.returncode == 0, r.stderr
    assert rows(tmp_path / "out") == want and len(want) == 12


def test_ray_records_a_failing_point_and_finishes_the_others(cluster, tmp_path):
    f = write(tmp_path, FAILING, "f.yaml")
    r = run_sweep(f, "--out", tmp_path / "out", "--executor", "ray", "--address", cluster, env=RAY_ENV)
    assert r.returncode == 1 and "1 point repetition(s) failed" in r.stderr, r.stderr[-3000:]
    t = gpusim.load_results(tmp_path / "out")
    outs = dict(zip(t.column("workload.layout").to_pylist(), t.column("outcome").to_pylist()))
    assert outs == {"normal*4": "ok", "migr:excl": "error", "normal*8": "ok"}


def test_ray_killed_and_resumed_gives_exactly_the_full_set(cluster, inline_rows, tmp_path):
    """A sweep on Ray killed part way, then run again there: the rows of the inline run, each once (Ray's rows
    equal the local ones)."""
    f, want = inline_rows
    out = tmp_path / "out"
    done = kill_part_way(
        [f, "--out", out, "--executor", "ray", "--address", cluster, "--workers", "1"],
        out / "_manifest.jsonl",
        3,
        300,
        env=RAY_ENV,
    )
    assert 3 <= done < 12
    r = run_sweep(f, "--out", out, "--executor", "ray", "--address", cluster, env=RAY_ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "on ray" in r.stderr
    assert rows(out) == want


def test_unknown_executor_is_a_clear_error(tmp_path):
    f = write(tmp_path, SWEEP)
    r = run_sweep(f, "--out", tmp_path / "o", "--executor", "spark", env=RAY_ENV)
    assert r.returncode == 2 and "unknown executor 'spark'" in r.stderr and "Traceback" not in r.stderr


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
        except OSError:  # gone meanwhile
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc for the worker processes")
def test_a_killed_local_sweep_leaves_no_worker_behind(tmp_path):
    f = write(tmp_path, SWEEP.replace("repeat: 2", "repeat: 20"))
    manifest = tmp_path / "out" / "_manifest.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpusim.cli", "sweep", str(f), "--out", str(tmp_path / "out"), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (manifest.exists() and manifest.read_text()):
        time.sleep(0.01)
    workers = [c for c in _children(proc.pid) if "multiprocessing" in open(f"/proc/{c}/cmdline").read()]
    assert proc.poll() is None and workers, "the sweep finished (or started no worker) before it could be killed"
    proc.kill()
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "worker processes outlived the killed sweep"


DRIVER = """
import sys

sys.path.insert(0, {tests!r})
import gilhold
from gpusim.jobs.sweep import executors
executors.execute_task = gilhold.hold_gil_task  # the pool's workers import it by name
executors.LocalExecutor(2, "cpu").run([("a", 0), ("b", 0)], {out!r}, b"", lambda p, rec: None)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_holding_the_gil_dies_with_a_killed_driver(tmp_path):
    """A worker inside a long call that holds the GIL (its parent-watching thread cannot run) still dies within
    seconds of a SIGKILL of the driver: the kernel kills it (PR_SET_PDEATHSIG), not the watcher."""
    tests = os.path.dirname(__file__)
    proc = subprocess.Popen([sys.executable, "-c", DRIVER.format(tests=tests, out=str(tmp_path))])
    deadline = time.time() + 60
    while time.time() < deadline and len(list(tmp_path.glob("started-*"))) < 2:
        time.sleep(0.05)
    workers = [int(p.name.split("-")[1]) for p in tmp_path.glob("started-*")]
    assert proc.poll() is None and len(workers) == 2, "the workers did not start their tasks"
    time.sleep(0.5)  # inside the GIL-holding call by now
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    alive = [w for w in workers if _alive(w)]
    for w in alive:  # leave nothing behind, whatever the outcome
        os.kill(w, signal.SIGKILL)
    assert not alive, "workers holding the GIL outlived the killed driver"
