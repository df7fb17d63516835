"""A real server's fork predicted from its capture (issue 26): redis-server, populated and churned, its BGSAVE fork.

Usage (root, with redis-server and redis-cli on PATH): python benchmarks/bench_redis.py [--keys 4000000]
    [--samples 5] [--profile PROFILE]

redis-server runs pinned to one CPU (its snapshot child inherits the CPU, so it cannot run before the parent reads
its clock), with no persistence of its own, and no thread that frees memory in the background (jemalloc's purging
thread, lazy FLUSHALL), which would race the fork for the mm's lock and the CPU. Each sample: ``FLUSHALL SYNC``,
``DEBUG POPULATE`` of ``--keys`` keys (100-byte values), half of them deleted and as many inserted under another
prefix (a Lua script), then the server is captured (:func:`gpusim.jobs.host.capture.capture`) and a ``BGSAVE`` timed
by redis itself (``latest_fork_usec``), the first fork after the writes, so that its pages are writable and
exclusive, the state a capture describes. The capture is forked by the simulator with ``--profile`` (default: the
newest host profile). Prints each sample's measured and predicted fork, the band and the error, and the captured
frames' breaks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

CHURN = """
local n = tonumber(ARGV[1])
for i = 0, n - 1, 2 do redis.call('DEL', 'key:' .. i) end
return 0
"""


def cli(sock: str, *args: str) -> str:
    out = subprocess.run(["redis-cli", "-s", sock, *args], capture_output=True, text=True, check=True).stdout.strip()
    if out.startswith(("ERR", "(error)")):
        raise RuntimeError(f"redis {' '.join(args[:2])}: {out}")
    return out


def info(sock: str, key: str) -> str:
    for line in cli(sock, "INFO", "all").splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(key)


def sample(sock: str, pid: int, keys: int, variant: str, profile) -> tuple[float, dict, float | None]:
    """One populated, churned server: (its BGSAVE fork in ns, the model's latency, frame breaks of present pages)."""
    from gpusim.jobs.host.process import predicted

    cli(sock, "FLUSHALL", "SYNC")  # freed now, not by a background thread that would race the fork
    cli(sock, "DEBUG", "POPULATE", str(keys), "key", "100")
    cli(sock, "EVAL", CHURN, "0", str(keys))
    cli(sock, "DEBUG", "POPULATE", str(keys // 2), "new", "100")
    lats, breaks = predicted(pid, variant, {"p": profile})
    lat = lats["p"]
    forks = int(info(sock, "total_forks"))
    cli(sock, "BGSAVE")
    while int(info(sock, "total_forks")) == forks or info(sock, "rdb_bgsave_in_progress") != "0":
        time.sleep(0.05)
    return int(info(sock, "latest_fork_usec")) * 1000.0, lat, breaks


def main() -> None:
    from gpusim.analysis.costmodel import load_profile
    from gpusim.jobs.host.calibrate import kernel_variant
    from gpusim.jobs.host.measure import default_cpu

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=4_000_000)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--unpinned", action="store_true", help="let the server (and its child) run on any CPU")
    args = ap.parse_args()
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        sys.exit("redis-server and redis-cli are not installed here")
    profile, variant, cpu = load_profile(args.profile), kernel_variant(), default_cpu() or 0
    d = tempfile.mkdtemp(prefix="gpusim-redis-")
    sock = os.path.join(d, "redis.sock")
    conf = os.path.join(d, "redis.conf")
    with open(conf, "w") as f:  # DEBUG POPULATE needs the option in a configuration file
        f.write(f'port 0\nunixsocket {sock}\nsave ""\nappendonly no\ndir {d}\nenable-debug-command yes\n')
    pin = [] if args.unpinned else ["taskset", "-c", str(cpu)]
    server = subprocess.Popen([*pin, "redis-server", conf], stdout=subprocess.DEVNULL)
    try:
        while not os.path.exists(sock):
            time.sleep(0.05)
        where = "any CPU" if args.unpinned else f"CPU {cpu}"
        print(f"profile {profile.name}; variant {variant}; redis-server on {where}; {args.keys} keys churned")
        for i in range(args.samples):
            real, lat, breaks = sample(sock, server.pid, args.keys, variant, profile)
            band = (
                "no band"
                if lat["latency_low_ns"] is None
                else (f"band {lat['latency_low_ns'] / 1e6:.2f}-{lat['latency_high_ns'] / 1e6:.2f}")
            )
            fb = "unreadable" if breaks is None else f"{breaks:.3f}"
            print(
                f"sample {i}: BGSAVE fork {real / 1e6:7.2f} ms; predicted {lat['latency_ns'] / 1e6:7.2f} ms "
                f"({band}); error {lat['latency_ns'] / real - 1:+.1%}; frame breaks {fb}"
            )
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
