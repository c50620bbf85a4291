"""Detaching ``omnid serve --detach`` from whoever started it, before the daemon starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def daemonize(log_file: Path | None, parent: Callable[[], int] | None = None) -> None:
    """Double fork so the daemon is no child of whoever started it and has no terminal.
    The original process runs ``parent`` (if given) and exits with what it returns."""
    from ..daemon.logs import open_log

    err = open_log(log_file) if log_file is not None else -1  # before forking: its error is the caller's
    if os.fork() > 0:
        status = 1
        try:
            status = parent() if parent is not None else 0
        finally:
            os._exit(status)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(err if err >= 0 else devnull, 2)
    if err >= 0:
        os.close(err)
    os.close(devnull)
