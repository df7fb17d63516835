"""Rows of a sweep's dataset as plain columns, and short labels of their points, for summaries and figures."""

from __future__ import annotations

import json

from gpusim.base.units import human_size
from gpusim.inputs.workloads import GENERATED_KINDS
from gpusim.jobs.sweep.spec import AnonWorkload


def columns(table, drop_failed: bool = False) -> dict[str, list]:
    """The rows of a results table as ``{column: values}``; with ``drop_failed``, the rows of forks that ran only
    (failed points, ``outcome = "error"``, and rows without a latency are left out)."""
    d = {c: table.column(c).to_pylist() for c in table.column_names}
    if not drop_failed:
        return d
    keep = [i for i, o in enumerate(d["outcome"]) if o != "error" and d["latency_ns"][i] is not None]
    return {c: [v[i] for i in keep] for c, v in d.items()}


def workload_label(d: dict, i: int, skip: tuple = ("fork.variant",)) -> str:
    """A short label of row ``i`` of :func:`columns`: the parameters that vary across the rows, as this row has
    them (unset ones left out); where the sweep mixes workload kinds, a generated workload also shows its size and
    non-default keys."""
    params = [c for c in d if (c.startswith("workload.") or c.startswith("fork.")) and c not in skip]
    varying = [c for c in params if len({str(v) for v in d[c] if v is not None}) > 1]
    kinds = d.get("workload.kind", [None] * (i + 1))
    if len(set(kinds)) > 1 and kinds[i] in GENERATED_KINDS:
        defaults = {
            f"workload.{k}": json.dumps(f.default) if isinstance(f.default, list) else f.default
            for k, f in AnonWorkload.model_fields.items()
        }
        varying += [
            c
            for c in params
            if c not in varying
            and c in defaults
            and d[c][i] is not None
            and (c == "workload.size" or d[c][i] != defaults[c])
        ]
    parts = []
    for c in varying:
        v = d[c][i]
        if v is None or (c == "workload.kind" and len(varying) > 1):
            continue
        name = c.split(".", 1)[1]
        if name == "size" and isinstance(v, (int, float)):
            parts.append(human_size(v))
        elif name in ("scenario", "layout"):
            parts.append(f"{name} {v}")
        else:
            parts.append(f"{name.replace('_fraction', '')}={v}")
    return ", ".join(parts) or "all"
