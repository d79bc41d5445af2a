"""Start-up time of the ``harness`` command, against the interpreter and ``import torch``.

The CLI is meant to stay light: ``--help``, ``list`` and ``check`` must not pay for torch,
mmengine or timm, which only trials need. This script times each command as a fresh process
(median of ``--repeat`` runs), prints it next to ``python -c pass`` and ``import torch`` from the
same run, checks the absolute targets, and lists any heavy module a command imports
(``python -X importtime``). It reports; it never fails on a slow machine.

    .venv/bin/python benchmarks/cli_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "mmengine", "timm")

#: name -> arguments after ``python``; the references first.
REFERENCES: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "import torch": ["-c", "import torch"],
}
COMMANDS: dict[str, list[str]] = {
    "harness --help": ["-m", "harness", "--help"],
    "harness list norms": ["-m", "harness", "list", "norms"],
    "harness check quickstart": ["-m", "harness", "check", "suites/quickstart.toml"],
}
#: seconds each command must stay under (median)
TARGETS: dict[str, float] = {"harness --help": 0.5, "harness list norms": 1.0}


def run_once(args: list[str]) -> float:
    """Wall time of one fresh ``python <args>`` run from the repository root; it must exit 0."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} exited {done.returncode}:\n{done.stderr.decode()[-2000:]}")
    return elapsed


def heavy_imports(args: list[str]) -> list[str]:
    """Top-level heavy packages that ``python -X importtime <args>`` reports importing."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, capture_output=True, text=True)
    found: set[str] = set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") < 2:
            continue
        module = line.rsplit("|", 1)[1].strip().split(".")[0]
        if module in HEAVY:
            found.add(module)
    return sorted(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per command; the median is reported")
    args = parser.parse_args()

    everything = {**REFERENCES, **COMMANDS}
    times: dict[str, list[float]] = {name: [] for name in everything}
    run_once(REFERENCES["python -c pass"])  # warm the file cache before timing anything
    for _ in range(max(1, args.repeat)):  # interleaved, so that drift in machine load hits all alike
        for name, argv in everything.items():
            times[name].append(run_once(argv))
    median = {name: statistics.median(ts) for name, ts in times.items()}
    torch_s = median["import torch"]

    print(f"median wall time of a fresh process, {args.repeat} runs each ({sys.executable})")
    print(f"{'command':<26} {'median s':>9} {'min s':>7} {'/ import torch':>15}  target")
    for name in everything:
        ratio = f"{median[name] / torch_s:.3f}" if name in COMMANDS else ""
        target = TARGETS.get(name)
        verdict = f"< {target:g} s {'ok' if median[name] < target else 'MISSED'}" if target else ""
        print(f"{name:<26} {median[name]:>9.3f} {min(times[name]):>7.3f} {ratio:>15}  {verdict}")

    heavy = {name: heavy_imports(argv) for name, argv in COMMANDS.items()}
    print("\nheavy imports (-X importtime, looking for " + ", ".join(HEAVY) + "):")
    for name, modules in heavy.items():
        print(f"  {name:<26} {', '.join(modules) if modules else 'none'}")

    targets_met = {name: median[name] < limit for name, limit in TARGETS.items()}
    print(json.dumps({
        "bench": "cli_startup",
        "repeat": args.repeat,
        "median_seconds": {name: round(v, 4) for name, v in median.items()},
        "ratio_to_import_torch": {name: round(median[name] / torch_s, 4) for name in COMMANDS},
        "targets_seconds": TARGETS,
        "targets_met": targets_met,
        "heavy_imports": heavy,
        "no_heavy_imports": not any(heavy.values()),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine skews the times
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
