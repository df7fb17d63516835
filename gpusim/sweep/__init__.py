"""Sweeps: the YAML specification (:mod:`gpusim.sweep.spec`), its expansion into points, and the runner that writes
the Parquet dataset (:mod:`gpusim.sweep.runner`)."""
