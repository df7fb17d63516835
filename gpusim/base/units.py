"""Sizes as people write them: ``64GiB`` in, ``64GiB`` out (binary units)."""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``64KiB``, ``1GiB``, ``2TiB`` (binary units; ``K``/``M``/``G``/``T`` accepted too)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?B)?\s*", text, re.I)
    if not m:
        raise ValueError(f"size '{text}' is not a number of bytes with an optional unit (KiB, MiB, GiB, TiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def human_size(n: float) -> str:
    """``n`` bytes in the largest binary unit it reaches: ``1GiB``, ``512MiB``, ``100B``."""
    for unit, k in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << k:
            return f"{n / (1 << k):g}{unit}"
    return f"{n:g}B"
