"""One function per RPC method, and the dispatcher that decodes, validates and runs them."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import msgspec

from omnid_client.errors import Conflict, InternalError, Invalid, NotFound, OmnidError, RemoteError, TooLarge, Unsupported
from omnid_client.protocol import (
    MAX_METADATA_BYTES,
    METHODS,
    DaemonStatus,
    Empty,
    ErrorInfo,
    Find,
    FindResult,
    GetOrCreate,
    GetOrCreateResult,
    IncomingRequest,
    ListSessions,
    Reap,
    ReapResult,
    ResponseFrame,
    Session,
    SessionPage,
    SessionRef,
)

from .identity import ProcessIdentity, cwd_of, owner_process
from .store import sessions as q
from .store import storage_error

if TYPE_CHECKING:
    from .server import Daemon

log = logging.getLogger("omnid.api")


@dataclass(slots=True)
class Caller:
    """Who is on the other end of a connection, from the kernel's peer credentials."""

    pid: int
    uid: int
    daemon: "Daemon"


Handler = Callable[[Caller, Any], Any]
HANDLERS: dict[str, Handler] = {}
_param_decoders = {name: msgspec.msgpack.Decoder(spec.params) for name, spec in METHODS.items()}
_size_encoder = msgspec.msgpack.Encoder()


def handles(method: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        assert method in METHODS, method
        HANDLERS[method] = fn
        return fn

    return register


def error_info(err: OmnidError) -> ErrorInfo:
    code = getattr(err, "code", "internal")
    details = getattr(err, "details", {}) or {}
    return ErrorInfo(code, str(err), details)


def dispatch(caller: Caller, request: IncomingRequest) -> ResponseFrame:
    """Run one request; every failure becomes a typed error reply, never an exception."""
    handler = HANDLERS.get(request.method)
    if handler is None:
        err: OmnidError = Unsupported(f"unknown method {request.method!r}", {"method": request.method})
        return ResponseFrame(request.id, error=error_info(err))
    try:
        params = _param_decoders[request.method].decode(request.params)
    except msgspec.ValidationError as e:
        return ResponseFrame(request.id, error=error_info(Invalid(f"{request.method}: {e}")))
    except (msgspec.DecodeError, RecursionError) as e:
        return ResponseFrame(request.id, error=error_info(Invalid(f"{request.method}: undecodable parameters: {e}")))
    store = caller.daemon.store
    try:
        if METHODS[request.method].writes:
            with store.write():
                result = handler(caller, params)
        else:
            result = handler(caller, params)
    except RemoteError as e:
        return ResponseFrame(request.id, error=error_info(e))
    except sqlite3.Error as e:
        log.error("%s failed in the database: %s", request.method, e)
        return ResponseFrame(request.id, error=error_info(storage_error(e)))
    except Exception:
        log.exception("%s failed", request.method)
        return ResponseFrame(request.id, error=error_info(InternalError(f"{request.method} failed; see the daemon log")))
    return ResponseFrame(request.id, result=result)


def check_metadata(metadata: dict[str, Any]) -> None:
    size = len(_size_encoder.encode(metadata))
    if size > MAX_METADATA_BYTES:
        raise TooLarge(f"metadata is {size} bytes encoded; the limit is {MAX_METADATA_BYTES}", {"field": "metadata"})


def _live_session(caller: Caller, session_id: str) -> Session:
    session = q.get(caller.daemon.store.db, session_id)
    if session is None:
        raise NotFound(f"no session {session_id}", {"session_id": session_id})
    if session.ended_at is not None:
        raise Conflict(
            f"session {session_id} has ended ({session.end_reason})",
            {"session_id": session_id, "end_reason": session.end_reason},
        )
    return session


# --- sessions ------------------------------------------------------------------


@handles("session.get_or_create")
def get_or_create(caller: Caller, p: GetOrCreate) -> GetOrCreateResult:
    check_metadata(p.metadata)
    daemon = caller.daemon
    owner = owner_process(caller.pid if p.pid is None else p.pid, caller.uid).identity
    db = daemon.store.db
    now = daemon.store.now()
    if p.dedup:
        existing = q.find_live(db, p.tool_id, owner)
        if existing is not None:
            q.touch(db, existing.session_id, now)
            existing.last_activity = now
            return GetOrCreateResult("existing", existing)
    session = Session(
        session_id=str(uuid.uuid4()),
        tool_id=p.tool_id,
        tool_version=p.tool_version,
        session_type=p.session_type,
        owner_pid=owner.pid,
        owner_start=owner.start,
        boot_id=owner.boot_id,
        workspace=p.workspace if p.workspace is not None else cwd_of(owner.pid),
        metadata=p.metadata,
        started_at=now,
        last_activity=now,
    )
    q.insert(db, session, dedup=p.dedup)
    daemon.reaper.track(session.session_id, owner)
    return GetOrCreateResult("created", session)


@handles("session.find")
def find(caller: Caller, p: Find) -> FindResult:
    pid = caller.pid if p.pid is None else p.pid
    try:
        owner = owner_process(pid, caller.uid).identity
    except NotFound:
        return FindResult(None)
    return FindResult(q.find_live(caller.daemon.store.db, p.tool_id, owner))


@handles("session.heartbeat")
def heartbeat(caller: Caller, p: SessionRef) -> Session:
    session = _live_session(caller, p.session_id)
    session.last_activity = caller.daemon.store.now()
    q.touch(caller.daemon.store.db, session.session_id, session.last_activity)
    return session


@handles("session.end")
def end(caller: Caller, p: SessionRef) -> Session:
    store = caller.daemon.store
    session = q.get(store.db, p.session_id)
    if session is None:
        raise NotFound(f"no session {p.session_id}", {"session_id": p.session_id})
    if session.ended_at is None:
        q.end(store.db, [session.session_id], "ended", store.now())
        if session.owner_pid is not None:
            owner = ProcessIdentity(session.owner_pid, session.owner_start or 0, session.boot_id or "")
            caller.daemon.reaper.untrack(session.session_id, owner)
        session = q.get(store.db, p.session_id)
    return session


@handles("session.get")
def get(caller: Caller, p: SessionRef) -> Session:
    session = q.get(caller.daemon.store.db, p.session_id)
    if session is None:
        raise NotFound(f"no session {p.session_id}", {"session_id": p.session_id})
    return session


@handles("session.list")
def list_sessions(caller: Caller, p: ListSessions) -> SessionPage:
    sessions, cursor = q.page(
        caller.daemon.store.db,
        tool_id=p.tool_id,
        session_type=p.session_type,
        status=p.status,
        workspace=p.workspace,
        limit=p.limit,
        cursor=p.cursor,
    )
    return SessionPage(sessions, cursor)


# --- daemon --------------------------------------------------------------------


@handles("daemon.status")
def status(caller: Caller, _: Empty) -> DaemonStatus:
    return caller.daemon.status()


@handles("daemon.reap")
def reap(caller: Caller, p: Reap) -> ReapResult:
    return caller.daemon.reaper.sweep(trigger="manual", dry_run=p.dry_run)


@handles("daemon.shutdown")
def shutdown(caller: Caller, _: Empty) -> Empty:
    caller.daemon.request_stop("shutdown requested by pid %d" % caller.pid)
    return Empty()


__all__ = ["Caller", "dispatch", "HANDLERS"]
