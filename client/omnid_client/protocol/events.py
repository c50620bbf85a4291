"""The event stream: ``events.subscribe`` and the event frames that follow its reply.

A connection that subscribes gets the usual reply (``Subscribed``) and from then on one
``EventFrame`` per event, carrying the subscribe request's id. Only a connection that
asked for them ever sees event frames, so clients that never subscribe are unaffected.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from .fields import ProjectId, SessionId, ToolId

EventKind = Literal[
    "session.created",
    "session.resumed",
    "session.ended",
    "session.activity",
    "context.appended",
    "memory.put",
    "memory.deleted",
    "message.added",
    "config.reloaded",
    "storage.error",
    "gap",
]
"""What happened. ``gap`` is not an event of its own but news that some were not
delivered: its data says which (``from_seq``..``to_seq``), why (``reason``: "slow",
"expired" or "reset") and where to resume from (``resume``, or None when they are gone)."""

EVENT_KINDS: tuple[str, ...] = EventKind.__args__  # type: ignore[attr-defined]

KindFilter = Annotated[str, Meta(min_length=1, max_length=64)]
"""An event kind, or the part before its dot ("session" for every session.* kind)."""


class Subscribe(Struct, omit_defaults=True):
    """Filters are each "any of these" (empty: everything); an event passes when it passes
    all of them. An event about no particular session (config.reloaded, storage.error)
    passes the tool, project and session filters."""

    kinds: Annotated[list[KindFilter], Meta(max_length=32)] = []
    tools: Annotated[list[ToolId], Meta(max_length=64)] = []
    projects: Annotated[list[ProjectId], Meta(max_length=64)] = []
    sessions: Annotated[list[SessionId], Meta(max_length=256)] = []
    since: Annotated[int, Meta(ge=0)] | None = None
    """Replay the kept events after this sequence number first; None: only new ones."""
    include_content: bool = False
    """message.added carries each message's content (only while the daemon still holds it
    in memory: events replayed from its on-disk log never do)."""


class Subscribed(Struct):
    head: int
    """The sequence number of the latest event so far (0: none yet)."""
    oldest: int
    """The oldest sequence number still kept for replay (head + 1 when none is)."""


class Event(Struct, omit_defaults=True):
    seq: int
    kind: EventKind
    at: float
    """When it was committed (UTC epoch seconds)."""
    session_id: str | None = None
    tool_id: str | None = None
    project_id: str | None = None
    data: dict[str, Any] = {}


class EventFrame(Struct):
    """One pushed event; ``id`` is the subscribe request's."""

    id: int
    event: Event
