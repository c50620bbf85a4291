"""Session context methods: append events, read the materialized view."""

from __future__ import annotations

from omnid_client.protocol import AppendContext, Appended, GetContext, SessionContext

from ..store import context as context_store
from . import Caller, existing_session, handles, live_totals


@handles("context.append")
def append(caller: Caller, p: AppendContext) -> Appended:
    session = live_totals(caller, p.session_id)
    store = caller.daemon.store
    now = store.now()
    context_store.append(store.db, p.session_id, session.project_id, p.events, now)
    store.note_project_activity(session.project_id, now)
    return Appended(len(p.events), session.context_event_count + len(p.events))


@handles("context.get")
def get(caller: Caller, p: GetContext) -> SessionContext:
    existing_session(caller, p.session_id)
    return context_store.materialize(caller.daemon.store.db, p)
