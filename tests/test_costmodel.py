"""The latency model: sums by hand, profile loading and validation, the public profile's anchors."""

import os

import numpy as np
import pytest
import yaml
from pydantic import TypeAdapter

import gpusim
from gpusim.analysis.costmodel import COMPONENTS, ProfileError, held_events, latency, load_profile, profile_names
from gpusim.inputs.workloads import build_workload
from gpusim.jobs.sweep.spec import Workload
from gpusim.kernels.flags import COST_EVENTS
from gpusim.model.result import TABLE_EVENTS, TableStats


def test_shipped_profiles_load_and_label_estimates():
    assert "public-xeon-4210r-v6.8" in profile_names()
    p = load_profile()
    assert set(p.costs) == set(COST_EVENTS)
    assert p.costs["pte.share"].kind == "derived" and p.costs["copy.alloc"].kind == "estimate"
    assert all(p.costs[e].basis for e in COST_EVENTS)  # every figure says where it comes from


def test_latency_is_the_hand_computed_sum():
    p = load_profile()
    counts = {e: 0 for e in COST_EVENTS}
    counts.update({"fork.base": 1, "pte.share": 1000, "copy.alloc": 3, "check": 10})
    want = (
        p.costs["fork.base"].ns
        + 1000 * p.costs["pte.share"].ns
        + 3 * p.costs["copy.alloc"].ns
        + 10 * p.costs["check"].ns
    )
    out = latency(counts, "linux-6.18", p)
    assert out["latency_ns"] == pytest.approx(want)
    assert out["latency_breakdown_ns"]["pte"] == pytest.approx(1000 * p.costs["pte.share"].ns)
    assert out["latency_breakdown_ns"]["early_copy"] == pytest.approx(3 * p.costs["copy.alloc"].ns)
    assert out["latency_breakdown_ns"]["pass"] == pytest.approx(10 * p.costs["check"].ns)
    assert sum(out["latency_breakdown_ns"].values()) == pytest.approx(want)
    assert out["lock_hold_max_ns"] is None


def test_lock_hold_is_the_longest_mean_pass():
    p = load_profile()
    ev = np.zeros((2, len(TABLE_EVENTS)), np.int64)
    ev[0, TABLE_EVENTS.index("pte.share")] = 512
    ev[1, TABLE_EVENTS.index("pte.share")] = 100
    ev[1, TABLE_EVENTS.index("copy.memcpy")] = 4
    stats = TableStats(np.array([0, 1]), np.array([1, 5]), ev)
    share, memcpy = p.costs["pte.share"].ns, p.costs["copy.memcpy"].ns
    assert latency({}, "linux-6.18", p, stats)["lock_hold_max_ns"] == pytest.approx(512 * share)
    stats = TableStats(np.array([1]), np.array([5]), ev[1:])
    assert latency({}, "linux-5.10", p, stats)["lock_hold_max_ns"] == pytest.approx((100 * share + 4 * memcpy) / 5)
    # xu-v1 copies in page_duplicate, after dropping the locks
    assert "copy.memcpy" not in held_events("xu-v1")
    assert latency({}, "xu-v1", p, stats)["lock_hold_max_ns"] == pytest.approx(100 * share / 5)


def test_every_event_in_one_component():
    flat = [e for events in COMPONENTS.values() for e in events]
    assert sorted(flat) == sorted(COST_EVENTS) and len(flat) == len(set(flat))


@pytest.mark.parametrize("i", [0, 1])
def test_public_profile_reproduces_its_anchors(i):
    p = load_profile()
    a = p.anchors[i]
    space, _, _ = build_workload(TypeAdapter(Workload).validate_python(a.workload), a.variant, 0)
    r = gpusim.fork(space, a.variant, backend="cpu", check=False)
    got = latency(r.counts, a.variant, p, r.table_stats)["latency_ns"]
    assert abs(got / a.latency_ns - 1) <= a.tolerance


def test_table_stats_agree_between_engines():
    space = gpusim.parse_layout("normal*100 pinned normal*411 none*512 swap*3 normal*509", "linux-6.18")
    ref = gpusim.fork(space, "linux-6.18", backend="reference")
    cpu = gpusim.fork(space, "linux-6.18", backend="cpu")
    for r in (ref, cpu):
        order = np.argsort(r.table_stats.table)
        r.sorted = (r.table_stats.table[order], r.table_stats.passes[order], r.table_stats.events[order])
    assert all(np.array_equal(a, b) for a, b in zip(ref.sorted, cpu.sorted))
    assert ref.sorted[1].sum() == ref.counts["pass"]


def test_unknown_profile_and_bad_profile_files(tmp_path):
    with pytest.raises(ProfileError, match="unknown cost profile 'nope'"):
        load_profile("nope")
    good = yaml.safe_load(open(load_profile.__globals__["PROFILE_DIR"] / "public-xeon-4210r-v6.8.yaml"))
    bad = dict(good, costs={k: v for k, v in good["costs"].items() if k != "pte.share"})
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(bad))
    with pytest.raises(ProfileError, match="no cost for: pte.share"):
        load_profile(str(f))
    bad = dict(good)
    bad["costs"] = dict(good["costs"], **{"pte.share": {"ns": "fast", "kind": "derived"}})
    f.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(ProfileError, match=r"p\.yaml:\d+: costs\.pte\.share\.ns"):
        load_profile(str(f))


def test_a_profile_written_before_frame_breaks_were_counted_takes_the_public_estimate():
    p = load_profile("results/host-profile-2vcpu-vm.yaml")
    public = load_profile("public-xeon-4210r-v6.8")
    c = p.costs["pte.frame_break"]
    assert c.kind == "estimate" and c.ns == public.costs["pte.frame_break"].ns and "written before" in c.basis
    assert public.costs["pte.frame_break"].kind == "estimate"  # the public figure says it is one


def test_the_band_scales_the_latency_and_a_profile_without_one_has_none(tmp_path):
    counts = {e: 0 for e in COST_EVENTS}
    counts.update({"fork.base": 1, "pte.share": 1000})
    public = load_profile()
    out = latency(counts, "linux-6.18", public)
    assert out["latency_low_ns"] is None and out["latency_high_ns"] is None
    data = public.model_dump(mode="json")
    data.update(name="banded", band={"low": -0.1, "high": 0.25, "basis": "test"})
    path = tmp_path / "banded.yaml"
    path.write_text(yaml.safe_dump(data))
    out = latency(counts, "linux-6.18", load_profile(str(path)))
    assert out["latency_low_ns"] == pytest.approx(0.9 * out["latency_ns"])
    assert out["latency_high_ns"] == pytest.approx(1.25 * out["latency_ns"])
    for bad in ({"low": 0.1, "high": 0.2}, {"low": -0.1, "high": -0.2}, {"low": -1.5, "high": 0.1}):
        path.write_text(yaml.safe_dump(dict(data, band={**bad, "basis": "x"})))
        with pytest.raises(ProfileError, match="band"):
            load_profile(str(path))


def test_a_warm_fork_is_spared_the_frame_breaks_whose_struct_pages_fit_the_cache(tmp_path):
    from gpusim.analysis.costmodel import STRUCT_PAGE_BYTES, warm_credit

    counts = {e: 0 for e in COST_EVENTS}
    counts.update({"fork.base": 1, "pte.share": 1000, "pte.frame_break": 1000, "shared": 1000})
    public = load_profile()
    assert latency(counts, "linux-6.18", public, warm=True) == latency(counts, "linux-6.18", public)  # no cache
    data = public.model_dump(mode="json")
    data.update(name="cached", warm_cache_bytes=4 * STRUCT_PAGE_BYTES * 1000)
    path = tmp_path / "cached.yaml"
    path.write_text(yaml.safe_dump(data))
    p = load_profile(str(path))
    cold, warm = latency(counts, "linux-6.18", p), latency(counts, "linux-6.18", p, warm=True)
    assert warm_credit(counts, p.warm_cache_bytes) == 0.75  # a quarter of the cache's share
    assert cold["latency_ns"] - warm["latency_ns"] == pytest.approx(0.75 * 1000 * p.costs["pte.frame_break"].ns)
    big = dict(counts, shared=10_000)  # struct pages past the cache: no credit
    assert latency(big, "linux-6.18", p, warm=True)["latency_ns"] == latency(big, "linux-6.18", p)["latency_ns"]


def test_the_json_copies_kept_are_the_most_recently_used(tmp_path):
    """Every edited or recalibrated profile is a new text: a cache directory keeps the KEEP_COPIES most recently
    used JSON copies, not all of them."""
    from gpusim.analysis import costmodel
    from gpusim.base import yamlerr

    src = (costmodel.PROFILE_DIR / "public-xeon-4210r-v6.8.yaml").read_text()
    cache = tmp_path / "cache"
    copies = []  # the copy each text left, in order

    def load(text):
        before = set(cache.glob("yaml-*.json"))
        yamlerr.load_yaml_model(tmp_path / "p.yaml", costmodel.Profile, text=text, cache=cache)
        copies.extend(set(cache.glob("yaml-*.json")) - before)

    texts = [src.replace("costs:", f"# edit {i}\ncosts:", 1) for i in range(yamlerr.KEEP_COPIES + 5)]
    for i, text in enumerate(texts[: yamlerr.KEEP_COPIES]):
        load(text)
        os.utime(copies[-1], (1000 + i, 1000 + i))  # used in this order, long ago
    load(texts[0])  # read from its copy: used now
    for text in texts[yamlerr.KEEP_COPIES :]:
        load(text)
    kept = set(cache.glob("yaml-*.json"))
    assert len(kept) == yamlerr.KEEP_COPIES
    assert copies[0] in kept and copies[1] not in kept and copies[5] not in kept and copies[6] in kept


def test_a_profile_parsed_once_is_read_from_its_json_copy_and_a_bad_copy_is_ignored(tmp_path, monkeypatch):
    """The parsed data of a profile is kept under the hash of its text (start-up): the copy gives the same profile,
    a damaged copy is parsed again, an edited file is a new text (its errors still name file, line and key)."""
    from gpusim.analysis import costmodel

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = costmodel.PROFILE_DIR / "public-xeon-4210r-v6.8.yaml"
    f = tmp_path / "p.yaml"
    f.write_text(src.read_text())
    first = load_profile(str(f))
    kept = list((tmp_path / "cache" / "gpusim" / "profiles").glob("yaml-*.json"))
    assert len(kept) == 1
    costmodel._load.cache_clear()
    assert load_profile(str(f)) == first  # from the copy
    kept[0].write_text("{not json")
    costmodel._load.cache_clear()
    assert load_profile(str(f)) == first  # parsed again
    f.write_text(src.read_text().replace("costs:", "costs:\n  fork.nope: {ns: 1, kind: measured}", 1))
    costmodel._load.cache_clear()
    with pytest.raises(ProfileError, match=r"p\.yaml:\d+: .*unknown cost events: fork\.nope"):
        load_profile(str(f))


def test_a_warm_fork_costs_its_profiles_warm_factors_and_a_cold_one_does_not(tmp_path):
    counts = {e: 0 for e in COST_EVENTS}
    counts.update({"fork.base": 1, "table.call": 100, "vma.dup": 10})
    public = load_profile()
    data = public.model_dump(mode="json")
    data.update(name="warmed", warm_factors={"table.call": 0.5})
    path = tmp_path / "warmed.yaml"
    path.write_text(yaml.safe_dump(data))
    p = load_profile(str(path))
    cold, warm = (latency(counts, "linux-6.18", p, warm=w)["latency_ns"] for w in (False, True))
    assert cold == latency(counts, "linux-6.18", public)["latency_ns"]
    assert cold - warm == pytest.approx(0.5 * 100 * p.costs["table.call"].ns)
    for bad in ({"table.nope": 0.5}, {"table.call": -1.0}):
        path.write_text(yaml.safe_dump(dict(data, warm_factors=bad)))
        with pytest.raises(ProfileError, match="warm_factors"):
            load_profile(str(path))
