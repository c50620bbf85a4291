"""The RPC methods: the dispatcher that decodes, validates and runs them, and the helpers
they share. Each submodule holds one function per method of one entity."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import msgspec

from omnid_client.errors import (
    Conflict,
    InternalError,
    Invalid,
    NotFound,
    OmnidError,
    RemoteError,
    TooLarge,
    Unsupported,
)
from omnid_client.protocol import (
    MAX_METADATA_BYTES,
    MAX_NESTING,
    METHODS,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    ErrorInfo,
    IncomingRequest,
    ResponseFrame,
    Session,
    compare_versions,
)

from .. import __version__
from ..projects import locate
from ..store import projects as project_store
from ..store import sessions as session_store
from ..store import storage_error
from ..store.codec import dumps

if TYPE_CHECKING:
    from ..server import Daemon

log = logging.getLogger("omnid.api")


@dataclass(slots=True)
class Caller:
    """Who is on the other end of a connection, from the kernel's peer credentials."""

    pid: int
    uid: int
    daemon: "Daemon"
    client_version: str = ""
    proto_minor: int = 0


Handler = Callable[[Caller, Any], Any]
_ROUTES: dict[str, tuple[Handler, msgspec.msgpack.Decoder, bool, bool]] = {}
"""method -> (handler, parameter decoder, writes, grows): one lookup per request."""

SHRINKING = frozenset({
    "session.heartbeat", "session.end", "daemon.reap", "memory.get", "memory.delete",
    "maintenance.cleanup_orphans", "maintenance.retention",
})
"""Writes that add no data (or free some), so the storage quota never refuses them."""


def handles(method: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        assert method in METHODS, method
        spec = METHODS[method]
        _ROUTES[method] = (fn, msgspec.msgpack.Decoder(spec.params), spec.writes, method not in SHRINKING)
        return fn

    return register


def error_info(err: OmnidError) -> ErrorInfo:
    code = getattr(err, "code", "internal")
    details = getattr(err, "details", {}) or {}
    return ErrorInfo(code, str(err), details)


def dispatch(caller: Caller, request: IncomingRequest) -> ResponseFrame | asyncio.Future[ResponseFrame]:
    """Run one request; every failure becomes a typed error reply, never an exception. A
    handler may return a future (a task): its reply then comes when that is done."""
    route = _ROUTES.get(request.method)
    if route is None:
        message = f"unknown method {request.method!r}"
        if caller.proto_minor > PROTOCOL_MINOR or compare_versions(caller.client_version or "0", __version__) > 0:
            message += (
                f"; the daemon ({__version__}, protocol {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}) is older than the "
                f"client ({caller.client_version}, protocol {PROTOCOL_MAJOR}.{caller.proto_minor}): upgrade omnid, "
                "or run `omnid stop` if it is upgraded and this daemon is still the old one"
            )
        err: OmnidError = Unsupported(message, {"method": request.method, "daemon_version": __version__})
        return ResponseFrame(request.id, error=error_info(err))
    handler, decoder, writes, grows = route
    try:
        params = decoder.decode(request.params)
    except msgspec.ValidationError as e:
        # msgspec names the field; a length bound is a size limit, everything else bad input.
        kind = TooLarge if "length <=" in str(e) else Invalid
        return ResponseFrame(request.id, error=error_info(kind(f"{request.method}: {e}")))
    except (msgspec.DecodeError, RecursionError) as e:
        return ResponseFrame(request.id, error=error_info(Invalid(f"{request.method}: undecodable parameters: {e}")))
    store = caller.daemon.store
    try:
        if writes:
            store.ensure_writable(grows=grows, adding=len(request.params))
            with store.write():
                result = handler(caller, params)
        else:
            result = handler(caller, params)
    except Exception as e:
        return failure(request, e)
    if isinstance(result, asyncio.Future):
        return later(request, result)
    return ResponseFrame(request.id, result=result)


def failure(request: IncomingRequest, e: Exception) -> ResponseFrame:
    """The error reply for a request whose handler raised ``e``."""
    if isinstance(e, RemoteError):
        return ResponseFrame(request.id, error=error_info(e))
    if isinstance(e, sqlite3.Error):
        log.error("%s failed in the database: %s", request.method, e)
        return ResponseFrame(request.id, error=error_info(storage_error(e)))
    log.error("%s failed", request.method, exc_info=e)
    return ResponseFrame(request.id, error=error_info(InternalError(f"{request.method} failed; see the daemon log")))


def later(request: IncomingRequest, work: asyncio.Future) -> asyncio.Future[ResponseFrame]:
    """The reply to a request whose handler goes on in the background (a task that does
    file I/O off the event loop): resolves with it, or is cancelled with it."""
    reply: asyncio.Future[ResponseFrame] = work.get_loop().create_future()

    def done(work: asyncio.Future) -> None:
        if work.cancelled():
            reply.cancel()
        elif (e := work.exception()) is not None:
            reply.set_result(failure(request, e))  # type: ignore[arg-type]
        else:
            reply.set_result(ResponseFrame(request.id, result=work.result()))

    work.add_done_callback(done)
    return reply


def check_size(value: Any, limit: int = MAX_METADATA_BYTES, field: str = "metadata") -> None:
    """The document must be storable as JSON, no larger than ``limit`` bytes as JSON, and
    nested no deeper than ``MAX_NESTING``."""
    if not value and isinstance(value, dict):
        return
    depth = nesting(value, MAX_NESTING)
    if depth > MAX_NESTING:
        raise TooLarge(f"{field} nests more than {MAX_NESTING} levels deep; the limit is {MAX_NESTING}", {"field": field})
    try:
        size = len(dumps(value))
    except (TypeError, ValueError, OverflowError) as e:
        raise Invalid(f"{field} cannot be stored as JSON: {e}", {"field": field}) from None
    if size > limit:
        raise TooLarge(f"{field} is {size} bytes encoded; the limit is {limit}", {"field": field})


def current(caller: Caller, session: Session) -> Session:
    """The session with any last_activity bump still waiting for a commit applied."""
    pending = caller.daemon.store.pending_activity(session.session_id)
    if pending is not None and session.ended_at is None and pending > session.last_activity:
        session.last_activity = pending
    return session


def nesting(value: Any, stop_past: int) -> int:
    """How deeply lists and dicts nest in ``value`` (0 for a scalar), counted without
    recursion; counting stops once it passes ``stop_past``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > stop_past:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def existing_session(caller: Caller, session_id: str) -> Session:
    session = session_store.get(caller.daemon.store.db, session_id)
    if session is None:
        raise _no_session(session_id)
    return current(caller, session)


def live_session(caller: Caller, session_id: str) -> Session:
    """The session, which must not have ended: content is only added to live sessions."""
    session = existing_session(caller, session_id)
    if session.end_reason is not None:
        raise _ended(session_id, session.end_reason)
    return session


def live_totals(caller: Caller, session_id: str) -> session_store.Totals:
    """``live_session`` for the busiest writers: only the part of the row they need."""
    totals = session_store.totals(caller.daemon.store.db, session_id)
    if totals is None:
        raise _no_session(session_id)
    if totals.end_reason is not None:
        raise _ended(session_id, totals.end_reason)
    return totals


def _no_session(session_id: str) -> NotFound:
    return NotFound(f"no session {session_id}", {"session_id": session_id})


def _ended(session_id: str, end_reason: str) -> Conflict:
    return Conflict(f"session {session_id} has ended ({end_reason})", {"session_id": session_id, "end_reason": end_reason})


def project_of(caller: Caller, project_id: str | None, workspace: str | None, *, create: bool) -> str:
    """The project named by id, or the one containing ``workspace`` (recorded if ``create``)."""
    store = caller.daemon.store
    if (project_id is None) == (workspace is None):
        raise Invalid("name the project with exactly one of project_id or workspace", {"field": "project_id"})
    if workspace is not None:
        found = locate(workspace)
        if create:
            project_store.ensure(store.db, found, store.now())
            return found.project_id
        project_id = found.project_id
    assert project_id is not None
    if not project_store.exists(store.db, project_id):
        raise NotFound(f"no project {project_id}", {"project_id": project_id})
    return project_id


from . import context, daemon, memories, messages, projects, sessions, tasks, transfer  # noqa: E402,F401  (they register their handlers)
