"""An OmniMemory ``dashboard.db`` read as omnid export records: sessions, their context, project memories."""

# The schema follows mrtozner/omnimemory. Three components create and write the file, and
# whichever runs first creates a table in its own shape (the others' CREATE TABLE IF NOT
# EXISTS then do nothing):
# - the metrics service, ``omnimemory-metrics-service/src/data_store.py``: ``tool_sessions``
#   (columns added over time by its ``_migrate_schema`` and ``migrations/002_add_process_id.py``;
#   its ``start_session`` also writes an ``instance_id`` column no statement of it creates),
#   ``sessions`` (with ``process_id``), ``projects`` and ``project_memories`` (with
#   ``expires_at`` and ``tenant_id``), and the per-session counters of ``metrics``;
# - the MCP server's session manager, ``mcp_server/session_manager.py``: ``sessions``
#   (an ``id`` key, no ``process_id``) and its context blob (``files_accessed``,
#   ``file_importance_scores``, ``recent_searches``, ``decisions``, ``saved_memories``,
#   ``tool_specific``);
# - the MCP server's project manager, ``mcp_server/project_manager.py``: ``projects`` and
#   ``project_memories`` (no ``expires_at``: a TTL counts from ``created_at``).
# Any of those columns may be missing; what exists is mapped, and the source is opened
# read-only. Which component writes which times in which zone: see ``omnimemory_values``.

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import msgspec
import psutil

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

from .. import identity
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
COUNTERS = ("tokens_saved", "total_compressions", "total_embeddings", "total_workflows")
"""The per-session counters OmniMemory shows: ``tool_sessions`` columns its ``end_session``
fills in, and for a session not ended, the sums of the ``metrics`` table's deltas."""
OWNER_SLACK = 2.0
"""Seconds: CURRENT_TIMESTAMP drops fractions, so a session's last activity may read up to
a second before its owner process started."""


class Report:
    """What was read from each table, what it became, and what was skipped and why."""

    def __init__(self) -> None:
        self.tables: dict[str, int] = {}
        self.sessions: dict[str, Any] = {
            "found": 0, "converted": 0, "live": 0, "ended_on_import": 0, "skipped": Counter(),
        }
        self.context: dict[str, Any] = {"items": 0, "converted": 0, "files_from_importance": 0, "skipped": Counter()}
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


def _live_owner(pid: int, last_activity: float) -> identity.ProcessInfo | None:
    """The running process that owns a session OmniMemory never ended: ``pid`` runs, is
    this user's, and had started when the session was last active (else the pid was reused)."""
    info = identity.inspect(pid)
    if info is None or info.uid != os.geteuid() or info.identity.start == 0:
        return None
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        return None
    return info if started <= last_activity + OWNER_SLACK else None


def end_on_import(r: SessionRecord, report: Report) -> SessionRecord:
    """The session ended as reaped at its last activity, its owner kept as a bare pid."""
    report.sessions["live"] -= 1
    report.sessions["ended_on_import"] += 1
    return msgspec.structs.replace(r, ended_at=r.last_activity, end_reason="reaped", owner_start=None, boot_id=None)


def settle_live(records: list[Record], report: Report, find: Callable[..., Any]) -> None:
    """Sessions to be imported live whose owner already has a live omnid session of the
    same tool (one live session per tool and process) come in ended instead. ``find`` is
    the client's ``find(tool_id, pid=...)``."""
    for i, r in enumerate(records):
        if isinstance(r, SessionRecord) and r.ended_at is None and r.owner_pid is not None:
            current = find(r.tool_id, pid=r.owner_pid)
            if current is not None and current.session_id != r.session_id:
                records[i] = end_on_import(r, report)
                report.sessions["owner_had_live_session"] = report.sessions.get("owner_had_live_session", 0) + 1


def _importance(value: Any) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return None
    return min(max(float(value), 0.0), 1.0)


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
        session_records = self.sessions(tool_sessions, sessions, workspaces)
        projects: list[Record] = []
        for project_id in sorted(self.projects):
            root, name, vcs, first, last = self.projects[project_id]
            first = first if first is not None else self.now
            projects.append(ProjectRecord(project_id, root, name, vcs, first, last if last is not None else first))
        return [ExportHeader(), *projects, *memory_records, *session_records], self.report

    def metric_sums(self) -> dict[str, dict[str, int]]:
        """Per session, the sums of the ``metrics`` table's ``*_delta`` counters (what
        OmniMemory's ``/sessions/{id}/metrics`` shows while a session runs)."""
        if "metrics" not in self.tables:
            return {}
        columns = {r[1] for r in self.db.execute('PRAGMA table_info("metrics")')}
        present = [c for c in COUNTERS if f"{c}_delta" in columns]
        if "session_id" not in columns or not present:
            return {}
        sums = ", ".join(f'sum("{c}_delta")' for c in present)
        rows = self.db.execute(f'SELECT session_id, {sums} FROM "metrics" WHERE session_id NOTNULL GROUP BY 1')
        return {str(r[0]): {c: v for c, v in zip(present, r[1:], strict=True) if isinstance(v, int)} for r in rows}

    # -- sessions ------------------------------------------------------------------------

    def sessions(self, tool_sessions: list[dict], sessions: list[dict], workspaces: dict[Any, Any]) -> list[Record]:
        merged: dict[str, dict[str, dict]] = {}
        for table, rows in (("tool_sessions", tool_sessions), ("sessions", sessions)):
            for row in rows:
                sid = row.get("session_id")
                if sid in (None, ""):
                    self.report.sessions["skipped"]["no_session_id"] += 1
                    continue
                merged.setdefault(str(sid), {})[table] = row
        self.report.sessions["found"] = len(merged)
        deltas = self.metric_sums()
        out: list[tuple[float, str, list[Record]]] = []
        for source_id, parts in merged.items():
            ts, row = parts.get("tool_sessions", {}), parts.get("sessions", {})
            converted = self.session(source_id, ts, row, workspaces, deltas.get(source_id, {}))
            if converted is not None:
                out.append(converted)
        self.one_live_per_owner([records[0] for _, _, records in out])  # type: ignore[misc]
        out.sort(key=lambda t: (t[0], t[1]))
        return [r for _, _, records in out for r in records]

    def session(
        self, source_id: str, ts: dict, s: dict, workspaces: dict[Any, Any], deltas: dict[str, int]
    ) -> tuple[float, str, list[Record]] | None:
        skipped = self.report.sessions["skipped"]
        try:
            # tool_sessions is the metrics service's alone: CURRENT_TIMESTAMP, UTC. sessions
            # rows are its (UTC) or the session manager's (local isoformat), whichever wrote last.
            started = _first(parse_time(ts.get("started_at"), "utc"), parse_time(s.get("created_at")))
            activity = [parse_time(ts.get("last_activity"), "utc"), parse_time(s.get("last_activity"))]
            ended = _first(parse_time(ts.get("ended_at"), "utc"), parse_time(s.get("ended_at")))
        except ValueError:
            skipped["bad_time"] += 1
            return None
        if started is None:
            skipped["no_start_time"] += 1
            return None
        last = max([started, *(t for t in activity if t is not None), *([ended] if ended else [])])
        pid = _first(ts.get("process_id"), s.get("process_id"))
        pid = pid if isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**31 else None
        owner = _live_owner(pid, last) if ended is None and pid is not None else None
        if ended is not None:
            ended, reason = max(ended, started), "ended"
        elif owner is None:
            # Its owner is gone (or OmniMemory never knew it): the session ends as reaped.
            ended, reason = last, "reaped"
        else:
            reason = None
        session_project = _first(ts.get("project_id"), s.get("project_id"))
        workspace = _first(ts.get("workspace_path"), s.get("workspace_path"), workspaces.get(session_project))
        session_id = _session_id(source_id)
        project_id = self.project_of(workspace, started, last)
        provenance: dict[str, Any] = {
            "session_id": source_id,
            "tables": [t for t, row in (("tool_sessions", ts), ("sessions", s)) if row],
        }
        if pid is not None:
            provenance["process_id"] = pid
        for key in ("instance_id", "project_id", "user_id", "tenant_id", "previous_session_id"):
            value = _first(ts.get(key), s.get(key))
            if value is not None:
                provenance[key] = value
        for key in ("pinned", "archived"):
            if s.get(key):
                provenance[key] = True
        for key in ("metadata", "metrics_json", "evolution_metadata"):
            extra = _json_dict(_first(ts.get(key), s.get(key)))
            if extra:
                provenance[key.removesuffix("_json")] = extra
        ctx = self.context_blob(s)
        if ctx and isinstance(ctx.get("tool_specific"), dict) and ctx["tool_specific"]:
            provenance["tool_specific"] = ctx["tool_specific"]
        metadata: dict[str, Any] = {"imported_from": SOURCE, SOURCE: provenance}
        counters = {c: ts[c] for c in COUNTERS if isinstance(ts.get(c), int) and not isinstance(ts[c], bool)}
        for name, total in deltas.items():
            if not counters.get(name):  # not ended yet in OmniMemory: its running sums are what it shows
                counters[name] = total
        if counters:
            metadata["counters"] = counters
        for key in ("metadata", "metrics", "evolution_metadata", "tool_specific"):
            if len(_encode.encode(metadata)) <= MAX_METADATA_BYTES:
                break
            if provenance.pop(key, None) is not None:
                skipped[f"{key}_too_large"] += 1
        tool_version = ts.get("tool_version")
        record = SessionRecord(
            session_id=session_id,
            tool_id=_tool_id(_first(ts.get("tool_id"), s.get("tool_id"))),
            tool_version=str(tool_version)[:256] if tool_version not in (None, "") else None,
            session_type="default",
            owner_pid=pid,
            owner_start=owner.identity.start if owner else None,
            boot_id=owner.identity.boot_id if owner else None,
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
        if reason is None:
            self.report.sessions["live"] += 1
        elif reason == "reaped":
            self.report.sessions["ended_on_import"] += 1
        return started, session_id, [record, *self.context(session_id, ctx, started)]

    def one_live_per_owner(self, records: list[SessionRecord]) -> None:
        """OmniMemory may leave several sessions of one tool and process unended; omnid keeps
        one live session per (tool, owner): the most recently active stays live."""
        seen: set[tuple[str, int | None]] = set()
        for i in sorted(range(len(records)), key=lambda i: -records[i].last_activity):
            r = records[i]
            if r.ended_at is not None:
                continue
            if (r.tool_id, r.owner_pid) in seen:
                records[i] = end_on_import(r, self.report)
            seen.add((r.tool_id, r.owner_pid))

    def context_blob(self, s: dict) -> dict[str, Any] | None:
        blob = _first(s.get("context_json"), s.get("context"))
        if blob is None:
            return None
        ctx = _json_dict(blob)
        if ctx is None:
            self.report.context["skipped"]["bad_context_json"] += 1
        return ctx

    def context(self, session_id: str, ctx: dict[str, Any] | None, started: float) -> list[Record]:
        if not ctx:
            return []
        report = self.report.context
        scores = ctx.get("file_importance_scores")
        scores = scores if isinstance(scores, dict) else {}
        items: list[tuple[str, Any, Any, Any, Any]] = []  # kind, subject, importance, time, detail
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
                detail = None
                if isinstance(entry, str):
                    subject, at = entry, None
                elif isinstance(entry, dict):
                    subject = _first(*(entry.get(k) for k in subject_keys))
                    at = _first(*(entry.get(k) for k in time_keys))
                    if kind == "memory_ref" and subject == entry.get("key") and entry.get("id") not in (None, ""):
                        detail = str(entry["id"])[:8192]  # the memory the reference names
                else:
                    report["skipped"]["bad_item"] += 1
                    continue
                if not isinstance(subject, str) or not subject.strip():
                    report["skipped"]["empty"] += 1
                    continue
                if len(subject) > 8192:
                    report["skipped"]["too_long"] += 1
                    continue
                items.append((kind, subject, scores.get(subject) if kind == "file_access" else None, at, detail))
        # OmniMemory keeps the last 100 file accesses but every file's importance: files
        # whose accesses fell off that list are still files of the session, at its start.
        listed = {subject for kind, subject, *_ in items if kind == "file_access"}
        for path, importance in scores.items():
            if isinstance(path, str) and path.strip() and len(path) <= 8192 and path not in listed:
                report["items"] += 1
                report["files_from_importance"] += 1
                items.append(("file_access", path, importance, started, None))
        events = []
        for order, (kind, subject, importance, at, detail) in enumerate(items):
            try:
                created = parse_time(at)  # the blob's times are datetime.now().isoformat(): local
            except ValueError:
                created = None
            at = created if created is not None else started
            events.append((at, order, kind, subject, _importance(importance), detail))
        events.sort(key=lambda e: (e[0], e[1]))
        report["converted"] += len(events)
        return [
            ContextRecord(session_id, seq, kind, subject, importance, detail, created)  # type: ignore[arg-type]
            for seq, (created, _, kind, subject, importance, detail) in enumerate(events, 1)
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
                # created_at/last_accessed: CURRENT_TIMESTAMP (metrics service) or utcnow()
                # (project manager), UTC both; expires_at: the metrics service's local now() + TTL.
                created = parse_time(row.get("created_at"), "utc")
                last_accessed = parse_time(row.get("last_accessed"), "utc")
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
