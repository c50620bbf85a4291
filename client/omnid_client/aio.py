"""The asyncio client, for MCP servers and other event-loop tools: same calls as ``Client``,
with requests pipelined over one connection."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from . import _calls, _events
from ._async_connection import AsyncConnection
from ._async_memory_methods import AsyncMemoryMethods
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


class AsyncClient(AsyncMemoryMethods):
    """Like ``Client``, but every call is a coroutine; safe to share between tasks."""

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def session(self, tool_id: str, **kwargs: Any) -> AsyncIterator[Session | None]:
        """A session for the block, ended on exit (None when failing open)."""
        got: GetOrCreateResult | None = await self.get_or_create(tool_id, **kwargs)
        session = got.session if got is not None else None
        try:
            yield session
        finally:
            if session is not None:
                await self.end(session.session_id)

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
    ) -> AsyncIterator[Event]:
        """``Client.events``, as an async iterator (``async for event in client.events()``)."""
        stream = AsyncConnection(
            self.socket_path, timeout=self.timeout, connect_timeout=self.connect_timeout, autostart=self.autostart,
            start_timeout=self.start_timeout, client_name=self.client_name,
        )
        params = _events.subscription(kinds, tools, projects, sessions, since, include_content)
        return _events.follow_async(stream, params, reconnect)

    # -- the calls (built in _calls.py; Client has the same, blocking) ---------------------

    async def get_or_create(
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
        """As ``Client.get_or_create``."""
        return await self._call(_calls.get_or_create(
            tool_id, pid=pid, tool_version=tool_version, workspace=workspace, session_type=session_type,
            metadata=metadata, dedup=dedup, owner_must_be_ancestor=owner_must_be_ancestor,
            resume_key=resume_key, resume_ended=resume_ended, track_workspace=track_workspace,
        ))

    async def find(
        self, tool_id: str, *, pid: int | None = None, resume_key: str | None = None, resume_ended: bool = False
    ) -> Session | None:
        """As ``Client.find``."""
        return await self._call(_calls.find(tool_id, pid=pid, resume_key=resume_key, resume_ended=resume_ended))

    async def heartbeat(self, session_id: str) -> Session:
        return await self._call(_calls.heartbeat(session_id))

    async def end(self, session_id: str) -> Session:
        """End a session (idempotent: an already-ended session is returned as it is)."""
        return await self._call(_calls.end(session_id))

    async def get(self, session_id: str) -> Session:
        return await self._call(_calls.get(session_id))

    async def list_sessions(
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
        """As ``Client.list_sessions``."""
        return await self._call(_calls.list_sessions(
            tool_id=tool_id, session_type=session_type, status=status, workspace=workspace, limit=limit, cursor=cursor,
            tag=tag, archived=archived, pinned=pinned, project_id=project_id,
        ))

    async def update_session(
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
        """As ``Client.update_session``."""
        return await self._call(_calls.update_session(
            session_id, title=title, tags=tags, add_tags=add_tags, remove_tags=remove_tags, metadata=metadata,
            replace_metadata=replace_metadata, pinned=pinned, archived=archived,
        ))

    async def delete_session(self, session_id: str, *, force: bool = False) -> SessionDeleted:
        """As ``Client.delete_session``."""
        return await self._call(_calls.delete_session(session_id, force=force))

    async def session_owners(self, session_id: str) -> SessionOwners:
        """Every process that owned the session (resuming rebinds it), oldest first."""
        return await self._call(_calls.session_owners(session_id))

    async def status(self) -> DaemonStatus:
        return await self._call(_calls.status())

    async def reap(self, *, dry_run: bool = False) -> ReapResult:
        """Check every live session's owner now and end those whose process is gone."""
        return await self._call(_calls.reap(dry_run=dry_run))

    async def stats(self) -> ServiceStats:
        """Totals and averages over every session, message, memory and task."""
        return await self._call(_calls.stats())

    async def metrics(self) -> DaemonMetrics:
        """The daemon's counters and latency histograms since it started, and totals across restarts."""
        return await self._call(_calls.metrics())

    async def cleanup_orphans(self, older_than: float, *, dry_run: bool = False) -> CleanupResult:
        """As ``Client.cleanup_orphans``."""
        return await self._call(_calls.cleanup_orphans(older_than, dry_run=dry_run))

    async def session_summary(self, session_id: str) -> SessionSummary:
        """Counts, tokens, cost and times of one session."""
        return await self._call(_calls.session_summary(session_id))

    async def list_projects(self, *, limit: int = 50, cursor: str | None = None) -> ProjectPage:
        """Projects, most recently active first."""
        return await self._call(_calls.list_projects(limit=limit, cursor=cursor))

    async def get_project(self, project_id: str | None = None, *, workspace: str | None = None) -> Project:
        """A project by id, or the one containing ``workspace`` (default: the current directory)."""
        return await self._call(_calls.get_project(project_id, workspace=workspace))

    async def append_context(self, session_id: str, events: list[ContextEvent]) -> Appended:
        """As ``Client.append_context``."""
        return await self._call(_calls.append_context(session_id, events))

    async def get_context(
        self,
        session_id: str,
        *,
        max_files: int = 100,
        max_searches: int = 20,
        max_decisions: int = 50,
        max_memories: int = 50,
        max_changes: int = 100,
    ) -> SessionContext:
        """As ``Client.get_context``."""
        return await self._call(_calls.get_context(
            session_id, max_files=max_files, max_searches=max_searches, max_decisions=max_decisions,
            max_memories=max_memories, max_changes=max_changes
        ))

    async def add_messages(self, session_id: str, messages: list[NewMessage]) -> MessagesAdded:
        """Append messages in order, all or none; returns their ids and the session's totals."""
        return await self._call(_calls.add_messages(session_id, messages))

    async def add_message(
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
        return await self._call(_calls.add_message(
            session_id, role, content, message_type=message_type, metadata=metadata, tokens_used=tokens_used,
            cost_usd=cost_usd
        ))

    async def list_messages(self, session_id: str, *, limit: int = 100, after_seq: int = 0) -> MessagePage:
        """Messages in order; pass ``next_after_seq`` back as ``after_seq`` for the next page."""
        return await self._call(_calls.list_messages(session_id, limit=limit, after_seq=after_seq))

    async def create_task(
        self, session_id: str, title: str, *, external_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Task:
        """As ``Client.create_task``."""
        return await self._call(_calls.create_task(session_id, title, external_id=external_id, metadata=metadata))

    async def update_task(
        self,
        task_id: str,
        *,
        status: TaskStatus | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Task:
        return await self._call(_calls.update_task(task_id, status=status, title=title, metadata=metadata))

    async def get_task(self, task_id: str, *, max_interactions: int = 200) -> Task:
        """A task with its interactions."""
        return await self._call(_calls.get_task(task_id, max_interactions=max_interactions))

    async def list_tasks(
        self,
        *,
        session_id: str | None = None,
        status: TaskStatus | None = None,
        external_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        return await self._call(_calls.list_tasks(
            session_id=session_id, status=status, external_id=external_id, limit=limit, cursor=cursor
        ))

    async def add_interaction(
        self, task_id: str, content: str, *, kind: str = "note", metadata: dict[str, Any] | None = None
    ) -> Interaction:
        return await self._call(_calls.add_interaction(task_id, content, kind=kind, metadata=metadata))

    async def pack_context(
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
        """As ``Client.pack_context``."""
        return await self._call(_calls.pack_context(
            session_id, project_id=project_id, workspace=workspace, budget_tokens=budget_tokens, counter=counter,
            counter_name=counter_name, max_files=max_files, max_decisions=max_decisions, max_searches=max_searches,
            max_memories=max_memories, max_tasks=max_tasks, max_messages=max_messages, max_item_chars=max_item_chars,
        ))

    async def create_checkpoint(self, session_id: str, name: str, *, note: str | None = None) -> Checkpoint:
        """As ``Client.create_checkpoint``."""
        return await self._call(_calls.create_checkpoint(session_id, name, note=note))

    async def list_checkpoints(
        self, session_id: str | None = None, *, project_id: str | None = None, workspace: str | None = None,
        limit: int = 50,
    ) -> list[CheckpointInfo]:
        """A session's checkpoints, or (without one) a project's; newest first."""
        return await self._call(
            _calls.list_checkpoints(session_id, project_id=project_id, workspace=workspace, limit=limit)
        )

    async def show_checkpoint(
        self, key: str, *, project_id: str | None = None, workspace: str | None = None, version: int | None = None
    ) -> Checkpoint:
        """A checkpoint (an earlier ``version`` if given); the project defaults to its session's."""
        return await self._call(
            _calls.show_checkpoint(key, project_id=project_id, workspace=workspace, version=version)
        )

    async def restore_checkpoint(
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
        """As ``Client.restore_checkpoint``."""
        return await self._call(_calls.restore_checkpoint(
            key, into=into, project_id=project_id, workspace=workspace, version=version, tool_id=tool_id, pid=pid,
            owner_must_be_ancestor=owner_must_be_ancestor,
        ))

    async def search(
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
        return await self._call(_calls.search(
            query, project_id=project_id, session_id=session_id, kinds=kinds, limit=limit
        ))

    async def import_records(
        self, records: list[Record], *, lines: list[int] | None = None, dry_run: bool = False
    ) -> ImportResult:
        """As ``Client.import_records``."""
        return await self._call(_calls.import_records(records, lines=lines, dry_run=dry_run))

    async def run_retention(
        self,
        *,
        older_than: float | None = None,
        archive: str | None = None,
        purge: bool = False,
        dry_run: bool = False,
        limit: int = 500,
    ) -> RetentionResult:
        """As ``Client.run_retention``."""
        return await self._call(_calls.run_retention(
            older_than=older_than, archive=archive, purge=purge, dry_run=dry_run, limit=limit
        ))

    async def resolve_ids(self, kind: IdKind, prefix: str, *, limit: int = 10) -> IdMatches:
        """As ``Client.resolve_ids``."""
        return await self._call(_calls.resolve_ids(kind, prefix, limit=limit))

    async def shutdown(self) -> Empty:
        """Ask the daemon to stop gracefully (it replies first)."""
        return await self._call(_calls.shutdown())
