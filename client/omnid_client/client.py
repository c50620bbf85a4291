"""The blocking client: one Unix-socket connection, explicit deadlines, fork-safe."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import select
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from ._core import (
    Call,
    Methods,
    check_welcome,
    decode_reply,
    encode_frame,
    frame_length,
    hello_frame,
    note_versions,
    require_unix_sockets,
    result_or_raise,
)
from ._spawn import start_daemon
from .errors import OmnidError, PermissionDenied, ProtocolError, Timeout, TransportError, Unavailable
from .paths import daemon_paths, socket_candidates
from .trust import check_server, check_socket_dir
from .protocol import HEADER, RequestFrame, Session, Welcome

log = logging.getLogger("omnid_client")

_UNREACHABLE = (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR)
REPLY_BUFFER = 64 * 1024
"""Bytes of the buffer each client receives replies into; larger ones get their own."""
# A send to a connection the daemon closed must fail with EPIPE, not kill a tool that set
# SIGPIPE back to the default: MSG_NOSIGNAL per send, or SO_NOSIGPIPE (macOS) per socket.
_NO_SIGPIPE = getattr(socket, "MSG_NOSIGNAL", 0)
_SO_NOSIGPIPE = getattr(socket, "SO_NOSIGPIPE", 0x1022) if sys.platform == "darwin" else None

_process = os.getpid()
"""This process's pid, renewed in a forked child: a connection made under another pid is the
parent's and is never touched. Kept by a fork hook, so a call costs no getpid()."""


def _renew_process() -> None:
    global _process
    _process = os.getpid()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_renew_process)


class Client(Methods):
    """A blocking connection to the omnid daemon (options: see ``Methods``)."""

    def _init_connection(self) -> None:
        self.connected_path: Path | None = None
        self._sock: socket.socket | None = None
        self._pid = _process
        self._buffer = memoryview(bytearray(REPLY_BUFFER))
        self._request = bytearray(HEADER.size)

    # -- connection ------------------------------------------------------------

    def connect(self) -> Welcome:
        """Connect now (calls connect lazily anyway); returns the daemon's handshake.
        Bounded by ``timeout``, like a call."""
        if self._sock is not None and self._pid == _process:
            if not _closed_by_peer(self._sock):
                assert self.welcome is not None
                return self.welcome
            log.debug("omnid closed the connection (idle or restarted); reconnecting")
        welcome = self._open(time.monotonic() + self.timeout)
        self._restore_transfer_timeout()
        return welcome

    def _open(self, deadline: float) -> Welcome:
        """A new connection (after dropping any old one), starting the daemon if allowed,
        all before ``deadline``."""
        require_unix_sockets()
        self._drop()
        self._pid = _process
        candidates = [(self.socket_path, "argument")] if self.socket_path else socket_candidates()
        skipped: list[str] = []
        for path, source in candidates:
            try:
                if self._try_connect(path, deadline):
                    break
            except PermissionDenied as e:
                if source != "status file":
                    raise
                # A stale hint (the daemon that wrote it is gone), in a directory someone
                # else now controls: never talk to it, and never let it lock the user out.
                log.warning("ignoring the socket named in omnid's status file: %s", e)
                skipped.append(str(e))
        else:
            if not self.autostart:
                tried = ", ".join(str(p) for p, _ in candidates)
                raise Unavailable(f"omnid is not running (tried {tried})" + "".join(f"; {s}" for s in skipped))
            paths = daemon_paths()
            if self.socket_path:
                paths = dataclasses.replace(paths, socket=self.socket_path)
            target = start_daemon(
                paths,
                lambda path: self._try_connect(path, deadline),
                min(self.start_timeout, max(deadline - time.monotonic(), 0.0)),
                use_service=not self.socket_path,
            )
            if self._sock is None and not self._try_connect(target, deadline):
                raise Unavailable(f"omnid started but {target} does not accept connections")
        assert self.welcome is not None
        return self.welcome

    def _try_connect(self, path: Path, deadline: float | None = None) -> bool:
        """Connect and greet the daemon at ``path``: False if none is there. Before a byte
        is sent, its directory and the serving process's uid are checked (trust.py); the
        attempt ends at ``connect_timeout`` or ``deadline``, whichever is first. The
        connection's transfers are then bounded by what is left of ``deadline``."""
        if self._sock is not None:
            return True
        if not check_socket_dir(path):
            return False
        now = time.monotonic()
        limit = self.connect_timeout if deadline is None else min(self.connect_timeout, deadline - now)
        end = now + max(limit, 0.0)
        try:
            sock = connect_unix(path, end)
        except OSError as e:
            if e.errno in _UNREACHABLE or isinstance(e, (ConnectionError, FileNotFoundError)):
                return False
            raise Unavailable(f"cannot connect to {path}: {e}") from e
        try:
            check_server(sock, path)
            sock.settimeout(max(end - time.monotonic(), 0.001))
            try:
                sock.sendall(hello_frame(self.client_name), _NO_SIGPIPE)
            except ConnectionError:
                raise_refusal(sock)
                raise
            self.welcome = check_welcome(self._receive(sock))
            self.version_note = note_versions(self.welcome)
        except socket.timeout:
            sock.close()
            raise Timeout(f"omnid at {path} did not answer within {limit:.3g}s") from None
        except OSError as e:
            sock.close()
            if e.errno in _UNREACHABLE or isinstance(e, (ConnectionError, FileNotFoundError)):
                return False
            raise Unavailable(f"cannot connect to {path}: {e}") from e
        except BaseException:
            sock.close()
            raise
        left = self.timeout if deadline is None else max(deadline - time.monotonic(), 0.001)
        _bound_each_transfer(sock, min(self.timeout, left))
        self._sock = sock
        self.connected_path = path
        return True

    def _restore_transfer_timeout(self) -> None:
        """Give a connection made within a call's deadline the full ``timeout`` again."""
        if self._sock is not None:
            _bound_each_transfer(self._sock, self.timeout)

    def close(self) -> None:
        self._drop()

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None and self._pid == _process:
            sock.close()
        self.welcome = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- calls -------------------------------------------------------------------

    def _call(self, call: Call) -> Any:
        try:
            return self._call_with_retry(call)
        except OmnidError:
            if self.fail_open:
                log.debug("omnid call %s failed open", call.method, exc_info=True)
                return None
            raise

    def _call_with_retry(self, call: Call) -> Any:
        retried = False
        deadline = 0.0
        while True:
            # No check that the connection is still open: a send to one the daemon closed
            # fails, and then the request provably never left (below).
            reused = self._sock is not None and self._pid == _process
            if not reused:
                # ``timeout`` bounds the whole call: connecting, starting a daemon, the request.
                deadline = deadline or time.monotonic() + self.timeout
                self._open(deadline)
            try:
                result = self._roundtrip(call)
                if not reused:
                    self._restore_transfer_timeout()
                return result
            except _ConnectionLost as lost:
                if reused and not lost.delivered:
                    log.debug("omnid closed the connection (idle or restarted); reconnecting")
                    continue
                if retried or (lost.delivered and not call.idempotent):
                    raise Unavailable(f"connection to omnid lost during {call.method}: {lost}") from None
                retried = True

    def _roundtrip(self, call: Call) -> Any:
        sock = self._sock
        assert sock is not None
        request_id = self._next_id
        self._next_id = request_id + 1
        frame = encode_frame(RequestFrame(request_id, call.method, call.params), self._request)
        delivered = False
        try:
            sock.sendall(frame, _NO_SIGPIPE)
            delivered = True
            reply = decode_reply(self._receive(sock), call.result_type)
        except _TIMED_OUT:
            self._drop()
            raise Timeout(f"omnid did not answer {call.method} within {self.timeout}s") from None
        except OSError as e:
            # A send that fails left at most part of the frame, which the daemon never
            # acts on: only a request sent whole may have been processed.
            self._drop()
            raise _ConnectionLost(str(e) or type(e).__name__, delivered) from None
        except BaseException:
            # Cut short (a signal handler raised, a malformed reply): whatever comes next
            # on this connection would be taken for the next call's reply.
            self._drop()
            raise
        if reply.id != request_id:
            self._drop()
            raise ProtocolError(f"reply for request {reply.id} while waiting for {request_id}")
        try:
            result = result_or_raise(reply)
        except TransportError:
            self._drop()
            raise
        return call.finish(result)

    def _receive(self, sock: socket.socket) -> memoryview:
        """The payload of the next frame, valid until the next call. Header and body
        usually arrive together: one recv into the client's buffer."""
        view = self._buffer
        got = sock.recv_into(view)
        if got < HEADER.size:
            got = _fill(sock, view, got, HEADER.size)
        end = HEADER.size + frame_length(view)
        if got < end:
            if end > len(view):  # a reply larger than the buffer gets one of its own
                view = memoryview(bytearray(end))
                view[:got] = self._buffer[:got]
            _fill(sock, view, got, end)
        elif got > end:
            # Bytes after the reply that nobody asked for: the stream is out of step. The
            # reply stands; the connection is finished, and the next call finds it closed.
            log.debug("omnid sent %d bytes more than its reply; the connection is dropped", got - end)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return view[HEADER.size : end]

    @contextlib.contextmanager
    def session(self, tool_id: str, **kwargs: Any) -> Iterator[Session | None]:
        """A session for the block, ended on exit (None when failing open)."""
        got = self.get_or_create(tool_id, **kwargs)
        session = got.session if got is not None else None
        try:
            yield session
        finally:
            if session is not None:
                self.end(session.session_id)


class _ConnectionLost(Exception):
    def __init__(self, why: str, delivered: bool):
        super().__init__(why)
        self.delivered = delivered
        """Whether the whole request was sent (and so may have been processed)."""


def connect_attempt(path: Path) -> socket.socket | None:
    """One non-blocking connect: the connected socket, or None if the daemon's accept
    queue is full (``EAGAIN``: it is there but busy). Other failures raise."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if _SO_NOSIGPIPE is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, _SO_NOSIGPIPE, 1)
    sock.setblocking(False)
    try:
        sock.connect(os.fspath(path))
        return sock
    except BlockingIOError as e:
        sock.close()
        if e.errno != errno.EAGAIN:
            raise
        return None
    except BaseException:
        sock.close()
        raise


def raise_refusal(sock: socket.socket) -> None:
    """Raise the error a daemon sent before closing the connection at once, as it does to
    another uid, if it is there to read: that reason, not "not running", is the answer."""
    try:
        data = sock.recv(REPLY_BUFFER, socket.MSG_DONTWAIT)
        end = HEADER.size + frame_length(data) if len(data) >= HEADER.size else len(data) + 1
    except (OSError, OmnidError):
        return
    if len(data) >= end:
        check_welcome(data[HEADER.size : end])  # an error reply raises its typed error


def queue_full(path: Path) -> Timeout:
    return Timeout(f"omnid at {path} is not accepting connections (its queue is full)")


def connect_unix(path: Path, deadline: float) -> socket.socket:
    """A connected, blocking socket. A full accept queue is waited out until ``deadline``,
    then reported as a Timeout, never as "not running"."""
    delay = 0.001
    while (sock := connect_attempt(path)) is None:
        if time.monotonic() + delay > deadline:
            raise queue_full(path)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    sock.setblocking(True)
    return sock


_TIMEVAL = struct.Struct("@ll")  # struct timeval: on macOS its int tv_usec is padded to a long
_TIMED_OUT = (BlockingIOError, socket.timeout)
"""How an expired deadline surfaces: EAGAIN from a kernel timeout, or socket.timeout."""


def _bound_each_transfer(sock: socket.socket, seconds: float | None) -> None:
    """Leave ``sock`` blocking and have the kernel bound each send and receive by ``seconds``
    (SO_SNDTIMEO/SO_RCVTIMEO; an expired one fails with EAGAIN). A Python-level timeout
    would cost a poll before every send and receive. (Unlike it, a wait interrupted by a
    signal that a Python handler takes starts over with the full timeout.)"""
    sock.settimeout(None)
    if seconds is None:
        return
    usec = min(max(round(seconds * 1e6), 1), (2**31 - 1) * 1_000_000)  # a zero timeval means "forever"
    timeval = _TIMEVAL.pack(*divmod(usec, 1_000_000))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    except OSError:  # a platform whose timeval we got wrong: the portable, slower way
        sock.settimeout(seconds)


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the daemon closed this connection (as it does idle ones) or sent bytes nobody
    asked for: either way it is unusable. For ``connect()``, which promises a live
    connection, and the async client; the blocking client's calls learn it from the send.
    (poll, not recv: a socket with a timeout would wait.)"""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _fill(sock: socket.socket, view: memoryview, got: int, want: int) -> int:
    """Receive into ``view`` until it holds ``want`` bytes (``got`` already there)."""
    while got < want:
        n = sock.recv_into(view[got:want])
        if n == 0:
            raise ConnectionResetError("daemon closed the connection")
        got += n
    return got

