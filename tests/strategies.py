"""Hypothesis strategies: random layouts (as layout notation, so a failure prints a readable example), oracles
and injections. Shared by the property tests and, later, the differential tests of the fast engines."""

from hypothesis import strategies as st

from gpusim.model.oracle import ALLOC_POINTS, EVENTS
from gpusim.model.variants import EAGER_VARIANTS

VARIANTS = EAGER_VARIANTS  # the variants of spec 3 (the lazy designs: tests/test_lazy.py)

# (token, width) for page tokens; weights favour the interesting ones.
_PAGE_TOKENS = [
    ("none", 1),
    ("normal", 1),
    ("pinned", 1),
    ("normal:ro", 1),
    ("pinned:ro", 1),
    ("pinned:nonex", 1),
    ("normal:clean", 1),
    ("normal:ref=1023", 1),
    ("normal:ref=1024", 1),
    ("normal:pin=2", 1),
    ("zero", 1),
    ("file", 1),
    ("file:pin", 1),
    ("shmem", 1),
    ("swap", 1),
    ("swap:cnt=62", 1),
    ("swap:cnt=61", 1),
    ("swap:cnt=8000:lv=1", 1),
    ("swap:cnt=8063:lv=2", 1),
    ("swap:nonex", 1),
    ("migw", 1),
    ("migr", 1),
    ("devw", 1),
    ("devr", 1),
    ("pfn", 1),
    ("hole", 1),
    ("folio2", 2),
    ("folio4:pin", 4),
    ("folio8", 8),
    ("folio16:pin", 16),
    ("folio16:pin:nonex=0,5", 16),
    ("folio4:pin:ro", 4),
    ("folio8:clean", 8),
    ("pinned:hwpoison", 1),
]
_VMA_FLAGS = [
    "shared",
    "ro",
    "nomaywrite",
    "file",
    "shmem",
    "noanon",
    "dontcopy",
    "wipeonfork",
    "pfnmap",
    "mixedmap",
    "exec",
]


@st.composite
def layouts(draw, max_width=1200, allow_vma=True):
    """A layout string and its width (addresses 0 .. width-1)."""
    tokens = []
    width = 0
    n_vma = draw(st.integers(1, 3)) if allow_vma else 1
    for v in range(n_vma):
        if allow_vma and (v > 0 or draw(st.booleans())):
            if v > 0 and draw(st.integers(0, 3)) == 0:
                g = draw(st.integers(1, 40))
                tokens.append(f"gap*{g}")
                width += g
            flags = draw(st.lists(st.sampled_from(_VMA_FLAGS), max_size=2, unique=True))
            tokens.append(":".join(["vma"] + flags))
        budget = draw(st.integers(1, max(1, (max_width - width) // max(1, n_vma - v))))
        used = 0
        while used < budget:
            if width % 512 == 0 and draw(st.integers(0, 25)) == 0:
                tok, w = draw(st.sampled_from(["thp", "thp:pin", "thp:pin:nonex", "thp:ro:pin"])), 512
            else:
                tok, w = draw(st.sampled_from(_PAGE_TOKENS))
            count = draw(st.sampled_from([1, 1, 1, 2, 3, 7, 31, 32, 33, 100])) if w == 1 else 1
            tokens.append(tok if count == 1 else f"{tok}*{count}")
            used += w * count
            width += w * count
    if draw(st.integers(0, 7)) == 0:
        tokens.append("mm:has_pinned=0")
    return " ".join(tokens), width


@st.composite
def oracles(draw):
    kind = draw(st.sampled_from(["never", "always", "every", "bern", "list"]))
    if kind in ("never", "always"):
        return kind
    if kind == "every":
        return f"every:{draw(st.integers(1, 5))}"
    if kind == "bern":
        return f"bern:{draw(st.sampled_from([0.1, 0.5, 0.9]))}:{draw(st.integers(0, 1000))}"
    pairs = draw(st.lists(st.tuples(st.sampled_from([0, 512, 1024]), st.integers(0, 20)), min_size=1, max_size=4))
    return "list:" + ",".join(f"({s},{k})" for s, k in pairs)


@st.composite
def injections(draw, width):
    out = []
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            point = draw(st.sampled_from(ALLOC_POINTS))
            out.append(f"fail@{point}#{draw(st.integers(1, 4))}")
        elif draw(st.integers(0, 5)) == 0:
            out.append(f"fail@bern:{draw(st.sampled_from([0.05, 0.3]))}:{draw(st.integers(0, 99))}")
        else:
            w = draw(st.sampled_from(["LB", "SC", "EC", "ANY"]))
            evs = draw(
                st.lists(st.tuples(st.sampled_from(EVENTS), st.integers(0, max(0, width - 1))), min_size=1, max_size=3)
            )
            out.append(f"@{w}#{draw(st.integers(1, 3))}: " + "; ".join(f"{e}({x})" for e, x in evs))
    return out


# Write steps of the lazy designs' write phases (spec 12.5): writes, pins, the child's sync and exit.
LAZY_STEPS = (
    "parent:all",
    "child:all",
    "parent:0-40",
    "child:500-530",
    "parent:pin:3",
    "child:pin:1-2",
    "parent:pin:513",
    "child:sync:1",
    "child:sync",
    "parent:600-700",
    "child:exit",
)
