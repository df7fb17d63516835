"""The registry of the kernel variants (spec section 3; the lazy fork designs of spec 12) and the rules that differ
between them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gpusim.kernels.flags import MACHINES, TABLE_FORKS, WP_REUSE_EXCLUSIVE, WP_REUSE_MAPCOUNT, WP_REUSE_REFCOUNT

LINUX_5_8 = "linux-5.8"
XU_V1 = "xu-v1"
XU_V1_OLEG = "xu-v1-oleg"
LINUX_5_10 = "linux-5.10"
LINUX_6_18 = "linux-6.18"
ODF_PAPER = "odf-paper"
ODF_COWPTE = "odf-cowpte"
ASYNC_FORK = "async-fork"
DEFAULT_VARIANT = LINUX_6_18


@dataclass(frozen=True)
class Variant:
    """One variant as data: its rules, and the ``copy_pte_range`` state machine it runs (``machine``: the name of
    the variant that introduced it, one of :data:`gpusim.kernels.flags.MACHINES`). The state machines live in
    :mod:`gpusim.engines.reference` (and, compiled, in :mod:`gpusim.kernels.slowpath`); everything else reads these
    fields, the kernels through :func:`gpusim.engines.fast.variant_params`. A variant that recombines rules is one more
    record (``docs/adding-a-variant.md``)."""

    name: str
    summary: str
    machine: str  # the copy_pte_range state machine (spec 3.1-3.5) it runs
    early_cow: bool  # copies maybe-pinned pages at fork
    anon_exclusive: bool  # PageAnonExclusive rules: only exclusive anon pages are copied early, a share
    #                            clears the flag, copies are exclusive, swap entries carry the exclusive bit, and
    #                            read-exclusive migration entries exist
    xu_protocol: bool  # the xu series' BREAK_COW -> page_duplicate (copy outside the locks) -> install
    can_oops: bool  # a stale state can crash the kernel (xu-v1's stale BREAK_COW)
    stale_swap_entry: bool  # a pending swap-count continuation can be retried for a stale entry
    hwpoison_fails_copy: bool  # an early copy of a poisoned page fails the fork (-EHWPOISON)
    large_pin_order: int  # folios of this order or more keep an exact folio-wide pincount
    install_weight: int  # progress added by an early-copy install (1 at the top of an xu pass, else 8)
    wp_reuse: int  # the write-protect fault's reuse rule (gpusim.kernels.flags.WP_REUSE_*)
    batching: bool = False  # PTEs of one large folio shared as a batch (folio_pte_batch, linux-6.18)
    table_fork: str = "copy"  # what the fork does with a whole PTE table (gpusim.kernels.flags.TABLE_FORKS; spec 12)
    compiled: bool = True  # the fast engines run its fork (False: the reference only; backend auto picks it)

    def __post_init__(self):
        if self.machine not in MACHINES:
            raise ValueError(f"variant {self.name}: unknown state machine '{self.machine}' (known: {MACHINES})")
        if self.table_fork not in TABLE_FORKS:
            raise ValueError(f"variant {self.name}: unknown table_fork '{self.table_fork}' (known: {TABLE_FORKS})")

    @property
    def lazy(self) -> bool:
        """A lazy fork design (spec 12): page tables shared or their copy deferred."""
        return self.table_fork != "copy"

    @property
    def machine_id(self) -> int:
        """The state machine's number in the kernels (``gpusim.kernels.flags.M_*``)."""
        return MACHINES.index(self.machine)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            LINUX_5_8,
            "before the fix: pinned pages shared and write-protected like any other (the pin bug)",
            machine=LINUX_5_8,
            early_cow=False,
            anon_exclusive=False,
            xu_protocol=False,
            can_oops=False,
            stale_swap_entry=True,
            hwpoison_fails_copy=False,
            large_pin_order=2,
            install_weight=8,
            wp_reuse=WP_REUSE_MAPCOUNT,
        ),
        Variant(
            XU_V1,
            "Peter Xu's v1 patch 4/5 as posted: BREAK_COW state machine, stale BREAK_COW can oops",
            machine=XU_V1,
            early_cow=True,
            anon_exclusive=False,
            xu_protocol=True,
            can_oops=True,
            stale_swap_entry=True,
            hwpoison_fails_copy=False,
            large_pin_order=2,
            install_weight=1,
            wp_reuse=WP_REUSE_REFCOUNT,
        ),
        Variant(
            XU_V1_OLEG,
            "v1 with Oleg Nesterov's restructuring: install hoisted before the loop, no stale state",
            machine=XU_V1_OLEG,
            early_cow=True,
            anon_exclusive=False,
            xu_protocol=True,
            can_oops=False,
            stale_swap_entry=False,
            hwpoison_fails_copy=False,
            large_pin_order=2,
            install_weight=1,
            wp_reuse=WP_REUSE_REFCOUNT,
        ),
        Variant(
            LINUX_5_10,
            "merged design (70e806e4e645): one preallocated page, copy made under the locks at retry",
            machine=LINUX_5_10,
            early_cow=True,
            anon_exclusive=False,
            xu_protocol=False,
            can_oops=False,
            stale_swap_entry=False,
            hwpoison_fails_copy=False,
            large_pin_order=2,
            install_weight=8,
            wp_reuse=WP_REUSE_REFCOUNT,
        ),
        Variant(
            LINUX_6_18,
            "current design: anon-exclusive rule, MMF_HAS_PINNED, large-folio batching",
            machine=LINUX_6_18,
            early_cow=True,
            anon_exclusive=True,
            xu_protocol=False,
            can_oops=False,
            stale_swap_entry=False,
            hwpoison_fails_copy=True,
            large_pin_order=1,
            install_weight=8,
            wp_reuse=WP_REUSE_EXCLUSIVE,
            batching=True,
        ),
    )
}
# The lazy fork designs (spec 12.0): each copies, where it copies, by an earlier variant's rules.
for _base, _name, _summary, _changes in (
    (
        LINUX_5_8,
        ODF_PAPER,
        "On-Demand-Fork as in the EuroSys 2021 code: last-level tables shared, copied at the first write fault",
        {"table_fork": "share"},
    ),
    (
        LINUX_6_18,
        ODF_COWPTE,
        "COW PTE v4: tables shared, every page accounted at fork; a table with a pinned page copied as 6.18",
        {"table_fork": "share_accounted", "batching": False},  # v6.2 predates batching (n = 1)
    ),
    (
        LINUX_6_18,
        ASYNC_FORK,
        "async-fork (Anolis): PTE tables copied by the child as it starts, or first by the parent's fault",
        {"table_fork": "defer"},
    ),
):
    VARIANTS[_name] = dataclasses.replace(VARIANTS[_base], name=_name, summary=_summary, **_changes)

# the variants whose fork the fast engines (cpu, cuda) run, and those of spec 3 (every table copied at fork)
COMPILED_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.compiled)
EAGER_VARIANTS = tuple(name for name, v in VARIANTS.items() if not v.lazy)


class UnknownVariant(ValueError):
    def __init__(self, name: str):
        super().__init__(f"unknown variant '{name}' (known: {', '.join(VARIANTS)})")


def get_variant(name: str) -> Variant:
    """The variant named ``name``: UnknownVariant (a ValueError) for another string, TypeError for no string."""
    if not isinstance(name, str):
        raise TypeError(f"variant: one of {', '.join(VARIANTS)}, not {type(name).__name__} {name!r}")
    try:
        return VARIANTS[name]
    except KeyError:
        raise UnknownVariant(name) from None
