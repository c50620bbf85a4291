"""What each command prints with --json, as a type ``omnid schema COMMAND`` turns into a JSON
Schema (msgspec.json.schema): the client's wire structs where a command prints one as is,
and the structs below where it adds to one or prints its own object."""

from __future__ import annotations

from typing import Any, Literal, Union, get_args, get_origin

import msgspec
from msgspec import Struct

from omnid_client.protocol import (
    CleanupResult,
    DaemonMetrics,
    DaemonStatus,
    ReapResult,
    RetentionResult,
    RetentionStatus,
    ServiceStats,
    Settings,
)
from omnid_client.protocol.agent import Checkpoint, CheckpointInfo, ContextPack, Restored
from omnid_client.protocol.content import (
    Deleted,
    Memory,
    MemoryHistory,
    MessagePage,
    SearchHit,
    SessionContext,
    Task,
    TaskPage,
)
from omnid_client.protocol.events import Event
from omnid_client.protocol.records import ImportResult
from omnid_client.protocol.sessions import (
    GetOrCreateResult,
    Project,
    ProjectPage,
    Session,
    SessionDeleted,
    SessionOwner,
    SessionPage,
    SessionSummary,
)
from omnid_client.protocol.vectors import SimilarMemories

from ..offline.doctor import Report as DoctorReport
from ..offline.logread import LogRecord
from ..offline.service import Report as ServiceReport, ServiceFile, ServiceStatus
from ._style import is_time_key


class ErrorDetail(Struct):
    code: str
    """Machine-readable: "unavailable" (exit 3), "not_found", "invalid", "permission_denied", ..."""
    message: str
    pid: int | None = None
    """``serve``'s "already_running" only: the running daemon's pid."""


class Error(Struct):
    """What any command prints with --json when it fails (exit status 1, 3 or 4)."""

    error: ErrorDetail


class BusyMethod(Struct):
    method: str
    requests: int
    errors: int
    p50_seconds: float | None
    p99_seconds: float | None


class MetricsSummary(Struct):
    """What ``status`` and ``stats`` add from ``daemon.metrics`` (None from an older daemon)."""

    reuse_rate: float | None
    total_reuse_rate: float | None
    totals_since: float | None
    get_or_create: dict[str, dict[str, int]]
    """Outcomes ("created", "existing", "resumed") by tool, since start."""
    top_methods: list[BusyMethod]
    quantiles: str


class Running(DaemonStatus, kw_only=True):
    running: Literal[True]
    client_version: str
    version_note: str | None
    metrics: MetricsSummary | None


class Stats(ServiceStats, kw_only=True):
    metrics: MetricsSummary | None


class NotRunning(Struct):
    running: Literal[False]
    reason: str
    sockets_tried: list[str]


class Pid(Struct):
    pid: int


class Stopping(Struct):
    pid: int
    stopping: bool


class ConfigCheck(Struct):
    path: str
    exists: bool
    settings: Settings


class ConfigInvalid(Struct):
    path: str
    error: str


class SessionWithOwners(Session, kw_only=True):
    owners: list[SessionOwner]


class Found(Struct):
    session: Session | None


class Backup(Struct):
    path: str
    schema_version: int
    pages: int
    sessions: int
    memories: int
    integrity: Literal["ok"]
    bytes: int


class Exported(Struct):
    path: str
    records: dict[str, int]


class OmniMemoryImport(Struct):
    source: dict[str, Any]
    """What was read from the OmniMemory database: tables, sessions, context, memories, warnings."""
    import_: ImportResult = msgspec.field(name="import")


class RetentionRun(RetentionResult, kw_only=True):
    session_ids: list[str]


class TopRow(Struct):
    session_id: str
    tool_id: str
    owner_pid: int | None
    project_id: str | None
    project: str
    workspace: str | None
    started_at: float
    last_activity: float
    message_count: int
    total_tokens: int
    total_cost: float
    ended_at: float | None
    end_reason: str | None


class TopTotals(Struct):
    live: int
    by_tool: dict[str, int]
    ended_hour: int
    reaped_hour: int
    messages: int
    tokens: int
    cost: float


class TopMetrics(Struct):
    reuse_rate: float | None
    p50: float | None
    p99: float | None


class TopSnapshot(Struct):
    """``omnid top --json``: one snapshot of what the live view shows."""

    at: float
    event_seq: int
    metrics: TopMetrics | None
    totals: TopTotals
    sessions: list[TopRow]
    recent_endings: list[TopRow]


class Completion(Struct):
    shell: str
    script: str


SCHEMAS: dict[str, Any] = {
    "serve": Pid,
    "status": Union[Running, NotRunning],
    "stop": Stopping,
    "reap": ReapResult,
    "stats": Stats,
    "metrics": DaemonMetrics,
    "doctor": DoctorReport,
    "logs": LogRecord,  # one object per line
    "completion": Completion,
    "config check": Union[ConfigCheck, ConfigInvalid],
    "service install": ServiceReport,
    "service uninstall": ServiceReport,
    "service status": ServiceStatus,
    "service show": list[ServiceFile],
    "sessions list": SessionPage,
    "sessions show": SessionWithOwners,
    "sessions end": list[Session],
    "sessions summary": SessionSummary,
    "session start": GetOrCreateResult,
    "session find": Found,
    "session update": Session,
    **{f"session {flag}": Session for flag in ("pin", "unpin", "star", "unstar", "archive", "unarchive")},
    "session delete": SessionDeleted,
    "projects list": ProjectPage,
    "projects show": Project,
    "memories list": list[Memory],
    "memories get": Memory,
    "memories put": Memory,
    "memories delete": Deleted,
    "memories history": MemoryHistory,
    "memories similar": SimilarMemories,
    "context show": SessionContext,
    "context pack": ContextPack,
    "messages list": MessagePage,
    "tasks list": TaskPage,
    "tasks show": Task,
    "search": list[SearchHit],
    "checkpoint create": CheckpointInfo,
    "checkpoint list": list[CheckpointInfo],
    "checkpoint show": Checkpoint,
    "checkpoint restore": Restored,
    "events": Event,  # one object per line
    "top": TopSnapshot,
    "backup": Backup,
    "export": Exported,
    "import": ImportResult,
    "import-omnimemory": OmniMemoryImport,
    "retention run": RetentionRun,
    "retention status": Union[RetentionStatus, None],
    "cleanup orphans": CleanupResult,
    "error": Error,
}
"""Every command with --json, by its words. ``error`` is the failure shape all of them share."""

NO_JSON = {
    "init": "prints shell code to source",
    "hook": "speaks the agent's hook protocol (JSON on stdin, exit status)",
    "shell start": "internal to the code `omnid init` prints; prints a session id",
    "shell cd": "internal to the code `omnid init` prints",
    "shell end": "internal to the code `omnid init` prints",
    "mcp": "a stdio MCP server (JSON-RPC on stdin/stdout)",
    "compat omnimemory": "an HTTP server",
    "schema": "prints a JSON Schema already",
}
"""Commands without --json, and why."""


def schema(command: str) -> dict[str, Any]:
    """The JSON Schema of what ``omnid COMMAND --json`` prints; KeyError for another command.
    A union of untagged structs (which msgspec cannot decode, so will not describe) is an anyOf."""
    kind = SCHEMAS[command]
    if get_origin(kind) is Union and sum(isinstance(t, type) and issubclass(t, Struct) for t in get_args(kind)) > 1:
        parts, defs = msgspec.json.schema_components(get_args(kind))
        return _iso_times({"anyOf": list(parts), "$defs": defs})
    return _iso_times(msgspec.json.schema(kind))


def _iso_times(node: Any) -> Any:
    """The schema with each time field (``_style.is_time_key``, as ``--json`` finds them) a date-time
    string, as ``--json`` prints it, instead of the epoch seconds the struct holds."""
    if isinstance(node, list):
        return [_iso_times(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _iso_times(v) for k, v in node.items()}
    properties = out.get("properties")
    if isinstance(properties, dict):
        out["properties"] = {
            k: _date_time(v) if is_time_key(k) else v for k, v in properties.items()
        }
    return out


def _date_time(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("type") in ("number", "integer"):
            kept = {k: v for k, v in node.items() if k not in ("type", "minimum", "maximum", "default",
                                                                 "exclusiveMinimum", "exclusiveMaximum")}
            return {**kept, "type": "string", "format": "date-time"}
        if "anyOf" in node:
            return {**node, "anyOf": [_date_time(n) for n in node["anyOf"]]}
    return node
