"""Two sweeps' datasets row for row: the check that a change of the code changed no result.

Usage: python benchmarks/compare_datasets.py BEFORE_DIR AFTER_DIR

Rows are matched by the dataset's row key (``config_hash``, ``repetition``, ``fork_index``); every column is compared
but the simulator's own wall times and speeds, which differ from run to run. Columns a version renamed come under
their new name (``gpusim.load_results`` reads them so). Prints each differing column with its first
differing row and exits 1 if any differs, or if the two hold different rows or columns.
"""

import argparse
import sys

import gpusim

# what the simulator measures of itself: differs between any two runs of the same code
WALL_COLUMNS = ("engine_wall_s", "build_wall_s", "ptes_per_s", "write_wall_s")
KEY = ["config_hash", "repetition", "fork_index"]


def rows(path: str) -> dict:
    table = gpusim.load_results(path)
    table = table.drop_columns([c for c in WALL_COLUMNS if c in table.column_names])
    data = table.to_pylist()
    return {tuple(r[k] for k in KEY): r for r in data}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    args = ap.parse_args()
    before, after = rows(args.before), rows(args.after)
    problems = []
    if before.keys() != after.keys():
        problems.append(
            f"rows: {len(before.keys() - after.keys())} only before, {len(after.keys() - before.keys())} only after"
        )
    columns_before = set(next(iter(before.values()), {}))
    columns_after = set(next(iter(after.values()), {}))
    if columns_before != columns_after:
        problems.append(
            f"columns only before: {sorted(columns_before - columns_after)}, only after: "
            f"{sorted(columns_after - columns_before)}"
        )
    differing: dict[str, tuple] = {}
    for key in sorted(before.keys() & after.keys(), key=str):
        for col in sorted(columns_before & columns_after):
            a, b = before[key].get(col), after[key].get(col)
            if a != b and not (a != a and b != b) and col not in differing:  # NaN equals NaN here
                differing[col] = (key, a, b)
    problems += [f"{col}: row {key}: {a!r} before, {b!r} after" for col, (key, a, b) in differing.items()]
    common = len(before.keys() & after.keys())
    print(
        f"{common} rows in both, {len(columns_before & columns_after)} columns compared "
        f"(wall times left out: {', '.join(WALL_COLUMNS)})"
    )
    print("\n".join(problems) if problems else "equal in every row and column")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
