"""Where the daemon's log lines go: a size-rotated file, the journal (with syslog priority
prefixes, no timestamps: journald adds its own), or plain stderr."""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
from pathlib import Path

from ..safefile import open_private
from . import systemd

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 3

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """``<N>name: message``: journald reads the ``<N>`` prefix as the line's priority."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


class LogFile(logging.handlers.RotatingFileHandler):
    """A rotated log file opened only as a regular file of this user, never through a link."""

    def _open(self) -> io.TextIOWrapper:
        return os.fdopen(open_log(self.baseFilename), "a", encoding=self.encoding, errors=self.errors)


def open_log(log_file: Path | str) -> int:
    """A descriptor to append to the log file: a regular file of this user, or the null
    device (to discard the log); never a link, a FIFO or another device."""
    if os.fspath(log_file) == os.devnull:
        return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    return open_private(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def configure(log_file: Path | None, level: str) -> str:
    """Send the root logger's output to its destination; returns a description of it."""
    if log_file is not None:
        handler: logging.Handler = LogFile(log_file, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        target = f"file {log_file} (rotated at {MAX_BYTES // (1024 * 1024)} MiB, {BACKUPS} kept)"
    elif systemd.journal_stream():
        handler = logging.StreamHandler()
        handler.setFormatter(JournalFormatter())
        target = "journald"
    elif systemd.started_by_systemd():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        target = "stderr (systemd)"
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        target = "stderr"
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    set_level(level)
    return target


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
