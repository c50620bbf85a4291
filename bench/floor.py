"""The raw echo floor and the daemon's CPU per call.

The floor is a bare asyncio Protocol that writes back what it reads, answered by a raw
socket client that sends a prebuilt msgpack frame shaped like a get_or_create request and
reads the reply: no omnid code on either side. ``python bench/floor.py PATH`` serves it.

``cpu_per_call`` counts the CPU a server process spends per call (utime + stime from
/proc/PID/stat, summed over its threads) while one client calls it N times.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import time
from typing import Callable

import msgspec

_HEADER = struct.Struct(">I")


class RawEcho(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def raw_frame(request_id: int) -> bytes:
    """A request frame as omnid's client sends it for get_or_create, built without omnid."""
    body = msgspec.msgpack.encode(
        {"id": request_id, "method": "session.get_or_create", "params": {"tool_id": "bench-reuse"}}
    )
    return _HEADER.pack(len(body)) + body


def raw_op(path: str) -> Callable[[], object]:
    """One call to the raw floor: sendall of a frame, then recv of its reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    frame = raw_frame(1)
    want = len(frame)
    recv, sendall = sock.recv, sock.sendall

    def call() -> bytes:
        sendall(frame)
        got = recv(65536)
        while len(got) < want:
            more = recv(65536)
            if not more:
                raise ConnectionError("raw echo server closed")
            got += more
        return got

    return call


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) the process has used so far, all its threads."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_call(server_pid: int, call: Callable[[], object], calls: int) -> float:
    """Microseconds of the server's CPU per call, over ``calls`` calls (after a warm-up)."""
    for _ in range(min(200, calls)):
        call()
    time.sleep(0.05)  # coalesced writes triggered by the warm-up land outside the count
    before = process_cpu(server_pid)
    for _ in range(calls):
        call()
    return (process_cpu(server_pid) - before) / calls * 1e6


def omnid_calls(client, session_id: str) -> dict[str, Callable[[], object]]:
    """One call of each hot method, on a live session of this process."""
    from omnid_client.protocol import ContextEvent

    events = [ContextEvent("file_access", "src/omnid/server.py", 0.7)]
    text = "a short reply of typical size " * 4
    return {
        "reuse": lambda: client.get_or_create("bench-cpu"),
        "get": lambda: client.get(session_id),
        "find": lambda: client.find("bench-cpu"),
        "heartbeat": lambda: client.heartbeat(session_id),
        "status": client.status,
        "message.add": lambda: client.add_message(session_id, "assistant", text, tokens_used=42),
        "context.append": lambda: client.append_context(session_id, events),
    }


def daemon_cpu(daemon_pid: int, raw_pid: int, raw_path: str, calls: int, rounds: int = 3) -> dict[str, float]:
    """Daemon CPU per call (us) of each hot method and of the raw echo server, the median
    over ``rounds`` alternating rounds."""
    from omnid_client import Client

    with Client(autostart=False, timeout=30) as client:
        session_id = client.get_or_create("bench-cpu").session.session_id
        ops = omnid_calls(client, session_id)
        raw = raw_op(raw_path)
        samples: dict[str, list[float]] = {name: [] for name in ["raw_echo", *ops]}
        for _ in range(rounds):
            samples["raw_echo"].append(cpu_per_call(raw_pid, raw, calls))
            for name, op in ops.items():
                samples[name].append(cpu_per_call(daemon_pid, op, calls))
    return {name: sorted(v)[len(v) // 2] for name, v in samples.items()}


async def serve(path: str, protocol: Callable[[], asyncio.Protocol]) -> None:
    """Serve ``protocol`` on the Unix socket ``path`` until killed."""
    if os.path.exists(path):
        os.unlink(path)
    server = await asyncio.get_running_loop().create_unix_server(protocol, path)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], RawEcho))
