"""Compute kernels of gpusim, importable as ``gpusim.kernels``.

``pte`` holds the PTE/PMD encoding as plain integer functions that the reference engine calls directly and that
the fast engines compile with numba for the CPU and for CUDA. Nothing here imports CUDA.
"""
