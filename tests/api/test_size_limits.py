"""Size limits: metadata, field lengths, frames and list lengths. End to end against a real daemon."""
from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from omnid_client import Client, Invalid, TooLarge
from omnid_client._core import check_welcome, hello_frame, parse_response
from omnid_client.protocol import (
    HEADER,
    MAX_CONTENT,
    MAX_FRAME,
    MAX_METADATA_BYTES,
    Session,
)
from tests.helpers import (
    SID,
    TOOL,
    metadata_packing_to,
    msg,
    raw_call,
    refused,
    table_counts,
    with_session,
)

# --- limits ----------------------------------------------------------------------------

METADATA_CALLS: dict[str, Callable[[Client, Session, Any, dict], Any]] = {
    "session.get_or_create": lambda c, s, t, md: c.get_or_create(TOOL, workspace=s.workspace, dedup=False, metadata=md),
    "memory.put": lambda c, s, t, md: c.put_memory("k", "v", project_id=s.project_id, metadata=md),
    "session_memory.add": lambda c, s, t, md: c.add_session_memory(s.session_id, "x", metadata=md),
    "message.add": lambda c, s, t, md: c.add_message(s.session_id, "user", "x", metadata=md),
    "task.create": lambda c, s, t, md: c.create_task(s.session_id, "x", metadata=md),
    "task.update": lambda c, s, t, md: c.update_task(t.task_id, metadata=md),
    "interaction.add": lambda c, s, t, md: c.add_interaction(t.task_id, "x", metadata=md),
}


def test_metadata_is_limited_to_64_kib_in_every_call(client, home, session):
    task = client.create_task(session.session_id, "t", metadata={"kept": True})
    too_large, at_limit = metadata_packing_to(MAX_METADATA_BYTES + 1), metadata_packing_to(MAX_METADATA_BYTES)

    for method, call in METADATA_CALLS.items():
        before = table_counts(home)
        refused(TooLarge, method, call, client, session, task, too_large)
        assert table_counts(home) == before, method
        assert client.get_task(task.task_id).metadata == {"kept": True}, method
    for call in METADATA_CALLS.values():
        call(client, session, task, at_limit)


LONG_FIELDS: dict[str, tuple[str, dict[str, Any]]] = {
    "tool_id": ("session.get_or_create", {"tool_id": "t" * 129}),
    "memory key": ("memory.put", {"key": "k" * 257, "value": 1, "workspace": "/tmp"}),
    "task title": ("task.create", {"session_id": SID, "title": "t" * 1025}),
    "external id": ("task.create", {"session_id": SID, "title": "t", "external_id": "e" * 257}),
    "memory type": ("session_memory.add", {"session_id": SID, "content": "x", "memory_type": "m" * 65}),
    "session memory content": ("session_memory.add", {"session_id": SID, "content": "x" * (MAX_CONTENT + 1)}),
    "message type": (
        "message.add", {"session_id": SID, "messages": [{"role": "user", "content": "x", "message_type": "m" * 65}]},
    ),
    "context subject": ("context.append", {"session_id": SID, "events": [{"kind": "search", "subject": "s" * 8193}]}),
    "search query": ("search", {"query": "q" * 1025}),
    "workspace": ("project.get", {"workspace": "/" + "w" * 4096}),
    "cursor": ("task.list", {"cursor": "c" * 257}),
}


def test_over_long_fields_are_too_large(client, home, session):
    task = client.create_task(session.session_id, "t")
    before = table_counts(home)

    for case, (method, params) in LONG_FIELDS.items():
        params = with_session(params, session.session_id)
        err = refused(TooLarge, case, raw_call, client, method, params)
        assert err.field and err.field in str(err), f"{case}: the error names the field"
    refused(TooLarge, "interaction content", client.add_interaction, task.task_id, "x" * (MAX_CONTENT + 1))

    assert table_counts(home) == before


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_frame(sock: socket.socket) -> bytes:
    (n,) = HEADER.unpack(recv_exactly(sock, HEADER.size))
    return recv_exactly(sock, n)


def test_an_oversize_frame_gets_too_large_and_the_daemon_keeps_serving(daemon, client, session):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(daemon.socket))
        sock.sendall(hello_frame("raw"))
        check_welcome(read_frame(sock))

        sock.sendall(HEADER.pack(MAX_FRAME + 1) + b"\x00" * 1024)

        reply = parse_response(read_frame(sock))
        assert reply.error is not None and reply.error.code == "too_large"
        assert sock.recv(1) == b"", "the daemon closes a connection after an oversize frame"

    assert client.get(session.session_id).live
    assert client.add_message(session.session_id, "user", "still here").message_count == 1


def test_a_client_refuses_a_request_over_the_frame_limit(daemon, client, home, session):
    huge = [msg("x" * MAX_CONTENT)] * 5  # each message fits, the frame does not
    before = table_counts(home)

    with pytest.raises(TooLarge):
        client.add_messages(session.session_id, huge)

    assert table_counts(home) == before
    assert client.add_message(session.session_id, "user", "still here").message_count == 1


def test_a_request_just_under_the_frame_limit_is_served(client, session):
    batch = [msg("x" * MAX_CONTENT)] * 3
    assert client.add_messages(session.session_id, batch).message_count == 3


LIST_LIMITS = [
    ("message.list", {"session_id": SID, "limit": 1001}),
    ("context.get", {"session_id": SID, "max_files": 1001}),
    ("context.get", {"session_id": SID, "max_searches": 0}),
    ("memory.list", {"limit": 0, "workspace": "/tmp"}),
    ("task.list", {"limit": 1001}),
    ("project.list", {"limit": 1001}),
    ("search", {"query": "q", "limit": 1001}),
]


def test_requested_list_lengths_are_bounded(client, session):
    for method, params in LIST_LIMITS:
        params = with_session(params, session.session_id)
        refused(Invalid, f"{method} {params}", raw_call, client, method, params)
