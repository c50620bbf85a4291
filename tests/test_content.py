"""Session content end to end: projects, context, memories, messages, tasks, search and
size limits, against a real daemon process, real sockets and the real SQLite file."""

from __future__ import annotations

import math
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import DaemonProcess, db_rows, wait_for
from omnid_client import Client, Conflict, Invalid, NotFound, TooLarge
from omnid_client._core import Call, check_welcome, hello_frame, parse_response
from omnid_client.protocol import (
    HEADER,
    MAX_BATCH,
    MAX_CONTENT,
    MAX_FRAME,
    MAX_METADATA_BYTES,
    MAX_VALUE_BYTES,
    ContextEvent,
    ContextRecord,
    ExportHeader,
    NewMessage,
    Session,
    SessionRecord,
)

from omnid.projects import project_id_for

TOOL = "content-test"
MEMORY_ID = re.compile(r"^mem_[0-9a-f]{12}$")
SESSION_MEMORY_ID = re.compile(r"^smem_[0-9a-f]{12}$")
TASK_ID = re.compile(r"^task_[0-9a-f]{16}$")
UNKNOWN_SESSION = "00000000-0000-4000-8000-000000000000"
UNKNOWN_PROJECT = "prj_000000000000"
UNKNOWN_TASK = "task_0000000000000000"
SID = "<the session>"
"""Stands for the test's session id in tables of raw parameters."""
CONTENT_TABLES = (
    "sessions", "projects", "context_events", "memories", "memory_versions",
    "session_memories", "messages", "tasks", "interactions", "search_index",
)


# --- helpers ---------------------------------------------------------------------------


def start(client: Client, workspace: Path, tool: str = TOOL) -> Session:
    """A new live session, owned by this test process, in ``workspace``."""
    return client.get_or_create(tool, workspace=str(workspace), dedup=False).session


def daemon_clock(client: Client) -> float:
    st = client.status()
    return st.started_at + st.uptime


def ended(client: Client, workspace: Path) -> Session:
    return client.end(start(client, workspace).session_id)


def count(home: Path, table: str, where: str = "1", *args: Any) -> int:
    return db_rows(home / "omnid.db", f"SELECT count(*) FROM {table} WHERE {where}", *args)[0][0]


def table_counts(home: Path) -> dict[str, int]:
    """Rows in every content table: equal before and after means nothing was written."""
    return {table: count(home, table) for table in CONTENT_TABLES}


def miscounted_context(home: Path) -> list[tuple]:
    """(session_id, counter, rows) of each session whose context event counter differs from
    its number of context events: always empty."""
    return db_rows(
        home / "omnid.db",
        "SELECT session_id, context_event_count, n FROM (SELECT session_id, context_event_count, "
        "(SELECT count(*) FROM context_events c WHERE c.session_id = s.session_id) AS n FROM sessions s) "
        "WHERE context_event_count != n",
    )


def raw_call(client: Client, method: str, params: dict[str, Any]) -> Any:
    """Send ``params`` untyped, so the daemon (not the client library) judges them."""
    return client._call(Call(method, params))


def refused(error: type[Exception], case: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Exception:
    """The ``error`` that ``fn(*args, **kwargs)`` raises; fails naming ``case`` if it raises
    another or none. For tables of cheap cases checked against one daemon."""
    try:
        fn(*args, **kwargs)
    except error as e:
        return e
    except Exception as e:  # noqa: BLE001 - reported as the failure
        pytest.fail(f"{case}: expected {error.__name__}, got {type(e).__name__}: {e}")
    pytest.fail(f"{case}: expected {error.__name__}, nothing was raised")


def with_session(params: dict[str, Any], session_id: str) -> dict[str, Any]:
    return {k: session_id if v is SID else v for k, v in params.items()}


def ev(kind: str, subject: str, importance: float | None = None, detail: str | None = None) -> ContextEvent:
    return ContextEvent(kind, subject, importance, detail)  # type: ignore[arg-type]


def msg(content: str = "hi", role: str = "user", **fields: Any) -> NewMessage:
    return NewMessage(role, content, **fields)  # type: ignore[arg-type]


def text_packing_to(size: int) -> str:
    """A string whose JSON encoding (how omnid stores and measures values) is exactly ``size`` bytes."""
    text = "x" * (size - 2)  # the two quotes
    assert len(msgspec.json.encode(text)) == size
    return text


def metadata_packing_to(size: int) -> dict[str, str]:
    """Metadata whose JSON encoding is exactly ``size`` bytes."""
    metadata = {"b": text_packing_to(size - 6)}  # {"b": and }
    assert len(msgspec.json.encode(metadata)) == size
    return metadata


def make_repo(root: Path, marker: str = ".git", *subdirs: str) -> Path:
    root.mkdir(parents=True)
    if marker == ".git-file":  # a git worktree: .git is a file
        (root / ".git").write_text("gitdir: /elsewhere\n")
    else:
        (root / marker).mkdir()
    for sub in subdirs:
        (root / sub).mkdir(parents=True)
    return root


@pytest.fixture
def ws(tmp_path) -> Path:
    """A plain workspace directory, in no version control."""
    path = tmp_path / "ws"
    path.mkdir()
    return path


@pytest.fixture
def session(client, ws) -> Session:
    return start(client, ws)


# --- projects --------------------------------------------------------------------------


def test_a_workspace_inside_a_repository_belongs_to_the_repository_root(client, tmp_path):
    repo = make_repo(tmp_path / "repo", ".git", "src/pkg", "docs")

    a = start(client, repo / "src" / "pkg")
    b = start(client, repo / "docs")
    c = start(client, repo)

    assert a.project_id == b.project_id == c.project_id == project_id_for(str(repo))
    project = client.get_project(a.project_id)
    assert (project.root, project.name, project.vcs) == (str(repo), "repo", "git")
    assert (project.session_count, project.live_sessions) == (3, 3)
    assert client.get_project(workspace=str(repo / "src")) == project


def test_other_version_control_systems_mark_a_root_too(client, tmp_path):
    for marker, vcs in [(".git-file", "git"), (".hg", "hg"), (".jj", "jj"), (".svn", "svn")]:
        repo = make_repo(tmp_path / marker.strip("."), marker, "deep/down")
        project = client.get_project(start(client, repo / "deep" / "down").project_id)
        assert (project.project_id, project.root, project.vcs) == (project_id_for(str(repo)), str(repo), vcs), marker


def test_the_innermost_repository_wins(client, tmp_path):
    outer = make_repo(tmp_path / "outer", ".git", "lib")
    inner = make_repo(outer / "vendor" / "inner", ".git", "src")

    assert start(client, inner / "src").project_id == project_id_for(str(inner))
    assert start(client, outer / "lib").project_id == project_id_for(str(outer))


def test_a_workspace_outside_version_control_is_its_own_project(client, tmp_path):
    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)

    parent = start(client, plain)
    child = start(client, plain / "sub")

    assert parent.project_id == project_id_for(str(plain))
    assert child.project_id == project_id_for(str(plain / "sub"))
    project = client.get_project(child.project_id)
    assert (project.root, project.name, project.vcs) == (str(plain / "sub"), "sub", None)


def test_project_ids_are_stable_across_a_daemon_restart(home, daemon, tmp_path):
    repo = make_repo(tmp_path / "repo", ".git", "a", "b")
    with daemon.client() as c:
        before = start(c, repo / "a")
        c.put_memory("k", "v", workspace=str(repo / "a"))
    assert daemon.stop() == 0

    again = DaemonProcess(home).start()
    try:
        with again.client() as c:
            project = c.get_project(workspace=str(repo / "b"))
            assert project.project_id == before.project_id == project_id_for(str(repo))
            assert project.memory_count == 1
            assert start(c, repo / "b").project_id == before.project_id
            assert [p.project_id for p in c.list_projects().projects] == [before.project_id]
    finally:
        assert again.stop() == 0


def test_projects_are_listed_most_recently_active_first_in_pages(client, tmp_path):
    sessions = [start(client, tmp_path / f"p{i}") for i in range(4)]
    ids = [s.project_id for s in sessions]
    assert [p.project_id for p in client.list_projects().projects] == ids[::-1]

    client.append_context(sessions[0].session_id, [ev("decision", "activity in p0")])
    newest_first = [ids[0], ids[3], ids[2], ids[1]]
    assert [p.project_id for p in client.list_projects().projects] == newest_first

    seen, cursor = [], None
    for _ in range(3):
        page = client.list_projects(limit=3, cursor=cursor)
        seen += [p.project_id for p in page.projects]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == newest_first
    assert cursor is None


PROJECT_REFS = {
    "unknown id": ({"project_id": UNKNOWN_PROJECT}, NotFound),
    "unknown workspace": ({"workspace": "/nonexistent/never/seen"}, NotFound),
    "malformed id": ({"project_id": "prj_nothex"}, Invalid),
    "neither id nor workspace": ({}, Invalid),
    "both id and workspace": ({"project_id": UNKNOWN_PROJECT, "workspace": "/tmp"}, Invalid),
}


def test_get_project_errors(client, session, ws):
    for case, (params, error) in PROJECT_REFS.items():
        refused(error, case, raw_call, client, "project.get", params)
    with pytest.raises(Invalid):  # even when both name the same project
        client.get_project(session.project_id, workspace=str(ws))


# --- session context -------------------------------------------------------------------

EVERY_KIND = [
    ev("file_access", "src/app.py", 0.8, "read for the bug"),
    ev("search", "where is the reaper"),
    ev("decision", "use WAL mode", detail="readers never block"),
    ev("memory_ref", "mem_0123456789ab", detail="style guide"),
    ev("file_change", "src/app.py", detail="modified"),
]


def test_one_append_records_every_kind_and_the_view_shows_them(client, home, session):
    before = count(home, "context_events")

    result = client.append_context(session.session_id, EVERY_KIND)

    assert (result.appended, result.event_count) == (5, 5)
    assert count(home, "context_events") == before + 5
    ctx = client.get_context(session.session_id)
    assert [(f.path, f.importance, f.accesses) for f in ctx.files] == [("src/app.py", 0.8, 1)]
    assert [(s.query, s.detail) for s in ctx.searches] == [("where is the reaper", None)]
    assert [(d.text, d.detail) for d in ctx.decisions] == [("use WAL mode", "readers never block")]
    assert [(m.ref, m.source, m.content) for m in ctx.memories] == [("mem_0123456789ab", "memory_ref", "style guide")]
    assert [(c.path, c.change, c.changes) for c in ctx.changes] == [("src/app.py", "modified", 1)]
    assert ctx.size.events == 5
    assert ctx.size.bytes == sum(len(e.subject) + len(e.detail or "") for e in EVERY_KIND)
    assert ctx.size.truncated is False


def test_appends_add_rows_and_leave_earlier_rows_untouched(client, home, session):
    rows = "SELECT event_id, kind, subject, importance, detail, created_at FROM context_events WHERE session_id = ?"
    client.append_context(session.session_id, EVERY_KIND)
    first = db_rows(home / "omnid.db", rows, session.session_id)

    for n in range(1, 11):
        result = client.append_context(session.session_id, [ev("search", f"query {n}")])
        assert result.event_count == 5 + n
        assert count(home, "context_events") == 5 + n

    after = db_rows(home / "omnid.db", rows, session.session_id)
    assert after[: len(first)] == first
    assert [r[2] for r in after[len(first) :]] == [f"query {n}" for n in range(1, 11)]


def test_files_are_ordered_by_importance_then_recency_with_access_counts(client, session):
    sid = session.session_id
    for event in [ev("file_access", "low.py", 0.1), ev("file_access", "older.py", 0.5), ev("file_access", "newer.py")]:
        client.append_context(sid, [event])
    client.append_context(sid, [ev("file_access", "hot.py", 0.9)] * 3)

    files = client.get_context(sid).files
    assert [(f.path, f.importance, f.accesses) for f in files] == [
        ("hot.py", 0.9, 3),
        ("newer.py", 0.5, 1),
        ("older.py", 0.5, 1),
        ("low.py", 0.1, 1),
    ]

    client.append_context(sid, [ev("file_access", "older.py", 0.5)])
    files = client.get_context(sid).files
    assert [(f.path, f.accesses) for f in files] == [("hot.py", 3), ("older.py", 2), ("newer.py", 1), ("low.py", 1)]
    older = files[1]
    assert older.first_access < older.last_access


def test_searches_decisions_and_changes_are_newest_first(client, session):
    sid = session.session_id
    for n in range(3):
        client.append_context(
            sid, [ev("search", f"q{n}"), ev("decision", f"d{n}"), ev("file_change", "f.py", detail=f"edit {n}")]
        )
    client.append_context(sid, [ev("file_change", "g.py", detail="created")])

    ctx = client.get_context(sid)
    assert [s.query for s in ctx.searches] == ["q2", "q1", "q0"]
    assert [d.text for d in ctx.decisions] == ["d2", "d1", "d0"]
    assert [(c.path, c.change, c.changes) for c in ctx.changes] == [("g.py", "created", 1), ("f.py", "edit 2", 3)]
    assert ctx.searches[0].at > ctx.searches[-1].at


CAPS = [
    ("file_access", "max_files", "files", "path"),
    ("search", "max_searches", "searches", "query"),
    ("decision", "max_decisions", "decisions", "text"),
    ("memory_ref", "max_memories", "memories", "ref"),
    ("file_change", "max_changes", "changes", "path"),
]


def test_each_kind_is_capped_and_the_cap_is_reported(client, ws):
    for kind, cap, field, attr in CAPS:
        sid = start(client, ws).session_id
        for n in range(3):
            client.append_context(sid, [ev(kind, f"item{n}")])

        capped = client.get_context(sid, **{cap: 2})
        assert [getattr(item, attr) for item in getattr(capped, field)] == ["item2", "item1"], cap
        assert (capped.size.truncated, capped.size.events) == (True, 3), cap

        exact = client.get_context(sid, **{cap: 3})
        assert [getattr(item, attr) for item in getattr(exact, field)] == ["item2", "item1", "item0"], cap
        assert exact.size.truncated is False, cap


def test_appending_moves_last_activity_of_session_and_project(client, session):
    project_before = client.get_project(session.project_id).last_activity
    client.append_context(session.session_id, [ev("decision", "x")])

    assert client.get(session.session_id).last_activity > session.last_activity
    assert client.get_project(session.project_id).last_activity > project_before


def test_project_activity_reaches_the_database_within_a_second_or_two_and_at_shutdown(daemon, client, home, session):
    def stored() -> float:
        return db_rows(home / "omnid.db", "SELECT last_activity FROM projects WHERE project_id = ?", session.project_id)[0][0]

    # Writes note project activity and a timer writes it (at most once a second)...
    client.add_message(session.session_id, "user", "hello")
    added = client.list_messages(session.session_id).messages[-1].created_at
    wait_for(lambda: stored() >= added, timeout=5, what="the project's last_activity to be written")

    # ...while reads always see it, and stopping the daemon writes what is still pending.
    appended = client.append_context(session.session_id, [ev("search", "last words")])
    assert appended.event_count == 1
    seen = client.get_project(session.project_id).last_activity
    assert seen > added and [p.last_activity for p in client.list_projects().projects] == [seen]
    client.append_context(session.session_id, [ev("search", "really the last")])
    last = client.get(session.session_id).last_activity
    assert daemon.stop() == 0
    assert stored() == last


def test_context_of_an_unknown_session_is_not_found(client, session):
    with pytest.raises(NotFound):
        client.append_context(UNKNOWN_SESSION, [ev("decision", "x")])
    with pytest.raises(NotFound):
        client.get_context(UNKNOWN_SESSION)


def test_appending_to_an_ended_session_is_a_conflict_and_its_context_stays_readable(client, home, session):
    client.append_context(session.session_id, [ev("decision", "before the end")])
    client.end(session.session_id)

    with pytest.raises(Conflict) as err:
        client.append_context(session.session_id, [ev("decision", "after the end")])
    assert "ended" in str(err.value)
    assert count(home, "context_events") == 1
    assert [d.text for d in client.get_context(session.session_id).decisions] == ["before the end"]


BAD_EVENTS = {
    "importance above 1": ({"kind": "file_access", "subject": "a.py", "importance": 1.01}, Invalid),
    "importance below 0": ({"kind": "file_access", "subject": "a.py", "importance": -0.01}, Invalid),
    "importance nan": ({"kind": "file_access", "subject": "a.py", "importance": math.nan}, Invalid),
    "importance inf": ({"kind": "file_access", "subject": "a.py", "importance": math.inf}, Invalid),
    "unknown kind": ({"kind": "file_read", "subject": "a.py"}, Invalid),
    "empty subject": ({"kind": "search", "subject": ""}, Invalid),
    "subject too long": ({"kind": "search", "subject": "x" * 8193}, TooLarge),
    "detail too long": ({"kind": "search", "subject": "q", "detail": "x" * 8193}, TooLarge),
}


def test_a_batch_with_one_bad_event_writes_nothing(client, home, session):
    good = {"kind": "decision", "subject": "fine"}
    client.append_context(session.session_id, [ev("search", "already there")])
    before = table_counts(home)
    activity = client.get(session.session_id).last_activity

    for case, (bad, error) in BAD_EVENTS.items():
        batch = {"session_id": session.session_id, "events": [good, bad, good]}
        refused(error, case, raw_call, client, "context.append", batch)
        assert table_counts(home) == before, case

    assert client.get_context(session.session_id).size.events == 1
    assert client.get(session.session_id).last_activity == activity


def test_event_batches_hold_1_to_max_batch_events(client, home, session):
    sid = session.session_id
    refused(Invalid, "empty batch", client.append_context, sid, [])
    refused(TooLarge, "batch too long", client.append_context, sid, [ev("search", "q")] * (MAX_BATCH + 1))
    assert count(home, "context_events") == 0

    assert client.append_context(sid, [ev("search", "q")] * MAX_BATCH).event_count == MAX_BATCH


def test_every_way_of_adding_or_removing_events_keeps_the_session_counters_exact(client, home, ws):
    a, b = start(client, ws), start(client, ws)
    assert client.append_context(a.session_id, [ev("search", "one")]).event_count == 1
    assert client.append_context(a.session_id, EVERY_KIND).event_count == 6
    assert client.append_context(b.session_id, [ev("decision", "d")] * 3).event_count == 3
    refused(Invalid, "bad batch", raw_call, client, "context.append",
            {"session_id": a.session_id, "events": [{"kind": "search", "subject": "ok"}, {"kind": "nope", "subject": "x"}]})
    client.end(b.session_id)
    refused(Conflict, "ended", client.append_context, b.session_id, [ev("search", "late")])
    assert miscounted_context(home) == []

    # Imports: a new session with its events, more events for an existing one, a dry run,
    # and a batch that fails half way (all or nothing).
    new = "11111111-2222-4333-8444-555555555555"

    def context(sid: str, seq: int) -> ContextRecord:
        return ContextRecord(sid, seq, "decision", f"imported {seq}", None, None, 1.5)

    session_record = SessionRecord(new, TOOL, None, "default", None, None, None, True, None, {}, 1.0, 2.0, 2.0,
                                   "ended", None, 0, 0, 0)
    client.import_records([ExportHeader(), session_record, *(context(new, n) for n in (1, 2))])
    client.import_records([ExportHeader(), context(a.session_id, 7), context(a.session_id, 8)])
    client.import_records([ExportHeader(), context(a.session_id, 9), context(new, 3)], dry_run=True)
    refused(Invalid, "gap", client.import_records, [ExportHeader(), context(new, 3), context(new, 5)])
    assert client.session_summary(new).context_events == 2
    assert client.session_summary(a.session_id).context_events == 8
    assert client.append_context(a.session_id, [ev("search", "after the import")]).event_count == 9
    assert miscounted_context(home) == []

    # Deleting sessions takes their events and their counters together.
    empty = client.end(start(client, ws).session_id)
    assert client.cleanup_orphans(0).session_ids == [empty.session_id]
    client.run_retention(older_than=0, purge=True)
    assert db_rows(home / "omnid.db", "SELECT session_id FROM sessions") == [(a.session_id,)]
    assert miscounted_context(home) == []


# --- project memories ------------------------------------------------------------------


def test_put_then_get_counts_each_read(client, home, ws):
    t0 = time.time()
    put = client.put_memory("style", "black", workspace=str(ws), metadata={"by": "test"})
    t1 = time.time()

    assert MEMORY_ID.match(put.memory_id)
    assert put.project_id == project_id_for(str(ws))
    assert (put.key, put.value, put.metadata, put.version) == ("style", "black", {"by": "test"}, 1)
    assert (put.accessed_count, put.last_accessed, put.expires_at) == (0, None, None)
    assert t0 <= put.created_at == put.updated_at <= t1

    first = client.get_memory("style", workspace=str(ws))
    second = client.get_memory("style", project_id=put.project_id)

    assert (first.memory_id, first.value) == (put.memory_id, "black")
    assert (first.accessed_count, second.accessed_count) == (1, 2)
    assert put.created_at < first.last_accessed < second.last_accessed <= time.time()
    assert db_rows(home / "omnid.db", "SELECT accessed_count, last_accessed FROM memories WHERE memory_id = ?", put.memory_id) == [
        (2, second.last_accessed)
    ]
    assert client.list_memories(workspace=str(ws))[0].accessed_count == 2


def test_memories_are_listed_most_recently_accessed_first(client, ws):
    for key in "abc":
        client.put_memory(key, key.upper(), workspace=str(ws))

    def keys(limit: int = 50) -> list[str]:
        return [m.key for m in client.list_memories(workspace=str(ws), limit=limit)]

    assert keys() == ["c", "b", "a"]
    client.get_memory("a", workspace=str(ws))
    assert keys() == ["a", "c", "b"]
    client.get_memory("b", workspace=str(ws))
    assert keys() == ["b", "a", "c"]
    assert keys(limit=2) == ["b", "a"]


VALUES = ["text", 42, 3.5, True, None, [1, "two", {"three": 3}], {"nested": {"list": [1, 2]}}, ""]


def test_each_put_keeps_the_earlier_value_as_a_version(client, home, ws):
    puts = [client.put_memory("k", v, workspace=str(ws), metadata={"n": i}) for i, v in enumerate(VALUES)]

    assert {p.memory_id for p in puts} == {puts[0].memory_id}
    assert [p.version for p in puts] == list(range(1, len(VALUES) + 1))
    history = client.memory_history("k", workspace=str(ws))
    assert (history.memory_id, history.key) == (puts[0].memory_id, "k")
    assert [v.version for v in history.versions] == list(range(1, len(VALUES) + 1))
    assert [(type(v.value), v.value) for v in history.versions] == [(type(v), v) for v in VALUES]
    assert [v.metadata for v in history.versions] == [{"n": i} for i in range(len(VALUES))]
    assert history.versions == sorted(history.versions, key=lambda v: v.created_at)

    current = client.get_memory("k", workspace=str(ws))
    assert (current.value, current.version, current.metadata) == (VALUES[-1], len(VALUES), {"n": len(VALUES) - 1})
    assert current.created_at == puts[0].created_at < current.updated_at
    assert count(home, "memory_versions") == len(VALUES)


def test_delete_removes_the_memory_and_its_history(client, home, ws):
    first = client.put_memory("gone", 1, workspace=str(ws))
    client.put_memory("gone", 2, workspace=str(ws))
    client.put_memory("kept", 3, workspace=str(ws))

    assert client.delete_memory("gone", workspace=str(ws)).deleted == 1

    for call in (client.get_memory, client.memory_history, client.delete_memory):
        with pytest.raises(NotFound):
            call("gone", workspace=str(ws))
    assert [m.key for m in client.list_memories(workspace=str(ws))] == ["kept"]
    assert count(home, "memory_versions", "memory_id = ?", first.memory_id) == 0
    again = client.put_memory("gone", "new", workspace=str(ws))
    assert (again.version, again.value) == (1, "new")
    assert again.memory_id != first.memory_id


def test_memories_belong_to_their_project(client, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    client.put_memory("k", "in a", workspace=str(a))
    client.put_memory("k", "in b", workspace=str(b))

    assert client.get_memory("k", workspace=str(a)).value == "in a"
    assert client.get_memory("k", workspace=str(b)).value == "in b"
    assert [m.value for m in client.list_memories(workspace=str(a))] == ["in a"]
    with pytest.raises(NotFound):
        client.get_memory("k", project_id=UNKNOWN_PROJECT)
    with pytest.raises(NotFound):
        client.get_memory("missing", workspace=str(a))


def expired(client: Client, key: str, ws: Path) -> bool:
    try:
        client.get_memory(key, workspace=str(ws))
    except NotFound:
        return True
    return False


def test_an_expired_memory_is_never_returned_and_is_purged_from_the_database(home, daemon, ws):
    with daemon.client() as c:
        keep = c.put_memory("keep", "forever", workspace=str(ws))
        t0 = time.time()
        brief = c.put_memory("brief", "short lived", workspace=str(ws), ttl=0.3)
        t1 = time.time()

        assert isinstance(brief.expires_at, float)
        assert t0 + 0.3 <= brief.expires_at <= t1 + 0.3
        assert c.get_memory("brief", workspace=str(ws)).value == "short lived"

        wait_for(lambda: expired(c, "brief", ws), timeout=5, what="the memory to expire")
        assert time.time() >= brief.expires_at
        assert [m.key for m in c.list_memories(workspace=str(ws))] == ["keep"]
        with pytest.raises(NotFound):
            c.memory_history("brief", workspace=str(ws))
        assert c.get_project(keep.project_id).memory_count == 1
        assert c.stats().project_memories == 1
    assert daemon.stop() == 0

    again = DaemonProcess(home).start()
    try:
        for table in ("memories", "memory_versions"):
            assert count(home, table, "memory_id = ?", brief.memory_id) == 0, f"{table} still holds the expired memory"
        assert count(home, "search_index", "ref_id = ?", brief.memory_id) == 0
        with again.client() as c:
            assert c.get_memory("keep", workspace=str(ws)).value == "forever"
    finally:
        assert again.stop() == 0


def test_a_put_after_expiry_starts_a_new_memory(client, ws):
    old = client.put_memory("k", "old", workspace=str(ws), ttl=0.2)
    wait_for(lambda: expired(client, "k", ws), timeout=5, what="the memory to expire")

    new = client.put_memory("k", "new", workspace=str(ws))

    assert (new.version, new.expires_at) == (1, None)
    assert new.memory_id != old.memory_id
    assert [v.value for v in client.memory_history("k", workspace=str(ws)).versions] == ["new"]


def test_an_expired_memory_is_not_found_by_search(client, ws):
    client.put_memory("brief", "ephemeral quokka", workspace=str(ws), ttl=0.2)
    assert [h.kind for h in client.search("quokka")] == ["memory"]
    wait_for(lambda: expired(client, "brief", ws), timeout=5, what="the memory to expire")

    assert client.search("quokka") == []


def test_a_ttl_out_of_range_is_invalid(client, home, ws):
    for ttl in (0, -1, math.nan, 11 * 365 * 86400):
        refused(Invalid, f"ttl={ttl}", client.put_memory, "k", "v", workspace=str(ws), ttl=ttl)
    assert count(home, "memories") == 0


def test_values_are_limited_by_their_encoded_size(client, home, ws):
    fits = client.put_memory("big", text_packing_to(MAX_VALUE_BYTES), workspace=str(ws))
    assert len(client.get_memory("big", workspace=str(ws)).value) == len(fits.value)

    with pytest.raises(TooLarge):
        client.put_memory("big", text_packing_to(MAX_VALUE_BYTES + 1), workspace=str(ws))
    assert client.get_memory("big", workspace=str(ws)).version == 1
    assert count(home, "memory_versions") == 1


def test_memory_keys_are_1_to_256_characters(client, home, ws):
    refused(Invalid, "empty key", client.put_memory, "", "v", workspace=str(ws))
    refused(TooLarge, "long key", client.put_memory, "k" * 257, "v", workspace=str(ws))
    assert count(home, "memories") == 0
    assert client.put_memory("k" * 256, "v", workspace=str(ws)).key == "k" * 256


# --- session memories ------------------------------------------------------------------


def test_session_memories_are_listed_and_join_the_context(client, session):
    sid = session.session_id
    assert client.session_summary(sid).has_memory is False
    assert client.list_session_memories(sid) == []

    first = client.add_session_memory(sid, "prefers tabs", memory_type="preference", metadata={"from": "chat"})
    second = client.add_session_memory(sid, "runs tests with -q")

    assert SESSION_MEMORY_ID.match(first.memory_id)
    assert (first.session_id, first.memory_type, first.content, first.metadata) == (
        sid, "preference", "prefers tabs", {"from": "chat"},
    )
    assert second.memory_type == "note"
    assert client.list_session_memories(sid) == [first, second]
    assert client.session_summary(sid).has_memory is True
    assert client.get(sid).last_activity >= second.created_at
    memories = client.get_context(sid).memories
    assert [(m.ref, m.source, m.memory_type, m.content) for m in memories] == [
        (second.memory_id, "session_memory", "note", "runs tests with -q"),
        (first.memory_id, "session_memory", "preference", "prefers tabs"),
    ]


def test_session_memories_need_a_live_session_and_a_valid_type(client, home, session):
    with pytest.raises(NotFound):
        client.add_session_memory(UNKNOWN_SESSION, "x")
    with pytest.raises(NotFound):
        client.list_session_memories(UNKNOWN_SESSION)
    with pytest.raises(Invalid):
        client.add_session_memory(session.session_id, "x", memory_type="has spaces")
    with pytest.raises(Invalid):
        client.add_session_memory(session.session_id, "")
    client.end(session.session_id)
    with pytest.raises(Conflict):
        client.add_session_memory(session.session_id, "x")
    assert count(home, "session_memories") == 0


# --- messages --------------------------------------------------------------------------


def test_messages_are_added_singly_or_in_batches_and_listed_in_order(client, session):
    sid = session.session_id
    one = client.add_message(sid, "user", "hello", tokens_used=3, cost_usd=0.25, metadata={"a": 1}, message_type="prompt")
    assert (len(one.message_ids), one.message_count, one.total_tokens, one.total_cost) == (1, 1, 3, 0.25)

    batch = client.add_messages(
        sid,
        [msg("hi there", "assistant", tokens_used=5, cost_usd=0.5), msg("ls -l", "tool"), msg("be brief", "system")],
    )
    assert (batch.message_count, batch.total_tokens, batch.total_cost) == (4, 8, 0.75)
    assert len(batch.message_ids) == 3
    assert one.message_ids[0] < batch.message_ids[0] < batch.message_ids[1] < batch.message_ids[2]

    page = client.list_messages(sid)
    assert page.next_after_seq is None
    assert [(m.seq, m.role, m.content) for m in page.messages] == [
        (1, "user", "hello"), (2, "assistant", "hi there"), (3, "tool", "ls -l"), (4, "system", "be brief"),
    ]
    assert [m.message_id for m in page.messages] == one.message_ids + batch.message_ids
    first = page.messages[0]
    assert (first.message_type, first.metadata, first.tokens_used, first.cost_usd) == ("prompt", {"a": 1}, 3, 0.25)
    assert page.messages[1].message_type == "text"
    got = client.get(sid)
    assert (got.message_count, got.total_tokens, got.total_cost) == (4, 8, 0.75)
    assert got.last_activity >= page.messages[-1].created_at


def test_messages_are_paged_by_sequence(client, session):
    sid = session.session_id
    client.add_messages(sid, [msg(f"m{n}") for n in range(1, 8)])

    pages, after = [], 0
    while True:
        page = client.list_messages(sid, limit=3, after_seq=after)
        pages.append([m.seq for m in page.messages])
        if page.next_after_seq is None:
            break
        after = page.next_after_seq
    assert pages == [[1, 2, 3], [4, 5, 6], [7]]
    assert client.list_messages(sid, after_seq=7).messages == []
    with pytest.raises(NotFound):
        client.list_messages(UNKNOWN_SESSION)


def test_session_counters_stay_exact_under_concurrent_adds(daemon, home, session):
    threads, adds = 8, 25
    barrier = threading.Barrier(threads)
    counts: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with daemon.client() as c:
                c.connect()
                barrier.wait(timeout=10)
                for _ in range(adds):
                    counts.append(c.add_message(session.session_id, "user", "x", tokens_used=7, cost_usd=0.1).message_count)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert not errors, errors

    total = threads * adds
    assert sorted(counts) == list(range(1, total + 1)), "every add must see its own, distinct count"
    with daemon.client() as c:
        got = c.get(session.session_id)
        assert (got.message_count, got.total_tokens, got.total_cost) == (total, 7 * total, 20.0)
        summary = c.session_summary(session.session_id)
        assert (summary.message_count, summary.total_tokens, summary.total_cost) == (total, 7 * total, 20.0)
        assert [m.seq for m in c.list_messages(session.session_id, limit=1000).messages] == list(range(1, total + 1))
    assert db_rows(home / "omnid.db", "SELECT count(*), sum(tokens_used), sum(cost_nanos) FROM messages") == [(total, 7 * total, 20 * 10**9)]


BAD_MESSAGES = {
    "unknown role": ({"role": "robot", "content": "x"}, Invalid),
    "capitalised role": ({"role": "User", "content": "x"}, Invalid),
    "empty role": ({"role": "", "content": "x"}, Invalid),
    "content too long": ({"role": "user", "content": "x" * (MAX_CONTENT + 1)}, TooLarge),
    "metadata too large": ({"role": "user", "content": "x", "metadata": metadata_packing_to(MAX_METADATA_BYTES + 1)}, TooLarge),
    "negative tokens": ({"role": "user", "content": "x", "tokens_used": -1}, Invalid),
    "negative cost": ({"role": "user", "content": "x", "cost_usd": -0.01}, Invalid),
    "bad message type": ({"role": "user", "content": "x", "message_type": "two words"}, Invalid),
    "missing content": ({"role": "user"}, Invalid),
}
GOOD_MESSAGE = {"role": "assistant", "content": "fine", "tokens_used": 10, "cost_usd": 1.0}


def assert_one_message(client: Client, sid: str) -> None:
    got = client.get(sid)
    assert (got.message_count, got.total_tokens, got.total_cost) == (1, 1, 0.5)
    assert [m.content for m in client.list_messages(sid).messages] == ["already there"]


def test_a_batch_with_one_bad_message_writes_nothing(client, home, session):
    sid = session.session_id
    client.add_message(sid, "user", "already there", tokens_used=1, cost_usd=0.5)
    before = table_counts(home)

    for case, (bad, error) in BAD_MESSAGES.items():
        batch = {"session_id": sid, "messages": [GOOD_MESSAGE, bad, GOOD_MESSAGE]}
        refused(error, case, raw_call, client, "message.add", batch)
        assert table_counts(home) == before, case

    assert_one_message(client, sid)


def test_a_batch_with_metadata_that_cannot_be_stored_is_invalid_and_writes_nothing(client, home, session):
    """MessagePack can carry what the JSON columns cannot (an extension type): a typed
    refusal, not an internal error."""
    sid = session.session_id
    client.add_message(sid, "user", "already there", tokens_used=1, cost_usd=0.5)
    before = table_counts(home)
    bad = {"role": "user", "content": "x", "metadata": {"e": msgspec.msgpack.Ext(5, b"?")}}

    with pytest.raises(Invalid):
        raw_call(client, "message.add", {"session_id": sid, "messages": [GOOD_MESSAGE, bad, GOOD_MESSAGE]})

    assert table_counts(home) == before
    assert_one_message(client, sid)


def test_batches_hold_at_most_max_batch_messages(client, home, session):
    with pytest.raises(TooLarge):
        client.add_messages(session.session_id, [msg()] * (MAX_BATCH + 1))
    assert count(home, "messages") == 0
    assert client.get(session.session_id).message_count == 0

    assert client.add_messages(session.session_id, [msg()] * MAX_BATCH).message_count == MAX_BATCH


def test_content_is_limited_to_max_content_characters(client, home, session):
    with pytest.raises(TooLarge):
        client.add_message(session.session_id, "user", "é" * (MAX_CONTENT + 1))
    assert count(home, "messages") == 0

    client.add_message(session.session_id, "user", "é" * MAX_CONTENT)
    assert client.list_messages(session.session_id).messages[0].content == "é" * MAX_CONTENT


# --- content only goes into live sessions -------------------------------------------------

ADDS: dict[str, Callable[[Client, str], Any]] = {
    "context.append": lambda c, sid: c.append_context(sid, [ev("decision", "x")]),
    "session_memory.add": lambda c, sid: c.add_session_memory(sid, "x"),
    "message.add": lambda c, sid: c.add_message(sid, "user", "x"),
    "task.create": lambda c, sid: c.create_task(sid, "x"),
}


def test_content_for_an_unknown_or_ended_session_is_refused(client, home, session):
    client.end(session.session_id)
    before = table_counts(home)

    for method, add in ADDS.items():
        refused(NotFound, f"{method} to an unknown session", add, client, UNKNOWN_SESSION)
        err = refused(Conflict, f"{method} to an ended session", add, client, session.session_id)
        assert err.details.get("session_id") == session.session_id, method  # type: ignore[attr-defined]

    assert table_counts(home) == before


# --- summary and stats -----------------------------------------------------------------


def test_summary_of_a_session(client, session):
    sid = session.session_id
    empty = client.session_summary(sid)
    assert (empty.message_count, empty.total_tokens, empty.total_cost, empty.messages_by_role) == (0, 0, 0.0, {})
    assert (empty.first_message_at, empty.last_message_at, empty.has_memory) == (None, None, False)

    client.add_messages(
        sid, [msg("q", "user", tokens_used=10, cost_usd=0.125), msg("a", "assistant", tokens_used=20, cost_usd=0.25)]
    )
    client.add_message(sid, "user", "q2", tokens_used=5)
    client.create_task(sid, "do it")
    client.append_context(sid, [ev("decision", "d"), ev("search", "s")])
    client.add_session_memory(sid, "remember")
    messages = client.list_messages(sid).messages

    s = client.session_summary(sid)
    assert (s.session_id, s.tool_id, s.project_id, s.live) == (sid, TOOL, session.project_id, True)
    assert (s.message_count, s.total_tokens, s.total_cost) == (3, 35, 0.375)
    assert s.messages_by_role == {"user": 2, "assistant": 1}
    assert (s.task_count, s.context_events, s.has_memory) == (1, 2, True)
    assert (s.first_message_at, s.last_message_at) == (messages[0].created_at, messages[-1].created_at)
    assert s.started_at == session.started_at < s.first_message_at < s.last_message_at <= s.last_activity
    assert s.ended_at is None and s.duration >= s.last_message_at - s.started_at

    done = client.end(sid)
    s = client.session_summary(sid)
    assert (s.live, s.ended_at) == (False, done.ended_at)
    assert s.duration == pytest.approx(done.ended_at - done.started_at)
    with pytest.raises(NotFound):
        client.session_summary(UNKNOWN_SESSION)


def test_service_stats(client, tmp_path):
    empty = client.stats()
    assert (empty.sessions, empty.messages, empty.total_cost, empty.avg_session_seconds) == (0, 0, 0.0, None)
    assert (empty.avg_messages_per_session, empty.avg_tokens_per_session) == (0.0, 0.0)

    one, two = tmp_path / "one", tmp_path / "two"
    a = start(client, one, "tool-a")
    b = start(client, two, "tool-a")
    c = start(client, one, "tool-b")
    client.add_messages(a.session_id, [msg(tokens_used=10, cost_usd=0.5)] * 3)
    client.add_message(b.session_id, "user", "x", tokens_used=4, cost_usd=0.25)
    client.put_memory("m1", 1, workspace=str(one))
    client.put_memory("m2", 2, workspace=str(one))
    client.add_session_memory(a.session_id, "note")
    client.create_task(a.session_id, "open one")
    client.update_task(client.create_task(a.session_id, "done one").task_id, status="done")
    ended_b, ended_c = client.end(b.session_id), client.end(c.session_id)

    st = client.stats()
    assert (st.sessions, st.live_sessions, st.ended_sessions, st.projects) == (3, 1, 2, 2)
    assert (st.messages, st.total_tokens, st.total_cost) == (4, 34, 1.75)
    assert (st.project_memories, st.session_memories, st.tasks, st.open_tasks) == (2, 1, 2, 1)
    assert st.avg_messages_per_session == pytest.approx(4 / 3)
    assert st.avg_tokens_per_session == pytest.approx(34 / 3)
    durations = [s.ended_at - s.started_at for s in (ended_b, ended_c)]
    assert st.avg_session_seconds == pytest.approx(sum(durations) / 2)
    assert st.sessions_by_tool == {"tool-a": 2, "tool-b": 1}


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

    assert [(i.task_id, i.kind) for i in added] == [(task.task_id, "prompt"), (task.task_id, "tool_call"), (task.task_id, "note")]
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


# --- orphan cleanup --------------------------------------------------------------------


def test_cleanup_removes_only_old_ended_empty_sessions(client, home, tmp_path):
    orphan = ended(client, tmp_path / "o")
    with_task = start(client, tmp_path / "t")
    client.create_task(with_task.session_id, "keeps it")
    with_message = start(client, tmp_path / "m")
    client.add_message(with_message.session_id, "user", "keeps it")
    with_context = start(client, tmp_path / "c")
    client.append_context(with_context.session_id, [ev("decision", "keeps it")])
    with_memory = start(client, tmp_path / "s")
    client.add_session_memory(with_memory.session_id, "keeps it")
    for s in (with_task, with_message, with_context, with_memory):
        client.end(s.session_id)
    live = start(client, tmp_path / "l")
    # A margin on the daemon's clock (which judges the ages) between `live` and `young`,
    # so the cutoff between them stays clear of the latency of the calls below.
    wait_for(lambda: daemon_clock(client) > live.started_at + 0.4, what="the daemon's clock to move on")
    young = ended(client, tmp_path / "y")
    cutoff = (live.started_at + young.started_at) / 2
    before = table_counts(home)

    dry = client.cleanup_orphans(time.time() - cutoff, dry_run=True)

    assert (dry.dry_run, dry.session_ids) == (True, [orphan.session_id])
    assert table_counts(home) == before
    assert client.get(orphan.session_id).session_id == orphan.session_id

    real = client.cleanup_orphans(time.time() - cutoff)

    assert (real.dry_run, real.session_ids) == (False, [orphan.session_id])
    with pytest.raises(NotFound):
        client.get(orphan.session_id)
    for kept in (with_task, with_message, with_context, with_memory, live, young):
        assert client.get(kept.session_id).session_id == kept.session_id
    assert count(home, "sessions") == before["sessions"] - 1
    assert client.cleanup_orphans(time.time() - cutoff).session_ids == []
    assert client.cleanup_orphans(0, dry_run=True).session_ids == [young.session_id]


def test_cleanup_needs_a_non_negative_age(client):
    with pytest.raises(Invalid):
        raw_call(client, "maintenance.cleanup_orphans", {"older_than": -1})


# --- search ----------------------------------------------------------------------------


@pytest.fixture
def corpus(client, tmp_path) -> dict[str, Any]:
    """Two projects; the first with one session holding every searchable kind."""
    one, two = tmp_path / "one", tmp_path / "two"
    s1, s2 = start(client, one), start(client, two)
    m1 = client.add_message(s1.session_id, "user", "the zebra crossing is closed").message_ids[0]
    client.append_context(s1.session_id, [ev("decision", "adopt the zebra library", detail="it is fast")])
    memory = client.put_memory("animal", "zebra stripes everywhere", workspace=str(one))
    smem = client.add_session_memory(s1.session_id, "zebra notes for later")
    m2 = client.add_message(s2.session_id, "user", "a zebra in another project").message_ids[0]
    return {"s1": s1, "s2": s2, "m1": str(m1), "m2": str(m2), "memory": memory, "smem": smem}


def test_search_finds_messages_memories_and_decisions(client, corpus):
    hits = client.search("zebra")

    assert sorted(h.kind for h in hits) == ["decision", "memory", "message", "message", "session_memory"]
    by_ref = {h.ref_id: h for h in hits}
    assert by_ref[corpus["m1"]].session_id == corpus["s1"].session_id
    assert by_ref[corpus["memory"].memory_id].project_id == corpus["memory"].project_id
    assert by_ref[corpus["memory"].memory_id].session_id is None
    assert by_ref[corpus["smem"].memory_id].kind == "session_memory"
    assert all("[zebra]" in h.snippet.lower() for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    decision = next(h for h in hits if h.kind == "decision")
    assert "fast" in decision.snippet


def test_search_filters_by_project_session_and_kind(client, corpus):
    s1, s2 = corpus["s1"], corpus["s2"]

    def kinds(**filters: Any) -> list[str]:
        return sorted(h.kind for h in client.search("zebra", **filters))

    assert kinds(project_id=s1.project_id) == ["decision", "memory", "message", "session_memory"]
    assert kinds(project_id=s2.project_id) == ["message"]
    assert kinds(session_id=s1.session_id) == ["decision", "message", "session_memory"]
    assert kinds(kinds=["memory"]) == ["memory"]
    assert kinds(kinds=["message", "decision"], project_id=s1.project_id) == ["decision", "message"]
    assert kinds(session_id=s2.session_id, kinds=["decision"]) == []
    assert [h.ref_id for h in client.search("zebra", limit=2)] == [h.ref_id for h in client.search("zebra")][:2]
    with pytest.raises(NotFound):
        client.search("zebra", session_id=UNKNOWN_SESSION)
    with pytest.raises(NotFound):
        client.search("zebra", project_id=UNKNOWN_PROJECT)
    with pytest.raises(Invalid):
        client.search("zebra", kinds=["file"])


def test_search_ranks_more_mentions_higher(client, session):
    sid = session.session_id
    once = client.add_message(sid, "user", "apple pear plum kiwi").message_ids[0]
    thrice = client.add_message(sid, "user", "apple apple apple kiwi").message_ids[0]

    hits = client.search("apple")

    assert [h.ref_id for h in hits] == [str(thrice), str(once)]
    assert hits[0].score > hits[1].score


FTS_SYNTAX = ['"zebra', "zebra)", "(zebra", "zebra*", "-zebra", "^zebra", "zebra:", "{zebra}", "zebra AND",
              "NOT zebra", "zebra OR", "NEAR(zebra)", '"', "()", "*", "-", "AND", "a AND (b OR", "col:zebra", "zebra + -"]


def test_query_syntax_characters_are_plain_text(client, corpus):
    for text in FTS_SYNTAX:
        try:
            hits = client.search(text)
        except Exception as e:  # noqa: BLE001 - reported as the failure
            pytest.fail(f"search({text!r}) raised {type(e).__name__}: {e}")
        if re.fullmatch(r"\W*zebra\W*", text):
            assert len(hits) == 5, f"{text!r} should search for the word zebra"


def test_search_follows_memory_updates_and_deletes(client, ws):
    memory = client.put_memory("color", "crimson", workspace=str(ws))
    client.put_memory("color", "turquoise", workspace=str(ws))

    assert client.search("crimson") == []
    assert [(h.kind, h.ref_id) for h in client.search("turquoise")] == [("memory", memory.memory_id)]

    client.delete_memory("color", workspace=str(ws))
    assert client.search("turquoise") == []


# --- limits ----------------------------------------------------------------------------

METADATA_CALLS: dict[str, Callable[[Client, Session, Any, dict], Any]] = {
    "session.get_or_create": lambda c, s, t, md: c.get_or_create(TOOL, workspace=s.workspace, dedup=False, metadata=md),
    "memory.put": lambda c, s, t, md: c.put_memory("k", "v", project_id=s.project_id, metadata=md),
    "session_memory.add": lambda c, s, t, md: c.add_session_memory(s.session_id, "x", metadata=md),
    "message.add": lambda c, s, t, md: c.add_message(s.session_id, "user", "x", metadata=md),
    "task.create": lambda c, s, t, md: c.create_task(s.session_id, "x", metadata=md),
    "task.update": lambda c, s, t, md: c.update_task(t.task_id, metadata=md),
    "interaction.add": lambda c, s, t, md: c.add_interaction(t.task_id, "x", metadata=md),
}


def test_metadata_is_limited_to_64_kib_in_every_call(client, home, session):
    task = client.create_task(session.session_id, "t", metadata={"kept": True})
    too_large, at_limit = metadata_packing_to(MAX_METADATA_BYTES + 1), metadata_packing_to(MAX_METADATA_BYTES)

    for method, call in METADATA_CALLS.items():
        before = table_counts(home)
        refused(TooLarge, method, call, client, session, task, too_large)
        assert table_counts(home) == before, method
        assert client.get_task(task.task_id).metadata == {"kept": True}, method
    for method, call in METADATA_CALLS.items():
        call(client, session, task, at_limit)


LONG_FIELDS: dict[str, tuple[str, dict[str, Any]]] = {
    "tool_id": ("session.get_or_create", {"tool_id": "t" * 129}),
    "memory key": ("memory.put", {"key": "k" * 257, "value": 1, "workspace": "/tmp"}),
    "task title": ("task.create", {"session_id": SID, "title": "t" * 1025}),
    "external id": ("task.create", {"session_id": SID, "title": "t", "external_id": "e" * 257}),
    "memory type": ("session_memory.add", {"session_id": SID, "content": "x", "memory_type": "m" * 65}),
    "session memory content": ("session_memory.add", {"session_id": SID, "content": "x" * (MAX_CONTENT + 1)}),
    "message type": (
        "message.add", {"session_id": SID, "messages": [{"role": "user", "content": "x", "message_type": "m" * 65}]},
    ),
    "context subject": ("context.append", {"session_id": SID, "events": [{"kind": "search", "subject": "s" * 8193}]}),
    "search query": ("search", {"query": "q" * 1025}),
    "workspace": ("project.get", {"workspace": "/" + "w" * 4096}),
    "cursor": ("task.list", {"cursor": "c" * 257}),
}


def test_over_long_fields_are_too_large(client, home, session):
    task = client.create_task(session.session_id, "t")
    before = table_counts(home)

    for case, (method, params) in LONG_FIELDS.items():
        params = with_session(params, session.session_id)
        err = refused(TooLarge, case, raw_call, client, method, params)
        assert "$." in str(err), f"{case}: the error names the field"
    refused(TooLarge, "interaction content", client.add_interaction, task.task_id, "x" * (MAX_CONTENT + 1))

    assert table_counts(home) == before


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_frame(sock: socket.socket) -> bytes:
    (n,) = HEADER.unpack(recv_exactly(sock, HEADER.size))
    return recv_exactly(sock, n)


def test_an_oversize_frame_gets_too_large_and_the_daemon_keeps_serving(daemon, client, session):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(daemon.socket))
        sock.sendall(hello_frame("raw"))
        check_welcome(read_frame(sock))

        sock.sendall(HEADER.pack(MAX_FRAME + 1) + b"\x00" * 1024)

        reply = parse_response(read_frame(sock))
        assert reply.error is not None and reply.error.code == "too_large"
        assert sock.recv(1) == b"", "the daemon closes a connection after an oversize frame"

    assert client.get(session.session_id).live
    assert client.add_message(session.session_id, "user", "still here").message_count == 1


def test_a_client_refuses_a_request_over_the_frame_limit(daemon, client, home, session):
    huge = [msg("x" * MAX_CONTENT)] * 5  # each message fits, the frame does not
    before = table_counts(home)

    with pytest.raises(TooLarge):
        client.add_messages(session.session_id, huge)

    assert table_counts(home) == before
    assert client.add_message(session.session_id, "user", "still here").message_count == 1


def test_a_request_just_under_the_frame_limit_is_served(client, session):
    batch = [msg("x" * MAX_CONTENT)] * 3
    assert client.add_messages(session.session_id, batch).message_count == 3


LIST_LIMITS = [
    ("message.list", {"session_id": SID, "limit": 1001}),
    ("context.get", {"session_id": SID, "max_files": 1001}),
    ("context.get", {"session_id": SID, "max_searches": 0}),
    ("memory.list", {"limit": 0, "workspace": "/tmp"}),
    ("task.list", {"limit": 1001}),
    ("project.list", {"limit": 1001}),
    ("search", {"query": "q", "limit": 1001}),
]


def test_requested_list_lengths_are_bounded(client, session):
    for method, params in LIST_LIMITS:
        params = with_session(params, session.session_id)
        refused(Invalid, f"{method} {params}", raw_call, client, method, params)
