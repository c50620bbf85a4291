"""What a session holds: context, project and session memories, messages, tasks, interactions, search."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from .fields import (
    MAX_BATCH,
    MAX_CONTENT,
    Content,
    Cursor,
    Embedding,
    Label,
    Limit,
    MemoryKey,
    Metadata,
    PathText,
    ProjectId,
    SessionId,
    TaskId,
)

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
    folded: int = 0
    """Of ``events``, how many compaction folded into per-subject aggregates (their rows are
    gone; the files, changes and counts above still include them)."""


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
    embedding: Embedding | None = None
    """The value's embedding, for memories.search_similar; a put without one drops the
    vector an earlier version had. Its length fixes the project's dimension on first use."""


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
    embedding: Embedding | None = None
    """The content's embedding (the session must belong to a project: see PutMemory)."""


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
