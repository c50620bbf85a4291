"""One client connection: peer credentials, framing, the handshake, the idle timeout and
flow control; requests go to ``replies.respond``."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, overload

import msgspec

from omnid_client.errors import OmnidError, PermissionDenied, ProtocolError, TooLarge, VersionMismatch
from omnid_client.protocol import (
    HEADER,
    MAX_FRAME,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    Hello,
    IncomingRequest,
    ResponseFrame,
    Welcome,
    version_note,
)
from omnid_client.trust import peer_credentials

from .. import __version__, api
from .instance import StartupError
from .replies import encode, respond

if TYPE_CHECKING:
    from ..events import Hub, Subscription

log = logging.getLogger("omnid.server")

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a new connection has to send its hello (``OMNID_HANDSHAKE_TIMEOUT``)."""
CONNECTION_IDLE_TIMEOUT = 3600.0
"""Seconds a greeted connection may stay silent before it is closed
(``OMNID_CONNECTION_IDLE_TIMEOUT``). Connections only: sessions do not expire by it."""
WRITE_HIGH_WATER = 256 * 1024
"""Bytes of replies queued for one connection (unsent, or waiting for their commit) past
which the daemon reads no further requests from it, until the client has taken its
replies down to ``WRITE_LOW_WATER``. With ``MAX_IN_FLIGHT`` and the frame limit this
bounds what any one connection can make the daemon hold (see ``CONNECTION_MEMORY``)."""
WRITE_LOW_WATER = 64 * 1024
MAX_IN_FLIGHT = 64
"""Requests of one connection decoded and run but not yet answered (waiting for their
commit) past which no further request of it is decoded."""
READ_CHUNK = 256 * 1024
"""Most bytes read from a socket at once."""
CONNECTION_MEMORY = 2 * WRITE_HIGH_WATER + 4 * (HEADER.size + MAX_FRAME) + READ_CHUNK
"""Most bytes of requests and replies one connection can make the daemon hold, whatever its
client does (about 4.8 MiB): replies unsent and replies waiting for their commit (each
stopped at the high-water mark, plus the reply that crossed it, and a read's request kept
to be retried), and unread request bytes (one frame being assembled, plus one read). A
connection subscribed to events has ``event_buffer`` as its write bound instead (see
``events.subscription``): past it, it misses events and is told of a gap."""

_request_decoder = msgspec.msgpack.Decoder(IncomingRequest)
_hello_decoder = msgspec.msgpack.Decoder(Hello)
_read_into = memoryview(bytearray(READ_CHUNK))
"""Where every connection's reads land, shared: each read is copied out (its exact size)
before the event loop reads anything else. A plain Protocol gets a new ``READ_CHUNK``-byte
bytes object from each read, shrunk to what arrived: a large allocation per request that
can cost more than the request (an mmap, mremap and munmap when the allocator maps it)."""


@dataclass(frozen=True)
class Timeouts:
    handshake: float = HANDSHAKE_TIMEOUT
    idle: float = CONNECTION_IDLE_TIMEOUT
    sweep: float | None = None
    """Seconds between sweeps, overriding the config's ``sweep_interval`` (and its 30 s
    floor) for one-off runs and tests."""

    @classmethod
    def from_env(cls) -> "Timeouts":
        """The defaults, overridden by ``OMNID_HANDSHAKE_TIMEOUT`` / ``OMNID_CONNECTION_IDLE_TIMEOUT``
        / ``OMNID_SWEEP_INTERVAL`` (seconds)."""
        return cls(
            _seconds_from_env("OMNID_HANDSHAKE_TIMEOUT", HANDSHAKE_TIMEOUT),
            _seconds_from_env("OMNID_CONNECTION_IDLE_TIMEOUT", CONNECTION_IDLE_TIMEOUT),
            _seconds_from_env("OMNID_SWEEP_INTERVAL", None),
        )


@overload
def _seconds_from_env(name: str, default: float) -> float: ...
@overload
def _seconds_from_env(name: str, default: None) -> float | None: ...
def _seconds_from_env(name: str, default: float | None) -> float | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise StartupError(f"{name}={text!r} is not a positive number of seconds")
    return value


@dataclass(eq=False)
class ServerState:
    """What every connection shares (uvicorn's ``ServerState``), instead of the daemon."""

    loop: asyncio.AbstractEventLoop
    context: api.Context
    timeouts: Timeouts
    connection_closed: Callable[[], None]
    """Called as each connection closes: its file descriptor is free again."""
    connections: set[Connection] = field(default_factory=set)
    client_versions_seen: set[str] = field(default_factory=set)
    events: Hub | None = None
    """Where ``events.subscribe`` turns a connection into an event stream."""


class Connection(asyncio.BufferedProtocol):
    """One client's connection: its frames in, its replies out. Requests are decoded and
    run in order, but only while the client keeps up with its replies: past
    ``WRITE_HIGH_WATER`` queued reply bytes or ``MAX_IN_FLIGHT`` unanswered requests, the
    rest of what arrived stays undecoded and the socket is not read, until the client has
    taken its replies."""

    def __init__(self, state: ServerState):
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.caller: api.Caller | None = None
        self.greeted = False
        self.closing = False
        self.buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        """The handshake deadline until the hello, then the idle check."""
        self._last_heard = 0.0
        self.subscription: Subscription | None = None
        """Set once the connection subscribed to events: it streams them from then on."""
        self._write_paused = False
        """The transport holds more than its high-water mark of unsent bytes (``WRITE_HIGH_WATER``,
        or ``event_buffer`` once subscribed)."""
        self._reading = True
        self.in_flight = 0
        """Requests run whose replies wait for their commit."""
        self.waiting_bytes = 0
        """Bytes of those replies."""
        self._resume_pending = False

    # -- asyncio callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        self.state.connections.add(self)
        try:
            pid, uid = peer_credentials(transport.get_extra_info("socket"))
        except OSError as e:
            log.warning("cannot read peer credentials: %s", e)
            self.fail(0, PermissionDenied("cannot verify who is connecting"))
            return
        if uid != os.getuid():
            log.warning("refused connection from uid %d (pid %d)", uid, pid)
            self.fail(
                0,
                PermissionDenied(
                    f"permission denied: this omnid serves uid {os.getuid()} only and you are uid {uid}; "
                    "use your own daemon (unset OMNID_SOCKET or OMNID_HOME if they name another user's)",
                    {"uid": uid, "serves_uid": os.getuid()},
                ),
            )
            return
        self.caller = api.Caller(pid, uid)
        self._timer = self.state.loop.call_later(self.state.timeouts.handshake, self._handshake_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        if self.subscription is not None and self.state.events is not None:
            self.state.events.unsubscribe(self.subscription)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None
        self.buffer = bytearray()
        self.state.connection_closed()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _read_into

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` arrived in ``_read_into``."""
        if self.closing:
            return
        self._last_heard = self.state.loop.time()
        if self.buffer:
            self.buffer += _read_into[:nbytes]
            data = bytes(self.buffer)
            self.buffer.clear()
        else:
            data = bytes(_read_into[:nbytes])
        self._consume(data)

    def _consume(self, data: bytes) -> None:
        """Run the complete frames at the start of ``data`` while the client keeps up;
        keep the rest for later."""
        # Frames are decoded straight out of what arrived (usually exactly one frame);
        # only an incomplete tail, or what must wait for the client, is kept.
        view = memoryview(data)
        start, size = 0, len(data)
        while size - start >= HEADER.size and not self.closing and not self.backlogged:
            (length,) = HEADER.unpack_from(data, start)
            if length > MAX_FRAME:
                self.fail(0, TooLarge(f"frame of {length} bytes; the limit is {MAX_FRAME}"))
                return
            end = start + HEADER.size + length
            if size < end:
                break
            self.handle(view[start + HEADER.size : end])
            start = end
        if start < size and not self.closing:
            self.buffer += view[start:]
        self._pace_reading()

    @property
    def backlogged(self) -> bool:
        """The client is behind on its replies: decode nothing more from it for now."""
        return self._write_paused or self.in_flight >= MAX_IN_FLIGHT or self.waiting_bytes >= WRITE_HIGH_WATER

    def _pace_reading(self) -> None:
        """Read the socket only while the client keeps up with its replies."""
        transport = self.transport
        if transport is None or self.closing:
            return
        want = not self.backlogged
        if want != self._reading:
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def caught_up(self) -> None:
        """The client took replies, or some were answered: go on with what waits (soon,
        not from inside a commit or a transport callback)."""
        if self._resume_pending or self.backlogged or self.transport is None:
            return
        self._resume_pending = True
        self.state.loop.call_soon(self._resume)

    def _resume(self) -> None:
        self._resume_pending = False
        if self.closing or self.transport is None or self.backlogged:
            return
        data = bytes(self.buffer)
        self.buffer.clear()
        self._consume(data)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pace_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.subscription is not None and not self.closing:
            # The stream's own buffer has room: catch up, or tell the gap, before reading on.
            self.subscription.drained()
        self.caught_up()

    # -- requests ------------------------------------------------------------------

    def handle(self, payload: memoryview) -> None:
        try:
            request = _request_decoder.decode(payload)
        except (msgspec.DecodeError, RecursionError) as e:
            self.fail(0, ProtocolError(f"malformed request frame: {e}"))
            return
        if not self.greeted:
            self.greet(request)
            return
        if request.method == "events.subscribe" and self.state.events is not None:
            self.state.events.subscribe(self, request)
            return
        caller = self.caller
        assert caller is not None
        respond(self.state.context, caller, request, self)

    def greet(self, request: IncomingRequest) -> None:
        if request.method != "hello":
            self.fail(request.id, ProtocolError("the first request must be hello"))
            return
        try:
            hello = _hello_decoder.decode(request.params)
        except (msgspec.DecodeError, RecursionError) as e:
            self.fail(request.id, ProtocolError(f"malformed hello: {e}"))
            return
        if hello.proto_major != PROTOCOL_MAJOR:
            older = "client" if hello.proto_major < PROTOCOL_MAJOR else "daemon"
            self.fail(
                request.id,
                VersionMismatch(
                    f"protocol {hello.proto_major}.{hello.proto_minor} (client {hello.client_version}) is not "
                    f"compatible with protocol {PROTOCOL_MAJOR}.{PROTOCOL_MINOR} (daemon {__version__}); "
                    f"the {older} is older: upgrade it",
                    {"older": older, "daemon_version": __version__, "client_version": hello.client_version},
                ),
            )
            return
        self.greeted = True
        assert self.caller is not None
        self.caller.client_version = hello.client_version
        self.caller.proto_minor = hello.proto_minor
        note = version_note(hello.client_version, __version__)
        if note is not None and hello.client_version not in self.state.client_versions_seen:
            self.state.client_versions_seen.add(hello.client_version)
            log.info("client %r (pid %d): %s", hello.client_name, self.caller.pid, note)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.state.loop.call_later(self.state.timeouts.idle, self._idle_check)
        self.send(ResponseFrame(request.id, result=Welcome(PROTOCOL_MAJOR, PROTOCOL_MINOR, __version__, os.getpid())))

    def send(self, response: ResponseFrame) -> None:
        self.write(encode(response))

    def write(self, frame: bytearray) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(frame)

    def fail(self, request_id: int, err: OmnidError) -> None:
        """Send a final error and close: the stream can no longer be trusted."""
        self.send(ResponseFrame(request_id, error=api.error_info(err)))
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _handshake_expired(self) -> None:
        self._timer = None
        if not self.greeted:
            self.fail(0, ProtocolError(f"no hello within {self.state.timeouts.handshake:g}s"))

    def _idle_check(self) -> None:
        """Close a connection silent for the idle timeout. No error frame: a client finds
        plain EOF before its next request and reconnects without losing that request."""
        self._timer = None
        if self.transport is None or self.closing or self.subscription is not None:
            return  # an event stream is quiet by nature: it lasts until its client closes it
        loop = self.state.loop
        quiet = loop.time() - self._last_heard
        if quiet < self.state.timeouts.idle:
            self._timer = loop.call_later(self.state.timeouts.idle - quiet, self._idle_check)
            return
        assert self.caller is not None
        log.debug("closing connection of pid %d: silent for %.0fs", self.caller.pid, quiet)
        self.closing = True
        self.transport.close()
