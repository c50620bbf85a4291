"""Which process a hook or an MCP server acts for: the agent that launched it, found by
walking up past the wrappers an agent may start it through (``sh -c``, ``env``, ``uv run``)."""

from __future__ import annotations

import os
import sys

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "busybox"})
"""Shells: a wrapper only when running a command string (``-c``), never an interactive one."""
LAUNCHERS = frozenset(
    {"env", "nice", "nohup", "timeout", "stdbuf", "setsid", "ionice", "chrt", "taskset", "time", "uv", "uvx"}
)
"""Programs that only start another one and wait for it."""
MAX_DEPTH = 8


def agent_pid(start: int | None = None) -> int:
    """The first ancestor of this process (from ``start``, default its parent) that is not a
    wrapper; the parent itself when the walk finds nothing better (it never returns init)."""
    parent = os.getppid() if start is None else start
    pid = parent
    for _ in range(MAX_DEPTH):
        info = _process(pid)
        if info is None:
            return parent
        ppid, argv = info
        if not _is_wrapper(argv) or ppid <= 1:
            return pid
        pid = ppid
    return parent


def _is_wrapper(argv: list[str]) -> bool:
    if not argv:
        return False
    name = os.path.basename(argv[0]).lstrip("-")
    if name in LAUNCHERS:
        return True
    if name not in SHELLS:
        return False
    for arg in argv[1:]:
        if arg == "--" or not arg.startswith("-"):
            return False
        if not arg.startswith("--") and "c" in arg[1:]:
            return True
    return False


def _process(pid: int) -> tuple[int, list[str]] | None:
    """(parent pid, argv) of ``pid``; None if it is gone or unreadable."""
    if sys.platform.startswith("linux"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            return None
        # The command name in parentheses may hold spaces and parentheses: split after the last one.
        fields = stat[stat.rindex(b")") + 2 :].split()
        argv = [a.decode(errors="replace") for a in cmdline.split(b"\0")[:-1]]
        return int(fields[1]), argv
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.ppid(), proc.cmdline()
    except psutil.Error:
        return None
