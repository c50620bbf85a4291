"""``omnid hook``: one agent hook event (JSON on stdin, as Claude Code and agents with the
same hook shapes send it) recorded against the session of the agent that ran the hook.

It fails open: whatever the input or the daemon does, it prints nothing on stdout (an
agent may add a hook's stdout to the model's context), exits 0, and gives up after
``DEADLINE`` seconds."""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from typing import Any, BinaryIO

DEFAULT_TOOL = "agent"
"""The tool id a hook and ``omnid mcp`` use unless told otherwise: the same for both, so an
agent's hooks and its MCP server share one session (keyed by tool and agent process)."""
SESSION_TYPE = "agent"
DEADLINE = 5.0
MAX_INPUT = 8 << 20
"""Bytes of an event kept; a larger one (a tool response holding a whole file) is drained
and recorded by its name alone."""
MAX_TEXT = 8192
MAX_PROMPT = 256 * 1024

CHANGES = {"Write": "write", "Edit": "edit", "MultiEdit": "edit", "NotebookEdit": "edit"}
"""Tools that change the file they name, and the change recorded."""
PATH_KEYS = ("file_path", "notebook_path", "path")
QUERY_KEYS = ("query", "pattern")
QUIET_EVENTS = frozenset({"Stop", "SubagentStop", "PostToolUseFailure"})
"""Events that only say the agent is alive: they touch the session, nothing more."""


class _OutOfTime(Exception):
    pass


def run_hook(stdin: BinaryIO, tool_id: str = DEFAULT_TOOL, pid: int | None = None) -> int:
    """Read one event from ``stdin`` and record it; always returns 0."""
    def out_of_time(*_: Any) -> None:
        raise _OutOfTime()

    signal.signal(signal.SIGALRM, out_of_time)
    signal.setitimer(signal.ITIMER_REAL, DEADLINE)
    try:
        raw = read_input(stdin, time.monotonic() + DEADLINE - 1.0)
        record(parse(raw), tool_id, pid)
    except _OutOfTime:
        _warn(f"gave up after {DEADLINE:g}s")
    except Exception as e:  # fail open: the agent must never see omnid break
        code = getattr(e, "code", type(e).__name__)
        _warn(f"{code}: {e}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return 0


def _warn(message: str) -> None:
    try:
        sys.stderr.write(f"omnid hook: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def read_input(stdin: BinaryIO, deadline: float) -> bytes:
    """Everything on stdin up to EOF (nothing from a terminal), keeping ``MAX_INPUT`` bytes."""
    try:
        fd = stdin.fileno()
    except (OSError, ValueError):
        return stdin.read(MAX_INPUT)
    if os.isatty(fd):
        return b""
    chunks: list[bytes] = []
    kept = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        if kept <= MAX_INPUT:
            chunks.append(chunk)
            kept += len(chunk)
    return b"".join(chunks)


def parse(raw: bytes) -> dict[str, Any]:
    """The event as a dict; input that is not a JSON object becomes ``{"_raw": text}``."""
    import msgspec

    text = raw[:MAX_TEXT].decode(errors="replace").strip()
    if len(raw) > MAX_INPUT:
        return {"_raw": text, "_truncated": len(raw)}
    try:
        event = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {"_raw": text}
    return event if isinstance(event, dict) else {"_raw": text}


def event_name(event: dict[str, Any]) -> str | None:
    for key in ("hook_event_name", "hookEventName", "event", "type"):
        name = event.get(key)
        if isinstance(name, str) and name:
            return name
    return None


def record(event: dict[str, Any], tool_id: str = DEFAULT_TOOL, pid: int | None = None) -> None:
    """Record ``event`` against the session of the agent (``pid``, default: the first ancestor
    that is not a wrapper), creating the session on its first event."""
    from omnid_client import Client

    from .agent import agent_pid

    name = event_name(event)
    owner = pid if pid is not None else agent_pid()
    with Client(client_name="omnid-hook", timeout=2.0, connect_timeout=1.0, start_timeout=2.5) as client:
        if name == "SessionEnd":
            found = client.find(tool_id, pid=owner)
            if found is not None:
                client.end(found.session_id)
            return
        sid = _session(client, tool_id, owner, event)
        if name == "SessionStart":
            return
        if name == "UserPromptSubmit" and isinstance(event.get("prompt"), str):
            client.add_message(sid, "user", event["prompt"][:MAX_PROMPT], message_type="prompt")
            return
        if name in QUIET_EVENTS:
            client.heartbeat(sid)
            return
        if name in ("PreToolUse", "PostToolUse") or (name is None and "tool_name" in event):
            events = tool_events(event)
            if events:
                client.append_context(sid, events)
            else:
                client.heartbeat(sid)
            return
        client.append_context(sid, [generic_event(name, event)])


def _session(client: Any, tool_id: str, owner: int, event: dict[str, Any]) -> str:
    """The agent's live session, created in the event's working directory (or, if the
    daemon will not take that, the agent's own)."""
    from omnid_client import Invalid

    workspace = _absolute(event.get("cwd"))
    while True:
        try:
            got = client.get_or_create(
                tool_id, pid=owner, workspace=workspace, session_type=SESSION_TYPE,
                metadata=_metadata(event), owner_must_be_ancestor=True,
            )
            return got.session.session_id
        except Invalid:
            if workspace is None:
                raise
            workspace = None


def tool_events(event: dict[str, Any]) -> list:
    """Context events for one tool use: the files it read or changed, what it searched for."""
    from omnid_client.protocol import ContextEvent

    tool = event["tool_name"] if isinstance(event.get("tool_name"), str) else ""
    args = event.get("tool_input")
    if not isinstance(args, dict):
        return []
    cwd = event.get("cwd") if isinstance(event.get("cwd"), str) else None
    for key in QUERY_KEYS:
        query = args.get(key)
        if isinstance(query, str) and query:
            # A search's "path" is where it looked, not a file it read.
            return [ContextEvent("search", query[:MAX_TEXT], detail=tool or None)]
    for key in PATH_KEYS:
        path = args.get(key)
        if isinstance(path, str) and path and len(path) <= MAX_TEXT:
            if cwd and not os.path.isabs(path):
                path = os.path.join(cwd, path)
            change = CHANGES.get(tool)
            if change is None:
                return [ContextEvent("file_access", path, detail=tool or None)]
            return [
                ContextEvent("file_access", path, importance=0.8, detail=tool),
                ContextEvent("file_change", path, detail=change),
            ]
    return []


def generic_event(name: str | None, event: dict[str, Any]) -> Any:
    """An event of a shape omnid does not know, kept whole (as far as it fits) for later
    reading and search: a ``decision`` is the context kind that holds free text."""
    import msgspec

    from omnid_client.protocol import ContextEvent

    label = name or "hook event"
    message = event.get("message")
    subject = f"{label}: {message}" if isinstance(message, str) and message else label
    body = event["_raw"] if "_raw" in event else msgspec.json.encode(event).decode(errors="replace")
    return ContextEvent("decision", subject[:MAX_TEXT], detail=body[:MAX_TEXT] or None)


def _metadata(event: dict[str, Any]) -> dict[str, str]:
    metadata = {"via": "hook"}
    for key, name in (("session_id", "agent_session_id"), ("transcript_path", "transcript_path")):
        value = event.get(key)
        if isinstance(value, str) and value:
            metadata[name] = value[:1024]
    return metadata


def _absolute(path: Any) -> str | None:
    return path if isinstance(path, str) and os.path.isabs(path) and len(path) <= 4096 else None
