"""The session-context and checkpoint calls as pure builders of typed ``Call[T]``s (re-exported by ``_calls``)."""

from __future__ import annotations

import os

from . import packing
from ._core import Call
from .packing import Counter
from .protocol import (
    AppendContext,
    Appended,
    Checkpoint,
    CheckpointInfo,
    CheckpointList,
    CheckpointRef,
    ContextEvent,
    ContextPack,
    CreateCheckpoint,
    GetContext,
    ListCheckpoints,
    PackContext,
    RestoreCheckpoint,
    Restored,
    SessionContext,
)


def _project(project_id: str | None, workspace: str | None) -> tuple[str | None, str | None]:
    """(project_id, workspace) for a call; the current directory's project by default."""
    if project_id is None and workspace is None:
        workspace = os.getcwd()
    return project_id, workspace



# -- session context -----------------------------------------------------------------------


def append_context(session_id: str, events: list[ContextEvent]) -> Call[Appended]:
    return Call("context.append", AppendContext(session_id, list(events)), Appended)


def get_context(
    session_id: str,
    *,
    max_files: int = 100,
    max_searches: int = 20,
    max_decisions: int = 50,
    max_memories: int = 50,
    max_changes: int = 100,
) -> Call[SessionContext]:
    params = GetContext(session_id, max_files, max_searches, max_decisions, max_memories, max_changes)
    return Call("context.get", params, SessionContext)


def pack_context(
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
) -> Call[ContextPack]:
    project = (project_id, workspace) if session_id is not None else _project(project_id, workspace)
    params = PackContext(
        session_id=session_id, project_id=project[0], workspace=project[1], budget_tokens=budget_tokens,
        max_files=max_files, max_decisions=max_decisions, max_searches=max_searches, max_memories=max_memories,
        max_tasks=max_tasks, max_messages=max_messages, max_item_chars=max_item_chars, candidates=counter is not None,
    )
    if counter is None:
        return Call("context.pack", params, ContextPack)
    count = counter

    def repack(candidates: ContextPack) -> ContextPack:
        return packing.repack(candidates, budget_tokens, count, counter_name)

    return Call("context.pack", params, ContextPack, shape=repack)


# -- checkpoints ---------------------------------------------------------------------------


def create_checkpoint(session_id: str, name: str, *, note: str | None = None) -> Call[Checkpoint]:
    return Call("checkpoint.create", CreateCheckpoint(session_id, name, note), Checkpoint)


def _checkpoints(result: CheckpointList) -> list[CheckpointInfo]:
    return result.checkpoints


def list_checkpoints(
    session_id: str | None = None, *, project_id: str | None = None, workspace: str | None = None, limit: int = 50
) -> Call[list[CheckpointInfo]]:
    project = (project_id, workspace) if session_id is not None else _project(project_id, workspace)
    return Call("checkpoint.list", ListCheckpoints(session_id, *project, limit), CheckpointList, shape=_checkpoints)


def show_checkpoint(
    key: str, *, project_id: str | None = None, workspace: str | None = None, version: int | None = None
) -> Call[Checkpoint]:
    return Call("checkpoint.show", CheckpointRef(key, project_id, workspace, version), Checkpoint)


def restore_checkpoint(
    key: str,
    *,
    into: str | None = None,
    project_id: str | None = None,
    workspace: str | None = None,
    version: int | None = None,
    tool_id: str = "omnid",
    pid: int | None = None,
    owner_must_be_ancestor: bool = False,
) -> Call[Restored]:
    params = RestoreCheckpoint(
        key=key, project_id=project_id, workspace=workspace, version=version, into=into, tool_id=tool_id, pid=pid,
        owner_must_be_ancestor=owner_must_be_ancestor,
    )
    return Call("checkpoint.restore", params, Restored)
