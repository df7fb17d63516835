"""Page-table objects shared by several mms: the state the lazy fork designs add (spec 12.1).

In every other state of the model each mm owns its PTE tables. Under ``odf-paper`` and ``odf-cowpte`` a fork lets the
child's PMD point at the parent's table (a *table object* with a share count), and under ``async-fork`` the parent's
PMD is write-protected while the child's copy of the table is pending. The mms' own arrays keep their *logical*
entries (spec 12.1: what mm X sees at an address, ``X.pmd[t].T.entries``): two mms that share a table both hold its
512 entries in their ``pte`` rows, equal by construction (checked by invariant L1). What sharing adds is held here,
beside the mms, so that every reader of an mm (the DMA view, the digest, a snapshot) reads logical entries and only
the rules of spec 12 look further.

:class:`TableObjects` is a frozen value, as the states are: per mm (by its role, ``parent`` and ``child``), one
entry per row of that mm's ``table_index``:

* ``obj`` i64: the table object the row's PMD points at, or -1 for a table that is the mm's own and was never shared;
* ``wp`` bool: the PMD's W bit is clear (spec 12.1: "shared" in the ODF designs, "pending" in ``async-fork``);

and for the whole state ``share`` i32 (one per object: the number of PMD slots, over every mm, that point at it) and
``pending`` i64 (the parent's table numbers whose copy for the child is deferred, ``async-fork``). Objects are
numbered canonically, in the order the roles and then their tables are listed, so that equal states are equal
values whatever engine made them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TableObjects:
    roles: tuple[str, ...]
    obj: tuple[np.ndarray, ...]
    wp: tuple[np.ndarray, ...]
    share: np.ndarray
    pending: np.ndarray

    def of(self, role: str) -> tuple[np.ndarray, np.ndarray]:
        """(obj, wp) of the mm ``role``."""
        k = self.roles.index(role)
        return self.obj[k], self.wp[k]

    def as_dict(self) -> dict:
        """A summary for the JSON of ``gpusim fork``: shared tables, objects, pending tables."""
        out = {"objects": int(self.share.size), "pending": int(self.pending.size)}
        for role, o, w in zip(self.roles, self.obj, self.wp):
            out[f"{role}_shared_tables"] = int((o >= 0).sum())
            out[f"{role}_wp_pmds"] = int(w.sum())
        return out
