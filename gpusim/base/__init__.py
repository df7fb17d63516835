"""The base layer: what every other layer may use and that models nothing of the kernel.

:mod:`~gpusim.base.backend` (the one seam where numpy or CuPy and the CPU, CUDA or cudasim kernels are chosen),
:mod:`~gpusim.base.checkargs` (the Python API's argument checks), :mod:`~gpusim.base.units` (sizes with units),
:mod:`~gpusim.base.yamlerr` (YAML with ``FILE:LINE: key`` errors) and :mod:`~gpusim.base.machine` (the memory of the
machine the simulator runs on, and what a fork of a given size needs of it).
"""
