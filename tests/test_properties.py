"""Property tests: random layouts, oracles and injections; the invariants hold and every index is handled once."""

import pytest
from budget import budget
from hypothesis import given
from hypothesis import strategies as st
from strategies import VARIANTS, injections, layouts, oracles

import gpusim

SETTINGS = budget(60)


@st.composite
def cases(draw):
    layout, width = draw(layouts())
    return layout, draw(oracles()), draw(injections(width))


@pytest.mark.parametrize("variant", VARIANTS)
@SETTINGS
@given(case=cases())
def test_invariants_hold(variant, case):
    layout, oracle, inject = case
    space = gpusim.parse_layout(layout, variant)
    r = gpusim.fork(space, variant, backend="reference", oracle=oracle, inject=inject)
    if r.outcome == "oops":
        # only xu-v1's stale BREAK_COW is reachable; every other reason is an engine bug
        assert variant == "xu-v1", r.oops
        assert (r.oops["function"], r.oops["reason"]) == ("page_duplicate", "OLD_PAGE_NULL"), r.oops
        return
    assert r.invariants.ok, (layout, variant, oracle, inject, r.invariants.violations)


@pytest.mark.parametrize("variant", VARIANTS)
@budget(15)
@given(case=cases())
def test_fork_is_deterministic_and_pure(variant, case):
    layout, oracle, inject = case
    space = gpusim.parse_layout(layout, variant)
    before = gpusim.model.state.digest(space.mm, gpusim.model.state.empty_mm(), space.memory)
    r1 = gpusim.fork(space, variant, backend="reference", oracle=oracle, inject=inject, check=False)
    r2 = gpusim.fork(space, variant, backend="reference", oracle=oracle, inject=inject, check=False)
    assert r1.digest == r2.digest and r1.counts == r2.counts
    assert gpusim.model.state.digest(space.mm, gpusim.model.state.empty_mm(), space.memory) == before
