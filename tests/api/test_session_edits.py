"""Editing sessions against a real daemon: title, tags, metadata, pin, archive, and deleting
one session with everything it holds; through the client (both kinds) and the command line."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest
from click.testing import CliRunner

from omnid.cli import main
from omnid_client import AsyncClient, Client, Conflict, Invalid, NotFound, StorageError, TooLarge
from omnid_client.protocol import MAX_METADATA_BYTES, MAX_TAGS, ContextEvent, Session
from tests.helpers import SEARCH_ROWS, db_rows, raw_call, wait_for

TOOL = "editor"
OWNED_TABLES = ("context_events", "messages", "session_memories", "tasks", "session_tags", "session_owners")


def new_session(client: Client, **kwargs) -> Session:
    return client.get_or_create(TOOL, dedup=False, **kwargs).session


def ended_session(client: Client, **kwargs) -> Session:
    return client.end(new_session(client, **kwargs).session_id)


def listed(client: Client, **filters) -> list[str]:
    return [s.session_id for s in client.list_sessions(tool_id=TOOL, **filters).sessions]


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def cli_json(*args: str):
    code, out, err = cli(*args, "--json")
    assert code == 0, err
    return json.loads(out)


# --- title, tags, metadata -------------------------------------------------------------------


def test_title_tags_and_metadata_are_edited_and_kept(client):
    sid = new_session(client, metadata={"keep": 1, "drop": 2, "nested": {"a": 1, "b": 2}}).session_id
    s = client.update_session(sid, title="Fix the reaper", tags=["bug", "reaper"])
    assert (s.title, s.tags) == ("Fix the reaper", ["bug", "reaper"])
    s = client.update_session(sid, add_tags=["urgent", "bug"], remove_tags=["reaper"])
    assert s.tags == ["bug", "urgent"]
    # A JSON merge patch: None removes a key, objects merge, the rest is replaced.
    s = client.update_session(sid, metadata={"drop": None, "nested": {"b": None, "c": 3}, "new": [1]})
    assert s.metadata == {"keep": 1, "nested": {"a": 1, "c": 3}, "new": [1]}
    assert s.title == "Fix the reaper", "what was not named stays"
    s = client.update_session(sid, metadata={"only": True}, replace_metadata=True)
    assert s.metadata == {"only": True}
    s = client.update_session(sid, title="", tags=[])
    assert (s.title, s.tags, s.metadata) == (None, [], {"only": True})
    assert client.get(sid) == s


def test_an_ended_session_can_be_edited_and_a_live_one_stays_live(client):
    ended = ended_session(client)
    s = client.update_session(ended.session_id, title="postmortem", pinned=True)
    assert (s.title, s.pinned, s.end_reason, s.ended_at) == ("postmortem", True, "ended", ended.ended_at)
    live = new_session(client)
    s = client.update_session(live.session_id, tags=["wip"])
    assert s.live and s.last_activity == live.last_activity, "an edit is not activity"


def test_bad_edits_are_refused_and_change_nothing(client):
    sid = new_session(client, metadata={"k": "v"}).session_id
    client.update_session(sid, title="kept", tags=["kept"])
    with pytest.raises(NotFound):
        client.update_session(str(uuid.uuid4()), title="x")
    with pytest.raises(Invalid):
        client.update_session(sid, tags=["has space"])
    with pytest.raises(Invalid):
        client.update_session(sid, add_tags=[""])
    with pytest.raises(Invalid):
        client.update_session(sid, replace_metadata=True)
    with pytest.raises(TooLarge):
        client.update_session(sid, tags=[f"t{i}" for i in range(MAX_TAGS + 1)])
    with pytest.raises(TooLarge):  # each call within the limit, the sum past it
        client.update_session(sid, tags=[f"a{i}" for i in range(MAX_TAGS)], add_tags=["one-more"])
    with pytest.raises(TooLarge):
        client.update_session(sid, title="x" * 1025)
    half = "x" * (MAX_METADATA_BYTES // 2)
    client.update_session(sid, metadata={"a": half})
    with pytest.raises(TooLarge):  # the merged document is what must fit
        client.update_session(sid, metadata={"b": half})
    s = client.get(sid)
    assert (s.title, s.tags, s.metadata) == ("kept", ["kept"], {"k": "v", "a": half})


def test_sessions_are_listed_by_tag_in_pages(client):
    tagged = []
    for i in range(7):
        s = new_session(client)
        if i % 2 == 0:
            client.update_session(s.session_id, tags=["release", f"n{i}"])
            tagged.append(s.session_id)
    tagged.reverse()  # newest first
    assert listed(client, tag="release") == tagged
    assert listed(client, tag="n2") == [tagged[2]]
    assert listed(client, tag="nowhere") == []
    seen, cursor = [], None
    for _ in range(10):
        page = client.list_sessions(tag="release", limit=2, cursor=cursor)
        seen += [s.session_id for s in page.sessions]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == tagged


# --- pin and archive ---------------------------------------------------------------------------


def test_pinned_sessions_are_found_and_archived_ones_hidden_unless_asked(client):
    a, b, c = (new_session(client).session_id for _ in range(3))
    assert client.update_session(b, pinned=True).pinned
    assert listed(client, pinned=True) == [b]
    archived = client.update_session(c, archived=True)
    assert archived.archived_at is not None
    assert listed(client) == [b, a]
    assert listed(client, archived="only") == [c]
    assert listed(client, archived="include") == [c, b, a]
    assert listed(client, archived="only", status="live") == [c]
    assert client.update_session(c, archived=True).archived_at == archived.archived_at, "archiving twice keeps the date"
    assert client.get(c).live, "an archived session is still the session of its owner"
    assert client.update_session(c, archived=False).archived_at is None
    assert client.update_session(b, pinned=False).pinned is False
    assert listed(client) == [c, b, a] and listed(client, pinned=True) == []


# --- delete ------------------------------------------------------------------------------------


def filled_session(client: Client, tmp_path: Path) -> Session:
    """An ended session holding one of everything, with a tag and an earlier owner."""
    s = new_session(client, workspace=str(tmp_path))
    sid = s.session_id
    client.append_context(sid, [ContextEvent("decision", "delete-me decision"), ContextEvent("file_access", "/a")])
    client.add_message(sid, "user", "delete-me message")
    client.add_message(sid, "assistant", "second")
    client.add_session_memory(sid, "delete-me note")
    task = client.create_task(sid, "a task")
    client.add_interaction(task.task_id, "a step")
    client.update_session(sid, tags=["doomed"])
    client.put_memory("project-fact", "survives", workspace=str(tmp_path))
    return client.end(sid)


def rows_of(home: Path, session_id: str) -> dict[str, int]:
    db = home / "omnid.db"
    counts = {t: db_rows(db, f"SELECT count(*) FROM {t} WHERE session_id = ?", session_id)[0][0] for t in OWNED_TABLES}
    counts["sessions"] = db_rows(db, "SELECT count(*) FROM sessions WHERE session_id = ?", session_id)[0][0]
    counts["interactions"] = db_rows(db, "SELECT count(*) FROM interactions")[0][0]
    counts["search"] = db_rows(db, f"SELECT count(*) FROM {SEARCH_ROWS} WHERE session_id = ?", session_id)[0][0]
    return counts


def test_deleting_a_session_removes_everything_it_holds_and_nothing_else(client, home, tmp_path):
    keep = filled_session(client, tmp_path / "other")
    doomed = filled_session(client, tmp_path)
    wait_for(lambda: rows_of(home, doomed.session_id)["search"] == 4, what="the commit")
    assert rows_of(home, doomed.session_id)["tasks"] == 1

    deleted = client.delete_session(doomed.session_id)
    assert (deleted.session_id, deleted.was_live) == (doomed.session_id, False)
    assert (deleted.messages, deleted.context_events, deleted.session_memories, deleted.tasks) == (2, 2, 1, 1)
    assert rows_of(home, doomed.session_id) == dict.fromkeys([*OWNED_TABLES, "sessions", "search"], 0) | {
        "interactions": 1  # the other session's
    }
    with pytest.raises(NotFound):
        client.get(doomed.session_id)
    with pytest.raises(NotFound):
        client.delete_session(doomed.session_id)
    assert [h.session_id for h in client.search("delete-me")] == [keep.session_id] * 3
    assert client.get_memory("project-fact", workspace=str(tmp_path)).value == "survives", "project memories stay"
    assert client.get(keep.session_id).message_count == 2
    assert client.list_messages(keep.session_id).messages


def test_a_live_session_is_deleted_only_by_force_and_its_owner_is_no_longer_watched(client, daemon, spawn_owner):
    owner = spawn_owner()
    sid = client.get_or_create(TOOL, pid=owner.pid).session.session_id
    with pytest.raises(Conflict) as refused:
        client.delete_session(sid)
    assert refused.value.details == {"session_id": sid, "live": True}
    assert client.get(sid).live
    deleted = client.delete_session(sid, force=True)
    assert deleted.was_live
    with pytest.raises(NotFound):
        client.get(sid)
    assert client.status().live_sessions == 0
    fresh = client.get_or_create(TOOL, pid=owner.pid)  # the cache of live sessions forgot it
    assert fresh.status == "created" and fresh.session.session_id != sid
    client.delete_session(fresh.session.session_id, force=True)
    owner.kill()
    owner.wait()
    assert client.reap().sessions == []
    assert "Traceback" not in daemon.log_text()


QUOTA = 1 << 20
CHUNK = "q" * (32 * 1024)


def test_past_the_storage_quota_edits_and_resumes_are_refused_and_deletes_go_on(home, start_daemon, spawn_owner):
    """An edit or a resume adds to the database, so the quota refuses it; a delete only
    frees space, so it goes on, and makes room for them again."""
    (home / "config.toml").write_text(f"max_database_bytes = {QUOTA}\n")
    d = start_daemon()
    first, second = spawn_owner(), spawn_owner()
    with d.client() as c:
        keyed = c.get_or_create(TOOL, pid=first.pid, resume_key="k").session.session_id
        first.kill()
        first.wait()
        wait_for(lambda: c.get(keyed).end_reason == "reaped", what="the dead owner's session to be reaped")
        filler = new_session(c).session_id
        with pytest.raises(StorageError):
            for _ in range(4 * QUOTA // len(CHUNK)):
                c.add_message(filler, "user", CHUNK)
        for attempt in (
            lambda: c.update_session(keyed, title="past the quota", tags=["t"]),
            lambda: c.get_or_create(TOOL, pid=second.pid, resume_key="k"),
        ):
            with pytest.raises(StorageError) as refused:
                attempt()
            assert refused.value.reason == "quota"
        s = c.get(keyed)
        assert (s.title, s.tags, s.end_reason) == (None, [], "reaped"), "a refused write changed nothing"

        assert c.delete_session(filler, force=True).messages > 0
        assert c.update_session(keyed, title="room again").title == "room again"
        assert c.get_or_create(TOOL, pid=second.pid, resume_key="k").status == "resumed"
    assert "Traceback" not in d.log_text()


def test_the_async_client_edits_and_deletes(daemon):
    async def run() -> None:
        async with AsyncClient(autostart=False) as client:
            s = (await client.get_or_create(TOOL, dedup=False)).session
            s = await client.update_session(s.session_id, title="async", add_tags=["a"], pinned=True, archived=True)
            assert (s.title, s.tags, s.pinned) == ("async", ["a"], True)
            page = await client.list_sessions(tag="a", archived="only")
            assert [x.session_id for x in page.sessions] == [s.session_id]
            assert [o.pid for o in (await client.session_owners(s.session_id)).owners] == [s.owner_pid]
            with pytest.raises(Conflict):
                await client.delete_session(s.session_id)
            assert (await client.delete_session(s.session_id, force=True)).was_live

    asyncio.run(run())


# --- the command line ------------------------------------------------------------------------


def test_editing_from_the_command_line(daemon, client):
    sid = new_session(client, metadata={"drop": "x", "keep": "y"}).session_id
    s = cli_json("session", "update", sid, "--title", "From the shell", "--tag", "cli", "--tag", "b",
                 "--meta", "k=v", "--unset-meta", "drop")
    assert (s["title"], s["tags"], s["metadata"]) == ("From the shell", ["b", "cli"], {"keep": "y", "k": "v"})
    code, out, _ = cli("session", "update", sid, "--untag", "b", "--replace-meta", "--meta", "only=1")
    assert code == 0 and "title:        From the shell" in out and "tags:         cli" in out
    assert client.get(sid).metadata == {"only": "1"}
    assert cli_json("session", "update", sid, "--clear-tags", "--tag", "z")["tags"] == ["z"]

    for command, word, pinned, archived in (("pin", "pinned", True, False), ("unstar", "unpinned", False, False),
                                            ("star", "pinned", True, False), ("archive", "archived", True, True)):
        code, out, _ = cli("session", command, sid)
        assert (code, out) == (0, f"{sid} {word}\n")
        s = client.get(sid)
        assert (s.pinned, s.archived_at is not None) == (pinned, archived)
    assert cli_json("sessions", "list")["sessions"] == []
    assert [s["session_id"] for s in cli_json("sessions", "list", "--archived")["sessions"]] == [sid]
    assert [s["session_id"] for s in cli_json("sessions", "list", "--all", "--tag", "z")["sessions"]] == [sid]
    assert cli("sessions", "list", "--archived", "--all")[0] == 2
    assert cli_json("session", "unarchive", sid)["archived_at"] is None
    code, out, _ = cli("sessions", "list", "--tag", "z")
    assert code == 0 and re.search(rf"^{sid} .* pinned +z +From the shell$", out, re.M), out

    shown = cli_json("sessions", "show", sid)
    assert (shown["title"], shown["tags"], len(shown["owners"])) == ("From the shell", ["z"], 1)

    code, out, _ = cli("session", "update", str(uuid.uuid4()), "--title", "x", "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "not_found"
    code, out, _ = cli("session", "update", sid, "--tag", "bad tag", "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "invalid"


def test_deleting_from_the_command_line(daemon, client, spawn_owner):
    ended = ended_session(client)
    code, _, err = cli("session", "delete", ended.session_id)
    assert code == 2 and "--yes" in err
    assert client.get(ended.session_id)
    code, out, _ = cli("session", "delete", ended.session_id, "--yes")
    assert code == 0 and out.startswith(f"deleted {ended.session_id}: 0 message(s)")
    with pytest.raises(NotFound):
        client.get(ended.session_id)
    code, out, _ = cli("session", "delete", ended.session_id, "--yes", "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "not_found"

    live = client.get_or_create(TOOL, pid=spawn_owner().pid).session.session_id
    code, out, _ = cli("session", "delete", live, "--yes", "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "conflict"
    assert client.get(live).live
    deleted = cli_json("session", "delete", live, "--yes", "--force")
    assert deleted["session_id"] == live and deleted["was_live"] is True


def test_sessions_show_lists_every_owner(daemon, client, spawn_owner):
    first, second = spawn_owner(), spawn_owner()
    sid = client.get_or_create(TOOL, pid=first.pid, resume_key="k").session.session_id
    first.kill()
    first.wait()
    wait_for(lambda: client.get(sid).end_reason == "reaped", what="the reap")
    client.get_or_create(TOOL, pid=second.pid, resume_key="k")

    code, out, _ = cli("sessions", "show", sid)
    assert code == 0
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert lines["resume key"].strip() == "k"
    earlier, current = lines["owners"].strip().split("; pid ")
    assert earlier.startswith(f"pid {first.pid} (start ") and earlier.endswith(", reaped)")
    assert current.startswith(f"{second.pid} (start {client.get(sid).owner_start}; since ")
    shown = cli_json("sessions", "show", sid)
    assert [(o["pid"], o["released"]) for o in shown["owners"]] == [(first.pid, "reaped"), (second.pid, None)]
    assert shown["owner_pid"] == second.pid and shown["resume_key"] == "k"


# --- an older client ---------------------------------------------------------------------------


class OlderSession(msgspec.Struct):
    """``Session`` as clients from before these edits and resume keys declare it."""

    session_id: str
    tool_id: str
    tool_version: str | None
    session_type: str
    owner_pid: int | None
    owner_start: int | None
    boot_id: str | None
    workspace: str | None
    metadata: dict[str, Any]
    started_at: float
    last_activity: float
    ended_at: float | None = None
    end_reason: Literal["ended", "reaped", "expired"] | None = None
    project_id: str | None = None
    message_count: int = 0
    total_tokens: int = 0
    total_cost: float = 0.0


class OlderGetOrCreateResult(msgspec.Struct):
    status: Literal["created", "existing"]
    session: OlderSession


def test_an_older_client_reads_edited_sessions_and_lists_without_archived_ones(client):
    """What it sends lacks the new fields and what it gets has more: both must work. (A
    reply's bytes are its result encoded again: msgspec encodes a struct one way only.)"""
    older = {"tool_id": TOOL, "dedup": False}  # the parameters it knows
    got = msgspec.msgpack.decode(
        msgspec.msgpack.encode(raw_call(client, "session.get_or_create", older)), type=OlderGetOrCreateResult
    )
    sid = got.session.session_id
    edited = client.update_session(sid, title="t", tags=["x"], pinned=True, metadata={"m": 1})
    seen = msgspec.msgpack.decode(msgspec.msgpack.encode(raw_call(client, "session.get", {"session_id": sid})),
                                  type=OlderSession)
    assert msgspec.structs.asdict(seen) == {k: v for k, v in msgspec.structs.asdict(edited).items()
                                             if k in OlderSession.__struct_fields__}
    hidden = new_session(client).session_id
    client.update_session(hidden, archived=True)
    page = raw_call(client, "session.list", {"tool_id": TOOL})
    assert [s.session_id for s in page.sessions] == [sid]
