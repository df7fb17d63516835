"""The scenario catalogue of spec sections 7.2 and 10 (A ... M-b), as runnable definitions.

Each scenario is a layout, an oracle and injections; ``gpusim fork --scenario ID`` and ``gpusim scenarios`` run
them. The expected figures of spec 7.3 live in the tests, not here: what the CLI prints is what the engine computed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    id: str
    layout: str
    oracle: str = "never"
    inject: tuple[str, ...] = ()
    purpose: str = ""


SCENARIOS: dict[str, Scenario] = {
    s.id: s
    for s in (
        Scenario("A", "pinned none*31 normal*480", "always", (), "Oleg's leak of BREAK_COW"),
        Scenario("A'", "pinned none*31 normal*480", "never", (), "control for A"),
        Scenario("B", "normal*510 pinned none", purpose="end-of-range variant"),
        Scenario("B2", "normal*511 pinned", purpose="pinned PTE is last"),
        Scenario("B'", "normal*510 pinned normal", purpose="control"),
        Scenario("C", "none*511 swap:cnt=62", "never", ("fail@swapcont.atomic#1",), "continuation at the last PTE"),
        Scenario("C'", "none*511 swap:cnt=62", "always", ("fail@swapcont.atomic#1",), "C under lock breaks"),
        Scenario(
            "D",
            "none*480 swap:cnt=62 none*31",
            "never",
            ("fail@swapcont.atomic#1", "@SC#1: zap(480)"),
            "stale swap entry",
        ),
        Scenario(
            "D'",
            "none*400 swap:cnt=62 none*111",
            "always",
            ("fail@swapcont.atomic#1", "@SC#1: zap(400)"),
            "repeated stale calls",
        ),
        Scenario("E", "normal*100 pinned normal*411", "never", ("@EC#1: unpin(100)",), "prealloc not needed on retry"),
        Scenario(
            "F", "normal*100 pinned*2 normal*410", "never", ("@EC#1: zap(100)",), "prealloc consumed at another index"
        ),
        Scenario("F'", "normal*100 pinned*2 none*410", "never", ("@EC#1: zap(100)",), "F where v1 then hits case (a)"),
        Scenario("G", "pinned*8 normal*504", purpose="several pins"),
        Scenario("G'", "pinned*8 normal*504", "always", (), "+1 vs +8 cadence after an early copy"),
        Scenario("H-a", "none*16 folio16 normal*480", purpose="batching, no pin"),
        Scenario("H-a'", "none*16 folio16 normal*480", "always", (), "batching under lock breaks"),
        Scenario("H-b", "none*16 folio16:pin normal*480", purpose="pinned 64 KiB folio: every page copied"),
        Scenario("H-c", "none*16 folio16:pin:nonex=0 normal*480", purpose="one non-exclusive page"),
        Scenario("H-d", "none*16 folio16:pin none*480", purpose="H-b followed by nothing"),
        Scenario("I-a", "normal*512", "always", (), "lock-break cadence"),
        Scenario("I-b", "none*512", "always", (), "lock-break cadence"),
        Scenario("I-c", "folio512", "always", (), "lock-break cadence"),
        Scenario("I-d", "normal*512", "every:2", (), "lock-break cadence"),
        Scenario("J", "normal*100 pinned:ro normal*411", purpose="read-only pinned page"),
        Scenario("J'", "normal*100 pinned:ro:nonex normal*411", purpose="pinned, not exclusive"),
        Scenario("J''", "vma:file file*100 file:pin file*411", purpose="pinned page-cache page (private file VMA)"),
        Scenario("K-a", "normal*100 pinned normal*411", "never", ("fail@copy#1",), "ENOMEM and teardown"),
        Scenario("K-b", "normal*100 pinned normal*411", "never", ("fail@ptetable#1",), "ENOMEM before any PTE"),
        Scenario(
            "K-c",
            "normal*100 swap:cnt=62 normal*411",
            "never",
            ("fail@swapcont.atomic#1", "fail@swapcont.kernel#1"),
            "continuation ENOMEM",
        ),
        Scenario("L-a", "normal*100 normal:ref=1023 normal*411", purpose="false positive, off by one"),
        Scenario("L-b", "normal*100 normal:ref=1024 normal*411", purpose="false positive"),
        Scenario("M-a", "thp", purpose="PMD-mapped THP shared"),
        Scenario("M-b", "thp:pin", purpose="pinned PMD-mapped THP: split, then every page copied"),
    )
}


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario '{name}' (known: {', '.join(SCENARIOS)})") from None
