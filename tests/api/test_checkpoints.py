"""Checkpoints against a real daemon: a session's context saved as a versioned project
memory, listed, shown and restored into a new or an existing live session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omnid_client import Client, Conflict, Invalid, NotFound, StorageError
from omnid_client.protocol import ContextEvent, NewMessage, Session
from tests.helpers import TOOL, omnid_error, omnid_json, omnid_ok, start, wait_for


def view(client: Client, session_id: str) -> tuple:
    """What a session's context shows, without times (a restore adds events now)."""
    c = client.get_context(session_id)
    return (
        [(f.path, f.importance) for f in c.files],
        [(ch.path, ch.change) for ch in c.changes],
        [(s.query, s.detail) for s in c.searches],
        [(d.text, d.detail) for d in c.decisions],
    )


@pytest.fixture
def worked(client: Client, tmp_path: Path) -> Session:
    s = start(client, tmp_path, title="Parser", goal="Nested lists", summary="lexer fixed")
    client.append_context(s.session_id, [
        ContextEvent("file_access", "/a.py", 0.9),
        ContextEvent("file_access", "/b.py", 0.3),
        ContextEvent("file_change", "/a.py", detail="edit"),
        ContextEvent("decision", "Use a stack", detail="why"),
    ])
    client.append_context(s.session_id, [ContextEvent("search", "nested")])
    client.append_context(s.session_id, [ContextEvent("search", "lexer", detail="2 hits")])
    client.add_messages(s.session_id, [NewMessage("user", "hi"), NewMessage("assistant", "hello")])
    return s


def test_create_list_show_and_versions(client, worked, tmp_path):
    sid = worked.session_id
    cp = client.create_checkpoint(sid, "before-refactor", note="all green")
    key = f"checkpoint/{sid}/before-refactor"
    assert (cp.info.key, cp.info.version, cp.info.name, cp.info.session_id, cp.info.note) == (
        key, 1, "before-refactor", sid, "all green"
    )
    snap = cp.snapshot
    assert (snap["title"], snap["goal"], snap["summary"]) == ("Parser", "Nested lists", "lexer fixed")
    assert snap["counters"]["messages"] == 2 and snap["counters"]["context_events"] == 6
    assert [f["path"] for f in snap["context"]["files"]] == ["/a.py", "/b.py"]
    # It is a project memory like any other: versioned under its key.
    memory = client.get_memory(key, workspace=str(tmp_path))
    assert memory.value == snap and memory.version == 1
    client.append_context(sid, [ContextEvent("file_access", "/c.py", 1.0)])
    second = client.create_checkpoint(sid, "before-refactor")
    assert second.info.version == 2 and second.snapshot["counters"]["context_events"] == 7
    assert client.show_checkpoint(key).snapshot == second.snapshot
    assert client.show_checkpoint(key, version=1).snapshot == snap
    client.create_checkpoint(sid, "later")
    listed = client.list_checkpoints(sid)
    assert [c.key for c in listed] == [f"checkpoint/{sid}/later", key]
    other = start(client, tmp_path)
    client.create_checkpoint(other.session_id, "x")
    assert len(client.list_checkpoints(workspace=str(tmp_path))) == 3
    assert client.list_checkpoints(sid) == listed


def test_restore_into_a_new_session(client, worked):
    sid = worked.session_id
    client.create_checkpoint(sid, "cp")
    restored = client.restore_checkpoint(f"checkpoint/{sid}/cp", tool_id="resumer")
    assert restored.created and restored.session_id != sid and restored.events == 6
    new = client.get(restored.session_id)
    assert new.tool_id == "resumer" and new.owner_pid == os.getpid() and new.project_id == worked.project_id
    assert new.title == "Parser" and new.metadata["goal"] == "Nested lists"
    assert new.metadata["restored_from"] == {"key": f"checkpoint/{sid}/cp", "version": 1}
    assert view(client, restored.session_id) == view(client, sid)
    notes = client.list_session_memories(restored.session_id)
    assert notes[0].memory_type == "checkpoint" and "Goal: Nested lists" in notes[0].content
    # The pack of the new session starts where the old one was.
    pack = client.pack_context(restored.session_id)
    assert pack.title == "Parser" and "/a.py" in pack.markdown


def test_restore_into_an_existing_live_session(client, worked, tmp_path):
    sid = worked.session_id
    client.create_checkpoint(sid, "cp")
    target = start(client, tmp_path, goal="old goal", keep="this")
    client.update_session(target.session_id, title="Old title")
    restored = client.restore_checkpoint(f"checkpoint/{sid}/cp", into=target.session_id)
    assert not restored.created and restored.session_id == target.session_id
    assert view(client, target.session_id) == view(client, sid)
    # It takes the checkpoint's title, goal and summary; the rest of its metadata stays.
    now = client.get(target.session_id)
    assert now.title == "Parser"
    assert now.metadata == {"goal": "Nested lists", "summary": "lexer fixed", "keep": "this"}
    pack = client.pack_context(target.session_id)
    assert (pack.title, pack.goal, pack.summary) == ("Parser", "Nested lists", "lexer fixed")
    client.end(target.session_id)
    with pytest.raises(Conflict):
        client.restore_checkpoint(f"checkpoint/{sid}/cp", into=target.session_id)


def test_bad_checkpoints_get_typed_errors(client, worked, tmp_path):
    sid = worked.session_id
    with pytest.raises(NotFound):
        client.show_checkpoint(f"checkpoint/{sid}/nothing")
    with pytest.raises(Invalid):
        client.create_checkpoint(sid, "no/slashes")
    with pytest.raises(Invalid):
        client.show_checkpoint("style", workspace=str(tmp_path))
    client.put_memory(f"checkpoint/{sid}/forged", "not a snapshot", workspace=str(tmp_path))
    with pytest.raises(Invalid):
        client.restore_checkpoint(f"checkpoint/{sid}/forged")
    loose = client.get_or_create(TOOL, workspace="/", dedup=False).session
    if loose.project_id is None:
        with pytest.raises(Invalid):
            client.create_checkpoint(loose.session_id, "cp")


def test_cli_create_list_show_restore(client, worked, tmp_path):
    sid = worked.session_id
    out = omnid_ok("checkpoint", "create", sid, "cli", "--note", "from the shell")
    assert out.strip() == f"checkpoint/{sid}/cli (version 1)"
    listed = omnid_json("checkpoint", "list", cwd=tmp_path)
    assert [c["key"] for c in listed] == [f"checkpoint/{sid}/cli"]
    shown = omnid_json("checkpoint", "show", f"{sid}/cli")
    assert shown["snapshot"] == client.show_checkpoint(f"checkpoint/{sid}/cli").snapshot
    assert "from the shell" in omnid_ok("checkpoint", "show", f"checkpoint/{sid}/cli")
    target = start(client, tmp_path)
    restored = omnid_json("checkpoint", "restore", f"{sid}/cli", "--into", target.session_id)
    assert restored["session_id"] == target.session_id and restored["events"] == 6
    assert view(client, target.session_id) == view(client, sid)
    assert omnid_error("checkpoint", "show", f"{sid}/missing")["code"] == "not_found"


QUOTA = 1 << 20


def test_past_the_storage_quota_checkpoints_are_refused_and_reading_them_goes_on(home, start_daemon, tmp_path):
    """A checkpoint stores a whole snapshot however small its request: over the quota it is
    refused (typed, nothing stored), while the checkpoints already saved stay readable."""
    (home / "config.toml").write_text(f"max_database_bytes = {QUOTA}\n")
    d = start_daemon()
    with d.client() as c:
        s = start(c, tmp_path, title="Parser")
        sid = s.session_id
        c.append_context(sid, [ContextEvent("file_access", f"/src/{n}.py", 0.5) for n in range(50)])
        kept = c.create_checkpoint(sid, "kept")
        target = start(c, tmp_path).session_id  # made now: over the quota no session can be
        with pytest.raises(StorageError) as filled:
            for _ in range(4 * QUOTA // 32768):
                c.add_message(sid, "user", "q" * 32768)
        assert filled.value.reason == "quota", filled.value

        with pytest.raises(StorageError) as refused:
            c.create_checkpoint(sid, "over")
        assert refused.value.reason == "quota" and refused.value.details["quota_bytes"] == QUOTA, refused.value
        assert omnid_error("checkpoint", "create", sid, "over-cli")["code"] == "storage"
        for into in (None, target):
            with pytest.raises(StorageError) as restore_refused:
                c.restore_checkpoint(kept.info.key, into=into)
            assert restore_refused.value.reason == "quota"
        # Nothing was stored by the refused calls; what was saved before still reads.
        assert [cp.key for cp in c.list_checkpoints(sid)] == [kept.info.key]
        with pytest.raises(NotFound):
            c.show_checkpoint(f"checkpoint/{sid}/over")
        assert c.show_checkpoint(kept.info.key).snapshot == kept.snapshot

        (home / "config.toml").write_text(f"max_database_bytes = {64 * QUOTA}\n")
        wait_for(lambda: c.status().storage_error is None, what="the daemon to read the new quota")
        assert c.create_checkpoint(sid, "over").info.version == 1
        assert c.restore_checkpoint(kept.info.key, into=target).events == 50
    assert "Traceback" not in d.log_text()
