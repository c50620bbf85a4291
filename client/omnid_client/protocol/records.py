"""The export file format: one record per JSONL line, the same records in import batches.

``type`` names a record's kind. A session's content follows it as its own records, in
order (``seq``), so no record has to hold a whole session.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from msgspec import Meta, Struct

from .content import ContextKind, Role, TaskStatus
from .fields import (
    MAX_CONTENT,
    MAX_TAGS,
    Content,
    Embedding,
    EndReason,
    Label,
    MemoryKey,
    Metadata,
    PathText,
    ProjectId,
    ResumeKey,
    SessionId,
    ShortText,
    Tag,
    TaskId,
    Title,
    ToolId,
)

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


class MemoryRecord(Struct, tag="memory", tag_field="type", omit_defaults=True):
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
    embedding: Embedding | None = None
    """The current value's vector as stored (unit length, little-endian float32; base64 in
    JSON), left out when it has none. Imported bit for bit."""


class MemoryVersionRecord(Struct, tag="memory_version", tag_field="type"):
    memory_id: MemoryId
    version: Seq
    value: Any
    metadata: Metadata
    created_at: Timestamp
    expires_at: Timestamp | None


class PastOwner(Struct):
    """A process that owned a session before the one on its record (see ``SessionOwner``)."""

    pid: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None
    start: Annotated[int, Meta(ge=0, le=2**62)] | None
    boot_id: ShortText | None
    since: Timestamp
    until: Timestamp
    released: Literal["ended", "reaped", "expired", "died"]


class SessionRecord(Struct, tag="session", tag_field="type", omit_defaults=True):
    """The fields with defaults are left out where they hold them, so the records of
    sessions that never used them are what older omnid releases wrote and read."""

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
    resume_key: ResumeKey | None = None
    title: Title | None = None
    tags: Annotated[list[Tag], Meta(max_length=MAX_TAGS)] = []
    pinned: bool = False
    archived_at: Timestamp | None = None
    owner_since: Timestamp | None = None
    past_owners: list[PastOwner] = []
    """Oldest first."""


class ContextRecord(Struct, tag="context", tag_field="type"):
    """The ``seq``-th context event of its session."""

    session_id: SessionId
    seq: Seq
    kind: ContextKind
    subject: Annotated[str, Meta(min_length=1, max_length=8192)]
    importance: Annotated[float, Meta(ge=0.0, le=1.0)] | None
    detail: Annotated[str, Meta(max_length=8192)] | None
    created_at: Timestamp


class ContextFoldRecord(Struct, tag="context_fold", tag_field="type"):
    """Context events of one subject that compaction folded: how many, their size in
    characters, first and last time, highest importance (unset counted as 0.5) and the last
    one's detail. A session's fold records come before its context records, whose ``seq``
    then starts after the folded events."""

    session_id: SessionId
    kind: Literal["file_access", "file_change", "search", "memory_ref"]
    subject: Annotated[str, Meta(min_length=1, max_length=8192)]
    events: Annotated[int, Meta(ge=1)]
    bytes: Count
    first_at: Timestamp
    last_at: Timestamp
    max_importance: Annotated[float, Meta(ge=0.0, le=1.0)]
    last_detail: Annotated[str, Meta(max_length=8192)] | None


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


class SessionMemoryRecord(Struct, tag="session_memory", tag_field="type", omit_defaults=True):
    memory_id: SessionMemoryId
    session_id: SessionId
    memory_type: Label
    content: Annotated[str, Meta(min_length=1, max_length=MAX_CONTENT)]
    metadata: Metadata
    created_at: Timestamp
    embedding: Embedding | None = None
    """Its vector, as on a ``memory`` record."""


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
    ContextFoldRecord,
    MessageRecord,
    SessionMemoryRecord,
    TaskRecord,
    InteractionRecord,
]


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
