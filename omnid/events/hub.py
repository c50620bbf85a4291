"""The event hub: numbers what each commit staged, writes it to the event log, and pushes
it to the subscribers whose filters it passes, each through a bounded buffer.

Events are only ever made from a committed transaction (``Store.on_commit``), so nothing a
rolled-back write did is ever told. A subscriber whose buffer fills misses events from then
on and, once it has drained, gets one ``gap`` event saying which and where to resume from.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable

import msgspec

from omnid_client.errors import Invalid, StorageError
from omnid_client.protocol import (
    EVENT_KINDS,
    Event,
    IncomingRequest,
    ResponseFrame,
    Settings,
    Subscribe,
    Subscribed,
)

from ..api import error_info, params_error
from ..config import Config
from ..jobs import Timer
from ..store import ACTIVITY, Staged, Store
from ..store.codec import from_nanos
from .log import EventLog, read_after
from .subscription import Connection, Subscription

log = logging.getLogger("omnid.events")

RING = 8192
"""Recent events kept in memory: most resumes are served from here, not the disk."""
RING_BYTES = 256 * 1024
"""At most this many bytes of them (encoded; kept only so): older ones are read from the log."""
KNOWN_SESSIONS = 2048
"""Sessions whose tool and project are remembered for their events (others are read from
the database once): bounded so that many live sessions do not grow the daemon."""
REPLAY_CHUNK = 2000
"""Events read from disk at a time for a subscriber catching up."""
SUMMARY_INTERVAL = 1.0
"""Seconds between two activity summaries of one session, at least."""
ACTIVE_KINDS = frozenset({"message.added", "context.appended", "memory.put"})
"""Kinds that also mean their session was active (so its summary is due)."""
_KIND_FILTERS = frozenset(EVENT_KINDS) | {k.split(".")[0] for k in EVENT_KINDS}

_subscribe_decoder = msgspec.msgpack.Decoder(Subscribe)
_encoder = msgspec.msgpack.Encoder()
_event_decoder = msgspec.msgpack.Decoder(Event)
Item = tuple[str, str | None, str | None, str | None, dict[str, Any], list[str] | None]
"""(kind, session_id, tool_id, project_id, data, contents) of an event about to be numbered."""


class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop, directory: Path, settings: Settings):
        self.loop = loop
        self.log = EventLog(directory, settings.event_log_size)
        self.log.open()
        self.head = self.log.head
        self.buffer_limit = settings.event_buffer
        self.ring: deque[tuple[int, bytes]] = deque()
        """(seq, encoded event) of the newest events, at most RING of them and RING_BYTES."""
        self._ring_bytes = 0
        self.subscribers: set[Subscription] = set()
        self.store: Store | None = None
        self._sessions: dict[str, tuple[str | None, str | None]] = {}
        """session_id -> (tool_id, project_id) of sessions events were about lately."""
        self._last_summary: dict[str, float] = {}
        self._due: set[str] = set()
        self._timer = Timer(loop, self._summaries_due, "activity summaries", log)
        self.listeners: list[Callable[[list[Item]], None]] = []
        """Told what each commit published, in the daemon (workspace tracking follows sessions so)."""

    @property
    def oldest(self) -> int:
        """The oldest sequence number still kept (on disk or in memory)."""
        ring_first = self.ring[0][0] if self.ring else self.head + 1
        return min(self.log.oldest, ring_first) if self.log.max_bytes else ring_first

    def attach(self, store: Store) -> None:
        self.store = store
        store.on_commit = self.committed
        store.on_failure = self.storage_failed
        store.guard.on_refusal = self.storage_refused

    def configure(self, settings: Settings) -> None:
        self.log.configure(settings.event_log_size)
        self.buffer_limit = settings.event_buffer

    def close(self) -> None:
        self._timer.cancel()
        self.log.close()

    # -- what happened --------------------------------------------------------------------

    def committed(self, staged: list[Staged]) -> None:
        """A transaction committed having staged these (called right after its COMMIT,
        before anything else writes: reads now see exactly what it committed)."""
        items: list[Item] = []
        active: list[str] = []
        ended: set[str] = set()
        for s in staged:
            sid = s.session_id
            if s.kind == ACTIVITY:
                if sid is not None:
                    active.append(sid)
                continue
            tool, project = s.tool_id, s.project_id
            if sid is not None:
                if s.kind == "session.created":
                    self._remember(sid, tool, project)
                elif tool is None:
                    tool, known = self._session_info(sid)
                    project = project or known
                if s.kind in ACTIVE_KINDS:
                    active.append(sid)
                elif s.kind == "session.ended":
                    ended.add(sid)
            items.append((s.kind, sid, tool, project, s.data, s.content))
        self.publish(items)
        for listener in self.listeners:
            try:
                listener(items)
            except Exception:
                log.exception("a listener to committed events failed")
        for sid in ended:
            self._sessions.pop(sid, None)
            self._last_summary.pop(sid, None)
            self._due.discard(sid)
        self._note_active([sid for sid in active if sid not in ended])

    def storage_failed(self, message: str, reason: str = "commit_failed") -> None:
        self.publish([("storage.error", None, None, None, {"message": message, "reason": reason}, None)])

    def storage_refused(self, refusal: StorageError) -> None:
        """Writes are refused from now on: the database file is gone, or over its quota."""
        self.storage_failed(str(refusal), str(refusal.details.get("reason", "refused")))

    def config_reloaded(self, before: Settings, config: Config) -> None:
        after = config.settings
        changed = [name for name in after.__struct_fields__ if getattr(after, name) != getattr(before, name)]
        self.configure(after)
        data = {"state": config.state, "error": config.error, "changed": changed}
        self.publish([("config.reloaded", None, None, None, data, None)])

    def publish(self, items: Iterable[Item]) -> None:
        now = time.time()
        batch: list[tuple[Event, list[str] | None]] = []
        for kind, sid, tool, project, data, contents in items:
            self.head += 1
            batch.append((Event(self.head, kind, now, sid, tool, project, data), contents))  # type: ignore[arg-type]
        if not batch:
            return
        self.log.append([e for e, _ in batch])
        for event, contents in batch:
            raw = _encoder.encode(event)
            self._keep(event.seq, raw)
            for sub in list(self.subscribers):
                sub.offer(event, raw, contents)

    def _keep(self, seq: int, raw: bytes) -> None:
        ring = self.ring
        ring.append((seq, raw))
        self._ring_bytes += len(raw)
        while len(ring) > RING or self._ring_bytes > RING_BYTES:
            self._ring_bytes -= len(ring.popleft()[1])

    def _remember(self, sid: str, tool: str | None, project: str | None) -> None:
        if len(self._sessions) >= KNOWN_SESSIONS:
            self._sessions.clear()
        self._sessions[sid] = (tool, project)

    def _session_info(self, sid: str) -> tuple[str | None, str | None]:
        known = self._sessions.get(sid)
        if known is None and self.store is not None:
            row = self.store.db.execute(
                "SELECT tool_id, project_id FROM sessions WHERE session_id = ?", (sid,)
            ).fetchone()
            known = (row[0], row[1]) if row else (None, None)
            self._remember(sid, *known)
        return known or (None, None)

    # -- activity summaries ---------------------------------------------------------------

    def _note_active(self, sids: list[str]) -> None:
        if not sids:
            return
        now = self.loop.time()
        ready = []
        for sid in dict.fromkeys(sids):
            last = self._last_summary.get(sid)
            if last is None or now - last >= SUMMARY_INTERVAL:
                ready.append(sid)
            else:
                self._due.add(sid)
        self._summarize(ready, now)
        self._arm_summaries(now)

    def _arm_summaries(self, now: float) -> None:
        if self._due and not self._timer.armed:
            first = min(self._last_summary.get(sid, now) for sid in self._due)
            self._timer.arm(max(first + SUMMARY_INTERVAL - now, 0.0))

    def _summaries_due(self) -> None:
        store = self.store
        if store is not None and store.in_transaction:
            # Read the counters only once what is being written now has committed.
            store.after_commit(lambda _error: self._summarize_due())
        else:
            self._summarize_due()

    def _summarize_due(self) -> None:
        now = self.loop.time()
        never = now - SUMMARY_INTERVAL
        ready = [sid for sid in self._due if now - self._last_summary.get(sid, never) >= SUMMARY_INTERVAL]
        self._due.difference_update(ready)
        self._summarize(ready, now)
        self._arm_summaries(now)

    def _summarize(self, sids: list[str], now: float) -> None:
        store = self.store
        if not sids or store is None:
            return
        if len(self._last_summary) > RING:  # only the last second's matter
            self._last_summary = {s: t for s, t in self._last_summary.items() if now - t < SUMMARY_INTERVAL}
        items: list[Item] = []
        for start in range(0, len(sids), 500):
            chunk = sids[start : start + 500]
            rows = store.db.execute(
                "SELECT session_id, tool_id, project_id, last_activity, message_count, total_tokens, total_cost_nanos, "
                "context_event_count FROM sessions WHERE ended_at IS NULL "
                f"AND session_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for sid, tool, project, last_activity, messages, tokens, nanos, context_events in rows:
                self._last_summary[sid] = now
                pending = store.pending_activity(sid)
                data = {
                    "last_activity": max(last_activity, pending or 0.0),
                    "message_count": messages,
                    "total_tokens": tokens,
                    "total_cost": from_nanos(nanos),
                    "context_events": context_events,
                }
                items.append(("session.activity", sid, tool, project, data, None))
        self.publish(items)

    # -- subscribers ----------------------------------------------------------------------

    def subscribe(self, conn: Connection, request: IncomingRequest) -> None:
        """Answer ``events.subscribe`` on ``conn`` and stream events to it from then on."""
        try:
            params = _subscribe_decoder.decode(request.params)
            bad = sorted(set(params.kinds) - _KIND_FILTERS)
            if bad:
                raise Invalid(
                    f"events.subscribe: unknown event kind {bad[0]!r} (known: {', '.join(EVENT_KINDS)})",
                    {"field": "kinds"},
                )
            if conn.subscription is not None:
                raise Invalid("events.subscribe: this connection is already subscribed; open another")
        except (msgspec.DecodeError, RecursionError) as e:
            conn.send(ResponseFrame(request.id, error=error_info(params_error("events.subscribe", e))))
            return
        except Invalid as e:
            conn.send(ResponseFrame(request.id, error=error_info(e)))
            return
        transport = conn.transport
        if transport is None:
            return
        sub = Subscription(conn, request.id, params, self.buffer_limit, self.pump)
        conn.send(ResponseFrame(request.id, result=Subscribed(self.head, self.oldest)))
        conn.subscription = sub
        self.subscribers.add(sub)
        # The write buffer is this subscriber's buffer: past it, pause_writing; drained,
        # resume_writing (which calls drained()). It replaces the reply bound of the connection.
        transport.set_write_buffer_limits(high=sub.limit, low=sub.limit // 4)
        since = params.since
        if since is None or since >= self.head:
            sub.position = self.head
            if since is not None and since > self.head:
                # This daemon's numbering is behind what the subscriber saw: its log was lost.
                sub.send_gap(self.head + 1, since, resume=None, reason="reset", seq=self.head)
            return
        sub.position = since
        sub.catching_up = True
        self.pump(sub)

    def pump(self, sub: Subscription) -> None:
        """Catch a subscriber up from the ring, or the log on disk, as fast as it reads: a
        full buffer pauses this until it drains; once it is at the head it is live."""
        while sub.catching_up and not sub.closed and not sub.reading:
            if sub.full():
                return  # drained() calls again
            if sub.pending:
                event, raw = sub.pending.popleft()
                sub.catch_up(event, raw)
                continue
            if sub.position >= self.head:
                sub.catching_up = False
                return
            ring_first = self.ring[0][0] if self.ring else self.head + 1
            if ring_first <= sub.position + 1:
                sub.pending.extend((_event_decoder.decode(raw), raw) for seq, raw in self.ring if seq > sub.position)
            elif self.log.max_bytes:
                sub.reading = True
                fds = self.log.readers()
                future = self.loop.run_in_executor(None, read_after, fds, sub.position, ring_first - 1, REPLAY_CHUNK)
                future.add_done_callback(functools.partial(self._read, sub, ring_first - 1))
            else:
                sub.fill_hole(ring_first)

    def _read(self, sub: Subscription, upto: int, future: asyncio.Future[list[Event]]) -> None:
        sub.reading = False
        if sub.closed:
            return
        try:
            events = future.result()
        except Exception:
            log.exception("reading the event log failed")
            events = []
        if events:
            sub.pending.extend((event, _encoder.encode(event)) for event in events)
        else:
            sub.fill_hole(upto + 1)  # not on disk (any more): gone
        self.pump(sub)

    def unsubscribe(self, sub: Subscription) -> None:
        sub.closed = True
        self.subscribers.discard(sub)
