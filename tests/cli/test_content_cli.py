"""The ``omnid`` commands for session content, run as real processes (``python -m omnid``)
against a real daemon; their ``--json`` output is checked against what the client sees.

Every command inherits this test's environment, whose OMNID_HOME (from the ``home``
fixture) points it at the test's own daemon.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from omnid.cli._style import iso_times
from omnid.projects import project_id_for
from omnid_client import Client, NotFound
from omnid_client.protocol import ContextEvent, NewMessage, Session
from tests.helpers import omnid_error, omnid_json, omnid_ok, run_omnid, wait_for

TOOL = "content-cli-test"
USAGE = 2
MEMORY_ID = re.compile(r"^mem_[0-9a-f]{12}$")










def plain(value: Any) -> Any:
    """A client result as the JSON the command prints (its times in ISO 8601)."""
    return json.loads(msgspec.json.encode(iso_times(value)))


def start(client: Client, workspace: Path) -> Session:
    workspace.mkdir(parents=True, exist_ok=True)
    return client.get_or_create(TOOL, workspace=str(workspace), dedup=False).session


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository with a subdirectory to run commands from."""
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "src").mkdir()
    return root


@pytest.fixture
def session(client, repo) -> Session:
    return start(client, repo / "src")


# --- projects --------------------------------------------------------------------------


def test_projects_list_and_show(client, repo, session, tmp_path):
    other = start(client, tmp_path / "elsewhere")

    listed = omnid_json("projects", "list")
    assert listed == plain(client.list_projects())
    assert [p["project_id"] for p in listed["projects"]] == [other.project_id, session.project_id]

    shown = omnid_json("projects", "show", cwd=repo / "src")
    assert shown == plain(client.get_project(session.project_id))
    assert (shown["project_id"], shown["root"], shown["vcs"]) == (project_id_for(str(repo)), str(repo), "git")
    assert omnid_json("projects", "show", "--project", session.project_id) == shown
    assert omnid_json("projects", "show", "--workspace", str(repo / "src" / "not" / "there")) == shown
    assert f"project:      {session.project_id}" in omnid_ok("projects", "show", cwd=repo)

    first = run_omnid("projects", "list", "--limit", "1")
    assert first.returncode == 0
    cursor = re.search(r"--cursor (\S+)", first.stderr)
    assert cursor, first.stderr
    assert other.project_id in first.stdout and session.project_id not in first.stdout
    rest = omnid_json("projects", "list", "--limit", "1", "--cursor", cursor.group(1))
    assert [p["project_id"] for p in rest["projects"]] == [session.project_id]
    assert rest["next_cursor"] is None

    assert omnid_error("projects", "show", "--project", "prj_000000000000")["code"] == "not_found"
    assert omnid_error("projects", "show", "--workspace", str(tmp_path / "never"))["code"] == "not_found"


# --- memories --------------------------------------------------------------------------


def test_memories_put_get_list_history_delete(client, repo, session):
    cwd = repo / "src"
    put = omnid_json("memories", "put", "style", "black", cwd=cwd)
    assert MEMORY_ID.match(put["memory_id"])
    assert (put["project_id"], put["key"], put["value"], put["version"]) == (session.project_id, "style", "black", 1)
    assert put["expires_at"] is None

    second = omnid_json("memories", "put", "style", '{"line": [88, 100]}', "--json-value", "--meta", "by=cli", cwd=cwd)
    assert (second["memory_id"], second["version"]) == (put["memory_id"], 2)
    assert (second["value"], second["metadata"]) == ({"line": [88, 100]}, {"by": "cli"})
    assert client.get_memory("style", workspace=str(repo)).value == {"line": [88, 100]}

    got = omnid_json("memories", "get", "style", cwd=cwd)
    assert (got["value"], got["accessed_count"]) == ({"line": [88, 100]}, 2)
    assert json.loads(omnid_ok("memories", "get", "style", "--project", session.project_id)) == {"line": [88, 100]}
    assert omnid_ok("memories", "put", "name", "plain text", "--workspace", str(repo)).split()[1:] == ["name", "v1"]
    assert omnid_ok("memories", "get", "name", cwd=cwd) == "plain text\n"

    listed = omnid_json("memories", "list", cwd=cwd)
    assert listed == plain(client.list_memories(project_id=session.project_id))
    assert [m["key"] for m in listed] == ["name", "style"]

    history = omnid_json("memories", "history", "style", cwd=cwd)
    assert history == plain(client.memory_history("style", project_id=session.project_id))
    assert [(v["version"], v["value"]) for v in history["versions"]] == [(1, "black"), (2, {"line": [88, 100]})]

    assert omnid_json("memories", "delete", "style", cwd=cwd) == {"deleted": 1}
    assert omnid_error("memories", "get", "style", cwd=cwd)["code"] == "not_found"
    with pytest.raises(NotFound):
        client.get_memory("style", project_id=session.project_id)


def test_memories_put_with_ttl(client, repo, session):
    before = time.time()
    put = omnid_json("memories", "put", "brief", "soon gone", "--ttl", "0.5", cwd=repo)
    after = time.time()
    expires = datetime.fromisoformat(put["expires_at"]).timestamp()
    assert before + 0.5 <= expires <= after + 0.5
    assert abs(client.get_memory("brief", workspace=str(repo)).expires_at - expires) < 1e-5

    wait_for(
        lambda: run_omnid("memories", "get", "brief", cwd=repo).returncode == 1, timeout=10, what="the memory to expire"
    )
    assert omnid_json("memories", "list", cwd=repo) == []


@pytest.mark.parametrize(
    "args", [("k", "{not json", "--json-value"), ("k", "v", "--ttl", "0"), ("k", "v", "--ttl", "-5")]
)
def test_memories_put_refuses_bad_arguments(client, repo, session, args):
    r = run_omnid("memories", "put", *args, cwd=repo)
    assert r.returncode == USAGE, r.stderr
    assert client.list_memories(project_id=session.project_id) == []


# --- what happened in a session ---------------------------------------------------------


def test_context(client, session):
    sid = session.session_id
    client.append_context(
        sid,
        [
            ContextEvent("file_access", "src/app.py", 0.9),
            ContextEvent("search", "reaper loop"),
            ContextEvent("decision", "keep WAL", detail="readers never block"),
            ContextEvent("file_change", "src/app.py", detail="modified"),
        ],
    )
    client.add_session_memory(sid, "likes short names")

    assert omnid_json("context", sid) == plain(client.get_context(sid))
    text = omnid_ok("context", sid)
    assert text.splitlines()[0].startswith("4 event(s)")
    for shown in ("src/app.py", "reaper loop", "keep WAL", "modified", "session_memory"):
        assert shown in text
    assert omnid_error("context", "00000000-0000-4000-8000-000000000000")["code"] == "not_found"


def test_messages_list(client, session):
    sid = session.session_id
    client.add_messages(
        sid, [NewMessage("user" if n % 2 else "assistant", f"message {n}", tokens_used=n) for n in range(1, 6)]
    )

    assert omnid_json("messages", "list", sid) == plain(client.list_messages(sid))
    page = omnid_json("messages", "list", sid, "--limit", "2", "--after", "2")
    assert [m["seq"] for m in page["messages"]] == [3, 4]
    assert page["next_after_seq"] == 4

    r = run_omnid("messages", "list", sid, "--limit", "2")
    assert r.returncode == 0
    assert [line.split()[0] for line in r.stdout.splitlines()] == ["#1", "#2"]
    assert "--after 2" in r.stderr


def test_sessions_summary(client, session):
    sid = session.session_id
    client.add_messages(
        sid, [NewMessage("user", "q", tokens_used=3, cost_usd=0.5), NewMessage("assistant", "a", tokens_used=4)]
    )
    client.add_session_memory(sid, "remember this")
    client.end(sid)

    summary = omnid_json("sessions", "summary", sid)
    assert summary == plain(client.session_summary(sid))
    assert (summary["message_count"], summary["total_tokens"], summary["total_cost"]) == (2, 7, 0.5)
    assert (summary["has_memory"], summary["live"]) == (True, False)
    assert "memory:       yes" in omnid_ok("sessions", "summary", sid)


# --- tasks -----------------------------------------------------------------------------


def test_tasks_list_and_show(client, session):
    sid = session.session_id
    first = client.create_task(sid, "first", external_id="conv-1")
    second = client.create_task(sid, "second")
    client.add_interaction(first.task_id, "asked something", kind="prompt")
    client.add_interaction(first.task_id, "answered")
    client.update_task(second.task_id, status="done")

    listed = omnid_json("tasks", "list")
    assert listed == plain(client.list_tasks())
    assert [t["task_id"] for t in listed["tasks"]] == [second.task_id, first.task_id]
    done = omnid_json("tasks", "list", "--session", sid, "--status", "done")["tasks"]
    assert [t["task_id"] for t in done] == [second.task_id]
    assert [t["task_id"] for t in omnid_json("tasks", "list", "--external-id", "conv-1")["tasks"]] == [first.task_id]

    shown = omnid_json("tasks", "show", first.task_id)
    assert shown == plain(client.get_task(first.task_id))
    assert [(i["kind"], i["content"]) for i in shown["interactions"]] == [
        ("prompt", "asked something"), ("note", "answered")
    ]
    assert "asked something" in omnid_ok("tasks", "show", first.task_id)
    assert omnid_error("tasks", "show", "task_0000000000000000")["code"] == "not_found"


# --- search and stats ------------------------------------------------------------------


def test_search(client, repo, session, tmp_path):
    client.add_message(session.session_id, "user", "the zebra crossing")
    client.put_memory("animal", "zebra stripes", workspace=str(repo))
    other = start(client, tmp_path / "other")
    client.add_message(other.session_id, "user", "zebra elsewhere")

    hits = omnid_json("search", "zebra")
    assert hits == plain(client.search("zebra"))
    assert len(hits) == 3
    only = omnid_json("search", "zebra", "--project", session.project_id, "--kind", "memory")
    assert [(h["kind"], h["project_id"]) for h in only] == [("memory", session.project_id)]
    assert {h["kind"] for h in omnid_json("search", "zebra", "--session", session.session_id)} == {"message"}
    assert omnid_json("search", '"(zebra)*') == hits, "query syntax is plain text"
    assert omnid_ok("search", "okapi") == "no matches\n"


def test_stats(client, session, repo):
    client.add_message(session.session_id, "user", "x", tokens_used=11, cost_usd=0.25)
    client.put_memory("k", "v", workspace=str(repo))
    client.create_task(session.session_id, "t")

    stats = omnid_json("stats")
    metrics = stats.pop("metrics")  # the daemon's own counters, beside the totals of what it holds
    assert stats == plain(client.stats())
    assert metrics["reuse_rate"] == 0.0
    assert metrics["get_or_create"] == {TOOL: {"created": 1, "existing": 0, "resumed": 0}}
    assert (stats["sessions"], stats["messages"], stats["total_tokens"], stats["total_cost"]) == (1, 1, 11, 0.25)
    assert (stats["project_memories"], stats["tasks"], stats["sessions_by_tool"]) == (1, 1, {TOOL: 1})
    assert "tasks:        1 (1 open)" in omnid_ok("stats")


# --- orphan cleanup --------------------------------------------------------------------


def test_cleanup_orphans(client, tmp_path):
    orphan = client.end(start(client, tmp_path / "empty").session_id)
    kept = start(client, tmp_path / "busy")
    client.add_message(kept.session_id, "user", "keeps it")
    client.end(kept.session_id)

    assert omnid_json("cleanup", "orphans", "--dry-run") == {"dry_run": True, "session_ids": []}, "default is 7 days"
    dry = omnid_json("cleanup", "orphans", "--older-than", "0s", "--dry-run")
    assert dry == {"dry_run": True, "session_ids": [orphan.session_id]}
    assert client.get(orphan.session_id).session_id == orphan.session_id

    assert omnid_ok("cleanup", "orphans", "--older-than", "0", "--dry-run").splitlines() == [
        "would delete 1 orphan session(s)",
        orphan.session_id,
    ]
    assert omnid_json("cleanup", "orphans", "--older-than", "0s") == {
        "dry_run": False, "session_ids": [orphan.session_id]
    }
    with pytest.raises(NotFound):
        client.get(orphan.session_id)
    assert client.get(kept.session_id).message_count == 1


@pytest.mark.parametrize("ages", [("abc", "7x", "", "d", "1.5.2h"), ("-1d", "-0.5s")], ids=["malformed", "negative"])
def test_cleanup_orphans_refuses_a_bad_age_as_a_usage_error(client, tmp_path, ages):
    orphan = client.end(start(client, tmp_path / "empty").session_id)

    for age in ages:
        r = run_omnid("cleanup", "orphans", f"--older-than={age}")
        assert r.returncode == USAGE, f"--older-than {age!r} exited {r.returncode}: {r.stdout} {r.stderr}"
        assert "age" in r.stderr.lower(), r.stderr

    assert client.get(orphan.session_id).session_id == orphan.session_id
