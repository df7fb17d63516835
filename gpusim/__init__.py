"""gpusim: a simulator of Linux fork() page-table copying across kernel variants."""

__version__ = "0.1.0"

# The public names, loaded on first use (PEP 562): `import gpusim` and the command line start without numba.
_EXPORTS = {
    "fork": "gpusim.api",
    "fork_batch": "gpusim.api",
    "fork_streamed": "gpusim.stream",
    "BACKENDS": "gpusim.base.backend",
    "parse_layout": "gpusim.inputs.layout",
    "LayoutError": "gpusim.inputs.layout",
    "COST_EVENTS": "gpusim.kernels.flags",
    "COUNT_NAMES": "gpusim.kernels.flags",
    "ForkResult": "gpusim.model.result",
    "MM": "gpusim.model.state",
    "AddressSpace": "gpusim.model.state",
    "Memory": "gpusim.model.state",
    "DEFAULT_VARIANT": "gpusim.model.variants",
    "VARIANTS": "gpusim.model.variants",
}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gpusim' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


def load_results(path):
    """A sweep's results directory as a ``pyarrow.Table`` (see :mod:`gpusim.jobs.sweep.export`)."""
    from gpusim.jobs.sweep.export import load_results as _load

    return _load(path)


def workload(kind, variant=None, seed=0, streamed=False, **params):
    """The address space of a workload (``gpusim fork --workload``; see :func:`gpusim.jobs.sweep.pyapi.workload`)."""
    from gpusim.jobs.sweep.pyapi import workload as _workload
    from gpusim.model.variants import DEFAULT_VARIANT

    return _workload(kind, DEFAULT_VARIANT if variant is None else variant, seed, streamed, **params)


def run_sweep(spec_or_path, out=None, executor="local", workers=None, backend=None, verify=False, address=None):
    """Run a sweep as ``gpusim sweep`` does and return its dataset as a ``pyarrow.Table`` (see
    :func:`gpusim.jobs.sweep.pyapi.run_sweep`)."""
    from gpusim.jobs.sweep.pyapi import run_sweep as _run

    return _run(spec_or_path, out, executor, workers, backend, verify, address)


def load_profile(name_or_path=None):
    """A cost profile by shipped name or path (see :mod:`gpusim.analysis.costmodel`)."""
    from gpusim.analysis.costmodel import load_profile as _load

    return _load(name_or_path)


__all__ = [
    "fork",
    "fork_batch",
    "fork_streamed",
    "parse_layout",
    "LayoutError",
    "ForkResult",
    "AddressSpace",
    "MM",
    "Memory",
    "VARIANTS",
    "DEFAULT_VARIANT",
    "BACKENDS",
    "COST_EVENTS",
    "COUNT_NAMES",
    "load_results",
    "load_profile",
    "workload",
    "run_sweep",
    "__version__",
]
