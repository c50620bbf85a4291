"""Every omnid call as a pure builder of a typed ``Call[T]``; ``Client`` and ``AsyncClient``
methods of the same name make them (their docstrings say what each call does)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

from ._context_calls import (
    _project,
    append_context as append_context,
    create_checkpoint as create_checkpoint,
    get_context as get_context,
    list_checkpoints as list_checkpoints,
    pack_context as pack_context,
    restore_checkpoint as restore_checkpoint,
    show_checkpoint as show_checkpoint,
)
from ._core import Call
from .errors import Unsupported
from .protocol import (
    AddInteraction,
    AddMessages,
    AddSessionMemory,
    ArchivedFilter,
    CleanupOrphans,
    CleanupResult,
    CreateTask,
    DaemonMetrics,
    DaemonStatus,
    Deleted,
    DeleteSession,
    Empty,
    Find,
    FindResult,
    GetOrCreate,
    GetOrCreateResult,
    IdKind,
    IdMatches,
    ImportRecords,
    ImportResult,
    Interaction,
    ListMemories,
    ListMessages,
    ListProjects,
    ListSessions,
    ListTasks,
    Memory,
    MemoryHistory,
    MemoryKeyRef,
    MemoryList,
    MessagePage,
    MessagesAdded,
    NewMessage,
    Project,
    ProjectPage,
    ProjectRef,
    PutMemory,
    Reap,
    ReapResult,
    Record,
    ResolveIds,
    RetentionResult,
    Role,
    RunRetention,
    Search,
    SearchHit,
    SearchKind,
    SearchResult,
    SearchSimilar,
    ServiceStats,
    Session,
    SessionDeleted,
    SessionMemory,
    SessionMemoryList,
    SessionOwners,
    SessionPage,
    SessionRef,
    SessionStatus,
    SessionSummary,
    SimilarMemories,
    Task,
    TaskPage,
    TaskRef,
    TaskStatus,
    UpdateSession,
    UpdateTask,
    VectorEngine,
    VectorKind,
)

# -- sessions ------------------------------------------------------------------------------


def get_or_create(
    tool_id: str,
    *,
    pid: int | None = None,
    tool_version: str | None = None,
    workspace: str | None = None,
    session_type: str = "default",
    metadata: dict[str, Any] | None = None,
    dedup: bool = True,
    owner_must_be_ancestor: bool = False,
    resume_key: str | None = None,
    resume_ended: bool = False,
    track_workspace: bool = False,
) -> Call[GetOrCreateResult]:
    params = GetOrCreate(
        tool_id, pid, tool_version, workspace, session_type, metadata or {}, dedup, owner_must_be_ancestor,
        resume_key, resume_ended, track_workspace,
    )
    if resume_key is None:
        return Call("session.get_or_create", params, GetOrCreateResult, idempotent=dedup)
    return Call(
        "session.get_or_create", params, GetOrCreateResult, shape=_keyed(resume_key), idempotent=True
    )


def _keyed(resume_key: str) -> Callable[[GetOrCreateResult], GetOrCreateResult]:
    def check(result: GetOrCreateResult) -> GetOrCreateResult:
        # A daemon from before resume keys ignores the key: say so rather than pretend.
        if result.session.resume_key != resume_key:
            raise Unsupported(
                "the omnid daemon does not know resume keys (it is older than this client): upgrade omnid",
                {"field": "resume_key", "session_id": result.session.session_id},
            )
        return result

    return check


def _found(result: FindResult) -> Session | None:
    return result.session


def find(
    tool_id: str, *, pid: int | None = None, resume_key: str | None = None, resume_ended: bool = False
) -> Call[Session | None]:
    return Call("session.find", Find(tool_id, pid, resume_key, resume_ended), FindResult, shape=_found)


def heartbeat(session_id: str) -> Call[Session]:
    return Call("session.heartbeat", SessionRef(session_id), Session)


def end(session_id: str) -> Call[Session]:
    return Call("session.end", SessionRef(session_id), Session)


def get(session_id: str) -> Call[Session]:
    return Call("session.get", SessionRef(session_id), Session)


def list_sessions(
    *,
    tool_id: str | None = None,
    session_type: str | None = None,
    status: SessionStatus = "all",
    workspace: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    tag: str | None = None,
    archived: ArchivedFilter = "exclude",
    pinned: bool | None = None,
    project_id: str | None = None,
) -> Call[SessionPage]:
    params = ListSessions(tool_id, session_type, status, workspace, limit, cursor, tag, archived, pinned, project_id)
    return Call("session.list", params, SessionPage)


def update_session(
    session_id: str,
    *,
    title: str | None = None,
    tags: list[str] | None = None,
    add_tags: list[str] | None = None,
    remove_tags: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    replace_metadata: bool = False,
    pinned: bool | None = None,
    archived: bool | None = None,
) -> Call[Session]:
    params = UpdateSession(
        session_id, title, None if tags is None else list(tags), list(add_tags or []), list(remove_tags or []),
        metadata, replace_metadata, pinned, archived,
    )
    return Call("session.update", params, Session)


def delete_session(session_id: str, *, force: bool = False) -> Call[SessionDeleted]:
    return Call("session.delete", DeleteSession(session_id, force), SessionDeleted)


def session_owners(session_id: str) -> Call[SessionOwners]:
    return Call("session.owners", SessionRef(session_id), SessionOwners)


def session_summary(session_id: str) -> Call[SessionSummary]:
    return Call("session.summary", SessionRef(session_id), SessionSummary)


# -- the daemon ----------------------------------------------------------------------------


def status() -> Call[DaemonStatus]:
    return Call("daemon.status", Empty(), DaemonStatus)


def reap(*, dry_run: bool = False) -> Call[ReapResult]:
    return Call("daemon.reap", Reap(dry_run), ReapResult, idempotent=True)


def stats() -> Call[ServiceStats]:
    return Call("daemon.stats", Empty(), ServiceStats)


def metrics() -> Call[DaemonMetrics]:
    return Call("daemon.metrics", Empty(), DaemonMetrics)


def cleanup_orphans(older_than: float, *, dry_run: bool = False) -> Call[CleanupResult]:
    return Call("maintenance.cleanup_orphans", CleanupOrphans(older_than, dry_run), CleanupResult)


def shutdown() -> Call[Empty]:
    return Call("daemon.shutdown", Empty(), Empty)


def resolve_ids(kind: IdKind, prefix: str, *, limit: int = 10) -> Call[IdMatches]:
    return Call("ids.resolve", ResolveIds(kind, prefix, limit), IdMatches)


# -- projects ------------------------------------------------------------------------------


def list_projects(*, limit: int = 50, cursor: str | None = None) -> Call[ProjectPage]:
    return Call("project.list", ListProjects(limit, cursor), ProjectPage)


def get_project(project_id: str | None = None, *, workspace: str | None = None) -> Call[Project]:
    return Call("project.get", ProjectRef(*_project(project_id, workspace)), Project)


# -- project memories ----------------------------------------------------------------------


def put_memory(
    key: str,
    value: Any,
    *,
    project_id: str | None = None,
    workspace: str | None = None,
    metadata: dict[str, Any] | None = None,
    ttl: float | None = None,
    embedding: EmbeddingLike | None = None,
) -> Call[Memory]:
    project = _project(project_id, workspace)
    params = PutMemory(key, value, *project, metadata or {}, ttl, _embedding(embedding))
    return Call("memory.put", params, Memory)


def get_memory(key: str, *, project_id: str | None = None, workspace: str | None = None) -> Call[Memory]:
    return Call("memory.get", MemoryKeyRef(key, *_project(project_id, workspace)), Memory)


def _memories(result: MemoryList) -> list[Memory]:
    return result.memories


def list_memories(
    *, project_id: str | None = None, workspace: str | None = None, limit: int = 50
) -> Call[list[Memory]]:
    project = _project(project_id, workspace)
    return Call("memory.list", ListMemories(*project, limit), MemoryList, shape=_memories)


def delete_memory(key: str, *, project_id: str | None = None, workspace: str | None = None) -> Call[Deleted]:
    return Call("memory.delete", MemoryKeyRef(key, *_project(project_id, workspace)), Deleted)


def memory_history(key: str, *, project_id: str | None = None, workspace: str | None = None) -> Call[MemoryHistory]:
    return Call("memory.history", MemoryKeyRef(key, *_project(project_id, workspace)), MemoryHistory)


EmbeddingLike = Union[Sequence[float], bytes, bytearray, memoryview]
"""A vector as floats (a list, an ``array.array``), or packed little-endian float32 bytes."""


def _embedding(vector: EmbeddingLike | None) -> list[float] | bytes | None:
    if vector is None or isinstance(vector, bytes):
        return vector
    if isinstance(vector, (bytearray, memoryview)):
        return bytes(vector)
    return [float(x) for x in vector]


def search_similar(
    vector: EmbeddingLike | None = None,
    *,
    text: str | None = None,
    k: int = 10,
    project_id: str | None = None,
    workspace: str | None = None,
    min_score: float | None = None,
    kinds: list[VectorKind] | None = None,
    engine: VectorEngine = "auto",
) -> Call[SimilarMemories]:
    if (vector is None) == (text is None):
        raise TypeError("search_similar needs exactly one of vector and text")
    params = SearchSimilar(_embedding(vector), k, *_project(project_id, workspace), min_score, kinds, engine, text)
    return Call("memories.search_similar", params, SimilarMemories)


# -- session memories ----------------------------------------------------------------------


def add_session_memory(
    session_id: str,
    content: str,
    *,
    memory_type: str = "note",
    metadata: dict[str, Any] | None = None,
    embedding: EmbeddingLike | None = None,
) -> Call[SessionMemory]:
    params = AddSessionMemory(session_id, content, memory_type, metadata or {}, _embedding(embedding))
    return Call("session_memory.add", params, SessionMemory)


def _session_memories(result: SessionMemoryList) -> list[SessionMemory]:
    return result.memories


def list_session_memories(session_id: str) -> Call[list[SessionMemory]]:
    return Call("session_memory.list", SessionRef(session_id), SessionMemoryList, shape=_session_memories)


# -- messages ------------------------------------------------------------------------------


def add_messages(session_id: str, messages: list[NewMessage]) -> Call[MessagesAdded]:
    return Call("message.add", AddMessages(session_id, list(messages)), MessagesAdded)


def add_message(
    session_id: str,
    role: Role,
    content: str,
    *,
    message_type: str = "text",
    metadata: dict[str, Any] | None = None,
    tokens_used: int = 0,
    cost_usd: float = 0.0,
) -> Call[MessagesAdded]:
    message = NewMessage(role, content, message_type, metadata or {}, tokens_used, cost_usd)
    return add_messages(session_id, [message])


def list_messages(session_id: str, *, limit: int = 100, after_seq: int = 0) -> Call[MessagePage]:
    return Call("message.list", ListMessages(session_id, limit, after_seq), MessagePage)


# -- tasks ---------------------------------------------------------------------------------


def create_task(
    session_id: str, title: str, *, external_id: str | None = None, metadata: dict[str, Any] | None = None
) -> Call[Task]:
    return Call("task.create", CreateTask(session_id, title, external_id, metadata or {}), Task)


def update_task(
    task_id: str,
    *,
    status: TaskStatus | None = None,
    title: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Call[Task]:
    return Call("task.update", UpdateTask(task_id, status, title, metadata), Task)


def get_task(task_id: str, *, max_interactions: int = 200) -> Call[Task]:
    return Call("task.get", TaskRef(task_id, max_interactions), Task)


def list_tasks(
    *,
    session_id: str | None = None,
    status: TaskStatus | None = None,
    external_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Call[TaskPage]:
    return Call("task.list", ListTasks(session_id, status, external_id, limit, cursor), TaskPage)


def add_interaction(
    task_id: str, content: str, *, kind: str = "note", metadata: dict[str, Any] | None = None
) -> Call[Interaction]:
    return Call("interaction.add", AddInteraction(task_id, content, kind, metadata or {}), Interaction)


# -- search --------------------------------------------------------------------------------


def _hits(result: SearchResult) -> list[SearchHit]:
    return result.hits


def search(
    query: str,
    *,
    project_id: str | None = None,
    session_id: str | None = None,
    kinds: list[SearchKind] | None = None,
    limit: int = 20,
) -> Call[list[SearchHit]]:
    return Call("search", Search(query, project_id, session_id, kinds, limit), SearchResult, shape=_hits)


# -- moving data ---------------------------------------------------------------------------


def import_records(
    records: list[Record], *, lines: list[int] | None = None, dry_run: bool = False
) -> Call[ImportResult]:
    params = ImportRecords(list(records), list(lines or []), dry_run)
    return Call("maintenance.import", params, ImportResult)


def run_retention(
    *,
    older_than: float | None = None,
    archive: str | None = None,
    purge: bool = False,
    dry_run: bool = False,
    limit: int = 500,
) -> Call[RetentionResult]:
    params = RunRetention(older_than, archive, purge, dry_run, limit)
    return Call("maintenance.retention", params, RetentionResult)
