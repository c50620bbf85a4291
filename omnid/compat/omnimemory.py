"""OmniMemory's session HTTP API (its metrics service on port 8003), served from omnid.

An unmodified OmniMemory MCP server (mrtozner/omnimemory, ``mcp_server/omnimemory_mcp.py``
and ``session_manager.py``) keeps working against this: it registers its session with
``POST /sessions/get_or_create`` (tool_id, process_id, instance_id, workspace_path),
heartbeats, ends it, appends and reads the session's context, and stores project memories
by OmniMemory's project id (the first 16 hex digits of the workspace path's SHA-256). Each
request becomes calls on the omnid daemon through the ordinary client.

The server (``omnimemory_http``) listens on 127.0.0.1 only and answers only connections
whose peer runs as this user (see ``peers``). Standard library only: ``http.server``, one
thread per connection.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timezone
from typing import Any, Callable

from omnid_client import Client
from omnid_client.errors import NotFound
from omnid_client.protocol import ContextEvent, Memory, Session, SessionStatus

SCAN = 200
"""Sessions per page when looking for the workspace behind a project id."""
COUNTERS = ("total_compressions", "total_embeddings", "total_workflows", "tokens_saved")


class HTTPError(Exception):
    def __init__(self, status: int, detail: Any):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def omnimemory_project_id(workspace: str) -> str:
    """OmniMemory's ``_hash_workspace_path``."""
    return hashlib.sha256(workspace.encode()).hexdigest()[:16]


def iso(ts: float | None) -> str | None:
    """A time as OmniMemory's API gives it: UTC, ``YYYY-MM-DDTHH:MM:SS``, no zone."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")


def _omni(s: Session) -> dict[str, Any]:
    extra = s.metadata.get("omnimemory")
    return extra if isinstance(extra, dict) else {}


class Backend:
    """The OmniMemory API over omnid: one client per server thread (a client runs one call
    at a time), and the workspaces behind the project ids callers have named."""

    def __init__(self, make_client: Callable[[], Client]):
        self._make_client = make_client
        self._local = threading.local()
        self._workspaces: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._make_client()
        return client

    def remember(self, workspace: str | None) -> str | None:
        if not workspace:
            return None
        project = omnimemory_project_id(workspace)
        with self._lock:
            self._workspaces[project] = workspace
        return project

    def workspace_of(self, project: str) -> str:
        """The workspace whose OmniMemory project id is ``project``: one a caller named, an
        omnid project's root, or a session's workspace (imported ones know OmniMemory's id)."""
        with self._lock:
            if project in self._workspaces:
                return self._workspaces[project]
        cursor = None
        while True:
            page = self.client.list_projects(limit=200, cursor=cursor)
            for p in page.projects:
                if self.remember(p.root) == project:
                    return p.root
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        for s in self._sessions("all", limit=1000):
            if s.workspace and (self.remember(s.workspace) == project or _omni(s).get("project_id") == project):
                return s.workspace
        raise HTTPError(404, "Project not found")

    def _sessions(self, status: SessionStatus, *, limit: int) -> list[Session]:
        found: list[Session] = []
        cursor = None
        while len(found) < limit:
            page = self.client.list_sessions(status=status, limit=SCAN, cursor=cursor)
            found += page.sessions
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        return found

    # -- sessions -----------------------------------------------------------------------

    def get_or_create(self, body: dict[str, Any], peer_pid: Callable[[], int | None]) -> dict[str, Any]:
        tool_id = _required(body, "tool_id")
        pid = _pid(body, peer_pid)
        instance = _text(body, "instance_id")
        workspace = _text(body, "workspace_path")
        self.remember(workspace)
        # The instance id is the session's resume key: a restarted MCP server (a new process,
        # the same instance id) is handed its instance's session back, with its context, once
        # the old process is gone; while that one still runs the daemon answers Conflict.
        got = self.client.get_or_create(
            tool_id, pid=pid, tool_version=_text(body, "tool_version"), workspace=workspace,
            metadata={"omnimemory": {"instance_id": instance}} if instance else None, resume_key=instance,
        )
        # OmniMemory's callers know only "created" and "existing".
        status = "created" if got.status == "created" else "existing"
        return _registered(got.session.session_id, tool_id, body, status, pid)

    def start(self, body: dict[str, Any], peer_pid: Callable[[], int | None]) -> dict[str, Any]:
        tool_id = _required(body, "tool_id")
        workspace = _text(body, "workspace_path")
        self.remember(workspace)
        s = self.client.get_or_create(
            tool_id, pid=_pid(body, peer_pid), tool_version=_text(body, "tool_version"), workspace=workspace,
            dedup=False,
        ).session
        return {"session_id": s.session_id, "tool_id": tool_id, "tool_version": body.get("tool_version"),
                "status": "started"}

    def session(self, sid: str) -> dict[str, Any]:
        s = self.client.get(sid)
        omni = _omni(s)
        counters = s.metadata.get("counters")
        counters = counters if isinstance(counters, dict) else {}
        return {
            "session_id": s.session_id,
            "tool_id": s.tool_id,
            "tool_version": s.tool_version,
            "started_at": iso(s.started_at),
            "ended_at": iso(s.ended_at),
            "last_activity": iso(s.last_activity),
            "process_id": s.owner_pid,
            "instance_id": s.resume_key or omni.get("instance_id"),
            "previous_session_id": omni.get("previous_session_id"),
            "project_id": omnimemory_project_id(s.workspace) if s.workspace else omni.get("project_id"),
            "workspace_path": s.workspace,
            "pinned": s.pinned,
            "archived": s.archived_at is not None,
            **{name: counters.get(name, 0) for name in COUNTERS},
            "metrics": [],
        }

    def heartbeat(self, sid: str) -> dict[str, Any]:
        s = self.client.heartbeat(sid)
        return {"session_id": sid, "status": "active", "last_activity": iso(s.last_activity),
                "message": "Session activity updated"}

    def end(self, sid: str) -> dict[str, Any]:
        self.client.end(sid)
        return {"session_id": sid, "status": "ended", "summary": self.session(sid)}

    def context(self, sid: str) -> dict[str, Any]:
        ctx = self.client.get_context(sid, max_files=1000, max_searches=200, max_decisions=200, max_memories=200)
        files = sorted(ctx.files, key=lambda f: f.last_access)
        context = {
            "files_accessed": [{"path": f.path, "accessed_at": iso(f.last_access), "order": n}
                               for n, f in enumerate(files, 1)],
            "file_importance_scores": {f.path: f.importance for f in files},
            "recent_searches": [{"query": q.query, "timestamp": iso(q.at)}
                                for q in sorted(ctx.searches, key=lambda q: q.at)],
            "decisions": [{"decision": d.text, "timestamp": iso(d.at)}
                          for d in sorted(ctx.decisions, key=lambda d: d.at)],
            "saved_memories": [{"id": m.content, "key": m.ref, "timestamp": iso(m.at)}
                               for m in sorted(ctx.memories, key=lambda m: m.at) if m.source == "memory_ref"],
            "compressed_context": None,
            "context_size_bytes": ctx.size.bytes,
        }
        return context

    def get_context(self, sid: str) -> dict[str, Any]:
        context = self.context(sid)
        return {"session_id": sid, "context": context, "compressed": False, "size_bytes": context["context_size_bytes"]}

    def append_context(self, sid: str, body: dict[str, Any]) -> dict[str, Any]:
        events: list[ContextEvent] = []
        path = _text(body, "file_path")
        if path:
            importance = body.get("file_importance")
            if importance is None:
                importance = 0.5
            if not isinstance(importance, (int, float)) or isinstance(importance, bool) or not 0 <= importance <= 1:
                raise HTTPError(422, "file_importance must be a number from 0.0 to 1.0")
            events.append(ContextEvent("file_access", path, float(importance)))
        if _text(body, "search_query"):
            events.append(ContextEvent("search", body["search_query"]))
        if _text(body, "decision"):
            events.append(ContextEvent("decision", body["decision"]))
        if _text(body, "memory_id") and _text(body, "memory_key"):
            events.append(ContextEvent("memory_ref", body["memory_key"], detail=body["memory_id"]))
        if events:
            self.client.append_context(sid, events)
        return {"session_id": sid, "message": "Context updated successfully", "context": self.context(sid)}

    def activity(self, sid: str, limit: int) -> dict[str, Any]:
        ctx = self.client.get_context(sid, max_files=limit)
        files = sorted(ctx.files, key=lambda f: -f.last_access)
        operations = [{"file_path": f.path, "timestamp": iso(f.last_access)} for f in files]
        return {"session_id": sid, "operations": operations}

    # -- project memories ---------------------------------------------------------------

    def create_memory(self, project: str, body: dict[str, Any]) -> dict[str, Any]:
        key = _required(body, "key")
        value = body.get("value")
        if not isinstance(value, str):
            raise HTTPError(422, "value must be a string")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise HTTPError(422, "metadata must be an object")
        ttl = body.get("ttl_seconds")
        if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0):
            raise HTTPError(422, "ttl_seconds must be a positive integer")
        m = self.client.put_memory(key, value, workspace=self.workspace_of(project), metadata=metadata, ttl=ttl)
        return {"memory_id": m.memory_id, "project_id": project, "key": key, "value": value, "metadata": metadata,
                "created_at": iso(m.updated_at), "expires_at": iso(m.expires_at),
                "message": "Memory created successfully"}

    def memories(self, project: str, query: dict[str, list[str]]) -> dict[str, Any]:
        workspace = self.workspace_of(project)
        key = (query.get("key") or [""])[0]
        if key:
            try:
                m = self.client.get_memory(key, workspace=workspace)
            except NotFound:
                raise HTTPError(404, "Memory not found") from None
            return {"project_id": project, "memory": _memory(project, m)}
        try:
            limit = int((query.get("limit") or ["20"])[0])
        except ValueError:
            raise HTTPError(422, "limit must be an integer") from None
        if not 1 <= limit <= 100:
            raise HTTPError(422, "limit must be from 1 to 100")
        found = [_memory(project, m) for m in self.client.list_memories(workspace=workspace, limit=limit)]
        return {"project_id": project, "memories": found, "count": len(found)}


def _memory(project: str, m: Memory) -> dict[str, Any]:
    value = m.value if isinstance(m.value, str) else json.dumps(m.value)
    ttl = round(m.expires_at - m.updated_at) if m.expires_at is not None else None
    return {
        "memory_id": m.memory_id, "project_id": project, "key": m.key, "value": value,
        "metadata_json": json.dumps(m.metadata), "metadata": m.metadata, "ttl_seconds": ttl,
        "created_at": iso(m.updated_at), "last_accessed": iso(m.last_accessed), "accessed_count": m.accessed_count,
        "expires_at": iso(m.expires_at), "version": m.version,
    }


def _registered(sid: str, tool_id: str, body: dict[str, Any], status: str, pid: int) -> dict[str, Any]:
    return {
        "session_id": sid,
        "tool_id": tool_id,
        "tool_version": body.get("tool_version"),
        "status": status,
        "process_id": pid,
        "message": f"Reused existing session for process {pid}" if status == "existing" else "New session created",
    }


def _text(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise HTTPError(422, f"{field} must be a string")
    return value


def _required(body: dict[str, Any], field: str) -> str:
    value = _text(body, field)
    if value is None:
        raise HTTPError(422, f"{field} is required")
    return value


def _pid(body: dict[str, Any], peer_pid: Callable[[], int | None]) -> int:
    pid = body.get("process_id")
    if pid is None:
        pid = peer_pid()  # OmniMemory's own /sessions/start sends none: the caller owns it
        if pid is None:
            raise HTTPError(422, "process_id is required (the calling process could not be found)")
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise HTTPError(422, "process_id must be an integer")
    return pid
