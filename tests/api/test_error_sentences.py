"""Bad parameters come back as sentences naming the field and what it allows, with the
code and field as attributes, from a real daemon (and through the ``omnid`` command)."""

from __future__ import annotations

import msgspec
import pytest
from msgspec import inspect as mi

from omnid.api import params_error
from omnid_client import Invalid, TooLarge
from omnid_client.protocol import METHODS
from omnid_client.protocol.explain import describe
from tests.helpers import UNKNOWN_SESSION, raw_call, refused, run_omnid

CASES = [
    # (method, params, error, field, words the sentence holds)
    ("session.get", {"session_id": "abc"}, Invalid, "session_id", "session_id must be a session id: a lowercase UUID"),
    ("session.get_or_create", {"tool_id": ""}, Invalid, "tool_id", "tool_id must be 1-128 characters: letters, digits"),
    ("session.get_or_create", {"tool_id": "t" * 129}, TooLarge, "tool_id", "tool_id must be 1-128 characters"),
    ("session.get_or_create", {}, Invalid, "tool_id", "tool_id is required: it must be 1-128 characters"),
    ("session.list", {"limit": 0}, Invalid, "limit", "limit must be an integer from 1 to 1000"),
    ("session.list", {"limit": "ten"}, Invalid, "limit", "limit must be an integer from 1 to 1000, not a string"),
    (
        "session.list", {"status": "zombie"}, Invalid, "status",
        "status must be one of 'all', 'ended', 'live', not 'zombie'",
    ),
    ("task.get", {"task_id": "task_xyz"}, Invalid, "task_id", "task_id must be a task id: task_ and 16 lowercase hex"),
    ("project.get", {"project_id": "p1"}, Invalid, "project_id", "project_id must be a project id: prj_ and 12"),
    (
        "session.update", {"session_id": UNKNOWN_SESSION, "add_tags": ["two words"]}, Invalid, "add_tags",
        "add_tags[0] must be 1-64 characters: letters, digits, _ and",
    ),
    (
        "message.add", {"session_id": UNKNOWN_SESSION, "messages": [{"role": "robot", "content": "x"}]}, Invalid,
        "messages", "messages[0].role must be one of 'assistant', 'system', 'tool', 'user', not 'robot'",
    ),
]


def test_bad_parameters_read_as_sentences_with_code_and_field(client):
    for method, params, error, field, words in CASES:
        err = refused(error, f"{method} {params}", raw_call, client, method, params)
        assert words in str(err), (method, str(err))
        assert "Expected" not in str(err) and "$." not in str(err), str(err)
        assert (err.code, err.field) == (error.code, field), (method, err.code, err.field)
        assert err.details["method"] == method and err.details["allowed"] in str(err)


def test_the_command_prints_the_sentence(daemon):
    r = run_omnid("sessions", "show", "zz-not-an-id")
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "omnid: invalid: session_id must be a session id: a lowercase UUID such as 0b5e7c3a-6f0e-4c1e-9a59-7d3c2b1a0f9e"
    )
    r = run_omnid("session", "start", "--tool", "", "--json")
    assert r.returncode == 1
    assert msgspec.json.decode(r.stdout)["error"] == {
        "code": "invalid",
        "field": "tool_id",
        "message": (
            "tool_id must be 1-128 characters: letters, digits and . _ : @ / + -, starting with a letter or digit"
        ),
    }


def _fields(info: mi.Type, seen: set[type]) -> list[tuple[str, mi.Type]]:
    if isinstance(info, mi.UnionType):
        return [f for t in info.types for f in _fields(t, seen)]
    if isinstance(info, (mi.ListType, mi.DictType)):
        return _fields(getattr(info, "item_type", None) or info.value_type, seen)  # type: ignore[attr-defined]
    if not isinstance(info, mi.StructType) or info.cls in seen:
        return []
    seen.add(info.cls)
    return [(f"{info.cls.__name__}.{f.name}", f.type) for f in info.fields] + [
        sub for f in info.fields for sub in _fields(f.type, seen)
    ]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_parameter_field_can_say_what_it_allows(method):
    for name, info in _fields(mi.type_info(METHODS[method].params), set()):
        if not isinstance(info, mi.AnyType):
            assert describe(info), f"{method}: {name} ({info}) has no description"


@pytest.mark.parametrize("method", ["session.list", "events.subscribe"])
def test_parameters_too_deep_to_decode_are_too_large_for_the_dispatcher_and_the_event_hub(method):
    """Both places that decode parameters (the dispatcher, and the hub for events.subscribe)
    turn a decoder that gives up on the nesting into the same size error."""
    deep = b"\x81\xa1k" * 5000 + b"\x01"  # maps 5,000 deep: past any recursion limit
    with pytest.raises(RecursionError) as gave_up:
        msgspec.msgpack.Decoder(METHODS[method].params).decode(deep)
    err = params_error(method, gave_up.value)
    assert isinstance(err, TooLarge) and err.details == {"field": "params"}
    assert str(err).startswith(f"{method}: the parameters nest too deep to read")
    undecodable = params_error(method, msgspec.DecodeError("truncated"))
    assert type(undecodable) is Invalid and "undecodable parameters: truncated" in str(undecodable)
