"""The one definition of every omnid wire message, shared by the daemon and the clients.

A frame is a 4-byte big-endian length followed by that many bytes of MessagePack.
The first request on a connection is ``hello``; every request names its method and
carries that method's parameter struct, every response carries a result or an error.
"""

from __future__ import annotations

import struct
from typing import Annotated, Any, Literal

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
    set_aside: list[str] = []
    """Files of a corrupt database this daemon found at start and moved aside (kept)."""


class Method(Struct, frozen=True):
    params: type
    result: type
    writes: bool
    idempotent: bool = True


METHODS: dict[str, Method] = {
    "session.get_or_create": Method(GetOrCreate, GetOrCreateResult, writes=True),
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
}
"""Every RPC method: its parameter and result types, whether it writes, and whether
a client may resend it after a lost connection without changing the outcome."""
