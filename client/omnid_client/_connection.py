"""The blocking client's connection: hello, one request at a time, reconnect and retry, fork-safe."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import TypeVar, cast

from ._core import BaseClient, Call, decode_reply, encode_frame, note_versions, result_or_raise
from ._sockets import NO_SIGPIPE, bound_each_transfer, closed_by_peer, handshake, receive_frame
from .errors import OmnidError, ProtocolError, Timeout, TransportError, Unavailable
from .protocol import HEADER, RequestFrame, Welcome

log = logging.getLogger("omnid_client")
T = TypeVar("T")

REPLY_BUFFER = 64 * 1024
"""Bytes of the buffer each client receives replies into; larger ones get their own."""

_process = os.getpid()
"""This process's pid, renewed in a forked child: a connection made under another pid is the
parent's and is never touched. Kept by a fork hook, so a call costs no getpid()."""


def _renew_process() -> None:
    global _process
    _process = os.getpid()


os.register_at_fork(after_in_child=_renew_process)


class Connection(BaseClient):
    """One blocking connection to the daemon; ``Client`` adds the calls."""

    def _init_connection(self) -> None:
        self.connected_path: Path | None = None
        self._sock: socket.socket | None = None
        self._pid = _process
        self._buffer = memoryview(bytearray(REPLY_BUFFER))
        self._request = bytearray(HEADER.size)

    # -- connection ------------------------------------------------------------

    def connect(self) -> Welcome:
        """Connect now (calls connect lazily anyway); returns the daemon's handshake."""
        if self._sock is not None and self._pid == _process:
            if not closed_by_peer(self._sock):
                assert self.welcome is not None
                return self.welcome
            log.debug("omnid closed the connection (idle or restarted); reconnecting")
        return self._open()

    def _open(self) -> Welcome:
        """A new connection (after dropping any old one), starting the daemon if allowed."""
        self._drop()
        self._pid = _process
        candidates = self._candidates()
        for path, _source in candidates:
            if self._try_connect(path):
                break
        else:
            paths = self._autostart_paths(candidates)
            from ._spawn import start_daemon  # subprocess and friends: only for the rare spawn

            target = start_daemon(paths, self._try_connect, self.start_timeout, use_service=not self.socket_path)
            if self._sock is None and not self._try_connect(target):
                raise Unavailable(f"omnid started but {target} does not accept connections")
        assert self.welcome is not None
        return self.welcome

    def _try_connect(self, path: Path) -> bool:
        if self._sock is not None:
            return True
        opened = handshake(path, self.connect_timeout, self.client_name, self._buffer)
        if opened is None:
            return False
        sock, self.welcome = opened
        self.version_note = note_versions(self.welcome)
        bound_each_transfer(sock, self.timeout)
        self._sock = sock
        self.connected_path = path
        return True

    def close(self) -> None:
        self._drop()

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None and self._pid == _process:
            sock.close()
        self.welcome = None

    # -- calls -------------------------------------------------------------------

    def _call(self, call: Call[T]) -> T:
        try:
            return self._call_with_retry(call)
        except OmnidError:
            if self.fail_open:
                log.debug("omnid call %s failed open", call.method, exc_info=True)
                return cast(T, None)
            raise

    def _call_with_retry(self, call: Call[T]) -> T:
        retried = False
        while True:
            # No check that the connection is still open: a send to one the daemon closed
            # fails, and then the request provably never left (below).
            reused = self._sock is not None and self._pid == _process
            if not reused:
                self._open()
            try:
                return self._roundtrip(call)
            except _ConnectionLost as lost:
                if reused and not lost.delivered:
                    log.debug("omnid closed the connection (idle or restarted); reconnecting")
                    continue
                if retried or (lost.delivered and not call.idempotent):
                    raise Unavailable(f"connection to omnid lost during {call.method}: {lost}") from None
                retried = True

    def _roundtrip(self, call: Call[T]) -> T:
        sock = self._sock
        assert sock is not None
        request_id = self._next_id
        self._next_id = request_id + 1
        frame = encode_frame(RequestFrame(request_id, call.method, call.params), self._request)
        delivered = False
        try:
            sock.sendall(frame, NO_SIGPIPE)
            delivered = True
            reply = decode_reply(receive_frame(sock, self._buffer), call.result_type)
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


class _ConnectionLost(Exception):
    def __init__(self, why: str, delivered: bool):
        super().__init__(why)
        self.delivered = delivered
        """Whether the whole request was sent (and so may have been processed)."""


_TIMED_OUT = (BlockingIOError, socket.timeout)
"""How an expired deadline surfaces: EAGAIN from a kernel timeout, or socket.timeout."""

