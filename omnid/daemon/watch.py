"""Noticing changes to directory entries (config file, socket, installed package) from the
kernel — inotify on Linux, kqueue on macOS/BSD — on the event loop, without polling.

watchfiles is not used here on purpose: its watch loop wakes every ``step`` milliseconds
(50 by default), which would keep an idle daemon busy twenty times a second.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import select
import struct
import sys
from pathlib import Path
from typing import Callable, Protocol

log = logging.getLogger("omnid.watch")

Callback = Callable[["set[str] | None"], None]
"""Called with the names of the entries that changed, or None when that is unknown
(the directory itself went away, events were lost, or the platform does not say)."""

# <sys/inotify.h>
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = 0o2000000
_MASK = IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")


class _Watcher(Protocol):
    mode: str

    def watch(self, directory: Path, callback: Callback) -> None: ...

    def close(self) -> None: ...


class InotifyWatcher:
    mode = "inotify"

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._libc = ctypes.CDLL(None, use_errno=True)  # the C library this interpreter runs on
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)}")
        self._fd = fd
        self._loop = loop
        self._watches: dict[int, tuple[Path, list[Callback]]] = {}
        loop.add_reader(fd, self._read)

    def watch(self, directory: Path, callback: Callback) -> None:
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _MASK | IN_ONLYDIR)
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"cannot watch {directory}: {os.strerror(e)}")
        _, callbacks = self._watches.setdefault(wd, (directory, []))
        if callback not in callbacks:
            callbacks.append(callback)

    def _read(self) -> None:
        changed: dict[Callback, set[str] | None] = {}

        def note(callbacks: list[Callback], name: str | None) -> None:
            for cb in callbacks:
                if name is None:
                    changed[cb] = None
                elif cb not in changed:
                    changed[cb] = {name}
                elif changed[cb] is not None:
                    changed[cb].add(name)  # type: ignore[union-attr]

        while True:
            try:
                data = os.read(self._fd, 65536)  # retries a read a signal interrupts itself (PEP 475)
            except BlockingIOError:
                break
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
                offset += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    for _, callbacks in self._watches.values():
                        note(callbacks, None)
                    continue
                entry = self._watches.get(wd)
                if entry is None:
                    continue
                if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                    if mask & IN_IGNORED:
                        del self._watches[wd]
                    note(entry[1], None)
                    continue
                note(entry[1], os.fsdecode(raw.rstrip(b"\0")))
        for callback, names in changed.items():
            try:
                callback(names)
            except Exception:
                log.exception("a change handler failed")

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
            self._watches.clear()


if sys.platform != "linux" and sys.platform != "win32":  # where select.kqueue exists

    class KqueueWatcher:
        mode = "kqueue"

        def __init__(self, loop: asyncio.AbstractEventLoop):
            self._kq = select.kqueue()
            self._loop = loop
            self._watches: dict[int, tuple[Path, list[Callback]]] = {}
            self._by_path: dict[Path, int] = {}
            loop.add_reader(self._kq.fileno(), self._read)

        def watch(self, directory: Path, callback: Callback) -> None:
            fd = self._by_path.get(directory)
            if fd is None:
                fd = os.open(directory, os.O_RDONLY | getattr(os, "O_EVTONLY", 0) | os.O_CLOEXEC | os.O_DIRECTORY)
                flags = select.KQ_NOTE_WRITE | select.KQ_NOTE_DELETE | select.KQ_NOTE_RENAME | select.KQ_NOTE_REVOKE
                event = select.kevent(fd, select.KQ_FILTER_VNODE, select.KQ_EV_ADD | select.KQ_EV_CLEAR, flags)
                try:
                    self._kq.control([event], 0, 0)
                except OSError:
                    os.close(fd)
                    raise
                self._by_path[directory] = fd
                self._watches[fd] = (directory, [])
            callbacks = self._watches[fd][1]
            if callback not in callbacks:
                callbacks.append(callback)

        def _read(self) -> None:
            for event in self._kq.control(None, 64, 0):
                entry = self._watches.get(event.ident)
                if entry is None:
                    continue
                directory, callbacks = entry
                if event.fflags & (select.KQ_NOTE_DELETE | select.KQ_NOTE_RENAME | select.KQ_NOTE_REVOKE):
                    del self._watches[event.ident]
                    self._by_path.pop(directory, None)
                    os.close(event.ident)
                for callback in list(callbacks):
                    try:
                        callback(None)
                    except Exception:
                        log.exception("a change handler failed")

        def close(self) -> None:
            self._loop.remove_reader(self._kq.fileno())
            self._kq.close()
            for fd in self._watches:
                os.close(fd)
            self._watches.clear()
            self._by_path.clear()


class DirWatcher:
    """Watches directories (not their subdirectories) and calls back on changes to their
    entries. Without kernel support, ``watch`` returns False and nothing is called: the
    daemon's periodic checks then notice the same changes later."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._impl: _Watcher | None = None
        try:
            if sys.platform.startswith("linux"):
                self._impl = InotifyWatcher(loop)
            elif sys.platform != "win32" and hasattr(select, "kqueue"):
                self._impl = KqueueWatcher(loop)
        except OSError as e:
            log.warning("cannot watch files (%s): changes are noticed by the periodic checks only", e)

    @property
    def mode(self) -> str:
        return self._impl.mode if self._impl is not None else "periodic checks"

    def watch(self, directory: Path, callback: Callback) -> bool:
        if self._impl is None:
            return False
        try:
            self._impl.watch(directory, callback)
        except OSError as e:
            log.warning("cannot watch %s (%s): changes there are noticed by the periodic checks only", directory, e)
            return False
        return True

    def close(self) -> None:
        if self._impl is not None:
            self._impl.close()
            self._impl = None
