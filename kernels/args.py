"""The arguments of the fast kernels, described once.

A launch of ``fork_tables`` (CPU: :mod:`gpusim.kernels.cpu`; CUDA: :mod:`gpusim.kernels.cuda`) takes a few scalars
and five groups, each a namedtuple: numba passes named tuples of arrays to compiled CPU functions and to
CUDA kernels alike, and the kernels read their fields by name (``tab.ppte``, ``mem.folio_refcount``).

* :class:`Tables`: one row per page table of the launch (a launch may hold the tables of several forks);
* :class:`Calls`: one row per ``copy_pte_range`` call, in address order (a table's calls are ``row_lo .. row_hi``);
* :class:`MemoryArrays`: the memory arrays the kernels read and write (dtypes of :data:`MEMORY_FIELDS`);
* :class:`OracleParams`: the lock-break oracle (spec section 4);
* :class:`VariantParams`: the variant's rules (spec section 3), scalars read by field (``vp.anon_exclusive``).

:data:`FIELDS` lists every field with its dtype, dimensions and whether a kernel writes it. From it come the
namedtuple types, the numba types of the CUDA kernels' parameters (:func:`signature`, which compiles them to PTX
without a GPU), and the arrays a launch on host arrays copies back (:func:`written`).
"""

from collections import namedtuple

import numpy as np
from numba import types
from numba.np.numpy_support import from_dtype

from gpusim.kernels.fields import (
    GEN_OUT_FIELDS,
    GEN_ROW_FIELDS,
    GEN_VMA_FIELDS,
    MEMORY_FIELDS,
    WRITE_MEMORY_FIELDS,
    WRITE_PROC_FIELDS,
    WRITE_SCRATCH_FIELDS,
)

_PTE = np.dtype(np.uint64)
_I64 = np.dtype(np.int64)
_U64 = np.dtype(np.uint64)
_B = np.dtype(np.bool_)

# (group, field, dtype, dimensions (0: a scalar), written by a kernel)
FIELDS = (
    ("tables", "table_index", _I64, 1, False),  # the table's number (covers 512 * table_index ..)
    ("tables", "row_lo", _I64, 1, False),  # its calls: row_lo .. row_hi - 1
    ("tables", "row_hi", _I64, 1, False),
    ("tables", "ppte", _PTE, 2, True),  # the parent's entries (write protection, downgrades)
    ("tables", "cpte", _PTE, 2, True),  # the child's entries
    ("tables", "cexists", _B, 1, True),  # the child's table was allocated
    ("tables", "has_pinned", _B, 1, False),  # the forking mm's has_pinned / MMF_HAS_PINNED
    ("tables", "fork_seq", _I64, 1, False),  # the fork's number (keys the oracle)
    ("calls", "start", _I64, 1, False),  # the call's range [start, end)
    ("calls", "end", _I64, 1, False),
    ("calls", "vmaflags", _I64, 1, False),  # VM_* flags of the call's VMA
    ("calls", "first", _B, 1, False),  # the first call of its table (allocates the child's table)
    *(
        (
            "memory",
            name,
            MEMORY_FIELDS[name][0],
            1,
            name in ("folio_refcount", "page_mapcount", "page_flags", "swap_count"),
        )
        for name in (
            "page_folio",
            "folio_order",
            "folio_refcount",
            "folio_pincount",
            "folio_true_pins",
            "folio_flags",
            "folio_first_pfn",
            "page_mapcount",
            "page_flags",
            "swap_count",
            "swap_levels",
        )
    ),
    # the variant's rules (gpusim.model.variants.Variant): no kernel knows a variant otherwise
    ("variant", "machine", _I64, 0, False),  # copy_pte_range's state machine in the slow path (M_* of flags)
    ("variant", "early_cow", _B, 0, False),  # maybe-pinned pages are copied at fork
    ("variant", "anon_exclusive", _B, 0, False),  # PageAnonExclusive: only exclusive anon pages copied early,
    #                                               a share clears it, swap entries and copies carry it
    ("variant", "batching", _B, 0, False),  # PTEs of one large folio shared as a batch (folio_pte_batch)
    ("variant", "large_order", _I64, 0, False),  # folios of this order or more keep an exact pincount
    ("oracle", "mode", _I64, 0, False),  # NB_* of gpusim.kernels.rules
    ("oracle", "every", _I64, 0, False),  # every:N
    ("oracle", "p_q32", _U64, 0, False),  # bern:P as P * 2**32
    ("oracle", "seed", _U64, 0, False),
    ("oracle", "list_cs", _I64, 1, False),  # list:(s, k),...
    ("oracle", "list_k", _I64, 1, False),
)

GROUPS = ("variant", "tables", "calls", "memory", "oracle")
VariantParams = namedtuple("VariantParams", [f for g, f, *_ in FIELDS if g == "variant"])
Tables = namedtuple("Tables", [f for g, f, *_ in FIELDS if g == "tables"])
Calls = namedtuple("Calls", [f for g, f, *_ in FIELDS if g == "calls"])
MemoryArrays = namedtuple("MemoryArrays", [f for g, f, *_ in FIELDS if g == "memory"])
OracleParams = namedtuple("OracleParams", [f for g, f, *_ in FIELDS if g == "oracle"])
GROUP_TYPES = {
    "variant": VariantParams,
    "tables": Tables,
    "calls": Calls,
    "memory": MemoryArrays,
    "oracle": OracleParams,
}

# The slow path's own arrays (gpusim.kernels.slowpath; CPU only for now): what an early copy or a THP touches beyond
# the memory group (page contents, PMD mapcounts), the logs of early copies, which the invariant checker reads, and
# a row per item (table or THP) of the slow path: its allocator's and logs' state (ST_*) and the xu series' struct
# copy_mm_data of the call being copied (an item's own function sees its rows as ``state`` and ``copy_mm_data``).
# The memory group's arrays are passed with room for the pages the slow path allocates.
SLOW_FIELDS = (
    ("page_content", _U64, 1),
    ("folio_pmd_mapcount", np.dtype(np.int32), 1),
    ("state", _I64, 2),  # a row per item: ST_* of gpusim.kernels.slowpath
    ("installs", _I64, 2),  # address, pfn, source pfn, VMA flags
    ("duplicates", _I64, 2),  # pfn, source pfn
    ("copy_mm_data", _I64, 2),  # a row per item: D_* of gpusim.kernels.slowpath
)
SlowArrays = namedtuple("SlowArrays", [f for f, _, _ in SLOW_FIELDS])

# The PMD-mapped THPs the slow path copies, a row each (a THP's table has its own row of a second Tables group,
# filled when the PMD is split): the parent's PMD (write-protected when shared), the child's, and what was done
# (gpusim.kernels.slowpath.HUGE_*).
HUGE_FIELDS = (("pmd", _U64, 1), ("child_pmd", _U64, 1), ("state", np.dtype(np.int8), 1))
HugeArrays = namedtuple("HugeArrays", [f for f, _, _ in HUGE_FIELDS])

# The write phase's groups (gpusim.kernels.writes; fields and dtypes in gpusim.kernels.fields): a writer, the memory,
# one step's scratch.
Proc = namedtuple("Proc", list(WRITE_PROC_FIELDS))
WMem = namedtuple("WMem", list(WRITE_MEMORY_FIELDS))
Scratch = namedtuple("Scratch", list(WRITE_SCRATCH_FIELDS))
# The region generator's groups (gpusim.kernels.generate): the space's VMAs, a chunk's table rows, what it builds.
GenVmas = namedtuple("GenVmas", list(GEN_VMA_FIELDS))
GenRows = namedtuple("GenRows", list(GEN_ROW_FIELDS))
GenOut = namedtuple("GenOut", list(GEN_OUT_FIELDS))

# The other parameters of a launch, in order: (name, dtype, dimensions); the groups come after ``rows``, the outputs
# after the groups (``walk``: CUDA only, tables left to its second kernel).
SCALARS = (("mode", _I64, 0), ("rows", _I64, 1))
OUTPUTS = (("needs_slow", _B, 1), ("walk", _B, 1), ("counts", _I64, 2))


def memory_arrays(arrays: dict) -> MemoryArrays:
    """The kernels' memory group from arrays by field name (a :class:`gpusim.model.state.Memory`'s, or any dict)."""
    return MemoryArrays(**{f: arrays[f] for f in MemoryArrays._fields})


def written(group) -> list[str]:
    """The fields of a group (an instance) that a kernel writes."""
    kind = next(g for g, t in GROUP_TYPES.items() if isinstance(group, t))
    return [f for g, f, _, _, w in FIELDS if g == kind and w]


def _numba_type(dtype, ndim):
    return from_dtype(dtype) if ndim == 0 else types.Array(from_dtype(dtype), ndim, "C")


def _group_type(name):
    if name == "slow":
        return types.NamedTuple([_numba_type(dt, nd) for _, dt, nd in SLOW_FIELDS], SlowArrays)
    if name == "huge":
        return types.NamedTuple([_numba_type(dt, nd) for _, dt, nd in HUGE_FIELDS], HugeArrays)
    return types.NamedTuple([_numba_type(dt, nd) for g, _, dt, nd, _ in FIELDS if g == name], GROUP_TYPES[name])


def signature(outputs=("needs_slow", "walk", "counts")):
    """The numba types of a kernel's parameters: the scalars, the five groups, then ``outputs``."""
    out = {name: _numba_type(dt, nd) for name, dt, nd in OUTPUTS}
    return (
        *[_numba_type(dt, nd) for _, dt, nd in SCALARS],
        *[_group_type(name) for name in GROUPS],
        *[out[name] for name in outputs],
    )


def slow_signatures():
    """The numba types of the parameters of the slow path's CUDA kernels (:mod:`gpusim.kernels.cuda`), by kernel."""
    i64, b1 = _numba_type(_I64, 1), _numba_type(_B, 1)
    tab, huge, calls, mem = (_group_type(g) for g in ("tables", "huge", "calls", "memory"))
    plan = (i64, b1, tab, huge, calls, mem, i64, i64, i64, b1, b1)
    scalar = _numba_type(_I64, 0)
    items = (scalar, i64, b1, _group_type("variant"), tab, tab, huge, calls, mem, _group_type("oracle"))
    items += (_group_type("slow"),)
    items += (_numba_type(_I64, 2), i64, i64)
    return {"slow_claim_kernel": plan, "slow_check_kernel": plan, "slow_items_kernel": items}


def write_signatures():
    """The numba types of the parameters of the write phase's CUDA kernels (:mod:`gpusim.kernels.cuda`), by kernel."""
    m = types.NamedTuple([_numba_type(MEMORY_FIELDS[f][0], 1) for f in WRITE_MEMORY_FIELDS], WMem)
    pr, s = _fields_type(WRITE_PROC_FIELDS, Proc), _fields_type(WRITE_SCRATCH_FIELDS, Scratch)
    i64, b = _numba_type(_I64, 0), _numba_type(_B, 0)
    return {
        "write_plan_kernel": (m, pr, s, i64, i64, i64, b),
        "write_run_kernel": (b, m, pr, s, i64, i64, i64, b, i64, b),
        "write_fixup_kernel": (b, m, pr, s, i64, i64, i64, i64, b),
        "write_gaps_kernel": (pr, i64, i64, i64, i64, _numba_type(_I64, 1), _numba_type(_B, 1)),
        "write_exit_kernel": (m, pr),
    }


def _fields_type(fields: dict, cls):
    """The numba type of a group described by ``fields`` ({name: (dtype, dimensions)}), as the namedtuple ``cls``."""
    return types.NamedTuple([_numba_type(dt, nd) for dt, nd in fields.values()], cls)


def generate_signature():
    """The numba types of the parameters of the region generator's CUDA kernel (:mod:`gpusim.kernels.cuda`)."""
    i64 = _numba_type(_I64, 0)
    groups = (
        _fields_type(GEN_VMA_FIELDS, GenVmas),
        _fields_type(GEN_ROW_FIELDS, GenRows),
        _fields_type(GEN_OUT_FIELDS, GenOut),
    )
    return (_numba_type(_B, 0), i64, i64, i64, *groups)
