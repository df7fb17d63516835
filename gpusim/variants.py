"""The registry of the five kernel variants (spec section 3) and the rules that differ between them."""

from __future__ import annotations

from dataclasses import dataclass

LINUX_5_8 = "linux-5.8"
XU_V1 = "xu-v1"
XU_V1_OLEG = "xu-v1-oleg"
LINUX_5_10 = "linux-5.10"
LINUX_6_18 = "linux-6.18"
DEFAULT_VARIANT = LINUX_6_18


@dataclass(frozen=True)
class Variant:
    """Static facts about one variant; the control flow itself lives in :mod:`gpusim.reference`."""

    name: str
    summary: str
    early_cow: bool            # copies maybe-pinned pages at fork
    large_pin_order: int       # folios of this order or more keep an exact folio-wide pincount
    stale_state: str           # what the variant can carry stale across passes
    install_weight: int        # progress added by an early-copy install (1 at the top of an xu pass, else 8)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant(LINUX_5_8, "before the fix: pinned pages shared and write-protected like any other (the pin bug)",
            False, 2, "swap slot", 8),
    Variant(XU_V1, "Peter Xu's v1 patch 4/5 as posted: BREAK_COW state machine, stale BREAK_COW can oops",
            True, 2, "BREAK_COW, SWAP_CONT", 1),
    Variant(XU_V1_OLEG, "v1 with Oleg Nesterov's restructuring: install hoisted before the loop, no stale state",
            True, 2, "none", 1),
    Variant(LINUX_5_10, "merged design (70e806e4e645): one preallocated page, copy made under the locks at retry",
            True, 2, "none", 8),
    Variant(LINUX_6_18, "current design: anon-exclusive rule, MMF_HAS_PINNED, large-folio batching",
            True, 1, "none", 8),
)}


class UnknownVariant(ValueError):
    def __init__(self, name: str):
        super().__init__(f"unknown variant '{name}' (known: {', '.join(VARIANTS)})")


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise UnknownVariant(name) from None
