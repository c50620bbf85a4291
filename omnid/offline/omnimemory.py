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
from pathlib import Path
from typing import Any, Iterator
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
from .omnimemory_source import ROWID, TOO_LARGE, Report, Source, _merge
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


def read(path: Path, *, now: float | None = None) -> tuple[Iterator[Record], Report]:
    """Every importable record from the database at ``path``, in import order (projects,
    memories with their versions, sessions with their context), as they are read, and
    the report, complete once the records are. Rows are read one at a time and no value
    over its cap is ever loaded (see ``Source``), however large the database or its rows."""
    now = time.time() if now is None else now
    db = _open(path)
    report = Report()
    return _records(db, path, now, report), report


def _records(db: sqlite3.Connection, path: Path, now: float, report: Report) -> Iterator[Record]:
    try:
        yield from _Converter(Source(db, report), now, report).convert()
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


SESSION_COLUMNS = (
    "session_id", "tool_id", "tool_version", "started_at", "created_at", "last_activity", "ended_at", "process_id",
    "workspace_path", "project_id", "user_id", "tenant_id", "previous_session_id", "pinned", "archived",
)
SESSION_BLOBS = ("metadata", "metrics_json", "context_json", "context")
"""Read one session at a time, when its records are made."""
MEMORY_COLUMNS = (
    "memory_id", "id", "project_id", "workspace_path", "memory_key", "key", "memory_value", "value", "created_at",
    "last_accessed", "accessed_count", "ttl_seconds", "expires_at", "metadata_json", "metadata",
)


class _Converter:
    """Two passes over the source: the first reads what decides which projects there are
    (they must come first in an import), the second makes the records, a session or a
    memory at a time, reading the large values of that one only."""

    def __init__(self, source: Source, now: float, report: Report):
        self.source = source
        self.now = now
        self.report = report
        self.projects: dict[str, list] = {}  # omnid project id -> [root, name, vcs, first, last]

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

    def convert(self) -> Iterator[Record]:
        source = self.source
        workspaces = {
            r["project_id"]: r.get("workspace_path")
            for r in source.rows("projects", ("project_id", "workspace_path")) if r.get("project_id")
        }
        merged: dict[str, dict[str, dict]] = {}
        for table in ("tool_sessions", "sessions"):
            for row in source.rows(table, SESSION_COLUMNS):
                # A memory's project may be known only from its sessions.
                if row.get("project_id") and row.get("workspace_path"):
                    workspaces.setdefault(row["project_id"], row["workspace_path"])
                sid = row.get("session_id")
                if sid in (None, ""):
                    self.report.sessions["skipped"]["no_session_id"] += 1
                    continue
                merged.setdefault(str(sid), {})[table] = row
        self.report.sessions["found"] = len(merged)
        memory_groups = self.memory_groups(workspaces)
        sessions = self.session_times(merged)
        yield ExportHeader()
        for project_id in sorted(self.projects):
            root, name, vcs, first, last = self.projects[project_id]
            first = first if first is not None else self.now
            yield ProjectRecord(project_id, root, name, vcs, first, last if last is not None else first)
        for key in sorted(memory_groups):
            yield from self.memory(key, memory_groups[key])
        for _, _, source_id, times in sessions:
            yield from self.session(source_id, merged.pop(source_id), times)

    # -- sessions ------------------------------------------------------------------------

    def session_times(self, merged: dict[str, dict[str, dict]]) -> list[tuple[float, str, str, tuple]]:
        """(start, omnid session id, source id, times) of each session that has usable times,
        in import order; each one's project is noted."""
        skipped = self.report.sessions["skipped"]
        out = []
        for source_id, parts in merged.items():
            ts, s = parts.get("tool_sessions", {}), parts.get("sessions", {})
            try:
                started = parse_time(_first(ts.get("started_at"), s.get("created_at")))
                activity = [parse_time(v) for v in (ts.get("last_activity"), s.get("last_activity"))]
                ended = parse_time(_first(ts.get("ended_at"), s.get("ended_at")))
            except ValueError:
                skipped["bad_time"] += 1
                continue
            if started is None:
                skipped["no_start_time"] += 1
                continue
            last = max([started, *(t for t in activity if t is not None), *([ended] if ended else [])])
            self.project_of(_first(ts.get("workspace_path"), s.get("workspace_path")), started, last)
            out.append((started, _session_id(source_id), source_id, (started, last, ended)))
        out.sort(key=lambda t: (t[0], t[1]))
        return out

    def session(self, source_id: str, parts: dict[str, dict], times: tuple) -> list[Record]:
        ts, s = (
            _merge(row, self.source.row(table, row[ROWID], SESSION_BLOBS)) if row else {}
            for table, row in (("tool_sessions", parts.get("tool_sessions")), ("sessions", parts.get("sessions")))
        )
        skipped = self.report.sessions["skipped"]
        started, last, ended = times
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
            return []
        self.report.sessions["converted"] += 1
        return [record, *self.context(session_id, s, started)]

    def context(self, session_id: str, s: dict, started: float) -> list[Record]:
        report = self.report.context
        blob = _first(s.get("context_json"), s.get("context"))
        if blob is None:
            if {"context_json", "context"} & s.get(TOO_LARGE, set()):
                report["skipped"]["too_large"] += 1
            return []
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

    def memory_groups(self, workspaces: dict[Any, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Every usable memory row, by (omnid project, key): its versions, without their
        values (read again, a memory at a time, by ``memory``). Their projects are noted."""
        report = self.report.memories
        skipped = report["skipped"]
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in self.source.rows("project_memories", MEMORY_COLUMNS):
            report["rows"] += 1
            key = _first(row.get("memory_key"), row.get("key"))
            value, metadata = self.memory_value(row)
            if not isinstance(key, str) or not key:
                skipped["no_key"] += 1
                continue
            if len(key) > 256:
                skipped["key_too_long"] += 1
                continue
            over_cap = bool({"memory_value", "value", "metadata_json", "metadata"} & row.get(TOO_LARGE, set()))
            if value is None and not over_cap:
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
            if (
                over_cap
                or len(_encode.encode(value)) > MAX_VALUE_BYTES
                or len(_encode.encode(metadata)) > MAX_METADATA_BYTES
            ):
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
                    ROWID: row[ROWID],
                    "id": _first(row.get("memory_id"), row.get("id")),
                    "created": created,
                    "expires": expires,
                    "accessed": accessed if isinstance(accessed, int) and accessed > 0 else 0,
                    "last_accessed": last_accessed,
                }
            )
        return groups

    @staticmethod
    def memory_value(row: dict[str, Any]) -> tuple[Any, Any]:
        """A memory row's value (text) and metadata (a dict)."""
        value = _first(row.get("memory_value"), row.get("value"))
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        raw = _first(row.get("metadata_json"), row.get("metadata"))
        metadata = _json_dict(raw)
        if metadata is None:
            metadata = {"omnimemory_metadata": str(raw)}
        return value, metadata

    def memory(self, group: tuple[str, str], versions: list[dict[str, Any]]) -> list[Record]:
        """One memory with its versions: OmniMemory kept every write of a key as its own row."""
        project_id, key = group
        report = self.report.memories
        versions.sort(key=lambda v: (v["created"], str(v["id"])))
        for v in versions:
            row = self.source.row("project_memories", v[ROWID], ("memory_value", "value", "metadata_json", "metadata"))
            v["value"], v["metadata"] = self.memory_value(row)
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
            report["skipped"]["invalid"] += len(versions)
            return []
        report["memories"] += 1
        report["versions"] += len(versions)
        return records
