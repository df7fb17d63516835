"""Helpers shared by the sweep and executor tests: write a sweep file, run ``gpusim sweep`` as a user does, kill a
run part-way, and read a results directory back as rows keyed by (config hash, repetition, fork)."""

import os
import signal
import subprocess
import sys
import time

from inproc import gpusim as gpusim_cli

import gpusim


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def sweep_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "gpusim.cli", "sweep", *map(str, args)]


def run_sweep(*args, env=None, timeout=600):
    """``gpusim sweep ARGS`` (stdout and stderr captured as text): in this process (:mod:`inproc`), or with ``env``
    (variables the command must see from its start) in a subprocess."""
    if env is None:
        return gpusim_cli("sweep", *args)
    return subprocess.run(
        sweep_cmd(*args), capture_output=True, text=True, timeout=timeout, env=dict(os.environ, **(env or {}))
    )


def kill_part_way(args: list, manifest, at_least: int, timeout: float, env=None) -> int:
    """Start ``gpusim sweep ARGS``, SIGKILL it once ``manifest`` lists ``at_least`` finished tasks; returns how many
    it lists then. Fails if the sweep finished first."""
    proc = subprocess.Popen(
        sweep_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, **(env or {}))
    )
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and len(manifest.read_text().splitlines()) >= at_least:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(manifest.read_text().splitlines())


def result_rows(path, columns=("digest",)) -> dict:
    """{(config_hash, repetition, fork_index): values of ``columns``} of a results directory; no key twice."""
    t = gpusim.load_results(path)
    keys = list(
        zip(t.column("config_hash").to_pylist(), t.column("repetition").to_pylist(), t.column("fork_index").to_pylist())
    )
    assert len(keys) == len(set(keys)), "duplicated rows"
    vals = [tuple(t.column(c).to_pylist()[i] for c in columns) for i in range(t.num_rows)]
    return dict(zip(keys, vals))
