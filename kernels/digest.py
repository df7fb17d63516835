"""The compiled pass of the canonical digest (:func:`gpusim.state.digest`): one read of each array, in parallel.

Each element ``v`` at position ``i`` of a field contributes ``mix(v, i)`` to two 64-bit sums (128 bits in all),
one lane per constant. ``mix`` is a bijection of ``v`` for a fixed position and seed (xor with a key of the
position, multiply by an odd constant, xor-shift), so changing any single element always changes both sums; and
the sums do not depend on how the positions are split into blocks, threads or chunks. Elements are widened to 64
bits by their value (signed ones sign-extended), so the sums depend on the model's dtype only through the values.
"""

import numpy as np
from numba import njit, prange

from gpusim.kernels import scan

# Odd 64-bit constants (the golden ratio and the splitmix64 multipliers).
POSITION = np.uint64(0x9E3779B97F4A7C15)
MULTIPLY = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
SEEDS = (np.uint64(0x243F6A8885A308D3), np.uint64(0x13198A2E03707344))
BLOCK = 1 << 16


@njit(inline="always")
def mix(v, key, mult):
    z = (v ^ key) * mult
    return z ^ (z >> np.uint64(29))


NO_SPLIT = 1 << 62


def lane_sums(a, first, seed, split=NO_SPLIT, below=0, above=0):
    """The two lane sums (uint64) of the flat array ``a`` whose first element is at position ``first``, under
    ``seed``. With ``split``, each value ``v`` is hashed as ``v + below`` if ``v < split``, else ``v + above``
    (row numbers of a chunk moved to the whole space's: see :mod:`gpusim.stream`)."""
    if a.shape[0] >= scan.COMPILED_FROM:  # below it the numpy form (the same arithmetic: uint64 wraps in both)
        return lane_sums_compiled(a, first, seed, split, below, above)
    v = a.astype(np.int64)
    if split != NO_SPLIT:
        v = np.where(v < split, v + below, v + above)
    v = v.view(np.uint64)
    p = np.arange(first, first + a.shape[0], dtype=np.uint64) * POSITION
    out = []
    for k, m in zip(SEEDS, MULTIPLY):
        z = (v ^ (p ^ (seed ^ k))) * m
        out.append(np.bitwise_xor(z, z >> np.uint64(29)).sum(dtype=np.uint64))
    return out[0], out[1]


@njit(parallel=True, cache=True, nogil=True)
def lane_sums_compiled(a, first, seed, split, below, above):
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
            w = np.int64(a[i])
            v = np.uint64(w + (below if w < split else above))
            p = np.uint64(first + i) * POSITION
            t0 += mix(v, p ^ k0, MULTIPLY[0])
            t1 += mix(v, p ^ k1, MULTIPLY[1])
        s0 += t0
        s1 += t1
    return s0, s1
