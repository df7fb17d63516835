"""The compiled pass of the canonical digest (:func:`gpusim.model.state.digest`): one read of each array, in parallel.

Each element ``v`` at position ``i`` of a field contributes ``mix(v, i)`` to two 64-bit sums (128 bits in all),
one lane per constant. ``mix`` is a bijection of ``v`` for a fixed position and seed (xor with a key of the
position, multiply by an odd constant, xor-shift), so changing any single element always changes both sums; and
the sums do not depend on how the positions are split into blocks, threads or chunks. Elements are widened to 64
bits by their value (signed ones sign-extended), so the sums depend on the model's dtype only through the values.
"""

import numpy as np
from numba import njit, prange

from gpusim.kernels import (
    jit,  # noqa: F401  (the jitable scalar functions, registered with numba)
    scan,
)
from gpusim.kernels.pte import pte_moved

# Odd 64-bit constants (the golden ratio and the splitmix64 multipliers).
POSITION = np.uint64(0x9E3779B97F4A7C15)
MULTIPLY = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
SEEDS = (np.uint64(0x243F6A8885A308D3), np.uint64(0x13198A2E03707344))
BLOCK = 1 << 16


@njit(inline="always")
def mix(v, key, mult):
    z = (v ^ key) * mult
    return z ^ (z >> np.uint64(29))


MOVE_NONE, MOVE_ROWS, MOVE_ENTRIES = 0, 1, 2


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
    if xp is np and (a.shape[0] >= scan.COMPILED_FROM or mode == MOVE_ENTRIES):  # else the array form
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


@njit(inline="always")
def moved(x, mode, m):
    """An element as :func:`lane_sums` hashes it (uint64)."""
    if mode == MOVE_ENTRIES:
        return pte_moved(np.uint64(x), m[0], m[1], m[2], m[3])
    w = np.int64(x)
    if mode == MOVE_ROWS:
        w += m[1] if w < m[0] else m[2]
    return np.uint64(w)


@njit(parallel=True, cache=True, nogil=True)
def lane_sums_compiled(a, first, seed, mode, m):
    """:func:`lane_sums` in one parallel pass."""
    n = a.shape[0]
    nb = (n + BLOCK - 1) // BLOCK
    s0 = np.uint64(0)
    s1 = np.uint64(0)
    k0 = seed ^ SEEDS[0]
    k1 = seed ^ SEEDS[1]
    for b in prange(nb):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        t0 = np.uint64(0)
        t1 = np.uint64(0)
        for i in range(lo, hi):
            v = moved(a[i], mode, m)
            p = np.uint64(first + i) * POSITION
            t0 += mix(v, p ^ k0, MULTIPLY[0])
            t1 += mix(v, p ^ k1, MULTIPLY[1])
        s0 += t0
        s1 += t1
    return s0, s1
