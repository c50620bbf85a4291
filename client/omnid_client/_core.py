"""What the sync and async clients share, without I/O: framing, reply decoding, ``Call[T]``,
the client options, and which sockets to try and where to start a daemon."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Generic, TypeVar, cast, overload

import msgspec

from ._version import __version__
from .errors import OmnidError, ProtocolError, TooLarge, Unavailable, from_wire
from .paths import Paths, daemon_paths, socket_candidates
from .protocol import (
    HEADER,
    MAX_FRAME,
    METHODS,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    Hello,
    IncomingResponse,
    Reply,
    RequestFrame,
    Welcome,
    version_note,
)

log = logging.getLogger("omnid_client")
T = TypeVar("T")
R = TypeVar("R")
_noted: set[str] = set()
_encoder = msgspec.msgpack.Encoder()
_response_decoder = msgspec.msgpack.Decoder(IncomingResponse)


def encode_frame(msg: Any, buf: bytearray | None = None) -> bytearray:
    """A length-prefixed frame, in ``buf`` if given (replacing what it held, so a blocking
    sender can reuse one); TooLarge (nothing sent) past the daemon's frame limit."""
    if buf is None:
        buf = bytearray(HEADER.size)
    _encoder.encode_into(msg, buf, HEADER.size)
    size = len(buf) - HEADER.size
    if size > MAX_FRAME:
        del buf[HEADER.size :]
        raise TooLarge(f"request is {size} bytes encoded; the frame limit is {MAX_FRAME}", {"size": size})
    HEADER.pack_into(buf, 0, size)
    return buf


def frame_length(header: bytes | bytearray | memoryview) -> int:
    """The payload length a frame starts with (from the first bytes of ``header``)."""
    n: int = HEADER.unpack_from(header)[0]
    if n > MAX_FRAME:
        raise ProtocolError(f"daemon sent a {n}-byte frame; the limit is {MAX_FRAME}")
    return n


@lru_cache(maxsize=None)
def _decoder(result_type: type[Any]) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(result_type)


def parse_response(payload: bytes | memoryview) -> IncomingResponse:
    try:
        return _response_decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise ProtocolError(f"malformed reply from daemon: {e}") from e


def result_of(resp: IncomingResponse, result_type: type[R]) -> R:
    """The decoded result of a reply; raises the typed error for an error reply."""
    if resp.error is not None:
        raise from_wire(resp.error.code, resp.error.message, resp.error.details)
    try:
        decoder = _decoder(result_type)  # type: ignore[arg-type]  # a type is hashable
        return cast(R, decoder.decode(resp.result))
    except msgspec.DecodeError as e:
        raise ProtocolError(f"malformed {result_type.__name__} from daemon: {e}") from e


_reply_decoders: dict[type[Any], Callable[[Any], Reply[Any]]] = {}


def decode_reply(payload: Any, result_type: type[Any]) -> Reply[Any]:
    """A reply whose result is ``result_type`` (or an error), in one pass: not the
    envelope first and the result from it again."""
    decode = _reply_decoders.get(result_type)
    if decode is None:
        decode = _reply_decoders[result_type] = msgspec.msgpack.Decoder(Reply[result_type]).decode  # type: ignore[valid-type]
    try:
        return decode(payload)
    except msgspec.DecodeError as e:
        raise ProtocolError(f"malformed {result_type.__name__} reply from daemon: {e}") from e


def result_or_raise(reply: Reply[Any]) -> Any:
    """The result of a decoded reply; raises the typed error for an error reply."""
    if reply.error is not None:
        raise from_wire(reply.error.code, reply.error.message, reply.error.details)
    if reply.result is None:
        raise ProtocolError("reply from daemon carries neither a result nor an error")
    return reply.result


def hello_frame(client_name: str) -> bytearray:
    hello = Hello(PROTOCOL_MAJOR, PROTOCOL_MINOR, __version__, client_name)
    return encode_frame(RequestFrame(0, "hello", hello))


def check_welcome(payload: bytes | memoryview) -> Welcome:
    return result_of(parse_response(payload), Welcome)


def note_versions(welcome: Welcome) -> str | None:
    """Which side is older when client and daemon differ (logged once per process), or None."""
    note = version_note(__version__, welcome.server_version)
    if note is not None and note not in _noted:
        _noted.add(note)
        log.info("%s", note)
    return note


class Call(Generic[T]):
    """One RPC about to be made: method, parameters, and how to shape the result into a ``T``.

    ``result`` is the method's result type (as in ``METHODS``) and ``shape`` picks the
    value a caller gets out of it; both are only for the type checker to tie the method
    to ``T``. Without them (raw calls in tests) the result stays untyped."""

    __slots__ = ("method", "params", "idempotent", "result_type", "shape")

    @overload
    def __init__(
        self: Call[R], method: str, params: Any, result: type[R], *, idempotent: bool | None = None
    ) -> None: ...
    @overload
    def __init__(
        self, method: str, params: Any, result: type[R], *, shape: Callable[[R], T], idempotent: bool | None = None
    ) -> None: ...
    @overload
    def __init__(self: Call[Any], method: str, params: Any) -> None: ...

    def __init__(
        self,
        method: str,
        params: Any,
        result: type[Any] | None = None,
        *,
        shape: Callable[[Any], T] | None = None,
        idempotent: bool | None = None,
    ) -> None:
        spec = METHODS[method]
        assert result is None or result is spec.result, f"{method} answers {spec.result.__name__}"
        self.method = method
        self.params = params
        self.result_type: type[Any] = spec.result
        self.idempotent: bool = spec.idempotent if idempotent is None else idempotent
        self.shape = shape

    def finish(self, result: Any) -> T:
        return self.shape(result) if self.shape else cast(T, result)


class BaseClient:
    """The options both clients take, and their handshake state.

    ``timeout`` bounds each call, ``connect_timeout`` each connection attempt. With
    ``autostart`` a missing daemon is started (and waited for, up to ``start_timeout``).
    With ``fail_open`` every call returns None instead of raising an ``OmnidError``,
    for tools that must never block or crash because of omnid (the calls' types do not
    say so: a fail-open caller checks for None).
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 1.0,
        autostart: bool = True,
        start_timeout: float = 5.0,
        fail_open: bool = False,
        client_name: str = "",
    ):
        self.socket_path = Path(socket_path) if socket_path else None
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.autostart = autostart
        self.start_timeout = start_timeout
        self.fail_open = fail_open
        self.client_name = client_name
        self.welcome: Welcome | None = None
        self.version_note: str | None = None
        """Set when the daemon is another release than this client, naming the older side."""
        self._next_id = 1
        self._init_connection()

    def _init_connection(self) -> None:  # pragma: no cover - overridden
        """Set up the (unconnected) connection state of this kind of client."""

    def _candidates(self) -> list[tuple[Path, str]]:
        """The sockets to try, in order, each with how it was chosen."""
        return [(self.socket_path, "argument")] if self.socket_path else socket_candidates()

    def _autostart_paths(self, candidates: list[tuple[Path, str]]) -> Paths:
        """Where to start a daemon once none of ``candidates`` answered; Unavailable
        when this client may not start one."""
        if not self.autostart:
            tried = ", ".join(str(p) for p, _ in candidates)
            raise Unavailable(f"omnid is not running (tried {tried})")
        paths = daemon_paths()
        if self.socket_path:
            paths = dataclasses.replace(paths, socket=self.socket_path)
        return paths


__all__ = [
    "BaseClient",
    "Call",
    "OmnidError",
    "check_welcome",
    "decode_reply",
    "encode_frame",
    "frame_length",
    "hello_frame",
    "note_versions",
    "parse_response",
    "result_of",
    "result_or_raise",
]
