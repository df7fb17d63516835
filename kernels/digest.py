"""The lane sums of the canonical digest (:func:`gpusim.model.state.digest`), in their array form (numpy or CuPy);
the compiled pass that reads a large host array once, in parallel, is :mod:`gpusim.kernels.lanes` (loaded on use).

Each element ``v`` at position ``i`` of a field contributes ``mix(v, i)`` to two 64-bit sums (128 bits in all),
one lane per constant. ``mix`` is a bijection of ``v`` for a fixed position and seed (xor with a key of the
position, multiply by an odd constant, xor-shift), so changing any single element always changes both sums; and
the sums do not depend on how the positions are split into blocks, threads or chunks. Elements are widened to 64
bits by their value (signed ones sign-extended), so the sums depend on the model's dtype only through the values.
"""

import numpy as np

from gpusim.kernels import flags as F
from gpusim.kernels.flags import MOVE_ENTRIES, MOVE_NONE, MOVE_ROWS

POSITION = np.uint64(F.DIGEST_POSITION)
MULTIPLY = tuple(np.uint64(m) for m in F.DIGEST_MULTIPLY)
SEEDS = tuple(np.uint64(s) for s in F.DIGEST_SEEDS)


def lane_sums(a, first, seed, move=None, xp=np):
    """The two lane sums (uint64) of the flat array ``a`` whose first element is at position ``first``, under
    ``seed``. ``move`` hashes each value moved from one numbering of the memory's rows to another (a chunk's rows
    placed in the whole space: see :mod:`gpusim.stream`): ``("rows", split, below, above)``, row numbers ``v``
    hashed as ``v + below`` under ``split`` and ``v + above`` from it on; ``("entries", page_off, slot_off, split,
    above)``, page-table entries moved by :func:`gpusim.kernels.pte.pte_moved`. ``xp``: the array module of ``a``
    (CuPy sums a device array where it is, in the array form; ``entries`` moves are the host's only)."""
    mode = MOVE_NONE if move is None else {"rows": MOVE_ROWS, "entries": MOVE_ENTRIES}[move[0]]
    m = np.zeros(4, np.int64)
    if move is not None:
        m[: len(move) - 1] = move[1:]
    if xp is np and (a.shape[0] >= F.COMPILED_FROM or mode == MOVE_ENTRIES):  # else the array form
        from gpusim.kernels.lanes import lane_sums_compiled

        return lane_sums_compiled(a, first, seed, mode, m)  # (uint64 wraps in both)
    v = a.astype(np.int64)
    if mode == MOVE_ROWS:
        v = xp.where(v < m[0], v + m[1], v + m[2])
    v = v.view(np.uint64)
    p = xp.arange(first, first + a.shape[0], dtype=np.uint64) * POSITION
    out = []
    for k, mult in zip(SEEDS, MULTIPLY):
        z = (v ^ (p ^ (seed ^ k))) * mult
        out.append(xp.bitwise_xor(z, z >> np.uint64(29)).sum(dtype=np.uint64))
    return out[0], out[1]
