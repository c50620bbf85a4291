"""Detaching ``omnid serve --detach`` from whoever started it, before the daemon starts."""

from __future__ import annotations

import os
from pathlib import Path


def daemonize(log_file: Path | None) -> None:
    """Double fork so the daemon is no child of whoever started it and has no terminal."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    if log_file is not None:
        err = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(err, 2)
        os.close(err)
    else:
        os.dup2(devnull, 2)
    os.close(devnull)
