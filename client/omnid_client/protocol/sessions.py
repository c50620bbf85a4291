"""Sessions, their lookups, lists and summaries, reaping, and projects."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from .fields import (
    MAX_TAGS,
    ArchivedFilter,
    Cursor,
    EndReason,
    Limit,
    PathText,
    Pid,
    ProjectId,
    ResumeKey,
    SessionId,
    SessionStatus,
    ShortText,
    Tag,
    Title,
    ToolId,
)


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
    resume_key: str | None = None
    title: str | None = None
    tags: list[str] = []
    pinned: bool = False
    archived_at: float | None = None
    """When it was archived (hidden from lists unless asked for); None if it is not."""
    owner_since: float | None = None
    """When the current owner took it over by resuming it; None if it has had one owner."""

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
    resume_key: ResumeKey | None = None
    """The tool's name for a session that outlives its process: the tool's session with
    this key is returned if the caller owns it, and resumed (rebound to the caller) if its
    owner died or it was reaped or expired within the daemon's ``resume_window``."""
    resume_ended: bool = False
    """Resume a session with ``resume_key`` that was ended explicitly, too."""
    track_workspace: bool = False
    """Record files created, modified or deleted under the session's project root as its
    ``file_change`` context events while it is live. A daemon older than this field ignores it."""


GetOrCreateStatus = Literal["created", "existing", "resumed"]
"""``resumed`` only ever answers a request that named a ``resume_key``, which older
clients cannot send: they see only the first two."""


class GetOrCreateResult(Struct):
    status: GetOrCreateStatus
    session: Session


class Find(Struct):
    tool_id: ToolId
    pid: Pid | None = None
    resume_key: ResumeKey | None = None
    """Find the session ``get_or_create`` would return or resume with this key, changing nothing."""
    resume_ended: bool = False


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
    tag: Tag | None = None
    archived: ArchivedFilter = "exclude"
    """Archived sessions are left out unless ``include``d (or ``only`` they are wanted)."""
    pinned: bool | None = None
    project_id: ProjectId | None = None
    """Only the sessions of this project."""


class SessionPage(Struct):
    sessions: list[Session]
    next_cursor: str | None = None


class UpdateSession(Struct):
    """Change what describes a session (live or ended); a field left None is left as it is."""

    session_id: SessionId
    title: Title | None = None
    """The empty string removes the title."""
    tags: Annotated[list[Tag], Meta(max_length=MAX_TAGS)] | None = None
    """The session's tags from now on (replacing all of them)."""
    add_tags: Annotated[list[Tag], Meta(max_length=MAX_TAGS)] = []
    remove_tags: Annotated[list[Tag], Meta(max_length=MAX_TAGS)] = []
    metadata: dict[str, Any] | None = None
    """Merged into the session's metadata as a JSON merge patch (RFC 7396: a null value
    removes its key, nested objects merge), or with ``replace_metadata`` replacing it."""
    replace_metadata: bool = False
    pinned: bool | None = None
    archived: bool | None = None


class DeleteSession(Struct):
    session_id: SessionId
    force: bool = False
    """Delete a live session too (otherwise Conflict)."""


class SessionDeleted(Struct):
    """A deleted session and how much of what it held went with it."""

    session_id: str
    was_live: bool
    messages: int
    context_events: int
    session_memories: int
    tasks: int


class SessionOwner(Struct):
    """One process that owned a session, and for how long."""

    pid: int | None
    start: int | None
    """The process's start time, as in ``Session.owner_start``."""
    boot_id: str | None
    since: float
    until: float | None
    """None for the current owner of a live session."""
    released: str | None
    """How it lost the session: ``ended``, ``reaped``, ``expired``, or ``died`` (its session
    was resumed before it was reaped); None while it holds it."""


class SessionOwners(Struct):
    session_id: str
    owners: list[SessionOwner]
    """Oldest first; the last is the current (or final) owner."""


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
