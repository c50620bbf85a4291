"""Session methods: get_or_create (and resuming by key), find, heartbeat, end, get, list,
summary, and the edits: update, delete, and the owners a session had."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from enum import Enum, auto
from typing import Any

from omnid_client.errors import Conflict, Invalid, NotFound, TooLarge
from omnid_client.protocol import (
    MAX_TAGS,
    DeleteSession,
    Find,
    FindResult,
    GetOrCreate,
    GetOrCreateResult,
    ListSessions,
    Session,
    SessionDeleted,
    SessionOwners,
    SessionPage,
    SessionRef,
    SessionSummary,
    UpdateSession,
)

from ..identity import ProcessIdentity, check_ancestor, cwd_of, owner_process, same_process
from ..projects import locate
from ..store import (
    context as context_store,
    memories as memory_store,
    messages as message_store,
    projects as project_store,
    search as search_store,
    sessions as session_store,
    tasks as task_store,
)
from ._common import check_size, committed, current, existing_session, live_session, no_session
from ._context import Caller, Context
from ._dispatch import handles

SESSION_BYTES = 4096
"""About what a new session adds to the database (for the storage quota's estimate)."""


@handles("session.get_or_create")
def get_or_create(
    ctx: Context, caller: Caller, p: GetOrCreate
) -> GetOrCreateResult | asyncio.Future[GetOrCreateResult]:
    workspaces = ctx.workspaces
    if not p.track_workspace or workspaces is None:
        return _get_or_create(ctx, caller, p)
    root = _root_to_track(caller, p)
    if root in workspaces.roots:
        return _tracked(ctx, caller, p)
    return asyncio.ensure_future(_admitted(ctx, caller, p, root))


def _root_to_track(caller: Caller, p: GetOrCreate) -> str:
    """The project root a get_or_create asking for workspace tracking would track."""
    workspace = p.workspace if p.workspace is not None else cwd_of(caller.pid if p.pid is None else p.pid)
    if workspace is None:
        raise Invalid(
            "track_workspace needs a workspace: name one, or an owner process whose working directory omnid can read",
            {"field": "workspace"},
        )
    return locate(workspace).root


async def _admitted(ctx: Context, caller: Caller, p: GetOrCreate, root: str) -> GetOrCreateResult:
    """A root not watched yet is walked first (off the event loop): too large a one is
    refused before any session is created or changed."""
    assert ctx.workspaces is not None
    await ctx.workspaces.admit(root)
    got = _tracked(ctx, caller, p)
    await committed(ctx)  # a reply from the background is sent when done: not before its write is durable
    return got


def _tracked(ctx: Context, caller: Caller, p: GetOrCreate) -> GetOrCreateResult:
    got = _get_or_create(ctx, caller, p)
    sid = got.session.session_id
    with ctx.store.write() as db:
        marked = session_store.set_tracked(db, sid)
    if marked and ctx.workspaces is not None:
        ctx.workspaces.session_live(sid)
    return got


def _get_or_create(ctx: Context, caller: Caller, p: GetOrCreate) -> GetOrCreateResult:
    check_size(p.metadata)
    pid = caller.pid if p.pid is None else p.pid
    owner = owner_process(pid, caller.uid, ctx.reaper.known_owner(pid)).identity
    if p.owner_must_be_ancestor:
        check_ancestor(pid, caller.pid)
    store, metrics = ctx.store, ctx.metrics
    now = store.now()
    if p.resume_key is not None:
        result = _by_resume_key(ctx, p, owner, now)
        metrics.outcome(p.tool_id, result.status)
        return result
    if p.dedup:
        existing = ctx.live_sessions.find_live(p.tool_id, owner)
        if existing is not None:
            store.note_activity(existing.session_id, now)
            existing.last_activity = now
            metrics.outcome(p.tool_id, "existing")
            return GetOrCreateResult("existing", existing)
    ctx.guard.ensure_writable(grows=True, adding=SESSION_BYTES)
    with store.write():
        session = _create(ctx, p, owner, now)
    metrics.outcome(p.tool_id, "created")
    return GetOrCreateResult("created", session)


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
        resume_key=p.resume_key,
    )
    session_store.insert(db, session, dedup=p.dedup, owner_ino=owner.ino)
    ctx.reaper.track(session.session_id, owner)
    return session


class KeyVerdict(Enum):
    """What a get_or_create naming a resume key does with the session that key names."""

    EXISTING = auto()
    RESUME = auto()
    CREATE = auto()


def _verdict(
    ctx: Context, found: session_store.Keyed | None, owner: ProcessIdentity, resume_ended: bool
) -> KeyVerdict:
    """What a get_or_create naming a resume key does with the session that key names;
    Conflict while that session is live and another living process owns it. ``owner`` has
    passed ``owner_process`` (the same checks as every get_or_create), and the session's
    owner is compared with it by start time and pidfd inode (``same_process``)."""
    if found is None:
        return KeyVerdict.CREATE
    session, previous = found.session, found.owner
    if session.ended_at is None:
        if previous is not None and same_process(previous, owner):
            return KeyVerdict.EXISTING
        if previous is not None and ctx.reaper.alive(previous):
            raise Conflict(
                f"session {session.session_id} ({session.tool_id}, resume key {session.resume_key!r}) is live and "
                f"owned by process {previous.pid}",
                {"session_id": session.session_id, "owner_pid": previous.pid},
            )
        return KeyVerdict.RESUME
    if session.end_reason == "ended" and not resume_ended:
        return KeyVerdict.CREATE
    if ctx.store.now() - session.ended_at >= ctx.settings().resume_window:
        return KeyVerdict.CREATE
    return KeyVerdict.RESUME


def _by_resume_key(ctx: Context, p: GetOrCreate, owner: ProcessIdentity, now: float) -> GetOrCreateResult:
    store = ctx.store
    assert p.resume_key is not None
    found = session_store.by_resume_key(store.db, p.tool_id, p.resume_key)
    verdict = _verdict(ctx, found, owner, p.resume_ended)
    if verdict is KeyVerdict.EXISTING:
        assert found is not None
        session = found.session
        store.note_activity(session.session_id, now)
        session.last_activity = now
        return GetOrCreateResult("existing", session)
    # Creating adds a session, resuming a row of owner history: both grow the database.
    ctx.guard.ensure_writable(grows=True, adding=SESSION_BYTES)
    with store.write() as db:
        if found.dedup if found is not None else p.dedup:
            _refuse_second_live_session(db, p.tool_id, owner)
        try:
            if verdict is KeyVerdict.CREATE:
                return GetOrCreateResult("created", _create(ctx, p, owner, now))
            assert found is not None
            return GetOrCreateResult("resumed", _resume(ctx, found, owner, now))
        except sqlite3.IntegrityError as e:  # the checks above should leave nothing for the indexes to refuse
            raise Conflict(f"cannot bind {p.tool_id} session with resume key {p.resume_key!r}: {e}") from None


def _refuse_second_live_session(db: sqlite3.Connection, tool_id: str, owner: ProcessIdentity) -> None:
    """A process has at most one live deduplicated session of a tool: Conflict if it
    already holds one (which has another key, or none: one with this key is found by it)."""
    mine = session_store.find_live(db, tool_id, owner)
    if mine is not None:
        raise Conflict(
            f"process {owner.pid} already owns live session {mine.session_id} of {tool_id} "
            + (f"under resume key {mine.resume_key!r}" if mine.resume_key else "without a resume key"),
            {"session_id": mine.session_id, "owner_pid": owner.pid},
        )


def _resume(ctx: Context, found: session_store.Keyed, owner: ProcessIdentity, now: float) -> Session:
    """Rebind the session found to ``owner`` and reopen it, then watch the new owner instead."""
    db = ctx.store.db
    sid = found.session.session_id
    session_store.rebind(db, found.session, owner, now)
    ctx.reaper.track(sid, owner)  # NotFound (and nothing written) if it just exited
    previous = found.owner
    if previous is not None and previous != owner:
        ctx.reaper.untrack(sid, previous)
    resumed = session_store.get(db, sid)
    assert resumed is not None
    return resumed


@handles("session.find")
def find(ctx: Context, caller: Caller, p: Find) -> FindResult:
    pid = caller.pid if p.pid is None else p.pid
    try:
        owner = owner_process(pid, caller.uid, ctx.reaper.known_owner(pid)).identity
    except NotFound:
        return FindResult(None)
    if p.resume_key is not None:
        by_key = session_store.by_resume_key(ctx.store.db, p.tool_id, p.resume_key)
        try:
            verdict = _verdict(ctx, by_key, owner, p.resume_ended)
        except Conflict:
            return FindResult(None)
        if by_key is None or verdict is KeyVerdict.CREATE:
            return FindResult(None)
        return FindResult(current(ctx, by_key.session))
    found = ctx.live_sessions.find_live(p.tool_id, owner)
    return FindResult(current(ctx, found) if found else None)


@handles("session.heartbeat")
def heartbeat(ctx: Context, caller: Caller, p: SessionRef) -> Session:
    """Moves last_activity as a reuse does: the bump rides on the next commit (at most
    ``ACTIVITY_DELAY`` away) and every read sees it meanwhile, so a heartbeat costs no
    commit of its own. It is refused like a write once the database file is gone."""
    ctx.guard.ensure_writable(grows=False)
    session = live_session(ctx, p.session_id)
    store = ctx.store
    session.last_activity = store.now()
    store.note_activity(session.session_id, session.last_activity)
    return session


@handles("session.end")
def end(ctx: Context, caller: Caller, p: SessionRef) -> Session:
    """Idempotent: an ended session is returned as it is."""
    store = ctx.store
    session = existing_session(ctx, p.session_id)
    if session.ended_at is None:
        session_store.end(store.db, [session.session_id], "ended", store.now())
        owner = session_store.owner_identity(session)
        if owner is not None:
            ctx.reaper.untrack(session.session_id, owner)
        session = existing_session(ctx, p.session_id)
    return session


@handles("session.get")
def get(ctx: Context, caller: Caller, p: SessionRef) -> Session:
    session = ctx.live_sessions.get(p.session_id)  # no SQL until the next write
    if session is None:
        raise no_session(p.session_id)
    return current(ctx, session)


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
        tag=p.tag,
        archived=p.archived,
        pinned=p.pinned,
        project_id=p.project_id,
    )
    return SessionPage([current(ctx, s) for s in sessions], cursor)


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target`` as a JSON merge patch (RFC 7396)."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


@handles("session.update")
def update(ctx: Context, caller: Caller, p: UpdateSession) -> Session:
    session = existing_session(ctx, p.session_id)
    db = ctx.store.db
    metadata = None
    if p.metadata is not None:
        check_size(p.metadata)
        metadata = p.metadata if p.replace_metadata else merge_patch(session.metadata, p.metadata)
        check_size(metadata)
    elif p.replace_metadata:
        raise Invalid("replace_metadata needs the metadata to replace it with", {"field": "metadata"})
    if p.tags is not None or p.add_tags or p.remove_tags:
        tags = (set(session.tags if p.tags is None else p.tags) | set(p.add_tags)) - set(p.remove_tags)
        if len(tags) > MAX_TAGS:
            raise TooLarge(f"a session has at most {MAX_TAGS} tags; this would give it {len(tags)}", {"field": "tags"})
        session_store.set_tags(db, session.session_id, tags)
    session_store.edit(
        db,
        session.session_id,
        title=p.title,
        metadata=metadata,
        pinned=p.pinned,
        archived_at=ctx.store.now() if p.archived else None,
        unarchive=p.archived is False,
    )
    return existing_session(ctx, session.session_id)


@handles("session.delete")
def delete(ctx: Context, caller: Caller, p: DeleteSession) -> SessionDeleted:
    """A session and everything it holds (context, messages, session memories, tasks and
    their interactions, its owners and tags): gone for good."""
    session = existing_session(ctx, p.session_id)
    live = session.ended_at is None
    if live and not p.force:
        raise Conflict(
            f"session {session.session_id} is live (owner pid {session.owner_pid}): end it first, or force the delete",
            {"session_id": session.session_id, "live": True},
        )
    db = ctx.store.db
    held = session_store.contents(db, session.session_id)
    search_store.unindex_sessions(db, [session.session_id])
    task_store.delete_sessions(db, [session.session_id])
    owner = session_store.owner_identity(session)
    if live and owner is not None:
        ctx.reaper.untrack(session.session_id, owner)
    return SessionDeleted(session.session_id, live, *held)


@handles("session.owners")
def owners(ctx: Context, caller: Caller, p: SessionRef) -> SessionOwners:
    session = existing_session(ctx, p.session_id)
    return SessionOwners(session.session_id, session_store.owners(ctx.store.db, session))


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
