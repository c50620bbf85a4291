"""Replies after commit: a request that joined the open transaction is answered once that
commits, and a read whose batch was rolled back is run once more."""

from __future__ import annotations

from typing import Callable

from omnid_client.protocol import IncomingRequest, ResponseFrame

from .. import api


def respond(
    ctx: api.Context,
    caller: api.Caller,
    request: IncomingRequest,
    send: Callable[[ResponseFrame], None],
    retries: int = 1,
) -> None:
    """Run a request; if it joined a transaction, reply only once that commits."""
    store = ctx.store
    writes_before = store.writes
    response = api.dispatch(ctx, caller, request)
    if not store.in_transaction:
        send(response)
        return
    wrote = store.writes != writes_before

    def deliver(err: Exception | None) -> None:
        if err is None:
            send(response)
        elif wrote or retries == 0:
            send(ResponseFrame(response.id, error=api.error_info(err)))
        else:
            # A read in a batch that could not be committed may have seen writes that
            # are now undone: run it again (once; it may write this time, and then its
            # reply waits for its own commit). A failing disk must not fail reads.
            respond(ctx, caller, request, send, retries - 1)

    store.after_commit(deliver)
