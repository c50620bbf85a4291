"""Mutation testing of omnid's core promises (``make mutate``): mutmut mutates the modules
listed under [tool.mutmut] in pyproject.toml (the one place that names them and the tests
that guard them), runs for each mutant the tests that exercised the mutated function, and
this script prints the kill rate and every survivor.

    python bench/mutate.py [--max-children N] [--min-kill-rate PCT] [--diffs] [MUTANT_GLOB ...]

Mutant names look like ``omnid.identity.x_is_alive__mutmut_3``; a glob such as
``'omnid.identity.*'`` runs and counts a subset. Results are cached in mutants/ between
runs (mutmut reruns only what changed); remove that directory for a fresh run. Exits 1
below the minimum kill rate. Not part of ``make test``: it takes up to half an hour on 2 cores.

Two kinds of mutant are counted apart, not as survivors, because no test here can kill them:
code for other platforms (``PLATFORM_ONLY`` classes and ``PLATFORM_LINES``: only a run there
can tell) and a change of letter case inside SQL text or column names (SQL keywords and
names are case-insensitive). Every other survivor
is listed in README.md ("Mutation testing") with its reason.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PLATFORM_ONLY = {
    "linux": ["KqueueWatcher"],  # macOS/BSD exit events (omnid/jobs/exits.py)
}
"""Classes whose code this platform never runs, by sys.platform prefix."""

PLATFORM_LINES = {
    # Choosing or making a KqueueWatcher (make_watcher), and psutil's AccessDenied (identity:
    # inspect reads /proc itself on Linux, so only other systems get a process it may not see).
    "linux": re.compile(r"kqueue|inspectable=False|\"cannot inspect\"", re.IGNORECASE),
}
"""Lines that decide or act only for other platforms, by sys.platform prefix: a mutant that
changes nothing but such lines can only be killed by a test run there."""

SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|FROM|WHERE|SET|AND|ORDER BY|LIMIT|IS NULL|IS NOT NULL)\b")




def run_mutmut(max_children: int, names: list[str]) -> int:
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *names]
    return subprocess.run(command, cwd=ROOT).returncode


def statuses() -> dict[str, str]:
    from mutmut.stats import status_by_exit_code

    found = {}
    for meta in (ROOT / "mutants").rglob("*.py.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            found[name] = status_by_exit_code[code]
    return found


def diff(name: str) -> tuple[list[str], list[str]]:
    """The lines a mutant removes and adds (mutmut's own diff, computed in this process)."""
    from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            text = get_diff_for_mutant(name, path=find_mutant(name).path)
    finally:
        os.chdir(cwd)
    lines = text.splitlines()
    return ([ln[1:] for ln in lines if ln.startswith("-") and not ln.startswith("---")],
            [ln[1:] for ln in lines if ln.startswith("+") and not ln.startswith("+++")])


def sql_case_only(name: str) -> bool:
    """Only the letter case of SQL changed: in a line of SQL text, or anywhere in the store
    package, whose strings are SQL or column names (its other strings have tests that
    kill such a mutant, so none is hidden here)."""
    removed, added = diff(name)
    return (len(removed) == len(added) > 0 and all(r.lower() == a.lower() for r, a in zip(removed, added, strict=True))
            and (name.startswith("omnid.store.") or all(SQL.search(r) for r in removed)))


def module_of(name: str) -> str:
    """``omnid.store`` of ``omnid.store.xǁStoreǁflush__mutmut_3``."""
    return re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]


def platform_only(name: str) -> bool:
    classes = next((v for k, v in PLATFORM_ONLY.items() if sys.platform.startswith(k)), [])
    return any(f"ǁ{c}ǁ" in name for c in classes)


def platform_lines_only(name: str) -> bool:
    pattern = next((v for k, v in PLATFORM_LINES.items() if sys.platform.startswith(k)), None)
    removed, _ = diff(name)
    return pattern is not None and bool(removed) and all(pattern.search(r) for r in removed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--min-kill-rate", type=float, default=90.0, help="percent of mutants killed (default 90)")
    parser.add_argument("--diffs", action="store_true", help="show each survivor's change")
    parser.add_argument("--report-only", action="store_true", help="report the cached results, run nothing")
    parser.add_argument("mutants", nargs="*", help="mutant name globs (default: all)")
    args = parser.parse_args()

    started = time.monotonic()
    if not args.report_only:
        code = run_mutmut(args.max_children, args.mutants)
        if code not in (0, 1):
            print(f"mutmut run failed ({code})", file=sys.stderr)
            return code
    found = statuses()
    if args.mutants:
        found = {n: s for n, s in found.items() if any(fnmatch.fnmatch(n, g) for g in args.mutants)}

    platform = [n for n in found if platform_only(n)]
    survivors = sorted(n for n, s in found.items() if s in ("survived", "no tests") and n not in platform)
    platform += [n for n in survivors if platform_lines_only(n)]
    survivors = [n for n in survivors if n not in platform]
    equivalent = [n for n in survivors if found[n] == "survived" and sql_case_only(n)]
    survivors = [n for n in survivors if n not in equivalent]
    killed = sum(1 for n, s in found.items() if s in ("killed", "timeout") and n not in platform)
    judged = killed + len(survivors)
    rate = 100.0 * killed / judged if judged else 0.0

    print(f"\n{len(found)} mutants: {killed} killed (a timeout counts), {len(survivors)} not killed, "
          f"{len(equivalent)} equivalent (letter case in SQL), {len(platform)} in code for other platforms "
          f"({', '.join(sorted({c for cs in PLATFORM_ONLY.values() for c in cs}))} and kqueue lines), "
          f"{sum(1 for s in found.values() if s not in ('killed', 'timeout', 'survived', 'no tests'))} other")
    print(f"kill rate: {killed}/{judged} = {rate:.1f}% (target {args.min_kill_rate:g}%) "
          f"in {time.monotonic() - started:.0f} s")
    print("per module, killed/judged:")
    for module in sorted({module_of(n) for n in found}):
        k = sum(1 for n, s in found.items()
                if module_of(n) == module and s in ("killed", "timeout") and n not in platform)
        j = k + sum(1 for n in survivors if module_of(n) == module)
        print(f"  {module}: {k}/{j}" + (f" = {100.0 * k / j:.1f}%" if j else ""))
    for name in survivors:
        print(f"  {found[name]}: {name}")
        if args.diffs:
            removed, added = diff(name)
            for r, a in zip(removed, added, strict=False):  # a mutant may add or remove a line
                print(f"      - {r.strip()}\n      + {a.strip()}")
    print("inspect one with: mutmut show NAME")
    return 0 if rate >= args.min_kill_rate else 1


if __name__ == "__main__":
    sys.exit(main())
