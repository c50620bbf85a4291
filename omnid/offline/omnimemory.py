"""An OmniMemory ``dashboard.db`` read as omnid export records: sessions, their context, project memories."""

# The schema follows mrtozner/omnimemory: ``omnimemory-metrics-service/src/data_store.py``
# (tables ``tool_sessions``, ``sessions``, ``projects``, ``project_memories``; ``process_id``
# was added to ``tool_sessions`` later, by ``migrations/002_add_process_id.py``) and
# ``mcp_server/session_manager.py`` (the context blob: ``files_accessed``,
# ``file_importance_scores``, ``recent_searches``, ``decisions``, ``saved_memories``). Any of
# those columns may be missing; what exists is mapped, and the source is opened read-only.

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

from omnid_client.protocol import (
    MAX_METADATA_BYTES,
    MAX_VALUE_BYTES,
    ContextRecord,
    ExportHeader,
    MemoryRecord,
    MemoryVersionRecord,
    ProjectRecord,
    Record,
    SessionRecord,
)

from ..projects import locate
from .omnimemory_values import (
    SOURCE,
    _encode,
    _first,
    _json_dict,
    _memory_id,
    _session_id,
    _tool_id,
    _valid,
    parse_time,
)
from .transfer import TransferError

TABLES = ("tool_sessions", "sessions", "project_memories")


class Report:
    """What was read from each table, what it became, and what was skipped and why."""

    def __init__(self) -> None:
        self.tables: dict[str, int] = {}
        self.sessions: dict[str, Any] = {"found": 0, "converted": 0, "ended_on_import": 0, "skipped": Counter()}
        self.context: dict[str, Any] = {"items": 0, "converted": 0, "skipped": Counter()}
        self.memories: dict[str, Any] = {"rows": 0, "memories": 0, "versions": 0, "skipped": Counter()}

    def as_dict(self) -> dict[str, Any]:
        def plain(d: dict[str, Any]) -> dict[str, Any]:
            return {k: dict(sorted(v.items())) if isinstance(v, Counter) else v for k, v in d.items()}

        return {
            "tables": dict(self.tables),
            "sessions": plain(self.sessions),
            "context": plain(self.context),
            "memories": plain(self.memories),
        }


def read(path: Path, *, now: float | None = None) -> tuple[list[Record], Report]:
    """Every importable record from the database at ``path``, in import order (projects,
    memories with their versions, sessions with their context), and the report."""
    now = time.time() if now is None else now
    db = _open(path)
    try:
        return _Converter(db, now).convert()
    except sqlite3.Error as e:
        raise TransferError(f"reading {path} failed: {e}", "io") from None
    finally:
        db.close()


def _open(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise TransferError(f"no file at {path}", "not_found")
    params = "mode=ro"
    with open(path, "rb") as f:
        header = f.read(20)
    if header[18:20] == b"\x02\x02" and not Path(f"{path}-wal").exists():
        # A WAL database nobody has open: everything is in the main file. Reading it as
        # immutable keeps SQLite from creating -wal and -shm files beside the user's file.
        params += "&immutable=1"
    db = sqlite3.connect(f"file:{quote(os.fspath(path.absolute()))}?{params}", uri=True, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        db.close()
        raise TransferError(f"{path} is not an SQLite database: {e}", "invalid") from None
    if not names.intersection(TABLES):
        db.close()
        raise TransferError(
            f"{path} is not an OmniMemory dashboard database: it has none of the tables {', '.join(TABLES)}", "invalid"
        )
    return db



class _Converter:
    def __init__(self, db: sqlite3.Connection, now: float):
        self.db = db
        self.now = now
        self.report = Report()
        self.projects: dict[str, list] = {}  # omnid project id -> [root, name, vcs, first, last]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self.tables = tables

    def rows(self, table: str) -> list[dict[str, Any]]:
        if table not in self.tables:
            return []
        rows = [dict(r) for r in self.db.execute(f'SELECT * FROM "{table}"')]
        self.report.tables[table] = len(rows)
        return rows

    def project_of(self, workspace: Any, *times: float | None) -> str | None:
        if not isinstance(workspace, str) or not os.path.isabs(workspace) or len(workspace) > 4096:
            return None
        root = locate(workspace)
        entry = self.projects.setdefault(root.project_id, [root.root, root.name, root.vcs, None, None])
        for t in times:
            if t is not None:
                entry[3] = t if entry[3] is None else min(entry[3], t)
                entry[4] = t if entry[4] is None else max(entry[4], t)
        return root.project_id

    def convert(self) -> tuple[list[Record], Report]:
        workspaces = {r["project_id"]: r.get("workspace_path") for r in self.rows("projects") if r.get("project_id")}
        tool_sessions = self.rows("tool_sessions")
        sessions = self.rows("sessions")
        for row in tool_sessions + sessions:  # a memory's project may be known only from its sessions
            if row.get("project_id") and row.get("workspace_path"):
                workspaces.setdefault(row["project_id"], row["workspace_path"])
        memory_records = self.memories(self.rows("project_memories"), workspaces)
        session_records = self.sessions(tool_sessions, sessions)
        projects: list[Record] = []
        for project_id in sorted(self.projects):
            root, name, vcs, first, last = self.projects[project_id]
            first = first if first is not None else self.now
            projects.append(ProjectRecord(project_id, root, name, vcs, first, last if last is not None else first))
        return [ExportHeader(), *projects, *memory_records, *session_records], self.report

    # -- sessions ------------------------------------------------------------------------

    def sessions(self, tool_sessions: list[dict], sessions: list[dict]) -> list[Record]:
        merged: dict[str, dict[str, dict]] = {}
        for table, rows in (("tool_sessions", tool_sessions), ("sessions", sessions)):
            for row in rows:
                sid = row.get("session_id")
                if sid in (None, ""):
                    self.report.sessions["skipped"]["no_session_id"] += 1
                    continue
                merged.setdefault(str(sid), {})[table] = row
        self.report.sessions["found"] = len(merged)
        out: list[tuple[float, str, list[Record]]] = []
        for source_id, parts in merged.items():
            converted = self.session(source_id, parts.get("tool_sessions", {}), parts.get("sessions", {}))
            if converted is not None:
                out.append(converted)
        out.sort(key=lambda t: (t[0], t[1]))
        return [r for _, _, records in out for r in records]

    def session(self, source_id: str, ts: dict, s: dict) -> tuple[float, str, list[Record]] | None:
        skipped = self.report.sessions["skipped"]
        try:
            started = parse_time(_first(ts.get("started_at"), s.get("created_at")))
            activity = [parse_time(v) for v in (ts.get("last_activity"), s.get("last_activity"))]
            ended = parse_time(_first(ts.get("ended_at"), s.get("ended_at")))
        except ValueError:
            skipped["bad_time"] += 1
            return None
        if started is None:
            skipped["no_start_time"] += 1
            return None
        last = max([started, *(t for t in activity if t is not None), *([ended] if ended else [])])
        if ended is None:
            # OmniMemory knew its owner by a bare pid only (no start time, no boot id), so
            # omnid cannot tell whether that process still runs: the session ends as reaped.
            ended, reason = last, "reaped"
            self.report.sessions["ended_on_import"] += 1
        else:
            ended, reason = max(ended, started), "ended"
        pid = _first(ts.get("process_id"), s.get("process_id"))
        pid = pid if isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**31 else None
        workspace = _first(ts.get("workspace_path"), s.get("workspace_path"))
        session_id = _session_id(source_id)
        project_id = self.project_of(workspace, started, last)
        provenance: dict[str, Any] = {
            "session_id": source_id,
            "tables": [t for t, row in (("tool_sessions", ts), ("sessions", s)) if row],
        }
        if pid is not None:
            provenance["process_id"] = pid
        for key in ("project_id", "user_id", "tenant_id", "previous_session_id"):
            value = _first(ts.get(key), s.get(key))
            if value is not None:
                provenance[key] = value
        for key in ("pinned", "archived"):
            if s.get(key):
                provenance[key] = True
        for key in ("metadata", "metrics_json"):
            extra = _json_dict(_first(ts.get(key), s.get(key)))
            if extra:
                provenance[key.removesuffix("_json")] = extra
        metadata = {"imported_from": SOURCE, SOURCE: provenance}
        if len(_encode.encode(metadata)) > MAX_METADATA_BYTES:
            provenance.pop("metadata", None)
            provenance.pop("metrics", None)
        tool_version = ts.get("tool_version")
        record = SessionRecord(
            session_id=session_id,
            tool_id=_tool_id(_first(ts.get("tool_id"), s.get("tool_id"))),
            tool_version=str(tool_version)[:256] if tool_version not in (None, "") else None,
            session_type="default",
            owner_pid=pid,
            owner_start=None,
            boot_id=None,
            dedup=True,
            workspace=workspace if project_id is not None else None,
            metadata=metadata,
            started_at=started,
            last_activity=last,
            ended_at=ended,
            end_reason=reason,  # type: ignore[arg-type]
            project_id=project_id,
            message_count=0,
            total_tokens=0,
            total_cost_nanos=0,
        )
        try:
            record = _valid(record)  # type: ignore[assignment]
        except msgspec.ValidationError:
            skipped["invalid"] += 1
            return None
        self.report.sessions["converted"] += 1
        return started, session_id, [record, *self.context(session_id, s, started)]

    def context(self, session_id: str, s: dict, started: float) -> list[Record]:
        blob = _first(s.get("context_json"), s.get("context"))
        if blob is None:
            return []
        report = self.report.context
        ctx = _json_dict(blob)
        if ctx is None:
            report["skipped"]["bad_context_json"] += 1
            return []
        scores = ctx.get("file_importance_scores")
        scores = scores if isinstance(scores, dict) else {}
        items: list[tuple[str, Any, Any, Any]] = []  # kind, subject, importance, time
        for kind, names, subject_keys, time_keys in (
            ("file_access", ("files_accessed",), ("path", "file_path"), ("accessed_at", "timestamp")),
            ("search", ("recent_searches", "searches"), ("query",), ("timestamp", "searched_at")),
            ("decision", ("decisions",), ("decision", "text"), ("timestamp", "decided_at")),
            ("memory_ref", ("saved_memories",), ("key", "id"), ("timestamp", "saved_at")),
        ):
            entries = _first(*(ctx.get(n) for n in names)) or []
            if not isinstance(entries, list):
                report["skipped"][f"bad_{names[0]}"] += 1
                continue
            for entry in entries:
                report["items"] += 1
                if isinstance(entry, str):
                    subject, at = entry, None
                elif isinstance(entry, dict):
                    subject = _first(*(entry.get(k) for k in subject_keys))
                    at = _first(*(entry.get(k) for k in time_keys))
                else:
                    report["skipped"]["bad_item"] += 1
                    continue
                if not isinstance(subject, str) or not subject.strip():
                    report["skipped"]["empty"] += 1
                    continue
                if len(subject) > 8192:
                    report["skipped"]["too_long"] += 1
                    continue
                importance = scores.get(subject) if kind == "file_access" else None
                if not isinstance(importance, (int, float)) or isinstance(importance, bool) or importance != importance:
                    importance = None
                else:
                    importance = min(max(float(importance), 0.0), 1.0)
                items.append((kind, subject, importance, at))
        events = []
        for order, (kind, subject, importance, at) in enumerate(items):
            try:
                created = parse_time(at)
            except ValueError:
                created = None
            events.append((created if created is not None else started, order, kind, subject, importance))
        events.sort(key=lambda e: (e[0], e[1]))
        report["converted"] += len(events)
        return [
            ContextRecord(session_id, seq, kind, subject, importance, None, created)  # type: ignore[arg-type]
            for seq, (created, _, kind, subject, importance) in enumerate(events, 1)
        ]

    # -- project memories -----------------------------------------------------------------

    def memories(self, rows: list[dict], workspaces: dict[Any, Any]) -> list[Record]:
        report = self.report.memories
        report["rows"] = len(rows)
        skipped = report["skipped"]
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:
            key = _first(row.get("memory_key"), row.get("key"))
            value = _first(row.get("memory_value"), row.get("value"))
            if not isinstance(key, str) or not key:
                skipped["no_key"] += 1
                continue
            if len(key) > 256:
                skipped["key_too_long"] += 1
                continue
            if value is None:
                skipped["no_value"] += 1
                continue
            try:
                created = parse_time(row.get("created_at"))
                last_accessed = parse_time(row.get("last_accessed"))
                expires = parse_time(row.get("expires_at"))
            except ValueError:
                skipped["bad_time"] += 1
                continue
            created = created if created is not None else self.now
            ttl = row.get("ttl_seconds")
            if expires is None and isinstance(ttl, (int, float)) and not isinstance(ttl, bool) and ttl > 0:
                expires = created + ttl
            if expires is not None and expires <= self.now:
                skipped["expired"] += 1
                continue
            metadata = _json_dict(_first(row.get("metadata_json"), row.get("metadata")))
            if metadata is None:
                metadata = {"omnimemory_metadata": str(_first(row.get("metadata_json"), row.get("metadata")))}
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if len(_encode.encode(value)) > MAX_VALUE_BYTES or len(_encode.encode(metadata)) > MAX_METADATA_BYTES:
                skipped["too_large"] += 1
                continue
            workspace = _first(row.get("workspace_path"), workspaces.get(row.get("project_id")))
            project_id = self.project_of(workspace, created)
            if project_id is None:
                skipped["unknown_project"] += 1
                continue
            accessed = row.get("accessed_count")
            groups.setdefault((project_id, key), []).append(
                {
                    "id": _first(row.get("memory_id"), row.get("id")),
                    "value": value,
                    "metadata": metadata,
                    "created": created,
                    "expires": expires,
                    "accessed": accessed if isinstance(accessed, int) and accessed > 0 else 0,
                    "last_accessed": last_accessed,
                }
            )
        out: list[Record] = []
        for (project_id, key), versions in sorted(groups.items()):
            # OmniMemory kept every write of a key as its own row: here they are its versions.
            versions.sort(key=lambda v: (v["created"], str(v["id"])))
            newest = versions[-1]
            memory_id = _memory_id(newest["id"], f"{project_id}:{key}")
            reads = [v["last_accessed"] for v in versions if v["last_accessed"] is not None]
            records: list[Record] = [
                MemoryRecord(
                    memory_id, project_id, key, newest["value"], newest["metadata"], len(versions),
                    versions[0]["created"], newest["created"], newest["expires"],
                    sum(v["accessed"] for v in versions), max(reads) if reads else None,
                ),
                *(
                    MemoryVersionRecord(memory_id, n, v["value"], v["metadata"], v["created"], v["expires"])
                    for n, v in enumerate(versions, 1)
                ),
            ]
            try:
                records = [_valid(r) for r in records]
            except msgspec.ValidationError:
                skipped["invalid"] += len(versions)
                continue
            report["memories"] += 1
            report["versions"] += len(versions)
            out += records
        return out
