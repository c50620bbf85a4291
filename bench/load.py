"""One benchmark client process: waits for the start signal, runs one operation in a
loop for a fixed time, and writes its latencies (ns) to a file.

``python bench/load.py TARGET OP SECONDS GO_FD OUT [ARG]``; TARGET is omnid, echo,
raw (the raw echo floor, bench/floor.py), baseline, paired (omnid, the echo and the raw
echo floor in turn; ARG is their two sockets joined by os.pathsep) or metrics (the
environment's omnid and the one listening on ARG in turn, each first in every other round); the socket or port
comes from ARG or the environment. For omnid's context and message ops, ARG may name the (live)
session to write to.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import floor
import msgspec


def omnid_op(op: str, arg: str, socket_path: str | None = None):
    from omnid_client import Client
    from omnid_client.protocol import ContextEvent

    client = Client(socket_path, autostart=False, timeout=30)
    client.connect()
    pid = os.getpid()
    if op == "create":
        counter = iter(range(10**9))
        return lambda: client.get_or_create(f"bench-create-{pid}-{next(counter)}")
    if op == "reuse":
        client.get_or_create("bench-reuse")
        return lambda: client.get_or_create("bench-reuse")
    session_id = arg or client.get_or_create(f"bench-{op}").session.session_id
    if op == "context":
        events = [ContextEvent("file_access", "src/omnid/server.py", 0.7)]
        return lambda: client.append_context(session_id, events)
    if op == "message":
        return lambda: client.add_message(session_id, "assistant", "a short reply of typical size " * 4, tokens_used=42)
    raise SystemExit(f"unknown op {op}")


def echo_op(op: str, path: str):
    from omnid_client._core import encode_frame, frame_length
    from omnid_client.protocol import HEADER, GetOrCreate, IncomingResponse, RequestFrame

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    decode = msgspec.msgpack.Decoder(IncomingResponse).decode
    params = GetOrCreate("bench-reuse")
    ids = iter(range(1, 10**9))

    def recv_exact(n: int) -> bytes:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = sock.recv_into(view[got:])
            if not k:
                raise ConnectionError("echo server closed")
            got += k
        return bytes(buf)

    def call():
        sock.sendall(encode_frame(RequestFrame(next(ids), "session.get_or_create", params)))
        resp = decode(recv_exact(frame_length(recv_exact(HEADER.size))))
        return msgspec.msgpack.decode(resp.result, type=GetOrCreate)

    return call


def baseline_op(op: str, port: str):
    import requests

    http = requests.Session()
    url = f"http://127.0.0.1:{port}/sessions/get_or_create"
    body = {"tool_id": "bench-reuse", "process_id": os.getpid()}
    return lambda: http.post(url, json=body, timeout=30).raise_for_status()


def main() -> None:
    target, op, seconds, go_fd, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    arg = sys.argv[6] if len(sys.argv) > 6 else ""
    if os.environ.get("OMNID_BENCH_CPU"):  # the latency client on its own CPU (see run.pinned)
        os.sched_setaffinity(0, {int(os.environ["OMNID_BENCH_CPU"])})
    if target == "paired":
        # omnid and the echo floor called in turn from one process: both see the same
        # moments of a noisy machine. Writes {"omnid": [...], "echo": [...]}.
        echo_path, raw_path = arg.split(os.pathsep)
        calls = {"omnid": omnid_op(op, ""), "echo": echo_op("echo", echo_path), "raw": floor.raw_op(raw_path)}
    elif target == "metrics":
        calls = {"on": omnid_op(op, ""), "off": omnid_op(op, "", arg)}
    else:
        ops = {"omnid": omnid_op, "echo": echo_op, "raw": lambda op, arg: floor.raw_op(arg), "baseline": baseline_op}
        calls = {target: ops[target](op, arg)}
    for call in calls.values():
        call()  # warm up: connection made, code paths loaded
    print("ready", flush=True)
    os.read(go_fd, 1)  # returns when the runner closes the other end: all start together
    latencies: dict[str, list[int]] = {name: [] for name in calls}
    now = time.perf_counter_ns
    end = now() + int(seconds * 1e9)
    order, flipped = list(calls.items()), list(reversed(calls.items()))
    while now() < end:
        order, flipped = flipped, order
        for name, call in order if target == "metrics" else calls.items():
            t0 = now()
            call()
            latencies[name].append(now() - t0)
    with open(out, "wb") as f:
        f.write(msgspec.msgpack.encode(latencies if target in ("paired", "metrics") else latencies[target]))


if __name__ == "__main__":
    main()
