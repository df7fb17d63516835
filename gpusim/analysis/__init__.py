"""What is read from a fork's result: :mod:`~gpusim.analysis.invariants` (spec section 6 checked) and
:mod:`~gpusim.analysis.costmodel` (event counts priced by a cost profile; the shipped profiles in ``profiles/``)."""
