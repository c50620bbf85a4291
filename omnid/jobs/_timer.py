"""One re-arming timer on the event loop, shared by the background jobs and the daemon's
housekeeping so that none of them writes its own cancel/re-arm/log-failure code."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable


class Timer:
    """Calls ``fire`` once, ``delay`` seconds after the last ``arm``: arming again replaces
    the pending call. A failing ``fire`` is logged as "<what> failed", never raised into
    the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[], object], what: str, log: logging.Logger):
        self._loop = loop
        self._fire = fire
        self._what = what
        self._log = log
        self._handle: asyncio.TimerHandle | None = None

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def arm(self, delay: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_later(delay, self._fired)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fired(self) -> None:
        self._handle = None
        try:
            self._fire()
        except Exception:
            self._log.exception("%s failed", self._what)
