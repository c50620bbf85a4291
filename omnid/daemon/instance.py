"""One daemon per home: the instance lock, and the listening socket it serves on (bound
here, or adopted from systemd or from the daemon an upgrade replaced)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import socket
import stat
from pathlib import Path

from omnid_client.paths import Paths, check_socket_path, ensure_private_dir, read_status_file

from ..safefile import open_private, os_message
from . import systemd

log = logging.getLogger("omnid.server")

LISTEN_BACKLOG = 4096
"""Connections the kernel queues for us: a crowd of clients waits, not ``EAGAIN``."""


SERVICE_MANAGERS = ("systemd", "launchd")
"""Who may pass us a listening socket they own (socket activation)."""


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None, lock: Path):
        super().__init__(f"omnid is already running (pid {pid or '?'}, lock {lock})")
        self.pid = pid


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


class Instance:
    """This daemon's claim on its home: the lock it holds and the socket it listens on."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self.socket_source = "bound"
        self.listening_socket: socket.socket | None = None
        self.socket_inode: tuple[int, int] | None = None
        """(device, inode) of the socket file we bound: only that file is ever removed."""
        self.lock_fd = -1

    @property
    def socket_inherited(self) -> bool:
        """The listening socket is the service manager's: never re-bound or removed by us."""
        return self.socket_source in SERVICE_MANAGERS

    def acquire_lock(self) -> None:
        ensure_private_dir(self.paths.state_dir)
        try:
            fd = open_private(self.paths.lock, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            raise StartupError(f"cannot open the lock file {self.paths.lock}: {os_message(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise AlreadyRunning(int(holder) if holder.isdigit() else None, self.paths.lock) from None
        self._hold_lock(fd)

    def adopt_lock(self, fd: int) -> None:
        """Keep holding the instance lock passed by the daemon this process replaced."""
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the same open file: it is ours already
        self._hold_lock(fd)

    def _hold_lock(self, fd: int) -> None:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:  # a full or read-only disk
            os.close(fd)
            raise StartupError(f"cannot write the lock file {self.paths.lock}: {e.strerror}") from e
        self.lock_fd = fd

    def adopt_socket(self, fd: int, *, owner: str) -> None:
        """Serve on an inherited listening socket: the service manager's (``owner`` "systemd"
        or "launchd"), or our own passed across an upgrade re-exec (``owner="own"``)."""
        try:
            sock = systemd.adopt_listener(fd)
        except ValueError as e:
            raise StartupError(str(e)) from None
        path = Path(sock.getsockname())
        if path != self.paths.socket:
            self.paths = dataclasses.replace(self.paths, socket=path, socket_source="inherited")
        self.listening_socket = sock
        if owner in SERVICE_MANAGERS:
            self.socket_source = owner
            return
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISSOCK(st.st_mode):
                self.socket_inode = (st.st_dev, st.st_ino)

    def bind(self) -> socket.socket:
        path = self.paths.socket
        self.check_paths()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise StartupError(f"{path} exists and is not a socket; remove it or set OMNID_SOCKET")
            if _accepts_connections(path):
                raise StartupError(f"another omnid (with a different OMNID_HOME) is serving {path}")
            os.unlink(path)
            log.info("removed stale socket %s", path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077)
        try:
            sock.bind(os.fspath(path))
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        st = os.stat(path)  # before listen(): nobody can have replaced it yet
        self.socket_inode = (st.st_dev, st.st_ino)
        sock.listen(LISTEN_BACKLOG)
        return sock

    def check_paths(self) -> None:
        """Refuse an unusable socket location before anything is created or opened."""
        check_socket_path(self.paths.socket)
        ensure_private_dir(self.paths.socket.parent)

    def release(self) -> None:
        """Remove what this daemon owns: its socket (only if still ours), status file, lock."""
        if self.socket_inode is not None and not self.socket_inherited:
            with contextlib.suppress(OSError):
                st = os.stat(self.paths.socket)
                if (st.st_dev, st.st_ino) == self.socket_inode:
                    os.unlink(self.paths.socket)
                    if self.paths.socket_source == "short dir":
                        os.rmdir(self.paths.socket.parent)  # our own, made for this socket alone
        with contextlib.suppress(OSError):
            if read_status_file(self.paths.state_dir).get("pid") == os.getpid():
                os.unlink(self.paths.status_file)
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def _accepts_connections(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
        return True
    except OSError as e:
        return e.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()
