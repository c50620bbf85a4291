"""The daemon itself: settings, status, statistics, cleanup and retention."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from .fields import Limit, PathText
from .sessions import LastReap


class Settings(Struct, kw_only=True):
    """The daemon's settings, read from its TOML config file (durations in seconds)."""

    sweep_interval: Annotated[float, Meta(ge=30, le=86400)] = 60.0
    """How often every live session's owner is re-checked as a safety net."""
    idle_expiry: Annotated[float, Meta(ge=0, le=10 * 365 * 86400)] = 0.0
    """End live sessions whose owner cannot be checked after this long without activity; 0 = never."""
    retention: Annotated[float, Meta(ge=0, le=100 * 365 * 86400)] = 0.0
    """How long ended sessions are kept; 0 = forever."""
    context_keep_events: Annotated[int, Meta(ge=0, le=10**9)] = 100_000
    """Context events kept as rows per session and kind; older ones are folded into
    per-subject totals (0 = never by count). Decisions, and the newest 1000 searches and
    memory refs, are never folded."""
    context_fold_after: Annotated[float, Meta(ge=0, le=100 * 365 * 86400)] = 0.0
    """Fold context events older than this many seconds (0 = never by age)."""
    durability: Literal["normal", "full"] = "normal"
    """SQLite ``synchronous``: "full" also survives power loss, at a cost per commit."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    resume_window: Annotated[float, Meta(ge=0, le=10 * 365 * 86400)] = 86400.0
    """How long after it was reaped or expired a session can still be resumed by its key; 0 = only while live."""
    max_database_bytes: Annotated[int, Meta(ge=0, le=2**50)] = 2 * 1024**3
    """The storage quota: past this many bytes of used database pages, writes that add data
    fail with a StorageError (reason "quota"); reads, ends and deletions go on. 0 = none."""
    event_log_size: Annotated[int, Meta(ge=0, le=1 << 34)] = 16 << 20
    """Bytes of recent events kept on disk for subscribers to resume from; 0 keeps none
    (only the few in memory)."""
    event_buffer: Annotated[int, Meta(ge=16 << 10, le=1 << 30)] = 1 << 20
    """Bytes of events waiting for one slow subscriber before it gets a gap instead."""
    track_workspace: bool = False
    """Record file changes under the project root of every live session with a workspace
    (as if each had asked with ``get_or_create(track_workspace=True)``)."""
    workspace_max_dirs: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    """A tracked project root with more directories than this (not counting ignored ones)
    is refused: each costs an inotify watch."""
    vector_engine: Literal["auto", "python", "sqlite-vec"] = "auto"
    """What computes memories.search_similar: "auto" uses sqlite-vec when the ``vec`` extra
    loads and pure Python otherwise; "sqlite-vec" fails searches when it cannot load."""
    metrics_textfile: PathText | None = None
    """Absolute path of a ``*.prom`` file the daemon keeps its metrics in (Prometheus text,
    replaced atomically at most every 15 s, only when they changed), for node_exporter's
    textfile collector. Its directory must exist and belong to this user."""
    embedding_model: PathText | None = None
    """Absolute path of a model2vec model directory (the ``embed`` extra): memories stored
    without an embedding get one computed from their text, and search_similar takes a text
    query. Loaded the first time a request needs it, in a thread of its own."""


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


IdKind = Literal["session", "task", "project"]


class ResolveIds(Struct):
    """The ids of one kind that start with ``prefix`` (for ids shortened on a command line)."""

    kind: IdKind
    prefix: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[0-9a-z_-]+$")]
    limit: Annotated[int, Meta(ge=1, le=100)] = 10


class IdMatches(Struct):
    ids: list[str]
    """In id order, at most ``limit``."""
    more: bool = False
    """More ids than ``limit`` start with the prefix."""


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
    counters: dict[str, int] = {}
    """Totals of the sessions' ``metadata["counters"]`` (name -> integer), e.g. the
    ``tokens_saved`` an OmniMemory import brings; absent from older daemons."""


class CleanupOrphans(Struct):
    older_than: Annotated[float, Meta(ge=0)]
    """Seconds: only sessions that started at least this long ago."""
    dry_run: bool = False


class CleanupResult(Struct):
    dry_run: bool
    session_ids: list[str]


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
    embedding_model_error: str | None = None
    """Why the configured ``embedding_model`` cannot be used (found when a request last needed it)."""
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
    subscribers: int = 0
    """Connections following the event stream."""
    event_seq: int = 0
    """The sequence number of the latest event."""
    tracked_roots: list[str] = []
    """Project roots whose file changes are being recorded right now (workspace tracking:
    the watcher has them; one just asked for may take a moment to appear)."""
