"""The soak harness (benchmarks/soak.py) in small: random fault-injected forks, cpu against the reference."""

import importlib.util
from pathlib import Path

import pytest

import gpusim
from gpusim.model.variants import EAGER_VARIANTS

SOAK = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("variant", EAGER_VARIANTS)
def test_random_fault_injected_forks_agree(soak, variant):
    r = soak.soak(variant, forks=25, backend="cpu", width=600)
    assert r["forks"] == 25 and r["with_injections"] > 0
    assert r.get("ok", 0) + r.get("enomem", 0) + r.get("oops", 0) == 25


def test_the_soak_check_catches_a_difference(soak, monkeypatch):
    real = gpusim.fork

    def off_by_one(space, variant, backend="cpu", **kw):
        r = real(space, variant, backend=backend, **kw)
        if backend != "reference":
            r.counts["pte.share"] += 1
        return r

    monkeypatch.setattr(gpusim, "fork", off_by_one)
    with pytest.raises(AssertionError):
        soak.check_fork("normal*4", "linux-6.18", "never", [], "cpu")
