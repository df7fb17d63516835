"""The CUDA block kernel under every launch shape gives the reference's fork (numba's simulator; on a GPU the
same shapes are checked at full size by benchmarks/gpu_check.py's ``shapes`` step)."""

import pytest
from conftest import CUDASIM_VARIANTS
from differential import compare

from gpusim.base import backend as B

# Layouts whose tables stop in different places: fast tables beside a table the host takes (a pinned page), a
# linux-6.18 batch left to the walk kernel (folio16), swap entries, empty entries; 5 tables, so that a block of
# two tables has an idle slot at the end.
LAYOUTS = [
    "normal*512 normal*100 pinned normal*411 folio16*32 swap*512 none*200 normal*312",
    "normal*300 none*212 normal*512 swap*10 normal*502 zero*512 folio16*32",
]
# (threads per table, tables per block): one thread, fewer threads than a table has calls, all the simulator takes
SHAPES = [(1, 1), (3, 2), (5, 2), (16, 1), (8, 2)]


# The shape is the launch's, the same for every variant: each shape with one of the subset's variants, in turn.
SHAPE_CASES = [(tpt, w, CUDASIM_VARIANTS[i % len(CUDASIM_VARIANTS)]) for i, (tpt, w) in enumerate(SHAPES)]


@pytest.mark.parametrize("tpt,w,variant", SHAPE_CASES)
def test_every_shape_equals_the_reference(monkeypatch, variant, tpt, w):
    K = B.kernels("cudasim")
    monkeypatch.setattr(K, "DEFAULT_SHAPE", K.Shape(tpt, w))
    for layout in LAYOUTS:
        compare(layout, variant, "never", None, "cudasim")
    compare(LAYOUTS[0], variant, "every:3", None, "cudasim")


def test_a_shape_the_block_cannot_hold_is_refused():
    K = B.kernels("cudasim")
    with pytest.raises(ValueError, match="a block holds"):
        K.Shape(K.MAX_THREADS + 1, 1)
    with pytest.raises(ValueError, match="a block holds"):
        K.Shape(1, K.MAX_TABLES_PER_BLOCK + 1)
