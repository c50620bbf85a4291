"""Detaching ``omnid serve --detach`` from whoever started it, before the daemon starts."""

from __future__ import annotations

import os
from pathlib import Path


def daemonize(log_file: Path | None) -> None:
    """Double fork so the daemon is no child of whoever started it and has no terminal."""
    from ..daemon.logs import open_log

    err = open_log(log_file) if log_file is not None else -1  # before forking: its error is the caller's
    if os.fork() > 0:
        os._exit(0)
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
