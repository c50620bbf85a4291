"""Compaction of large sessions: when a session's context rows pass the configured count
(or hold events past the configured age), fold the old ones into per-subject totals in the
same transaction as the append that crossed the line."""

from __future__ import annotations

import sqlite3

from omnid_client.protocol import Settings

from ..store import context as context_store


class Compactor:
    """Decides when an append should fold, so the check costs one read per append at most
    and a fold runs at most once per ``slack`` events a session gains."""

    MAX_TRACKED = 10_000

    def __init__(self) -> None:
        self._due: dict[str, int] = {}

    def after_append(
        self, db: sqlite3.Connection, session_id: str, settings: Settings, now: float, *, raw: int | None = None
    ) -> int:
        """Fold if due (inside the caller's transaction); returns how many events were folded.
        ``raw``: the session's unfolded events, if the caller knows them (else they are read)."""
        keep, age = settings.context_keep_events, settings.context_fold_after
        if not keep and not age:
            return 0
        slack = max(1000, keep // 10)
        if raw is None:
            raw = context_store.raw_count(db, session_id)
        if raw < self._due.get(session_id, keep + slack):
            return 0
        folded = context_store.fold(db, session_id, keep=keep, before=now - age if age else None)
        if len(self._due) >= self.MAX_TRACKED:
            self._due.clear()
        self._due[session_id] = raw - folded + slack
        return folded

    def forget(self) -> None:
        """After a rollback the counts it went by may be gone: check afresh."""
        self._due.clear()
