"""Message methods: add (one or a batch, all or nothing) and list in order."""

from __future__ import annotations

from omnid_client.protocol import AddMessages, ListMessages, MessagePage, MessagesAdded

from ..store import messages as message_store
from ..store.codec import from_nanos
from ._common import check_size, existing_session, live_totals
from ._context import Caller, Context
from ._dispatch import handles


@handles("message.add")
def add(ctx: Context, caller: Caller, p: AddMessages) -> MessagesAdded:
    for message in p.messages:
        check_size(message.metadata)
    session = live_totals(ctx, p.session_id)
    store = ctx.store
    now = store.now()
    ids, count, tokens, nanos = message_store.add(store.db, p.session_id, session, p.messages, now)
    store.note_project_activity(session.project_id, now)
    ctx.live_sessions.totals.put(
        p.session_id, session._replace(message_count=count, total_tokens=tokens, total_cost_nanos=nanos)
    )
    return MessagesAdded(ids, count, tokens, from_nanos(nanos))


@handles("message.list")
def list_messages(ctx: Context, caller: Caller, p: ListMessages) -> MessagePage:
    existing_session(ctx, p.session_id)
    messages, after = message_store.page(ctx.store.db, p.session_id, p.after_seq, p.limit)
    return MessagePage(messages, after)
