"""Routing requests to handlers: decode and validate the parameters, run the handler
(inside a write if the method writes), and turn every failure into a typed error reply."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, Callable

import msgspec

from omnid_client.errors import InternalError, Invalid, OmnidError, RemoteError, TooLarge, Unsupported
from omnid_client.protocol import (
    METHODS,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    ErrorInfo,
    IncomingRequest,
    ResponseFrame,
    compare_versions,
)

from .. import __version__
from ..store import storage_error
from ._context import Caller, Context

log = logging.getLogger("omnid.api")

Handler = Callable[[Context, Caller, Any], Any]
_ROUTES: dict[str, tuple[Handler, msgspec.msgpack.Decoder, bool]] = {}
"""method -> (handler, parameter decoder, writes): one lookup per request."""


def handles(method: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        assert method in METHODS, method
        spec = METHODS[method]
        _ROUTES[method] = (fn, msgspec.msgpack.Decoder(spec.params), spec.writes)
        return fn

    return register


def error_info(err: OmnidError) -> ErrorInfo:
    code = getattr(err, "code", "internal")
    details = getattr(err, "details", {}) or {}
    return ErrorInfo(code, str(err), details)


def dispatch(ctx: Context, caller: Caller, request: IncomingRequest) -> ResponseFrame:
    """Run one request; every failure becomes a typed error reply, never an exception."""
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
    handler, decoder, writes = route
    try:
        params = decoder.decode(request.params)
    except msgspec.ValidationError as e:
        # msgspec names the field; a length bound is a size limit, everything else bad input.
        kind = TooLarge if "length <=" in str(e) else Invalid
        return ResponseFrame(request.id, error=error_info(kind(f"{request.method}: {e}")))
    except (msgspec.DecodeError, RecursionError) as e:
        return ResponseFrame(request.id, error=error_info(Invalid(f"{request.method}: undecodable parameters: {e}")))
    store = ctx.store
    try:
        if writes:
            with store.write():
                result = handler(ctx, caller, params)
        else:
            result = handler(ctx, caller, params)
    except RemoteError as e:
        return ResponseFrame(request.id, error=error_info(e))
    except sqlite3.Error as e:
        log.error("%s failed in the database: %s", request.method, e)
        return ResponseFrame(request.id, error=error_info(storage_error(e)))
    except Exception:
        log.exception("%s failed", request.method)
        return ResponseFrame(request.id, error=error_info(InternalError(f"{request.method} failed; see the daemon log")))
    return ResponseFrame(request.id, result=result)
