"""Routing requests to handlers: decode and validate the parameters, run the handler
(inside a write if the method writes), and turn every failure into a typed error reply.

A handler may return a future (a task doing file I/O off the event loop): ``dispatch`` then
returns a future of the reply, resolved when that work is done."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any, Callable

import msgspec

from omnid_client.errors import InternalError, Invalid, OmnidError, RemoteError, TooLarge, Unsupported
from omnid_client.protocol import (
    MAX_NESTING,
    METHODS,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    ErrorInfo,
    IncomingRequest,
    ResponseFrame,
    compare_versions,
)
from omnid_client.protocol.explain import invalid

from .. import __version__
from ..store import storage_error
from ._context import Caller, Context

log = logging.getLogger("omnid.api")

Handler = Callable[[Context, Caller, Any], Any]
_ROUTES: dict[str, tuple[Handler, msgspec.msgpack.Decoder, bool, bool]] = {}
"""method -> (handler, parameter decoder, writes, grows): one lookup per request."""

SHRINKING = frozenset({
    "session.end", "session.delete", "daemon.reap", "memory.get", "memory.delete",
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


def dispatch(ctx: Context, caller: Caller, request: IncomingRequest) -> ResponseFrame | asyncio.Future[ResponseFrame]:
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
    except (msgspec.DecodeError, RecursionError) as e:
        return ResponseFrame(request.id, error=error_info(params_error(request.method, e)))
    store = ctx.store
    try:
        if writes:
            ctx.guard.ensure_writable(grows=grows, adding=len(request.params))
            with store.write():
                result = handler(ctx, caller, params)
        else:
            result = handler(ctx, caller, params)
    except Exception as e:
        return failure(request, e)
    if isinstance(result, asyncio.Future):
        return later(request, result)
    return ResponseFrame(request.id, result=result)


def params_error(method: str, e: msgspec.DecodeError | RecursionError) -> Invalid:
    """The typed error for parameters of ``method`` that failed to decode with ``e``."""
    if isinstance(e, msgspec.ValidationError):
        return invalid_params(method, e)
    if isinstance(e, RecursionError):  # nested past what the decoder can walk (ignored keys included)
        return TooLarge(
            f"{method}: the parameters nest too deep to read; a document may nest {MAX_NESTING} levels",
            {"field": "params"},
        )
    return Invalid(f"{method}: undecodable parameters: {e}")


def invalid_params(method: str, e: msgspec.ValidationError) -> Invalid:
    """A sentence naming the field and what it allows (details: field, path, allowed); a
    length bound is a size limit (TooLarge), everything else bad input."""
    return invalid(e, METHODS[method].params, method=method)


def failure(request: IncomingRequest, e: BaseException) -> ResponseFrame:
    """The error reply for a request whose handler raised ``e``."""
    if isinstance(e, RemoteError):
        return ResponseFrame(request.id, error=error_info(e))
    if isinstance(e, sqlite3.Error):
        log.error("%s failed in the database: %s", request.method, e)
        return ResponseFrame(request.id, error=error_info(storage_error(e)))
    log.error("%s failed", request.method, exc_info=e)
    return ResponseFrame(request.id, error=error_info(InternalError(f"{request.method} failed; see the daemon log")))


def later(request: IncomingRequest, work: asyncio.Future[Any]) -> asyncio.Future[ResponseFrame]:
    """The reply to a request whose handler goes on in the background (a task that does
    file I/O off the event loop): resolves with it, or is cancelled with it."""
    reply: asyncio.Future[ResponseFrame] = work.get_loop().create_future()

    def done(work: asyncio.Future[Any]) -> None:
        if work.cancelled():
            reply.cancel()
        elif (e := work.exception()) is not None:
            reply.set_result(failure(request, e))
        else:
            reply.set_result(ResponseFrame(request.id, result=work.result()))

    work.add_done_callback(done)
    return reply
