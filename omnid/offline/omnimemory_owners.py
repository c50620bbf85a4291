"""Whether an imported OmniMemory session comes in live (its owner still runs and is this user's), and its counters."""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

import msgspec
import psutil

from omnid_client import Client
from omnid_client.protocol import Record, SessionRecord

from .. import identity
from .omnimemory_source import Report, Source

COUNTERS = ("tokens_saved", "total_compressions", "total_embeddings", "total_workflows")
"""The per-session counters OmniMemory shows: ``tool_sessions`` columns its ``end_session``
fills in, and for a session not ended, the sums of the ``metrics`` table's deltas."""
OWNER_SLACK = 2.0
"""Seconds: CURRENT_TIMESTAMP drops fractions, so a session's last activity may read up to
a second before its owner process started."""


def live_owner(pid: int, last_activity: float) -> identity.ProcessInfo | None:
    """The running process that owns a session OmniMemory never ended: ``pid`` runs, is
    this user's, and had started when the session was last active (else the pid was reused)."""
    info = identity.inspect(pid)
    if info is None or info.uid != os.geteuid() or info.identity.start == 0:
        return None
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        return None
    return info if started <= last_activity + OWNER_SLACK else None


def one_live_per_owner_and_key(sessions: list[dict[str, Any]]) -> None:
    """OmniMemory may leave several sessions of one tool and process (or of one tool and
    instance id) unended; omnid keeps one live session per (tool, owner) and per (tool,
    resume key): the most recently active keeps its ``owner``, the others end as reaped."""
    seen: set[tuple[str, str, Any]] = set()
    for s in sorted(sessions, key=lambda s: -s["last"]):
        if s["owner"] is None:
            continue
        keys = {(s["tool_id"], "pid", s["owner"].identity.pid)}
        if s["resume_key"] is not None:
            keys.add((s["tool_id"], "key", s["resume_key"]))
        if keys & seen:
            s["owner"] = None
        else:
            seen |= keys


def end_on_import(r: SessionRecord, report: Report) -> SessionRecord:
    """The session ended as reaped at its last activity, its owner kept as a bare pid."""
    report.sessions["live"] -= 1
    report.sessions["ended_on_import"] += 1
    return msgspec.structs.replace(r, ended_at=r.last_activity, end_reason="reaped", owner_start=None, boot_id=None)


def settle_live(records: Iterable[Record], report: Report, client: Client) -> Iterator[Record]:
    """The records, as they come, except that a session to be imported live comes in ended
    when omnid already has a live session of the same tool with the same owner (one live
    session per tool and process) or the same resume key (one live session per key)."""
    live_keys: dict[str, dict[str, str]] = {}
    for r in records:
        if isinstance(r, SessionRecord) and r.ended_at is None:
            why = None
            current = client.find(r.tool_id, pid=r.owner_pid) if r.owner_pid is not None else None
            if current is not None and current.session_id != r.session_id:
                why = "owner_had_live_session"
            elif r.resume_key is not None:
                if r.tool_id not in live_keys:
                    live_keys[r.tool_id] = _live_keys(client, r.tool_id)
                if live_keys[r.tool_id].get(r.resume_key, r.session_id) != r.session_id:
                    why = "key_had_live_session"
            if why is not None:
                r = end_on_import(r, report)
                report.sessions[why] = report.sessions.get(why, 0) + 1
        yield r


def _live_keys(client: Client, tool_id: str) -> dict[str, str]:
    """The resume keys of the tool's live sessions in omnid, each with its session id."""
    keys: dict[str, str] = {}
    cursor = None
    while True:
        page = client.list_sessions(tool_id=tool_id, status="live", archived="include", limit=200, cursor=cursor)
        keys.update((s.resume_key, s.session_id) for s in page.sessions if s.resume_key is not None)
        if not page.next_cursor:
            return keys
        cursor = page.next_cursor


def metric_sums(source: Source, sessions: set[str]) -> dict[str, dict[str, int]]:
    """For each of ``sessions``, the sums of the ``metrics`` table's ``*_delta`` counters
    (what OmniMemory's ``/sessions/{id}/metrics`` shows while a session runs), read a row
    at a time like every other table."""
    present = [c for c in COUNTERS if f"{c}_delta" in source.columns("metrics")] if "metrics" in source.tables else []
    if not present or "session_id" not in source.columns("metrics"):
        return {}
    sums: dict[str, dict[str, int]] = {}
    for row in source.rows("metrics", ("session_id", *(f"{c}_delta" for c in present))):
        sid = row.get("session_id")
        if isinstance(sid, bytes):
            sid = sid.decode("utf-8", "replace")
        if sid is None or str(sid) not in sessions:
            continue
        into = sums.setdefault(str(sid), {})
        for c in present:
            delta = row.get(f"{c}_delta")
            if isinstance(delta, int) and not isinstance(delta, bool):
                into[c] = into.get(c, 0) + delta
    return sums


def counters(tool_session: dict[str, Any], deltas: dict[str, int]) -> dict[str, int]:
    """A session's counters: those OmniMemory stored when it ended, else its running sums."""
    found = {c: tool_session[c] for c in COUNTERS if _count(tool_session.get(c))}
    for name, total in deltas.items():
        if not found.get(name):  # not ended yet in OmniMemory: its running sums are what it shows
            found[name] = total
    return {c: min(max(n, -(2**63)), 2**63 - 1) for c, n in found.items()}


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
