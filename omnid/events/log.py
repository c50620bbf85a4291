"""The on-disk event log: JSON Lines in two segments in the state dir, ``events.jsonl``
(being appended to) and ``events.1.jsonl`` (the one before), together at most about the
configured size.

Kept apart from the database so that it needs no schema migration, and
plain JSON Lines so that a log shipper can follow it as it is.

Each file is opened with ``safefile.open_private`` (no link followed, a regular file owned
by this user, never blocking on a FIFO); if it is not that (or the disk fails), the daemon
logs why and keeps events in memory only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import msgspec

from omnid_client.protocol import Event

from ..safefile import open_private

log = logging.getLogger("omnid.events")

CURRENT = "events.jsonl"
PREVIOUS = "events.1.jsonl"
RETRY_AFTER = 5.0
"""Seconds after a failed write (a full disk) before the log is tried again."""
TAIL_PROBE = 1 << 16
"""Bytes read from a segment's end to find its last event."""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def _opener(path: str, flags: int) -> int:
    return open_private(path, flags)


def seq_of(line: bytes) -> int | None:
    """The sequence number a log line starts with (``{"seq":N,``), without decoding it."""
    if not line.startswith(b'{"seq":'):
        return None
    end = line.find(b",", 7)
    try:
        return int(line[7:end])
    except ValueError:
        return None


def decode(line: bytes) -> Event | None:
    try:
        return _decoder.decode(line)
    except msgspec.DecodeError:
        return None  # a line torn by a crash or power loss


class EventLog:
    def __init__(self, directory: Path, max_bytes: int):
        self.directory = directory
        self.max_bytes = max_bytes
        self.head = 0
        """The last sequence number written (0: none)."""
        self.oldest = 1
        """The oldest sequence number on disk (head + 1 when there is none)."""
        self._fd: int | None = None
        self._size = 0
        self._current_first: int | None = None
        self.error: str | None = None
        self._failed_at = 0.0

    @property
    def current(self) -> Path:
        return self.directory / CURRENT

    @property
    def previous(self) -> Path:
        return self.directory / PREVIOUS

    def open(self) -> None:
        """Find where the log ends (so numbering continues after a restart) and open it for appending."""
        prev_first = self._first_seq(self.previous)
        cur_first = self._first_seq(self.current)
        self.head = max(self._last_seq(self.current) or 0, self._last_seq(self.previous) or 0)
        firsts = [s for s in (prev_first, cur_first) if s is not None]
        self.oldest = min(firsts) if firsts else self.head + 1
        self._current_first = cur_first
        if self.max_bytes > 0:
            self._open_current()

    def _open_current(self) -> None:
        try:
            fd = open_private(self.current, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            size = os.fstat(fd).st_size
            if size:
                with open(self.current, "rb", opener=_opener) as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":  # a torn last line: start the next one afresh
                        os.write(fd, b"\n")
                        size += 1
        except OSError as e:
            self._disable(f"cannot open the event log {self.current}: {e}")
            return
        self._fd, self._size = fd, size
        if self.error is not None:
            log.info("writing the event log %s again", self.current)
            self.error = None

    def _disable(self, why: str) -> None:
        if self.error != why:
            log.error("%s; events are kept in memory only", why)
        self.error = why
        self._failed_at = time.monotonic()
        self.close()

    def configure(self, max_bytes: int) -> None:
        if max_bytes == self.max_bytes:
            return
        self.max_bytes = max_bytes
        if max_bytes == 0:
            self.close()
            for path in (self.current, self.previous):
                with contextlib.suppress(OSError):
                    os.unlink(path)
            self._current_first = None
            self.oldest = self.head + 1
        elif self._fd is None:
            self.error = None
            self._open_current()

    def append(self, events: list[Event]) -> None:
        if not events:
            return
        self.head = events[-1].seq
        if self._fd is None and self.max_bytes and time.monotonic() - self._failed_at > RETRY_AFTER:
            self._open_current()  # the events meanwhile are missing from it: a replay tells that gap
        if self._fd is None:
            if self.max_bytes == 0:
                self.oldest = self.head + 1
            return
        data = b"".join(_encoder.encode(e) + b"\n" for e in events)
        try:
            os.write(self._fd, data)
        except OSError as e:
            self._disable(f"cannot write the event log {self.current}: {e}")
            return
        if self._current_first is None:
            self._current_first = events[0].seq
        self._size += len(data)
        if self._size >= self.max_bytes // 2:
            self._rotate()

    def _rotate(self) -> None:
        """The current segment becomes the previous one (replacing it), and a new one starts."""
        self.close()
        try:
            os.replace(self.current, self.previous)
        except OSError as e:
            self._disable(f"cannot rotate the event log {self.current}: {e}")
            return
        self.oldest = self._current_first if self._current_first is not None else self.head + 1
        self._current_first = None
        self._open_current()

    def readers(self) -> list[int]:
        """Descriptors of the segments, oldest first, for ``read_after`` (in a thread: a
        rotation meanwhile renames the files, but the open descriptors still read them)."""
        fds = []
        for path in (self.previous, self.current):
            try:
                fds.append(open_private(path, os.O_RDONLY))
            except OSError:
                continue
        return fds

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- reading ------------------------------------------------------------------------

    @staticmethod
    def _first_seq(path: Path) -> int | None:
        try:
            with open(path, "rb", opener=_opener) as f:
                for line in f:
                    seq = seq_of(line)
                    if seq is not None:
                        return seq
        except OSError:
            pass
        return None

    @staticmethod
    def _last_seq(path: Path) -> int | None:
        try:
            with open(path, "rb", opener=_opener) as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(size - TAIL_PROBE, 0))
                lines = f.read().split(b"\n")
        except OSError:
            return None
        for line in reversed(lines):
            if decode(line) is not None:
                return seq_of(line)
        return None


def read_after(fds: list[int], since: int, upto: int, limit: int) -> list[Event]:
    """Events with ``since < seq <= upto`` from the segments open on ``fds`` (closed here),
    at most ``limit`` of them, oldest first. Blocking: run it in a thread."""
    found: list[Event] = []
    try:
        for fd in fds:
            with open(fd, "rb", closefd=False) as f:
                for line in f:
                    seq = seq_of(line)
                    if seq is None or seq <= since or seq > upto:
                        continue
                    event = decode(line)
                    if event is not None and (not found or event.seq > found[-1].seq):
                        found.append(event)
                        if len(found) >= limit:
                            return found
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
    return found
