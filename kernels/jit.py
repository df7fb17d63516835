"""numba's side of :mod:`gpusim.kernels.jitable`: importing this module makes every scalar function marked
``jitable`` callable from compiled code (``register_jitable``), and gives :func:`gpusim.kernels.pte.as_u64` its
compiled meaning (a cast to uint64). Every kernel module that compiles imports it first."""

import numpy as np
from numba.extending import overload, register_jitable

from gpusim.kernels import jitable, pte


@overload(pte.as_u64)
def _ol_as_u64(x):
    return lambda x: np.uint64(x)


jitable.on_register(register_jitable)
