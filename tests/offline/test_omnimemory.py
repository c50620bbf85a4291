"""``omnid import-omnimemory`` against OmniMemory-shaped databases built here.

The fixtures follow OmniMemory's own schema (mrtozner/omnimemory,
omnimemory-metrics-service/src/data_store.py and migrations/002_add_process_id.py; the
context blob of mcp_server/session_manager.py): the current one, an older one without
``process_id`` or the ``sessions`` table, and a minimal one with epoch and zoned times.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil
import pytest

from omnid.offline.omnimemory_values import parse_time
from omnid.projects import project_id_for
from omnid_client import Client
from tests.helpers import SEARCH_ROWS, omnid_error, omnid_json, run_omnid

KOLKATA = timezone(timedelta(hours=5, minutes=30))
"""The tests run the command with TZ=Asia/Kolkata, so local times are not UTC."""

CURRENT_SCHEMA = """
CREATE TABLE tool_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT UNIQUE NOT NULL, tool_id TEXT NOT NULL, tool_version TEXT,
    started_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, ended_at TIMESTAMP,
    last_activity TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    total_compressions INTEGER DEFAULT 0, total_embeddings INTEGER DEFAULT 0, total_workflows INTEGER DEFAULT 0,
    tokens_saved INTEGER DEFAULT 0, tenant_id TEXT, project_id TEXT, workspace_path TEXT, process_id INTEGER
);
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY, tool_id TEXT NOT NULL, user_id TEXT, workspace_path TEXT NOT NULL,
    project_id TEXT NOT NULL, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    last_activity TIMESTAMP DEFAULT CURRENT_TIMESTAMP, ended_at TIMESTAMP, context_json TEXT,
    pinned BOOLEAN DEFAULT FALSE, archived BOOLEAN DEFAULT FALSE, compressed_context TEXT,
    context_size_bytes INTEGER DEFAULT 0, metrics_json TEXT, process_id INTEGER
);
CREATE TABLE projects (
    project_id TEXT PRIMARY KEY, workspace_path TEXT UNIQUE NOT NULL, project_name TEXT, language TEXT,
    framework TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, last_accessed TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    total_sessions INTEGER DEFAULT 0, settings_json TEXT, tenant_id TEXT
);
CREATE TABLE project_memories (
    memory_id TEXT PRIMARY KEY, project_id TEXT NOT NULL, memory_key TEXT NOT NULL, memory_value TEXT,
    compressed_value TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    last_accessed TIMESTAMP DEFAULT CURRENT_TIMESTAMP, accessed_count INTEGER DEFAULT 0, ttl_seconds INTEGER,
    expires_at TIMESTAMP, metadata_json TEXT, tenant_id TEXT
);
CREATE TABLE metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT NOT NULL, service TEXT NOT NULL);
"""

OLD_SCHEMA = """
CREATE TABLE tool_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT UNIQUE NOT NULL, tool_id TEXT NOT NULL, tool_version TEXT,
    started_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, ended_at TIMESTAMP,
    last_activity TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    total_compressions INTEGER DEFAULT 0, total_embeddings INTEGER DEFAULT 0, total_workflows INTEGER DEFAULT 0,
    tokens_saved INTEGER DEFAULT 0
);
CREATE TABLE projects (project_id TEXT PRIMARY KEY, workspace_path TEXT UNIQUE NOT NULL, project_name TEXT);
CREATE TABLE project_memories (
    memory_id TEXT PRIMARY KEY, project_id TEXT NOT NULL, memory_key TEXT NOT NULL, memory_value TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, last_accessed TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    accessed_count INTEGER DEFAULT 0, ttl_seconds INTEGER, metadata_json TEXT
);
"""

LIVE_ID = "0b8f6a3c-1a2b-4c3d-8e9f-001122334455"
BOTH_ID = "sess_0123456789ab"  # OmniMemory's SessionManager ids are not UUIDs


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def local(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=KOLKATA).timestamp()


def make_db(path: Path, schema: str, rows: dict[str, list[dict[str, Any]]]) -> Path:
    db = sqlite3.connect(path)
    db.executescript(schema)
    for table, items in rows.items():
        for item in items:
            db.execute(
                f"INSERT INTO {table} ({', '.join(item)}) VALUES ({', '.join('?' * len(item))})", list(item.values())
            )
    db.commit()
    db.close()
    return path


def current_db(path: Path, workspace: Path) -> Path:
    ws = str(workspace)
    context = {
        "files_accessed": [
            {"path": f"{ws}/src/app.py", "accessed_at": "2024-05-02T15:01:00", "order": 1},
            {"path": f"{ws}/README.md", "accessed_at": "2024-05-02T15:00:00.250000", "order": 2},
            42,  # not an entry
        ],
        "file_importance_scores": {f"{ws}/src/app.py": 0.9, f"{ws}/README.md": 7},
        "recent_searches": [{"query": "auth flow ✓", "timestamp": "2024-05-02T15:02:00"}, "plain search"],
        "decisions": [{"decision": "use JWT", "timestamp": "2024-05-02T15:03:00"}, {"decision": "  "}],
        "saved_memories": [{"id": "mem_0123456789ab", "key": "db", "timestamp": "2024-05-02T15:04:00"}],
        "tool_specific": {"cursor": {"tab": 3}},
    }
    return make_db(path, CURRENT_SCHEMA, {
        "projects": [{"project_id": "p1", "workspace_path": ws, "project_name": "ws"}],
        "tool_sessions": [
            {"session_id": LIVE_ID, "tool_id": "claude-code", "tool_version": "1.0.3",
             "started_at": "2024-05-01 10:00:00", "last_activity": "2024-05-01 11:00:00", "project_id": "p1",
             "workspace_path": ws, "process_id": 4242},
            {"session_id": BOTH_ID, "tool_id": "cursor", "tool_version": "0.42", "started_at": "2024-05-02 09:00:00",
             "last_activity": "2024-05-02 09:30:00", "ended_at": "2024-05-02 10:00:00", "project_id": "p1",
             "workspace_path": ws, "process_id": 777, "tokens_saved": 12},
            {"session_id": "bad-times", "tool_id": "x", "started_at": "yesterday at noon"},
        ],
        "sessions": [
            {"session_id": BOTH_ID, "tool_id": "cursor", "workspace_path": ws, "project_id": "p1",
             "created_at": "2024-05-02 09:00:00", "last_activity": "2024-05-02 09:45:00",
             "ended_at": "2024-05-02 10:00:00", "context_json": json.dumps(context), "pinned": 1,
             "metrics_json": json.dumps({"tokens": 5})},
            {"session_id": "sess_badcontext0", "tool_id": "weird tool!", "workspace_path": ws, "project_id": "p1",
             "created_at": "2024-05-03 08:00:00", "last_activity": "2024-05-03 08:00:00",
             "ended_at": "2024-05-03 09:00:00", "context_json": "{not json"},
        ],
        "project_memories": [
            {"memory_id": "mem_0123456789ab", "project_id": "p1", "memory_key": "db", "memory_value": "postgres",
             "created_at": "2024-05-01 10:00:00", "last_accessed": "2024-05-01 12:00:00", "accessed_count": 2,
             "metadata_json": json.dumps({"source": "chat"})},
            {"memory_id": "mem_0123456789ac", "project_id": "p1", "memory_key": "db", "memory_value": "sqlite ✓",
             "created_at": "2024-05-03 10:00:00", "last_accessed": "2024-05-04 12:00:00", "accessed_count": 1,
             "expires_at": "2099-01-01T00:00:00", "ttl_seconds": 100},
            {"memory_id": "mem_00000000000f", "project_id": "p1", "memory_key": "cache", "memory_value": "gone",
             "created_at": "2024-05-03 10:00:00", "ttl_seconds": 60},
            {"memory_id": "mem_00000000000e", "project_id": "p1", "memory_key": "old", "memory_value": "gone too",
             "created_at": "2024-05-03 10:00:00", "expires_at": "2024-06-01T00:00:00"},
            {"memory_id": "custom-id-1", "project_id": "nowhere", "memory_key": "lost", "memory_value": "v"},
            {"memory_id": "custom-id-2", "project_id": "p1", "memory_key": "style", "memory_value": "black",
             "metadata_json": "not json"},
        ],
    })








def fingerprint(path: Path) -> tuple:
    """The file's bytes, times and the directory around it: equal means untouched."""
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns, sorted(os.listdir(path.parent))


def counts(home: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{home / 'omnid.db'}?mode=ro", uri=True)
    try:
        return {t: db.execute(f"SELECT count(*) FROM {SEARCH_ROWS if t == 'search_index' else t}").fetchone()[0]
                for t in ("sessions", "projects", "context_events", "memories", "memory_versions", "search_index")}
    finally:
        db.close()


@pytest.fixture
def workspace(tmp_path) -> Path:
    root = tmp_path / "proj"
    (root / ".git").mkdir(parents=True)
    return root


@pytest.fixture(autouse=True)
def _local_time_is_not_utc(monkeypatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")


# --- the current schema --------------------------------------------------------------------


def test_sessions_context_and_memories_are_imported(daemon, client: Client, home, tmp_path, workspace):
    (tmp_path / "src").mkdir()
    source = current_db(tmp_path / "src" / "dashboard.db", workspace)
    untouched = fingerprint(source)

    out = omnid_json("import-omnimemory", str(source))
    assert fingerprint(source) == untouched

    report = out["source"]
    assert report["tables"] == {"projects": 1, "tool_sessions": 3, "sessions": 2, "project_memories": 6}
    assert report["sessions"] == {
        "found": 4, "converted": 3, "live": 0, "ended_on_import": 1, "skipped": {"bad_time": 1},
    }
    assert report["context"] == {"items": 8, "converted": 6, "files_from_importance": 0,
                                 "skipped": {"bad_context_json": 1, "bad_item": 1, "empty": 1}}
    assert report["memories"] == {"rows": 6, "memories": 2, "versions": 3,
                                  "skipped": {"expired": 2, "unknown_project": 1}}
    result = out["import"]
    assert {k: (v["imported"], v["existing"]) for k, v in result["records"].items()} == {
        "project": (1, 0), "memory": (2, 0), "memory_version": (3, 0), "session": (3, 0), "context": (6, 0),
    }

    project = project_id_for(str(workspace))
    sessions = {s.session_id: s for s in client.list_sessions().sessions}
    both_id = str(uuid.uuid5(uuid.UUID("6f6d6e69-6d65-4d6f-9279-2d696d706f72"), f"session:{BOTH_ID}"))
    assert set(sessions) == {LIVE_ID, both_id, str(uuid.uuid5(uuid.UUID("6f6d6e69-6d65-4d6f-9279-2d696d706f72"),
                                                               "session:sess_badcontext0"))}

    live = sessions[LIVE_ID]  # never ended in OmniMemory: ended here, as reaped, at its last activity
    assert (live.tool_id, live.tool_version, live.owner_pid, live.owner_start, live.boot_id) == (
        "claude-code", "1.0.3", 4242, None, None)
    assert (live.started_at, live.ended_at, live.end_reason) == (
        utc("2024-05-01 10:00:00"), utc("2024-05-01 11:00:00"), "reaped")
    assert (live.workspace, live.project_id) == (str(workspace), project)
    assert live.metadata == {"imported_from": "omnimemory", "omnimemory": {
        "session_id": LIVE_ID, "tables": ["tool_sessions"], "process_id": 4242, "project_id": "p1"},
        "counters": {"tokens_saved": 0, "total_compressions": 0, "total_embeddings": 0, "total_workflows": 0}}

    both = sessions[both_id]  # in both tables: merged
    assert (both.tool_id, both.tool_version, both.owner_pid, both.end_reason) == ("cursor", "0.42", 777, "ended")
    assert (both.started_at, both.last_activity, both.ended_at) == (
        utc("2024-05-02 09:00:00"), utc("2024-05-02 10:00:00"), utc("2024-05-02 10:00:00"))
    assert both.metadata["omnimemory"] == {"session_id": BOTH_ID, "tables": ["tool_sessions", "sessions"],
                                           "process_id": 777, "project_id": "p1",
                                           "metrics": {"tokens": 5}, "tool_specific": {"cursor": {"tab": 3}}}
    assert (both.pinned, both.archived_at) == (True, None)  # OmniMemory's flags are omnid's own
    assert both.metadata["counters"]["tokens_saved"] == 12

    ctx = client.get_context(both_id)
    assert [(f.path, f.importance, f.first_access) for f in ctx.files] == [
        (f"{workspace}/README.md", 1.0, local("2024-05-02T15:00:00.250000")),  # 7 is clamped to 1
        (f"{workspace}/src/app.py", 0.9, local("2024-05-02T15:01:00")),
    ]
    assert [(s.query, s.at) for s in ctx.searches] == [
        ("auth flow ✓", local("2024-05-02T15:02:00")), ("plain search", both.started_at)]
    assert [(d.text, d.at) for d in ctx.decisions] == [("use JWT", local("2024-05-02T15:03:00"))]
    assert [(m.ref, m.source, m.content) for m in ctx.memories] == [("db", "memory_ref", "mem_0123456789ab")]
    assert client.search("JWT")[0].session_id == both_id
    assert sessions[[s for s in sessions if s not in (LIVE_ID, both_id)][0]].tool_id == "weird-tool-"

    db = client.get_memory("db", workspace=str(workspace))
    assert (db.memory_id, db.value, db.version, db.metadata) == ("mem_0123456789ac", "sqlite ✓", 2, {})
    assert (db.created_at, db.updated_at, db.expires_at) == (
        utc("2024-05-01 10:00:00"), utc("2024-05-03 10:00:00"), local("2099-01-01T00:00:00"))
    assert db.accessed_count == 3 + 1  # OmniMemory's reads, and this one
    history = client.memory_history("db", workspace=str(workspace)).versions
    assert [(v.version, v.value, v.metadata) for v in history] == [
        (1, "postgres", {"source": "chat"}), (2, "sqlite ✓", {})
    ]
    style = client.get_memory("style", workspace=str(workspace))
    assert style.memory_id.startswith("mem_") and style.memory_id != "custom-id-2"
    assert style.metadata == {"omnimemory_metadata": "not json"}
    assert client.get_project(project).created_at == utc("2024-05-01 10:00:00")


def test_importing_again_adds_nothing_and_a_dry_run_writes_nothing(daemon, client, home, tmp_path, workspace):
    source = current_db(tmp_path / "dashboard.db", workspace)
    before = counts(home)

    dry = omnid_json("import-omnimemory", str(source), "--dry-run")
    assert dry["import"]["dry_run"] is True
    assert dry["import"]["records"]["session"]["imported"] == 3 and dry["import"]["records"]["context"]["imported"] == 6
    assert counts(home) == before

    first = omnid_json("import-omnimemory", str(source))
    after = counts(home)
    assert after["sessions"] == before["sessions"] + 3 and after["memory_versions"] == 3
    again = omnid_json("import-omnimemory", str(source))
    assert {k: (v["imported"], v["existing"]) for k, v in again["import"]["records"].items()} == {
        k: (0, v["imported"]) for k, v in first["import"]["records"].items()
    }
    assert counts(home) == after
    text = run_omnid("import-omnimemory", str(source))
    assert text.returncode == 0 and "skipped 2 expired, 1 unknown_project" in text.stdout


# --- other shapes --------------------------------------------------------------------------


def test_an_older_database_without_process_ids_or_a_sessions_table(daemon, client, home, tmp_path, workspace):
    source = make_db(tmp_path / "old.db", OLD_SCHEMA, {
        "projects": [{"project_id": "p1", "workspace_path": str(workspace)}],
        "tool_sessions": [
            {"session_id": "ts-1", "tool_id": "claude-code", "started_at": "2023-01-01 00:00:00",
             "last_activity": "2023-01-01 01:00:00", "ended_at": "2023-01-01 02:00:00"},
            {"session_id": "ts-2", "tool_id": "vscode", "started_at": "2023-01-02 00:00:00", "last_activity": None},
        ],
        "project_memories": [
            {"memory_id": "m-1", "project_id": "p1", "memory_key": "k", "memory_value": "v",
             "created_at": "2023-01-01 00:00:00", "ttl_seconds": None},
        ],
    })
    out = omnid_json("import-omnimemory", str(source))
    assert out["source"]["tables"] == {"projects": 1, "tool_sessions": 2, "project_memories": 1}
    assert out["source"]["sessions"]["ended_on_import"] == 1
    listed = {s.tool_id: s for s in client.list_sessions().sessions}
    claude = listed["claude-code"]
    assert (claude.owner_pid, claude.workspace, claude.project_id) == (None, None, None)
    assert (claude.ended_at, claude.end_reason) == (utc("2023-01-01 02:00:00"), "ended")
    assert (listed["vscode"].ended_at, listed["vscode"].end_reason) == (utc("2023-01-02 00:00:00"), "reaped")
    assert client.get_memory("k", workspace=str(workspace)).value == "v"


def test_unended_sessions_sharing_an_instance_id_come_in_with_one_live(daemon, client, tmp_path, workspace,
                                                                        spawn_owner):
    """OmniMemory's instance id is the resume key, and a key names one live session: of two
    unended sessions of one instance whose processes both run, the most recently active
    stays live, the other ends as reaped."""
    first, second = spawn_owner(), spawn_owner()
    # Both processes had started by each session's last activity (else the pid was reused).
    base = int(max(psutil.Process(p.pid).create_time() for p in (first, second))) + 1
    at = [datetime.fromtimestamp(base + n, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") for n in (-60, 0, 1)]
    ids = [str(uuid.uuid4()) for _ in range(2)]
    schema = CURRENT_SCHEMA + "ALTER TABLE tool_sessions ADD COLUMN instance_id TEXT;"
    source = make_db(tmp_path / "instances.db", schema, {
        "tool_sessions": [
            {"session_id": sid, "tool_id": "claude-code", "started_at": at[0], "last_activity": last,
             "process_id": proc.pid, "instance_id": "inst-1"}
            for sid, proc, last in ((ids[0], first, at[1]), (ids[1], second, at[2]))
        ],
    })
    out = omnid_json("import-omnimemory", str(source))
    assert (out["source"]["sessions"]["live"], out["source"]["sessions"]["ended_on_import"]) == (1, 1)
    older, newer = client.get(ids[0]), client.get(ids[1])
    assert (older.end_reason, older.resume_key, older.metadata["omnimemory"]["instance_id"]) == (
        "reaped", "inst-1", "inst-1")
    assert (newer.ended_at, newer.owner_pid, newer.resume_key) == (None, second.pid, "inst-1")
    assert client.find("claude-code", pid=second.pid, resume_key="inst-1").session_id == ids[1]


def test_epoch_and_zoned_times_and_a_read_only_wal_source(daemon, client, home, tmp_path, workspace):
    source = make_db(tmp_path / "min.db", """
        CREATE TABLE tool_sessions (session_id TEXT, tool_id TEXT, started_at REAL, last_activity INTEGER,
                                    ended_at TEXT, workspace_path TEXT, process_id INTEGER, metadata TEXT);
        CREATE TABLE project_memories (id TEXT, workspace_path TEXT, key TEXT, value TEXT, created_at INTEGER,
                                       expires_at REAL);
    """, {
        "tool_sessions": [{"session_id": "e-1", "tool_id": "agent", "started_at": 1700000000.25,
                           "last_activity": 1700000100500, "ended_at": "2023-11-14T22:20:00+00:00",
                           "workspace_path": str(workspace), "process_id": 31, "metadata": '{"a": [1]}'}],
        "project_memories": [{"id": "x", "workspace_path": str(workspace), "key": "k", "value": "v",
                              "created_at": 1700000000, "expires_at": time.time() + 3600}],
    })
    db = sqlite3.connect(source)
    assert db.execute("PRAGMA journal_mode = WAL").fetchone() == ("wal",)
    db.close()
    source.chmod(0o444)
    untouched = fingerprint(source)

    out = omnid_json("import-omnimemory", str(source))
    assert fingerprint(source) == untouched
    assert out["import"]["records"]["session"]["imported"] == 1
    s = client.list_sessions().sessions[0]
    assert (s.started_at, s.ended_at) == (1700000000.25, utc("2023-11-14 22:20:00"))
    assert s.last_activity == s.ended_at  # the latest of its times (last_activity was in ms: 1700000100.5)
    assert s.metadata["omnimemory"]["metadata"] == {"a": [1]} and s.owner_pid == 31
    assert client.get_memory("k", workspace=str(workspace)).value == "v"

    # OmniMemory still running: its latest writes are only in the WAL, and are read too.
    source.chmod(0o644)
    writer = sqlite3.connect(source)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute(
            "INSERT INTO project_memories VALUES ('y', ?, 'k2', 'in the wal', 1700000001, NULL)", (str(workspace),)
        )
        writer.commit()
        assert Path(f"{source}-wal").stat().st_size > 0
        again = omnid_json("import-omnimemory", str(source))
        assert again["import"]["records"]["memory"] == {"imported": 1, "existing": 1, "skipped": {}}
        assert client.get_memory("k2", workspace=str(workspace)).value == "in the wal"
    finally:
        writer.close()


HOSTILE_SCHEMA = """
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY, tool_id TEXT NOT NULL, workspace_path TEXT NOT NULL, project_id TEXT NOT NULL,
    created_at TIMESTAMP, last_activity TIMESTAMP, ended_at TIMESTAMP, context_json TEXT, metrics_json TEXT
);
CREATE TABLE project_memories (
    memory_id TEXT PRIMARY KEY, project_id TEXT NOT NULL, memory_key TEXT NOT NULL, memory_value TEXT,
    created_at TIMESTAMP, workspace_path TEXT,
    value BLOB GENERATED ALWAYS AS (zeroblob(700000000)) VIRTUAL
);
"""


def peak_rss(argv: list[str], timeout: float = 120) -> tuple[subprocess.CompletedProcess, int]:
    """Run a command, sampling its resident memory until it exits: (its result, the peak)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(proc.pid)
    peak = 0
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, watched.memory_info().rss)
        time.sleep(0.005)
    out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), peak


def test_a_hostile_database_is_streamed_with_every_value_capped(daemon, client, home, tmp_path, workspace):
    """Values far larger than the importer may grow (a 350 MB blob, a 120 MB context text,
    a generated column of 700 MB on every row) are measured, never loaded: each over-cap
    value is left out with a warning naming its row, and the rest comes in."""
    source = tmp_path / "hostile.db"
    ws = str(workspace)
    db = sqlite3.connect(source)
    try:
        db.executescript(HOSTILE_SCHEMA)
        db.execute("INSERT INTO project_memories (memory_id, project_id, memory_key, memory_value, created_at, "
                   "workspace_path) VALUES ('big', 'p', 'big', zeroblob(350000000), 1700000000, ?)", (ws,))
        db.execute("INSERT INTO project_memories (memory_id, project_id, memory_key, memory_value, created_at, "
                   "workspace_path) VALUES ('ok', 'p', 'ok', 'a fine value', 1700000000, ?)", (ws,))
        db.execute("INSERT INTO project_memories (memory_id, project_id, memory_key, created_at, workspace_path) "
                   "VALUES ('gen', 'p', 'gen', 1700000000, ?)", (ws,))  # only the generated column has a value
        db.execute("INSERT INTO sessions VALUES ('s-1', 'cursor', ?, 'p', 1700000000, 1700000100, 1700000200, "
                   "hex(zeroblob(60000000)), zeroblob(100))", (ws,))
        db.commit()
    finally:
        db.close()
    try:
        r, peak = peak_rss([sys.executable, "-m", "omnid", "import-omnimemory", str(source), "--json"])
    finally:
        source.unlink()
    assert r.returncode == 0, r.stderr
    assert peak < 300 * 1024 * 1024, f"peak RSS {peak // (1024 * 1024)} MiB"
    out = json.loads(r.stdout)
    assert out["source"]["memories"]["skipped"] == {"no_value": 1, "too_large": 1}
    assert out["source"]["context"]["skipped"] == {"too_large": 1}
    assert out["import"]["records"]["memory"]["imported"] == 1 and out["import"]["records"]["session"]["imported"] == 1
    assert client.get_memory("ok", workspace=ws).value == "a fine value"
    assert "omnid: warning: project_memories.value is a generated or hidden column; not read" in r.stderr
    assert "project_memories row 1: memory_value is 350000000 bytes, over the 262144-byte cap; left out" in r.stderr
    assert "sessions row 1: context_json is 120000000 bytes, over the 8388608-byte cap; left out" in r.stderr
    assert "sessions row 1: metrics_json is 100 bytes" not in r.stderr


def test_what_is_not_an_omnimemory_database_is_refused_before_anything_happens(home, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("just text, long enough to not be a database header at all " * 20)
    assert omnid_error("import-omnimemory", str(text))["code"] == "invalid"
    other = make_db(tmp_path / "other.db", "CREATE TABLE things (x);", {})
    error = omnid_error("import-omnimemory", str(other))
    assert error["code"] == "invalid" and "tool_sessions" in error["message"]
    assert omnid_error("import-omnimemory", str(tmp_path / "missing.db"))["code"] == "not_found"
    assert not (home / "omnid.db").exists()  # no daemon was started for any of it


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        ("", None),
        ("2024-05-01 10:00:00", utc("2024-05-01 10:00:00")),  # SQLite CURRENT_TIMESTAMP: UTC
        ("2024-05-01", utc("2024-05-01 00:00:00")),
        ("2024-05-01T10:00:00+02:00", utc("2024-05-01 08:00:00")),
        ("2024-05-01T10:00:00Z", utc("2024-05-01 10:00:00")),
        ("2024-05-01 10:00:00.500", utc("2024-05-01 10:00:00") + 0.5),
        (1714557600, 1714557600.0),
        (1714557600123, 1714557600.123),
        ("1714557600.5", 1714557600.5),
    ],
)
def test_times_become_utc_epoch_seconds(value, expected):
    assert parse_time(value) == pytest.approx(expected) if expected is not None else parse_time(value) is None


def test_local_iso_times_are_read_in_the_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        assert parse_time("2024-05-01T10:00:00") == local("2024-05-01T10:00:00")
        assert parse_time("2024-05-01T10:00:00.123456") == pytest.approx(local("2024-05-01T10:00:00") + 0.123456)
    finally:
        monkeypatch.undo()
        time.tzset()
    for bad in ("soon", "2024-13-01", True, -5, 1e300):
        with pytest.raises(ValueError):
            parse_time(bad)
