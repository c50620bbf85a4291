"""Messages, and content refused for unknown or ended sessions. End to end against a real daemon."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from omnid_client import Client, Conflict, Invalid, NotFound, TooLarge
from omnid_client.protocol import (
    MAX_BATCH,
    MAX_CONTENT,
    MAX_METADATA_BYTES,
)
from tests.helpers import (
    UNKNOWN_SESSION,
    count,
    db_rows,
    ev,
    metadata_packing_to,
    msg,
    raw_call,
    refused,
    table_counts,
)

# --- messages --------------------------------------------------------------------------


def test_messages_are_added_singly_or_in_batches_and_listed_in_order(client, session):
    sid = session.session_id
    one = client.add_message(
        sid, "user", "hello", tokens_used=3, cost_usd=0.25, metadata={"a": 1}, message_type="prompt"
    )
    assert (len(one.message_ids), one.message_count, one.total_tokens, one.total_cost) == (1, 1, 3, 0.25)

    batch = client.add_messages(
        sid,
        [msg("hi there", "assistant", tokens_used=5, cost_usd=0.5), msg("ls -l", "tool"), msg("be brief", "system")],
    )
    assert (batch.message_count, batch.total_tokens, batch.total_cost) == (4, 8, 0.75)
    assert len(batch.message_ids) == 3
    assert one.message_ids[0] < batch.message_ids[0] < batch.message_ids[1] < batch.message_ids[2]

    page = client.list_messages(sid)
    assert page.next_after_seq is None
    assert [(m.seq, m.role, m.content) for m in page.messages] == [
        (1, "user", "hello"), (2, "assistant", "hi there"), (3, "tool", "ls -l"), (4, "system", "be brief"),
    ]
    assert [m.message_id for m in page.messages] == one.message_ids + batch.message_ids
    first = page.messages[0]
    assert (first.message_type, first.metadata, first.tokens_used, first.cost_usd) == ("prompt", {"a": 1}, 3, 0.25)
    assert page.messages[1].message_type == "text"
    got = client.get(sid)
    assert (got.message_count, got.total_tokens, got.total_cost) == (4, 8, 0.75)
    assert got.last_activity >= page.messages[-1].created_at


def test_messages_are_paged_by_sequence(client, session):
    sid = session.session_id
    client.add_messages(sid, [msg(f"m{n}") for n in range(1, 8)])

    pages, after = [], 0
    while True:
        page = client.list_messages(sid, limit=3, after_seq=after)
        pages.append([m.seq for m in page.messages])
        if page.next_after_seq is None:
            break
        after = page.next_after_seq
    assert pages == [[1, 2, 3], [4, 5, 6], [7]]
    assert client.list_messages(sid, after_seq=7).messages == []
    with pytest.raises(NotFound):
        client.list_messages(UNKNOWN_SESSION)


def test_session_counters_stay_exact_under_concurrent_adds(daemon, home, session):
    threads, adds = 8, 25
    barrier = threading.Barrier(threads)
    counts: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with daemon.client() as c:
                c.connect()
                barrier.wait(timeout=10)
                for _ in range(adds):
                    added = c.add_message(session.session_id, "user", "x", tokens_used=7, cost_usd=0.1)
                    counts.append(added.message_count)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert not errors, errors

    total = threads * adds
    assert sorted(counts) == list(range(1, total + 1)), "every add must see its own, distinct count"
    with daemon.client() as c:
        got = c.get(session.session_id)
        assert (got.message_count, got.total_tokens, got.total_cost) == (total, 7 * total, 20.0)
        summary = c.session_summary(session.session_id)
        assert (summary.message_count, summary.total_tokens, summary.total_cost) == (total, 7 * total, 20.0)
        assert [m.seq for m in c.list_messages(session.session_id, limit=1000).messages] == list(range(1, total + 1))
    totals = db_rows(home / "omnid.db", "SELECT count(*), sum(tokens_used), sum(cost_nanos) FROM messages")
    assert totals == [(total, 7 * total, 20 * 10**9)]


BAD_MESSAGES = {
    "unknown role": ({"role": "robot", "content": "x"}, Invalid),
    "capitalised role": ({"role": "User", "content": "x"}, Invalid),
    "empty role": ({"role": "", "content": "x"}, Invalid),
    "content too long": ({"role": "user", "content": "x" * (MAX_CONTENT + 1)}, TooLarge),
    "metadata too large": (
        {"role": "user", "content": "x", "metadata": metadata_packing_to(MAX_METADATA_BYTES + 1)}, TooLarge
    ),
    "negative tokens": ({"role": "user", "content": "x", "tokens_used": -1}, Invalid),
    "negative cost": ({"role": "user", "content": "x", "cost_usd": -0.01}, Invalid),
    "bad message type": ({"role": "user", "content": "x", "message_type": "two words"}, Invalid),
    "missing content": ({"role": "user"}, Invalid),
}
GOOD_MESSAGE = {"role": "assistant", "content": "fine", "tokens_used": 10, "cost_usd": 1.0}


def assert_one_message(client: Client, sid: str) -> None:
    got = client.get(sid)
    assert (got.message_count, got.total_tokens, got.total_cost) == (1, 1, 0.5)
    assert [m.content for m in client.list_messages(sid).messages] == ["already there"]


def test_a_batch_with_one_bad_message_writes_nothing(client, home, session):
    sid = session.session_id
    client.add_message(sid, "user", "already there", tokens_used=1, cost_usd=0.5)
    before = table_counts(home)

    for case, (bad, error) in BAD_MESSAGES.items():
        batch = {"session_id": sid, "messages": [GOOD_MESSAGE, bad, GOOD_MESSAGE]}
        refused(error, case, raw_call, client, "message.add", batch)
        assert table_counts(home) == before, case

    assert_one_message(client, sid)


def test_a_batch_with_metadata_that_cannot_be_stored_is_invalid_and_writes_nothing(client, home, session):
    """MessagePack can carry what the JSON columns cannot (an extension type): a typed
    refusal, not an internal error."""
    sid = session.session_id
    client.add_message(sid, "user", "already there", tokens_used=1, cost_usd=0.5)
    before = table_counts(home)
    bad = {"role": "user", "content": "x", "metadata": {"e": msgspec.msgpack.Ext(5, b"?")}}

    with pytest.raises(Invalid):
        raw_call(client, "message.add", {"session_id": sid, "messages": [GOOD_MESSAGE, bad, GOOD_MESSAGE]})

    assert table_counts(home) == before
    assert_one_message(client, sid)


def test_batches_hold_at_most_max_batch_messages(client, home, session):
    with pytest.raises(TooLarge):
        client.add_messages(session.session_id, [msg()] * (MAX_BATCH + 1))
    assert count(home, "messages") == 0
    assert client.get(session.session_id).message_count == 0

    assert client.add_messages(session.session_id, [msg()] * MAX_BATCH).message_count == MAX_BATCH


def test_content_is_limited_to_max_content_characters(client, home, session):
    with pytest.raises(TooLarge):
        client.add_message(session.session_id, "user", "é" * (MAX_CONTENT + 1))
    assert count(home, "messages") == 0

    client.add_message(session.session_id, "user", "é" * MAX_CONTENT)
    assert client.list_messages(session.session_id).messages[0].content == "é" * MAX_CONTENT


# --- content only goes into live sessions -------------------------------------------------

ADDS: dict[str, Callable[[Client, str], Any]] = {
    "context.append": lambda c, sid: c.append_context(sid, [ev("decision", "x")]),
    "session_memory.add": lambda c, sid: c.add_session_memory(sid, "x"),
    "message.add": lambda c, sid: c.add_message(sid, "user", "x"),
    "task.create": lambda c, sid: c.create_task(sid, "x"),
}


def test_content_for_an_unknown_or_ended_session_is_refused(client, home, session):
    client.end(session.session_id)
    before = table_counts(home)

    for method, add in ADDS.items():
        refused(NotFound, f"{method} to an unknown session", add, client, UNKNOWN_SESSION)
        err = refused(Conflict, f"{method} to an ended session", add, client, session.session_id)
        assert err.details.get("session_id") == session.session_id, method  # type: ignore[attr-defined]

    assert table_counts(home) == before
