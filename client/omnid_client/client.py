"""The blocking client: every omnid call as a typed method, over one fork-safe connection."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from . import _calls, _events
from ._connection import Connection
from ._memory_methods import MemoryMethods
from .packing import Counter
from .protocol import (
    Appended,
    ArchivedFilter,
    Checkpoint,
    CheckpointInfo,
    CleanupResult,
    ContextEvent,
    ContextPack,
    DaemonMetrics,
    DaemonStatus,
    Empty,
    Event,
    GetOrCreateResult,
    IdKind,
    IdMatches,
    ImportResult,
    Interaction,
    MessagePage,
    MessagesAdded,
    NewMessage,
    Project,
    ProjectPage,
    ReapResult,
    Record,
    Restored,
    RetentionResult,
    Role,
    SearchHit,
    SearchKind,
    ServiceStats,
    Session,
    SessionContext,
    SessionDeleted,
    SessionOwners,
    SessionPage,
    SessionStatus,
    SessionSummary,
    Task,
    TaskPage,
    TaskStatus,
)


class Client(MemoryMethods):
    """A blocking connection to the omnid daemon (options: see ``BaseClient``)."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def session(self, tool_id: str, **kwargs: Any) -> Iterator[Session | None]:
        """A session for the block, ended on exit (None when failing open)."""
        got: GetOrCreateResult | None = self.get_or_create(tool_id, **kwargs)
        session = got.session if got is not None else None
        try:
            yield session
        finally:
            if session is not None:
                self.end(session.session_id)

    def events(
        self,
        *,
        kinds: Sequence[str] = (),
        tools: Sequence[str] = (),
        projects: Sequence[str] = (),
        sessions: Sequence[str] = (),
        since: int | None = None,
        include_content: bool = False,
        reconnect: bool = True,
    ) -> Iterator[Event]:
        """Committed events, oldest first: filters match any of their values (a kind may be its group),
        ``since`` replays kept events after that sequence, a lost connection resumes after the last
        event yielded (unless ``reconnect=False``), a ``gap`` event says what was missed."""
        stream = Connection(
            self.socket_path, timeout=self.timeout, connect_timeout=self.connect_timeout, autostart=self.autostart,
            start_timeout=self.start_timeout, client_name=self.client_name,
        )
        params = _events.subscription(kinds, tools, projects, sessions, since, include_content)
        return _events.follow(stream, params, reconnect)

    # -- the calls (built in _calls.py; AsyncClient has the same, as coroutines) -------

    def get_or_create(
        self,
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
    ) -> GetOrCreateResult:
        """The live session of ``tool_id`` for process ``pid`` (default: the caller), created if none.
        With ``owner_must_be_ancestor``, ``pid`` must be the caller or one of its ancestors. With
        ``resume_key`` (the tool's name for a session that outlives its process): ``existing`` if ``pid``
        owns it, ``resumed`` (rebound to ``pid`` with all it holds) if its owner died or it was reaped or
        expired within ``resume_window``, Conflict if another live process owns it; ``end``ed ones only
        with ``resume_ended``. ``track_workspace``: record its project root's file changes (see README)."""
        return self._call(_calls.get_or_create(
            tool_id, pid=pid, tool_version=tool_version, workspace=workspace, session_type=session_type,
            metadata=metadata, dedup=dedup, owner_must_be_ancestor=owner_must_be_ancestor,
            resume_key=resume_key, resume_ended=resume_ended, track_workspace=track_workspace,
        ))

    def find(
        self, tool_id: str, *, pid: int | None = None, resume_key: str | None = None, resume_ended: bool = False
    ) -> Session | None:
        """The live session of ``tool_id`` for ``pid`` (default: the caller), or None. Never creates.
        With ``resume_key``: the session ``get_or_create`` would return or resume, changing nothing."""
        return self._call(_calls.find(tool_id, pid=pid, resume_key=resume_key, resume_ended=resume_ended))

    def heartbeat(self, session_id: str) -> Session:
        return self._call(_calls.heartbeat(session_id))

    def end(self, session_id: str) -> Session:
        """End a session (idempotent: an already-ended session is returned as it is)."""
        return self._call(_calls.end(session_id))

    def get(self, session_id: str) -> Session:
        return self._call(_calls.get(session_id))

    def list_sessions(
        self,
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
    ) -> SessionPage:
        """Sessions newest first; pass ``next_cursor`` back as ``cursor`` for the next page.
        Archived sessions are left out unless ``archived`` is ``include`` (or ``only``)."""
        return self._call(_calls.list_sessions(
            tool_id=tool_id, session_type=session_type, status=status, workspace=workspace, limit=limit, cursor=cursor,
            tag=tag, archived=archived, pinned=pinned, project_id=project_id,
        ))

    def update_session(
        self,
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
    ) -> Session:
        """Edit a session (live or ended); what is None stays as it is. ``title=""`` removes the
        title; ``tags`` replaces the tags, then ``add_tags`` and ``remove_tags`` apply;
        ``metadata`` is merged as a JSON merge patch (None values remove keys), or replaces
        the metadata with ``replace_metadata``. ``pinned`` and ``archived`` set those flags."""
        return self._call(_calls.update_session(
            session_id, title=title, tags=tags, add_tags=add_tags, remove_tags=remove_tags, metadata=metadata,
            replace_metadata=replace_metadata, pinned=pinned, archived=archived,
        ))

    def delete_session(self, session_id: str, *, force: bool = False) -> SessionDeleted:
        """Delete a session and everything it holds, for good. A live one only with ``force``
        (otherwise Conflict)."""
        return self._call(_calls.delete_session(session_id, force=force))

    def session_owners(self, session_id: str) -> SessionOwners:
        """Every process that owned the session (resuming rebinds it), oldest first."""
        return self._call(_calls.session_owners(session_id))

    def status(self) -> DaemonStatus:
        return self._call(_calls.status())

    def reap(self, *, dry_run: bool = False) -> ReapResult:
        """Check every live session's owner now and end those whose process is gone."""
        return self._call(_calls.reap(dry_run=dry_run))

    def stats(self) -> ServiceStats:
        """Totals and averages over every session, message, memory and task."""
        return self._call(_calls.stats())

    def metrics(self) -> DaemonMetrics:
        """The daemon's counters and latency histograms since it started, and totals across restarts."""
        return self._call(_calls.metrics())

    def cleanup_orphans(self, older_than: float, *, dry_run: bool = False) -> CleanupResult:
        """Delete ended sessions that started over ``older_than`` seconds ago and hold nothing
        (no tasks, messages, context or memories); returns their ids."""
        return self._call(_calls.cleanup_orphans(older_than, dry_run=dry_run))

    def session_summary(self, session_id: str) -> SessionSummary:
        """Counts, tokens, cost and times of one session."""
        return self._call(_calls.session_summary(session_id))

    def list_projects(self, *, limit: int = 50, cursor: str | None = None) -> ProjectPage:
        """Projects, most recently active first."""
        return self._call(_calls.list_projects(limit=limit, cursor=cursor))

    def get_project(self, project_id: str | None = None, *, workspace: str | None = None) -> Project:
        """A project by id, or the one containing ``workspace`` (default: the current directory)."""
        return self._call(_calls.get_project(project_id, workspace=workspace))

    def append_context(self, session_id: str, events: list[ContextEvent]) -> Appended:
        """Record what happened in a session: file accesses, searches, decisions, memory
        references, file changes. All events are stored, or none."""
        return self._call(_calls.append_context(session_id, events))

    def get_context(
        self,
        session_id: str,
        *,
        max_files: int = 100,
        max_searches: int = 20,
        max_decisions: int = 50,
        max_memories: int = 50,
        max_changes: int = 100,
    ) -> SessionContext:
        """The session's context: files by importance, recent searches and decisions, memories,
        changed files, and its size. ``caps`` (max_files=…, max_searches=…) bound each list."""
        return self._call(_calls.get_context(
            session_id, max_files=max_files, max_searches=max_searches, max_decisions=max_decisions,
            max_memories=max_memories, max_changes=max_changes
        ))

    def add_messages(self, session_id: str, messages: list[NewMessage]) -> MessagesAdded:
        """Append messages in order, all or none; returns their ids and the session's totals."""
        return self._call(_calls.add_messages(session_id, messages))

    def add_message(
        self,
        session_id: str,
        role: Role,
        content: str,
        *,
        message_type: str = "text",
        metadata: dict[str, Any] | None = None,
        tokens_used: int = 0,
        cost_usd: float = 0.0,
    ) -> MessagesAdded:
        return self._call(_calls.add_message(
            session_id, role, content, message_type=message_type, metadata=metadata, tokens_used=tokens_used,
            cost_usd=cost_usd
        ))

    def list_messages(self, session_id: str, *, limit: int = 100, after_seq: int = 0) -> MessagePage:
        """Messages in order; pass ``next_after_seq`` back as ``after_seq`` for the next page."""
        return self._call(_calls.list_messages(session_id, limit=limit, after_seq=after_seq))

    def create_task(
        self, session_id: str, title: str, *, external_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Task:
        """A task in a live session; ``external_id`` (e.g. an agent CLI's own conversation id)
        is unique among open tasks."""
        return self._call(_calls.create_task(session_id, title, external_id=external_id, metadata=metadata))

    def update_task(
        self,
        task_id: str,
        *,
        status: TaskStatus | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Task:
        return self._call(_calls.update_task(task_id, status=status, title=title, metadata=metadata))

    def get_task(self, task_id: str, *, max_interactions: int = 200) -> Task:
        """A task with its interactions."""
        return self._call(_calls.get_task(task_id, max_interactions=max_interactions))

    def list_tasks(
        self,
        *,
        session_id: str | None = None,
        status: TaskStatus | None = None,
        external_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        return self._call(_calls.list_tasks(
            session_id=session_id, status=status, external_id=external_id, limit=limit, cursor=cursor
        ))

    def add_interaction(
        self, task_id: str, content: str, *, kind: str = "note", metadata: dict[str, Any] | None = None
    ) -> Interaction:
        return self._call(_calls.add_interaction(task_id, content, kind=kind, metadata=metadata))

    def pack_context(
        self,
        session_id: str | None = None,
        *,
        project_id: str | None = None,
        workspace: str | None = None,
        budget_tokens: int = 2000,
        counter: Counter | None = None,
        counter_name: str = "custom",
        max_files: int = 20,
        max_decisions: int = 10,
        max_searches: int = 10,
        max_memories: int = 10,
        max_tasks: int = 10,
        max_messages: int = 5,
        max_item_chars: int = 400,
    ) -> ContextPack:
        """The most useful context of a session or project (default: the current directory's) within
        ``budget_tokens`` by the daemon's estimate or by ``counter`` (``str -> int``, assembled here)."""
        return self._call(_calls.pack_context(
            session_id, project_id=project_id, workspace=workspace, budget_tokens=budget_tokens, counter=counter,
            counter_name=counter_name, max_files=max_files, max_decisions=max_decisions, max_searches=max_searches,
            max_memories=max_memories, max_tasks=max_tasks, max_messages=max_messages, max_item_chars=max_item_chars,
        ))

    def create_checkpoint(self, session_id: str, name: str, *, note: str | None = None) -> Checkpoint:
        """Save the session's context, counters and title/goal/summary as the project memory
        ``checkpoint/<session>/<name>`` (a new version if it exists)."""
        return self._call(_calls.create_checkpoint(session_id, name, note=note))

    def list_checkpoints(
        self, session_id: str | None = None, *, project_id: str | None = None, workspace: str | None = None,
        limit: int = 50,
    ) -> list[CheckpointInfo]:
        """A session's checkpoints, or (without one) a project's; newest first."""
        return self._call(_calls.list_checkpoints(session_id, project_id=project_id, workspace=workspace, limit=limit))

    def show_checkpoint(
        self, key: str, *, project_id: str | None = None, workspace: str | None = None, version: int | None = None
    ) -> Checkpoint:
        """A checkpoint (an earlier ``version`` if given); the project defaults to its session's."""
        return self._call(_calls.show_checkpoint(key, project_id=project_id, workspace=workspace, version=version))

    def restore_checkpoint(
        self,
        key: str,
        *,
        into: str | None = None,
        project_id: str | None = None,
        workspace: str | None = None,
        version: int | None = None,
        tool_id: str = "omnid",
        pid: int | None = None,
        owner_must_be_ancestor: bool = False,
    ) -> Restored:
        """Seed a session's context from a checkpoint: ``into`` a live session, or a new one
        for ``tool_id`` owned by ``pid`` (default: this process) that carries the title, goal
        and summary in its metadata."""
        return self._call(_calls.restore_checkpoint(
            key, into=into, project_id=project_id, workspace=workspace, version=version, tool_id=tool_id, pid=pid,
            owner_must_be_ancestor=owner_must_be_ancestor,
        ))

    def search(
        self,
        query: str,
        *,
        project_id: str | None = None,
        session_id: str | None = None,
        kinds: list[SearchKind] | None = None,
        limit: int = 20,
    ) -> list[SearchHit]:
        """Ranked full-text search over messages, memories and decisions: all words must match,
        each whole (``word*`` matches the words it starts; when whole words find fewer than
        ``limit`` hits, the last word also matches the words it starts)."""
        return self._call(_calls.search(query, project_id=project_id, session_id=session_id, kinds=kinds, limit=limit))

    def import_records(
        self, records: list[Record], *, lines: list[int] | None = None, dry_run: bool = False
    ) -> ImportResult:
        """Import one batch of export records, all or nothing, keeping their ids; records
        already present are counted as existing (importing twice adds nothing). ``lines``
        (one per record) are named in errors. The batch must fit one frame."""
        return self._call(_calls.import_records(records, lines=lines, dry_run=dry_run))

    def run_retention(
        self, *, older_than: float | None = None, archive: str | None = None, purge: bool = False,
        dry_run: bool = False, limit: int = 500,
    ) -> RetentionResult:
        """Archive (to ``archive``, default the daemon's archive file) or ``purge``, then delete,
        up to ``limit`` ended sessions that ended over ``older_than`` seconds ago (default:
        the configured retention). ``remaining`` says how many more are due."""
        return self._call(_calls.run_retention(
            older_than=older_than, archive=archive, purge=purge, dry_run=dry_run, limit=limit
        ))

    def resolve_ids(self, kind: IdKind, prefix: str, *, limit: int = 10) -> IdMatches:
        """The ``kind`` ids (session, task, project) starting with ``prefix``, at most ``limit``."""
        return self._call(_calls.resolve_ids(kind, prefix, limit=limit))

    def shutdown(self) -> Empty:
        """Ask the daemon to stop gracefully (it replies first)."""
        return self._call(_calls.shutdown())
