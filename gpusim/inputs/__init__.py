"""Inputs: the ways an address space is made.

:mod:`~gpusim.inputs.layout` (the spec's layout notation), :mod:`~gpusim.inputs.catalogue` (the spec's scenario
catalogue in that notation), :mod:`~gpusim.inputs.regions` (generated regions, chunk by chunk and compiled),
:mod:`~gpusim.inputs.snapshot` (a captured process's Parquet snapshot) and :mod:`~gpusim.inputs.workloads` (the
named workloads that map a workload spec onto one of them).
"""
