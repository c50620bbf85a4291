"""Checkpoints: a session's materialized context, counters and summary saved as a versioned
project memory (key ``checkpoint/<session>/<name>``), and restored into a live session."""

from __future__ import annotations

from typing import Any

import msgspec

from omnid_client.errors import Invalid, NotFound
from omnid_client.protocol import (
    MAX_VALUE_BYTES,
    Checkpoint,
    CheckpointInfo,
    CheckpointList,
    CheckpointRef,
    ContextEvent,
    CreateCheckpoint,
    GetContext,
    GetOrCreate,
    ListCheckpoints,
    Memory,
    RestoreCheckpoint,
    Restored,
    Session,
)

from ..identity import check_ancestor, owner_process
from ..store import (
    context as context_store,
    memories as memory_store,
    pack as pack_store,
    sessions as session_store,
    tasks as task_store,
)
from ..store.codec import dumps
from ._common import check_size, existing_session, live_session, project_of
from ._context import Caller, Context
from ._dispatch import handles
from .sessions import SESSION_BYTES, _create, merge_patch

PREFIX = "checkpoint/"
FORMAT = 1
_CAPS = {"max_files": 100, "max_searches": 20, "max_decisions": 50, "max_memories": 50, "max_changes": 100}


def key_of(session_id: str, name: str) -> str:
    return f"{PREFIX}{session_id}/{name}"


def _info(memory: Memory, value: Any, version: int, created_at: float) -> CheckpointInfo:
    snapshot = value if isinstance(value, dict) else {}
    return CheckpointInfo(
        memory.key,
        str(snapshot.get("session_id", "")),
        str(snapshot.get("name", "")),
        memory.project_id,
        version,
        created_at,
        snapshot.get("note"),
    )


def snapshot(ctx: Context, session: Session, name: str, note: str | None, now: float) -> dict[str, Any]:
    """What a checkpoint holds; the context lists shrink until it fits a memory value."""
    db = ctx.store.db
    sid = session.session_id
    caps = dict(_CAPS)
    while True:
        view = context_store.materialize(db, GetContext(sid, **caps))
        value = {
            "format": FORMAT,
            "session_id": sid,
            "name": name,
            "note": note,
            "created_at": now,
            **pack_store.described(session),
            "session": {
                "tool_id": session.tool_id,
                "workspace": session.workspace,
                "started_at": session.started_at,
                "last_activity": session.last_activity,
                "ended_at": session.ended_at,
            },
            "counters": {
                "messages": session.message_count,
                "tokens": session.total_tokens,
                "cost": session.total_cost,
                "context_events": view.size.events,
                "context_folded": view.size.folded,
                "tasks": task_store.count_for_session(db, sid),
            },
            "context": msgspec.to_builtins(view),
        }
        if len(dumps(value)) <= MAX_VALUE_BYTES or all(v == 1 for v in caps.values()):
            return value
        caps = {k: max(1, v // 2) for k, v in caps.items()}


@handles("checkpoint.create")
def create(ctx: Context, caller: Caller, p: CreateCheckpoint) -> Checkpoint:
    session = existing_session(ctx, p.session_id)
    if session.project_id is None:
        raise Invalid(
            f"session {p.session_id} belongs to no project: checkpoints are project memories", {"field": "session_id"}
        )
    store = ctx.store
    now = store.now()
    value = snapshot(ctx, session, p.name, p.note, now)
    # The request is a few bytes; what it stores is the snapshot, so the quota goes by that.
    ctx.guard.ensure_writable(grows=True, adding=len(dumps(value)))
    metadata = {"checkpoint": FORMAT, "session_id": session.session_id, "name": p.name}
    key = key_of(session.session_id, p.name)
    memory = memory_store.put(store.db, session.project_id, key, value, metadata, None, now)
    store.note_project_activity(session.project_id, now)
    return Checkpoint(_info(memory, value, memory.version, now), value)


@handles("checkpoint.list")
def list_checkpoints(ctx: Context, caller: Caller, p: ListCheckpoints) -> CheckpointList:
    """Checkpoints of a session, or of every session of a project; newest first."""
    if p.session_id is not None:
        session = existing_session(ctx, p.session_id)
        if session.project_id is None:
            return CheckpointList([])
        project_id, prefix = session.project_id, f"{PREFIX}{p.session_id}/"
    else:
        project_id, prefix = project_of(ctx, p.project_id, p.workspace, create=False), PREFIX
    store = ctx.store
    # The keys between the prefix and the prefix with its last "/" bumped to "0".
    rows = store.db.execute(
        "SELECT key FROM memories WHERE project_id = ? AND key >= ? AND key < ? "
        "AND (expires_at IS NULL OR expires_at > ?) ORDER BY updated_at DESC, key LIMIT ?",
        (project_id, prefix, prefix[:-1] + "0", store.now(), p.limit),
    ).fetchall()
    infos = []
    for (key,) in rows:
        memory = memory_store.get(store.db, project_id, key, store.now())
        if memory is not None:
            infos.append(_info(memory, memory.value, memory.version, memory.updated_at))
    return CheckpointList(infos)


def _load(ctx: Context, key: str, project_id: str | None, workspace: str | None, version: int | None) -> Checkpoint:
    if not key.startswith(PREFIX):
        raise Invalid(f"{key!r} is not a checkpoint key (checkpoint/<session>/<name>)", {"field": "key"})
    store = ctx.store
    if project_id is None and workspace is None:  # the project of the session the key names
        session = existing_session(ctx, key[len(PREFIX):].split("/", 1)[0])
        if session.project_id is None:
            raise NotFound(f"no checkpoint {key!r}: its session belongs to no project", {"key": key})
        pid = session.project_id
    else:
        pid = project_of(ctx, project_id, workspace, create=False)
    memory = memory_store.get(store.db, pid, key, store.now())
    if memory is None:
        raise NotFound(f"no checkpoint {key!r} in project {pid}", {"key": key, "project_id": pid})
    if version is None or version == memory.version:
        return Checkpoint(_info(memory, memory.value, memory.version, memory.updated_at), memory.value)
    for v in memory_store.history(store.db, memory.memory_id):
        if v.version == version:
            return Checkpoint(_info(memory, v.value, v.version, v.created_at), v.value)
    raise NotFound(f"checkpoint {key!r} has no version {version}", {"key": key, "version": version})


@handles("checkpoint.show")
def show(ctx: Context, caller: Caller, p: CheckpointRef) -> Checkpoint:
    return _load(ctx, p.key, p.project_id, p.workspace, p.version)


def seed_events(context: dict[str, Any]) -> list[ContextEvent]:
    """The context events that give a session the checkpoint's view: each file, change,
    search, decision and memory reference once, oldest first."""
    events: list[ContextEvent] = []
    clip = 8192
    for f in reversed(context.get("files", [])):
        events.append(ContextEvent("file_access", f["path"][:clip], f.get("importance")))
    for c in reversed(context.get("changes", [])):
        events.append(ContextEvent("file_change", c["path"][:clip], None, c.get("change")))
    for s in reversed(context.get("searches", [])):
        events.append(ContextEvent("search", s["query"][:clip], None, s.get("detail")))
    for d in reversed(context.get("decisions", [])):
        events.append(ContextEvent("decision", d["text"][:clip], None, d.get("detail")))
    for m in reversed(context.get("memories", [])):
        content = m.get("content")
        events.append(ContextEvent("memory_ref", m["ref"][:clip], None, content[:clip] if content else None))
    return events


@handles("checkpoint.restore")
def restore(ctx: Context, caller: Caller, p: RestoreCheckpoint) -> Restored:
    checkpoint = _load(ctx, p.key, p.project_id, p.workspace, p.version)
    value = checkpoint.snapshot
    if not isinstance(value, dict) or value.get("format") != FORMAT or not isinstance(value.get("context"), dict):
        raise Invalid(f"{p.key!r} does not hold a checkpoint this omnid can restore", {"field": "key"})
    store = ctx.store
    now = store.now()
    carried = {key: str(value[key]) for key in pack_store.DESCRIBED if value.get(key)}
    described = {key: text for key, text in carried.items() if key != "title"}
    title = carried["title"][:1024] if "title" in carried else None
    created = p.into is None
    # What the restore stores is the checkpoint's context (and maybe a session), not the request.
    ctx.guard.ensure_writable(grows=True, adding=len(dumps(value["context"])) + (SESSION_BYTES if created else 0))
    if p.into is not None:
        session = live_session(ctx, p.into)
        # It takes the checkpoint's title, goal and summary, as session.update would set them.
        merged = merge_patch(session.metadata, described) if described else None
        if merged is not None:
            check_size(merged)
        session_store.edit(store.db, session.session_id, title=title, metadata=merged, unarchive=False)
    else:
        pid = caller.pid if p.pid is None else p.pid
        owner = owner_process(pid, caller.uid, ctx.reaper.known_owner(pid)).identity
        if p.owner_must_be_ancestor:
            check_ancestor(pid, caller.pid)
        recorded = value.get("session")
        old = recorded if isinstance(recorded, dict) else {}
        project = store.db.execute(
            "SELECT root FROM projects WHERE project_id = ?", (checkpoint.info.project_id,)
        ).fetchone()
        workspace = old.get("workspace") or (project[0] if project else None)
        metadata = {**described, "restored_from": {"key": p.key, "version": checkpoint.info.version}}
        request = GetOrCreate(p.tool_id, pid, workspace=workspace, metadata=metadata, dedup=False)
        session = _create(ctx, request, owner, now)
        session_store.edit(store.db, session.session_id, title=title, unarchive=False)
    events = seed_events(value["context"])
    if events:
        context_store.append(store.db, session.session_id, session.project_id, events, now)
        ctx.compactor.after_append(store.db, session.session_id, ctx.settings(), now)
    lines = [f"Restored from checkpoint {p.key} (version {checkpoint.info.version})."]
    lines += [f"{k.capitalize()}: {v}" for k, v in carried.items()]
    if value.get("note"):
        lines.append(f"Note: {value['note']}")
    memory_store.add_session_memory(
        store.db, session.session_id, session.project_id, "checkpoint", "\n".join(lines)[:8192], {"key": p.key}, now
    )
    session_store.touch(store.db, session.session_id, now)
    store.note_project_activity(session.project_id, now)
    return Restored(session.session_id, created, len(events), p.key, checkpoint.info.version)
