"""Mutation check of the compiled rules: each rule of ``kernels/rules.py`` and ``kernels/folio.py`` broken in turn,
and the tests that must notice it run against the broken copy.

Usage: python benchmarks/mutate_rules.py [--only NAME ...] [--timeout S]

Each mutation changes one rule the way a plausible bug would (an off-by-one, a lost condition, the unsafe direction
of a routing rule: a table kept on the fast path that needs the slow one). The check runs in a throw-away git
worktree of HEAD (the repository itself is never edited), with numba's JIT disabled so that nothing is compiled (the
jitable functions run as Python, on the CPU engine and in the reference alike), over the scenario catalogue, the
differential tests on the CPU engine and the write phase's tests. A mutation is *caught* when a test fails.
Prints one line per mutation and exits 1 if any survived (a rule no test pins down).

Some rules are shared by the reference and the compiled engines (the write-fault reuse rules, the pin test): a
differential test cannot see a change to them; the spec's expected values (the scenario tables) must.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_scenarios.py", "tests/test_engines.py", "tests/test_writes.py", "tests/test_kernels.py"]
SELECT = "not cudasim and not cuda and not ptx"

# (name, file, text, mutated text): each text occurs once in its file
MUTATIONS = (
    ("share_child_pte: the child's entry stays young", "kernels/rules.py", "child = pte_mkold(first)", "child = first"),
    ("share_child_pte: clean where private", "kernels/rules.py", "    if vm_shared:\n", "    if not vm_shared:\n"),
    (
        "nonpresent_parent: swap entry keeps its exclusive bit",
        "kernels/rules.py",
        "return as_u64(pte_swp_clear_exclusive(v) if anon_exclusive else v)",
        "return as_u64(v)",
    ),
    (
        "nonpresent_parent: writable migration entry not downgraded",
        "kernels/rules.py",
        "return as_u64(make_readable_migration_entry(v))",
        "return as_u64(v)",
    ),
    (
        "nonpresent_parent: writable device-private entry not downgraded",
        "kernels/rules.py",
        "return as_u64(make_readable_device_private_entry(v))",
        "return as_u64(v)",
    ),
    (
        "nonpresent_child: child's swap entry exclusive",
        "kernels/rules.py",
        "        return as_u64(pte_swp_clear_exclusive(v))\n    return as_u64(parent_after)",
        "        return as_u64(v)\n    return as_u64(parent_after)",
    ),
    ("lock_break every:N off by one", "kernels/rules.py", "return (k + 1) % every_n == 0", "return k % every_n == 0"),
    ("lock_break bern:P inverted", "kernels/rules.py", "< np.uint64(p_q32)", ">= np.uint64(p_q32)"),
    ("in_break_list off by one", "kernels/rules.py", "list_k[i] == k:", "list_k[i] == k + 1:"),
    (
        "small_folio_needs_slow ignores this fork's references",
        "kernels/rules.py",
        "return refcount + maxrefs + 1 >= PIN_BIAS",
        "return refcount >= PIN_BIAS",
    ),
    (
        "large_folio_needs_slow: pinned folio fast without the anon-exclusive rule",
        "kernels/rules.py",
        "    if not anon_exclusive:\n        return True",
        "    if not anon_exclusive:\n        return False",
    ),
    (
        "large_folio_needs_slow: exclusive page not seen",
        "kernels/rules.py",
        "        if page_flags[first + j] & PAGE_ANON_EXCLUSIVE:\n            return True",
        "        if page_flags[first + j] & PAGE_ANON_EXCLUSIVE:\n            return False",
    ),
    (
        "shared_exclusive_page misses a page mapped twice",
        "kernels/rules.py",
        "and page_mapcount != 1",
        "and page_mapcount > 2",
    ),
    (
        "slot_needs_slow: the fork's own references not doubled",
        "kernels/rules.py",
        "return 2 * count > swap_cap(levels)",
        "return count > swap_cap(levels)",
    ),
    (
        "wp_reuse_pte mapcount rule off by one",
        "kernels/rules.py",
        "        return count <= 1",
        "        return count <= 2",
    ),
    (
        "wp_reuse_pte refcount rule ignores the refcount",
        "kernels/rules.py",
        "return refcount == 1 and map_page == 1",
        "return map_page == 1",
    ),
    (
        "wp_reuse_pte: an exclusive page copied when shared by references",
        "kernels/rules.py",
        "    if excl_page:\n        return True",
        "    if excl_page:\n        return refcount == 1",
    ),
    (
        "wp_reuse_pte: large folio reused with extra references",
        "kernels/rules.py",
        "large_map == refcount",
        "large_map <= refcount",
    ),
    (
        "wp_reuse_pmd: exclusive rule needs the exclusive bit",
        "kernels/rules.py",
        "return excl_head or refcount == 1",
        "return excl_head",
    ),
    (
        "wp_reuse_pmd: PMD mappings not counted",
        "kernels/rules.py",
        "return map_max + pmdmap <= 1",
        "return map_max <= 1",
    ),
)


def worktree(tmp: Path) -> Path:
    """A worktree of HEAD where ``gpusim.kernels`` resolves to its own ``kernels/`` on ``PYTHONPATH``."""
    wt = tmp / "wt"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(wt), "HEAD"], check=True)
    (wt / "gpusim" / "kernels").symlink_to("../kernels")
    return wt


def run_tests(wt: Path, timeout: float) -> tuple[bool, str, float]:
    """(some test failed, the first failing test, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(wt), "NUMBA_DISABLE_JIT": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TESTS, "-k", SELECT]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=wt, env=env, capture_output=True, text=True, timeout=timeout)
    failed = [line.split()[1] for line in p.stdout.splitlines() if line.startswith("FAILED ")]
    return p.returncode != 0, (failed[0] if failed else p.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="mutations whose name contains one of these")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or any(o in m[0] for o in args.only)]
    survived = 0
    with tempfile.TemporaryDirectory() as tmp:
        wt = worktree(Path(tmp))
        try:
            failed, first, s = run_tests(wt, args.timeout)
            print(f"unmutated: {'FAILED ' + first if failed else 'passes'} ({s:.0f} s)", flush=True)
            if failed:
                return 1
            for name, rel, old, new in chosen:
                path = wt / rel
                text = path.read_text()
                assert text.count(old) == 1, f"{name}: the text to mutate occurs {text.count(old)} times in {rel}"
                path.write_text(text.replace(old, new))
                try:
                    failed, first, s = run_tests(wt, args.timeout)
                finally:
                    path.write_text(text)
                survived += not failed
                print(f"{'caught  ' if failed else 'SURVIVED'} {name} ({s:.0f} s): {first}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=False)
    print(f"{len(chosen) - survived} of {len(chosen)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
