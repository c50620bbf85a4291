"""Task and interaction methods; a task always belongs to an existing session."""

from __future__ import annotations

import sqlite3

from omnid_client.errors import Conflict, NotFound
from omnid_client.protocol import AddInteraction, CreateTask, Interaction, ListTasks, Task, TaskPage, TaskRef, UpdateTask

from ..store import sessions as session_store
from ..store import tasks as task_store
from . import Caller, check_size, handles, live_session


def _task(caller: Caller, task_id: str) -> Task:
    task = task_store.get(caller.daemon.store.db, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}", {"task_id": task_id})
    return task


def _external_id_taken(external_id: str) -> Conflict:
    return Conflict(f"an open task already has external id {external_id!r}", {"external_id": external_id})


@handles("task.create")
def create(caller: Caller, p: CreateTask) -> Task:
    check_size(p.metadata)
    session = live_session(caller, p.session_id)
    store = caller.daemon.store
    now = store.now()
    try:
        task = task_store.create(store.db, session.session_id, p.title, p.external_id, p.metadata, now)
    except sqlite3.IntegrityError:
        raise _external_id_taken(p.external_id or "") from None
    session_store.touch(store.db, session.session_id, now)
    return task


@handles("task.update")
def update(caller: Caller, p: UpdateTask) -> Task:
    if p.metadata is not None:
        check_size(p.metadata)
    task = _task(caller, p.task_id)
    store = caller.daemon.store
    try:
        task_store.update(store.db, task, status=p.status, title=p.title, metadata=p.metadata, now=store.now())
    except sqlite3.IntegrityError:  # reopening a task whose external id another open task took
        raise _external_id_taken(task.external_id or "") from None
    return task


@handles("task.get")
def get(caller: Caller, p: TaskRef) -> Task:
    task = _task(caller, p.task_id)
    task.interactions = task_store.interactions(caller.daemon.store.db, task.task_id, p.max_interactions)
    return task


@handles("task.list")
def list_tasks(caller: Caller, p: ListTasks) -> TaskPage:
    tasks, cursor = task_store.page(
        caller.daemon.store.db,
        session_id=p.session_id,
        status=p.status,
        external_id=p.external_id,
        limit=p.limit,
        cursor=p.cursor,
    )
    return TaskPage(tasks, cursor)


@handles("interaction.add")
def add_interaction(caller: Caller, p: AddInteraction) -> Interaction:
    check_size(p.metadata)
    task = _task(caller, p.task_id)
    return task_store.add_interaction(caller.daemon.store.db, task.task_id, p.kind, p.content, p.metadata, caller.daemon.store.now())
