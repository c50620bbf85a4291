"""get_or_create(track_workspace=True) in this process, through the real dispatcher: which
root it tracks, the walk that admits a new root before anything is stored, the mark kept
on the session's row, and the real watcher (watchfiles) that then records the root's
changes. (tests/jobs/test_workspace.py drives the same through a daemon process.)"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Any, Iterator

import msgspec
import pytest

from omnid import api
from omnid.jobs.compaction import Compactor
from omnid.jobs.workspace import Workspaces
from omnid.store import sessions as q
from omnid_client.protocol import IncomingRequest, ResponseFrame, Settings
from tests.api.test_session_handlers import Daemon, Rejected
from tests.helpers import make_repo, run_loop_until


class Tracking(Daemon):
    """The session handlers' services with workspace tracking, as the daemon builds them."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop):
        super().__init__(path, loop)
        self.settings = Settings()
        self.workspaces = Workspaces(self.store, loop, lambda: self.settings, Compactor())
        self.context = dataclasses.replace(
            self.context, workspaces=self.workspaces, settings=lambda: self.settings
        )

    def close(self) -> None:
        thread = self.workspaces.thread
        self.workspaces.stop()
        if thread is not None:
            thread.join(timeout=10)  # it sees the stop within a watchfiles step (a second)
        super().close()


@pytest.fixture
def daemon(tmp_path, spawn_owner) -> Iterator[Tracking]:
    loop = asyncio.new_event_loop()
    d = Tracking(tmp_path / "omnid.db", loop)
    # The caller sits in a directory of its own: a root taken from it is told from the owner's.
    (tmp_path / "caller").mkdir()
    d.caller_pid = spawn_owner(cwd=tmp_path / "caller").pid
    yield d
    d.close()
    loop.close()


def dispatch(daemon: Daemon, **params: Any) -> ResponseFrame | asyncio.Future[ResponseFrame]:
    """get_or_create as the daemon runs it: on its loop, where a walk goes on as a task."""
    caller = api.Caller(daemon.caller_pid, os.getuid())
    request = IncomingRequest(1, "session.get_or_create", msgspec.Raw(msgspec.msgpack.encode(params)))

    async def on_the_loop() -> ResponseFrame | asyncio.Future[ResponseFrame]:
        return api.dispatch(daemon.context, caller, request)

    return daemon.loop.run_until_complete(on_the_loop())


def track(daemon: Daemon, *, at_once: bool, **params: Any) -> Any:
    """get_or_create(tool_id="t", track_workspace=True, ...): answered at once for a root
    already tracked, else once the root has been walked off the loop."""
    response = dispatch(daemon, tool_id="t", track_workspace=True, **params)
    assert isinstance(response, ResponseFrame) is at_once, response
    if not isinstance(response, ResponseFrame):
        response = daemon.loop.run_until_complete(response)
    daemon.loop.run_until_complete(asyncio.sleep(0))  # one loop turn: the batch commits, the watcher starts
    assert not daemon.store.in_transaction
    if response.error is not None:
        raise Rejected(response.error.code, response.error.message, response.error.details)
    return response.result


def marked(daemon: Daemon, sid: str) -> bool:
    row = daemon.store.db.execute("SELECT track_workspace FROM sessions WHERE session_id = ?", (sid,)).fetchone()
    return bool(row[0])


def test_a_new_root_is_the_owners_project_and_its_changes_are_recorded(daemon, spawn_owner, tmp_path):
    repo = make_repo(tmp_path / "proj", ".git", "src")
    owner = spawn_owner(cwd=repo / "src")
    got = track(daemon, at_once=False, pid=owner.pid)
    s = got.session
    assert got.status == "created" and s.workspace == str(repo / "src") and marked(daemon, s.session_id)
    assert daemon.workspaces.sessions == {s.session_id: (str(repo), s.project_id)}, "the project root, not the cwd"
    assert daemon.workspaces.roots == [str(repo)]
    run_loop_until(daemon.loop, lambda: daemon.workspaces.watching == [str(repo)], timeout=30)
    (repo / "src" / "new.py").write_text("x = 1\n")

    def recorded() -> list[tuple[str, str | None]]:
        context = daemon.store.db.execute(
            "SELECT subject, detail FROM context_events WHERE session_id = ? AND kind = 'file_change'",
            (s.session_id,),
        )
        return context.fetchall()

    run_loop_until(daemon.loop, recorded, timeout=30)
    assert recorded() == [("src/new.py", "added")]
    # A second session on a root already tracked is answered at once: no walk.
    other = track(daemon, at_once=True, pid=spawn_owner().pid, workspace=str(repo)).session
    assert marked(daemon, other.session_id) and daemon.workspaces.sessions[other.session_id] == (
        str(repo), s.project_id
    )


def test_without_a_pid_or_a_workspace_the_callers_directory_is_tracked(daemon, tmp_path):
    got = track(daemon, at_once=False)
    assert got.session.owner_pid == daemon.caller_pid
    assert daemon.workspaces.roots == [str(tmp_path / "caller")]
    assert daemon.workspaces.sessions == {got.session.session_id: (str(tmp_path / "caller"), got.session.project_id)}


def test_an_owner_whose_directory_cannot_be_read_needs_a_workspace_named(daemon, zombie):
    with pytest.raises(Rejected) as refused:
        track(daemon, at_once=True, pid=zombie())
    assert (refused.value.code, refused.value.details) == ("invalid", {"field": "workspace"})
    assert str(refused.value) == (
        "invalid: track_workspace needs a workspace: name one, or an owner process whose working directory "
        "omnid can read"
    )
    assert daemon.store.db.execute("SELECT count(*) FROM sessions").fetchone() == (0,)


def test_a_root_past_the_directory_limit_is_refused_before_any_session_is_stored(daemon, spawn_owner, tmp_path):
    repo = make_repo(tmp_path / "big", ".git", "a", "b", "c")
    daemon.settings = Settings(workspace_max_dirs=2)
    owner = spawn_owner()
    with pytest.raises(Rejected) as refused:
        track(daemon, at_once=False, pid=owner.pid, workspace=str(repo))
    assert refused.value.code == "too_large"
    assert refused.value.details == {"field": "track_workspace", "root": str(repo), "limit": 2}
    assert daemon.store.db.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
    assert daemon.workspaces.roots == [] and daemon.workspaces.thread is None
    missing = tmp_path / "missing"
    with pytest.raises(Rejected) as refused:
        track(daemon, at_once=False, pid=owner.pid, workspace=str(missing))
    assert refused.value.code == "invalid"
    assert refused.value.details == {"field": "track_workspace", "root": str(missing)}
    daemon.settings = Settings(workspace_max_dirs=4)  # the root itself and its three: admitted
    assert track(daemon, at_once=False, pid=owner.pid, workspace=str(repo)).status == "created"


def test_asking_again_marks_an_untracked_live_session_once(daemon, spawn_owner, tmp_path):
    owner = spawn_owner()
    plain = dispatch(daemon, tool_id="t", pid=owner.pid, workspace=str(tmp_path))
    assert isinstance(plain, ResponseFrame) and plain.result.status == "created"
    sid = plain.result.session.session_id
    assert not marked(daemon, sid) and daemon.workspaces.sessions == {}
    again = track(daemon, at_once=False, pid=owner.pid, workspace=str(tmp_path))
    assert (again.status, again.session.session_id) == ("existing", sid)
    assert marked(daemon, sid) and daemon.workspaces.sessions == {sid: (str(tmp_path), again.session.project_id)}
    with daemon.store.write() as db:
        assert q.set_tracked(db, sid) is False, "marked already"
        q.end(db, [sid], "ended", daemon.store.now())
        db.execute("UPDATE sessions SET track_workspace = 0 WHERE session_id = ?", (sid,))
        assert q.set_tracked(db, sid) is False, "ended: not marked"
    assert not marked(daemon, sid)


def test_where_nothing_watches_files_a_session_is_neither_marked_nor_tracked(daemon, spawn_owner, tmp_path):
    untracked = dataclasses.replace(daemon.context, workspaces=None)
    daemon.context = untracked
    got = track(daemon, at_once=True, pid=spawn_owner().pid, workspace=str(tmp_path))
    assert got.status == "created" and not marked(daemon, got.session.session_id)
