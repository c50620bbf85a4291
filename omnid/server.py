"""The daemon's lifecycle (lock, store, socket, serve, graceful stop) and its connections
(peer credentials, framing, handshake, dispatch, replies after commit)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import resource
import signal
import socket
import stat
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from omnid_client.errors import OmnidError, PermissionDenied, ProtocolError, TooLarge, VersionMismatch
from omnid_client.paths import Paths, PathError, check_socket_path, ensure_private_dir, write_json_atomic
from omnid_client.protocol import (
    HEADER,
    MAX_FRAME,
    METHODS,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    DaemonStatus,
    Hello,
    IncomingRequest,
    ResponseFrame,
    Welcome,
)

from . import __version__, api
from .expiry import Expirer
from .reaper import Reaper
from .store import CorruptDatabase, Store, StoreError, set_aside
from .store import sessions as q

log = logging.getLogger("omnid.server")

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a new connection has to send its hello (``OMNID_HANDSHAKE_TIMEOUT``)."""
CONNECTION_IDLE_TIMEOUT = 3600.0
"""Seconds a greeted connection may stay silent before it is closed
(``OMNID_CONNECTION_IDLE_TIMEOUT``). Connections only: sessions do not expire by it."""
SHUTDOWN_GRACE = 2.0
LISTEN_BACKLOG = 4096
"""Connections the kernel queues for us: a crowd of clients waits, not ``EAGAIN``."""
FD_RESERVE = 32
"""File descriptors never spent on connections: SQLite, owner watches and /proc need some."""

_request_decoder = msgspec.msgpack.Decoder(IncomingRequest)
_hello_decoder = msgspec.msgpack.Decoder(Hello)
_encoder = msgspec.msgpack.Encoder()


@dataclass(frozen=True)
class Timeouts:
    handshake: float = HANDSHAKE_TIMEOUT
    idle: float = CONNECTION_IDLE_TIMEOUT

    @classmethod
    def from_env(cls) -> "Timeouts":
        """The defaults, overridden by ``OMNID_HANDSHAKE_TIMEOUT`` / ``OMNID_CONNECTION_IDLE_TIMEOUT`` (seconds)."""
        return cls(
            _seconds_from_env("OMNID_HANDSHAKE_TIMEOUT", HANDSHAKE_TIMEOUT),
            _seconds_from_env("OMNID_CONNECTION_IDLE_TIMEOUT", CONNECTION_IDLE_TIMEOUT),
        )


def _seconds_from_env(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise StartupError(f"{name}={text!r} is not a positive number of seconds")
    return value


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None, lock: Path):
        super().__init__(f"omnid is already running (pid {pid or '?'}, lock {lock})")
        self.pid = pid


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket, from the kernel."""
    if sys.platform.startswith("linux"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        return pid, uid
    # macOS/BSD: LOCAL_PEERCRED gives struct xucred {u_int version; uid_t uid; ...},
    # LOCAL_PEERPID the pid (SOL_LOCAL = 0).
    xucred = sock.getsockopt(0, 0x001, struct.calcsize("IIh16I"))
    uid = struct.unpack_from("II", xucred)[1]
    pid = struct.unpack("i", sock.getsockopt(0, 0x002, 4))[0]
    return pid, uid


class Connection(asyncio.Protocol):
    def __init__(self, daemon: "Daemon"):
        self.daemon = daemon
        self.transport: asyncio.Transport | None = None
        self.caller: api.Caller | None = None
        self.greeted = False
        self.closing = False
        self.buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        """The handshake deadline until the hello, then the idle check."""
        self._last_heard = 0.0

    # -- asyncio callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.daemon.connections.add(self)
        try:
            pid, uid = peer_credentials(transport.get_extra_info("socket"))
        except OSError as e:
            log.warning("cannot read peer credentials: %s", e)
            self.fail(0, PermissionDenied("cannot verify who is connecting"))
            return
        if uid != os.getuid():
            log.warning("refused connection from uid %d (pid %d)", uid, pid)
            self.fail(0, PermissionDenied(f"omnid serves uid {os.getuid()} only; you are uid {uid}"))
            return
        self.caller = api.Caller(pid, uid, self.daemon)
        self._timer = self.daemon.loop.call_later(self.daemon.timeouts.handshake, self._handshake_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self.daemon.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None
        self.daemon.listener.fd_freed()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self._last_heard = self.daemon.loop.time()
        buf = self.buffer
        buf += data
        while len(buf) >= HEADER.size and not self.closing:
            (length,) = HEADER.unpack_from(buf)
            if length > MAX_FRAME:
                self.fail(0, TooLarge(f"frame of {length} bytes; the limit is {MAX_FRAME}"))
                return
            end = HEADER.size + length
            if len(buf) < end:
                break
            payload = bytes(buf[HEADER.size : end])
            del buf[:end]
            self.handle(payload)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    # -- requests ------------------------------------------------------------------

    def handle(self, payload: bytes) -> None:
        try:
            request = _request_decoder.decode(payload)
        except (msgspec.DecodeError, RecursionError) as e:
            self.fail(0, ProtocolError(f"malformed request frame: {e}"))
            return
        if not self.greeted:
            self.greet(request)
            return
        caller = self.caller
        assert caller is not None
        response = api.dispatch(caller, request)
        store = self.daemon.store
        if not store.in_transaction:
            self.send(response)
            return
        method = METHODS.get(request.method)
        writes = method is not None and method.writes

        def deliver(err: Exception | None) -> None:
            if err is None:
                self.send(response)
            elif writes:
                self.send(ResponseFrame(response.id, error=api.error_info(err)))
            else:
                # A read in a batch that could not be committed may have seen writes that
                # are now undone: read again. A failing disk must not fail reads.
                self.send(api.dispatch(caller, request))

        store.after_commit(deliver)

    def greet(self, request: IncomingRequest) -> None:
        if request.method != "hello":
            self.fail(request.id, ProtocolError("the first request must be hello"))
            return
        try:
            hello = _hello_decoder.decode(request.params)
        except (msgspec.DecodeError, RecursionError) as e:
            self.fail(request.id, ProtocolError(f"malformed hello: {e}"))
            return
        if hello.proto_major != PROTOCOL_MAJOR:
            older = "client" if hello.proto_major < PROTOCOL_MAJOR else "daemon"
            self.fail(
                request.id,
                VersionMismatch(
                    f"protocol {hello.proto_major}.{hello.proto_minor} (client {hello.client_version}) is not "
                    f"compatible with protocol {PROTOCOL_MAJOR}.{PROTOCOL_MINOR} (daemon {__version__}); "
                    f"the {older} is older: upgrade it",
                    {"older": older, "daemon_version": __version__, "client_version": hello.client_version},
                ),
            )
            return
        self.greeted = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.daemon.loop.call_later(self.daemon.timeouts.idle, self._idle_check)
        self.send(ResponseFrame(request.id, result=Welcome(PROTOCOL_MAJOR, PROTOCOL_MINOR, __version__, os.getpid())))

    def send(self, response: ResponseFrame) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        buf = bytearray(HEADER.size)
        _encoder.encode_into(response, buf, HEADER.size)
        size = len(buf) - HEADER.size
        if size > MAX_FRAME:
            # The client would drop the connection on a frame this large: say what to do instead.
            log.warning("reply to request %d is %d bytes, over the frame limit; sent an error instead", response.id, size)
            err = TooLarge(
                f"the reply is {size} bytes, over the {MAX_FRAME}-byte frame limit; ask for fewer items (a smaller limit)",
                {"reply_bytes": size, "limit": MAX_FRAME},
            )
            buf = bytearray(HEADER.size)
            _encoder.encode_into(ResponseFrame(response.id, error=api.error_info(err)), buf, HEADER.size)
            size = len(buf) - HEADER.size
        HEADER.pack_into(buf, 0, size)
        transport.write(buf)

    def fail(self, request_id: int, err: OmnidError) -> None:
        """Send a final error and close: the stream can no longer be trusted."""
        self.send(ResponseFrame(request_id, error=api.error_info(err)))
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _handshake_expired(self) -> None:
        self._timer = None
        if not self.greeted:
            self.fail(0, ProtocolError(f"no hello within {self.daemon.timeouts.handshake:g}s"))

    def _idle_check(self) -> None:
        """Close a connection silent for the idle timeout. No error frame: a client finds
        plain EOF before its next request and reconnects without losing that request."""
        self._timer = None
        if self.transport is None or self.closing:
            return
        loop = self.daemon.loop
        quiet = loop.time() - self._last_heard
        if quiet < self.daemon.timeouts.idle:
            self._timer = loop.call_later(self.daemon.timeouts.idle - quiet, self._idle_check)
            return
        assert self.caller is not None
        log.debug("closing connection of pid %d: silent for %.0fs", self.caller.pid, quiet)
        self.closing = True
        self.transport.close()


class Listener:
    """Accepts connections while file descriptors last, keeping ``FD_RESERVE`` for the store,
    owner watches and /proc; past that, new connections wait in the kernel's listen backlog
    until one closes. (asyncio's own server, out of fds, logs a traceback per queued
    connection every second.)"""

    def __init__(self, daemon: "Daemon", sock: socket.socket):
        self.daemon = daemon
        self.loop = daemon.loop
        self.sock = sock
        sock.setblocking(False)
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.base_fds = _open_fd_count() - len(daemon.reaper.owners)
        self.accepting = False
        self._starting: set[asyncio.Task] = set()
        self.paused_at: float | None = None
        self._warned_at = float("-inf")
        self._retry: asyncio.TimerHandle | None = None
        self._resume()

    def fds_in_use(self) -> int:
        """An estimate that needs no syscall: what was open at start, plus each connection
        (accepted or being set up) and each watched owner (a pidfd)."""
        daemon = self.daemon
        return self.base_fds + len(self._starting) + len(daemon.connections) + len(daemon.reaper.owners)

    def has_room(self) -> bool:
        return self.fd_limit == resource.RLIM_INFINITY or self.fds_in_use() < self.fd_limit - FD_RESERVE

    def _accept(self) -> None:
        for _ in range(64):  # then let other work run; the socket stays readable
            if not self.has_room():
                self._pause(f"{self.fds_in_use()} of {self.fd_limit} file descriptors in use")
                return
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause(str(e))
                    return
                log.warning("accept failed: %s", e)
                return
            task = self.loop.create_task(self._serve(conn))
            self._starting.add(task)  # the loop holds tasks weakly
            task.add_done_callback(self._starting.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: Connection(self.daemon), conn)
        except OSError as e:
            log.warning("dropped a new connection: %s", e)
            conn.close()

    def _pause(self, why: str) -> None:
        if self.accepting:
            self.loop.remove_reader(self.sock.fileno())
            self.accepting = False
        if self.paused_at is None:
            self.paused_at = now = time.monotonic()
            if now - self._warned_at > 60.0:  # overload flaps; once a minute is enough
                self._warned_at = now
                log.warning("not accepting new connections for now (%s); they wait in the queue", why)
        if self._retry is None:
            self._retry = self.loop.call_later(1.0, self._retry_fired)

    def _retry_fired(self) -> None:
        self._retry = None
        self._resume()

    def fd_freed(self) -> None:
        if not self.accepting and self.paused_at is not None and self.sock.fileno() >= 0:
            self._resume()

    def _resume(self) -> None:
        if self.sock.fileno() < 0 or self.accepting:
            return
        if self.paused_at is not None:
            if not self.has_room():
                self._pause("")
                return
            log.debug("accepting connections again after %.1fs", time.monotonic() - self.paused_at)
            self.paused_at = None
        self.loop.add_reader(self.sock.fileno(), self._accept)
        self.accepting = True

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.accepting:
            self.loop.remove_reader(self.sock.fileno())
            self.accepting = False
        self.sock.close()


def _open_fd_count() -> int:
    for fd_dir in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(fd_dir))
    return 32


class Daemon:
    def __init__(self, paths: Paths, *, log_path: Path | None = None, timeouts: Timeouts = Timeouts()):
        self.paths = paths
        self.log_path = log_path
        self.timeouts = timeouts
        self.started_at = time.time()
        self.connections: set[Connection] = set()
        self.set_aside: list[str] = []
        """Files of a corrupt database found at start and moved aside."""
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.store: Store = None  # type: ignore[assignment]
        self.reaper: Reaper = None  # type: ignore[assignment]
        self.expirer: Expirer = None  # type: ignore[assignment]
        self.listener: Listener = None  # type: ignore[assignment]
        self._lock_fd = -1
        self._socket_inode: tuple[int, int] | None = None
        self._stopped: asyncio.Event | None = None

    # -- startup -------------------------------------------------------------------

    def acquire_lock(self) -> None:
        ensure_private_dir(self.paths.state_dir)
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise AlreadyRunning(int(holder) if holder.isdigit() else None, self.paths.lock) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:  # a full or read-only disk
            os.close(fd)
            raise StartupError(f"cannot write the lock file {self.paths.lock}: {e.strerror}") from e
        self._lock_fd = fd

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
        finally:
            os.umask(old_umask)
        st = os.stat(path)  # before listen(): nobody can have replaced it yet
        self._socket_inode = (st.st_dev, st.st_ino)
        sock.listen(LISTEN_BACKLOG)
        return sock

    def check_paths(self) -> None:
        """Refuse an unusable socket location before anything is created or opened."""
        check_socket_path(self.paths.socket)
        ensure_private_dir(self.paths.socket.parent)

    async def serve(self, on_ready) -> None:
        self.loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        _raise_fd_limit()
        self.store = self.open_store()
        self.reaper = Reaper(self.store, self.loop)
        startup = self.reaper.start()
        self.expirer = Expirer(self.store, self.loop)
        self.expirer.start()
        self.store.flush()
        if startup.sessions:
            log.info("reaped %d session(s) whose owners died while omnid was down", len(startup.sessions))
        sock = self.bind()
        self.listener = Listener(self, sock)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.request_stop, f"signal {signal.Signals(sig).name}")
        self.write_status_file()
        log.info(
            "omnid %s serving %s (pid %d, database %s, watcher %s, %d live session(s))",
            __version__, self.paths.socket, os.getpid(), self.paths.database, self.reaper.mode,
            q.count_live(self.store.db),
        )
        on_ready()
        await self._stopped.wait()
        await self._shutdown()

    def open_store(self) -> Store:
        """The store; a corrupt database is moved aside (kept, never deleted), reported in the
        log and in ``daemon.status``, and replaced by a new, empty one."""
        try:
            return Store(self.paths.database, schedule=self.loop.call_soon)
        except CorruptDatabase as e:
            moved = set_aside(self.paths.database)
            self.set_aside = [str(p) for p in moved]
            log.error(
                "%s; moved it aside to %s (kept for recovery) and started with a new, empty database",
                e, ", ".join(self.set_aside),
            )
        return Store(self.paths.database, schedule=self.loop.call_soon)

    def request_stop(self, why: str) -> None:
        log.info("stopping: %s", why)
        if self._stopped is not None:
            self.loop.call_soon(self._stopped.set)

    async def _shutdown(self) -> None:
        self.listener.close()
        self.store.flush()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.reaper.stop()
        self.expirer.stop()
        self.store.close()
        self.release()
        log.info("stopped")

    def release(self) -> None:
        """Remove what this daemon owns: its socket (only if still ours), status file, lock."""
        if self._socket_inode is not None:
            with contextlib.suppress(OSError):
                st = os.stat(self.paths.socket)
                if (st.st_dev, st.st_ino) == self._socket_inode:
                    os.unlink(self.paths.socket)
        with contextlib.suppress(OSError):
            os.unlink(self.paths.status_file)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- status --------------------------------------------------------------------

    def write_status_file(self) -> None:
        write_json_atomic(
            self.paths.status_file,
            {
                "pid": os.getpid(),
                "version": __version__,
                "protocol": f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
                "socket": str(self.paths.socket),
                "database": str(self.paths.database),
                "log": str(self.log_path) if self.log_path else None,
                "started_at": self.started_at,
            },
        )

    def status(self) -> DaemonStatus:
        db_bytes, wal_bytes = self.store.file_sizes()
        now = time.time()
        return DaemonStatus(
            pid=os.getpid(),
            version=__version__,
            protocol=f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
            started_at=self.started_at,
            uptime=now - self.started_at,
            home=str(self.paths.state_dir),
            socket=str(self.paths.socket),
            database=str(self.paths.database),
            database_bytes=db_bytes,
            wal_bytes=wal_bytes,
            schema_version=self.store.schema_version(),
            log=str(self.log_path) if self.log_path else None,
            watcher=self.reaper.mode,
            live_sessions=q.count_live(self.store.db),
            watched_processes=len(self.reaper.owners),
            connections=len(self.connections),
            last_reap=self.reaper.last_reap,
            set_aside=self.set_aside,
        )


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


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run(paths: Paths, *, log_path: Path | None, ready_fd: int | None) -> int:
    """Run a daemon until it is told to stop; the exit status for ``omnid serve``."""

    def report(line: str) -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, (line + "\n").encode())
                os.close(ready_fd)
            ready_fd = None

    try:
        daemon = Daemon(paths, log_path=log_path, timeouts=Timeouts.from_env())
        daemon.check_paths()
        daemon.acquire_lock()
    except AlreadyRunning as e:
        print(f"omnid: {e}; not starting a second one", file=sys.stderr)
        report(f"running {e.pid or 0}")
        return 0
    except (OSError, ValueError, PathError, StartupError) as e:
        print(f"omnid: cannot start: {e}", file=sys.stderr)
        report(f"error {e}")
        return 1
    try:
        asyncio.run(daemon.serve(lambda: report(f"ready {os.getpid()}")))
    except Exception as e:
        expected = isinstance(e, (StartupError, StoreError, PathError, OSError))
        log.error("cannot start: %s", e, exc_info=not expected)
        print(f"omnid: cannot start: {e}", file=sys.stderr)
        report(f"error {e}")
        daemon.release()
        return 1
    return 0
