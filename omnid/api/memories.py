"""Project memory methods (versioned, expiring) and session memory methods."""

from __future__ import annotations

import array
import asyncio

from omnid_client.errors import Invalid, NotFound
from omnid_client.protocol import (
    MAX_VALUE_BYTES,
    AddSessionMemory,
    Deleted,
    ListMemories,
    Memory,
    MemoryHistory,
    MemoryKeyRef,
    MemoryList,
    PutMemory,
    Session,
    SessionMemory,
    SessionMemoryList,
    SessionRef,
)

from ..store import memories as memory_store, sessions as session_store, vectors as vector_store
from ..store.events import stage
from ._common import check_size, committed, existing_session, live_session, project_of
from ._context import Caller, Context
from ._dispatch import handles
from ._embed import fits_project, stored_vector, text_of, will_embed


def _current(ctx: Context, p: MemoryKeyRef) -> Memory:
    store = ctx.store
    project_id = project_of(ctx, p.project_id, p.workspace, create=False)
    memory = memory_store.get(store.db, project_id, p.key, store.now())
    if memory is None:
        raise NotFound(f"no memory {p.key!r} in project {project_id}", {"key": p.key, "project_id": project_id})
    return memory


@handles("memory.put")
def put(ctx: Context, caller: Caller, p: PutMemory) -> Memory | asyncio.Future[Memory]:
    check_size(p.metadata)
    check_size(p.value, MAX_VALUE_BYTES, "value")
    if will_embed(ctx, p.embedding):
        return asyncio.ensure_future(_embedded_put(ctx, p))
    return _put(ctx, p, vector_store.unit_vector(p.embedding) if p.embedding is not None else None)


async def _embedded_put(ctx: Context, p: PutMemory) -> Memory:
    """The model embeds the value in its thread; the write then goes through the same
    group commit as any other (the quota checked again: time has passed)."""
    text = text_of(p.value)
    unit = await stored_vector(ctx, text, "value")
    ctx.guard.ensure_writable(grows=True, adding=len(text))
    with ctx.store.write():
        memory = _put(ctx, p, unit, from_model=True)
    await committed(ctx)
    return memory


def _put(ctx: Context, p: PutMemory, unit: array.array | None, *, from_model: bool = False) -> Memory:
    store = ctx.store
    project_id = project_of(ctx, p.project_id, p.workspace, create=True)
    if unit is not None and from_model and not fits_project(store.db, project_id, unit):
        unit = None
    now = store.now()
    expires_at = now + p.ttl if p.ttl is not None else None
    memory = memory_store.put(store.db, project_id, p.key, p.value, p.metadata, expires_at, now)
    if unit is not None:  # (the put dropped the vector of the value it replaced)
        vector_store.attach(store.db, memory.memory_id, "memory", project_id, unit, expires_at=expires_at)
    store.note_project_activity(project_id, now)
    if expires_at is not None:
        ctx.expirer.expect(expires_at)
    return memory


@handles("memory.get")
def get(ctx: Context, caller: Caller, p: MemoryKeyRef) -> Memory:
    """Reading counts as an access (accessed_count, last_accessed)."""
    return memory_store.record_access(ctx.store.db, _current(ctx, p), ctx.store.now())


@handles("memory.list")
def list_memories(ctx: Context, caller: Caller, p: ListMemories) -> MemoryList:
    store = ctx.store
    project_id = project_of(ctx, p.project_id, p.workspace, create=False)
    return MemoryList(memory_store.recent(store.db, project_id, p.limit, store.now()))


@handles("memory.delete")
def delete(ctx: Context, caller: Caller, p: MemoryKeyRef) -> Deleted:
    memory = _current(ctx, p)
    deleted = memory_store.delete_ids(ctx.store.db, [memory.memory_id])
    stage(
        ctx.store.db, "memory.deleted", project_id=memory.project_id, key=memory.key, memory_id=memory.memory_id,
        reason="deleted",
    )
    return Deleted(deleted)


@handles("memory.history")
def history(ctx: Context, caller: Caller, p: MemoryKeyRef) -> MemoryHistory:
    memory = _current(ctx, p)
    return MemoryHistory(memory.memory_id, memory.key, memory_store.history(ctx.store.db, memory.memory_id))


@handles("session_memory.add")
def add_session_memory(
    ctx: Context, caller: Caller, p: AddSessionMemory
) -> SessionMemory | asyncio.Future[SessionMemory]:
    check_size(p.metadata)
    unit = vector_store.unit_vector(p.embedding) if p.embedding is not None else None
    session = live_session(ctx, p.session_id)
    if unit is not None and session.project_id is None:
        raise Invalid(
            f"session {session.session_id} belongs to no project, and embeddings are kept per project",
            {"field": "embedding", "session_id": session.session_id},
        )
    if session.project_id is not None and will_embed(ctx, p.embedding):
        return asyncio.ensure_future(_embedded_add(ctx, p))
    return _add(ctx, p, session, unit)


async def _embedded_add(ctx: Context, p: AddSessionMemory) -> SessionMemory:
    unit = await stored_vector(ctx, p.content, "content")
    ctx.guard.ensure_writable(grows=True, adding=len(p.content))
    with ctx.store.write() as db:
        session = live_session(ctx, p.session_id)  # again after the embedding: it may have ended meanwhile
        if unit is not None and session.project_id is not None and not fits_project(db, session.project_id, unit):
            unit = None
        memory = _add(ctx, p, session, unit)
    await committed(ctx)
    return memory


def _add(ctx: Context, p: AddSessionMemory, session: Session, unit: array.array | None) -> SessionMemory:
    store = ctx.store
    now = store.now()
    memory = memory_store.add_session_memory(
        store.db, session.session_id, session.project_id, p.memory_type, p.content, p.metadata, now
    )
    if unit is not None and session.project_id is not None:
        vector_store.attach(
            store.db, memory.memory_id, "session_memory", session.project_id, unit, session_id=session.session_id
        )
    session_store.touch(store.db, session.session_id, now)
    return memory


@handles("session_memory.list")
def list_session_memories(ctx: Context, caller: Caller, p: SessionRef) -> SessionMemoryList:
    existing_session(ctx, p.session_id)
    return SessionMemoryList(memory_store.session_memories(ctx.store.db, p.session_id))
