"""The files the daemon keeps its metrics in: the Prometheus textfile (``metrics_textfile``)
and the totals across restarts.

Both are rendered on the event loop and written off it (a temporary file renamed over
the old one, never following a planted link), and only when something changed.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable

from omnid_client.protocol import Counts, Settings

from ..jobs import Timer
from ..metrics import Metrics, totals as saved_totals
from ..metrics.exposition import render
from ..safefile import atomic_write, os_message
from .connection import _seconds_from_env

log = logging.getLogger("omnid.server")

TEXTFILE_PERIOD = 15.0
"""Seconds between looks at whether the textfile needs rewriting (``OMNID_METRICS_TEXTFILE_PERIOD``)."""


def period_from_env() -> float:
    """``OMNID_METRICS_TEXTFILE_PERIOD`` (seconds), for tests; StartupError if it is not a positive number."""
    return _seconds_from_env("OMNID_METRICS_TEXTFILE_PERIOD", TEXTFILE_PERIOD)


def write_textfile(path: str, text: str) -> None:
    with atomic_write(path, mode=0o644, owned=True) as pending:  # node_exporter runs as another user
        pending.file.write(text.encode())


class MetricsFiles:
    """Rewrites the textfile every ``period`` seconds while one is configured and the text
    changed; saves the totals at each ``tick`` (the minute tick) when they moved, and at ``close``."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, metrics: Metrics, settings: Callable[[], Settings],
        totals_path: Path, period: float = TEXTFILE_PERIOD,
    ):
        self.loop = loop
        self.metrics = metrics
        self.settings = settings
        self.totals_path = totals_path
        self.period = period
        self._timer = Timer(loop, self._textfile_due, "writing the metrics textfile", log)
        self._written: tuple[str, str] | None = None  # (path, text) last written
        self._writing: asyncio.Future[None] | None = None
        self._error: str | None = None
        self._saved = Counts()
        self._saving: asyncio.Future[None] | None = None
        self._closed = False

    def load_totals(self) -> None:
        saved = saved_totals.load(self.totals_path)
        if saved is not None:
            self.metrics.previous, self.metrics.previous_since = saved.counts, saved.since

    def configure(self) -> None:
        """Start writing the textfile (soon) if one is configured now."""
        if self.settings().metrics_textfile is not None and not self._timer.armed and not self._closed:
            self._timer.arm(0)

    async def close(self) -> None:
        """Stop, and save the totals now if they moved (at shutdown, on the event loop)."""
        self._closed = True
        self._timer.cancel()
        if self._saving is not None:  # a save that lands after this one would undo it
            await asyncio.wait([self._saving])
        counts = self.metrics.counts()
        if counts != self._saved:
            try:
                saved_totals.save(self.totals_path, self._to_save(counts))
            except OSError as e:
                log.warning("cannot save the metrics totals to %s: %s", self.totals_path, os_message(e))

    # -- the textfile ---------------------------------------------------------------------

    def _textfile_due(self) -> None:
        path = self.settings().metrics_textfile
        if path is None or self._closed:
            self._written = None
            return  # configure() starts again if the setting comes back
        self._timer.arm(self.period)
        if self._writing is not None:
            return
        text = render(self.metrics.snapshot())
        if self._written == (path, text):
            return
        self._writing = self.loop.run_in_executor(None, write_textfile, path, text)
        self._writing.add_done_callback(lambda done: self._textfile_written(done, path, text))

    def _textfile_written(self, done: asyncio.Future[None], path: str, text: str) -> None:
        self._writing = None
        if done.cancelled():  # the loop is closing
            return
        error = done.exception()
        if error is None:
            self._written, self._error = (path, text), None
            return
        why = os_message(error) if isinstance(error, OSError) else str(error)
        if why != self._error:  # once per distinct failure, not every period
            log.error("cannot write the metrics textfile %s: %s; trying again every %gs", path, why, self.period)
        self._error = why

    # -- the totals -------------------------------------------------------------------------

    def tick(self) -> None:
        """Save the totals, off the event loop, if they moved since last saved."""
        counts = self.metrics.counts()
        if self._saving is not None or counts == self._saved:
            return
        self._saving = self.loop.run_in_executor(None, saved_totals.save, self.totals_path, self._to_save(counts))
        self._saving.add_done_callback(lambda done: self._totals_saved(done, counts))

    def _totals_saved(self, done: asyncio.Future[None], counts: Counts) -> None:
        self._saving = None
        if done.cancelled():
            return
        error = done.exception()
        if error is None:
            self._saved = counts
        else:
            log.warning("cannot save the metrics totals to %s: %s", self.totals_path, error)

    def _to_save(self, counts: Counts) -> saved_totals.Saved:
        m = self.metrics
        since = m.previous_since if m.previous_since is not None else m.started_at
        return saved_totals.Saved(since, m.totals(counts))
