"""The arguments of the compiled kernels, described once.

Every kernel takes a few scalars and arrays and some **groups**, each a namedtuple: numba passes named tuples of
arrays to compiled CPU functions and to CUDA kernels alike, and the kernels read their fields by name
(``tab.ppte``, ``mem.folio_refcount``). :data:`~gpusim.kernels.fields.GROUP_FIELDS` describes every group, field by
field, with its dtype and dimensions (0: a scalar); :data:`KERNEL_PARAMS` every CUDA kernel's parameters in order, each
a group or an array, and which of them a launch on host arrays copies back. From these two come the namedtuple types,
the numba types of the CUDA kernels' parameters (:func:`kernel_signature`, which compiles them to PTX without a GPU),
the arguments a launcher passes by name and what it copies back (:func:`kernel_args`), and the fields of a group a fork
launch writes (:func:`written`).

The fork kernels' groups: :class:`VariantParams` (the variant's rules, spec section 3, scalars read by field),
:class:`Tables` (one row per page table of the launch, which may hold the tables of several forks), :class:`Calls`
(one row per ``copy_pte_range`` call, in address order; a table's calls are ``row_lo .. row_hi``),
:class:`MemoryArrays` (the memory arrays the kernels read and write, dtypes of
:data:`~gpusim.kernels.fields.MEMORY_FIELDS`), :class:`OracleParams` (the lock-break oracle, spec section 4). The slow
path adds :class:`SlowArrays` and :class:`HugeArrays`; the write phase :class:`Proc`, :class:`WMem`, :class:`Scratch`;
the region generator :class:`GenVmas`, :class:`GenRows`, :class:`GenOut`.
"""

from collections import namedtuple

import numpy as np
from numba import types
from numba.np.numpy_support import from_dtype

from gpusim.kernels.fields import GROUP_FIELDS

_I64 = np.dtype(np.int64)
_I32 = np.dtype(np.int32)
_B = np.dtype(np.bool_)


# The fields of the fork kernels' groups a launch writes: what a launch on host arrays copies back.
WRITTEN = {
    "tables": ("ppte", "cpte", "cexists"),
    "memory": ("folio_refcount", "page_mapcount", "page_flags", "swap_count"),
}

VariantParams = namedtuple("VariantParams", list(GROUP_FIELDS["variant"]))
Tables = namedtuple("Tables", list(GROUP_FIELDS["tables"]))
Calls = namedtuple("Calls", list(GROUP_FIELDS["calls"]))
MemoryArrays = namedtuple("MemoryArrays", list(GROUP_FIELDS["memory"]))
OracleParams = namedtuple("OracleParams", list(GROUP_FIELDS["oracle"]))
SlowArrays = namedtuple("SlowArrays", list(GROUP_FIELDS["slow"]))
HugeArrays = namedtuple("HugeArrays", list(GROUP_FIELDS["huge"]))
Proc = namedtuple("Proc", list(GROUP_FIELDS["proc"]))
WMem = namedtuple("WMem", list(GROUP_FIELDS["wmem"]))
Scratch = namedtuple("Scratch", list(GROUP_FIELDS["scratch"]))
EpisodeWrites = namedtuple("EpisodeWrites", list(GROUP_FIELDS["episode_writes"]))
GenVmas = namedtuple("GenVmas", list(GROUP_FIELDS["gen_vmas"]))
GenRows = namedtuple("GenRows", list(GROUP_FIELDS["gen_rows"]))
GenOut = namedtuple("GenOut", list(GROUP_FIELDS["gen_out"]))
GROUP_TYPES = {
    "variant": VariantParams,
    "tables": Tables,
    "calls": Calls,
    "memory": MemoryArrays,
    "oracle": OracleParams,
    "slow": SlowArrays,
    "huge": HugeArrays,
    "proc": Proc,
    "wmem": WMem,
    "scratch": Scratch,
    "episode_writes": EpisodeWrites,
    "gen_vmas": GenVmas,
    "gen_rows": GenRows,
    "gen_out": GenOut,
}
assert all(tuple(GROUP_FIELDS[g]) == t._fields for g, t in GROUP_TYPES.items())

# Each CUDA kernel's parameters in order: (name, a group's name or (dtype, dimensions), copied back after a launch
# on host arrays). A launcher passes them by name (:func:`kernel_args`); the leading ones it varies between launches
# (``serial``) it passes itself.
_BACK = True
_FORK = (
    ("mode", (_I64, 0)),
    ("rows", (_I64, 1)),
    ("vp", "variant"),
    ("tab", "tables"),
    ("calls", "calls"),
    ("mem", "memory"),
    ("nb", "oracle"),
    ("needs_slow", (_B, 1), _BACK),
    ("walk", (_B, 1)),  # tables left to the walk kernel
    ("counts", (_I64, 2), _BACK),
)
_SLOW_PLAN = (
    ("order", (_I64, 1)),
    ("maybe", (_B, 1)),
    ("tab", "tables"),
    ("huge", "huge"),
    ("calls", "calls"),
    ("mem", "memory"),
    ("lo", (_I32, 1)),  # the claims (gpusim.kernels.slowpath.items.CLAIM_DTYPE)
    ("hi", (_I32, 1)),
    ("bounds", (_I64, 1), _BACK),
    ("claimed", (_B, 1)),
    ("dependent", (_B, 1), _BACK),
)
KERNEL_PARAMS = {
    "fork_tables_kernel": _FORK,
    "walk_tables_kernel": _FORK,
    "slow_claim_kernel": _SLOW_PLAN,
    "slow_check_kernel": _SLOW_PLAN,
    "slow_items_kernel": (
        ("serial", (_I64, 0)),
        ("order", (_I64, 1)),
        ("dependent", (_B, 1)),
        ("vp", "variant"),
        ("tab", "tables", _BACK),
        ("htab", "tables", _BACK),
        ("huge", "huge", _BACK),
        ("calls", "calls"),
        ("mem", "memory", _BACK),
        ("nb", "oracle"),
        ("sp", "slow", _BACK),
        ("counts", (_I64, 2), _BACK),
        ("status", (_I64, 1), _BACK),
        ("call", (_I64, 1), _BACK),
    ),
    "write_plan_kernel": (
        ("m", "wmem"),
        ("pr", "proc"),
        ("s", "scratch", _BACK),
        ("r0", (_I64, 0)),
        ("lo", (_I64, 0)),
        ("hi", (_I64, 0)),
        ("every", (_B, 0)),
    ),
    "write_run_kernel": (
        ("serial", (_B, 0)),
        ("m", "wmem", _BACK),
        ("pr", "proc", _BACK),
        ("s", "scratch", _BACK),
        ("r0", (_I64, 0)),
        ("lo", (_I64, 0)),
        ("hi", (_I64, 0)),
        ("every", (_B, 0)),
        ("rule", (_I64, 0)),
        ("anon_exclusive", (_B, 0)),
    ),
    "write_fixup_kernel": (
        ("serial", (_B, 0)),
        ("m", "wmem", _BACK),
        ("pr", "proc", _BACK),
        ("s", "scratch"),
        ("r0", (_I64, 0)),
        ("pages0", (_I64, 0)),
        ("folios0", (_I64, 0)),
        ("content0", (_I64, 0)),
        ("anon_exclusive", (_B, 0)),
    ),
    "write_gaps_kernel": (
        ("pr", "proc"),
        ("lo", (_I64, 0)),
        ("hi", (_I64, 0)),
        ("r0", (_I64, 0)),
        ("r1", (_I64, 0)),
        ("counts", (_I64, 1), _BACK),
        ("ok", (_B, 1), _BACK),
    ),
    "write_exit_kernel": (("m", "wmem", _BACK), ("pr", "proc", _BACK)),
    "generate_rows_kernel": (
        ("anon_exclusive", (_B, 0)),
        ("large_order", (_I64, 0)),
        ("page_c0", (_I64, 0)),
        ("slot_c0", (_I64, 0)),
        ("v", "gen_vmas"),
        ("w", "gen_rows"),
        ("o", "gen_out", _BACK),
    ),
}


def memory_arrays(arrays: dict) -> MemoryArrays:
    """The kernels' memory group from arrays by field name (a :class:`gpusim.model.state.Memory`'s, or any dict)."""
    return MemoryArrays(**{f: arrays[f] for f in MemoryArrays._fields})


def written(group) -> list[str]:
    """The fields of a fork kernel's group (an instance) that a launch writes."""
    kind = next(g for g, t in GROUP_TYPES.items() if isinstance(group, t))
    return list(WRITTEN.get(kind, ()))


def kernel_args(kernel: str, values, lead: int = 0) -> tuple[tuple, tuple]:
    """The arguments of ``kernel`` after its first ``lead`` parameters (which the launcher passes per launch), in the
    kernel's order, taken by name from the mapping ``values`` (a launcher names its arguments as the kernel does and
    passes its ``locals()``; other names are left), and the positions among them of what a launch on host arrays
    copies back."""
    params = KERNEL_PARAMS[kernel][lead:]
    missing = [p[0] for p in params if p[0] not in values]
    if missing:
        raise TypeError(f"{kernel}: no value for {missing}")
    args = tuple(values[p[0]] for p in params)
    return args, tuple(i for i, p in enumerate(params) if len(p) > 2 and p[2])


def _numba_type(dtype, ndim):
    return from_dtype(dtype) if ndim == 0 else types.Array(from_dtype(dtype), ndim, "C")


def group_type(name: str):
    """The numba type of a group."""
    return types.NamedTuple([_numba_type(dt, nd) for dt, nd in GROUP_FIELDS[name].values()], GROUP_TYPES[name])


def kernel_signature(kernel: str) -> tuple:
    """The numba types of a CUDA kernel's parameters, in order."""
    return tuple(group_type(p[1]) if isinstance(p[1], str) else _numba_type(*p[1]) for p in KERNEL_PARAMS[kernel])
