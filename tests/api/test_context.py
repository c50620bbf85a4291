"""Session context: appending events of every kind and the materialized view. End to end against a real daemon."""
from __future__ import annotations

import math

import pytest

from omnid_client import Conflict, Invalid, NotFound, TooLarge
from omnid_client.protocol import (
    MAX_BATCH,
    ContextRecord,
    ExportHeader,
    SessionRecord,
)
from tests.helpers import (
    TOOL,
    UNKNOWN_SESSION,
    count,
    db_rows,
    ev,
    miscounted_context,
    raw_call,
    refused,
    start,
    table_counts,
    wait_for,
)

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
        rows = db_rows(home / "omnid.db", "SELECT last_activity FROM projects WHERE project_id = ?", session.project_id)
        return rows[0][0]

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
            {"session_id": a.session_id,
             "events": [{"kind": "search", "subject": "ok"}, {"kind": "nope", "subject": "x"}]})
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
