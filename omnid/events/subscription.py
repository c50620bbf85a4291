"""One subscriber of the event stream: its filters, how far it has got, and its bounded
buffer (the connection's write buffer): live events that find it full are missed, and told
as one ``gap`` once it has drained."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Callable, Protocol

import msgspec
from msgspec import Struct

from omnid_client.protocol import HEADER, Event, ResponseFrame, Subscribe

MAX_CONTENT_BYTES = 512 * 1024
"""Message contents larger than this together are left out of an event (``content_omitted``)."""
_DAEMON_WIDE = frozenset({"config.reloaded", "storage.error", "gap"})

_encoder = msgspec.msgpack.Encoder()


class Connection(Protocol):
    """What the hub needs of a client connection (``daemon.connection.Connection``)."""

    transport: asyncio.Transport | None
    subscription: Subscription | None

    def send(self, response: ResponseFrame) -> None: ...


class _EventFrame(Struct):
    """``protocol.EventFrame`` with its event already encoded (once for every subscriber)."""

    id: int
    event: msgspec.Raw


class Subscription:
    def __init__(
        self, conn: Connection, request_id: int, params: Subscribe, limit: int, pump: Callable[[Subscription], None]
    ):
        self.conn = conn
        self.request_id = request_id
        self.kinds = frozenset(params.kinds)
        self.tools = frozenset(params.tools)
        self.projects = frozenset(params.projects)
        self.sessions = frozenset(params.sessions)
        self.include_content = params.include_content
        self.limit = limit
        """Bytes its write buffer may hold (``event_buffer`` as it subscribed: the transport's
        high-water mark, so that drained() is called once it is under a quarter of it)."""
        self._pump = pump
        """The hub's catching up, called again once the buffer has drained."""
        self.position = 0
        """Every event up to this sequence number was delivered, filtered out or told as missed."""
        self.catching_up = False
        """Replaying from ``position`` to the head; live events wait in the ring meanwhile."""
        self.reading = False
        """A read of the on-disk log for it is under way."""
        self.pending: deque[tuple[Event, bytes]] = deque()
        """Events fetched for catching up, not yet written."""
        self.lag: tuple[int, int] | None = None
        """(first, last) sequence numbers missed since the buffer filled."""
        self.closed = False

    def passes(self, e: Event) -> bool:
        if self.kinds and e.kind not in self.kinds and e.kind.split(".")[0] not in self.kinds:
            return False
        if e.kind in _DAEMON_WIDE:
            return True
        return (
            (not self.tools or e.tool_id in self.tools)
            and (not self.projects or e.project_id in self.projects)
            and (not self.sessions or e.session_id in self.sessions)
        )

    def full(self) -> bool:
        transport = self.conn.transport
        return transport is None or transport.get_write_buffer_size() > self.limit

    def catch_up(self, event: Event, raw: bytes) -> None:
        if event.seq <= self.position:
            return
        self.fill_hole(event.seq)
        if self.passes(event):
            self._write(raw)
        self.position = event.seq

    def offer(self, event: Event, raw: bytes, contents: list[str] | None) -> None:
        """A live event, as it is published."""
        if self.catching_up or self.closed or event.seq <= self.position:
            return
        if self.lag is not None:
            self.lag = (self.lag[0], event.seq)
            return
        if not self.passes(event):
            self.position = event.seq
            return
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return
        if self.full():
            self.lag = (event.seq, event.seq)
            return
        if contents is not None and self.include_content:
            raw = _encoder.encode(with_contents(event, contents))
        self._write(raw)
        self.position = event.seq

    def fill_hole(self, next_seq: int) -> None:
        """Catching up, before ``next_seq``: tell of the events between it and the position,
        which are kept nowhere (any more)."""
        if next_seq > self.position + 1:
            self.send_gap(self.position + 1, next_seq - 1, resume=None, reason="expired")

    def drained(self) -> None:
        """The buffer has room again: carry on catching up, or say what was missed and carry on live."""
        if self.catching_up:
            self._pump(self)
        elif self.lag is not None and not self.closed:
            first, last = self.lag
            self.lag = None
            self.send_gap(first, last, resume=first - 1, reason="slow")

    def send_gap(self, first: int, last: int, *, resume: int | None, reason: str, seq: int | None = None) -> None:
        data = {"from_seq": first, "to_seq": last, "resume": resume, "reason": reason}
        self._write(_encoder.encode(Event(last if seq is None else seq, "gap", time.time(), data=data)))
        self.position = max(self.position, last if seq is None else seq)

    def _write(self, raw: bytes) -> None:
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return
        buf = bytearray(HEADER.size)
        _encoder.encode_into(_EventFrame(self.request_id, msgspec.Raw(raw)), buf, HEADER.size)
        HEADER.pack_into(buf, 0, len(buf) - HEADER.size)
        transport.write(buf)


def with_contents(event: Event, contents: list[str]) -> Event:
    size = sum(len(c) for c in contents) * 4  # UTF-8 at worst
    extra: dict[str, Any] = {"content_omitted": True} if size > MAX_CONTENT_BYTES else {"contents": contents}
    return msgspec.structs.replace(event, data={**event.data, **extra})
