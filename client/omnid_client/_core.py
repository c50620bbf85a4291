"""What the sync and async clients share: framing, the method surface, reply decoding."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Generic, TypeVar

import msgspec

from . import __version__
from .errors import OmnidError, ProtocolError, from_wire
from .protocol import (
    HEADER,
    MAX_FRAME,
    METHODS,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    DaemonStatus,
    Empty,
    Find,
    GetOrCreate,
    GetOrCreateResult,
    Hello,
    IncomingResponse,
    ListSessions,
    Reap,
    ReapResult,
    RequestFrame,
    Session,
    SessionPage,
    SessionRef,
    Welcome,
)

T = TypeVar("T")
_encoder = msgspec.msgpack.Encoder()
_response_decoder = msgspec.msgpack.Decoder(IncomingResponse)


def encode_frame(msg: Any) -> bytearray:
    buf = bytearray(HEADER.size)
    _encoder.encode_into(msg, buf, HEADER.size)
    HEADER.pack_into(buf, 0, len(buf) - HEADER.size)
    return buf


def frame_length(header: bytes) -> int:
    (n,) = HEADER.unpack(header)
    if n > MAX_FRAME:
        raise ProtocolError(f"daemon sent a {n}-byte frame; the limit is {MAX_FRAME}")
    return n


@lru_cache(maxsize=None)
def _decoder(result_type: type) -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(result_type)


def parse_response(payload: bytes) -> IncomingResponse:
    try:
        return _response_decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise ProtocolError(f"malformed reply from daemon: {e}") from e


def result_of(resp: IncomingResponse, result_type: type) -> Any:
    """The decoded result of a reply; raises the typed error for an error reply."""
    if resp.error is not None:
        raise from_wire(resp.error.code, resp.error.message, resp.error.details)
    try:
        return _decoder(result_type).decode(resp.result)
    except msgspec.DecodeError as e:
        raise ProtocolError(f"malformed {result_type.__name__} from daemon: {e}") from e


def hello_frame(client_name: str) -> bytearray:
    hello = Hello(PROTOCOL_MAJOR, PROTOCOL_MINOR, __version__, client_name)
    return encode_frame(RequestFrame(0, "hello", hello))


class Call(Generic[T]):
    """One RPC about to be made: method, parameters, and how to shape the result."""

    __slots__ = ("method", "params", "idempotent", "result_type", "shape")

    def __init__(self, method: str, params: Any, shape: Callable[[Any], T] | None = None, idempotent: bool | None = None):
        spec = METHODS[method]
        self.method = method
        self.params = params
        self.result_type = spec.result
        self.idempotent = spec.idempotent if idempotent is None else idempotent
        self.shape = shape

    def finish(self, result: Any) -> T:
        return self.shape(result) if self.shape else result


class Methods:
    """Every omnid call, written once. ``_call`` is blocking in ``Client`` and a
    coroutine in ``AsyncClient``, so each method returns a value or an awaitable."""

    def _call(self, call: Call) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def get_or_create(
        self,
        tool_id: str,
        *,
        pid: int | None = None,
        tool_version: str | None = None,
        workspace: str | None = None,
        session_type: str = "default",
        metadata: dict[str, Any] | None = None,
        dedup: bool = True,
    ) -> GetOrCreateResult:
        """The live session of ``tool_id`` for process ``pid`` (default: the caller), created if none."""
        params = GetOrCreate(tool_id, pid, tool_version, workspace, session_type, metadata or {}, dedup)
        return self._call(Call("session.get_or_create", params, idempotent=dedup))

    def find(self, tool_id: str, *, pid: int | None = None) -> Session | None:
        """The live session of ``tool_id`` for ``pid`` (default: the caller), or None. Never creates."""
        return self._call(Call("session.find", Find(tool_id, pid), shape=lambda r: r.session))

    def heartbeat(self, session_id: str) -> Session:
        return self._call(Call("session.heartbeat", SessionRef(session_id)))

    def end(self, session_id: str) -> Session:
        """End a session (idempotent: an already-ended session is returned as it is)."""
        return self._call(Call("session.end", SessionRef(session_id)))

    def get(self, session_id: str) -> Session:
        return self._call(Call("session.get", SessionRef(session_id)))

    def list_sessions(
        self,
        *,
        tool_id: str | None = None,
        session_type: str | None = None,
        status: str = "all",
        workspace: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SessionPage:
        """Sessions newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
        params = ListSessions(tool_id, session_type, status, workspace, limit, cursor)
        return self._call(Call("session.list", params))

    def status(self) -> DaemonStatus:
        return self._call(Call("daemon.status", Empty()))

    def reap(self, *, dry_run: bool = False) -> ReapResult:
        """Check every live session's owner now and end those whose process is gone."""
        return self._call(Call("daemon.reap", Reap(dry_run), idempotent=True))

    def shutdown(self) -> Empty:
        """Ask the daemon to stop gracefully (it replies first)."""
        return self._call(Call("daemon.shutdown", Empty()))


def check_welcome(payload: bytes) -> Welcome:
    return result_of(parse_response(payload), Welcome)


__all__ = ["Call", "Methods", "OmnidError", "encode_frame", "parse_response", "result_of", "frame_length", "hello_frame", "check_welcome"]
