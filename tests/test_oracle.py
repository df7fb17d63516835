"""The lock-break oracle (spec 4) with its test vectors, and the injection notation (spec 5)."""

import pytest

from gpusim.model.oracle import InjectionPlan, LockBreakOracle, NotationError, nb_hash, parse_injection, prob_q32


def test_nb_hash_vectors():
    assert nb_hash(1, 0, 0, 0) == 0xE28195DDD9EE4956
    assert nb_hash(1, 0, 0, 1) == 0x3FA25E1657E024C1
    assert nb_hash(1, 0, 512, 0) == 0x8D98AC8191DE8798
    assert nb_hash(42, 3, 1024, 7) == 0x241810C795E93B5F


def test_bern_half_on_the_vectors():
    o1 = LockBreakOracle.parse("bern:0.5:1")
    assert [o1(0, 0, 0), o1(0, 0, 1), o1(0, 512, 0)] == [False, True, False]
    assert LockBreakOracle.parse("bern:0.5:42")(3, 1024, 7) is True
    assert prob_q32(1.0) == 1 << 32 and prob_q32(0.5) == 1 << 31


def test_modes():
    assert not LockBreakOracle.parse("never")(0, 0, 5)
    assert LockBreakOracle.parse("NB=always")(0, 0, 5)
    every = LockBreakOracle.parse("every:3")
    assert [every(0, 0, k) for k in range(6)] == [False, False, True, False, False, True]
    lst = LockBreakOracle.parse("list:(0,2),(512,0)")
    assert lst(0, 0, 2) and lst(7, 512, 0) and not lst(0, 0, 0) and not lst(0, 512, 2)
    b = LockBreakOracle.parse("bern:1:9")
    assert all(b(0, s, k) for s in (0, 512) for k in range(20))
    assert not any(LockBreakOracle.parse("bern:0:9")(0, s, k) for s in (0, 512) for k in range(20))


@pytest.mark.parametrize("bad", ["sometimes", "every:0", "every:x", "bern:2:1", "bern:0.5", "list:(1)", ""])
def test_bad_oracle(bad):
    with pytest.raises(NotationError):
        LockBreakOracle.parse(bad)


def test_injection_forms():
    f = parse_injection("fail@copy#2@512")
    assert (f.kind, f.point, f.n, f.call) == ("fail", "copy", 2, 512)
    w = parse_injection("@EC#1: zap(100); write(101)")
    assert (w.window, w.n, w.call) == ("EC", 1, None)
    assert [(e.name, e.addr) for e in w.events] == [("zap", 100), ("write", 101)]
    b = parse_injection("fail@bern:0.25:7")
    assert b.kind == "fail-bern" and b.q_q32 == 1 << 30


@pytest.mark.parametrize(
    "bad", ["fail@disk#1", "fail@copy#0", "@XX#1: zap(1)", "@EC#1: smash(3)", "@EC#1:", "zap(3)", "fail@bern:3:1"]
)
def test_bad_injection(bad):
    with pytest.raises(NotationError):
        parse_injection(bad)


def test_plan_keys():
    plan = InjectionPlan.parse(["fail@copy#1@512", "@LB#2: touch(3)", "@ANY#1: pin(9)"])
    assert plan.alloc_fails(0, 512, "copy", 1) and not plan.alloc_fails(0, 0, "copy", 1)
    assert not plan.alloc_fails(0, 512, "copy", 2)
    assert [str(e) for _, e in plan.window_events(0, "LB", 2, 5)] == ["touch(3)"]
    assert [str(e) for _, e in plan.window_events(0, "SC", 1, 1)] == ["pin(9)"]
    assert plan.unfired() == []
    assert InjectionPlan.parse(["@EC#3: zap(1)"]).unfired() == ["@EC#3: zap(1)"]


def test_seeded_failures_are_keyed_not_ordered():
    plan = InjectionPlan.parse(["fail@bern:0.5:3"])
    first = [plan.alloc_fails(0, 0, "copy", n) for n in range(1, 40)]
    again = [plan.alloc_fails(0, 0, "copy", n) for n in reversed(range(1, 40))][::-1]
    assert first == again and any(first) and not all(first)
