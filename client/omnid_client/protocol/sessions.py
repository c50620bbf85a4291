"""Sessions, their lookups, lists and summaries, reaping, and projects."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from .fields import Cursor, EndReason, Limit, PathText, Pid, ProjectId, SessionId, SessionStatus, ShortText, ToolId


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
