"""Tasks and their interactions. End to end against a real daemon."""
from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest

from omnid_client import Conflict, Invalid, NotFound
from tests.helpers import (
    TASK_ID,
    UNKNOWN_SESSION,
    UNKNOWN_TASK,
    count,
    refused,
    start,
)

# --- tasks and interactions ------------------------------------------------------------


def test_a_task_is_created_in_a_live_session(client, session):
    t0 = time.time()
    task = client.create_task(session.session_id, "fix the bug", external_id="claude-1", metadata={"prio": 1})

    assert TASK_ID.match(task.task_id)
    assert (task.session_id, task.title, task.status, task.external_id, task.metadata) == (
        session.session_id, "fix the bug", "open", "claude-1", {"prio": 1},
    )
    assert t0 <= task.created_at == task.updated_at
    assert (task.ended_at, task.interaction_count) == (None, 0)
    assert client.get_task(task.task_id).interactions == []
    assert client.get(session.session_id).last_activity >= task.created_at


COPY_INSERTS = {
    "task in an unknown session": (
        "INSERT INTO tasks (task_id, session_id, title, status, created_at, updated_at) "
        f"VALUES ('task_ffffffffffffffff', '{UNKNOWN_SESSION}', 't', 'open', 0, 0)"
    ),
    "task without a session": (
        "INSERT INTO tasks (task_id, session_id, title, status, created_at, updated_at) "
        "VALUES ('task_ffffffffffffffff', NULL, 't', 'open', 0, 0)"
    ),
    "interaction of an unknown task": (
        f"INSERT INTO interactions (task_id, kind, content, created_at) VALUES ('{UNKNOWN_TASK}', 'note', 'x', 0)"
    ),
}


def test_the_database_itself_refuses_tasks_without_their_parent(client, home, session, tmp_path):
    task = client.create_task(session.session_id, "real")
    copy = tmp_path / "copy.db"
    source = sqlite3.connect(f"file:{home / 'omnid.db'}?mode=ro", uri=True)
    target = sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        source.close()
    try:
        target.execute("PRAGMA foreign_keys = ON")
        assert ("sessions", "session_id") in [(r[2], r[3]) for r in target.execute("PRAGMA foreign_key_list(tasks)")]
        target.execute(  # a well-formed row goes in, so the refusal below is about the parent
            "INSERT INTO interactions (task_id, kind, content, created_at) VALUES (?, 'note', 'x', 0)", (task.task_id,)
        )
        for case, insert in COPY_INSERTS.items():
            refused(sqlite3.IntegrityError, case, target.execute, insert)
    finally:
        target.close()


def test_a_task_needs_a_live_existing_session(client, home, session):
    with pytest.raises(NotFound):
        client.create_task(UNKNOWN_SESSION, "t")
    with pytest.raises(Invalid):
        client.create_task("not-a-session-id", "t")
    assert count(home, "tasks") == 0


def test_an_external_id_is_unique_among_open_tasks(client, home, session, tmp_path):
    other = start(client, tmp_path / "other")
    first = client.create_task(session.session_id, "first", external_id="conv-1")

    for sid in (session.session_id, other.session_id):
        with pytest.raises(Conflict):
            client.create_task(sid, "duplicate", external_id="conv-1")
    assert count(home, "tasks") == 1
    client.create_task(session.session_id, "different", external_id="conv-2")

    client.update_task(first.task_id, status="done")
    again = client.create_task(other.session_id, "again", external_id="conv-1")
    assert again.status == "open"

    with pytest.raises(Conflict):
        client.update_task(first.task_id, status="open")
    assert client.get_task(first.task_id).status == "done"
    listed = client.list_tasks(external_id="conv-1").tasks
    assert [t.task_id for t in listed] == [again.task_id, first.task_id]


def test_interactions_belong_to_a_task_and_are_shown_with_it(client, session):
    task = client.create_task(session.session_id, "t")
    added = [
        client.add_interaction(task.task_id, "asked", kind="prompt"),
        client.add_interaction(task.task_id, "ran ls", kind="tool_call", metadata={"exit": 0}),
        client.add_interaction(task.task_id, "done"),
    ]

    assert [(i.task_id, i.kind) for i in added] == [
        (task.task_id, "prompt"), (task.task_id, "tool_call"), (task.task_id, "note")
    ]
    got = client.get_task(task.task_id)
    assert got.interactions == added
    assert got.interaction_count == 3
    assert got.updated_at == added[-1].created_at > task.updated_at
    assert client.get_task(task.task_id, max_interactions=2).interactions == added[:2]
    assert client.list_tasks(session_id=session.session_id).tasks[0].interaction_count == 3
    with pytest.raises(NotFound):
        client.add_interaction(UNKNOWN_TASK, "x")
    with pytest.raises(NotFound):
        client.get_task(UNKNOWN_TASK)
    with pytest.raises(Invalid):
        client.add_interaction("task_short", "x")


def test_tasks_are_listed_newest_first_with_filters_and_pages(client, session, tmp_path):
    other = start(client, tmp_path / "other")
    t1, t2, t3 = (client.create_task(session.session_id, f"t{n}") for n in (1, 2, 3))
    t4 = client.create_task(other.session_id, "t4")
    client.update_task(t2.task_id, status="done")

    def ids(**filters: Any) -> list[str]:
        return [t.task_id for t in client.list_tasks(**filters).tasks]

    assert ids() == [t4.task_id, t3.task_id, t2.task_id, t1.task_id]
    assert ids(session_id=session.session_id) == [t3.task_id, t2.task_id, t1.task_id]
    assert ids(status="done") == [t2.task_id]
    assert ids(session_id=session.session_id, status="open") == [t3.task_id, t1.task_id]
    assert ids(session_id=UNKNOWN_SESSION) == []

    seen, cursor = [], None
    for _ in range(3):
        page = client.list_tasks(limit=3, cursor=cursor)
        seen += [t.task_id for t in page.tasks]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ids()


def test_tasks_are_updated(client, session):
    task = client.create_task(session.session_id, "draft", metadata={"a": 1})

    renamed = client.update_task(task.task_id, title="final", metadata={"b": 2})
    assert (renamed.title, renamed.metadata, renamed.status, renamed.ended_at) == ("final", {"b": 2}, "open", None)
    assert renamed.updated_at > task.updated_at

    done = client.update_task(task.task_id, status="done")
    assert (done.status, done.title, done.metadata) == ("done", "final", {"b": 2})
    assert done.ended_at is not None and done.ended_at >= renamed.updated_at
    failed = client.update_task(task.task_id, status="failed")
    assert failed.status == "failed"
    reopened = client.update_task(task.task_id, status="open")
    assert (reopened.status, reopened.ended_at) == ("open", None)

    stored = client.get_task(task.task_id)
    assert (stored.title, stored.status, stored.metadata, stored.ended_at) == ("final", "open", {"b": 2}, None)
    with pytest.raises(NotFound):
        client.update_task(UNKNOWN_TASK, status="done")
    with pytest.raises(Invalid):
        client.update_task(task.task_id, status="paused")
