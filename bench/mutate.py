"""Mutation testing of omnid's core promises (``make mutate``): mutmut mutates the modules
listed under [tool.mutmut] in pyproject.toml (the one place that names them and the tests
that guard them), runs for each mutant the tests that exercised the mutated function, and
this script prints the kill rate and every survivor.

    python bench/mutate.py [--max-children N] [--min-kill-rate PCT] [MUTANT_NAME_GLOB ...]

Mutant names look like ``omnid.identity.x_is_alive__mutmut_3``; a glob such as
``'omnid.identity.*'`` runs a subset. Results are cached in mutants/ between runs (mutmut
reruns only what changed); remove that directory for a fresh run. Exits 1 below the
minimum kill rate. Not part of ``make test``: it takes up to half an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = [sys.executable, "-m", "mutmut"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--min-kill-rate", type=float, default=90.0, help="percent of mutants killed (default 90)")
    parser.add_argument("mutants", nargs="*", help="mutant name globs (default: all)")
    args = parser.parse_args()

    started = time.monotonic()
    run = subprocess.run([*MUTMUT, "run", "--max-children", str(args.max_children), *args.mutants], cwd=ROOT)
    if run.returncode not in (0, 1):
        print(f"mutmut run failed ({run.returncode})", file=sys.stderr)
        return run.returncode
    subprocess.run([*MUTMUT, "export-cicd-stats"], cwd=ROOT, check=True, capture_output=True)
    stats = json.loads((ROOT / "mutants" / "mutmut-cicd-stats.json").read_text())
    results = subprocess.run([*MUTMUT, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True)
    survivors = [line.strip() for line in results.stdout.splitlines() if line.strip().endswith(": survived")]
    if args.mutants:  # a subset: count only its mutants
        import fnmatch

        lines = [line.strip().rsplit(": ", 1) for line in results.stdout.splitlines() if ": " in line]
        picked = [(n, s) for n, s in lines if any(fnmatch.fnmatch(n, g) for g in args.mutants)]
        stats = {k: 0 for k in ("killed", "survived", "total", "no_tests", "timeout", "suspicious", "skipped")}
        for _, status in picked:
            key = {"no tests": "no_tests"}.get(status, status)
            stats[key] = stats.get(key, 0) + 1
            stats["total"] += 1
        survivors = [f"{n}: {s}" for n, s in picked if s == "survived"]

    judged = stats["killed"] + stats["timeout"] + stats["survived"] + stats.get("no_tests", 0)
    killed = stats["killed"] + stats["timeout"]  # a mutant that hangs the tests is caught
    rate = 100.0 * killed / judged if judged else 0.0
    print(f"\n{killed} of {judged} mutants killed: {rate:.1f}% "
          f"(survived {stats['survived']}, no tests {stats.get('no_tests', 0)}, "
          f"timeout {stats['timeout']}, suspicious {stats.get('suspicious', 0)}) "
          f"in {time.monotonic() - started:.0f} s")
    for line in survivors:
        print("  survived:", line.removesuffix(": survived"))
    print("inspect one with: mutmut show NAME")
    return 0 if rate >= args.min_kill_rate else 1


if __name__ == "__main__":
    sys.exit(main())
