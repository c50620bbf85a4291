"""Idle wakeups: how often an idle daemon's threads run, with no tracked workspace and with
three, against watchfiles' own defaults watching the same trees; and what the first tracked
workspace costs (importing watchfiles: time, and the daemon's memory).

A wakeup is a context switch (voluntary + involuntary, from /proc/<pid>/task/*/status)
summed over every thread of the process, counted over a quiet window.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from omnid_client import Client

_SWITCHES = re.compile(rb"^(?:non)?voluntary_ctxt_switches:\s+(\d+)", re.M)


def switches(pid: int) -> dict[str, int]:
    """Context switches so far of each thread of ``pid``."""
    counts = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_bytes()
        except OSError:
            continue
        counts[tid] = sum(int(n) for n in _SWITCHES.findall(status))
    return counts


def wakeups_per_minute(pid: int, seconds: float) -> float:
    before = switches(pid)
    time.sleep(seconds)
    after = switches(pid)
    woke = sum(n - before.get(tid, 0) for tid, n in after.items())
    return woke * 60 / seconds


def make_trees(work: Path, count: int, dirs: int = 50) -> list[Path]:
    roots = []
    for i in range(count):
        root = work / f"ws{i}"
        (root / ".git").mkdir(parents=True)
        for d in range(dirs):
            (root / "src" / f"pkg{d}").mkdir(parents=True)
            (root / "src" / f"pkg{d}" / "mod.py").write_text("x = 1\n")
        roots.append(root)
    return roots


def baseline(code: str, roots: list[Path], seconds: float) -> float:
    """Wakeups per minute of a bare process watching ``roots`` with watchfiles as written."""
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, roots)])
    try:
        time.sleep(2)  # imported and watching
        return wakeups_per_minute(proc.pid, seconds)
    finally:
        proc.kill()
        proc.wait()


WATCH = "import sys, watchfiles\nfor _ in watchfiles.watch(*sys.argv[1:]): pass"
AWATCH = (
    "import asyncio, sys, watchfiles\n"
    "async def main():\n    async for _ in watchfiles.awatch(*sys.argv[1:]): pass\n"
    "asyncio.run(main())"
)


def import_ms() -> float:
    """Median wall time of ``import watchfiles`` over a bare interpreter."""
    def run(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t0

    bare = sorted(run("pass") for _ in range(7))[3]
    loaded = sorted(run("import watchfiles") for _ in range(7))[3]
    return (loaded - bare) * 1000


def run(work: Path, omnid_daemon: Callable[[Path], Any], *, seconds: float = 20.0) -> dict:
    home = work / "wakeups-home"
    home.mkdir()
    roots = make_trees(work, 3)
    os.environ["OMNID_HOME"] = str(home)
    with omnid_daemon(home) as daemon:
        with Client(autostart=False) as client:
            client.status()
            time.sleep(2)
            rss_before = daemon.memory_info().rss
            idle = wakeups_per_minute(daemon.pid, seconds)
            for root in roots:
                client.get_or_create("bench-track", workspace=str(root), track_workspace=True, dedup=False)
            deadline = time.monotonic() + 30
            while len(client.status().tracked_roots) < len(roots) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2)
            rss_after = daemon.memory_info().rss
            tracked = wakeups_per_minute(daemon.pid, seconds)
            threads = psutil.Process(daemon.pid).num_threads()
    return {
        "seconds": seconds,
        "idle_per_min": idle,
        "tracked3_per_min": tracked,
        "tracked3_threads": threads,
        "watchfiles_watch_defaults_per_min": baseline(WATCH, roots, seconds),
        "watchfiles_awatch_defaults_per_min": baseline(AWATCH, roots, seconds),
        "first_tracked_rss_mb": (rss_after - rss_before) / 2**20,
        "import_watchfiles_ms": import_ms(),
    }


def targets(r: dict) -> list[tuple[str, float, str, float]]:
    w = r["wakeups"]
    return [
        ("idle daemon, no tracked workspace: wakeups per minute", w["idle_per_min"], "<=", 5),
        ("idle daemon, 3 tracked workspaces: wakeups per minute", w["tracked3_per_min"], "<=", 130),
    ]


def report(r: dict) -> None:
    w = r["wakeups"]
    print(
        f"wakeups (idle, {w['seconds']:.0f} s windows): daemon {w['idle_per_min']:.1f}/min with no tracked workspace, "
        f"{w['tracked3_per_min']:.1f}/min with 3 ({w['tracked3_threads']} threads); watchfiles defaults on the "
        f"same trees: watch() {w['watchfiles_watch_defaults_per_min']:.0f}/min, awatch() "
        f"{w['watchfiles_awatch_defaults_per_min']:.0f}/min; first tracked workspace: +"
        f"{w['first_tracked_rss_mb']:.1f} MiB RSS, import watchfiles {w['import_watchfiles_ms']:.0f} ms"
    )
