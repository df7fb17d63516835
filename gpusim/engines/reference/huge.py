"""``copy_huge_pmd`` (spec 10): a PMD-mapped THP shared, or split when a pinned folio must be copied."""

from __future__ import annotations

from gpusim.engines.context import CopyFailed
from gpusim.engines.reference.common import allocate
from gpusim.engines.reference.context import CopyContext
from gpusim.kernels import pte as P
from gpusim.kernels.flags import MM_ANONPAGES, PAGE_ANON_EXCLUSIVE, PTRS_PER_TABLE

# --- spec 10: PMD-mapped THPs ----------------------------------------------------------------------------------


def copy_huge_pmd(c: CopyContext) -> str:
    """Copy the huge PMD of table ``c.t``: "share", "split" (then copy_pte_range), or "enomem"."""
    fc, m, t = c.fc, c.m, c.t
    if not allocate(c, "ptetable"):  # the table deposited with the child's PMD
        return "enomem"
    fc.counts["table.alloc"] += 1
    pmd = fc.parent.pmds[t]
    head = P.pte_pfn(pmd)
    f = m.page_folio[head]
    pinned = fc.parent.has_pinned and fc.maybe_pinned(f)
    if not fc.v.early_cow:
        copy = False
    elif fc.v.anon_exclusive:
        copy = pinned and bool(m.page_flags[head] & PAGE_ANON_EXCLUSIVE)  # folio_try_dup_anon_rmap_pmd fails
    else:
        copy = pinned and c.cow
    if copy:
        # __split_huge_pmd: the parent gets a PTE table mapping the folio's pages in order
        fc.counts["pmd.split"] += 1
        fc.trace.splits.append((t, f))
        excl = m.page_flags[head] & PAGE_ANON_EXCLUSIVE
        row = []
        for j in range(PTRS_PER_TABLE):
            m.page_mapcount[head + j] += 1
            m.page_flags[head + j] = (m.page_flags[head + j] & ~PAGE_ANON_EXCLUSIVE) | excl
            row.append(P.mk_pte(head + j, P.pte_write(pmd), P.pte_dirty(pmd), P.pte_young(pmd), False))
        m.folio_refcount[f] += PTRS_PER_TABLE - 1
        m.folio_pmd_mapcount[f] -= 1
        del fc.parent.pmds[t]
        fc.parent.tables[t] = row
        return "split"
    m.folio_refcount[f] += 1
    m.folio_pmd_mapcount[f] += 1
    fc.child.rss[MM_ANONPAGES] += PTRS_PER_TABLE
    child = P.pte_mkold(pmd)
    if c.cow:
        fc.parent.pmds[t] = P.pte_wrprotect(pmd)
        child = P.pte_wrprotect(child)
    if fc.v.anon_exclusive:
        m.page_flags[head] &= ~PAGE_ANON_EXCLUSIVE
    fc.child.pmds[t] = child
    fc.note_child_table(t)
    fc.counts["pmd.share"] += 1
    fc.trace.pmd_shares.append((t, f))
    if m.folio_true_pins[f] > 0:
        fc.counts["pin_shared"] += PTRS_PER_TABLE
    return "share"


def copy_huge_pmd_first(c: CopyContext) -> bool:
    """What ``copy_page_range`` does first for table ``c.t``: ``copy_huge_pmd`` where the parent maps it by a huge
    PMD. True when that copied it (shared); False when there is none or it was split (the PTE table is copied next).
    Raises :class:`CopyFailed` on ENOMEM."""
    c.fc.python_tables.add(c.t)
    if c.t not in c.fc.parent.pmds:
        return False
    how = copy_huge_pmd(c)
    if how == "enomem":
        raise CopyFailed(c)
    return how == "share"
