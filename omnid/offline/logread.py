"""Reading the daemon's log for ``omnid logs`` and ``omnid doctor``: its rotated log file
(following it across rotations) or, for a daemon run by systemd, the user journal."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, Literal

import msgspec

from ..safefile import open_private

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_JOURNAL_LEVEL = {7: "debug", 6: "info", 5: "info", 4: "warning", 3: "error", 2: "critical", 1: "critical"}
_JOURNAL_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ([A-Z]+) ([^:]*): ?(.*)$")
FOLLOW_INTERVAL = 0.25
"""Seconds between looks at a followed log file (the daemon logs little: no watch needed)."""
SYSTEMD_UNIT = "omnid.service"


class LogRecord(msgspec.Struct):
    time: float | None
    """Seconds since the epoch; None for a line of an unknown format."""
    level: str
    logger: str
    message: str
    """With any traceback lines that followed it."""


class LogSource(msgspec.Struct):
    kind: Literal["file", "journal"]
    where: str
    """The file's path, or the journal unit."""


def parse_line(line: str) -> LogRecord | None:
    """A record from a line of the log file, or None for a continuation line (a traceback's)."""
    m = _LINE.match(line)
    if m is None:
        return None
    try:
        stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000
    except ValueError:
        return None
    return LogRecord(stamp, m.group(3).lower(), m.group(4), m.group(5))


def records(lines: Iterator[str]) -> Iterator[LogRecord]:
    """Records of the log file's lines, continuation lines joined to the record before them."""
    current: LogRecord | None = None
    for line in lines:
        line = line.rstrip("\n")
        record = parse_line(line)
        if record is None:
            if current is None:
                current = LogRecord(None, "info", "", line)
            else:
                current.message += "\n" + line
            continue
        if current is not None:
            yield current
        current = record
    if current is not None:
        yield current


def wanted(record: LogRecord, level: str | None, since: float | None) -> bool:
    if level is not None and LEVELS.get(record.level, 20) < LEVELS[level]:
        return False
    return since is None or record.time is None or record.time >= since


Position = tuple[int, int, int]
"""(device, inode, byte offset): where in which file reading stopped."""


def _read_text(path: Path) -> tuple[str, Position]:
    fd = open_private(path, os.O_RDONLY, owned=False)
    with os.fdopen(fd, "rb") as f:
        data = f.read()
        st = os.fstat(fd)
    return data.decode("utf-8", errors="replace"), (st.st_dev, st.st_ino, len(data))


def tail_file(
    path: Path, n: int | None, level: str | None = None, since: float | None = None
) -> tuple[list[LogRecord], Position]:
    """The last ``n`` wanted records (all if None) of the log file and, when it holds fewer,
    of the rotated files before it (``path.1`` is the newest of those), and where the log
    file ends (for ``follow_file``). FileNotFoundError if there is no log file."""
    found: deque[LogRecord] = deque()
    end: Position = (0, 0, 0)
    for index in range(10):
        part = path if index == 0 else Path(f"{path}.{index}")
        try:
            text, position = _read_text(part)
        except FileNotFoundError:
            if index == 0:
                raise
            break
        if index == 0:
            end = position
        older = [r for r in records(iter(text.splitlines())) if wanted(r, level, since)]
        found.extendleft(reversed(older))
        if n is not None and len(found) >= n:
            break
    items = list(found)
    return (items[-n:] if n is not None else items), end


def follow_file(
    path: Path, emit: Callable[[LogRecord], None], level: str | None = None, since: float | None = None,
    *, start: Position | None = None, stop: Callable[[], bool] = lambda: False,
) -> None:
    """Print records appended to the log file from ``start`` (where ``tail_file`` stopped;
    default: its current end) on, until ``stop()`` (or Ctrl-C). A rotation (the file renamed,
    a new one created) is followed: the old file is read to its end, then the new one from
    its start."""
    f = None
    ident: tuple[int, int] | None = None
    pending = ""

    def reopen(at: Position | None) -> None:
        nonlocal f, ident
        try:
            fd = open_private(path, os.O_RDONLY, owned=False)
        except FileNotFoundError:
            f, ident = None, None
            return
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        offset = 0
        if at is None:
            offset = st.st_size
        elif at[:2] == ident:
            offset = at[2]  # else it rotated since: the new file from its start
        os.lseek(fd, offset, os.SEEK_SET)
        f = os.fdopen(fd, "r", encoding="utf-8", errors="replace")

    def drain() -> None:
        nonlocal pending
        if f is None:
            return
        pending += f.read()
        *complete, pending = pending.split("\n")
        for record in records(iter(complete)):
            if wanted(record, level, since):
                emit(record)

    reopen(start)
    try:
        while not stop():
            drain()
            try:
                st = os.stat(path)
                now: tuple[int, int] | None = (st.st_dev, st.st_ino)
                truncated = f is not None and st.st_size < os.lseek(f.fileno(), 0, os.SEEK_CUR)
            except FileNotFoundError:
                now, truncated = None, False
            if now is not None and (now != ident or truncated):
                drain()  # the rest of the rotated file first
                if f is not None:
                    f.close()
                reopen((*now, 0))
                pending = ""
                continue
            time.sleep(FOLLOW_INTERVAL)
    finally:
        if f is not None:
            f.close()


# --- the journal ---------------------------------------------------------------------------


def journal_command(n: int | None, follow: bool, level: str | None, since: float | None) -> list[str]:
    argv = ["journalctl", "--user", "-u", SYSTEMD_UNIT, "-o", "json", "--no-pager"]
    if n is not None:
        argv += ["-n", str(n)]
    if follow:
        argv.append("-f")
    if level is not None:
        argv += ["-p", str(_JOURNAL_PRIORITY[level])]
    if since is not None:
        argv += ["--since", f"@{int(since)}"]
    return argv


def journal_record(line: str) -> LogRecord | None:
    """A record of one ``journalctl -o json`` line (the daemon writes ``<N>logger: message``)."""
    try:
        entry = json.loads(line)
        stamp = int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6
        priority = int(entry.get("PRIORITY", 6))
    except (ValueError, TypeError, AttributeError):
        return None
    message = entry.get("MESSAGE", "")
    if isinstance(message, list):  # journald stores non-UTF-8 text as a byte array
        message = bytes(message).decode(errors="replace")
    logger, sep, rest = str(message).partition(": ")
    if not sep or " " in logger:
        logger, rest = "", str(message)
    return LogRecord(stamp or None, _JOURNAL_LEVEL.get(priority, "critical" if priority < 1 else "info"), logger, rest)


def journal(
    emit: Callable[[LogRecord], None], n: int | None, follow: bool, level: str | None, since: float | None
) -> int:
    """Run journalctl, printing its records through ``emit``; its exit status."""
    if shutil.which("journalctl") is None:
        raise FileNotFoundError("journalctl is not installed, so the journal cannot be read")
    with subprocess.Popen(
        journal_command(n, follow, level, since), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                record = journal_record(line)
                if record is not None:
                    emit(record)
        finally:
            proc.terminate()
        return proc.wait()


def format_record(record: LogRecord) -> str:
    stamp = "-" if record.time is None else datetime.fromtimestamp(record.time).astimezone().isoformat(
        timespec="milliseconds"
    )
    logger = f"{record.logger}: " if record.logger else ""
    return f"{stamp} {record.level.upper():8} {logger}{record.message}"
