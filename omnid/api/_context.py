"""What a request handler may use: the daemon's services (``Context``) and who is calling (``Caller``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from omnid_client.protocol import DaemonStatus, Settings

from ..jobs.compaction import Compactor
from ..jobs.embedder import Embedder
from ..jobs.expiry import Expirer
from ..jobs.reaper import Reaper
from ..jobs.retention import Archiver
from ..jobs.workspace import Workspaces
from ..metrics import Metrics
from ..store import Store, sessions as session_store
from ..store.guard import WriteGuard
from ..store.similar import SimilarSearch


@dataclass(frozen=True, slots=True)
class Context:
    """The services every handler is given, built once by the daemon (never the daemon itself)."""

    store: Store
    guard: WriteGuard
    """The check every write passes first: the database file is still there, and (for
    writes that add data) under the storage quota."""
    reaper: Reaper
    live_sessions: session_store.LiveLookups
    expirer: Expirer
    archiver: Archiver
    status: Callable[[], DaemonStatus]
    """The daemon's status now."""
    stop: Callable[[str], None]
    """Ask the daemon to stop gracefully, saying why."""
    settings: Callable[[], Settings] = Settings
    """The settings in force now."""
    compactor: Compactor = field(default_factory=Compactor)
    workspaces: Workspaces | None = None
    """Workspace change tracking (None where nothing watches files, as in offline tools)."""
    similar: SimilarSearch | None = None
    """The similarity search thread (None: memories.search_similar is Unsupported)."""
    embedder: Embedder | None = None
    """The configured embedding model, if any (None: offline tools, which embed nothing)."""
    metrics: Metrics = field(default_factory=Metrics)
    """What the daemon counts: replies by method, get_or_create outcomes, commits, reaps."""


@dataclass(slots=True)
class Caller:
    """Who is on the other end of a connection, from the kernel's peer credentials."""

    pid: int
    uid: int
    client_version: str = ""
    proto_minor: int = 0
