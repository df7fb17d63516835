"""Fork episodes (spec 11.6): the spec's notation and its errors; hand-traced timelines; the compiled run equal to
the reference's (timeline, latency signatures, states) on random layouts and episodes, its invariants holding; the
draws independent of the windows; the patterns' shapes; the report's percentiles; the API and the CLI."""

import json
import shutil

import numpy as np
import pytest
from budget import budget
from hypothesis import given
from hypothesis import strategies as st
from inproc import run_cli
from strategies import layouts

import gpusim
from gpusim.analysis.costmodel import latency_percentiles, load_profile
from gpusim.base.backend import kernels
from gpusim.engines import episode as E
from gpusim.engines.episode import EpisodeError, parse_episode, run_episode
from gpusim.kernels.flags import WRITE_CODE_BASE, WRITE_EVENTS
from gpusim.model.state import digest
from gpusim.model.variants import EAGER_VARIANTS as VARIANTS

ARRAYS = ("writes", "requests", "events", "cow_pages", "child_private_dirty_pages")
ARRAYS += ("dma_parent_diverged", "dma_child_aliased")


def both(layout: str, variant: str, spec: str):
    """(reference episode, compiled episode) after a fork of ``layout``."""
    r = gpusim.fork(gpusim.parse_layout(layout, variant), variant, backend="cpu")
    assert r.outcome == "ok"
    return run_episode(r.parent, r.child, variant, spec), run_episode(r.parent, r.child, variant, spec, kernels("cpu"))


def assert_equal(a, b, what=""):
    for f in ARRAYS:
        assert np.array_equal(getattr(a, f), getattr(b, f)), (what, f, getattr(a, f), getattr(b, f))
    assert a.signatures == b.signatures, what
    assert (a.cow_pages_peak, a.child_private_dirty_pages_at_exit) == (
        b.cow_pages_peak,
        b.child_private_dirty_pages_at_exit,
    )
    assert digest(a.parent.mm, a.child, a.memory) == digest(b.parent.mm, b.child, b.memory), what


def test_notation_units_and_round_trip():
    s = parse_episode(
        "duration=1.5min, rate=50k, pattern=zipf, zipf_s=0.8, resolution=250ms, writer=both, child_rate=2M"
    )
    assert (s.duration_s, s.rate, s.zipf_s, s.resolution_s, s.child_rate) == (90.0, 5e4, 0.8, 0.25, 2e6)
    assert s.intervals == 360 and s.rates() == (5e4, 2e6)
    assert parse_episode(s.as_dict()) == s
    assert parse_episode({"duration": 2, "rate": 10, "range": "0x10-0x20"}).range == (16, 32)


@pytest.mark.parametrize(
    "text,needles",
    [
        ("rate=10", ["duration: missing"]),
        ("duration=1s, rate=-5, pattern=zipfy", ["rate: above 0", "pattern: one of uniform"]),
        ("duration=1s, rate=5, colour=red", ["colour: not a key"]),
        ("duration=1s, rate=5, hot_share=0.5", ["hot_share: goes with pattern=hotset"]),
        ("duration=1s, rate=5, child_rate=3", ["child_rate: the child does not write"]),
        ("duration=1s, rate=5, child_exit_at=2s", ["child_exit_at: at most the duration"]),
        ("duration=10s, rate=1e9, pages_per_write=64", ["rate: ", "page writes in all"]),
        ("duration=1s, rate=5, pages_per_write=0, seed=x", ["pages_per_write: an integer 1..64", "seed: an integer"]),
        ("duration=2s, rate=5, resolution=1us", ["resolution: at most 1,000,000 intervals"]),
        ("duration=1s rate=5", ["duration: a time"]),
        ("duration=1s, rate=5, range=9-3", ["range: A-B"]),
        ("duration=inf, rate=5", ["duration: a time"]),
        ("duration=1s, rate=5, pattern=hotset, hot_share=0.5k", ["hot_share: a number"]),
    ],
)
def test_notation_errors_name_every_key_in_one_line(text, needles):
    with pytest.raises(EpisodeError) as e:
        parse_episode(text)
    msg = str(e.value)
    assert msg.startswith("episode: ") and "\n" not in msg
    for n in needles:
        assert n in msg, msg


def test_parent_scan_copies_each_page_once():
    """Eight pages, the parent writes them in order at 8 per second for 2 s (6.18): the first second copies each
    page (the child's originals become private to it), the second writes in place; the child exits at the end."""
    a, b = both("normal*8", "linux-6.18", "duration=2s, rate=8, pattern=sequential, resolution=0.5")
    assert_equal(a, b)
    copy, none = WRITE_EVENTS.index("copy"), WRITE_EVENTS.index("none")
    assert a.events[:, 0, copy].tolist() == [4, 4, 0, 0] and a.events[:, 0, none].tolist() == [0, 0, 4, 4]
    assert a.cow_pages.tolist() == [4, 8, 8, 8] and a.child_private_dirty_pages.tolist() == [4, 8, 8, 8]
    assert (a.cow_pages_peak, a.child_private_dirty_pages_at_exit) == (8, 8)


def test_child_exit_frees_the_duplicates():
    """The child exits at 0.5 s: every page it alone held is freed, COW pages and its private pages fall to 0."""
    a, b = both("normal*8", "linux-6.18", "duration=1s, rate=8, pattern=sequential, child_exit_at=0.5, resolution=0.25")
    assert_equal(a, b)
    assert a.cow_pages.tolist() == [2, 4, 0, 0] and a.child_private_dirty_pages.tolist() == [2, 4, 0, 0]
    assert (a.cow_pages_peak, a.child_private_dirty_pages_at_exit) == (4, 4)
    assert a.events[2:, 0, WRITE_EVENTS.index("reuse")].tolist() == [2, 2]  # the parent alone: reuse


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pinned_pages_over_time(variant):
    """W-a over time: the parent writes four pinned and four plain pages; linux-5.8 loses its DMA frames, the
    fixed variants keep them (their child's early copies are private from the start)."""
    a, b = both("pinned*4 normal*4", variant, "duration=1s, rate=8, pattern=sequential, resolution=0.5")
    assert_equal(a, b, variant)
    if variant == "linux-5.8":
        assert a.dma_parent_diverged.tolist() == [4, 4] and a.dma_child_aliased.tolist() == [0, 0]
        assert a.child_private_dirty_pages.tolist() == [4, 8]
    else:
        assert a.dma_parent_diverged.tolist() == [0, 0]
        assert a.child_private_dirty_pages.tolist() == [4, 8]  # 4 early copies, then 4 the parent's copies left
        assert a.cow_pages.tolist() == [0, 4]


def test_thp_split_then_copy_keeps_the_folio():
    """A write to a THP shared with the child splits the parent's PMD and copies one page; the child's PMD now maps
    one page mapped once (private to it); the folio stays in memory whole."""
    a, b = both("thp", "linux-6.18", "duration=1s, rate=1, pattern=sequential")
    assert_equal(a, b)
    ev = dict(zip(WRITE_EVENTS, a.events[0, 0].tolist()))
    assert (ev["pmd_split"], ev["copy"]) == (1, 1)
    assert (a.cow_pages[0], a.child_private_dirty_pages[0]) == (1, 1)


@st.composite
def episodes(draw):
    duration = draw(st.sampled_from([0.2, 0.5, 1.0]))
    spec = {
        "duration": duration,
        "rate": draw(st.integers(1, 600)),
        "pattern": draw(st.sampled_from(E.PATTERNS)),
        "pages_per_write": draw(st.integers(1, 3)),
        "writer": draw(st.sampled_from(E.EPISODE_WRITERS)),
        "arrivals": draw(st.sampled_from(E.ARRIVALS)),
        "resolution": draw(st.sampled_from([0.05, 0.1, 0.3])),
        "seed": draw(st.integers(0, 5)),
    }
    if draw(st.booleans()):
        spec["child_exit_at"] = draw(st.sampled_from([0.0, duration / 3, duration]))
    if spec["writer"] != "parent" and draw(st.booleans()):
        spec["child_rate"] = draw(st.integers(1, 300))
    if spec["pattern"] == "zipf":
        spec["zipf_s"] = draw(st.sampled_from([0.6, 1.0, 1.4]))
    if spec["pattern"] == "hotset":
        spec.update(hot_fraction=draw(st.sampled_from([0.05, 0.5])), hot_share=draw(st.sampled_from([0.5, 0.95])))
    return spec


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_random_episodes_equal_the_reference(variant):
    """Random layouts and episodes: the compiled run equals the reference's (its samples counted from the state)
    and the write phase's invariants hold after it."""

    @budget(15)
    @given(case=layouts(max_width=1500), spec=episodes())
    def check(case, spec):
        space = gpusim.parse_layout(case[0], variant)
        r = gpusim.fork(space, variant, backend="cpu")
        if r.outcome != "ok":
            return
        try:
            ref = run_episode(r.parent, r.child, variant, spec)
        except EpisodeError as e:
            assert "maps no page" in str(e)
            return
        got = gpusim.fork(space, variant, backend="cpu", episode=spec).episode
        assert_equal(ref, got, (case[0], spec))
        assert got.invariants.ok, got.invariants.violations

    check()


def test_draws_do_not_depend_on_the_windows(monkeypatch):
    spec = "duration=1s, rate=3000, pattern=zipf, arrivals=poisson, pages_per_write=2, writer=both, seed=7"
    r = gpusim.fork(gpusim.parse_layout("normal*2048"), "linux-6.18", backend="cpu")
    whole = run_episode(r.parent, r.child, "linux-6.18", spec, kernels("cpu"))
    monkeypatch.setattr(E, "WINDOW_WRITES", 97)
    monkeypatch.setattr(E, "_GAP_BLOCK", 13)
    assert_equal(whole, run_episode(r.parent, r.child, "linux-6.18", spec, kernels("cpu")))


def test_pattern_shapes():
    mm = gpusim.parse_layout("normal*1000").mm

    def drawn(spec, n=20000):
        s = E.Schedule(parse_episode(spec), mm, mm)
        return s.streams[0].addresses(n)

    seq = drawn("duration=1s, rate=1, pattern=sequential", 2500)
    assert seq.tolist() == list(range(1000)) * 2 + list(range(500))
    uni = np.bincount(drawn("duration=1s, rate=1"), minlength=1000)
    assert uni.min() > 0 and uni.max() < 60  # 20 a page on average
    hot = drawn("duration=1s, rate=1, pattern=hotset, hot_fraction=0.1, hot_share=0.9")
    counts = np.sort(np.bincount(hot, minlength=1000))[::-1]
    assert 0.87 < counts[:100].sum() / hot.size < 0.93
    z = np.sort(np.bincount(drawn("duration=1s, rate=1, pattern=zipf, zipf_s=1.2"), minlength=1000))[::-1]
    assert z[0] > 10 * z[99] and z[:10].sum() > 0.4 * z.sum()
    fixed = E.Schedule(parse_episode("duration=1s, rate=300"), mm, mm).streams[0]
    assert [fixed.times(a / 10, (a + 1) / 10).size for a in range(10)] == [30] * 10
    poisson = E.Schedule(parse_episode("duration=1s, rate=300, arrivals=poisson"), mm, mm).streams[0]
    n = sum(poisson.times(a / 10, (a + 1) / 10).size for a in range(100))
    assert 2700 < n < 3300


def test_range_and_an_empty_domain():
    r = gpusim.fork(gpusim.parse_layout("normal*64"), "linux-6.18", backend="cpu")
    ep = run_episode(r.parent, r.child, "linux-6.18", "duration=1s, rate=100, range=10-19", kernels("cpu"))
    assert ep.domain_pages == {"parent": 10} and ep.cow_pages_peak == 10
    with pytest.raises(EpisodeError, match="the parent maps no page to write in range"):
        run_episode(r.parent, r.child, "linux-6.18", "duration=1s, rate=1, range=100-200")


def test_percentiles_by_nearest_rank():
    cost = {e: 0.0 for e in WRITE_EVENTS} | {"none": 10.0, "copy": 1000.0, "pmd_split": 5000.0}
    code = {e: WRITE_EVENTS.index(e) * WRITE_CODE_BASE for e in WRITE_EVENTS}
    split_copy = code["pmd_split"] + WRITE_EVENTS.index("copy") + 1
    sig = {(code["none"],): 980, (code["copy"],): 19, (split_copy,): 1}
    p = latency_percentiles(sig, cost)
    assert (p["p50"], p["p99"], p["p999"], p["max"]) == (10, 1000, 1000, 6000)
    assert p["mean"] == pytest.approx((980 * 10 + 19 * 1000 + 6000) / 1000)
    two = latency_percentiles({(code["none"], code["copy"]): 3}, cost)
    assert two["p50"] == two["max"] == 1010


def test_api_report_prices_the_timeline():
    r = gpusim.fork(
        gpusim.parse_layout("normal*512"), "linux-6.18", episode="duration=1s, rate=1000, resolution=0.25", profile=None
    )
    rep = r.episode.report
    prof = load_profile(None)
    c = {e: prof.write_costs[e].ns for e in WRITE_EVENTS}
    assert [t["t_s"] for t in rep["timeline"]] == [0.25, 0.5, 0.75, 1.0]
    for t in rep["timeline"]:
        f = t["faults"]["parent"]
        want = sum(n * c[e] for e, n in f.items()) - t["writes"]["parent"] * c["none"]
        assert t["added_latency_ns"]["parent"] == pytest.approx(want)
    assert rep["cow_bytes_peak"] == 4096 * r.episode.cow_pages_peak and rep["stall_ns"] > 0
    assert sum(t["writes"]["parent"] for t in rep["timeline"]) == 1000
    with pytest.raises(ValueError, match="writes and episode"):
        gpusim.fork(gpusim.parse_layout("normal*8"), writes="parent:all", episode="duration=1s, rate=1")


def test_cli_episode_json_and_errors():
    code, out, _ = run_cli("fork", "--layout", "normal*256", "--episode", "duration=1s, rate=500", "--json")
    assert code == 0
    ep = json.loads(out)["episode"]
    assert len(ep["timeline"]) == 10 and ep["write_latency_ns"]["p50"] > 0 and ep["invariants"]["ok"]
    code, out, _ = run_cli("fork", "--layout", "normal*256", "--episode", "duration=1s, rate=500")
    assert code == 0 and "COW memory peak" in out and "child private MiB" in out
    code, out, err = run_cli("fork", "--layout", "normal*8", "--episode", "duration=1s, rate=x, colour=1")
    assert code == 2 and "rate: requests per second" in err and "colour: not a key" in err and "Traceback" not in err


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler for the measuring process")
def test_a_host_episode_matches_its_twin():
    """The measuring process's child's private dirty pages grow as its captured twin's do, write for write."""
    from gpusim.jobs.host.episodes import cow_error, measure_episode

    r = measure_episode(8192, False, "duration=0.4s, rate=20000, resolution=0.1")
    assert r["writes"] == [2000, 4000, 6000, 8000]
    assert r["modelled_private_pages"][-1] > 3000 and cow_error(r) <= 0.05, r
    assert all(0 <= m - p <= 64 for m, p in zip(r["measured_faults"], r["modelled_faults"]))  # its own pages too
    assert r["measured_latency_ns"]["p50"] > 0 and r["keys"].size == 8000


SWEEP = """name: e
seed: 3
repeat: 1
backend: cpu
workload: {kind: anon, size: 4MiB, pinned_fraction: 0.05, pinned_placement: contiguous}
fork:
  variant: linux-6.18
  episode: EPISODE
sweep:
  grid:
    fork.variant: [linux-5.8, linux-6.18]
    fork.episode.rate: [2000, 8000]
"""


def test_sweep_with_episodes_columns_and_plot(tmp_path):
    """fork.episode with a swept rate: the dataset has the episode's totals and timeline lists; the fixed kernel
    keeps its DMA frames while linux-5.8's parent loses them; the timeline plot is drawn; a rerun resumes."""
    f = tmp_path / "e.yaml"
    f.write_text(SWEEP.replace("EPISODE", "{duration: 1s, rate: 1000, pattern: sequential, resolution: 0.25s}"))
    t = gpusim.run_sweep(f, out=tmp_path / "o", workers=1).to_pandas()
    assert len(t) == 4 and t["episode.invariants_ok"].all()
    assert (t["episode.writes"] == t["fork.episode.rate"]).all()
    assert all(len(x) == 4 for x in t["episode.timeline.cow_pages"])
    fast = t[t["fork.episode.rate"] == 8000].set_index("variant")
    assert fast.loc["linux-5.8", "episode.timeline.dma_parent_diverged"][-1] > 0
    assert fast.loc["linux-6.18", "episode.timeline.dma_parent_diverged"][-1] == 0
    assert (t["episode.cow_bytes_peak"] == 4096 * t["episode.cow_pages_peak"]).all()
    from gpusim.jobs.plots import plot_results

    assert "episode_timeline.png" in [p.name for p in plot_results(tmp_path / "o")]
    code, out, err = run_cli("sweep", str(f), "--out", str(tmp_path / "o"), "--workers", "1")
    assert code == 0 and "0 run, 4 already done" in out + err


@pytest.mark.parametrize(
    "episode,needle",
    [
        ("{duration: 1s, rate: -3}", "rate: above 0"),
        ("{duration: 1s, rate: 10, colour: red}", "colour: not a key"),
        ("'duration=1s'", "rate: missing"),
    ],
)
def test_sweep_episode_errors_name_the_line(tmp_path, episode, needle):
    f = tmp_path / "e.yaml"
    f.write_text(SWEEP.replace("EPISODE", episode))
    code, out, err = run_cli("sweep", str(f), "--out", str(tmp_path / "o"), "--workers", "1")
    assert code == 2 and needle in err and f"{f}:8" in err and "Traceback" not in err, err
