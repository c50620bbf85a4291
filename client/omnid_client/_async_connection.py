"""The asyncio client's connection: hello, requests pipelined over one connection, reconnect and retry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any, TypeVar, cast

from ._core import (
    BaseClient,
    Call,
    check_welcome,
    encode_frame,
    frame_length,
    hello_frame,
    note_versions,
    parse_response,
    result_of,
)
from ._sockets import closed_by_peer, connect_attempt, handshake, queue_full
from .errors import OmnidError, ProtocolError, Timeout, TransportError, Unavailable
from .protocol import HEADER, RequestFrame, Welcome

log = logging.getLogger("omnid_client")
T = TypeVar("T")
_PROBE_BUFFER = 4096
"""Bytes to read the daemon's welcome into when probing for it from the spawn thread."""


class AsyncConnection(BaseClient):
    """One asyncio connection to the daemon, safe to share between tasks; ``AsyncClient`` adds the calls."""

    def _init_connection(self) -> None:
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, tuple[asyncio.Future[Any], Call[Any]]] = {}
        self._connect_lock = asyncio.Lock()

    async def connect(self) -> Welcome:
        async with self._connect_lock:
            if self._writer is not None and self.welcome is not None:
                if self._pending or not closed_by_peer(self._writer.get_extra_info("socket")):
                    return self.welcome
                # Closed by the daemon (idle) before our reader task saw the EOF: start afresh.
                self._reset(Unavailable("omnid closed the connection"))
            candidates = self._candidates()
            for path, _ in candidates:
                if await self._try_connect(path):
                    break
            else:
                paths = self._autostart_paths(candidates)
                from ._spawn import start_daemon  # subprocess and friends: only for the rare spawn

                # The spawn lock and the wait for the daemon block: in a thread, off the event loop.
                target = await asyncio.to_thread(
                    start_daemon, paths, self._answers, self.start_timeout, use_service=not self.socket_path
                )
                if not await self._try_connect(target):
                    raise Unavailable(f"omnid started but {target} does not accept connections")
            assert self.welcome is not None
            return self.welcome

    def _answers(self, path: Path) -> bool:
        """Whether a daemon completes the handshake on ``path`` (blocking: for the spawn thread)."""
        opened = handshake(path, self.connect_timeout, self.client_name, memoryview(bytearray(_PROBE_BUFFER)))
        if opened is None:
            return False
        opened[0].close()
        return True

    async def _try_connect(self, path: Path) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        try:
            sock = await _connect_unix(path, deadline)
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(sock=sock, limit=2**16), max(deadline - loop.time(), 0.001)
            )
        except asyncio.TimeoutError:
            raise Timeout(f"omnid at {path} did not accept within {self.connect_timeout}s") from None
        except OSError:
            return False
        try:
            writer.write(hello_frame(self.client_name))
            payload = await asyncio.wait_for(_read_frame(reader), self.connect_timeout)
            self.welcome = check_welcome(payload)
            self.version_note = note_versions(self.welcome)
        except asyncio.TimeoutError:
            writer.close()
            raise Timeout(f"omnid at {path} did not answer within {self.connect_timeout}s") from None
        except (OSError, asyncio.IncompleteReadError):
            writer.close()
            return False
        except OmnidError:
            writer.close()
            raise
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read_replies(reader))
        return True

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        error: Exception = Unavailable("omnid closed the connection")
        try:
            while True:
                resp = parse_response(await _read_frame(reader))
                entry = self._pending.pop(resp.id, None)
                if entry is None:  # its caller timed out and stopped waiting
                    continue
                fut, call = entry
                if fut.done():
                    continue
                try:
                    fut.set_result(call.finish(result_of(resp, call.result_type)))
                except OmnidError as e:
                    fut.set_exception(e)
        except (OSError, asyncio.IncompleteReadError) as e:
            error = _ConnectionLost(str(e) or type(e).__name__)
        except ProtocolError as e:
            error = e
        finally:
            # Only for its own connection: a reader of a replaced one must not reset the new one.
            if self._reader_task is asyncio.current_task():
                self._reset(error)

    def _reset(self, error: Exception) -> None:
        writer, self._writer = self._writer, None
        task, self._reader_task = self._reader_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self.welcome = None
        if writer is not None:
            writer.close()
        pending, self._pending = self._pending, {}
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(error)

    async def close(self) -> None:
        task = self._reader_task
        self._reset(Unavailable("client closed"))
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _call(self, call: Call[T]) -> T:
        try:
            return await self._call_with_retry(call)
        except OmnidError:
            if self.fail_open:
                log.debug("omnid call %s failed open", call.method, exc_info=True)
                return cast(T, None)
            raise

    async def _call_with_retry(self, call: Call[T]) -> T:
        for attempt in (1, 2):
            await self.connect()
            try:
                return await self._roundtrip(call)
            except _ConnectionLost as lost:
                if attempt == 2 or not call.idempotent:
                    raise Unavailable(f"connection to omnid lost during {call.method}: {lost}") from None
        raise AssertionError("unreachable")

    async def _roundtrip(self, call: Call[T]) -> T:
        writer = self._writer
        assert writer is not None
        request_id = self._next_id
        self._next_id += 1
        frame = encode_frame(RequestFrame(request_id, call.method, call.params))
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (fut, call)
        try:
            writer.write(frame)
            return await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except asyncio.TimeoutError:
            self._pending.pop(request_id, None)
            raise Timeout(f"omnid did not answer {call.method} within {self.timeout}s") from None
        except (ConnectionError, OSError) as e:
            self._reset(Unavailable(str(e)))
            raise _ConnectionLost(str(e)) from None


class _ConnectionLost(TransportError):
    pass


async def _connect_unix(path: Path, deadline: float) -> socket.socket:
    """A connected socket; a full accept queue is waited out until ``deadline`` (asyncio's
    own connect would take it for a connection)."""
    loop = asyncio.get_running_loop()
    delay = 0.001
    while (sock := connect_attempt(path)) is None:
        if loop.time() + delay > deadline:
            raise queue_full(path)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return sock


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(HEADER.size)
    return await reader.readexactly(frame_length(header))
