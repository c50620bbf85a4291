"""Progress of long work on stderr (a one-line bar with counts and rate, on a terminal
only), and Ctrl-C that stops such work between steps, so it can say what was written."""

from __future__ import annotations

import shutil
import signal
import sys
import time
from types import FrameType, TracebackType
from typing import IO, Any

EXIT_INTERRUPTED = 130
"""128 + SIGINT, as a shell reports a command Ctrl-C stopped."""
REDRAW = 0.1
"""Seconds between redraws at the most (10 a second)."""
BAR = 24


class Progress:
    """``label [#####-----] 1,200/5,000 records  24%  3,400/s``, redrawn in place on stderr
    at most ten times a second, and erased when done. Nothing at all unless ``enabled``
    and stderr is a terminal. ``total`` None: a count and rate without a bar."""

    def __init__(self, label: str, total: int | None = None, unit: str = "records", *, enabled: bool = True,
                 stream: IO[str] | None = None):
        self.stream = stream or sys.stderr
        self.on = enabled and self.stream.isatty()
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.started = time.monotonic()
        self.drawn_at = 0.0
        self.shown = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def phase(self, label: str, total: int | None = None, unit: str | None = None) -> None:
        """Start counting something else (the rate starts over)."""
        self.label, self.total, self.done = label, total, 0
        self.unit = unit or self.unit
        self.started = time.monotonic()
        self.draw(force=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.draw()

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        self.draw(force=self.total is not None and done >= self.total)  # the end of a phase is always shown

    def draw(self, force: bool = False) -> None:
        if not self.on:
            return
        now = time.monotonic()
        if not force and now - self.drawn_at < REDRAW:
            return
        self.drawn_at = now
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self.stream.write("\r" + self.line(now)[:width] + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def line(self, now: float) -> str:
        if not self.unit:
            return self.label
        elapsed = max(now - self.started, 1e-6)
        size = 1 << 20 if self.unit == "bytes" else 1
        unit = "MiB" if size > 1 else self.unit
        rate = f"{self.done / size / elapsed:,.{1 if size > 1 else 0}f} {unit}/s" if elapsed >= 0.2 else ""
        done = f"{self.done / size:,.1f}" if size > 1 else f"{self.done:,}"
        if self.total:
            part = min(self.done / self.total, 1.0)
            filled = int(part * BAR)
            bar = "#" * filled + "-" * (BAR - filled)
            total = f"{self.total / size:,.1f}" if size > 1 else f"{self.total:,}"
            return f"{self.label} [{bar}] {done}/{total} {unit} {part:4.0%}  {rate}".rstrip()
        return f"{self.label} {done} {unit}  {rate}".rstrip()

    def close(self) -> None:
        """Erase the bar (what follows on stderr, a summary or an error, takes its line)."""
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


class StopOnInterrupt:
    """Inside it, a first Ctrl-C (SIGINT) only asks the work to stop at its next step
    (``requested``), so a step under way (a batch the daemon is committing) finishes and
    the count of what was written stays true; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: Any = None

    def __enter__(self) -> StopOnInterrupt:
        self.previous = signal.signal(signal.SIGINT, self._first)
        return self

    def _first(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        signal.signal(signal.SIGINT, self.previous)

    def __call__(self) -> bool:
        return self.requested
