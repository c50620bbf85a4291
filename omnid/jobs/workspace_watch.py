"""The thread side of workspace tracking: walks the tracked project roots and watches their
directories with watchfiles, handing each debounced batch of file changes to the loop.

watchfiles is imported here, lazily, only when the first tracked root is watched. Its
recursive mode follows symbolic links (and watches ignored trees like node_modules), so
each directory is watched on its own (``recursive=False``) from a walk that never follows a
link and skips ignored directories; a directory created later is walked and added by
re-opening the watcher. Nothing here raises into the thread's caller: every failure is
logged and reported (a root that vanished or grew too large is dropped, the rest go on).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from .gitignore import GitIgnore

log = logging.getLogger("omnid.workspace")

STEP_MS = 1000
"""watchfiles' Rust loop sleeps this long between looks at what inotify queued: with no
timeout it never returns while nothing changes, so this is the watcher's only periodic
wakeup (once a second), and at most this long passes before a stop is seen."""
DEBOUNCE_MS = 2000
"""A batch is handed over once a look finds nothing new, or after this long of steady changes."""
MAX_FILES_PER_BATCH = 5000
"""Changes recorded per batch and root at most (a checkout of a huge tree is not a log)."""

Change = tuple[str, str, str]
"""(root, path relative to it, "added" | "modified" | "deleted")"""


class TooManyDirectories(Exception):
    def __init__(self, root: str, limit: int):
        super().__init__(f"{root} has more than {limit} directories (not counting ignored ones)")
        self.root, self.limit = root, limit


class Ignore:
    """watchfiles' default filter (.git, node_modules, __pycache__, virtualenvs, editor
    droppings) and the root's .gitignore, for one root."""

    def __init__(self, root: str):
        from watchfiles.filters import DefaultFilter

        self.dirs = frozenset(DefaultFilter.ignore_dirs) | {"venv", ".direnv"}
        self.names = tuple(re.compile(p) for p in DefaultFilter.ignore_entity_patterns)
        self.gitignore = GitIgnore.read(root)

    def __call__(self, rel: str, is_dir: bool) -> bool:
        name = rel.rsplit("/", 1)[-1]
        if any(part in self.dirs for part in rel.split("/")) or any(r.search(name) for r in self.names):
            return True
        return self.gitignore.ignored(rel, is_dir)


@dataclass
class Root:
    key: str
    """The root as sessions name it (their project's root)."""
    path: str = ""
    """Where it really is (links resolved once, when it starts being watched)."""
    ignore: Ignore | None = None
    dirs: set[str] = field(default_factory=set)


def scan(root: Root, top: str, limit: int, files: list[str] | None = None) -> None:
    """Add the directories under ``top`` (itself included) to ``root.dirs``, never following
    a link or entering an ignored directory; the files found go to ``files``. Raises
    TooManyDirectories past ``limit``; unreadable directories are skipped."""
    assert root.ignore is not None
    pending = [top]
    while pending:
        current = pending.pop()
        root.dirs.add(current)
        if len(root.dirs) > limit:
            raise TooManyDirectories(root.key, limit)
        try:
            with os.scandir(current) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            rel = os.path.relpath(entry.path, root.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if root.ignore(rel, is_dir):
                continue
            if is_dir:
                pending.append(entry.path)
            elif files is not None:
                files.append(rel)


def count_dirs(key: str, limit: int) -> int:
    """The directories a root would be watched with; TooManyDirectories past ``limit``,
    OSError if it is not a directory that can be read."""
    root = opened(key, limit)
    return len(root.dirs)


def opened(key: str, limit: int) -> Root:
    path = os.path.realpath(key)
    if not stat.S_ISDIR(os.stat(path).st_mode):
        raise NotADirectoryError(f"{key} is not a directory")
    os.listdir(path)  # PermissionError now, not a silently empty watch
    root = Root(key, path, Ignore(path))
    scan(root, path, limit)
    return root


class WatchThread(threading.Thread):
    """Watches the directories of ``keys``' roots until ``stop()``; ``report(changes)`` and
    ``dropped(key, why)`` are called from this thread."""

    def __init__(
        self, keys: list[str], limit: int, report: Callable[[list[Change]], None],
        dropped: Callable[[str, str], None],
    ):
        super().__init__(name="omnid-workspace", daemon=True)
        self.keys, self.limit, self.report, self.dropped = keys, limit, report, dropped
        self.roots: dict[str, Root] = {}
        self.watching: list[str] = []
        """The roots whose directories are being watched right now."""
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # noqa: BLE001 - a watcher failing must never take the daemon with it
            log.exception("the workspace watcher failed; file changes are no longer recorded")
            for key in list(self.roots) or self.keys:
                self.dropped(key, f"the watcher failed: {e}")

    def _drop(self, key: str, why: str) -> None:
        self.roots.pop(key, None)
        self.dropped(key, why)

    def _run(self) -> None:
        for key in self.keys:
            try:
                self.roots[key] = opened(key, self.limit)
            except TooManyDirectories as e:
                self._drop(key, str(e))
            except OSError as e:
                self._drop(key, f"cannot watch {key}: {e.strerror or e}")
        notify = self._open()
        try:
            while notify is not None and not self.stopping.is_set():
                try:
                    raw = notify.watch(DEBOUNCE_MS, STEP_MS, 0, self.stopping)
                except RuntimeError as e:  # the watcher's own error (an inotify queue overflow, ...)
                    log.warning("workspace watcher: %s; watching again", e)
                    notify.close()
                    notify = self._open()
                    continue
                if raw == "stop":
                    return
                if isinstance(raw, str):
                    continue
                changes, reopen = self._sort(raw)
                if changes:
                    self.report(changes)
                if reopen:
                    notify.close()
                    notify = self._open()
        finally:
            self.watching = []
            if notify is not None:
                notify.close()

    def _open(self) -> Any:
        """A watcher on every directory of every root still watched; None if there is none."""
        from watchfiles._rust_notify import RustNotify

        for key, root in list(self.roots.items()):
            if not os.path.isdir(root.path):
                self._drop(key, f"{key} is gone")
        dirs = sorted({d for root in self.roots.values() for d in root.dirs})
        self.watching = []
        if not dirs or self.stopping.is_set():
            return None
        try:
            notify = RustNotify(dirs, False, False, 300, False, False)
        except (OSError, RuntimeError) as e:
            # A directory removed since the walk, one we may not read, or the inotify watch
            # limit (fs.inotify.max_user_watches): watch what can be watched.
            log.warning("workspace watcher: %s; watching the directories that can be", e)
            notify = RustNotify(dirs, False, False, 300, False, True)
        self.watching = sorted(self.roots)
        return notify

    def _sort(self, raw: set[tuple[int, str]]) -> tuple[list[Change], bool]:
        """The changes to record (one per file: coalesced), and whether new directories
        must be watched."""
        codes: dict[str, set[int]] = {}
        for code, path in raw:
            codes.setdefault(path, set()).add(code)
        changes: list[Change] = []
        reopen = False
        for key, root in list(self.roots.items()):
            prefix = root.path.rstrip("/") + "/"
            found: list[Change] = []
            for path, kinds in codes.items():
                if path == root.path:
                    if not os.path.isdir(path):
                        self._drop(key, f"{key} was removed")
                        reopen = True
                        break
                    continue
                if not path.startswith(prefix):
                    continue
                reopen |= self._one(root, path, path[len(prefix):], kinds, found)
            else:
                if len(found) > MAX_FILES_PER_BATCH:
                    log.info("workspace %s: %d changes at once, recording %d", key, len(found), MAX_FILES_PER_BATCH)
                changes.extend(found[:MAX_FILES_PER_BATCH])
        return changes, reopen

    def _one(self, root: Root, path: str, rel: str, kinds: set[int], found: list[Change]) -> bool:
        assert root.ignore is not None
        try:
            st: os.stat_result | None = os.lstat(path)
        except OSError:
            st = None
        is_dir = st is not None and stat.S_ISDIR(st.st_mode)
        if st is None and path in root.dirs:  # a watched directory went away
            root.dirs.difference_update([d for d in root.dirs if d == path or d.startswith(path + "/")])
            return False
        if root.ignore(rel, is_dir):
            return False
        if is_dir:
            if path in root.dirs:
                return False
            files: list[str] = []
            try:
                scan(root, path, self.limit, files)
            except TooManyDirectories as e:
                self._drop(root.key, str(e))
                return True
            found.extend((root.key, f, "added") for f in files)
            return True
        if st is not None:
            found.append((root.key, rel, "added" if 1 in kinds else "modified"))
        elif 1 not in kinds:  # created and removed within the batch: nothing to tell
            found.append((root.key, rel, "deleted"))
        return False
