"""context.pack: the most useful context of a session or project that fits a token budget."""

from __future__ import annotations

from omnid_client.errors import Invalid
from omnid_client.packing import DEFAULT_COUNTER, assemble
from omnid_client.protocol import ContextPack, PackContext, Session

from ..store import pack as pack_store, sessions as session_store
from ._common import existing_session, project_of
from ._context import Caller, Context
from ._dispatch import handles


def _latest_session(ctx: Context, project_id: str) -> Session | None:
    row = ctx.store.db.execute(
        "SELECT session_id FROM sessions WHERE project_id = ? ORDER BY last_activity DESC, session_id LIMIT 1",
        (project_id,),
    ).fetchone()
    return session_store.get(ctx.store.db, row[0]) if row else None


@handles("context.pack")
def pack(ctx: Context, caller: Caller, p: PackContext) -> ContextPack:
    """A session's pack, or a project's: its memories and open tasks, and the session
    sections of its most recently active session."""
    session: Session | None
    if p.session_id is not None:
        if p.project_id is not None or p.workspace is not None:
            raise Invalid("name a session or a project, not both", {"field": "session_id"})
        session = existing_session(ctx, p.session_id)
        project_id = session.project_id
    else:
        if p.project_id is None and p.workspace is None:
            raise Invalid("name a session (session_id) or a project (project_id or workspace)", {"field": "session_id"})
        project_id = project_of(ctx, p.project_id, p.workspace, create=False)
        session = _latest_session(ctx, project_id)
    store = ctx.store
    sections = pack_store.candidates(store.db, p, session, project_id, store.now())
    base = ContextPack(
        session.session_id if session is not None else None,
        project_id,
        p.budget_tokens,
        0,
        DEFAULT_COUNTER,
        "",
        [],
        *pack_store.described(session).values(),
    )
    return assemble(sections, p.budget_tokens, base=base, unlimited=p.candidates)
