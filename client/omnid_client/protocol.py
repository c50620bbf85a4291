"""The one definition of every omnid wire message, shared by the daemon and the clients.

A frame is a 4-byte big-endian length followed by that many bytes of MessagePack.
The first request on a connection is ``hello``; every request names its method and
carries that method's parameter struct, every response carries a result or an error.
"""

from __future__ import annotations

import struct
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

import msgspec
from msgspec import Meta, Struct

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0

MAX_FRAME = 1 << 20
"""Largest frame either side accepts, in bytes (header excluded)."""
MAX_METADATA_BYTES = 64 * 1024
"""Largest metadata document, in bytes of its JSON encoding (as stored)."""
MAX_VALUE_BYTES = 256 * 1024
"""Largest project-memory value, in bytes of its JSON encoding (as stored)."""
MAX_NESTING = 100
"""Deepest nesting of lists and maps in a metadata document or memory value: deeper ones
could be stored but not read back within Python's recursion limit."""
MAX_CONTENT = 256 * 1024
"""Longest message, interaction or session-memory content, in characters."""
MAX_BATCH = 500
"""Most messages or context events in one call."""

HEADER = struct.Struct(">I")

ToolId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]*$")]
ShortText = Annotated[str, Meta(max_length=256)]
PathText = Annotated[str, Meta(min_length=1, max_length=4096)]
SessionId = Annotated[str, Meta(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
Pid = int  # range depends on the OS, checked by the daemon
Limit = Annotated[int, Meta(ge=1, le=1000)]
Content = Annotated[str, Meta(max_length=MAX_CONTENT)]
Label = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
ProjectId = Annotated[str, Meta(pattern=r"^prj_[0-9a-f]{12}$")]
MemoryKey = Annotated[str, Meta(min_length=1, max_length=256)]
TaskId = Annotated[str, Meta(pattern=r"^task_[0-9a-f]{16}$")]
Cursor = Annotated[str, Meta(max_length=256)]
Metadata = dict[str, Any]
SessionStatus = Literal["live", "ended", "all"]
EndReason = Literal["ended", "reaped", "expired"]


class RequestFrame(Struct):
    """A request as sent; ``params`` is the method's parameter struct."""

    id: int
    method: str
    params: Any = {}


class IncomingRequest(Struct):
    """A request as received; ``params`` stays undecoded until the method is known."""

    id: int
    method: str
    params: msgspec.Raw = msgspec.Raw(b"\x80")


class ErrorInfo(Struct):
    code: str
    message: str
    details: dict[str, Any] = {}


class ResponseFrame(Struct, omit_defaults=True):
    """A response as sent; exactly one of ``result`` and ``error`` is meaningful."""

    id: int
    result: Any = None
    error: ErrorInfo | None = None


class IncomingResponse(Struct):
    id: int
    result: msgspec.Raw = msgspec.Raw(b"\xc0")
    error: ErrorInfo | None = None


T = TypeVar("T")


class Reply(Struct, Generic[T]):
    """A response as received by a caller that knows the result type: decoded in one pass."""

    id: int
    result: T | None = None
    error: ErrorInfo | None = None


# --- handshake -------------------------------------------------------------------


class Hello(Struct):
    proto_major: int
    proto_minor: int
    client_version: ShortText
    client_name: ShortText = ""


class Welcome(Struct):
    proto_major: int
    proto_minor: int
    server_version: str
    pid: int


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as release ``a`` is older than, the same as, or newer than ``b``
    (numeric dot-separated parts; a pre-release suffix sorts before its release)."""

    def key(version: str) -> tuple:
        parts = []
        for part in version.split("+")[0].split("."):
            digits = len(part) - len(part.lstrip("0123456789"))
            number = int(part[:digits]) if digits else -1
            # "1rc1" < "1": a part with a suffix sorts before the bare number.
            parts.append((number, 0 if part[digits:] else 1, part[digits:]))
        while parts and parts[-1] == (0, 1, ""):
            parts.pop()
        return tuple(parts)

    ka, kb = key(a), key(b)
    return (ka > kb) - (ka < kb)


def version_note(client_version: str, daemon_version: str) -> str | None:
    """What to tell someone whose client and daemon are different releases, naming the
    older side; None when they are the same release."""
    order = compare_versions(client_version, daemon_version)
    if order == 0:
        return None
    if order > 0:
        return (
            f"the omnid daemon ({daemon_version}) is older than this client ({client_version}); "
            "it restarts itself when its package is upgraded, otherwise run `omnid stop` and the "
            "next call starts the installed version"
        )
    return (
        f"this client ({client_version}) is older than the omnid daemon ({daemon_version}); "
        "upgrade the client package (omnid or omnid-client)"
    )


# --- sessions --------------------------------------------------------------------


class Session(Struct):
    session_id: str
    tool_id: str
    tool_version: str | None
    session_type: str
    owner_pid: int | None
    owner_start: int | None
    boot_id: str | None
    workspace: str | None
    metadata: dict[str, Any]
    started_at: float
    last_activity: float
    ended_at: float | None = None
    end_reason: EndReason | None = None
    project_id: str | None = None
    message_count: int = 0
    total_tokens: int = 0
    total_cost: float = 0.0

    @property
    def live(self) -> bool:
        return self.ended_at is None


class GetOrCreate(Struct):
    tool_id: ToolId
    pid: Pid | None = None
    tool_version: ShortText | None = None
    workspace: PathText | None = None
    session_type: Annotated[str, Meta(min_length=1, max_length=64)] = "default"
    metadata: dict[str, Any] = {}
    dedup: bool = True
    owner_must_be_ancestor: bool = False
    """For helpers acting for their parent (a shell hook): ``pid`` must be the caller itself
    or one of its ancestors, so a stale or mistyped pid cannot bind someone else's process."""


class GetOrCreateResult(Struct):
    status: Literal["created", "existing"]
    session: Session


class Find(Struct):
    tool_id: ToolId
    pid: Pid | None = None


class FindResult(Struct):
    session: Session | None


class SessionRef(Struct):
    session_id: SessionId


class ListSessions(Struct):
    tool_id: ToolId | None = None
    session_type: Annotated[str, Meta(max_length=64)] | None = None
    status: SessionStatus = "all"
    workspace: PathText | None = None
    limit: Limit = 50
    cursor: Annotated[str, Meta(max_length=256)] | None = None


class SessionPage(Struct):
    sessions: list[Session]
    next_cursor: str | None = None


# --- projects --------------------------------------------------------------------


class Project(Struct):
    project_id: str
    root: str
    name: str
    vcs: str | None
    created_at: float
    last_activity: float
    session_count: int = 0
    live_sessions: int = 0
    memory_count: int = 0


class ListProjects(Struct):
    limit: Limit = 50
    cursor: Cursor | None = None


class ProjectPage(Struct):
    projects: list[Project]
    next_cursor: str | None = None


class ProjectRef(Struct):
    """A project named by id, or by any path inside it (its VCS root, else the path)."""

    project_id: ProjectId | None = None
    workspace: PathText | None = None


# --- session context ---------------------------------------------------------------

ContextKind = Literal["file_access", "search", "decision", "memory_ref", "file_change"]


class ContextEvent(Struct, omit_defaults=True):
    """One thing that happened in a session. ``subject`` is the path (file_access,
    file_change), the query (search), the decision text, or the memory id or key (memory_ref)."""

    kind: ContextKind
    subject: Annotated[str, Meta(min_length=1, max_length=8192)]
    importance: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    detail: Annotated[str, Meta(max_length=8192)] | None = None


class AppendContext(Struct):
    session_id: SessionId
    events: Annotated[list[ContextEvent], Meta(min_length=1, max_length=MAX_BATCH)]


class Appended(Struct):
    appended: int
    event_count: int


class GetContext(Struct):
    session_id: SessionId
    max_files: Limit = 100
    max_searches: Limit = 20
    max_decisions: Limit = 50
    max_memories: Limit = 50
    max_changes: Limit = 100


class FileContext(Struct):
    path: str
    importance: float
    accesses: int
    first_access: float
    last_access: float


class SearchContext(Struct):
    query: str
    at: float
    detail: str | None = None


class DecisionContext(Struct):
    text: str
    at: float
    detail: str | None = None


class MemoryContext(Struct):
    ref: str
    at: float
    source: Literal["memory_ref", "session_memory"]
    memory_type: str | None = None
    content: str | None = None


class FileChange(Struct):
    path: str
    change: str | None
    changes: int
    at: float


class ContextSize(Struct):
    events: int
    bytes: int
    truncated: bool


class SessionContext(Struct):
    session_id: str
    files: list[FileContext]
    searches: list[SearchContext]
    decisions: list[DecisionContext]
    memories: list[MemoryContext]
    changes: list[FileChange]
    size: ContextSize


# --- project memories ---------------------------------------------------------------


class Memory(Struct):
    memory_id: str
    project_id: str
    key: str
    value: Any
    metadata: Metadata
    version: int
    created_at: float
    updated_at: float
    expires_at: float | None
    accessed_count: int
    last_accessed: float | None


class PutMemory(Struct):
    key: MemoryKey
    value: Any
    project_id: ProjectId | None = None
    workspace: PathText | None = None
    metadata: Metadata = {}
    ttl: Annotated[float, Meta(gt=0, le=10 * 365 * 86400)] | None = None


class MemoryKeyRef(Struct):
    key: MemoryKey
    project_id: ProjectId | None = None
    workspace: PathText | None = None


class ListMemories(Struct):
    project_id: ProjectId | None = None
    workspace: PathText | None = None
    limit: Limit = 50


class MemoryList(Struct):
    memories: list[Memory]


class MemoryVersion(Struct):
    version: int
    value: Any
    metadata: Metadata
    created_at: float
    expires_at: float | None


class MemoryHistory(Struct):
    memory_id: str
    key: str
    versions: list[MemoryVersion]
    """Oldest first; the last is the current value."""


class Deleted(Struct):
    deleted: int


# --- session memories ---------------------------------------------------------------


class SessionMemory(Struct):
    memory_id: str
    session_id: str
    memory_type: str
    content: str
    metadata: Metadata
    created_at: float


class AddSessionMemory(Struct):
    session_id: SessionId
    content: Annotated[str, Meta(min_length=1, max_length=MAX_CONTENT)]
    memory_type: Label = "note"
    metadata: Metadata = {}


class SessionMemoryList(Struct):
    memories: list[SessionMemory]


# --- messages ------------------------------------------------------------------------

Role = Literal["user", "assistant", "system", "tool"]


class NewMessage(Struct):
    role: Role
    content: Content
    message_type: Label = "text"
    metadata: Metadata = {}
    tokens_used: Annotated[int, Meta(ge=0, le=2**40)] = 0
    cost_usd: Annotated[float, Meta(ge=0, le=1e6)] = 0.0


class Message(Struct):
    message_id: int
    session_id: str
    seq: int
    role: Role
    content: str
    message_type: str
    metadata: Metadata
    tokens_used: int
    cost_usd: float
    created_at: float


class AddMessages(Struct):
    session_id: SessionId
    messages: Annotated[list[NewMessage], Meta(min_length=1, max_length=MAX_BATCH)]


class MessagesAdded(Struct):
    message_ids: list[int]
    message_count: int
    total_tokens: int
    total_cost: float


class ListMessages(Struct):
    session_id: SessionId
    limit: Limit = 100
    after_seq: Annotated[int, Meta(ge=0)] = 0


class MessagePage(Struct):
    messages: list[Message]
    next_after_seq: int | None = None


class SessionSummary(Struct):
    session_id: str
    tool_id: str
    project_id: str | None
    live: bool
    message_count: int
    total_tokens: int
    total_cost: float
    messages_by_role: dict[str, int]
    task_count: int
    context_events: int
    has_memory: bool
    started_at: float
    last_activity: float
    ended_at: float | None
    first_message_at: float | None
    last_message_at: float | None
    duration: float


class ServiceStats(Struct):
    sessions: int
    live_sessions: int
    ended_sessions: int
    projects: int
    messages: int
    total_tokens: int
    total_cost: float
    project_memories: int
    session_memories: int
    tasks: int
    open_tasks: int
    avg_messages_per_session: float
    avg_tokens_per_session: float
    avg_session_seconds: float | None
    sessions_by_tool: dict[str, int]


# --- tasks ---------------------------------------------------------------------------

TaskStatus = Literal["open", "done", "failed", "cancelled"]


class Interaction(Struct):
    interaction_id: int
    task_id: str
    kind: str
    content: str
    metadata: Metadata
    created_at: float


class Task(Struct):
    task_id: str
    session_id: str
    title: str
    status: TaskStatus
    external_id: str | None
    metadata: Metadata
    created_at: float
    updated_at: float
    ended_at: float | None
    interaction_count: int = 0
    interactions: list[Interaction] | None = None


class CreateTask(Struct):
    session_id: SessionId
    title: Annotated[str, Meta(min_length=1, max_length=1024)]
    external_id: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    metadata: Metadata = {}


class UpdateTask(Struct):
    task_id: TaskId
    status: TaskStatus | None = None
    title: Annotated[str, Meta(min_length=1, max_length=1024)] | None = None
    metadata: Metadata | None = None


class TaskRef(Struct):
    task_id: TaskId
    max_interactions: Limit = 200


class ListTasks(Struct):
    session_id: SessionId | None = None
    status: TaskStatus | None = None
    external_id: Annotated[str, Meta(max_length=256)] | None = None
    limit: Limit = 50
    cursor: Cursor | None = None


class TaskPage(Struct):
    tasks: list[Task]
    next_cursor: str | None = None


class AddInteraction(Struct):
    task_id: TaskId
    content: Content
    kind: Label = "note"
    metadata: Metadata = {}


class CleanupOrphans(Struct):
    older_than: Annotated[float, Meta(ge=0)]
    """Seconds: only sessions that started at least this long ago."""
    dry_run: bool = False


class CleanupResult(Struct):
    dry_run: bool
    session_ids: list[str]


# --- search --------------------------------------------------------------------------

SearchKind = Literal["message", "memory", "session_memory", "decision"]


class Search(Struct):
    query: Annotated[str, Meta(min_length=1, max_length=1024)]
    project_id: ProjectId | None = None
    session_id: SessionId | None = None
    kinds: list[SearchKind] | None = None
    limit: Limit = 20


class SearchHit(Struct):
    kind: SearchKind
    ref_id: str
    session_id: str | None
    project_id: str | None
    snippet: str
    score: float
    created_at: float


class SearchResult(Struct):
    hits: list[SearchHit]


# --- export, import and retention ----------------------------------------------------
# One record per JSONL line of an export (``type`` names the kind), and the same records
# travel in ``maintenance.import`` batches. A session's content follows it as its own
# records, in order (``seq``), so no record has to hold a whole session.

EXPORT_FORMAT = 1
Timestamp = Annotated[float, Meta(ge=0, le=1e11)]
"""UTC epoch seconds."""
MemoryId = Annotated[str, Meta(pattern=r"^mem_[0-9a-f]{12}$")]
SessionMemoryId = Annotated[str, Meta(pattern=r"^smem_[0-9a-f]{12}$")]
Seq = Annotated[int, Meta(ge=1)]
Count = Annotated[int, Meta(ge=0, le=2**62)]


class ExportHeader(Struct, tag="omnid-export", tag_field="type"):
    """Starts an export (and each run appended to a retention archive)."""

    format: int = EXPORT_FORMAT


class ProjectRecord(Struct, tag="project", tag_field="type"):
    project_id: ProjectId
    root: PathText
    name: Annotated[str, Meta(max_length=4096)]
    vcs: Annotated[str, Meta(max_length=64)] | None
    created_at: Timestamp
    last_activity: Timestamp


class MemoryRecord(Struct, tag="memory", tag_field="type"):
    """A project memory as it is now; its versions follow as ``memory_version`` records."""

    memory_id: MemoryId
    project_id: ProjectId
    key: MemoryKey
    value: Any
    metadata: Metadata
    version: Seq
    created_at: Timestamp
    updated_at: Timestamp
    expires_at: Timestamp | None
    accessed_count: Count
    last_accessed: Timestamp | None


class MemoryVersionRecord(Struct, tag="memory_version", tag_field="type"):
    memory_id: MemoryId
    version: Seq
    value: Any
    metadata: Metadata
    created_at: Timestamp
    expires_at: Timestamp | None


class SessionRecord(Struct, tag="session", tag_field="type"):
    session_id: SessionId
    tool_id: ToolId
    tool_version: ShortText | None
    session_type: Annotated[str, Meta(min_length=1, max_length=64)]
    owner_pid: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None
    owner_start: Annotated[int, Meta(ge=0, le=2**62)] | None
    boot_id: ShortText | None
    dedup: bool
    workspace: PathText | None
    metadata: Metadata
    started_at: Timestamp
    last_activity: Timestamp
    ended_at: Timestamp | None
    end_reason: EndReason | None
    project_id: ProjectId | None
    message_count: Count
    total_tokens: Count
    total_cost_nanos: Count


class ContextRecord(Struct, tag="context", tag_field="type"):
    """The ``seq``-th context event of its session."""

    session_id: SessionId
    seq: Seq
    kind: ContextKind
    subject: Annotated[str, Meta(min_length=1, max_length=8192)]
    importance: Annotated[float, Meta(ge=0.0, le=1.0)] | None
    detail: Annotated[str, Meta(max_length=8192)] | None
    created_at: Timestamp


class MessageRecord(Struct, tag="message", tag_field="type"):
    session_id: SessionId
    seq: Seq
    role: Role
    content: Content
    message_type: Label
    metadata: Metadata
    tokens_used: Annotated[int, Meta(ge=0, le=2**40)]
    cost_nanos: Count
    created_at: Timestamp


class SessionMemoryRecord(Struct, tag="session_memory", tag_field="type"):
    memory_id: SessionMemoryId
    session_id: SessionId
    memory_type: Label
    content: Annotated[str, Meta(min_length=1, max_length=MAX_CONTENT)]
    metadata: Metadata
    created_at: Timestamp


class TaskRecord(Struct, tag="task", tag_field="type"):
    task_id: TaskId
    session_id: SessionId
    title: Annotated[str, Meta(min_length=1, max_length=1024)]
    status: TaskStatus
    external_id: Annotated[str, Meta(min_length=1, max_length=256)] | None
    metadata: Metadata
    created_at: Timestamp
    updated_at: Timestamp
    ended_at: Timestamp | None


class InteractionRecord(Struct, tag="interaction", tag_field="type"):
    """The ``seq``-th interaction of its task."""

    task_id: TaskId
    seq: Seq
    kind: Label
    content: Content
    metadata: Metadata
    created_at: Timestamp


Record = Union[
    ExportHeader,
    ProjectRecord,
    MemoryRecord,
    MemoryVersionRecord,
    SessionRecord,
    ContextRecord,
    MessageRecord,
    SessionMemoryRecord,
    TaskRecord,
    InteractionRecord,
]
RECORD_TYPES = tuple(t.__struct_config__.tag for t in Record.__args__)  # type: ignore[attr-defined]


class ImportRecords(Struct):
    """One batch, written all or nothing. ``lines`` (optional, one per record) are the
    records' line numbers in the caller's file, named in errors."""

    records: Annotated[list[Record], Meta(min_length=1, max_length=10_000)]
    lines: list[int] = []
    dry_run: bool = False


class ImportCounts(Struct):
    imported: int = 0
    existing: int = 0
    skipped: dict[str, int] = {}
    """Records not imported, by reason (e.g. ``expired``, ``key_taken``)."""


class ImportResult(Struct):
    dry_run: bool
    records: dict[str, ImportCounts]
    """By record type."""
    reaped: list[str] = []
    """Sessions imported live whose owner process is gone, or is not one the importing
    caller may bind a session to: ended as ``reaped``."""
    why: dict[str, str] = {}
    """Why each session in ``reaped`` was ended (new in 1.x daemons; empty from older ones)."""


class RunRetention(Struct):
    older_than: Annotated[float, Meta(ge=0)] | None = None
    """Seconds since a session ended; default: the daemon's configured retention."""
    archive: PathText | None = None
    """Append the sessions to this JSONL file before deleting them (default: the
    daemon's archive file). Absolute path."""
    purge: bool = False
    """Delete without archiving."""
    dry_run: bool = False
    limit: Limit = 500


class RetentionResult(Struct):
    dry_run: bool
    cutoff: float
    """Sessions that ended before this (UTC epoch seconds) were chosen."""
    session_ids: list[str]
    archive: str | None
    remaining: int
    """Sessions past the cutoff left for another call (more than ``limit``)."""


class RetentionRun(Struct):
    at: float
    trigger: Literal["timer", "manual"]
    cutoff: float
    deleted: int
    archive: str | None
    error: str | None = None


class RetentionStatus(Struct):
    age: float | None
    """Seconds after which ended sessions are archived and deleted; None keeps them."""
    archive: str
    runs: int = 0
    archived: int = 0
    purged: int = 0
    failures: int = 0
    last_run: RetentionRun | None = None
    next_run: float | None = None


# --- daemon ----------------------------------------------------------------------


class Empty(Struct):
    pass


class Reap(Struct):
    dry_run: bool = False


class ReapedSession(Struct):
    session_id: str
    tool_id: str
    owner_pid: int | None
    cause: str


class ReapResult(Struct):
    dry_run: bool
    at: float
    sessions: list[ReapedSession]


class LastReap(Struct):
    at: float
    trigger: str
    reaped: int


class Settings(Struct, kw_only=True):
    """The daemon's settings, read from its TOML config file (durations in seconds)."""

    sweep_interval: Annotated[float, Meta(ge=30, le=86400)] = 60.0
    """How often every live session's owner is re-checked as a safety net."""
    idle_expiry: Annotated[float, Meta(ge=0, le=10 * 365 * 86400)] = 0.0
    """End live sessions whose owner cannot be checked after this long without activity; 0 = never."""
    retention: Annotated[float, Meta(ge=0, le=100 * 365 * 86400)] = 0.0
    """How long ended sessions are kept; 0 = forever."""
    durability: Literal["normal", "full"] = "normal"
    """SQLite ``synchronous``: "full" also survives power loss, at a cost per commit."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_database_bytes: Annotated[int, Meta(ge=0, le=2**50)] = 2 * 1024**3
    """The storage quota: past this many bytes of used database pages, writes that add data
    fail with a StorageError (reason "quota"); reads, ends and deletions go on. 0 = none."""


class DaemonStatus(Struct):
    pid: int
    version: str
    protocol: str
    started_at: float
    uptime: float
    home: str
    socket: str
    database: str
    database_bytes: int
    wal_bytes: int
    schema_version: int
    log: str | None
    watcher: Literal["pidfd", "kqueue", "polling"]
    live_sessions: int
    watched_processes: int
    connections: int
    last_reap: LastReap | None
    retention: RetentionStatus | None = None
    socket_source: str | None = None
    """How the daemon got its socket: "bound", or "systemd" when inherited from the service manager."""
    managed_by: Literal["systemd", "launchd"] | None = None
    log_target: str | None = None
    """Where log lines go: "journald", "stderr", or "file PATH (...)"."""
    config_path: str | None = None
    config_state: Literal["default", "loaded", "invalid"] | None = None
    """"default": no config file, built-in settings; "invalid": the last read failed and the
    settings before it stay in force (see ``config_error``)."""
    config_error: str | None = None
    config_loaded_at: float | None = None
    settings: Settings | None = None
    synchronous: str | None = None
    """The database connection's ``PRAGMA synchronous`` as applied ("normal" or "full")."""
    upgrade_error: str | None = None
    """Why the daemon did not restart into a changed installed package, if it did not."""
    set_aside: list[str] = []
    """Files of a corrupt database this daemon found at start and moved aside (kept)."""
    pidfd_watches: int | None = None
    """Owner processes whose exit is an event (one pidfd each); the other watched processes
    are checked by the periodic sweep. None where exit watches cost no file descriptor."""
    pidfd_budget: int | None = None
    """Most pidfds the daemon spends on owners (see ``PIDFD_SHARE``); None: no limit."""
    database_used_bytes: int | None = None
    """Bytes of database pages in use (free pages not counted): what the quota limits."""
    database_quota: int | None = None
    """The storage quota in bytes (``max_database_bytes``); None: no quota."""
    storage_error: str | None = None
    """Why writes are refused right now (over the quota, database file gone), if they are."""


class Method(Struct, frozen=True):
    params: type
    result: type
    writes: bool
    idempotent: bool = True


METHODS: dict[str, Method] = {
    # Opens its own write only when it creates: reuse must not wait for a commit.
    "session.get_or_create": Method(GetOrCreate, GetOrCreateResult, writes=False),
    "session.find": Method(Find, FindResult, writes=False),
    "session.heartbeat": Method(SessionRef, Session, writes=True),
    "session.end": Method(SessionRef, Session, writes=True),
    "session.get": Method(SessionRef, Session, writes=False),
    "session.list": Method(ListSessions, SessionPage, writes=False),
    "daemon.status": Method(Empty, DaemonStatus, writes=False),
    "daemon.reap": Method(Reap, ReapResult, writes=True),
    "daemon.shutdown": Method(Empty, Empty, writes=False, idempotent=False),
    "daemon.stats": Method(Empty, ServiceStats, writes=False),
    "project.list": Method(ListProjects, ProjectPage, writes=False),
    "project.get": Method(ProjectRef, Project, writes=False),
    "context.append": Method(AppendContext, Appended, writes=True, idempotent=False),
    "context.get": Method(GetContext, SessionContext, writes=False),
    "memory.put": Method(PutMemory, Memory, writes=True, idempotent=False),
    "memory.get": Method(MemoryKeyRef, Memory, writes=True),
    "memory.list": Method(ListMemories, MemoryList, writes=False),
    "memory.delete": Method(MemoryKeyRef, Deleted, writes=True),
    "memory.history": Method(MemoryKeyRef, MemoryHistory, writes=False),
    "session_memory.add": Method(AddSessionMemory, SessionMemory, writes=True, idempotent=False),
    "session_memory.list": Method(SessionRef, SessionMemoryList, writes=False),
    "message.add": Method(AddMessages, MessagesAdded, writes=True, idempotent=False),
    "message.list": Method(ListMessages, MessagePage, writes=False),
    "session.summary": Method(SessionRef, SessionSummary, writes=False),
    "task.create": Method(CreateTask, Task, writes=True, idempotent=False),
    "task.update": Method(UpdateTask, Task, writes=True),
    "task.get": Method(TaskRef, Task, writes=False),
    "task.list": Method(ListTasks, TaskPage, writes=False),
    "interaction.add": Method(AddInteraction, Interaction, writes=True, idempotent=False),
    "maintenance.cleanup_orphans": Method(CleanupOrphans, CleanupResult, writes=True),
    "search": Method(Search, SearchResult, writes=False),
    "maintenance.import": Method(ImportRecords, ImportResult, writes=True),
    "maintenance.retention": Method(RunRetention, RetentionResult, writes=True, idempotent=False),
}
"""Every RPC method: its parameter and result types, whether the daemon runs it inside
one write transaction (its reply then waits for the commit), and whether a client may
resend it after a lost connection without changing the outcome."""
