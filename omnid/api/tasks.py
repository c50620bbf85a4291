"""Task and interaction methods; a task always belongs to an existing session."""

from __future__ import annotations

import sqlite3

from omnid_client.errors import Conflict, NotFound
from omnid_client.protocol import (
    AddInteraction,
    CreateTask,
    Interaction,
    ListTasks,
    Task,
    TaskPage,
    TaskRef,
    UpdateTask,
)

from ..store import sessions as session_store, tasks as task_store
from ._common import check_size, live_session
from ._context import Caller, Context
from ._dispatch import handles


def _task(ctx: Context, task_id: str) -> Task:
    task = task_store.get(ctx.store.db, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}", {"task_id": task_id})
    return task


def _external_id_taken(external_id: str) -> Conflict:
    return Conflict(f"an open task already has external id {external_id!r}", {"external_id": external_id})


@handles("task.create")
def create(ctx: Context, caller: Caller, p: CreateTask) -> Task:
    check_size(p.metadata)
    session = live_session(ctx, p.session_id)
    store = ctx.store
    now = store.now()
    try:
        task = task_store.create(store.db, session.session_id, p.title, p.external_id, p.metadata, now)
    except sqlite3.IntegrityError:
        raise _external_id_taken(p.external_id or "") from None
    session_store.touch(store.db, session.session_id, now)
    return task


@handles("task.update")
def update(ctx: Context, caller: Caller, p: UpdateTask) -> Task:
    if p.metadata is not None:
        check_size(p.metadata)
    task = _task(ctx, p.task_id)
    store = ctx.store
    try:
        task_store.update(store.db, task, status=p.status, title=p.title, metadata=p.metadata, now=store.now())
    except sqlite3.IntegrityError:  # reopening a task whose external id another open task took
        raise _external_id_taken(task.external_id or "") from None
    return task


@handles("task.get")
def get(ctx: Context, caller: Caller, p: TaskRef) -> Task:
    task = _task(ctx, p.task_id)
    task.interactions = task_store.interactions(ctx.store.db, task.task_id, p.max_interactions)
    return task


@handles("task.list")
def list_tasks(ctx: Context, caller: Caller, p: ListTasks) -> TaskPage:
    tasks, cursor = task_store.page(
        ctx.store.db,
        session_id=p.session_id,
        status=p.status,
        external_id=p.external_id,
        limit=p.limit,
        cursor=p.cursor,
    )
    return TaskPage(tasks, cursor)


@handles("interaction.add")
def add_interaction(ctx: Context, caller: Caller, p: AddInteraction) -> Interaction:
    check_size(p.metadata)
    task = _task(ctx, p.task_id)
    return task_store.add_interaction(ctx.store.db, task.task_id, p.kind, p.content, p.metadata, ctx.store.now())
