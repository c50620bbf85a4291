"""Workspace change tracking: which live sessions want their project root's file changes
recorded, one watcher thread over all those roots while there is any, and the changes it
reports written as each session's ``file_change`` context events.

A session is tracked while it is live if it asked (``get_or_create(track_workspace=True)``,
kept on its row, so a restarted daemon goes on) or if the config says ``track_workspace =
true`` and it has a workspace. The watcher (``workspace_watch.WatchThread``) is started
when the first tracked root appears and stopped when the last one goes: an idle daemon
with no tracked session runs no thread, imports no watchfiles and never wakes up for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any, Callable

from omnid_client.errors import Invalid, TooLarge
from omnid_client.protocol import ContextEvent, Settings

from ..store import Store, context as context_store
from .compaction import Compactor
from .workspace_watch import Change, TooManyDirectories, WatchThread, count_dirs

log = logging.getLogger("omnid.workspace")

_TRACKED = (
    "SELECT s.session_id, s.project_id, p.root FROM sessions s JOIN projects p ON p.project_id = s.project_id "
    "WHERE s.ended_at IS NULL AND (s.track_workspace = 1 OR ?)"
)


class Workspaces:
    def __init__(
        self, store: Store, loop: asyncio.AbstractEventLoop, settings: Callable[[], Settings], compactor: Compactor
    ):
        self.store, self.loop, self.settings, self.compactor = store, loop, settings, compactor
        self.sessions: dict[str, tuple[str, str | None]] = {}
        """session_id -> (project root, project_id) of each tracked live session."""
        self.dropped: dict[str, str] = {}
        """Roots the watcher gave up on (removed, grown too large), and why: their sessions
        stay untracked until one asks again."""
        self.thread: WatchThread | None = None
        self._watching: frozenset[str] = frozenset()
        self._pending = False
        self.recorded = 0

    @property
    def roots(self) -> list[str]:
        """The roots being tracked (a watcher may still be starting on some)."""
        return sorted(self._watching)

    @property
    def watching(self) -> list[str]:
        """The roots whose changes are being seen right now (the watcher is on them)."""
        return list(self.thread.watching) if self.thread is not None else []

    # -- which sessions -------------------------------------------------------------------

    def start(self) -> None:
        """Track what the database says is tracked (at daemon start, and after a config change)."""
        config = self.settings().track_workspace
        rows = self.store.db.execute(_TRACKED, (int(config),)).fetchall()
        self.sessions = {sid: (root, project) for sid, project, root in rows if root not in self.dropped}
        self._apply()

    def configure(self) -> None:
        """The tracking settings changed: follow them, retrying the roots given up on."""
        self.dropped.clear()
        self.stop()
        self.start()

    def session_live(self, sid: str) -> None:
        """``sid`` was created, resumed or asked to be tracked: track it if it should be."""
        row = self.store.db.execute(
            "SELECT s.project_id, p.root, s.track_workspace FROM sessions s JOIN projects p "
            "ON p.project_id = s.project_id WHERE s.session_id = ? AND s.ended_at IS NULL",
            (sid,),
        ).fetchone()
        if row is None:
            return
        project, root, asked = row
        if not asked and not self.settings().track_workspace:
            return
        if asked:
            self.dropped.pop(root, None)  # asking again retries a root given up on
        if root not in self.dropped:
            self.sessions[sid] = (root, project)
            self._apply()

    def session_ended(self, sid: str) -> None:
        if self.sessions.pop(sid, None) is not None:
            self._apply()

    def committed(self, items: list[tuple[Any, ...]]) -> None:
        """The event hub's news of a commit: (kind, session_id, ...) per event."""
        for kind, sid, *_ in items:
            if sid is None:
                continue
            if kind in ("session.created", "session.resumed"):
                self.session_live(sid)
            elif kind == "session.ended":
                self.session_ended(sid)

    async def admit(self, root: str) -> None:
        """Check, off the event loop, that ``root`` can be watched: TooLarge if it has more
        directories than ``workspace_max_dirs``, Invalid if it is no readable directory."""
        if root in self._watching:
            return
        limit = self.settings().workspace_max_dirs
        try:
            await self.loop.run_in_executor(None, count_dirs, root, limit)
        except TooManyDirectories:
            raise TooLarge(
                f"cannot track {root}: it has more than {limit} directories (workspace_max_dirs; ignored ones "
                "such as .git, node_modules and .gitignore entries do not count)",
                {"field": "track_workspace", "root": root, "limit": limit},
            ) from None
        except OSError as e:
            raise Invalid(
                f"cannot track {root}: {e.strerror or e}", {"field": "track_workspace", "root": root}
            ) from None

    # -- the watcher ----------------------------------------------------------------------

    def _apply(self) -> None:
        """Make the watcher follow the tracked roots, once this loop iteration is done."""
        if not self._pending:
            self._pending = True
            self.loop.call_soon(self._restart)

    def _restart(self) -> None:
        self._pending = False
        wanted = frozenset(root for root, _ in self.sessions.values())
        if wanted == self._watching and (self.thread is not None or not wanted):
            return
        self.stop()
        self._watching = wanted
        if wanted:
            self.thread = WatchThread(sorted(wanted), self.settings().workspace_max_dirs, self._report, self._dropped)
            self.thread.start()
            log.info("recording file changes under %s", ", ".join(sorted(wanted)))
        else:
            log.info("no tracked workspace left: the file watcher stopped")

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()  # it ends within a watchfiles step (a second)
            self.thread = None
        self._watching = frozenset()

    def _report(self, changes: list[Change]) -> None:
        """From the watcher thread."""
        self._from_thread(self.record, changes)

    def _dropped(self, root: str, why: str) -> None:
        """From the watcher thread."""
        self._from_thread(self.give_up, root, why)

    def _from_thread(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed: the daemon is stopping
            pass

    def give_up(self, root: str, why: str) -> None:
        if root not in self._watching:
            return
        log.warning("no longer recording file changes under %s: %s", root, why)
        self.dropped[root] = why
        self.sessions = {sid: v for sid, v in self.sessions.items() if v[0] != root}
        # The watcher has let the root go already and goes on with the others: restarting it
        # would only open a moment in which their changes are missed.
        self._watching = self._watching - {root}
        self._apply()

    def record(self, changes: list[Change]) -> None:
        """Write each change as a file_change context event of every session tracking its root."""
        by_root: dict[str, list[ContextEvent]] = defaultdict(list)
        for root, rel, kind in changes:
            if root in self._watching:
                by_root[root].append(ContextEvent("file_change", rel[:8192], None, kind))
        sessions = [(sid, root, project) for sid, (root, project) in self.sessions.items() if root in by_root]
        if not sessions:
            return
        store = self.store
        try:
            store.guard.ensure_writable(grows=True, adding=sum(len(e) for e in by_root.values()) * 64)
            with store.write() as db:
                now = store.now()
                for sid, root, project in sessions:
                    live = db.execute("SELECT 1 FROM sessions WHERE session_id = ? AND ended_at IS NULL", (sid,))
                    if live.fetchone():
                        context_store.append(db, sid, project, by_root[root], now)
                        self.compactor.after_append(db, sid, self.settings(), now)
                        self.recorded += len(by_root[root])
                    elif self.sessions.pop(sid, None) is not None:  # deleted under us
                        self._apply()
        except Exception as e:  # noqa: BLE001 - a refused or failed write loses these changes, never the daemon
            log.warning("file changes not recorded: %s", e)
