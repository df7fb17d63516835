"""The compiled pass of the digest's lane sums (:func:`gpusim.kernels.digest.lane_sums`): one read of a host array,
in parallel blocks, the same sums as the array form."""

import numpy as np
from numba import njit, prange

from gpusim.kernels import flags as F
from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)
from gpusim.kernels.flags import MOVE_ENTRIES, MOVE_ROWS
from gpusim.kernels.pte import pte_moved

POSITION = np.uint64(F.DIGEST_POSITION)
MULTIPLY = tuple(np.uint64(m) for m in F.DIGEST_MULTIPLY)
SEEDS = tuple(np.uint64(s) for s in F.DIGEST_SEEDS)
BLOCK = F.DIGEST_BLOCK


@njit(inline="always")
def mix(v, key, mult):
    z = (v ^ key) * mult
    return z ^ (z >> np.uint64(29))


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
