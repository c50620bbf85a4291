"""Resuming a session by the tool's own key after its process restarted: a real daemon, real
owner processes killed and reaped, and real racing processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from omnid import api
from omnid.identity import ProcessIdentity, inspect, pidfd_inodes_unique
from omnid.jobs.expiry import Expirer
from omnid.jobs.reaper import Reaper
from omnid.jobs.retention import Archiver
from omnid.store import Store, sessions as session_store
from omnid_client import AsyncClient, Client, Conflict, Invalid, PermissionDenied, Unsupported, _calls
from omnid_client.protocol import (
    ContextEvent,
    GetOrCreate,
    GetOrCreateResult,
    IncomingRequest,
    Session,
    Settings,
)
from tests.helpers import DaemonProcess, db_rows, wait_for

TOOL = "mcp-server"
KEY = "instance-7f3a"


def identity(proc: subprocess.Popen) -> ProcessIdentity:
    info = inspect(proc.pid)
    assert info is not None
    return info.identity


def reaped(client: Client, session_id: str) -> Session | None:
    session = client.get(session_id)
    return session if session.end_reason == "reaped" else None


def kill_and_reap(client: Client, proc: subprocess.Popen, session_id: str) -> Session:
    proc.kill()
    proc.wait()
    return wait_for(lambda: reaped(client, session_id), what="the dead owner's session to be reaped")


@pytest.fixture
def workspace(tmp_path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    return path


# --- the restart a resume key is for ---------------------------------------------------------


def test_a_restarted_owner_resumes_its_session_with_everything_it_holds(client, spawn_owner, workspace):
    first = spawn_owner()
    got = client.get_or_create(TOOL, pid=first.pid, resume_key=KEY, workspace=str(workspace))
    assert got.status == "created" and got.session.resume_key == KEY
    sid = got.session.session_id
    client.append_context(sid, [ContextEvent("file_access", "/src/a.py", 0.9), ContextEvent("decision", "use pidfds")])
    client.add_message(sid, "user", "hello", tokens_used=5)
    client.add_session_memory(sid, "remember the pidfd trick")
    task = client.create_task(sid, "write the resume test")
    client.add_interaction(task.task_id, "started")
    before = {
        "context": client.get_context(sid),
        "messages": client.list_messages(sid).messages,
        "memories": client.list_session_memories(sid),
        "tasks": client.list_tasks(session_id=sid).tasks,
    }
    ended = kill_and_reap(client, first, sid)

    second = spawn_owner()
    got = client.get_or_create(TOOL, pid=second.pid, resume_key=KEY)
    assert got.status == "resumed"
    s = got.session
    assert s.session_id == sid and s.live and s.end_reason is None
    assert (s.owner_pid, s.owner_start) == (second.pid, identity(second).start)
    assert s.owner_since is not None and s.owner_since >= ended.ended_at
    assert (s.message_count, s.total_tokens, s.workspace, s.started_at) == (1, 5, str(workspace), ended.started_at)
    after = {
        "context": client.get_context(sid),
        "messages": client.list_messages(sid).messages,
        "memories": client.list_session_memories(sid),
        "tasks": client.list_tasks(session_id=sid).tasks,
    }
    assert after == before
    assert client.add_message(sid, "assistant", "welcome back").message_count == 2

    history = client.session_owners(sid).owners
    assert [(o.pid, o.released) for o in history] == [(first.pid, "reaped"), (second.pid, None)]
    assert history[0].since == ended.started_at and history[0].until == ended.ended_at
    assert history[1].since == s.owner_since and history[1].until is None


def test_a_resume_is_told_in_the_event_stream_once_committed(client, spawn_owner):
    first = spawn_owner()
    sid = client.get_or_create(TOOL, pid=first.pid, resume_key=KEY).session.session_id
    kill_and_reap(client, first, sid)
    seen: list = []
    stream = Client(autostart=False).events(since=0, reconnect=False, kinds=["session"], sessions=[sid])

    def follow() -> None:
        for event in stream:
            seen.append((event, client_live(sid)) if event.kind == "session.resumed" else (event, None))

    with Client(autostart=False) as reader:
        def client_live(session_id: str) -> bool:
            return reader.get(session_id).live

        threading.Thread(target=follow, daemon=True).start()
        wait_for(lambda: len(seen) >= 2, what="created and reaped")
        second = spawn_owner()
        assert client.get_or_create(TOOL, pid=second.pid, resume_key=KEY).status == "resumed"
        wait_for(lambda: len(seen) >= 3, what="the resumed event")
    kinds = [(e.kind, e.data.get("end_reason")) for e, _ in seen]
    assert kinds == [("session.created", None), ("session.ended", "reaped"), ("session.resumed", None)]
    resumed, live_when_told = seen[2]
    assert live_when_told  # told after the commit: a reader already sees it live
    assert (resumed.tool_id, resumed.data["owner_pid"], resumed.data["previous_owner_pid"]) == (
        TOOL, second.pid, first.pid,
    )
    assert resumed.data["released"] == "reaped" and resumed.data["resume_key"] == KEY


def test_the_reaper_watches_the_new_owner_and_every_owner_is_remembered(client, spawn_owner):
    owners = [spawn_owner()]
    sid = client.get_or_create(TOOL, pid=owners[0].pid, resume_key=KEY).session.session_id
    for _ in range(2):
        kill_and_reap(client, owners[-1], sid)
        owners.append(spawn_owner())
        assert client.get_or_create(TOOL, pid=owners[-1].pid, resume_key=KEY).status == "resumed"
    final = kill_and_reap(client, owners[-1], sid)  # reaped: the last owner was watched
    history = client.session_owners(sid).owners
    assert [(o.pid, o.released) for o in history] == [(p.pid, "reaped") for p in owners]
    assert history[-1].until == final.ended_at
    assert all(a.until is not None and a.until <= b.since for a, b in zip(history, history[1:], strict=False))


def test_reuse_and_dedup_by_process_after_a_resume(client, daemon, spawn_owner):
    """Reuse answers come from a cache of live sessions: a rebind must show in it at once."""
    first, second = spawn_owner(), spawn_owner()
    sid = client.get_or_create(TOOL, pid=first.pid, resume_key=KEY).session.session_id
    for _ in range(3):  # the later ones are answered from the cache
        assert client.get_or_create(TOOL, pid=first.pid).session.session_id == sid
    kill_and_reap(client, first, sid)
    assert client.get_or_create(TOOL, pid=second.pid, resume_key=KEY).status == "resumed"
    for _ in range(3):
        again = client.get_or_create(TOOL, pid=second.pid)
        assert (again.status, again.session.session_id) == ("existing", sid)
        keyed = client.get_or_create(TOOL, pid=second.pid, resume_key=KEY)
        assert (keyed.status, keyed.session.session_id) == ("existing", sid)
    assert client.find(TOOL, pid=second.pid).session_id == sid
    assert client.find(TOOL, pid=second.pid, resume_key=KEY).session_id == sid
    with daemon.client() as other:  # ended by someone else: the cache must not keep it
        other.end(sid)
    assert client.find(TOOL, pid=second.pid) is None
    fresh = client.get_or_create(TOOL, pid=second.pid)
    assert fresh.status == "created" and fresh.session.session_id != sid
    assert client.status().live_sessions == 1


# --- who may resume, and what ------------------------------------------------------------------


def test_a_session_whose_owner_lives_is_never_given_to_another_process(client, spawn_owner):
    holder, other = spawn_owner(), spawn_owner()
    sid = client.get_or_create(TOOL, pid=holder.pid, resume_key=KEY).session.session_id
    with pytest.raises(Conflict) as refused:
        client.get_or_create(TOOL, pid=other.pid, resume_key=KEY)
    assert refused.value.details == {"session_id": sid, "owner_pid": holder.pid}
    assert client.find(TOOL, pid=other.pid, resume_key=KEY) is None
    assert client.find(TOOL, pid=other.pid) is None
    again = client.get_or_create(TOOL, pid=holder.pid, resume_key=KEY)
    assert (again.status, again.session.session_id) == ("existing", sid)
    assert client.find(TOOL, pid=holder.pid, resume_key=KEY).session_id == sid
    # The same key names a different session for another tool.
    assert client.get_or_create("another-tool", pid=other.pid, resume_key=KEY).status == "created"
    assert client.status().live_sessions == 2


def test_an_explicitly_ended_session_is_resumed_only_when_asked(client, spawn_owner):
    first = spawn_owner()
    old = client.get_or_create(TOOL, pid=first.pid, resume_key=KEY).session.session_id
    client.end(old)
    assert client.find(TOOL, pid=first.pid, resume_key=KEY) is None
    assert client.find(TOOL, pid=first.pid, resume_key=KEY, resume_ended=True).session_id == old

    second = spawn_owner()
    new = client.get_or_create(TOOL, pid=second.pid, resume_key=KEY)
    assert new.status == "created" and new.session.session_id != old and new.session.resume_key == KEY
    assert client.get(old).end_reason == "ended"
    client.end(new.session.session_id)

    third = spawn_owner()  # the key now names the newer session
    got = client.get_or_create(TOOL, pid=third.pid, resume_key=KEY, resume_ended=True)
    assert (got.status, got.session.session_id) == ("resumed", new.session.session_id)
    history = client.session_owners(new.session.session_id).owners
    assert [(o.pid, o.released) for o in history] == [(second.pid, "ended"), (third.pid, None)]


def test_a_process_with_a_session_of_the_tool_cannot_take_a_second_one(client, spawn_owner):
    first, second = spawn_owner(), spawn_owner()
    sid = client.get_or_create(TOOL, pid=first.pid, resume_key=KEY).session.session_id
    kill_and_reap(client, first, sid)
    plain = client.get_or_create(TOOL, pid=second.pid).session.session_id
    with pytest.raises(Conflict) as refused:
        client.get_or_create(TOOL, pid=second.pid, resume_key=KEY)
    assert refused.value.details["session_id"] == plain
    with pytest.raises(Conflict):
        client.get_or_create(TOOL, pid=second.pid, resume_key="never-used")
    assert client.get(sid).end_reason == "reaped", "the refused resume changed nothing"
    # Without deduplication by process, a process may hold it beside the other.
    client.end(plain)
    client.get_or_create(TOOL, pid=second.pid, dedup=False)
    assert client.get_or_create(TOOL, pid=second.pid, resume_key=KEY, dedup=False).status == "resumed"


@pytest.fixture
def short_window_daemon(home, start_daemon) -> Iterator[DaemonProcess]:
    (home / "config.toml").write_text("resume_window = 1\n")
    yield start_daemon()


def test_a_session_reaped_longer_ago_than_the_window_is_not_resumed(short_window_daemon, spawn_owner):
    with short_window_daemon.client() as client:
        assert client.status().settings.resume_window == 1
        first, second = spawn_owner(), spawn_owner()
        old = client.get_or_create(TOOL, pid=first.pid, resume_key=KEY).session.session_id
        kill_and_reap(client, first, old)
        wait_for(lambda: client.find(TOOL, pid=second.pid, resume_key=KEY) is None, what="the window to close")
        got = client.get_or_create(TOOL, pid=second.pid, resume_key=KEY)
        assert got.status == "created" and got.session.session_id != old
        assert client.get(old).end_reason == "reaped"


def test_resume_from_the_command_line(daemon, client, spawn_owner):
    first, second = spawn_owner(), spawn_owner()
    start = [sys.executable, "-m", "omnid", "session", "start", "--tool", TOOL, "--resume-key", KEY, "--json"]
    out = subprocess.run([*start, "--pid", str(first.pid)], capture_output=True, text=True, check=True).stdout
    created = json.loads(out)
    assert created["status"] == "created"
    sid = created["session"]["session_id"]
    kill_and_reap(client, first, sid)
    find = [sys.executable, "-m", "omnid", "session", "find", "--tool", TOOL, "--resume-key", KEY]
    found = subprocess.run([*find, "--pid", str(second.pid)], capture_output=True, text=True)
    assert (found.returncode, found.stdout.strip()) == (0, sid)
    resumed = subprocess.run([*start, "--pid", str(second.pid)], capture_output=True, text=True, check=True).stdout
    assert json.loads(resumed)["status"] == "resumed"
    third = spawn_owner()
    refused = subprocess.run([*start, "--pid", str(third.pid)], capture_output=True, text=True)
    assert refused.returncode == 1 and json.loads(refused.stdout)["error"]["code"] == "conflict"
    assert subprocess.run([*find, "--pid", str(third.pid)], capture_output=True).returncode == 1


def test_the_async_client_resumes_too(daemon, spawn_owner):
    first, second = spawn_owner(), spawn_owner()

    async def run() -> tuple[GetOrCreateResult, GetOrCreateResult]:
        async with AsyncClient(autostart=False) as client:
            created = await client.get_or_create(TOOL, pid=first.pid, resume_key=KEY)
            first.kill()
            first.wait()
            for _ in range(1000):
                if (await client.get(created.session.session_id)).end_reason == "reaped":
                    break
                await asyncio.sleep(0.01)
            return created, await client.get_or_create(TOOL, pid=second.pid, resume_key=KEY)

    created, resumed = asyncio.run(run())
    assert resumed.status == "resumed" and resumed.session.session_id == created.session.session_id


def test_a_client_refuses_an_answer_that_ignored_its_resume_key():
    """A daemon from before resume keys ignores the field: its answer must not pass for a resume."""
    old_answer = GetOrCreateResult("created", Session(str(uuid.uuid4()), TOOL, None, "default", 1, 1, "b", None, {},
                                                      1.0, 1.0))
    call = _calls.get_or_create(TOOL, resume_key=KEY)
    with pytest.raises(Unsupported):
        call.finish(old_answer)
    assert _calls.get_or_create(TOOL).finish(old_answer) is old_answer


# --- the new owner passes the checks every owner passes ----------------------------------------


def pidfd_ino(pid: int) -> int:
    fd = os.pidfd_open(pid)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


NO_PIDFD_INODES = None if pidfd_inodes_unique() else "this kernel shares one pidfd inode between processes"


@pytest.mark.skipif(NO_PIDFD_INODES is not None, reason=NO_PIDFD_INODES or "")
def test_a_resumed_session_records_its_new_owners_pidfd_inode(client, home, spawn_owner):
    first, second = spawn_owner(), spawn_owner()
    sid = client.get_or_create(TOOL, pid=first.pid, resume_key=KEY).session.session_id
    owner_of = "SELECT owner_pid, owner_ino FROM sessions WHERE session_id = ?"
    assert db_rows(home / "omnid.db", owner_of, sid) == [(first.pid, pidfd_ino(first.pid))]
    kill_and_reap(client, first, sid)
    assert client.get_or_create(TOOL, pid=second.pid, resume_key=KEY).status == "resumed"
    assert db_rows(home / "omnid.db", owner_of, sid) == [(second.pid, pidfd_ino(second.pid))]


@pytest.mark.parametrize(
    "make_pid, error, why",
    [
        (lambda daemon: 1, PermissionDenied, "init process"),
        (lambda daemon: 2 if Path("/proc/2").exists() else pytest.skip("no kthreadd here"), PermissionDenied,
         "kernel thread"),
        (lambda daemon: daemon.pid, Invalid, "omnid daemon itself"),
    ],
    ids=["init", "kthreadd", "the-daemon"],
)
def test_a_resume_key_gives_no_session_to_a_process_that_may_not_own_one(
    daemon, client, spawn_owner, make_pid, error, why
):
    first = spawn_owner()
    sid = client.get_or_create(TOOL, pid=first.pid, resume_key=KEY).session.session_id
    kill_and_reap(client, first, sid)
    pid = make_pid(daemon)
    for call in (client.get_or_create, client.find):
        with pytest.raises(error, match=why):
            call(TOOL, pid=pid, resume_key=KEY, resume_ended=True)
    assert client.get(sid).end_reason == "reaped"
    assert [o.pid for o in client.session_owners(sid).owners] == [first.pid]


# --- owners that died unnoticed, and expired sessions: the daemon's handler in this process ------


class InProcess:
    """The daemon's request handling on a real store and reaper in this process, so that a
    session can be left live with a dead owner whose exit this reaper never saw (as when a
    tool restarts before its old process's exit is handled)."""

    def __init__(self, path: Path):
        self.loop = asyncio.new_event_loop()
        self.store = Store(path)
        self.reaper = Reaper(self.store, self.loop, sweep_interval=60.0)
        self.ctx = api.Context(
            self.store, self.store.guard, self.reaper, session_store.LiveLookups(self.store),
            Expirer(self.store, self.loop),
            Archiver(self.store, self.loop, age=lambda: None, archive_path=path.with_name("archive.jsonl")),
            status=lambda: pytest.fail("not asked for"), stop=lambda why: None, settings=Settings,
        )

    def get_or_create(self, **params: Any) -> Any:
        params_raw = msgspec.Raw(msgspec.msgpack.encode(GetOrCreate(**params)))
        request = IncomingRequest(1, "session.get_or_create", params_raw)
        reply = api.dispatch(self.ctx, api.Caller(os.getpid(), os.getuid()), request)
        return reply.error if reply.error is not None else reply.result

    def add(
        self, owner: ProcessIdentity, *, ended_ago: float | None = None, reason: str = "expired", ino: int | None = None
    ) -> Session:
        now = self.store.now()
        ended = None if ended_ago is None else now - ended_ago
        session = Session(str(uuid.uuid4()), TOOL, None, "default", owner.pid, owner.start, owner.boot_id, None, {},
                          now - 100_000, now - 100_000, ended, reason if ended else None, resume_key=KEY)
        with self.store.write() as db:
            session_store.insert(db, session, dedup=True, owner_ino=ino)
        return session

    def close(self) -> None:
        self.reaper.stop()
        self.store.close()
        self.loop.close()


@pytest.fixture
def in_process(tmp_path) -> Iterator[InProcess]:
    handler = InProcess(tmp_path / "omnid.db")
    yield handler
    handler.close()


@pytest.fixture
def dead_owner(spawn_owner) -> ProcessIdentity:
    proc = spawn_owner()
    owner = identity(proc)
    proc.kill()
    proc.wait()
    return owner


def test_a_live_session_whose_owner_died_unnoticed_is_resumed(in_process, dead_owner, spawn_owner):
    old = in_process.add(dead_owner)
    new_owner = spawn_owner()
    got = in_process.get_or_create(tool_id=TOOL, pid=new_owner.pid, resume_key=KEY)
    assert (got.status, got.session.session_id, got.session.owner_pid) == ("resumed", old.session_id, new_owner.pid)
    history = session_store.owners(in_process.store.db, got.session)
    assert [(o.pid, o.released) for o in history] == [(dead_owner.pid, "died"), (new_owner.pid, None)]
    assert history[0].until == got.session.owner_since
    assert in_process.reaper.owners == {identity(new_owner): {old.session_id}}, "the new owner is watched"


@pytest.mark.skipif(NO_PIDFD_INODES is not None, reason=NO_PIDFD_INODES or "")
def test_a_session_recorded_with_another_pidfd_inode_is_resumed_not_returned_as_existing(in_process, spawn_owner):
    """Same pid and start tick, another pidfd inode: the recorded owner was another process
    (one that got the pid within a tick, then died), so the caller resumes its session."""
    proc = spawn_owner()
    owner = identity(proc)
    assert owner.ino is not None
    old = in_process.add(owner, ino=owner.ino + 1_000_000)
    got = in_process.get_or_create(tool_id=TOOL, pid=proc.pid, resume_key=KEY)
    assert (got.status, got.session.session_id) == ("resumed", old.session_id)
    row = in_process.store.db.execute("SELECT owner_ino FROM sessions WHERE session_id = ?", (old.session_id,))
    assert row.fetchone() == (owner.ino,)
    again = in_process.get_or_create(tool_id=TOOL, pid=proc.pid, resume_key=KEY)
    assert (again.status, again.session.session_id) == ("existing", old.session_id)
    history = session_store.owners(in_process.store.db, got.session)
    assert [(o.pid, o.released) for o in history] == [(owner.pid, "died"), (owner.pid, None)]


@pytest.mark.parametrize(
    ("ended_ago", "reason", "status"),
    [(60.0, "expired", "resumed"), (60.0, "reaped", "resumed"), (86_400 + 60.0, "expired", "created"),
     (60.0, "ended", "created")],
    ids=["expired-a-minute-ago", "reaped-a-minute-ago", "expired-a-day-ago", "ended"],
)
def test_ended_sessions_are_resumed_within_the_window(in_process, dead_owner, spawn_owner, ended_ago, reason, status):
    old = in_process.add(dead_owner, ended_ago=ended_ago, reason=reason)
    got = in_process.get_or_create(tool_id=TOOL, pid=spawn_owner().pid, resume_key=KEY)
    assert got.status == status
    assert (got.session.session_id == old.session_id) == (status == "resumed")


# --- twenty processes resuming one key at once --------------------------------------------------

RESUMER = r"""
import json, os, sys
from pathlib import Path
from omnid_client import Client, OmnidError

tool, key, ready, gun = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
with Client(autostart=False) as client:
    client.connect()
    ready.touch()
    os.read(gun, 1)  # blocks until the test closes the other end: everyone starts at once
    try:
        got = client.get_or_create(tool, resume_key=key)
        print(json.dumps({"status": got.status, "session_id": got.session.session_id}), flush=True)
    except OmnidError as e:
        print(json.dumps({"status": e.code, "details": e.details}), flush=True)
sys.stdin.read()  # stay alive, owning whatever was won, until the test lets go
"""
RESUMERS = 20


def test_processes_resuming_one_key_at_once_get_exactly_one_owner(client, spawn_owner, tmp_path):
    first = spawn_owner()
    sid = client.get_or_create(TOOL, pid=first.pid, resume_key=KEY).session.session_id
    kill_and_reap(client, first, sid)
    gun_r, gun_w = os.pipe()
    procs: list[subprocess.Popen] = []
    try:
        try:
            for i in range(RESUMERS):
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", RESUMER, TOOL, KEY, str(tmp_path / f"ready-{i}"), str(gun_r)],
                    pass_fds=(gun_r,), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                ))
            wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == RESUMERS, timeout=120, what="resumers to connect")
        finally:
            os.close(gun_r)
            os.close(gun_w)  # the starting gun
        results = {proc.pid: json.loads(proc.stdout.readline()) for proc in procs}
        session = client.get(sid)
        # Every resumer is still alive here, so nobody could take over from a winner that left.
        assert all(proc.poll() is None for proc in procs)
    finally:
        for proc in procs:
            proc.stdin.close()
            if proc.wait(timeout=30) != 0:
                proc.kill()
    assert Counter(r["status"] for r in results.values()) == {"resumed": 1, "conflict": RESUMERS - 1}
    [winner] = [pid for pid, r in results.items() if r["status"] == "resumed"]
    assert results[winner]["session_id"] == sid
    assert all(r["details"] == {"session_id": sid, "owner_pid": winner} for r in results.values() if "details" in r)
    assert session.live and session.owner_pid == winner
    assert [o.pid for o in client.session_owners(sid).owners] == [first.pid, winner]
    assert [s.session_id for s in client.list_sessions(tool_id=TOOL).sessions] == [sid]
    assert wait_for(lambda: reaped(client, sid), what="the winner's exit to end the session")


def test_a_killed_resumer_releases_the_key_to_the_next(client, spawn_owner):
    first, second, third = spawn_owner(), spawn_owner(), spawn_owner()
    sid = client.get_or_create(TOOL, pid=first.pid, resume_key=KEY).session.session_id
    kill_and_reap(client, first, sid)
    assert client.get_or_create(TOOL, pid=second.pid, resume_key=KEY).status == "resumed"
    os.kill(second.pid, signal.SIGKILL)
    second.wait()
    wait_for(lambda: reaped(client, sid), what="the second owner's session to be reaped")
    got = client.get_or_create(TOOL, pid=third.pid, resume_key=KEY)
    assert (got.status, got.session.session_id) == ("resumed", sid)
