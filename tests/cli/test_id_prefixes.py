"""Shortened ids on the command line, against a real daemon: a unique prefix of 6+ characters
stands for the id, an ambiguous one lists its candidates, a short one is a usage error."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import msgspec

from omnid_client.protocol import SessionRecord, TaskRecord
from tests.helpers import omnid_json, omnid_ok, run_omnid

TWINS = ["abcdef01-0000-4000-8000-000000000001", "abcdef01-0000-4000-8000-000000000002"]
LONER = "abc99999-0000-4000-8000-000000000003"
TASKS = ["task_0123456789abcdef", "task_0123456700000000"]


def session_record(session_id: str, at: float) -> SessionRecord:
    return SessionRecord(
        session_id=session_id, tool_id="prefix-test", tool_version=None, session_type="default", owner_pid=None,
        owner_start=None, boot_id=None, dedup=False, workspace=None, metadata={}, started_at=at, last_activity=at,
        ended_at=at + 90, end_reason="ended", project_id=None, message_count=0, total_tokens=0, total_cost_nanos=0,
    )


def write_export(path: Path, session_ids: list[str], tasks: dict[str, str] | None = None) -> Path:
    """A JSONL export holding ended sessions with these ids (and tasks: task id -> session id)."""
    at = time.time() - 3600
    records: list[object] = [session_record(sid, at) for sid in session_ids]
    records += [
        TaskRecord(task_id, sid, "a task", "open", None, {}, at, at, None) for task_id, sid in (tasks or {}).items()
    ]
    path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in records))
    return path


def test_a_unique_prefix_stands_for_the_id(daemon, tmp_path):
    omnid_ok("import", str(write_export(tmp_path / "x.jsonl", [*TWINS, LONER], {TASKS[0]: LONER})))
    assert omnid_json("sessions", "show", "abc999")["session_id"] == LONER
    assert omnid_json("sessions", "show", "ABC99999-0")["session_id"] == LONER  # case and dashes are fine
    assert omnid_json("sessions", "summary", "abcdef01-0000-4000-8000-000000000002")["session_id"] == TWINS[1]
    assert omnid_json("session", "update", "abc999", "--title", "loner")["title"] == "loner"
    assert omnid_ok("session", "pin", "abc9999").split() == [LONER, "pinned"]
    assert omnid_json("tasks", "show", "0123456789")["task_id"] == TASKS[0]
    assert omnid_json("tasks", "show", "task_0123456789a")["task_id"] == TASKS[0]
    assert [t["task_id"] for t in omnid_json("tasks", "list", "--session", "abc999")["tasks"]] == [TASKS[0]]
    exported = omnid_ok("export", "--session", "abc999")
    assert [json.loads(line).get("session_id") for line in exported.splitlines()[1:]] == [LONER, LONER]


def test_an_ambiguous_prefix_lists_the_candidates(daemon, tmp_path):
    omnid_ok("import", str(write_export(tmp_path / "x.jsonl", [*TWINS, LONER], dict(zip(TASKS, TWINS, strict=True)))))
    r = run_omnid("sessions", "show", "abcdef")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == (
        f"omnid: ambiguous: abcdef is ambiguous: 2 session ids start with it ({TWINS[0]}, {TWINS[1]}); "
        "give more characters"
    )
    r = run_omnid("tasks", "show", "01234567", "--json")
    assert r.returncode == 1
    error = json.loads(r.stdout)["error"]
    assert (error["code"], error["field"], error["candidates"]) == ("ambiguous", "task_id", sorted(TASKS))
    before = omnid_json("sessions", "list", "--status", "all")
    assert run_omnid("sessions", "end", "abcdef").returncode == 1
    assert run_omnid("session", "delete", "abcdef", "--yes").returncode == 1
    assert omnid_json("sessions", "list", "--status", "all") == before, "an ambiguous id changes nothing"


def test_short_unknown_and_malformed_ids(daemon, tmp_path):
    omnid_ok("import", str(write_export(tmp_path / "x.jsonl", [LONER])))
    r = run_omnid("sessions", "show", "abc99")
    assert r.returncode == 2 and "'abc99' is too short to stand for a session id: give at least 6" in r.stderr
    r = run_omnid("tasks", "show", "task_01234")
    assert r.returncode == 2 and "at least 6 characters of it (after task_)" in r.stderr
    r = run_omnid("sessions", "show", "fedcba98", "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["error"]["message"] == "no session id starts with fedcba98"
    r = run_omnid("sessions", "show", "not-an-id")
    assert r.returncode == 1 and "session_id must be a session id: a lowercase UUID" in r.stderr


def test_a_prefix_without_a_daemon_says_it_is_needed(home):
    r = run_omnid("sessions", "show", "abc999")
    assert r.returncode == 3 and "a shortened id needs the daemon running" in r.stderr


def test_the_prefix_lookup_is_a_range_on_the_index(daemon, home):
    """At a million sessions the lookup must stay a seek, never a scan: SQLite's plan says so."""
    db = sqlite3.connect(home / "omnid.db")
    for table, column in (("sessions", "session_id"), ("tasks", "task_id"), ("projects", "project_id")):
        plan = " ".join(
            row[-1]
            for row in db.execute(
                f"EXPLAIN QUERY PLAN SELECT {column} FROM {table} WHERE {column} >= ? AND {column} < ? "
                f"ORDER BY {column} LIMIT ?", ("abc", "abc\x7f", 11),
            )
        )
        assert f"SEARCH {table} USING COVERING INDEX" in plan and f"({column}>? AND {column}<?)" in plan, plan
    db.close()
