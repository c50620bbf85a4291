"""The one definition of every omnid wire message, shared by the daemon and the clients.

A frame is a 4-byte big-endian length followed by that many bytes of MessagePack.
The first request on a connection is ``hello``; every request names its method and
carries that method's parameter struct, every response carries a result or an error.
"""

from __future__ import annotations

import struct
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0

MAX_FRAME = 1 << 20
"""Largest frame either side accepts, in bytes (header excluded)."""
MAX_METADATA_BYTES = 64 * 1024
"""Largest metadata document, measured as its MessagePack encoding."""

HEADER = struct.Struct(">I")

ToolId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]*$")]
ShortText = Annotated[str, Meta(max_length=256)]
PathText = Annotated[str, Meta(min_length=1, max_length=4096)]
SessionId = Annotated[str, Meta(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
Pid = int  # range depends on the OS, checked by the daemon
Limit = Annotated[int, Meta(ge=1, le=1000)]
SessionStatus = Literal["live", "ended", "all"]
EndReason = Literal["ended", "reaped", "expired"]


class RequestFrame(Struct):
    """A request as sent; ``params`` is the method's parameter struct."""

    id: int
    method: str
    params: Any = {}


class IncomingRequest(Struct):
    """A request as received; ``params`` stays undecoded until the method is known."""

    id: int
    method: str
    params: msgspec.Raw = msgspec.Raw(b"\x80")


class ErrorInfo(Struct):
    code: str
    message: str
    details: dict[str, Any] = {}


class ResponseFrame(Struct, omit_defaults=True):
    """A response as sent; exactly one of ``result`` and ``error`` is meaningful."""

    id: int
    result: Any = None
    error: ErrorInfo | None = None


class IncomingResponse(Struct):
    id: int
    result: msgspec.Raw = msgspec.Raw(b"\xc0")
    error: ErrorInfo | None = None


# --- handshake -------------------------------------------------------------------


class Hello(Struct):
    proto_major: int
    proto_minor: int
    client_version: ShortText
    client_name: ShortText = ""


class Welcome(Struct):
    proto_major: int
    proto_minor: int
    server_version: str
    pid: int


# --- sessions --------------------------------------------------------------------


class Session(Struct):
    session_id: str
    tool_id: str
    tool_version: str | None
    session_type: str
    owner_pid: int | None
    owner_start: int | None
    boot_id: str | None
    workspace: str | None
    metadata: dict[str, Any]
    started_at: float
    last_activity: float
    ended_at: float | None = None
    end_reason: EndReason | None = None

    @property
    def live(self) -> bool:
        return self.ended_at is None


class GetOrCreate(Struct):
    tool_id: ToolId
    pid: Pid | None = None
    tool_version: ShortText | None = None
    workspace: PathText | None = None
    session_type: Annotated[str, Meta(min_length=1, max_length=64)] = "default"
    metadata: dict[str, Any] = {}
    dedup: bool = True


class GetOrCreateResult(Struct):
    status: Literal["created", "existing"]
    session: Session


class Find(Struct):
    tool_id: ToolId
    pid: Pid | None = None


class FindResult(Struct):
    session: Session | None


class SessionRef(Struct):
    session_id: SessionId


class ListSessions(Struct):
    tool_id: ToolId | None = None
    session_type: Annotated[str, Meta(max_length=64)] | None = None
    status: SessionStatus = "all"
    workspace: PathText | None = None
    limit: Limit = 50
    cursor: Annotated[str, Meta(max_length=256)] | None = None


class SessionPage(Struct):
    sessions: list[Session]
    next_cursor: str | None = None


# --- daemon ----------------------------------------------------------------------


class Empty(Struct):
    pass


class Reap(Struct):
    dry_run: bool = False


class ReapedSession(Struct):
    session_id: str
    tool_id: str
    owner_pid: int | None
    cause: str


class ReapResult(Struct):
    dry_run: bool
    at: float
    sessions: list[ReapedSession]


class LastReap(Struct):
    at: float
    trigger: str
    reaped: int


class DaemonStatus(Struct):
    pid: int
    version: str
    protocol: str
    started_at: float
    uptime: float
    home: str
    socket: str
    database: str
    database_bytes: int
    wal_bytes: int
    schema_version: int
    log: str | None
    watcher: Literal["pidfd", "kqueue", "polling"]
    live_sessions: int
    watched_processes: int
    connections: int
    last_reap: LastReap | None


class Method(Struct, frozen=True):
    params: type
    result: type
    writes: bool
    idempotent: bool = True


METHODS: dict[str, Method] = {
    "session.get_or_create": Method(GetOrCreate, GetOrCreateResult, writes=True),
    "session.find": Method(Find, FindResult, writes=False),
    "session.heartbeat": Method(SessionRef, Session, writes=True),
    "session.end": Method(SessionRef, Session, writes=True),
    "session.get": Method(SessionRef, Session, writes=False),
    "session.list": Method(ListSessions, SessionPage, writes=False),
    "daemon.status": Method(Empty, DaemonStatus, writes=False),
    "daemon.reap": Method(Reap, ReapResult, writes=True),
    "daemon.shutdown": Method(Empty, Empty, writes=False, idempotent=False),
}
"""Every RPC method: its parameter and result types, whether it writes, and whether
a client may resend it after a lost connection without changing the outcome."""
