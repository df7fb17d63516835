"""Sweeps: the YAML specification (:mod:`gpusim.jobs.sweep.spec`), its expansion into points, and the runner that writes
the Parquet dataset (:mod:`gpusim.jobs.sweep.runner`)."""
