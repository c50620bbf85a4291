"""``omnid import-omnimemory`` on the three dashboard.db shapes OmniMemory itself produces,
under local zones east and west of UTC, compared with what must come out field by field.

Three components of mrtozner/omnimemory create and write ``~/.omnimemory/dashboard.db``;
whichever runs first creates a table in its shape, the others' ``CREATE TABLE IF NOT
EXISTS`` then do nothing. The statements below are copied from them (test data, not their
code): the metrics service (omnimemory-metrics-service/src/data_store.py, with its
``_migrate_schema`` ALTERs), the MCP server's session manager (mcp_server/session_manager.py)
and project manager (mcp_server/project_manager.py). Rows are written with the INSERTs and
UPDATEs those components run, with the time each writes: the metrics service SQLite's
CURRENT_TIMESTAMP (UTC), the project manager ``datetime.utcnow().isoformat()`` (UTC, no
zone), the session manager and every context item ``datetime.now().isoformat()`` (local).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from omnid import identity
from omnid.projects import project_id_for
from omnid_client import Client
from omnid_client.protocol import MemoryRecord, MemoryVersionRecord, ProjectRecord, Record, SessionRecord
from tests.helpers import omnid_json, omnid_ok, wait_for

# --- OmniMemory's schema statements ----------------------------------------------------------

METRICS_SERVICE = {  # data_store.py: _create_base_tables, _create_agent_memory_tables
    "tool_sessions": """
            CREATE TABLE IF NOT EXISTS tool_sessions (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                session_id TEXT UNIQUE NOT NULL,
                tool_id TEXT NOT NULL,
                tool_version TEXT,
                started_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
                ended_at TIMESTAMP,
                last_activity TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
                total_compressions INTEGER DEFAULT 0,
                total_embeddings INTEGER DEFAULT 0,
                total_workflows INTEGER DEFAULT 0,
                tokens_saved INTEGER DEFAULT 0
            )""",
    "metrics": """
            CREATE TABLE IF NOT EXISTS metrics (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                timestamp TEXT NOT NULL,
                service TEXT NOT NULL,
                total_embeddings INTEGER,
                cache_hits INTEGER,
                cache_hit_rate REAL,
                tokens_processed INTEGER,
                avg_latency_ms REAL,
                total_compressions INTEGER,
                tokens_saved INTEGER,
                compression_ratio REAL,
                quality_score REAL,
                pattern_count INTEGER,
                graph_nodes INTEGER,
                graph_edges INTEGER,
                prediction_accuracy REAL
            )""",
    "projects": """
            CREATE TABLE IF NOT EXISTS projects (
                project_id TEXT PRIMARY KEY,
                workspace_path TEXT UNIQUE NOT NULL,
                project_name TEXT,
                language TEXT,
                framework TEXT,
                created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
                last_accessed TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
                total_sessions INTEGER DEFAULT 0,
                settings_json TEXT,
                tenant_id TEXT
            )""",
    "project_memories": """
            CREATE TABLE IF NOT EXISTS project_memories (
                memory_id TEXT PRIMARY KEY,
                project_id TEXT NOT NULL,
                memory_key TEXT NOT NULL,
                memory_value TEXT,
                compressed_value TEXT,
                created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
                last_accessed TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
                accessed_count INTEGER DEFAULT 0,
                ttl_seconds INTEGER,
                expires_at TIMESTAMP,
                metadata_json TEXT,
                tenant_id TEXT,
                FOREIGN KEY (project_id) REFERENCES projects(project_id)
            )""",
    "sessions": """
            CREATE TABLE IF NOT EXISTS sessions (
                session_id TEXT PRIMARY KEY,
                tool_id TEXT NOT NULL,
                user_id TEXT,
                workspace_path TEXT NOT NULL,
                project_id TEXT NOT NULL,
                created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
                last_activity TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
                ended_at TIMESTAMP,
                context_json TEXT,
                pinned BOOLEAN DEFAULT FALSE,
                archived BOOLEAN DEFAULT FALSE,
                compressed_context TEXT,
                context_size_bytes INTEGER DEFAULT 0,
                metrics_json TEXT,
                process_id INTEGER,
                FOREIGN KEY (project_id) REFERENCES projects(project_id)
            )""",
}
METRICS_SERVICE_MIGRATIONS = [  # _migrate_schema and _migrate_bitemporal_columns, column by column if missing
    ("metrics", "tool_id", "TEXT DEFAULT 'unknown'"),
    ("metrics", "tool_version", "TEXT"),
    ("metrics", "session_id", "TEXT"),
    ("metrics", "metadata", "TEXT"),
    ("metrics", "tenant_id", "TEXT"),
    ("tool_sessions", "tenant_id", "TEXT"),
    ("tool_sessions", "project_id", "TEXT"),
    ("tool_sessions", "workspace_path", "TEXT"),
    ("metrics", "tokens_saved_delta", "INTEGER DEFAULT 0"),
    ("metrics", "total_compressions_delta", "INTEGER DEFAULT 0"),
    ("metrics", "total_embeddings_delta", "INTEGER DEFAULT 0"),
    ("tool_sessions", "previous_session_id", "TEXT"),
    ("tool_sessions", "evolution_metadata", "TEXT"),
    ("tool_sessions", "process_id", "INTEGER"),
    # No statement of OmniMemory's adds this column, but start_session's INSERT names it, so
    # every dashboard.db holding tool_sessions rows it wrote has it.
    ("tool_sessions", "instance_id", "TEXT"),
]
SESSION_MANAGER = {  # session_manager.py: _ensure_database
    "sessions": """
                CREATE TABLE IF NOT EXISTS sessions (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    session_id TEXT UNIQUE NOT NULL,
                    tool_id TEXT NOT NULL,
                    user_id TEXT,
                    workspace_path TEXT NOT NULL,
                    project_id TEXT NOT NULL,
                    created_at TEXT NOT NULL,
                    last_activity TEXT NOT NULL,
                    ended_at TEXT,
                    context_json TEXT,
                    compressed_context TEXT,
                    context_size_bytes INTEGER DEFAULT 0,
                    pinned INTEGER DEFAULT 0,
                    archived INTEGER DEFAULT 0,
                    metrics_json TEXT DEFAULT '{}'
                )""",
}
PROJECT_MANAGER = {  # project_manager.py: _ensure_database
    "projects": """
                CREATE TABLE IF NOT EXISTS projects (
                    project_id TEXT PRIMARY KEY,
                    workspace_path TEXT UNIQUE NOT NULL,
                    project_name TEXT,
                    language TEXT,
                    framework TEXT,
                    created_at TEXT NOT NULL,
                    last_accessed TEXT,
                    total_sessions INTEGER DEFAULT 0,
                    settings_json TEXT
                )""",
    "project_memories": """
                CREATE TABLE IF NOT EXISTS project_memories (
                    memory_id TEXT PRIMARY KEY,
                    project_id TEXT NOT NULL,
                    memory_key TEXT NOT NULL,
                    memory_value TEXT,
                    compressed_value TEXT,
                    created_at TEXT NOT NULL,
                    accessed_count INTEGER DEFAULT 0,
                    last_accessed TEXT,
                    ttl_seconds INTEGER,
                    metadata_json TEXT,
                    FOREIGN KEY (project_id) REFERENCES projects(project_id)
                )""",
}
COMPONENTS = {
    "metrics_service": METRICS_SERVICE, "session_manager": SESSION_MANAGER, "project_manager": PROJECT_MANAGER,
}


def create(db: sqlite3.Connection, first: str) -> None:
    """The tables as they are when ``first`` created the file and the others started after."""
    for name in [first, *(c for c in COMPONENTS if c != first)]:
        for statement in COMPONENTS[name].values():
            db.execute(statement)
        if name == "metrics_service":
            for table, column, kind in METRICS_SERVICE_MIGRATIONS:
                if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


# --- the times each component writes ---------------------------------------------------------


def current_timestamp(t: float) -> str:
    """SQLite's CURRENT_TIMESTAMP at ``t`` (UTC, whole seconds)."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def utcnow_iso(t: float) -> str:
    """``datetime.utcnow().isoformat()`` at ``t``: UTC without a zone."""
    return datetime.fromtimestamp(t, timezone.utc).replace(tzinfo=None).isoformat()


def now_iso(t: float, tz: str) -> str:
    """``datetime.now().isoformat()`` at ``t`` under TZ=``tz``: local time without a zone."""
    return datetime.fromtimestamp(t, ZoneInfo(tz)).replace(tzinfo=None).isoformat()


def hash_workspace(path: str) -> str:  # _hash_workspace_path, the same in all three components
    return hashlib.sha256(path.encode()).hexdigest()[:16]


NAMESPACE = uuid.UUID("6f6d6e69-6d65-4d6f-9279-2d696d706f72")
DEAD_PID = 2_000_000_000  # above any pid_max: no process has it
ENDED, ONLY_TOOL, LIVE, ABANDONED = (str(uuid.UUID(int=n, version=4)) for n in (1, 2, 3, 4))
LOCAL_ONLY = "sess_0123456789ab"  # the session manager's own id, never synced with the metrics service


def build(path: Path, first: str, tz: str, workspace: str, t0: float, live_pid: int) -> dict[str, Any]:
    """dashboard.db as OmniMemory leaves it, and what omnid must make of it."""
    db = sqlite3.connect(path)
    create(db, first)
    project = hash_workspace(workspace)
    x: dict[str, Any] = {"sessions": {}, "memories": {}}

    # The project manager's get_or_create_project (its INSERT OR REPLACE wins over the
    # metrics service's INSERT OR IGNORE).
    db.execute(
        "INSERT OR REPLACE INTO projects (project_id, workspace_path, project_name, language, framework, "
        "created_at, last_accessed, total_sessions, settings_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (project, workspace, Path(workspace).name, "python", None, utcnow_iso(t0 - 7 * 3600 + 0.25),
         utcnow_iso(t0 - 600.5), 0, json.dumps({"auto_save_enabled": True})),
    )

    def start_session(sid: str, tool: str, at: float, pid: int, instance: str | None) -> None:
        # data_store.start_session, from POST /sessions/get_or_create with a workspace_path
        db.execute(
            "INSERT INTO tool_sessions (session_id, tool_id, tool_version, process_id, instance_id, tenant_id, "
            "project_id, started_at, last_activity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sid, tool, "1.0.4", pid, instance, None, project, current_timestamp(at), current_timestamp(at)),
        )

    def heartbeat(sid: str, at: float) -> None:  # update_session_activity
        db.execute("UPDATE tool_sessions SET last_activity = ? WHERE session_id = ?", (current_timestamp(at), sid))

    def end_session(sid: str, at: float, embeddings: int, compressions: int, saved: int) -> None:
        db.execute(
            "UPDATE tool_sessions SET ended_at = ?, total_embeddings = ?, total_compressions = ?, tokens_saved = ? "
            "WHERE session_id = ?",
            (current_timestamp(at), embeddings, compressions, saved, sid),
        )

    def save_session(sid: str, created: float, last: float, ended: float | None, context: dict, **extra: Any) -> None:
        # SessionManager._save_to_db
        db.execute(
            "INSERT OR REPLACE INTO sessions (session_id, tool_id, user_id, workspace_path, project_id, created_at, "
            "last_activity, ended_at, context_json, compressed_context, context_size_bytes, pinned, archived, "
            "metrics_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sid, "claude-code", None, workspace, project, now_iso(created, tz), now_iso(last, tz),
             now_iso(ended, tz) if ended else None, json.dumps(context), json.dumps(context), 0,
             extra.get("pinned", 0), extra.get("archived", 0), json.dumps(extra.get("metrics", {}))),
        )

    def expect_session(sid: str, started: float, last: float, ended: float | None, reason: str | None,
                       pid: int | None, provenance: dict, counters: dict | None, context: list, *,
                       pinned: bool = False, archived_at: float | None = None) -> None:
        metadata: dict[str, Any] = {"imported_from": "omnimemory", "omnimemory": provenance}
        if counters is not None:
            metadata["counters"] = counters
        version = "1.0.4" if "tool_sessions" in provenance["tables"] else None
        x["sessions"][sid] = {
            "session_id": sid, "tool_id": "claude-code", "tool_version": version, "session_type": "default",
            "owner_pid": pid, "dedup": True, "workspace": workspace,
            "metadata": metadata, "started_at": started, "last_activity": last, "ended_at": ended,
            "end_reason": reason, "project_id": project_id_for(workspace), "message_count": 0, "total_tokens": 0,
            "total_cost_nanos": 0, "context": context,
            # OmniMemory's instance id is the resume key (`omnid compat omnimemory` uses it as one),
            # its pinned/archived are omnid's own.
            "resume_key": provenance.get("instance_id"), "title": None, "tags": [], "pinned": pinned,
            "archived_at": archived_at, "owner_since": None, "past_owners": [],
        }

    # 1. A session the MCP server ran and closed: in both tables, with a full context blob.
    #    150 files: the list keeps the last 100 accesses, the scores keep every file.
    start = t0 - 5 * 3600
    start_session(ENDED, "claude-code", start, DEAD_PID, "instance-a")
    files = [f"{workspace}/src/m{i:03}.py" for i in range(150)]
    file_times = [start + 60 + i * 10.5 for i in range(150)]
    context = {
        "files_accessed": [{"path": p, "accessed_at": now_iso(t, tz), "order": i + 1}
                           for i, (p, t) in enumerate(zip(files, file_times, strict=True)) if i >= 50],
        "file_importance_scores": {p: round((i % 10) / 10 + 0.05, 2) for i, p in enumerate(files)},
        "recent_searches": [{"query": "auth flow", "timestamp": now_iso(start + 2000.25, tz)}],
        "saved_memories": [{"id": "mem_aaaaaaaaaaaa", "key": "arch", "timestamp": now_iso(start + 2100.5, tz)}],
        "decisions": [{"decision": "use JWT ✓", "timestamp": now_iso(start + 2200.75, tz)}],
        "tool_specific": {"claude-code": {"model": "opus", "tabs": [1, 2]}},
    }
    save_session(ENDED, start + 0.5, start + 3000.5, start + 3600.5, context, pinned=1, metrics={"quality_score": 0.9})
    end_session(ENDED, start + 3601, 9, 17, 4321)
    events = [("file_access", p, context["file_importance_scores"][p], None, start) for p in files[:50]]
    events += [("file_access", p, context["file_importance_scores"][p], None, t)
               for p, t in zip(files[50:], file_times[50:], strict=True)]
    events += [("search", "auth flow", None, None, start + 2000.25), ("memory_ref", "arch", None, "mem_aaaaaaaaaaaa",
               start + 2100.5), ("decision", "use JWT ✓", None, None, start + 2200.75)]
    ended_provenance: dict[str, Any] = {"session_id": ENDED, "tables": ["tool_sessions", "sessions"],
                                        "process_id": DEAD_PID, "instance_id": "instance-a", "project_id": project,
                                        "metrics": {"quality_score": 0.9},
                                        "tool_specific": context["tool_specific"]}
    expect_session(ENDED, start, start + 3601, start + 3601, "ended", DEAD_PID, ended_provenance,
                   {"tokens_saved": 4321, "total_compressions": 17, "total_embeddings": 9, "total_workflows": 0},
                   events, pinned=True)

    # 2. A session only the metrics service knew (its create_session_record never stores a
    #    sessions row: that INSERT OR IGNORE leaves out the NOT NULL workspace_path).
    start = t0 - 4 * 3600
    start_session(ONLY_TOOL, "claude-code", start, DEAD_PID - 1, None)
    heartbeat(ONLY_TOOL, start + 120)
    end_session(ONLY_TOOL, start + 180, 0, 2, 50)
    expect_session(ONLY_TOOL, start, start + 180, start + 180, "ended", DEAD_PID - 1,
                   {"session_id": ONLY_TOOL, "tables": ["tool_sessions"], "process_id": DEAD_PID - 1,
                    "project_id": project},
                   {"tokens_saved": 50, "total_compressions": 2, "total_embeddings": 0, "total_workflows": 0}, [])

    # 3. A session whose MCP server still runs (this test's process), reconnected under a
    #    new pid by its instance id; its running counters are in the metrics table.
    start = t0 - 3 * 3600
    start_session(LIVE, "claude-code", start, DEAD_PID - 2, "instance-c")
    db.execute("UPDATE tool_sessions SET process_id = ? WHERE session_id = ?", (live_pid, LIVE))
    heartbeat(LIVE, t0)
    for saved, compressions in ((7, 1), (8, 2)):  # store_metrics
        db.execute(
            "INSERT INTO metrics (timestamp, service, session_id, tool_id, tokens_saved_delta, "
            "total_compressions_delta, total_embeddings_delta) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (now_iso(t0 - 60, tz), "compression", LIVE, "claude-code", saved, compressions, 0),
        )
    expect_session(LIVE, start, t0, None, None, live_pid,
                   {"session_id": LIVE, "tables": ["tool_sessions"], "process_id": live_pid,
                    "instance_id": "instance-c", "project_id": project},
                   {"tokens_saved": 15, "total_compressions": 3, "total_embeddings": 0, "total_workflows": 0}, [])

    # 4. Never ended, its process gone: ended on import, as reaped at its last activity.
    start = t0 - 2 * 3600
    start_session(ABANDONED, "claude-code", start, DEAD_PID - 3, None)
    heartbeat(ABANDONED, start + 900)
    expect_session(ABANDONED, start, start + 900, start + 900, "reaped", DEAD_PID - 3,
                   {"session_id": ABANDONED, "tables": ["tool_sessions"], "process_id": DEAD_PID - 3,
                    "project_id": project},
                   {"tokens_saved": 0, "total_compressions": 0, "total_embeddings": 0, "total_workflows": 0}, [])

    # 5. A session only the session manager wrote (its sync with the metrics service failed).
    start = t0 - 6 * 3600 + 0.5
    save_session(LOCAL_ONLY, start, start + 60.25, start + 120.75,
                 {"recent_searches": [{"query": "local times", "timestamp": now_iso(start + 30.5, tz)}]}, archived=1)
    local_id = str(uuid.uuid5(NAMESPACE, f"session:{LOCAL_ONLY}"))
    expect_session(local_id, start, start + 120.75, start + 120.75, "ended", None,
                   {"session_id": LOCAL_ONLY, "tables": ["sessions"], "project_id": project}, None,
                   [("search", "local times", None, None, start + 30.5)], archived_at=start + 120.75)

    # Project memories. The project manager's save_project_memory: utcnow(), and a TTL that
    # counts from created_at (its delete_expired_memories: datetime(created_at, '+ttl')).
    def save_memory(mid: str, key: str, value: str, created: float, ttl: int | None, meta: dict) -> None:
        db.execute(
            "INSERT OR REPLACE INTO project_memories (memory_id, project_id, memory_key, memory_value, "
            "compressed_value, created_at, last_accessed, accessed_count, ttl_seconds, metadata_json) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (mid, project, key, value, None, utcnow_iso(created), utcnow_iso(created), 0, ttl, json.dumps(meta)),
        )

    save_memory("mem_aaaaaaaaaaa0", "arch", "monolith", t0 - 3 * 3600 + 0.125, None, {"v": 1})
    save_memory("mem_aaaaaaaaaaaa", "arch", "services ✓", t0 - 3600 + 0.5, None, {"v": 2})
    save_memory("mem_bbbbbbbbbbbb", "todo", "ship it", t0 - 3600 + 0.75, 7200, {})  # expires in an hour
    save_memory("mem_cccccccccccc", "stale", "gone", t0 - 3 * 3600, 3600, {})  # expired two hours ago
    arch = [(t0 - 3 * 3600 + 0.125, "monolith", {"v": 1}), (t0 - 3600 + 0.5, "services ✓", {"v": 2})]
    x["memories"]["arch"] = (
        {"memory_id": "mem_aaaaaaaaaaaa", "key": "arch", "value": "services ✓", "metadata": {"v": 2}, "version": 2,
         "created_at": arch[0][0], "updated_at": arch[1][0], "expires_at": None, "accessed_count": 0,
         "last_accessed": arch[1][0]},
        [(n, value, meta, created, None) for n, (created, value, meta) in enumerate(arch, 1)],
    )
    created = t0 - 3600 + 0.75
    x["memories"]["todo"] = (
        {"memory_id": "mem_bbbbbbbbbbbb", "key": "todo", "value": "ship it", "metadata": {}, "version": 1,
         "created_at": created, "updated_at": created, "expires_at": created + 7200, "accessed_count": 0,
         "last_accessed": created},
        [(1, "ship it", {}, created, created + 7200)],
    )
    if "expires_at" in columns(db, "project_memories"):
        # The metrics service's create_project_memory: CURRENT_TIMESTAMP, and expires_at
        # from a local datetime.now(); its reads count accesses with CURRENT_TIMESTAMP.
        created, ttl = t0 - 1800, 86400
        db.execute(
            "INSERT INTO project_memories (memory_id, project_id, memory_key, memory_value, metadata_json, "
            "ttl_seconds, expires_at, created_at, last_accessed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("mem_dddddddddddd", project, "api", "REST", json.dumps({}), ttl, now_iso(created + ttl + 0.5, tz),
             current_timestamp(created), current_timestamp(created)),
        )
        db.execute("UPDATE project_memories SET accessed_count = accessed_count + 1, last_accessed = ? "
                   "WHERE memory_id = ?", (current_timestamp(t0 - 900), "mem_dddddddddddd"))
        x["memories"]["api"] = (
            {"memory_id": "mem_dddddddddddd", "key": "api", "value": "REST", "metadata": {}, "version": 1,
             "created_at": created, "updated_at": created, "expires_at": created + ttl + 0.5, "accessed_count": 1,
             "last_accessed": t0 - 900},
            [(1, "REST", {}, created, created + ttl + 0.5)],
        )
    db.commit()
    db.close()
    return x


# --- the tests -------------------------------------------------------------------------------


def export_records(tmp_path: Path) -> list[Record]:
    out = tmp_path / "export.jsonl"
    omnid_ok("export", "-o", str(out), "--force")
    decoder = msgspec.json.Decoder(Record)
    return [decoder.decode(line) for line in out.read_bytes().splitlines()]


@pytest.fixture
def live_owner(spawn_owner) -> subprocess.Popen:
    return spawn_owner()


@pytest.mark.parametrize("tz", ["Asia/Tokyo", "America/Los_Angeles"])
@pytest.mark.parametrize("first", ["metrics_service", "session_manager", "project_manager"])
def test_every_schema_variant_imports_field_by_field(daemon, client: Client, tmp_path, monkeypatch, live_owner,
                                                     spawn_owner, first, tz):
    workspace = tmp_path / "proj"
    (workspace / ".git").mkdir(parents=True)
    t0 = float(int(time.time()))
    source = tmp_path / "dashboard.db"
    want = build(source, first, tz, str(workspace), t0, live_owner.pid)
    monkeypatch.setenv("TZ", tz)  # the importer runs in that zone, as OmniMemory's writers did

    out = omnid_json("import-omnimemory", str(source))
    assert out["source"]["sessions"] == {"found": 5, "converted": 5, "live": 1, "ended_on_import": 1, "skipped": {}}
    assert out["source"]["memories"]["skipped"] == {"expired": 1}
    assert out["source"]["context"]["files_from_importance"] == 50
    assert out["import"]["reaped"] == []

    records = export_records(tmp_path)
    project = project_id_for(str(workspace))
    sessions = {r.session_id: r for r in records if isinstance(r, SessionRecord)}
    assert set(sessions) == set(want["sessions"])
    owner = identity.inspect(live_owner.pid)
    assert owner is not None
    for sid, expected in want["sessions"].items():
        got = msgspec.structs.asdict(sessions[sid])
        expected = dict(expected)
        context = expected.pop("context")
        if sid == LIVE:
            expected |= {"owner_start": owner.identity.start, "boot_id": owner.identity.boot_id}
        else:
            expected |= {"owner_start": None, "boot_id": None}
        for field, value in expected.items():
            assert got[field] == value, (sid, field, got[field], value)
        assert set(got) == set(expected), sid
        events = [(r.kind, r.subject, r.importance, r.detail, r.created_at)
                  for r in records if getattr(r, "session_id", None) == sid and r.__struct_config__.tag == "context"]
        assert events == context, sid

    memories = {r.key: r for r in records if isinstance(r, MemoryRecord)}
    assert set(memories) == set(want["memories"])
    for key, (expected, versions) in want["memories"].items():
        got = msgspec.structs.asdict(memories[key])
        assert got == {"project_id": project, "embedding": None, **expected}, key  # OmniMemory stores no vectors
        assert [(v.version, v.value, v.metadata, v.created_at, v.expires_at) for v in records
                if isinstance(v, MemoryVersionRecord) and v.memory_id == expected["memory_id"]] == versions, key
    [prj] = [r for r in records if isinstance(r, ProjectRecord)]
    assert (prj.project_id, prj.root, prj.vcs) == (project, str(workspace), "git")

    # Shown as session counters, and added up in the stats.
    shown = omnid_ok("sessions", "show", ENDED)
    assert "tokens_saved 4321, total_compressions 17, total_embeddings 9, total_workflows 0" in shown
    assert client.stats().counters == {"tokens_saved": 4321 + 50 + 15, "total_compressions": 17 + 2 + 3,
                                       "total_embeddings": 9, "total_workflows": 0}
    assert "tokens_saved 4386" in omnid_ok("stats")

    # The live one is watched: when its owner exits, it is reaped.
    assert client.status().watched_processes == 1
    live_owner.kill()
    live_owner.wait()
    wait_for(lambda: client.get(LIVE).end_reason == "reaped", what="the imported live session to be reaped")
    # Its instance id is its resume key: the MCP server, restarted, continues it.
    restarted = spawn_owner()
    got = client.get_or_create("claude-code", pid=restarted.pid, resume_key="instance-c")
    assert (got.status, got.session.session_id, got.session.owner_pid) == ("resumed", LIVE, restarted.pid)


def test_a_live_owner_already_in_a_live_omnid_session_gets_the_import_ended(daemon, client: Client, tmp_path,
                                                                            monkeypatch, live_owner):
    monkeypatch.setenv("TZ", "UTC")
    workspace = tmp_path / "proj"
    (workspace / ".git").mkdir(parents=True)
    source = tmp_path / "dashboard.db"
    want = build(source, "metrics_service", "UTC", str(workspace), float(int(time.time())), live_owner.pid)
    current = client.get_or_create("claude-code", pid=live_owner.pid).session  # e.g. through `omnid compat`

    out = omnid_json("import-omnimemory", str(source))
    assert out["source"]["sessions"]["live"] == 0 and out["source"]["sessions"]["owner_had_live_session"] == 1
    imported = client.get(LIVE)
    assert (imported.end_reason, imported.ended_at) == ("reaped", want["sessions"][LIVE]["last_activity"])
    assert client.get(current.session_id).ended_at is None


def test_a_live_import_whose_instance_id_is_a_live_omnid_sessions_resume_key_comes_in_ended(
    daemon, client: Client, tmp_path, monkeypatch, live_owner, spawn_owner
):
    monkeypatch.setenv("TZ", "UTC")
    workspace = tmp_path / "proj"
    (workspace / ".git").mkdir(parents=True)
    source = tmp_path / "dashboard.db"
    want = build(source, "metrics_service", "UTC", str(workspace), float(int(time.time())), live_owner.pid)
    # The same MCP server instance, already registered through `omnid compat` by another process.
    holder = spawn_owner()
    current = client.get_or_create("claude-code", pid=holder.pid, resume_key="instance-c").session

    out = omnid_json("import-omnimemory", str(source))
    assert out["source"]["sessions"]["live"] == 0 and out["source"]["sessions"]["key_had_live_session"] == 1
    imported = client.get(LIVE)
    assert (imported.end_reason, imported.ended_at) == ("reaped", want["sessions"][LIVE]["last_activity"])
    assert imported.resume_key == "instance-c"
    assert client.get(current.session_id).ended_at is None  # the key still names the live one
    assert client.find("claude-code", pid=holder.pid, resume_key="instance-c").session_id == current.session_id
