"""Replies after commit: a request that joined the open transaction is answered once that
commits, and a read whose batch was rolled back is run once more."""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter_ns
from typing import Protocol

import msgspec

from omnid_client.errors import StorageError, TooLarge
from omnid_client.protocol import HEADER, MAX_FRAME, ErrorInfo, IncomingRequest, ResponseFrame

from .. import api
from ..metrics import Metrics

log = logging.getLogger("omnid.server")

_encoder = msgspec.msgpack.Encoder()


class Outbox(Protocol):
    """Where one connection's replies go, and its count of those waiting for a commit."""

    in_flight: int
    """Requests run whose replies wait for their commit."""
    waiting_bytes: int
    """Bytes of those replies (and of the reads kept to be retried)."""

    def write(self, frame: bytearray) -> None: ...

    def caught_up(self) -> None:
        """Some replies went out: the connection may read on."""


def encode(response: ResponseFrame) -> bytearray:
    """The framed reply; an error in its place if it is over the frame limit."""
    buf = bytearray(HEADER.size)
    _encoder.encode_into(response, buf, HEADER.size)
    size = len(buf) - HEADER.size
    if size > MAX_FRAME:
        # The client would drop the connection on a frame this large: say what to do instead.
        log.warning("reply to request %d is %d bytes, over the frame limit; sent an error instead", response.id, size)
        err = TooLarge(
            f"the reply is {size} bytes, over the {MAX_FRAME}-byte frame limit; ask for fewer items (a smaller limit)",
            {"reply_bytes": size, "limit": MAX_FRAME},
        )
        buf = bytearray(HEADER.size)
        _encoder.encode_into(ResponseFrame(response.id, error=api.error_info(err)), buf, HEADER.size)
        size = len(buf) - HEADER.size
    HEADER.pack_into(buf, 0, size)
    return buf


def completed(
    out: Outbox, metrics: Metrics, method: str, started: int, error: ErrorInfo | None, frame: bytearray,
) -> None:
    """Every reply to a request leaves through here, once that request is done (and its
    commit, if it joined one): the one place that knows its method, its outcome (``error``,
    None on success) and that it has finished. ``frame``: the reply, encoded; ``started``:
    ``perf_counter_ns`` when its frame was decoded."""
    out.write(frame)
    metrics.answered(method, started, error)


def respond(
    ctx: api.Context,
    caller: api.Caller,
    request: IncomingRequest,
    out: Outbox,
    retries: int = 1,
) -> None:
    """Run a request; if it joined a transaction, reply only once that commits; if its
    handler went on in the background, once that is done."""
    started = perf_counter_ns()  # the frame was just decoded
    store, metrics = ctx.store, ctx.metrics
    writes_before = store.writes
    request_id, method = request.id, request.method  # not the request: it points into the read buffer
    response = api.dispatch(ctx, caller, request)
    if isinstance(response, asyncio.Future):

        def finished(done: asyncio.Future[ResponseFrame]) -> None:
            if not done.cancelled():
                reply = done.result()
                completed(out, metrics, method, started, reply.error, encode(reply))

        response.add_done_callback(finished)
        return
    if not store.in_transaction:
        completed(out, metrics, method, started, response.error, encode(response))
        return
    wrote = store.writes != writes_before
    # What waits is held as bytes, and counted: the reply, and a read's request (for the
    # retry below), copied out of the read buffer it points into.
    frame, error = encode(response), response.error
    retry = None if wrote or retries == 0 else msgspec.Raw(bytes(request.params))
    held = len(frame) + (len(retry) if retry is not None else 0)
    out.in_flight += 1
    out.waiting_bytes += held

    def deliver(err: StorageError | None) -> None:
        out.in_flight -= 1
        out.waiting_bytes -= held
        if err is None:
            completed(out, metrics, method, started, error, frame)
        elif retry is None:
            info = api.error_info(err)
            completed(out, metrics, method, started, info, encode(ResponseFrame(request_id, error=info)))
        else:
            # A read in a batch that could not be committed may have seen writes that
            # are now undone: run it again (once; it may write this time, and then its
            # reply waits for its own commit). A failing disk must not fail reads.
            respond(ctx, caller, IncomingRequest(request_id, method, retry), out, retries - 1)
        out.caught_up()

    store.after_commit(deliver)
