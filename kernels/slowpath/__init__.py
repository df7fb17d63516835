"""The slow paths of ``copy_pte_range`` compiled: the per-table state machines of the five variants (spec 3), the
early copies of maybe-pinned pages with their passes and restarts, and swap-count continuations, as
``register_jitable`` functions that numba compiles (``gpusim.kernels.cpu.slow_tables`` runs them over the tables
that need them: those that share no folio or swap slot with another in parallel, the others one after the other in
address order; see the last section).

Each function here is the compiled twin of the function of :mod:`gpusim.engines.reference` with the same name, step for
step, with the same counts: the reference remains the spec in code, and the differential tests hold the two equal.
What they leave out: window events and allocation-failure injections (tests of those run the reference's state
machines in the Python loop, :mod:`gpusim.engines.pyloop`), so every allocation succeeds here; and the trace, of
which only the early copies are logged (``sp.installs``, ``sp.duplicates``) for the invariant checker.

Arrays come in the groups of :mod:`gpusim.kernels.args` (``tab``, ``calls``, ``mem``, ``nb``) and
:class:`gpusim.kernels.args.SlowArrays` (``sp``: the page contents, the state of the allocator and the logs). A
function returns 0, a negative errno (``ENOMEM``, ``EAGAIN``, ``EHWPOISON``) or an oops code (``OOPS_*``, the
address in ``sp.state[ST_OOPS_ADDR]``); counts go to the table's row ``acc`` (:data:`SLOW_COUNTS`).

The modules follow the spec's sections, each beside the reference's of the same name (:mod:`gpusim.engines.reference`):
``common`` (spec 2), ``linux_5_8``, ``xu``, ``linux_5_10``, ``linux_6_18`` (spec 3.1-3.5), ``huge`` (spec 10) and
``items`` (the dispatch to a variant's state machine, and an item's walk).
"""

from gpusim.kernels.slowpath.common import (  # noqa: F401
    BREAK_COW,
    DONE,
    ENOSPC,
    NONE,
    NR_SLOW_COUNTS,
    NR_STATE,
    OOPS,
    OOPS_BAD_ENTRY,
    OOPS_CHILD_PTE_BUSY,
    OOPS_OLD_PAGE_NULL,
    OOPS_PUT_PAGE_UNDERFLOW,
    OOPS_RANGE_OVERRUN,
    R_EC,
    R_END,
    R_HWPOISON,
    R_LB,
    R_SC,
    S_ALLOC,
    S_BATCH_PTE,
    S_BATCH_REFUSED,
    S_BATCH_START,
    S_CALL,
    S_CHECK,
    S_CONT_ATOMIC,
    S_CONT_ATTACH,
    S_CONT_KERNEL,
    S_CONT_NULL,
    S_COPY_ALLOC,
    S_DEVPRIV,
    S_DUPLICATE_CALL,
    S_EXCL_CLEAR,
    S_FREE_UNUSED,
    S_INSTALL,
    S_LB,
    S_MEMCPY,
    S_MIGRATION,
    S_NONE,
    S_PASS,
    S_PIN_SHARED,
    S_PMD_SHARE,
    S_PMD_SPLIT,
    S_RECHECK,
    S_RESTART_EC,
    S_RESTART_LB,
    S_RESTART_SC,
    S_RSS,
    S_SHARE,
    S_SHARED,
    S_SPECIAL,
    S_SWAP,
    S_SWAPOFF,
    S_WRPROTECT,
    SLOW_COUNTS,
    SLOW_INDEX,
    ST_DUPLICATES,
    ST_END_FOLIO,
    ST_INSTALLS,
    ST_NEXT_FOLIO,
    ST_NEXT_PFN,
    ST_OOPS_ADDR,
    SWAP_CONT,
    add_swap_count_continuation,
    allocate_page,
    begin_pass,
    check,
    copy_content,
    copy_nonpresent_pte,
    free_unused,
    inline,
    install_copy,
    maybe_pinned,
    oops,
    put_folio,
    set_dst,
    share_one,
    share_present,
    swap_duplicate,
    window,
)
from gpusim.kernels.slowpath.huge import HUGE_SHARED, HUGE_SPLIT, HUGE_UNTOUCHED, copy_huge_pmd  # noqa: F401
from gpusim.kernels.slowpath.items import (  # noqa: F401
    CHECK,
    CLAIM,
    CLAIM_DTYPE,
    CLAIM_HI,
    CLAIM_LO,
    copy_pte_range,
    copy_table_slow,
    entry_object,
    item_objects,
    run_item,
)
from gpusim.kernels.slowpath.linux_5_8 import copy_pte_range_linux_5_8  # noqa: F401
from gpusim.kernels.slowpath.linux_5_10 import copy_present_pte_5_10, copy_pte_range_linux_5_10  # noqa: F401
from gpusim.kernels.slowpath.linux_6_18 import copy_present_ptes_6_18, copy_pte_range_linux_6_18, needs_copy  # noqa: F401
from gpusim.kernels.slowpath.xu import (  # noqa: F401
    D_ENTRY,
    D_NEW_PAGE,
    D_OLD_PAGE,
    D_OLDPTE,
    copy_one_pte,
    copy_pte_range_xu_v1,
    copy_pte_range_xu_v1_oleg,
    page_duplicate,
    pte_install_copied_page,
    wipe_copy_mm_data,
)
