"""The daemon's lifecycle (lock, store, socket, serve, graceful stop) and its connections
(peer credentials, framing, handshake, dispatch, replies after commit)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import resource
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import msgspec

from omnid_client.errors import OmnidError, PermissionDenied, ProtocolError, TooLarge, VersionMismatch
from omnid_client.paths import (
    LAUNCHD_LABEL,
    Paths,
    PathError,
    check_socket_path,
    ensure_private_dir,
    read_status_file,
)
from omnid_client.protocol import (
    HEADER,
    MAX_FRAME,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    DaemonStatus,
    Hello,
    IncomingRequest,
    ResponseFrame,
    Settings,
    Welcome,
    version_note,
)
from omnid_client.trust import peer_credentials

from . import __version__, api, clock, logs, systemd, upgrade
from .config import Config, config_path, describe
from .expiry import Expirer
from .idle import IdleExpiry
from .reaper import Reaper
from .retention import Archiver, retention_from_env
from .safefile import atomic_write, open_private, os_message
from .store import CorruptDatabase, Store, StoreError, set_aside
from .store import sessions as q
from .watch import DirWatcher

log = logging.getLogger("omnid.server")

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a new connection has to send its hello (``OMNID_HANDSHAKE_TIMEOUT``)."""
CONNECTION_IDLE_TIMEOUT = 3600.0
"""Seconds a greeted connection may stay silent before it is closed
(``OMNID_CONNECTION_IDLE_TIMEOUT``). Connections only: sessions do not expire by it."""
SHUTDOWN_GRACE = 2.0
TAKEOVER_TIMEOUT = 10.0
PREFLIGHT_TIMEOUT = 60.0
PACKAGE_SETTLE = 1.0
"""Seconds without further changes to the installed package before it is checked: an
upgrade rewrites many files."""
LISTEN_BACKLOG = 4096
"""Connections the kernel queues for us: a crowd of clients waits, not ``EAGAIN``."""
FD_RESERVE = 32
"""File descriptors spent neither on connections nor on owner watches: SQLite, /proc and the
daemon's own files need some."""
PIDFD_SHARE = 0.5
"""The share of the file descriptors above ``FD_RESERVE`` (and those open at start) that
exit watches on owner processes (pidfds) may take; connections always keep the rest.
Owners past it are found dead by the periodic sweep instead of at once."""
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2") if hasattr(signal, name)
)
"""Signals whose default action would end the daemon: each stops it gracefully, logged by
name. SIGHUP rereads the config file instead (the daemon convention)."""
WRITE_HIGH_WATER = 256 * 1024
"""Bytes of replies queued for one connection (unsent, or waiting for their commit) past
which the daemon reads no further requests from it, until the client has taken its
replies down to ``WRITE_LOW_WATER``. With ``MAX_IN_FLIGHT`` and the frame limit this
bounds what any one connection can make the daemon hold (see ``CONNECTION_MEMORY``)."""
WRITE_LOW_WATER = 64 * 1024
MAX_IN_FLIGHT = 64
"""Requests of one connection decoded and run but not yet answered (waiting for their
commit) past which no further request of it is decoded."""
READ_CHUNK = 256 * 1024
"""Most bytes asyncio reads from a socket at once."""
CONNECTION_MEMORY = 2 * WRITE_HIGH_WATER + 4 * (HEADER.size + MAX_FRAME) + READ_CHUNK
"""Most bytes of requests and replies one connection can make the daemon hold, whatever its
client does (about 4.8 MiB): replies unsent and replies waiting for their commit (each
stopped at the high-water mark, plus the reply that crossed it, and a read's request kept
to be retried), and unread request bytes (one frame being assembled, plus one read)."""

_request_decoder = msgspec.msgpack.Decoder(IncomingRequest)
_hello_decoder = msgspec.msgpack.Decoder(Hello)
_encoder = msgspec.msgpack.Encoder()


@dataclass(frozen=True)
class Timeouts:
    handshake: float = HANDSHAKE_TIMEOUT
    idle: float = CONNECTION_IDLE_TIMEOUT
    sweep: float | None = None
    """Seconds between sweeps, overriding the config's ``sweep_interval`` (and its 30 s
    floor) for one-off runs and tests."""

    @classmethod
    def from_env(cls) -> "Timeouts":
        """The defaults, overridden by ``OMNID_HANDSHAKE_TIMEOUT`` / ``OMNID_CONNECTION_IDLE_TIMEOUT``
        / ``OMNID_SWEEP_INTERVAL`` (seconds)."""
        return cls(
            _seconds_from_env("OMNID_HANDSHAKE_TIMEOUT", HANDSHAKE_TIMEOUT),
            _seconds_from_env("OMNID_CONNECTION_IDLE_TIMEOUT", CONNECTION_IDLE_TIMEOUT),
            _seconds_from_env("OMNID_SWEEP_INTERVAL", None),
        )


def _seconds_from_env(name: str, default: float | None) -> float | None:
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


class Connection(asyncio.Protocol):
    """One client connection. Requests are decoded and run in order, but only while the
    client keeps up with its replies: past ``WRITE_HIGH_WATER`` queued reply bytes or
    ``MAX_IN_FLIGHT`` unanswered requests, the rest of what arrived stays undecoded and
    the socket is not read, until the client has taken its replies."""

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
        self._write_paused = False
        """The transport holds more than ``WRITE_HIGH_WATER`` unsent bytes."""
        self._reading = True
        self.in_flight = 0
        """Requests run whose replies wait for their commit."""
        self.waiting_bytes = 0
        """Bytes of those replies."""
        self._resume_pending = False

    # -- asyncio callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        self.daemon.connections.add(self)
        try:
            pid, uid = peer_credentials(transport.get_extra_info("socket"))
        except OSError as e:
            log.warning("cannot read peer credentials: %s", e)
            self.fail(0, PermissionDenied("cannot verify who is connecting"))
            return
        if uid != os.getuid():
            log.warning("refused connection from uid %d (pid %d)", uid, pid)
            self.fail(
                0,
                PermissionDenied(
                    f"permission denied: this omnid serves uid {os.getuid()} only and you are uid {uid}; "
                    "use your own daemon (unset OMNID_SOCKET or OMNID_HOME if they name another user's)",
                    {"uid": uid, "serves_uid": os.getuid()},
                ),
            )
            return
        self.caller = api.Caller(pid, uid, self.daemon)
        self._timer = self.daemon.loop.call_later(self.daemon.timeouts.handshake, self._handshake_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self.daemon.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None
        self.buffer = bytearray()
        if self.daemon.listener is not None:
            self.daemon.listener.fd_freed()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self._last_heard = self.daemon.loop.time()
        if self.buffer:
            self.buffer += data
            data = bytes(self.buffer)
            self.buffer.clear()
        self._consume(data)

    def _consume(self, data: bytes) -> None:
        """Run the complete frames at the start of ``data`` while the client keeps up;
        keep the rest for later."""
        # Frames are decoded straight out of what arrived (usually exactly one frame);
        # only an incomplete tail, or what must wait for the client, is kept.
        view = memoryview(data)
        start, size = 0, len(data)
        while size - start >= HEADER.size and not self.closing and not self.backlogged:
            (length,) = HEADER.unpack_from(data, start)
            if length > MAX_FRAME:
                self.fail(0, TooLarge(f"frame of {length} bytes; the limit is {MAX_FRAME}"))
                return
            end = start + HEADER.size + length
            if size < end:
                break
            self.handle(view[start + HEADER.size : end])
            start = end
        if start < size and not self.closing:
            self.buffer += view[start:]
        self._pace_reading()

    @property
    def backlogged(self) -> bool:
        """The client is behind on its replies: decode nothing more from it for now."""
        return self._write_paused or self.in_flight >= MAX_IN_FLIGHT or self.waiting_bytes >= WRITE_HIGH_WATER

    def _pace_reading(self) -> None:
        """Read the socket only while the client keeps up with its replies."""
        transport = self.transport
        if transport is None or self.closing:
            return
        want = not self.backlogged
        if want != self._reading:
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _caught_up(self) -> None:
        """The client took replies, or some were answered: go on with what waits (soon,
        not from inside a commit or a transport callback)."""
        if self._resume_pending or self.backlogged or self.transport is None:
            return
        self._resume_pending = True
        self.daemon.loop.call_soon(self._resume)

    def _resume(self) -> None:
        self._resume_pending = False
        if self.closing or self.transport is None or self.backlogged:
            return
        data = bytes(self.buffer)
        self.buffer.clear()
        self._consume(data)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pace_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._caught_up()

    # -- requests ------------------------------------------------------------------

    def handle(self, payload: memoryview) -> None:
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
        self.respond(caller, request, retries=1)

    def respond(self, caller: api.Caller, request: IncomingRequest, retries: int) -> None:
        """Run a request; if it joined a transaction, reply only once that commits."""
        store = self.daemon.store
        writes_before = store.writes
        response = api.dispatch(caller, request)
        if isinstance(response, asyncio.Future):  # it replies once its background work is done
            response.add_done_callback(lambda done: done.cancelled() or self.send(done.result()))
            return
        if not store.in_transaction:
            self.send(response)
            return
        wrote = store.writes != writes_before
        # What waits is held as bytes, and counted: the reply, and a read's request (for the
        # retry below), copied out of the read buffer it points into.
        frame = self.encode(response)
        request_id, method = request.id, request.method
        retry = None if wrote or retries == 0 else msgspec.Raw(bytes(request.params))
        held = len(frame) + (len(retry) if retry is not None else 0)
        self.in_flight += 1
        self.waiting_bytes += held

        def deliver(err: Exception | None) -> None:
            self.in_flight -= 1
            self.waiting_bytes -= held
            if err is None:
                self.write(frame)
            elif retry is None:
                self.send(ResponseFrame(request_id, error=api.error_info(err)))
            else:
                # A read in a batch that could not be committed may have seen writes that
                # are now undone: run it again (once; it may write this time, and then its
                # reply waits for its own commit). A failing disk must not fail reads.
                self.respond(caller, IncomingRequest(request_id, method, retry), retries - 1)
            self._caught_up()

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
        assert self.caller is not None
        self.caller.client_version = hello.client_version
        self.caller.proto_minor = hello.proto_minor
        note = version_note(hello.client_version, __version__)
        if note is not None and hello.client_version not in self.daemon.client_versions_seen:
            self.daemon.client_versions_seen.add(hello.client_version)
            log.info("client %r (pid %d): %s", hello.client_name, self.caller.pid, note)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.daemon.loop.call_later(self.daemon.timeouts.idle, self._idle_check)
        self.send(ResponseFrame(request.id, result=Welcome(PROTOCOL_MAJOR, PROTOCOL_MINOR, __version__, os.getpid())))

    def send(self, response: ResponseFrame) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.encode(response))

    def write(self, frame: bytearray) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(frame)

    def encode(self, response: ResponseFrame) -> bytearray:
        """The framed reply; an error in its place if it is over the frame limit."""
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
        return buf

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
    """Accepts connections while file descriptors last, keeping ``FD_RESERVE`` for the store
    and /proc (owner watches take at most ``PIDFD_SHARE`` of the rest); past that, new connections wait in the kernel's listen backlog
    until one closes. (asyncio's own server, out of fds, logs a traceback per queued
    connection every second.)"""

    def __init__(self, daemon: "Daemon", sock: socket.socket):
        self.daemon = daemon
        self.loop = daemon.loop
        self.sock = sock
        sock.setblocking(False)
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.base_fds = _open_fd_count() - daemon.reaper.watcher.fds
        self.accepting = False
        self._starting: set[asyncio.Task] = set()
        self.paused_at: float | None = None
        self._warned_at = float("-inf")
        self._retry: asyncio.TimerHandle | None = None
        self._resume()

    def fds_in_use(self) -> int:
        """An estimate that needs no syscall: what was open at start, plus each connection
        (accepted or being set up) and each exit watch on an owner (a pidfd)."""
        daemon = self.daemon
        return self.base_fds + len(self._starting) + len(daemon.connections) + daemon.reaper.watcher.fds

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
    def __init__(
        self,
        paths: Paths,
        *,
        log_path: Path | None = None,
        log_target: str | None = None,
        config: Config | None = None,
        restart_argv: list[str] | None = None,
        log_level_fixed: bool = False,
        timeouts: Timeouts = Timeouts(),
    ):
        self.paths = paths
        self.log_path = log_path
        self.log_target = log_target
        self.config = config if config is not None else Config(config_path())
        self.restart_argv = restart_argv or [sys.executable, "-m", "omnid", "serve"]
        self.log_level_fixed = log_level_fixed
        self.timeouts = timeouts
        self.started_at = clock.wall()
        self._started_mono = time.monotonic()
        self.connections: set[Connection] = set()
        self.client_versions_seen: set[str] = set()
        self.set_aside: list[str] = []
        """Files of a corrupt database found at start and moved aside."""
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.store: Store = None  # type: ignore[assignment]
        self.live_sessions: q.LiveLookups = None  # type: ignore[assignment]
        self.reaper: Reaper = None  # type: ignore[assignment]
        self.expirer: Expirer = None  # type: ignore[assignment]
        self.archiver: Archiver = None  # type: ignore[assignment]
        # OMNID_RETENTION, when set, overrides the config file's retention (for one-off runs).
        self._retention_override, self._retention_warning = retention_from_env()
        self.idle: IdleExpiry = None  # type: ignore[assignment]
        self.watcher: DirWatcher | None = None
        self.socket_source = "bound"
        self.upgrade_error: str | None = None
        self.restart_requested = False
        self.handover_socket: socket.socket | None = None
        self.listener: Listener | None = None
        self._lock_fd = -1
        self._listener: socket.socket | None = None
        self._socket_inode: tuple[int, int] | None = None
        self._stopped: asyncio.Event | None = None
        self._stopping = False
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._fingerprint: tuple = ()
        self.snapshot: Path | None = None
        """A copy of the running code, for a failed upgrade to fall back to."""
        self._snapshotting: asyncio.Future | None = None
        self._rejected_fingerprint: tuple | None = None
        self._preflight: asyncio.Task | None = None
        self._package_names: set[str] = set()

    @property
    def settings(self) -> Settings:
        """The settings in force (from the config file, or the defaults)."""
        return self.config.settings

    @property
    def sweep_interval(self) -> float:
        return self.timeouts.sweep or self.settings.sweep_interval

    @property
    def retention(self) -> float | None:
        """Seconds after which ended sessions are archived and deleted; None: kept forever."""
        if self._retention_override is not None or self._retention_warning:
            return self._retention_override
        return self.settings.retention or None

    @property
    def socket_inherited(self) -> bool:
        """The listening socket is the service manager's: never re-bound or removed by us."""
        return self.socket_source == "systemd"

    # -- startup -------------------------------------------------------------------

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
        self._lock_fd = fd

    def adopt_socket(self, fd: int, *, owner: str) -> None:
        """Serve on an inherited listening socket: systemd's (``owner="systemd"``), or our own
        passed across an upgrade re-exec (``owner="own"``)."""
        try:
            sock = systemd.adopt_listener(fd)
        except ValueError as e:
            raise StartupError(str(e)) from None
        path = Path(sock.getsockname())
        if path != self.paths.socket:
            self.paths = dataclasses.replace(self.paths, socket=path, socket_source="inherited")
        self._listener = sock
        if owner == "systemd":
            self.socket_source = "systemd"
            return
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISSOCK(st.st_mode):
                self._socket_inode = (st.st_dev, st.st_ino)

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
        self._socket_inode = (st.st_dev, st.st_ino)
        sock.listen(LISTEN_BACKLOG)
        return sock

    def check_paths(self) -> None:
        """Refuse an unusable socket location before anything is created or opened."""
        check_socket_path(self.paths.socket)
        ensure_private_dir(self.paths.socket.parent)

    async def serve(self, on_ready: Callable[[], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        fd_limit = _raise_fd_limit()
        imported = upgrade.files_stamp()
        upgrade.import_everything()
        self._fingerprint = upgrade.fingerprint()
        failure = upgrade.take_failure()
        if failure is not None:
            # Until the installed package changes again, this (old) code is what runs.
            self.upgrade_error = (
                f"the upgraded package ({upgrade.installed_version()}) failed before it was ready: {failure}; "
                f"running the previous code ({__version__}) from {upgrade.running_snapshot()}"
            )
            log.error("%s", self.upgrade_error)
        # Watch before anything can be seen from outside, so no change made once a client
        # can connect goes unnoticed.
        self.watcher = DirWatcher(self.loop)
        self._watch_files()
        settings = self.settings
        self.store = self.open_store()
        self.live_sessions = q.LiveLookups(self.store)
        self.store.set_durability(settings.durability)
        self.store.max_bytes = settings.max_database_bytes
        self.reaper = Reaper(self.store, self.loop, sweep_interval=self.sweep_interval, max_fds=_pidfd_budget(fd_limit))
        startup = self.reaper.start()
        self.expirer = Expirer(self.store, self.loop)
        self.expirer.start()
        self.idle = IdleExpiry(self.store, self.loop, self.reaper, settings.idle_expiry)
        self.idle.run()
        self.archiver = Archiver(
            self.store,
            self.loop,
            age=lambda: self.retention,
            archive_path=self.paths.state_dir / "archive.jsonl",
            protected=[self.paths.database, Path(f"{self.paths.database}-wal"), Path(f"{self.paths.database}-shm"),
                       self.paths.lock, self.paths.status_file],
        )
        self.store.flush()
        if startup.sessions:
            log.info("reaped %d session(s) whose owners died while omnid was down", len(startup.sessions))
        if self._listener is None:
            self._listener = self.bind()
        self.listener = Listener(self, self._listener)
        self.check_socket()  # a socket handed over by an upgrade may have lost its file meanwhile
        for sig in STOP_SIGNALS:
            self.loop.add_signal_handler(sig, self._stop_signal, sig)
        if hasattr(signal, "SIGHUP"):
            self.loop.add_signal_handler(signal.SIGHUP, self._reload_signal)
        self.reaper.periodic += [
            self.check_config_file, self.check_socket, self.check_package, self.idle.run, self.check_database,
        ]
        self.check_config_file()  # changed since it was read, before the watch was armed?
        self.write_status_file()
        log.info(
            "omnid %s serving %s%s (pid %d, database %s, watcher %s, %d live session(s), config %s: %s)",
            __version__, self.paths.socket, " (inherited from systemd)" if self.socket_inherited else "",
            os.getpid(), self.paths.database, self.reaper.mode, q.count_live(self.store.db),
            self.config.path, self.config.state,
        )
        if self._retention_warning:
            log.warning("%s", self._retention_warning)
        if self.retention:
            log.info(
                "retention: ended sessions are archived to %s and deleted %gs after they end",
                self.archiver.archive_path, self.retention,
            )
        self.archiver.start()
        on_ready()
        # Only now: a copy taken before it is ready would be the code a failed start falls back to.
        self._snapshotting = self.loop.run_in_executor(
            None, upgrade.keep_snapshot, self.paths.state_dir, imported
        )
        systemd.notify("READY=1", f"STATUS=serving {self.paths.socket}", f"MAINPID={os.getpid()}")
        self._arm_watchdog()
        await self._stopped.wait()
        await self._shutdown()

    def open_store(self) -> Store:
        """The store; a corrupt database is moved aside (kept, never deleted), reported in the
        log and in ``daemon.status``, and replaced by a new, empty one."""
        try:
            return Store(self.paths.database, schedule=self.loop.call_soon, schedule_later=self.loop.call_later)
        except CorruptDatabase as e:
            moved = set_aside(self.paths.database)
            self.set_aside = [str(p) for p in moved]
            log.error(
                "%s; moved it aside to %s (kept for recovery) and started with a new, empty database",
                e, ", ".join(self.set_aside),
            )
        return Store(self.paths.database, schedule=self.loop.call_soon, schedule_later=self.loop.call_later)

    def _stop_signal(self, sig: int) -> None:
        log.warning("received %s: stopping", signal.Signals(sig).name)
        self.request_stop(f"signal {signal.Signals(sig).name}")

    def _reload_signal(self) -> None:
        """SIGHUP, as for most daemons: read the config file again (never stop)."""
        log.info("received SIGHUP: rereading the config file %s", self.config.path)
        self.reload_config()
        if self.config.error is None:
            log.info("settings in force: %s", describe(self.settings))

    def request_stop(self, why: str) -> None:
        log.info("stopping: %s", why)
        if self._stopped is not None:
            self.loop.call_soon(self._stopped.set)

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._snapshotting is not None:
            try:
                self.snapshot = await self._snapshotting
            except Exception:
                log.exception("keeping a copy of the running code failed")
        if self.restart_requested:
            systemd.notify("RELOADING=1", "STATUS=restarting into the upgraded package")
            assert self._listener is not None
            self.handover_socket = self._listener.dup()  # closing the server must not close it
        else:
            systemd.notify("STOPPING=1", "STATUS=stopping")
        for handle in [self._watchdog, *self._timers.values()]:
            if handle is not None:
                handle.cancel()
        self._timers.clear()
        if self._preflight is not None:
            self._preflight.cancel()
        if self.watcher is not None:
            self.watcher.close()
        if self.listener is not None:
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
        self.archiver.stop()
        self.idle.stop()
        self.store.close()
        if not self.restart_requested:
            self.release()
        log.info("restarting" if self.restart_requested else "stopped")

    def release(self) -> None:
        """Remove what this daemon owns: its socket (only if still ours), status file, lock."""
        if self._socket_inode is not None and not self.socket_inherited:
            with contextlib.suppress(OSError):
                st = os.stat(self.paths.socket)
                if (st.st_dev, st.st_ino) == self._socket_inode:
                    os.unlink(self.paths.socket)
                    if self.paths.socket_source == "short dir":
                        os.rmdir(self.paths.socket.parent)  # our own, made for this socket alone
        with contextlib.suppress(OSError):
            if read_status_file(self.paths.state_dir).get("pid") == os.getpid():
                os.unlink(self.paths.status_file)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- watching files ----------------------------------------------------------------

    def _later(self, key: str, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` once, ``delay`` seconds after the last of a burst of events."""
        if self._stopping:
            return
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            try:
                fn()
            except Exception:
                log.exception("%s check failed", key)

        self._timers[key] = self.loop.call_later(delay, fire)

    def _watch_files(self) -> None:
        """(Re)arm the kernel watches: config dir, socket dir, installed package."""
        assert self.watcher is not None
        config_dir = self.config.path.parent
        with contextlib.suppress(OSError):
            os.makedirs(config_dir, mode=0o700, exist_ok=True)
        self.watcher.watch(config_dir, self._config_dir_changed)
        if not self.socket_inherited:
            self.watcher.watch(self.paths.socket.parent, self._socket_dir_changed)
        self._package_names = {"omnid", "omnid_client"}
        for directory in upgrade.watch_dirs():
            self._package_names.add(directory.name)
            self.watcher.watch(directory, self._package_changed)

    def _config_dir_changed(self, names: set[str] | None) -> None:
        if self.idle is None:
            return  # still starting: checked once the daemon is up
        if names is None or self.config.path.name in names:
            self._later("config", 0.2, self.reload_config)

    def _socket_dir_changed(self, names: set[str] | None) -> None:
        if self._listener is None:
            return
        if names is None or self.paths.socket.name in names:
            self._later("socket", 0.05, self.check_socket)

    def _package_changed(self, names: set[str] | None) -> None:
        if self.idle is None:
            return
        if names is None or any(
            n.endswith(".py") or n in self._package_names or n.startswith("omnid") for n in names
        ):
            self._later("package", PACKAGE_SETTLE, self.check_package)

    # -- config -------------------------------------------------------------------------

    def reload_config(self) -> None:
        """Read the config file again and apply what changed; an invalid file changes nothing."""
        before = self.settings
        if self.config.load():
            self.apply_settings(before, self.settings)
        if self.watcher is not None:
            self._watch_files()  # the config dir may have been created or replaced

    def check_config_file(self) -> None:
        if self.config.changed_on_disk():
            self.reload_config()

    def apply_settings(self, old: Settings, new: Settings) -> None:
        if new.sweep_interval != old.sweep_interval and self.timeouts.sweep is None:
            self.reaper.set_interval(new.sweep_interval)
        if new.durability != old.durability:
            self.store.set_durability(new.durability)
        if new.max_database_bytes != old.max_database_bytes:
            self.store.max_bytes = new.max_database_bytes
        if new.log_level != old.log_level and not self.log_level_fixed:
            logs.set_level(new.log_level)
        if new.idle_expiry != old.idle_expiry:
            self.idle.configure(new.idle_expiry)
        if new.retention != old.retention and self._retention_override is None:
            self.archiver.reschedule()

    # -- the database file ---------------------------------------------------------------

    def check_database(self) -> None:
        """Housekeeping: is the database file still the one open, and how full is it? (Also
        looked at before each commit, at most once a second.)"""
        self.store.check(force=True)

    # -- the socket ---------------------------------------------------------------------

    def check_socket(self) -> None:
        """Bind the socket path again if its file was deleted or replaced (never systemd's)."""
        if self.socket_inherited or self._stopping or self._listener is None:
            return
        path = self.paths.socket
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            log.warning("cannot check socket %s: %s", path, e)
            return
        if st is not None and (st.st_dev, st.st_ino) == self._socket_inode:
            return
        what = "deleted" if st is None else "replaced"
        try:
            sock = self.bind()
        except (StartupError, PathError, OSError) as e:
            log.error("socket %s was %s and cannot be bound again (%s); stopping, as no client can reach this daemon", path, what, e)
            self.request_stop(f"socket {what}")
            return
        log.warning("socket %s was %s; bound it again", path, what)
        self._listener = sock
        self._serve_on(sock)
        if self.watcher is not None:
            self._watch_files()

    def _serve_on(self, sock: socket.socket) -> None:
        old, self.listener = self.listener, Listener(self, sock)
        if old is not None:
            old.close()  # its socket file is gone: nobody new can reach it

    # -- upgrades ----------------------------------------------------------------------

    def check_package(self) -> None:
        """Restart into the installed package if it changed and imports cleanly."""
        if self._stopping or self._preflight is not None:
            return
        if self.watcher is not None:
            self._watch_files()  # an upgrade may have replaced the watched directories
        current = upgrade.fingerprint()
        if current == self._fingerprint or current == self._rejected_fingerprint:
            return
        self._preflight = self.loop.create_task(self._restart_if_importable(current))

    async def _restart_if_importable(self, seen: tuple) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", upgrade.PREFLIGHT,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            try:
                out, err = await asyncio.wait_for(proc.communicate(), PREFLIGHT_TIMEOUT)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                out, err = b"", f"importing it took over {PREFLIGHT_TIMEOUT:g}s".encode()
        finally:
            self._preflight = None
        if upgrade.fingerprint() != seen:  # still being written: look again once it settles
            self._later("package", PACKAGE_SETTLE, self.check_package)
            return
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            self.upgrade_error = f"the installed package changed but does not import: {lines[-1] if lines else proc.returncode}"
            self._rejected_fingerprint = seen
            log.error("%s; still running %s", self.upgrade_error, __version__)
            return
        new_version = out.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        log.info("the installed package changed (%s -> %s): restarting into it", __version__, new_version[0])
        self.restart_requested = True
        self.request_stop("installed package changed")

    # -- systemd -----------------------------------------------------------------------

    def _arm_watchdog(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return

        def ping() -> None:
            systemd.notify("WATCHDOG=1")
            self._watchdog = self.loop.call_later(interval, ping)

        self._watchdog = self.loop.call_later(interval, ping)

    @property
    def managed_by(self) -> str | None:
        if self.socket_inherited or os.environ.get("NOTIFY_SOCKET") or systemd.started_by_systemd():
            return "systemd"
        if os.environ.get("XPC_SERVICE_NAME") == LAUNCHD_LABEL:
            return "launchd"
        return None

    # -- status --------------------------------------------------------------------

    def write_status_file(self) -> None:
        status = {
            "pid": os.getpid(),
            "version": __version__,
            "protocol": f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
            "socket": str(self.paths.socket),
            "database": str(self.paths.database),
            "log": str(self.log_path) if self.log_path else None,
            "log_target": self.log_target,
            "config": str(self.config.path),
            "started_at": self.started_at,
        }
        try:
            with atomic_write(self.paths.status_file, owned=True) as pending:
                pending.file.write(json.dumps(status, indent=2).encode() + b"\n")
        except OSError as e:
            raise StartupError(f"cannot write the status file {self.paths.status_file}: {os_message(e)}") from None

    def status(self) -> DaemonStatus:
        db_bytes, wal_bytes = self.store.file_sizes()
        return DaemonStatus(
            pid=os.getpid(),
            version=__version__,
            protocol=f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
            started_at=self.started_at,
            uptime=time.monotonic() - self._started_mono,  # a wall-clock jump does not change it
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
            pidfd_watches=self.reaper.watcher.fds if self.reaper.mode == "pidfd" else None,
            pidfd_budget=self.reaper.watcher.max_fds,
            database_used_bytes=self.store.used_bytes,
            database_quota=self.store.max_bytes or None,
            storage_error=str(refusal) if (refusal := self.store.refusal(grows=True)) is not None else None,
            connections=len(self.connections),
            last_reap=self.reaper.last_reap,
            retention=self.archiver.status(),
            socket_source=self.socket_source,
            managed_by=self.managed_by,  # type: ignore[arg-type]
            log_target=self.log_target,
            config_path=str(self.config.path),
            config_state=self.config.state,
            config_error=self.config.error,
            config_loaded_at=self.config.loaded_at,
            settings=self.settings,
            synchronous=self.store.durability(),
            upgrade_error=self.upgrade_error,
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


def _raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one (as far as allowed); returns the
    soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _pidfd_budget(fd_limit: int) -> int | None:
    """How many owner processes may get an exit watch (a pidfd): ``PIDFD_SHARE`` of the file
    descriptors neither open now nor in ``FD_RESERVE``. None: no limit."""
    if fd_limit == resource.RLIM_INFINITY:
        return None
    return max(0, int((fd_limit - _open_fd_count() - FD_RESERVE) * PIDFD_SHARE))


def run(
    paths: Paths,
    *,
    log_path: Path | None,
    ready_fd: int | None,
    log_target: str | None = None,
    restart_argv: list[str] | None = None,
    log_level_fixed: bool = False,
) -> int:
    """Run a daemon until it is told to stop; the exit status for ``omnid serve``. After
    an upgrade it does not return: the process becomes the new daemon."""

    def report(line: str) -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, (line + "\n").encode())
                os.close(ready_fd)
            ready_fd = None

    try:
        timeouts = Timeouts.from_env()
    except StartupError as e:
        print(f"omnid: cannot start: {e}", file=sys.stderr)
        report(f"error {e}")
        return 1
    if hasattr(signal, "SIGHUP"):
        # Until the event loop handles it (a config reload), a SIGHUP must not kill the
        # daemon silently; the file is read during startup anyway.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    handover = upgrade.take_handover()
    inherited = systemd.listen_fds()
    config = Config(config_path())
    config.load()
    if not log_level_fixed:
        logs.set_level(config.settings.log_level)
    daemon = Daemon(
        paths, log_path=log_path, log_target=log_target, config=config,
        restart_argv=restart_argv, log_level_fixed=log_level_fixed, timeouts=timeouts,
    )
    try:
        if len(inherited) > 1:
            raise StartupError(f"{len(inherited)} sockets were passed in; omnid.socket must have one ListenStream=")
        if inherited:
            daemon.adopt_socket(inherited[0], owner=handover[1] if handover else "systemd")
        else:
            daemon.check_paths()
        if handover:
            daemon.adopt_lock(handover[0])
        elif daemon.socket_inherited:
            _take_over(daemon)
        else:
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
    if daemon.restart_requested and daemon.handover_socket is not None:
        owner = "systemd" if daemon.socket_inherited else "own"
        upgrade.exec_handover(daemon._lock_fd, daemon.handover_socket, owner, daemon.restart_argv, daemon.snapshot)
    return 0


def _take_over(daemon: Daemon) -> None:
    """Under socket activation, the service manager's daemon is the one to keep: a daemon a
    client started on its own is asked to stop, and its lock awaited."""
    try:
        daemon.acquire_lock()
        return
    except AlreadyRunning as e:
        holder = e
    from omnid_client import Client, OmnidError

    published = read_status_file(daemon.paths.state_dir).get("socket")
    if isinstance(published, str) and published and Path(published) != daemon.paths.socket:
        log.info("another omnid (pid %s) serves %s: asking it to stop", holder.pid, published)
        with contextlib.suppress(OmnidError):
            with Client(published, autostart=False, timeout=5.0) as other:
                other.shutdown()
    deadline = time.monotonic() + TAKEOVER_TIMEOUT
    while True:
        try:
            daemon.acquire_lock()
            return
        except AlreadyRunning:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
