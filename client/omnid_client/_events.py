"""Following the daemon's event stream: ``Client.events`` and ``AsyncClient.events``.

Each stream has a connection of its own. When it is lost (the daemon stopped, was killed
or restarted) the stream connects again, without starting a daemon, and resumes after the
last sequence number it yielded, so nothing kept in the daemon's log is missed or repeated.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING

import msgspec

from ._async_connection import _read_frame
from ._core import decode_reply, encode_frame, frame_length, result_or_raise
from ._sockets import _TIMEVAL, NO_SIGPIPE
from .errors import PermissionDenied, ProtocolError, Timeout, Unavailable, from_wire
from .protocol import HEADER, ErrorInfo, Event, RequestFrame, Subscribe, Subscribed

if TYPE_CHECKING:
    from ._async_connection import AsyncConnection
    from ._connection import Connection

log = logging.getLogger("omnid_client")

RECONNECT_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)
"""Seconds between attempts to reach the daemon again (the last one repeats)."""
SUBSCRIBE_ID = 1


class StreamFrame(msgspec.Struct):
    """What follows the subscribe reply: an event, or an error the daemon closes with."""

    id: int
    event: Event | None = None
    error: ErrorInfo | None = None


_stream_decoder = msgspec.msgpack.Decoder(StreamFrame)


def subscribe_frame(params: Subscribe, since: int | None) -> bytearray:
    return encode_frame(RequestFrame(SUBSCRIBE_ID, "events.subscribe", msgspec.structs.replace(params, since=since)))


def subscribed(payload: bytes | memoryview) -> Subscribed:
    result: Subscribed = result_or_raise(decode_reply(payload, Subscribed))
    return result


def event_of(payload: bytes | memoryview) -> Event:
    try:
        frame = _stream_decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise ProtocolError(f"malformed event frame from daemon: {e}") from e
    if frame.error is not None:
        raise from_wire(frame.error.code, frame.error.message, frame.error.details)
    if frame.event is None:
        raise ProtocolError("frame from daemon carries neither an event nor an error")
    return frame.event


def subscription(
    kinds: Sequence[str],
    tools: Sequence[str],
    projects: Sequence[str],
    sessions: Sequence[str],
    since: int | None,
    include_content: bool,
) -> Subscribe:
    return Subscribe(list(kinds), list(tools), list(projects), list(sessions), since, include_content)


def _delays() -> Iterator[float]:
    yield from RECONNECT_DELAYS
    while True:
        yield RECONNECT_DELAYS[-1]


# -- blocking -------------------------------------------------------------------------------


class _Frames:
    """Frames from a blocking socket, several per read when they come quickly."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray()

    def next(self) -> bytes:
        while True:
            if len(self.buffer) >= HEADER.size:
                end = HEADER.size + frame_length(self.buffer)
                if len(self.buffer) >= end:
                    payload = bytes(self.buffer[HEADER.size : end])
                    del self.buffer[:end]
                    return payload
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionResetError("daemon closed the connection")
            self.buffer += chunk


def follow(conn: Connection, params: Subscribe, reconnect: bool) -> Iterator[Event]:
    """Events from ``conn`` (a connection of the stream's own), resuming after each loss."""
    since = params.since
    first = True
    delays = _delays()
    try:
        while True:
            try:
                conn._open(time.monotonic() + conn.timeout)  # checks whom it talks to: see handshake()
                sock = conn._sock
                assert sock is not None
                sock.sendall(subscribe_frame(params, since), NO_SIGPIPE)  # bounded by conn.timeout
                frames = _Frames(sock)
                head = subscribed(frames.next()).head
                # Events come when they come: no receive deadline from here on.
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(0, 0))
                except OSError:
                    sock.settimeout(None)
            except (OSError, Unavailable, Timeout) as e:
                conn._drop()
                if first or not reconnect:
                    raise Unavailable(f"cannot subscribe to omnid's events: {e}") from None
                time.sleep(next(delays))
                continue
            if since is None:
                since = head
            first = False
            conn.autostart = False  # a stream follows a daemon; it never starts one again
            delays = _delays()
            try:
                while True:
                    event = event_of(frames.next())
                    since = event.seq
                    yield event
            except OSError as e:
                log.debug("event stream lost (%s); reconnecting", e)
            conn._drop()
            if not reconnect:
                return
            time.sleep(next(delays))
    finally:
        conn.close()


# -- asyncio --------------------------------------------------------------------------------


async def _open(conn: AsyncConnection, allow_start: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection of the stream's own, through the same checks and handshake as every
    other (nothing is sent to a socket this user must not trust), before ``conn.timeout``."""
    deadline = asyncio.get_running_loop().time() + conn.timeout
    skipped: list[str] = []
    for path, source in conn._candidates():
        try:
            opened = await conn._handshaken(path, deadline)
        except PermissionDenied as e:
            conn._skip_untrusted_hint(source, e, skipped)
            continue
        if opened is not None:
            return opened
    if allow_start and conn.autostart:
        await conn.connect()  # starts the daemon (or says why it cannot)
        await conn.close()
        return await _open(conn, False)
    raise Unavailable("omnid is not running" + "".join(f"; {s}" for s in skipped))


async def follow_async(conn: AsyncConnection, params: Subscribe, reconnect: bool) -> AsyncIterator[Event]:
    since = params.since
    first = True
    delays = _delays()
    while True:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await _open(conn, first)
            writer.write(subscribe_frame(params, since))
            head = subscribed(await asyncio.wait_for(_read_frame(reader), conn.timeout)).head
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, Unavailable, Timeout) as e:
            if writer is not None:
                writer.close()
            if first or not reconnect:
                raise Unavailable(f"cannot subscribe to omnid's events: {e}") from None
            await asyncio.sleep(next(delays))
            continue
        if since is None:
            since = head
        first = False
        delays = _delays()
        try:
            while True:
                event = event_of(await _read_frame(reader))
                since = event.seq
                yield event
        except (OSError, asyncio.IncompleteReadError) as e:
            log.debug("event stream lost (%s); reconnecting", e)
        finally:
            writer.close()
        if not reconnect:
            return
        await asyncio.sleep(next(delays))
