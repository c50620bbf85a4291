"""Following the daemon for ``omnid top`` from a thread: one list, then events; a gap or a restart lists again.

The thread never starts a daemon. It hands what it learns to the view's thread as messages on
a queue and wakes it through a pipe, so the view sleeps until there is something to show.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass

from omnid_client import Client, OmnidError
from omnid_client.protocol import Event, Session

from .._output import connect
from .model import Board, Metrics

LIVE_LIMIT = 5000
"""Live sessions listed at most (in pages of a thousand)."""
ENDED_LIMIT = 200
"""Ended sessions listed for the endings strip and the last hour's totals."""
RETRY = (0.1, 0.25, 0.5, 1.0)
METRICS_EVERY = 2.0
"""Seconds between two reads of the daemon's metrics at least (only as sessions start and end)."""


@dataclass
class Snapshot:
    head: int
    live: list[Session]
    ended: list[Session]
    metrics: Metrics | None = None


@dataclass
class Down:
    reason: str


Message = Snapshot | Event | Down | Metrics


def client() -> Client:
    """A client that never starts the daemon: top only watches one."""
    c = connect(autostart=False)
    c.client_name = "omnid-top"
    return c


def snapshot(c: Client) -> Snapshot:
    """The event head first, then the lists: events after the head may repeat what the lists
    show (applying them again changes nothing), but none can fall between the two."""
    head = c.status().event_seq
    live: list[Session] = []
    cursor: str | None = None
    while len(live) < LIVE_LIMIT:
        page = c.list_sessions(status="live", limit=1000, cursor=cursor, archived="include")
        live.extend(page.sessions)
        cursor = page.next_cursor
        if cursor is None:
            break
    ended = c.list_sessions(status="ended", limit=ENDED_LIMIT, archived="include").sessions
    return Snapshot(head, live, ended, metrics(c))


def metrics(c: Client) -> Metrics | None:
    """The reuse rate and get_or_create's latency, where the client and the daemon both know
    ``daemon.metrics`` (issue 18); None where either does not."""
    read = getattr(c, "metrics", None)
    if read is None:
        return None
    try:
        m = read()
    except (OmnidError, OSError):
        return None
    calls = m.methods.get("session.get_or_create")
    if calls is None:
        return Metrics(m.reuse_rate, None, None)
    return Metrics(m.reuse_rate, calls.latency.quantile(0.5), calls.latency.quantile(0.99))


class Feed(threading.Thread):
    """Puts ``Snapshot``, ``Event``, ``Metrics`` and ``Down`` messages on ``messages``, starting from ``head``."""

    def __init__(self, head: int, wake: int | None):
        super().__init__(name="omnid-top-feed", daemon=True)
        self.head = head
        self.wake = wake
        self.messages: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.stopped = False
        """Set to end the thread: at its next event or failure (a blocked read is left alone)."""

    def put(self, message: Message) -> None:
        self.messages.put(message)
        if self.wake is not None:
            try:
                os.write(self.wake, b"x")
            except (BlockingIOError, OSError):
                pass  # already awake (the pipe is full), or the view is gone

    def run(self) -> None:
        head: int | None = self.head
        failures = 0
        while not self.stopped:
            try:
                with client() as c:
                    if head is None:
                        snap = snapshot(c)
                        head = snap.head
                        self.put(snap)
                    failures = 0
                    read_at = time.monotonic()
                    for event in c.events(since=head, reconnect=False):
                        if self.stopped:
                            return
                        head = event.seq
                        self.put(event)
                        if event.kind in ("session.created", "session.ended") and (
                            time.monotonic() - read_at >= METRICS_EVERY
                        ):
                            read_at = time.monotonic()
                            numbers = metrics(c)
                            if numbers is not None:
                                self.put(numbers)
                        if event.kind == "gap":
                            break
                    else:
                        raise OSError("the daemon closed the event stream")
                head = None  # a gap: list again, then follow on from there
            except Exception as e:  # whatever it was, the view keeps its last state and says why
                if failures == 0:
                    self.put(Down(str(e)))
                head = None
                time.sleep(RETRY[min(failures, len(RETRY) - 1)])
                failures += 1


def take(board: Board, message: Message, now: float) -> None:
    """Apply one message of the feed to ``board``."""
    if isinstance(message, Snapshot):
        board.load(message.head, message.live, message.ended, now)
        board.metrics = message.metrics
    elif isinstance(message, Metrics):
        board.metrics = message
        board.version += 1
    elif isinstance(message, Down):
        board.down = message.reason
        board.version += 1
    else:
        board.apply(message, now)
