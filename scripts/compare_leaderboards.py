"""Do two runs of the same suites give the same results? Compares leaderboard JSON files trial by
trial (variant, norm, seed): every metric must be equal to the last bit; costs (time, memory),
study names and trial numbers may differ.

    python scripts/compare_leaderboards.py BEFORE_DIR AFTER_DIR

Each directory is searched for ``leaderboard/*.json``; the exit code is 1 if any differ.
Used to show that a refactoring left behaviour unchanged: run every suite before and after
(``harness run SUITE --smoke`` and the small-scale reproductions in full) and compare.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def results(directory: Path) -> dict[str, dict[tuple[str, str, int], dict[str, float]]]:
    """Per leaderboard file name: (variant, norm, seed) -> {metric: value} (and the trial state)."""
    found = {}
    for path in sorted(directory.rglob("leaderboard/*.json")):
        board = json.loads(path.read_text())
        found[path.name] = {
            (t["variant"], t["norm"], t["seed"]): {"state": t["state"],
                                                   **{k: v for k, v in t.items() if k.startswith("metric.")}}
            for t in board["trials"]
        }
    return found


def main(before: str, after: str) -> int:
    old, new = results(Path(before)), results(Path(after))
    differ = 0
    for name in sorted(set(old) | set(new)):
        if name not in old or name not in new:
            print(f"{name}: only in {'after' if name in new else 'before'}")
            differ += 1
            continue
        a, b = old[name], new[name]
        changed = [key for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
        print(f"{name}: {len(a)} trial(s), {'identical' if not changed else f'{len(changed)} differ'}")
        for key in changed:
            print(f"  {key}: before {a.get(key)}\n  {' ' * len(str(key))}  after  {b.get(key)}")
        differ += bool(changed)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
