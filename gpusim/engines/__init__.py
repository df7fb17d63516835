"""The fork engines: they take a space and a variant and return a :class:`~gpusim.model.result.ForkResult`.

:mod:`~gpusim.engines.reference` (the oracle: the spec's state machines in plain Python), :mod:`~gpusim.engines.fast`
(the fast engine: the compiled kernels of a backend over every table, the compiled slow path for the tables that need
it), :mod:`~gpusim.engines.pyloop` (the Python loop: the reference's state machine over the fast engine's arrays, for
forks with injected events), :mod:`~gpusim.engines.earlycopy` (the slow path's numbering of new pages in address
order) and :mod:`~gpusim.engines.writes` (the write phase after the fork).
"""
