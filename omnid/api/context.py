"""Session context methods: append events, read the materialized view."""

from __future__ import annotations

from omnid_client.protocol import AppendContext, Appended, GetContext, SessionContext

from ..store import context as context_store
from ._common import existing_session, live_totals
from ._context import Caller, Context
from ._dispatch import handles


@handles("context.append")
def append(ctx: Context, caller: Caller, p: AppendContext) -> Appended:
    session = live_totals(ctx, p.session_id)
    store = ctx.store
    now = store.now()
    context_store.append(store.db, p.session_id, session.project_id, p.events, now)
    events = session.context_event_count + len(p.events)
    raw = events - session.context_folded
    if not ctx.compactor.after_append(store.db, p.session_id, ctx.settings(), now, raw=raw):
        ctx.live_sessions.totals.put(p.session_id, session._replace(context_event_count=events))
    store.note_project_activity(session.project_id, now)
    return Appended(len(p.events), events)


@handles("context.get")
def get(ctx: Context, caller: Caller, p: GetContext) -> SessionContext:
    existing_session(ctx, p.session_id)
    return context_store.materialize(ctx.store.db, p)
