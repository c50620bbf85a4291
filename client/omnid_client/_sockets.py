"""Blocking Unix-socket steps: connect attempts, the hello handshake, reading a frame, kernel deadlines."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
import sys
import time
from pathlib import Path

from ._core import check_welcome, frame_length, hello_frame
from .errors import OmnidError, Timeout, Unavailable
from .protocol import HEADER, Welcome

log = logging.getLogger("omnid_client")

UNREACHABLE = (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR)
# A send to a connection the daemon closed must fail with EPIPE, not kill a tool that set
# SIGPIPE back to the default: MSG_NOSIGNAL per send, or SO_NOSIGPIPE (macOS) per socket.
NO_SIGPIPE = getattr(socket, "MSG_NOSIGNAL", 0)
_SO_NOSIGPIPE = getattr(socket, "SO_NOSIGPIPE", 0x1022) if sys.platform == "darwin" else None
_TIMEVAL = struct.Struct("@ll")  # struct timeval: on macOS its int tv_usec is padded to a long


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


def handshake(
    path: Path, connect_timeout: float, client_name: str, buffer: memoryview
) -> tuple[socket.socket, Welcome] | None:
    """A blocking connection to ``path`` that has said hello (within ``connect_timeout``),
    and the daemon's welcome; None when no daemon is there."""
    deadline = time.monotonic() + connect_timeout
    try:
        sock = connect_unix(path, deadline)
    except OSError as e:
        if e.errno in UNREACHABLE or isinstance(e, (ConnectionError, FileNotFoundError)):
            return None
        raise Unavailable(f"cannot connect to {path}: {e}") from e
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.sendall(hello_frame(client_name), NO_SIGPIPE)
        welcome = check_welcome(receive_frame(sock, buffer))
    except TimeoutError:
        sock.close()
        raise Timeout(f"omnid at {path} did not answer within {connect_timeout}s") from None
    except OSError as e:
        sock.close()
        if e.errno in UNREACHABLE or isinstance(e, (ConnectionError, FileNotFoundError)):
            return None
        raise Unavailable(f"cannot connect to {path}: {e}") from e
    except OmnidError:
        sock.close()
        raise
    return sock, welcome


def receive_frame(sock: socket.socket, buffer: memoryview) -> memoryview:
    """The payload of the next frame, valid until ``buffer`` is reused. Header and body
    usually arrive together: one recv into ``buffer``."""
    view = buffer
    got = sock.recv_into(view)
    if got < HEADER.size:
        got = _fill(sock, view, got, HEADER.size)
    end = HEADER.size + frame_length(view)
    if got < end:
        if end > len(view):  # a reply larger than the buffer gets one of its own
            view = memoryview(bytearray(end))
            view[:got] = buffer[:got]
        _fill(sock, view, got, end)
    elif got > end:
        # Bytes after the reply that nobody asked for: the stream is out of step. The
        # reply stands; the connection is finished, and the next call finds it closed.
        log.debug("omnid sent %d bytes more than its reply; the connection is dropped", got - end)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    return view[HEADER.size : end]



def bound_each_transfer(sock: socket.socket, seconds: float | None) -> None:
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


def closed_by_peer(sock: socket.socket) -> bool:
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
