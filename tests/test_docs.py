"""The spec lives in the repository: every "spec §N" / "spec section N" in the code, the tests, the benchmarks and
the README names a section of ``docs/kernel-semantics.md``, and nothing points outside the clone for it."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
SPEC = ROOT / "docs" / "kernel-semantics.md"
CITE = re.compile(r"spec (?:§|sections? )?([0-9]+(?:\.[0-9]+)?)")
SOURCES = [*ROOT.glob("gpusim/**/*.py"), *ROOT.glob("kernels/*.py"), *ROOT.glob("tests/*.py")]
SOURCES += [*ROOT.glob("benchmarks/*.py"), ROOT / "README.md", *ROOT.glob("workloads/*.yaml")]


def sections() -> set[str]:
    """The numbers of the spec's headings (``## 6.``, ``### 11.5``)."""
    return set(re.findall(r"^#{2,3} ([0-9]+(?:\.[0-9]+)?)\.? ", SPEC.read_text(), re.M))


def test_every_spec_cite_names_a_section():
    known = sections()
    assert {"1", "1.6", "6", "11.5", "12.10"} <= known
    bad = [f"{p.relative_to(ROOT)}: spec {n}" for p in SOURCES for n in CITE.findall(p.read_text()) if n not in known]
    assert not bad, "\n".join(bad)


OUTSIDE = ("../" + "shared", "shared" + "/docs")  # (spelled apart, so that this file does not name them)


def test_nothing_points_outside_the_repository():
    bad = [str(p.relative_to(ROOT)) for p in SOURCES if any(o in p.read_text() for o in OUTSIDE)]
    assert not bad, bad
