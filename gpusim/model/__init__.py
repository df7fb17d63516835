"""The state model (spec sections 1 and 4): the kernel's state as struct-of-arrays and what is derived from it.

:mod:`~gpusim.model.state` (``AddressSpace``, ``MM``, ``Memory``; the digest), :mod:`~gpusim.model.decode` (the
entry encoding read back), :mod:`~gpusim.model.builder` (one builder of spaces for every input kind),
:mod:`~gpusim.model.variants` (the variants as data), :mod:`~gpusim.model.plan` (a fork's calls, one per table),
:mod:`~gpusim.model.oracle` (the lock-break oracle and injections) and :mod:`~gpusim.model.result` (what every engine
returns).
"""
