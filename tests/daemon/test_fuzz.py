"""Protocol fuzzing with hypothesis against one real daemon per test: random bytes, random
envelopes, wrong field types for every method, deep nesting.

Every well-framed request must get a reply with its id (or a protocol error, after which
the daemon closes the connection); no reply may be an internal error; the daemon must
stay up with bounded memory, serve a normal client afterwards and log no traceback.
The fixed cases (frames over 1 MiB, truncated frames, requests before hello, ...) are in
test_daemon.py.
"""

from __future__ import annotations

import re
import socket
import struct
from collections import Counter
from typing import Any

import msgspec
import psutil
import pytest
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from omnid_client import TooLarge
from omnid_client.protocol import MAX_FRAME, MAX_NESTING, METHODS
from tests.helpers import Wire, frame, hello

pytestmark = pytest.mark.usefixtures("no_stray_daemons")

# Stopping the daemon is a valid request, not a robustness failure.
# events.subscribe turns the connection into an event stream (fuzzed in tests/events/test_events.py).
FUZZED_METHODS = sorted(set(METHODS) - {"daemon.shutdown", "events.subscribe"})
TYPED_CODES = {"invalid", "too_large", "not_found", "permission", "conflict", "unsupported", "storage"}

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.text(max_size=12) | st.integers(-5, 5), inner, max_size=6),
    max_leaves=40,
)
method_names = st.sampled_from(FUZZED_METHODS) | st.text(max_size=40).filter(lambda m: m != "daemon.shutdown")
request_ids = st.integers(min_value=-(2**63), max_value=2**64 - 1)


def envelope(request_id: int, method: Any, params: Any) -> bytes:
    return frame(msgspec.msgpack.encode({"id": request_id, "method": method, "params": params}))


class Target:
    """The daemon under fire and one greeted connection to it, reopened when the daemon closes it."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.process = psutil.Process(daemon.pid)
        self._wire: Wire | None = None
        self.requests = 0
        self.outcomes: Counter[str] = Counter()

    def wire(self) -> Wire:
        if self._wire is None:
            self._wire = Wire(self.daemon.socket)
            self._wire.send(hello())
            assert self._wire.reply().error is None
        return self._wire

    def ask(self, request_id: int, data: bytes):
        """Send one well-framed request; its reply, or None if it was a protocol error that
        closed the connection (asserted here)."""
        self.requests += 1
        w = self.wire()
        w.send(data)
        resp = w.reply()
        assert resp is not None, "the daemon closed the connection without a reply"
        if resp.error is not None and resp.error.code == "protocol":
            assert w.reply() is None, "the daemon kept a connection open after a protocol error"
            self.drop()
            self.outcomes["protocol (closed)"] += 1
            return None
        assert resp.id == request_id, f"reply for {resp.id} to request {request_id}"
        assert resp.error is None or resp.error.code in TYPED_CODES, resp.error
        self.outcomes["result" if resp.error is None else resp.error.code] += 1
        return resp

    def drop(self) -> None:
        if self._wire is not None:
            self._wire.sock.close()
            self._wire = None

    def rss(self) -> int:
        return self.process.memory_info().rss

    def warm_up(self) -> int:
        """Exercise every code path once, then the RSS the rest is measured against."""
        for i, method in enumerate(FUZZED_METHODS * 20):
            self.ask(i, envelope(i, method, {}))
        for i in range(300):
            self.ask(i, envelope(i, "session.get_or_create", {"tool_id": f"warm-{i % 50}", "metadata": {"i": i}}))
        self.outcomes.clear()
        return self.rss()


@pytest.fixture
def target(daemon):
    t = Target(daemon)
    warm = t.warm_up()
    yield t
    t.drop()
    rss = t.rss()
    print(f"\nafter warm-up: {dict(t.outcomes.most_common())}; "
          f"RSS {warm >> 20} MiB after warm-up, {rss >> 20} MiB at the end")
    assert daemon.running, daemon.log_text()
    assert rss <= 2 * warm + (8 << 20), f"RSS grew from {warm >> 20} MiB to {rss >> 20} MiB"
    with daemon.client() as c:
        got = c.get_or_create("after-the-fuzz")
        assert c.get(got.session.session_id).tool_id == "after-the-fuzz"
        assert c.status().pid == daemon.pid
    # (the daemon fixture then stops it, expecting status 0 and no traceback in its log)


# --- the tests ---------------------------------------------------------------------------


def test_random_byte_streams(target):
    """Raw bytes, with or without a hello first, then EOF: the daemon answers only with
    errors and closes; it never hangs on a frame that will not come."""

    @settings(FUZZ, max_examples=500)
    @given(
        greet=st.booleans(),
        chunks=st.lists(
            st.binary(max_size=512)
            | st.builds(lambda n, body: struct.pack(">I", n) + body, st.integers(0, 2**32 - 1), st.binary(max_size=64)),
            max_size=6,
        ),
    )
    def check(greet: bool, chunks: list[bytes]) -> None:
        with Wire(target.daemon.socket) as w:
            if greet:
                w.send(hello())
                assert w.reply().error is None
            w.send(b"".join(chunks))
            w.end_writing()
            try:
                replies = w.replies_until_closed()
            except socket.timeout:
                pytest.fail("the daemon neither answered nor closed after EOF")
        for resp in replies:
            assert resp.error is not None and resp.error.code != "internal", resp
            target.outcomes[resp.error.code] += 1
        target.outcomes["streams"] += 1

    check()


def test_random_envelopes(target):
    """Valid frames and envelopes with random ids, method names and parameters: each gets a
    reply with its id, an unknown method is 'unsupported', and the connection stays open."""

    @settings(FUZZ, max_examples=600)
    @given(request_id=request_ids, method=method_names, params=values)
    def check(request_id: int, method: str, params: Any) -> None:
        resp = target.ask(request_id, envelope(request_id, method, params))
        assert resp is not None, f"{method} with {params!r} closed the connection"
        if method not in METHODS:
            assert resp.error is not None and resp.error.code == "unsupported", resp
        elif not isinstance(params, dict):
            assert resp.error is not None and resp.error.code == "invalid", resp

    check()


def test_random_envelope_shapes(target):
    """Envelopes that are not requests (a list, a scalar, an id that is a string, ...): a
    protocol error and the connection closed, or a typed reply."""

    @settings(FUZZ, max_examples=200)
    @given(
        body=values
        | st.fixed_dictionaries({"id": values, "method": values}, optional={"params": values})
        | st.fixed_dictionaries({"id": request_ids}, optional={"method": values, "params": values}),
    )
    def check(body: Any) -> None:
        well_formed = (
            isinstance(body, dict)
            and type(body.get("id")) is int
            and isinstance(body.get("method"), str)
            and set(body) <= {"id", "method", "params"}
        )
        assume(not well_formed or body["method"] != "daemon.shutdown")
        rid = body["id"] if well_formed else 0
        resp = target.ask(rid, frame(msgspec.msgpack.encode(body)))
        if not well_formed:
            # Extra keys are ignored, so only a missing or mistyped id/method is malformed.
            if isinstance(body, dict) and type(body.get("id")) is int and isinstance(body.get("method"), str):
                return
            assert resp is None, f"{body!r} was taken for a request"

    check()


def _fields(method: str) -> list[msgspec.structs.FieldInfo]:
    """The parameter fields of ``method`` that some value of the wrong type exists for."""
    probes = [None, True, 1, 1.5, "x", b"x", [1], {"a": 1}]
    fields = []
    for field in msgspec.structs.fields(METHODS[method].params):
        one = msgspec.defstruct("One", [(field.name, field.type)])
        if not all(_accepts(one, {field.name: v}) for v in probes):
            fields.append(field)
    return fields


def _accepts(struct: type, params: dict) -> bool:
    try:
        msgspec.msgpack.decode(msgspec.msgpack.encode(params), type=struct)
        return True
    except msgspec.ValidationError:
        return False


TYPED_FIELDS = {m: _fields(m) for m in FUZZED_METHODS}


def test_wrong_types_for_every_method(target):
    """For every method, a value of the wrong type (or out of range) in one field: an
    'invalid' (or 'too_large') reply that names the field, on a connection that stays open."""

    @settings(FUZZ, max_examples=500)
    @given(method=st.sampled_from([m for m in FUZZED_METHODS if TYPED_FIELDS[m]]), data=st.data())
    def check(method: str, data) -> None:
        field = data.draw(st.sampled_from(TYPED_FIELDS[method]), label="field")
        value = data.draw(values, label="value")
        one = msgspec.defstruct("One", [(field.name, field.type)])
        assume(not _accepts(one, {field.name: value}))
        resp = target.ask(7, envelope(7, method, {field.name: value}))
        assert resp is not None and resp.error is not None, resp
        assert resp.error.code in ("invalid", "too_large"), resp.error
        assert resp.error.details["field"] == field.name, resp.error
        assert re.match(rf"{field.name}[ .\[]", resp.error.message), resp.error.message  # a sentence naming it

    check()


def _nested(depth: int, leaf: bytes, as_map: bool) -> bytes:
    """``depth`` one-entry maps (or arrays), each holding the next, around ``leaf``."""
    return (b"\x81\xa1k" if as_map else b"\x91") * depth + leaf


FRAME_DECODABLE = 500
"""A frame nested at most this deep is always decoded (the decoder is bound by Python's
recursion limit, ~1000): deeper ones may be refused whole, as a protocol error."""


def _deep_outcome(where: str, depth: int, as_map: bool) -> str:
    """What a document ``depth`` levels deep must get at ``where``: "ok" (stored), or the
    code of the typed error that refuses it."""
    if where == "params":  # session.list's parameters: a map (unknown keys ignored), never an array
        return "ok" if as_map else "invalid"
    nesting = depth if where == "memory value" else depth + 1  # metadata wraps it in {"d": ...}
    return "ok" if nesting <= MAX_NESTING else "too_large"


def test_deep_nesting(target):
    """Metadata, memory values and parameters nested up to far past any recursion limit:
    stored and read back when within MAX_NESTING, refused with the right typed error past
    it (or, past any decoder's reach, as a protocol error); never a crash or a lost reply."""

    @settings(FUZZ, max_examples=300)
    @example(depth=1, as_map=True, where="session metadata", n=1)
    @example(depth=MAX_NESTING - 1, as_map=False, where="session metadata", n=2)
    @example(depth=MAX_NESTING, as_map=False, where="session metadata", n=3)
    @example(depth=MAX_NESTING, as_map=True, where="memory value", n=4)
    @example(depth=MAX_NESTING + 1, as_map=False, where="memory value", n=5)
    @example(depth=MAX_NESTING - 1, as_map=True, where="message metadata", n=6)
    @example(depth=MAX_NESTING, as_map=True, where="message metadata", n=7)
    @example(depth=FRAME_DECODABLE, as_map=True, where="params", n=8)
    @example(depth=975, as_map=True, where="params", n=10)  # decoded as a frame, perhaps not as parameters
    @example(depth=2, as_map=False, where="params", n=9)
    @given(
        depth=(
            st.integers(1, MAX_NESTING + 1) | st.integers(1, 600) | st.integers(600, 1100) | st.integers(1100, 20_000)
        ),
        as_map=st.booleans(),
        where=st.sampled_from(["session metadata", "memory value", "message metadata", "params"]),
        n=st.integers(0, 2**31),
    )
    def check(depth: int, as_map: bool, where: str, n: int) -> None:
        deep = msgspec.Raw(_nested(depth, b"\x01", as_map))
        if where == "session metadata":
            method, params = "session.get_or_create", {"tool_id": f"deep-{n}", "metadata": {"d": deep}}
        elif where == "memory value":
            method, params = "memory.put", {"key": f"deep-{n}", "value": deep, "workspace": "/fuzz"}
        elif where == "message metadata":
            sid = _session(target)
            method = "message.add"
            params = {"session_id": sid, "messages": [{"role": "user", "content": "x", "metadata": {"d": deep}}]}
        else:
            method, params = "session.list", deep
        resp = target.ask(1, envelope(1, method, params))
        outcome = "closed" if resp is None else "ok" if resp.error is None else resp.error.code
        expected = _deep_outcome(where, depth, as_map)
        if depth > FRAME_DECODABLE:  # or past the decoder's reach: a closed frame, or parameters refused whole
            assert outcome in (expected, "closed", "too_large"), f"{where} {depth} deep: {outcome}, not {expected}"
        else:
            assert outcome == expected, f"{where} {depth} deep: {outcome}, not {expected}"
        if outcome != "ok":
            return
        # Stored: it must also come back out, through every reply that carries it.
        if where == "session metadata":
            sid = msgspec.msgpack.decode(resp.result)["session"]["session_id"]
            _read_back(target, "session.get", {"session_id": sid})
            _read_back(target, "session.list", {"tool_id": f"deep-{n}"})
        elif where == "memory value":
            _read_back(target, "memory.get", {"key": f"deep-{n}", "workspace": "/fuzz"})
            _read_back(target, "memory.history", {"key": f"deep-{n}", "workspace": "/fuzz"})
        elif where == "message metadata":
            _read_back(target, "message.list", {"session_id": _session(target)})

    check()


def _session(target: Target) -> str:
    resp = target.ask(2, envelope(2, "session.get_or_create", {"tool_id": "deep-messages"}))
    assert resp is not None and resp.error is None, resp
    return msgspec.msgpack.decode(resp.result)["session"]["session_id"]


def _read_back(target: Target, method: str, params: dict) -> None:
    resp = target.ask(3, envelope(3, method, params))
    assert resp is not None, f"{method} of a stored deep document closed the connection"
    assert resp.error is None, f"{method} of a stored deep document failed: {resp.error}"


def _nest(depth: int) -> dict:
    """A metadata document nested exactly ``depth`` levels deep."""
    doc: Any = "leaf"
    for _ in range(depth - 1):
        doc = [doc]
    return {"k": doc}


@pytest.mark.parametrize("depth", [MAX_NESTING, MAX_NESTING + 1, 900])
def test_a_document_nested_past_the_limit_is_refused_before_it_is_stored(client, depth):
    """Found by test_deep_nesting: metadata nested ~900 deep was stored, but the JSON decoder,
    running deeper in the stack than the request decoder, could not read it back: every
    later get_or_create, get or list that met the session failed as an internal error."""
    doc = _nest(depth)
    if depth > MAX_NESTING:
        with pytest.raises(TooLarge) as err:
            client.get_or_create("nested", metadata=doc)
        assert err.value.details == {"field": "metadata"} and str(MAX_NESTING) in str(err.value)
        with pytest.raises(TooLarge):
            client.put_memory("nested", doc, workspace="/nested")
        assert client.list_sessions(tool_id="nested").sessions == []
        doc = _nest(MAX_NESTING)
    sid = client.get_or_create("nested", metadata=doc).session.session_id
    assert client.get_or_create("nested").session.session_id == sid
    assert client.get(sid).metadata == doc
    assert client.put_memory("nested", doc, workspace="/nested").value == doc
    assert client.get_memory("nested", workspace="/nested").value == doc


def test_a_reply_too_large_for_a_frame_is_a_typed_error_not_a_dropped_connection(client):
    """Six messages of 250,000 characters are each within limits, but a page of them is
    1.5 MB: the daemon used to send that frame, and the client, which refuses frames over
    1 MiB, dropped the connection with a ProtocolError on every try."""
    sid = client.get_or_create("big-pages").session.session_id
    for _ in range(6):
        client.add_message(sid, "user", "x" * 250_000)
    sock = client._sock

    with pytest.raises(TooLarge) as err:
        client.list_messages(sid)

    assert err.value.details["limit"] == MAX_FRAME < err.value.details["reply_bytes"]
    assert "smaller limit" in str(err.value)
    assert client._sock is sock, "the connection was dropped"
    assert len(client.list_messages(sid, limit=3).messages) == 3
