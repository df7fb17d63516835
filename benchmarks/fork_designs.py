"""The fork designs side by side (spec 12): the modelled parent stall of a dense anonymous fork under each variant,
the child's deferred work (async-fork), the cost of a write phase after it, and the page-table memory of parent
and child, priced with a cost profile (the public one by default; its lazy-design events are estimates, spec 12.8).

    python benchmarks/fork_designs.py [--size 1GiB] [--pin-every 0] [--writes "parent:all"] [--profile NAME]

Every figure comes from running the fork (and the writes) and pricing its event counts, on the CPU engine (``auto``:
the reference for what the fast engines leave to it). Prints one line
per variant and the ratios of the targets (issue "lazy fork designs": odf-paper and async-fork >= 20x below
linux-6.18's stall at 1 GiB, odf-cowpte within 30 %).
"""

from __future__ import annotations

import argparse
import time

import gpusim
from gpusim.analysis.costmodel import latency, load_profile, write_latency
from gpusim.base.units import parse_size
from gpusim.inputs.workloads import dense_anon
from gpusim.model.variants import VARIANTS


def run(size: int, pin_every: int, writes: str | None, profile_name: str | None) -> list[dict]:
    prof = load_profile(profile_name)
    space = dense_anon(size // 4096, pin_every=pin_every)
    rows = []
    for name in VARIANTS:
        t0 = time.perf_counter()
        r = gpusim.fork(space, name, backend="auto", writes=writes, check=False)
        wall = time.perf_counter() - t0
        stall = latency(r.counts, name, prof, r.table_stats)["latency_ns"]
        row = {"variant": name, "stall_ms": stall / 1e6, "wall_s": wall}
        row["parent_tables_kib"], row["child_tables_kib"] = (b / 1024 for b in r.page_table_bytes())
        if r.write_phase is not None:
            wl = write_latency(r.write_phase.counts, prof, r.write_phase.table_counts)
            row["writes_ms"] = wl["latency_ns"] / 1e6
            row["child_sync_ms"] = wl.get("child_sync_ns", 0.0) / 1e6
            row["dma_lost"] = r.write_phase.dma["parent_diverged"]
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--pin-every", type=int, default=0, help="pin one page in K (0: none)")
    ap.add_argument("--writes", default="child:sync; parent:all", help="a write phase after the fork ('' for none)")
    ap.add_argument("--profile", default=None)
    a = ap.parse_args()
    size = parse_size(a.size)
    rows = run(size, a.pin_every, a.writes or None, a.profile)
    keys = [k for k in rows[0] if k != "variant"]
    print(f"dense anonymous fork of {a.size}, pin every {a.pin_every or '-'}, writes '{a.writes}'")
    print(f"{'variant':<12} " + " ".join(f"{k:>16}" for k in keys))
    for r in rows:
        print(f"{r['variant']:<12} " + " ".join(f"{r.get(k, float('nan')):>16,.3f}" for k in keys))
    by = {r["variant"]: r["stall_ms"] for r in rows}
    base = by["linux-6.18"]
    for name in ("odf-paper", "async-fork"):
        print(f"stall linux-6.18 / {name}: {base / by[name]:,.1f}x (target >= 20x)")
    print(f"stall odf-cowpte / linux-6.18: {by['odf-cowpte'] / base:,.3f} (target within 1 +- 0.30)")


if __name__ == "__main__":
    main()
