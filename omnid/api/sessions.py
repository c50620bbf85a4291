"""Session methods: get_or_create, find, heartbeat, end, get, list, summary."""

from __future__ import annotations

import uuid

from omnid_client.errors import NotFound
from omnid_client.protocol import (
    Find,
    FindResult,
    GetOrCreate,
    GetOrCreateResult,
    ListSessions,
    Session,
    SessionPage,
    SessionRef,
    SessionSummary,
)

from ..identity import ProcessIdentity, check_ancestor, cwd_of, owner_process
from ..projects import locate
from ..store import context as context_store
from ..store import memories as memory_store
from ..store import messages as message_store
from ..store import projects as project_store
from ..store import sessions as session_store
from ..store import tasks as task_store
from ._common import check_size, current, existing_session, live_session
from ._context import Caller, Context
from ._dispatch import handles

SESSION_BYTES = 4096
"""About what a new session adds to the database (for the storage quota's estimate)."""


@handles("session.get_or_create")
def get_or_create(ctx: Context, caller: Caller, p: GetOrCreate) -> GetOrCreateResult:
    check_size(p.metadata)
    pid = caller.pid if p.pid is None else p.pid
    owner = owner_process(pid, caller.uid, ctx.reaper.known_owner(pid)).identity
    if p.owner_must_be_ancestor:
        check_ancestor(pid, caller.pid)
    store = ctx.store
    now = store.now()
    if p.dedup:
        existing = ctx.live_sessions.find_live(p.tool_id, owner)
        if existing is not None:
            store.note_activity(existing.session_id, now)
            existing.last_activity = now
            return GetOrCreateResult("existing", existing)
    ctx.guard.ensure_writable(grows=True, adding=SESSION_BYTES)
    with store.write():
        return GetOrCreateResult("created", _create(ctx, p, owner, now))


def _create(ctx: Context, p: GetOrCreate, owner: ProcessIdentity, now: float) -> Session:
    db = ctx.store.db
    workspace = p.workspace if p.workspace is not None else cwd_of(owner.pid)
    project_id = None
    if workspace is not None:
        project = locate(workspace)
        project_store.ensure(db, project, now)
        project_id = project.project_id
    session = Session(
        session_id=str(uuid.uuid4()),
        tool_id=p.tool_id,
        tool_version=p.tool_version,
        session_type=p.session_type,
        owner_pid=owner.pid,
        owner_start=owner.start,
        boot_id=owner.boot_id,
        workspace=workspace,
        metadata=p.metadata,
        started_at=now,
        last_activity=now,
        project_id=project_id,
    )
    session_store.insert(db, session, dedup=p.dedup, owner_ino=owner.ino)
    ctx.reaper.track(session.session_id, owner)
    return session


@handles("session.find")
def find(ctx: Context, caller: Caller, p: Find) -> FindResult:
    pid = caller.pid if p.pid is None else p.pid
    try:
        owner = owner_process(pid, caller.uid, ctx.reaper.known_owner(pid)).identity
    except NotFound:
        return FindResult(None)
    found = ctx.live_sessions.find_live(p.tool_id, owner)
    return FindResult(current(ctx, found) if found else None)


@handles("session.heartbeat")
def heartbeat(ctx: Context, caller: Caller, p: SessionRef) -> Session:
    session = live_session(ctx, p.session_id)
    session.last_activity = ctx.store.now()
    session_store.touch(ctx.store.db, session.session_id, session.last_activity)
    return session


@handles("session.end")
def end(ctx: Context, caller: Caller, p: SessionRef) -> Session:
    """Idempotent: an ended session is returned as it is."""
    store = ctx.store
    session = existing_session(ctx, p.session_id)
    if session.ended_at is None:
        session_store.end(store.db, [session.session_id], "ended", store.now())
        if session.owner_pid is not None:
            owner = ProcessIdentity(session.owner_pid, session.owner_start or 0, session.boot_id or "")
            ctx.reaper.untrack(session.session_id, owner)
        session = existing_session(ctx, p.session_id)
    return session


@handles("session.get")
def get(ctx: Context, caller: Caller, p: SessionRef) -> Session:
    return existing_session(ctx, p.session_id)


@handles("session.list")
def list_sessions(ctx: Context, caller: Caller, p: ListSessions) -> SessionPage:
    sessions, cursor = session_store.page(
        ctx.store.db,
        tool_id=p.tool_id,
        session_type=p.session_type,
        status=p.status,
        workspace=p.workspace,
        limit=p.limit,
        cursor=p.cursor,
    )
    return SessionPage([current(ctx, s) for s in sessions], cursor)


@handles("session.summary")
def summary(ctx: Context, caller: Caller, p: SessionRef) -> SessionSummary:
    s = existing_session(ctx, p.session_id)
    db = ctx.store.db
    first, last = message_store.time_range(db, s.session_id)
    end = s.ended_at if s.ended_at is not None else ctx.store.now()
    return SessionSummary(
        session_id=s.session_id,
        tool_id=s.tool_id,
        project_id=s.project_id,
        live=s.ended_at is None,
        message_count=s.message_count,
        total_tokens=s.total_tokens,
        total_cost=s.total_cost,
        messages_by_role=message_store.by_role(db, s.session_id),
        task_count=task_store.count_for_session(db, s.session_id),
        context_events=context_store.count(db, s.session_id),
        has_memory=memory_store.has_session_memory(db, s.session_id),
        started_at=s.started_at,
        last_activity=s.last_activity,
        ended_at=s.ended_at,
        first_message_at=first,
        last_message_at=last,
        duration=end - s.started_at,
    )
