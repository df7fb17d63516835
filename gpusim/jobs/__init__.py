"""The user's jobs: :mod:`~gpusim.jobs.sweep` (YAML sweeps to a Parquet dataset, locally or on Ray),
:mod:`~gpusim.jobs.host` (the real kernel measured, calibration, process capture), :mod:`~gpusim.jobs.bench` and
:mod:`~gpusim.jobs.gpubench` (the simulator's speed) and :mod:`~gpusim.jobs.plots`."""
