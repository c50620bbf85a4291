"""The RPC method table: each method's parameter and result types, and how it may be retried."""

from __future__ import annotations

from msgspec import Struct

from .agent import (
    Checkpoint,
    CheckpointList,
    CheckpointRef,
    ContextPack,
    CreateCheckpoint,
    ListCheckpoints,
    PackContext,
    RestoreCheckpoint,
    Restored,
)
from .content import (
    AddInteraction,
    AddMessages,
    AddSessionMemory,
    AppendContext,
    Appended,
    CreateTask,
    Deleted,
    GetContext,
    Interaction,
    ListMemories,
    ListMessages,
    ListTasks,
    Memory,
    MemoryHistory,
    MemoryKeyRef,
    MemoryList,
    MessagePage,
    MessagesAdded,
    PutMemory,
    Search,
    SearchResult,
    SessionContext,
    SessionMemory,
    SessionMemoryList,
    Task,
    TaskPage,
    TaskRef,
    UpdateTask,
)
from .daemon import (
    CleanupOrphans,
    CleanupResult,
    DaemonStatus,
    IdMatches,
    ResolveIds,
    RetentionResult,
    RunRetention,
    ServiceStats,
)
from .events import Subscribe, Subscribed
from .metrics import DaemonMetrics
from .records import ImportRecords, ImportResult
from .sessions import (
    DeleteSession,
    Find,
    FindResult,
    GetOrCreate,
    GetOrCreateResult,
    ListProjects,
    ListSessions,
    Project,
    ProjectPage,
    ProjectRef,
    Reap,
    ReapResult,
    Session,
    SessionDeleted,
    SessionOwners,
    SessionPage,
    SessionRef,
    SessionSummary,
    UpdateSession,
)
from .vectors import SearchSimilar, SimilarMemories
from .wire import Empty


class Method(Struct, frozen=True):
    params: type
    result: type
    writes: bool
    idempotent: bool = True


METHODS: dict[str, Method] = {
    # Opens its own write only when it creates: reuse must not wait for a commit.
    "session.get_or_create": Method(GetOrCreate, GetOrCreateResult, writes=False),
    "session.find": Method(Find, FindResult, writes=False),
    # Activity, not content: its bump rides on the next commit, as a reuse's does.
    "session.heartbeat": Method(SessionRef, Session, writes=False),
    "session.end": Method(SessionRef, Session, writes=True),
    "session.get": Method(SessionRef, Session, writes=False),
    "session.list": Method(ListSessions, SessionPage, writes=False),
    "session.update": Method(UpdateSession, Session, writes=True),
    "session.delete": Method(DeleteSession, SessionDeleted, writes=True, idempotent=False),
    "session.owners": Method(SessionRef, SessionOwners, writes=False),
    "daemon.status": Method(Empty, DaemonStatus, writes=False),
    "daemon.reap": Method(Reap, ReapResult, writes=True),
    "daemon.shutdown": Method(Empty, Empty, writes=False, idempotent=False),
    "daemon.stats": Method(Empty, ServiceStats, writes=False),
    "daemon.metrics": Method(Empty, DaemonMetrics, writes=False),
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
    "context.pack": Method(PackContext, ContextPack, writes=False),
    "checkpoint.create": Method(CreateCheckpoint, Checkpoint, writes=True, idempotent=False),
    "checkpoint.list": Method(ListCheckpoints, CheckpointList, writes=False),
    "checkpoint.show": Method(CheckpointRef, Checkpoint, writes=False),
    "checkpoint.restore": Method(RestoreCheckpoint, Restored, writes=True, idempotent=False),
    "memories.search_similar": Method(SearchSimilar, SimilarMemories, writes=False),
    "ids.resolve": Method(ResolveIds, IdMatches, writes=False),
    # Turns the connection into an event stream (the connection handles it, not a handler).
    "events.subscribe": Method(Subscribe, Subscribed, writes=False),
}
"""Every RPC method: its parameter and result types, whether the daemon runs it inside
one write transaction (its reply then waits for the commit), and whether a client may
resend it after a lost connection without changing the outcome."""
