"""What agents ask for to resume work: a token-budgeted context pack and checkpoints."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from .fields import Limit, MemoryKey, PathText, Pid, ProjectId, SessionId, ToolId

# --- the context pack ----------------------------------------------------------------------

SectionName = Literal["session", "files", "decisions", "searches", "memories", "tasks", "messages"]
Cap = Annotated[int, Meta(ge=0, le=200)]


class PackContext(Struct, kw_only=True):
    """Name a session, or a project (by id or any path in it: its most recently active
    session gives the session's sections). ``budget_tokens`` bounds the Markdown by the
    daemon's estimate (``packing.estimate_tokens``)."""

    session_id: SessionId | None = None
    project_id: ProjectId | None = None
    workspace: PathText | None = None
    budget_tokens: Annotated[int, Meta(ge=0, le=10_000_000)] = 2000
    max_files: Cap = 20
    max_decisions: Cap = 10
    max_searches: Cap = 10
    max_memories: Cap = 10
    max_tasks: Cap = 10
    max_messages: Cap = 5
    max_item_chars: Annotated[int, Meta(ge=16, le=65536)] = 400
    """Longer item texts are cut to this many characters (ending in "…")."""
    candidates: bool = False
    """Every candidate within the caps, whatever the budget: for a client packing with its
    own token counter (``Client.pack_context(counter=...)`` does)."""


class PackItem(Struct):
    ref: str
    """What the item is: a path, a memory key, a task id, a message's seq, a query."""
    text: str
    """The item as one Markdown list entry, without its leading "- "."""
    tokens: int
    """Its line's tokens by the counter the pack was made with."""
    at: float | None = None
    score: float | None = None


class PackSection(Struct):
    name: SectionName
    heading: str
    items: list[PackItem]
    available: int
    """How many there were to choose from."""
    omitted: int
    """How many of those were left out, by the section's cap or the budget."""


class ContextPack(Struct):
    session_id: str | None
    project_id: str | None
    budget_tokens: int
    tokens: int
    """The Markdown's tokens by ``counter``: never more than ``budget_tokens``."""
    counter: str
    markdown: str
    sections: list[PackSection]
    title: str | None = None
    goal: str | None = None
    summary: str | None = None


# --- checkpoints ---------------------------------------------------------------------------

CheckpointName = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")]


class CreateCheckpoint(Struct):
    session_id: SessionId
    name: CheckpointName
    note: Annotated[str, Meta(max_length=8192)] | None = None


class CheckpointInfo(Struct):
    key: str
    session_id: str
    name: str
    project_id: str
    version: int
    created_at: float
    note: str | None = None


class Checkpoint(Struct):
    info: CheckpointInfo
    snapshot: dict[str, Any]
    """The session's title/goal/summary, counters and materialized context, as stored."""


class ListCheckpoints(Struct):
    session_id: SessionId | None = None
    project_id: ProjectId | None = None
    workspace: PathText | None = None
    limit: Limit = 50


class CheckpointList(Struct):
    checkpoints: list[CheckpointInfo]


class CheckpointRef(Struct):
    """A checkpoint by its key (``checkpoint/<session>/<name>``) in a project; ``version``
    picks an earlier one (default: the newest)."""

    key: MemoryKey
    project_id: ProjectId | None = None
    workspace: PathText | None = None
    version: Annotated[int, Meta(ge=1)] | None = None


class RestoreCheckpoint(Struct, kw_only=True):
    """Seed a live session's context from a checkpoint: ``into`` an existing live session,
    or (without it) a new session owned by ``pid`` (default: the caller) for ``tool_id``."""

    key: MemoryKey
    project_id: ProjectId | None = None
    workspace: PathText | None = None
    version: Annotated[int, Meta(ge=1)] | None = None
    into: SessionId | None = None
    tool_id: ToolId = "omnid"
    pid: Pid | None = None
    owner_must_be_ancestor: bool = False


class Restored(Struct):
    session_id: str
    created: bool
    events: int
    """Context events added to the session from the checkpoint."""
    key: str
    version: int

