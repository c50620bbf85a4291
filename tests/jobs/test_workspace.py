"""Workspace change tracking on a real daemon and real directory trees: what is recorded,
what is ignored, coalescing, the watcher's life, the event stream, and roots that are too
large, linked out of or removed."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from omnid_client import Client, TooLarge
from omnid_client.protocol import Event, FileChange
from tests.helpers import DaemonProcess, make_repo, omnid_ok, wait_for

pytestmark = pytest.mark.usefixtures("no_stray_daemons")
TOOL = "tracker"


def changes(client: Client, sid: str) -> dict[str, FileChange]:
    return {c.path: c for c in client.get_context(sid, max_changes=1000).changes}


def tracking(client: Client, *roots: Path) -> None:
    """Wait until the watcher is on exactly these roots (its watches are in place then)."""
    want = sorted(str(r) for r in roots)
    wait_for(lambda: client.status().tracked_roots == want, timeout=20, what=f"the watcher on {want}")


def recorded(client: Client, sid: str, **want: str) -> dict[str, FileChange]:
    """Wait until each path has its last change recorded as the kind given."""
    def done() -> dict[str, FileChange] | None:
        got = changes(client, sid)
        return got if all(p in got and got[p].change == k for p, k in want.items()) else None

    result: dict[str, FileChange] = wait_for(done, timeout=20, what=f"changes {want}")
    return result


def notify_threads(pid: int) -> list[str]:
    """The watchfiles (notify crate) threads of the daemon, by their kernel names."""
    names = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            names.append(Path(f"/proc/{pid}/task/{task}/comm").read_text().strip())
        except OSError:
            continue
    return [n for n in names if n.startswith("notify-rs")]


def rust_notify_loaded(pid: int) -> bool:
    return "_rust_notify" in Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture
def repo(tmp_path) -> Path:
    root = make_repo(tmp_path / "proj", ".git", "src", "node_modules/lib", "build")
    (root / ".gitignore").write_text("*.log\nbuild/\n/only-at-root.txt\n")
    return root


def test_edits_are_recorded_with_their_kind_and_path_and_ignored_ones_are_not(client, daemon, repo):
    (repo / "src" / "old.py").write_text("old\n")
    (repo / "src" / "gone.py").write_text("bye\n")
    assert not rust_notify_loaded(daemon.pid)  # watchfiles is imported by the first tracked session only
    sid = client.get_or_create(TOOL, workspace=str(repo), track_workspace=True).session.session_id
    tracking(client, repo)
    assert rust_notify_loaded(daemon.pid)
    (repo / "src" / "new.py").write_text("new\n")
    (repo / "src" / "old.py").write_text("changed\n")
    (repo / "src" / "gone.py").unlink()
    (repo / "fresh" / "deeper").mkdir(parents=True)  # a directory made after the watch began
    (repo / "fresh" / "deeper" / "f.txt").write_text("x")
    # Ignored: the default filter, and the project's .gitignore.
    (repo / ".git" / "HEAD").write_text("ref: x\n")
    (repo / "node_modules" / "lib" / "i.js").write_text("x")
    (repo / "src" / "m.pyc").write_bytes(b"x")
    (repo / "debug.log").write_text("x")
    (repo / "build" / "out.o").write_text("x")
    (repo / "only-at-root.txt").write_text("x")
    (repo / "src" / "only-at-root.txt").write_text("not anchored here\n")
    got = recorded(
        client, sid,
        **{"src/new.py": "added", "src/old.py": "modified", "src/gone.py": "deleted",
           "fresh/deeper/f.txt": "added", "src/only-at-root.txt": "added"},
    )
    assert set(got) == {"src/new.py", "src/old.py", "src/gone.py", "fresh/deeper/f.txt", "src/only-at-root.txt"}
    (repo / "fresh" / "deeper" / "f.txt").write_text("y")  # the new directory is watched too
    assert recorded(client, sid, **{"fresh/deeper/f.txt": "modified"})["fresh/deeper/f.txt"].changes == 2


def test_a_burst_of_writes_to_one_file_is_one_event(client, repo):
    sid = client.get_or_create(TOOL, workspace=str(repo), track_workspace=True).session.session_id
    tracking(client, repo)
    for i in range(50):
        (repo / "src" / "hot.py").write_text(f"v{i}\n")
    (repo / "src" / "flicker.py").write_text("x")  # made and removed in one window: nothing to tell
    (repo / "src" / "flicker.py").unlink()
    got = recorded(client, sid, **{"src/hot.py": "added"})
    assert got["src/hot.py"].changes == 1
    assert "src/flicker.py" not in got
    assert client.session_summary(sid).context_events == 1


class Stream:
    def __init__(self, **filters: Any):
        self.events: list[Event] = []
        self._it = Client(autostart=False).events(since=0, reconnect=False, **filters)
        self.thread = threading.Thread(target=lambda: self.events.extend(self._it), daemon=True)
        self.thread.start()


def test_changes_are_context_events_in_the_event_stream(client, daemon, repo):
    sid = client.get_or_create(TOOL, workspace=str(repo), track_workspace=True).session.session_id
    stream = Stream(kinds=["context"], sessions=[sid])
    tracking(client, repo)
    (repo / "src" / "a.py").write_text("x")
    (repo / "src" / "b.py").write_text("x")
    recorded(client, sid, **{"src/a.py": "added", "src/b.py": "added"})
    wait_for(lambda: sum(e.data["kinds"].get("file_change", 0) for e in stream.events) == 2, what="the events")
    assert {e.kind for e in stream.events} == {"context.appended"}
    daemon.stop()
    stream.thread.join(15)


def test_tracking_stops_with_the_last_tracked_session(client, daemon, repo, tmp_path):
    other = make_repo(tmp_path / "other", ".git")
    assert notify_threads(daemon.pid) == []
    first = client.get_or_create(TOOL, workspace=str(repo), track_workspace=True).session.session_id
    second = client.get_or_create(TOOL, workspace=str(repo), track_workspace=True, dedup=False).session.session_id
    tracking(client, repo)
    assert notify_threads(daemon.pid)
    client.end(first)
    (repo / "src" / "still.py").write_text("x")  # the second session still tracks the root
    recorded(client, second, **{"src/still.py": "added"})
    client.end(second)
    wait_for(lambda: client.status().tracked_roots == [] and not notify_threads(daemon.pid), what="the watcher gone")
    (repo / "src" / "after.py").write_text("x")
    # An edit under another tracked root, made after, is seen: the first root's would have been too.
    third = client.get_or_create(TOOL, workspace=str(other), track_workspace=True, dedup=False).session.session_id
    tracking(client, other)
    (other / "seen.txt").write_text("x")
    recorded(client, third, **{"seen.txt": "added"})
    assert "src/after.py" not in changes(client, second)
    assert client.session_summary(first).context_events == 0


def test_sessions_of_a_tracking_config_are_tracked_and_the_flag_survives_a_restart(home, repo, tmp_path):
    (home / "config.toml").write_text("track_workspace = true\n")
    d = DaemonProcess(home).start()
    try:
        with d.client() as c:
            sid = c.get_or_create(TOOL, workspace=str(repo)).session.session_id
            tracking(c, repo)
            (repo / "src" / "c.py").write_text("x")
            recorded(c, sid, **{"src/c.py": "added"})
        assert d.stop() == 0
        (home / "config.toml").write_text("")
        other = make_repo(tmp_path / "asked", ".git")
        d.start()
        with d.client() as c:
            assert c.status().tracked_roots == []  # the config no longer asks
            asked = c.get_or_create(TOOL, workspace=str(other), track_workspace=True, dedup=False).session
            tracking(c, other)
        assert d.stop() == 0
        d.start()
        with d.client() as c:
            tracking(c, other)  # asked for: still tracked by the restarted daemon
            (other / "d.txt").write_text("x")
            recorded(c, asked.session_id, **{"d.txt": "added"})
    finally:
        if d.running:
            d.stop()
    assert "Traceback" not in d.log_text()


def test_turning_the_config_on_and_off_applies_to_live_sessions(home, client, repo):
    sid = client.get_or_create(TOOL, workspace=str(repo)).session.session_id
    assert client.status().tracked_roots == []
    (home / "config.toml").write_text("track_workspace = true\n")
    tracking(client, repo)
    (repo / "src" / "e.py").write_text("x")
    recorded(client, sid, **{"src/e.py": "added"})
    (home / "config.toml").write_text("track_workspace = false\n")
    tracking(client)


def test_session_start_track(daemon, client, repo):
    sid = omnid_ok("session", "start", "--tool", TOOL, "--workspace", str(repo), "--track").strip()
    tracking(client, repo)
    assert f"tracking:       {repo}" in omnid_ok("status")
    (repo / "src" / "cli.py").write_text("x")
    recorded(client, sid, **{"src/cli.py": "added"})


@pytest.fixture
def small_limit(home) -> Iterator[DaemonProcess]:
    (home / "config.toml").write_text("workspace_max_dirs = 5\n")
    d = DaemonProcess(home).start()
    yield d
    if d.running:
        assert d.stop() == 0
    assert "Traceback" not in d.log_text()


def test_a_root_with_too_many_directories_is_refused(small_limit, tmp_path):
    big = make_repo(tmp_path / "big", ".git", *(f"d{i}" for i in range(8)))
    fine = make_repo(tmp_path / "fine", ".git", *(f"node_modules/p{i}" for i in range(50)))  # ignored: not counted
    with small_limit.client() as c:
        with pytest.raises(TooLarge) as e:
            c.get_or_create(TOOL, workspace=str(big), track_workspace=True)
        assert "more than 5 directories" in str(e.value) and e.value.details["root"] == str(big)
        assert c.list_sessions().sessions == []  # refused before anything was created
        c.get_or_create(TOOL, workspace=str(fine), track_workspace=True)
        tracking(c, fine)
        assert c.get_or_create(TOOL, workspace=str(big), dedup=False).status == "created"  # untracked: fine


def test_links_are_not_followed_out_of_the_root(small_limit, tmp_path):
    outside = tmp_path / "outside"
    for i in range(20):  # more than the limit: following the link would refuse the root
        (outside / f"d{i}").mkdir(parents=True)
    root = make_repo(tmp_path / "linked", ".git")
    (root / "out").symlink_to(outside)
    with small_limit.client() as c:
        sid = c.get_or_create(TOOL, workspace=str(root), track_workspace=True).session.session_id
        tracking(c, root)
        (outside / "d1" / "secret.txt").write_text("x")
        (root / "mine.txt").write_text("x")
        assert set(recorded(c, sid, **{"mine.txt": "added"})) == {"mine.txt"}


def test_a_root_removed_while_tracked_does_not_hurt_the_daemon(client, daemon, repo, tmp_path):
    other = make_repo(tmp_path / "other", ".git")
    gone = client.get_or_create(TOOL, workspace=str(repo), track_workspace=True).session.session_id
    kept = client.get_or_create(TOOL, workspace=str(other), track_workspace=True, dedup=False).session.session_id
    tracking(client, repo, other)
    shutil.rmtree(repo)
    tracking(client, other)
    assert "no longer recording file changes under" in daemon.log_text()
    (other / "ok.txt").write_text("x")
    recorded(client, kept, **{"ok.txt": "added"})
    assert client.get(gone).live
    client.end(kept)
    wait_for(lambda: not notify_threads(daemon.pid), what="the watcher gone")
