"""Compiled draws of the region generator (:mod:`gpusim.regions`): random choices keyed by position, not by the
order in which they are made.

Every draw of an item is a hash of (a key, the item's id), so the address space a generator builds does not depend
on how it is cut into chunks: a chunk of tables draws exactly what the same tables draw in a whole build. The hash
is the splitmix64 finaliser (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014),
a bijection of 64 bits with good avalanche, so distinct ids give independent-looking draws.
"""

import numpy as np
from numba import njit, prange

from gpusim.kernels import jit  # noqa: F401  (the jitable scalar functions, registered with numba)

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
UNIT = 1.0 / 9007199254740992.0  # 2**-53


@njit(inline="always")
def splitmix(key, item):
    """A 64-bit hash of ``item`` under ``key``."""
    z = key + np.uint64(item) * GOLDEN
    z = (z ^ (z >> np.uint64(30))) * M1
    z = (z ^ (z >> np.uint64(27))) * M2
    return z ^ (z >> np.uint64(31))


@njit(inline="always")
def uniform(key, item):
    """A draw in ``[0, 1)`` (53 bits) of ``item`` under ``key``."""
    return np.float64(splitmix(key, item) >> np.uint64(11)) * UNIT


@njit(parallel=True, cache=True, nogil=True)
def select_in_groups(size, k, first_id, key):
    """Exactly ``k[g]`` of the ``size[g]`` items of each group ``g`` (groups laid out one after another), chosen
    by selection sampling (Knuth, TAOCP vol. 2, 3.4.2, algorithm S: item ``i`` is taken with probability
    (still needed) / (still left), so every subset of that size is equally likely), item ``i`` of group ``g``
    drawing ``uniform(key, first_id[g] + i)``. Returns a bool array over all items."""
    G = size.shape[0]
    off = np.zeros(G + 1, np.int64)
    for g in range(G):
        off[g + 1] = off[g] + size[g]
    out = np.zeros(off[G], np.bool_)
    for g in prange(G):
        n = size[g]
        need = k[g]
        base = off[g]
        if need >= n:
            for i in range(n):
                out[base + i] = True
            continue
        for i in range(n):
            if need == 0:
                break
            if uniform(key, first_id[g] + i) * (n - i) < need:
                out[base + i] = True
                need -= 1
    return out


@njit(parallel=True, cache=True, nogil=True)
def uniform_ints(ids, key, hi):
    """For each id, an integer in ``1 .. hi`` drawn under ``key`` (int64)."""
    out = np.empty(ids.shape[0], np.int64)
    for i in prange(ids.shape[0]):
        out[i] = 1 + np.int64(splitmix(key, ids[i]) % np.uint64(hi))
    return out
