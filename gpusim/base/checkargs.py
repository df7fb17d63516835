"""Checks of the Python API's arguments: one place that turns a wrong argument into an error naming it.

The command line reaches the engines through typer's and pydantic's checks; the Python functions
(:func:`gpusim.fork`, :func:`gpusim.fork_batch`, :func:`gpusim.workload`, :func:`gpusim.run_sweep`,
:func:`gpusim.load_results`, :func:`gpusim.parse_layout`) check theirs here. A value of the wrong type is a
``TypeError`` and a value out of range a ``ValueError``; both messages start with the argument's name and say what
is accepted. Booleans are not numbers here (``True`` is no count of tables), numpy integers are, and a number is
never wrapped or truncated into range.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import numpy as np

I64_MAX = (1 << 63) - 1


def _shown(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def integer(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int: a whole number (Python or numpy integer, not a bool) in ``lo .. hi``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: a whole number, not {_shown(value)}")
    n = int(value)
    if lo is not None and n < lo:
        raise ValueError(f"{name}: at least {lo}, not {n}")
    if hi is not None and n > hi:
        raise ValueError(f"{name}: at most {hi}, not {n}")
    return n


def optional_integer(name: str, value, lo: int | None = None, hi: int | None = None) -> int | None:
    """None, or :func:`integer`."""
    return None if value is None else integer(name, value, lo, hi)


def boolean(name: str, value) -> bool:
    """``value`` as a bool: ``True`` or ``False`` (numpy's too), nothing else."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: True or False, not {_shown(value)}")
    return bool(value)


def text(name: str, value, known=None, optional: bool = False) -> str | None:
    """``value`` as a str (None allowed with ``optional``), one of ``known`` when given."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        accepted = f"one of {', '.join(known)}" if known else "a string"
        raise TypeError(f"{name}: {accepted}, not {_shown(value)}")
    if known is not None and value not in known:
        raise ValueError(f"{name}: one of {', '.join(known)}, not '{value}'")
    return value


def path(name: str, value, optional: bool = False) -> Path | None:
    """``value`` as a Path: a str or an ``os.PathLike`` (None allowed with ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, str) and not value:
        raise ValueError(f"{name}: an empty path")
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name}: a path (str or os.PathLike), not {_shown(value)}")
    return Path(value)


def instance(name: str, value, cls: type, hint: str = ""):
    """``value`` when it is a ``cls``; else a TypeError naming ``name`` (and ``hint``: how to make one)."""
    if not isinstance(value, cls):
        raise TypeError(f"{name}: a {cls.__name__}{f' ({hint})' if hint else ''}, not {_shown(value)}")
    return value


def strings(name: str, value, what: str, also: tuple = ()) -> list:
    """A str, or a list or tuple of str (or of the types ``also``), as a list (``what`` names an item in the
    message)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name}: {what} or a list of them, not {_shown(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, (str, *also)):
            raise TypeError(f"{name}[{i}]: {what}, not {_shown(item)}")
    return list(value)


def plain(value, where: str = "value"):
    """A copy of ``value`` (mappings, lists, tuples and scalars) with numpy scalars as Python's and keys checked to
    be strings, so that it dumps as YAML; TypeError naming the place of anything else."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys are strings, not {_shown(k)}")
            out[k] = plain(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"{where}: a string, number, boolean, list or mapping, not {_shown(value)}")
