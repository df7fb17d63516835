"""Variants are data (architecture rule 12): a variant that recombines existing rules is one record, and every engine
runs it equal to the reference without a line of engine code. The proof is a variant defined here, in the test:
linux-6.18 without large-folio batching (``folio_pte_batch`` never joins PTEs, as in a kernel before v6.9)."""

import dataclasses
import pathlib
import re

import pytest
from budget import budget
from conftest import SMALL
from differential import compare
from hypothesis import given
from hypothesis import strategies as st
from strategies import injections, layouts, oracles

import gpusim
from gpusim.inputs.catalogue import SCENARIOS
from gpusim.model.variants import VARIANTS

NOBATCH = dataclasses.replace(
    VARIANTS["linux-6.18"], name="test-6.18-nobatch", summary="linux-6.18 without large-folio batching", batching=False
)
ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def registered():
    """The test-only variant in the registry for this module's tests, and out of it afterwards."""
    VARIANTS[NOBATCH.name] = NOBATCH
    yield
    del VARIANTS[NOBATCH.name]


ENGINES = ["reference", "cpu", "cudasim"]


@pytest.mark.parametrize("backend", ENGINES[1:])
@pytest.mark.parametrize("sid", list(SCENARIOS))
def test_the_catalogue_on_every_engine(backend, sid):
    s = SCENARIOS[sid]
    compare(s.layout, NOBATCH.name, s.oracle, s.inject, backend)


@pytest.mark.parametrize("backend", ENGINES[1:])
@budget(25)
@given(data=st.data())
def test_random_layouts_on_every_engine(backend, data):
    layout, width = data.draw(layouts(max_width=1200))
    if backend == "cudasim" and gpusim.parse_layout(layout).nr_ptes > SMALL:
        layout, width = "folio16*32 pinned folio8:pin*4 swap*8", 553
    compare(layout, NOBATCH.name, data.draw(oracles()), data.draw(injections(width)), backend)


@pytest.mark.parametrize("backend", ENGINES)
def test_the_rule_changes_what_it_should_and_nothing_else(backend):
    """Without batching, no batch starts and every PTE of a large folio is copied alone, to the same final state
    as linux-6.18's batches; with a pinned large folio the single path copies what the batch's refusal copies."""
    for layout in ("folio16*32", "folio512 folio8*64", "folio16:pin*2 normal*480"):
        space = gpusim.parse_layout(layout, "linux-6.18")
        batched = gpusim.fork(space, "linux-6.18", backend=backend)
        single = gpusim.fork(space, NOBATCH.name, backend=backend)
        assert batched.counts["batch.start"] > 0 and single.counts["batch.start"] == 0
        assert single.digest == batched.digest and single.invariants.ok
        assert single.counts["installs"] == batched.counts["installs"]


def test_no_kernel_compares_a_variant():
    """The kernels read the rules of ``VariantParams``; the only number they switch on is the state machine's."""
    for p in sorted((ROOT / "kernels").glob("*.py")):
        src = p.read_text()
        assert not re.search(r"\bV_(5_8|5_10|6_18|XU_V1|XU_V1_OLEG)\b", src), p.name
        assert not re.search(r"\bvariant\s*[!=]=", src), p.name
        assert not re.search(r"\bis_618\b", src), p.name
