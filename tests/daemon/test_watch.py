"""Directory watches on a real event loop and real inotify: which entries changed, reported
once per batch of events, to every callback of the directory, and None when the directory
itself went away."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

from omnid.daemon.watch import DirWatcher
from tests.helpers import no_free_fds, run_loop_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")


@pytest.fixture
def watcher(loop) -> Iterator[DirWatcher]:
    w = DirWatcher(loop)
    yield w
    w.close()


class Seen:
    """A callback that records what it was called with."""

    def __init__(self) -> None:
        self.calls: list[set[str] | None] = []

    def __call__(self, names: set[str] | None) -> None:
        self.calls.append(None if names is None else set(names))

    def names(self) -> set[str]:
        return set().union(*(c for c in self.calls if c is not None))


def settle(loop: asyncio.AbstractEventLoop) -> None:
    """Let the loop read whatever events are already queued."""
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0.01))


def test_the_mode_is_inotify(watcher):
    assert watcher.mode == "inotify"


@pytest.mark.parametrize("change, names", [
    ("create", {"newX"}),  # a name read whole, up to the kernel's NUL padding only
    ("write", {"old"}),
    ("chmod", {"old"}),
    ("rename", {"old", "renamed"}),
    ("delete", {"old"}),
    ("mkdir", {"sub"}),
], ids=lambda v: v if isinstance(v, str) else None)
def test_each_kind_of_change_names_the_entry(loop, watcher, tmp_path, change, names):
    (tmp_path / "old").write_text("x")
    seen = Seen()
    assert watcher.watch(tmp_path, seen) is True
    if change == "create":
        (tmp_path / "newX").write_text("x")
    elif change == "write":
        (tmp_path / "old").write_text("y")
    elif change == "chmod":
        os.chmod(tmp_path / "old", 0o600)
    elif change == "rename":
        os.rename(tmp_path / "old", tmp_path / "renamed")
    elif change == "delete":
        os.unlink(tmp_path / "old")
    else:
        os.mkdir(tmp_path / "sub")
    run_loop_until(loop, lambda: seen.names() >= names)
    assert None not in seen.calls and seen.names() == names


def test_changes_read_together_come_in_one_call(loop, watcher, tmp_path):
    seen = Seen()
    watcher.watch(tmp_path, seen)
    for name in ("a", "b", "c"):
        (tmp_path / name).write_text("x")
    run_loop_until(loop, lambda: seen.calls)
    assert seen.calls == [{"a", "b", "c"}]


def test_every_callback_of_a_directory_is_called_once(loop, watcher, tmp_path):
    first, second = Seen(), Seen()
    assert watcher.watch(tmp_path, first) and watcher.watch(tmp_path, second)
    assert watcher.watch(tmp_path, first), "watching again with the same callback is harmless"
    (tmp_path / "f").write_text("x")
    run_loop_until(loop, lambda: first.calls and second.calls)
    settle(loop)
    assert first.calls == [{"f"}] and second.calls == [{"f"}]


def test_a_failing_callback_is_logged_and_the_others_still_run(loop, watcher, tmp_path, caplog):
    def broken(names):
        raise RuntimeError("handler bug")

    seen = Seen()
    watcher.watch(tmp_path, broken)
    watcher.watch(tmp_path, seen)
    with caplog.at_level(logging.ERROR, logger="omnid.watch"):
        (tmp_path / "f").write_text("x")
        run_loop_until(loop, lambda: seen.calls)
    assert seen.calls == [{"f"}]
    assert "a change handler failed" in caplog.text and "handler bug" in caplog.text
    (tmp_path / "g").write_text("x")
    run_loop_until(loop, lambda: len(seen.calls) == 2)  # the watch goes on after the failure


@pytest.mark.parametrize("how", ["removed", "moved"])
def test_the_directory_going_away_is_reported_as_unknown(loop, watcher, tmp_path, how):
    d = tmp_path / "d"
    d.mkdir()
    seen, other = Seen(), Seen()
    watcher.watch(d, seen)
    watcher.watch(tmp_path, other)
    if how == "removed":
        d.rmdir()
    else:
        d.rename(tmp_path / "elsewhere")
    (tmp_path / "after").write_text("x")  # read in the same batch, after d's own event
    run_loop_until(loop, lambda: None in seen.calls and "after" in other.names())
    assert None not in other.calls, "the other directory's watch is not affected"


def test_a_moved_directory_is_still_watched_where_it_went(loop, watcher, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    seen = Seen()
    watcher.watch(d, seen)
    d.rename(tmp_path / "elsewhere")
    run_loop_until(loop, lambda: None in seen.calls)
    (tmp_path / "elsewhere" / "f").write_text("x")  # the kernel's watch follows the directory
    run_loop_until(loop, lambda: "f" in seen.names())


def test_a_removed_directory_made_again_needs_a_new_watch(loop, watcher, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    seen = Seen()
    watcher.watch(d, seen)
    d.rmdir()
    run_loop_until(loop, lambda: None in seen.calls)
    settle(loop)
    d.mkdir()
    count = len(seen.calls)
    (d / "f").write_text("x")
    settle(loop)
    assert len(seen.calls) == count, "the old watch is gone with the old directory"
    watcher.watch(d, seen)
    (d / "g").write_text("x")
    run_loop_until(loop, lambda: len(seen.calls) > count)
    assert seen.calls[-1] == {"g"}


@pytest.mark.parametrize("target", ["missing", "file"])
def test_what_cannot_be_watched_is_refused_with_a_warning(watcher, tmp_path, caplog, target):
    path = tmp_path / target
    if target == "file":
        path.write_text("x")
    with caplog.at_level(logging.WARNING, logger="omnid.watch"):
        assert watcher.watch(path, Seen()) is False
    assert str(path) in caplog.text and "periodic checks" in caplog.text


def test_an_inotify_watcher_closes_once(loop, tmp_path):
    from omnid.daemon.watch import InotifyWatcher

    w = InotifyWatcher(loop)
    fd = w._fd
    w.close()
    w.close()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed (and not reused by anything since)
    os.fstat(1)  # and the second close closed nothing else


def test_after_close_nothing_is_watched_or_called(loop, tmp_path):
    w = DirWatcher(loop)
    seen = Seen()
    w.watch(tmp_path, seen)
    w.close()
    w.close()  # twice is harmless
    assert w.mode == "periodic checks"
    assert w.watch(tmp_path, seen) is False
    (tmp_path / "f").write_text("x")
    settle(loop)
    assert seen.calls == []



def test_events_lost_to_a_full_queue_are_reported_as_unknown_to_every_watch(loop, watcher, tmp_path):
    """More changes than the kernel queues (max_queued_events) before the loop reads them:
    what changed is lost, so every callback hears None and must look for itself."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 50_000:
        pytest.skip(f"max_queued_events is {limit}: too many files to make quickly")
    busy, quiet = tmp_path / "busy", tmp_path / "quiet"
    busy.mkdir()
    quiet.mkdir()
    seen_busy, seen_quiet = Seen(), Seen()
    watcher.watch(busy, seen_busy)
    watcher.watch(quiet, seen_quiet)
    for i in range(limit // 2 + 10):  # a create and a delete each
        (busy / str(i)).touch()
        (busy / str(i)).unlink()
    run_loop_until(loop, lambda: None in seen_busy.calls and None in seen_quiet.calls)


def test_inotify_refusals_carry_the_errno_and_the_directory(loop, tmp_path):
    import errno as errnos

    from omnid.daemon.watch import InotifyWatcher

    w = InotifyWatcher(loop)
    try:
        for path, code in ((tmp_path / "missing", errnos.ENOENT), (tmp_path / "file", errnos.ENOTDIR)):
            if code == errnos.ENOTDIR:
                path.write_text("x")
            with pytest.raises(OSError) as exc:
                w.watch(path, Seen())
            assert exc.value.errno == code
            assert str(exc.value) == f"[Errno {code}] cannot watch {path}: {os.strerror(code)}"
    finally:
        w.close()


def test_without_a_file_descriptor_for_inotify_changes_are_left_to_the_periodic_checks(loop, tmp_path, caplog):
    from omnid.daemon.watch import InotifyWatcher

    with no_free_fds():
        with pytest.raises(OSError) as exc:
            InotifyWatcher(loop)
        with caplog.at_level(logging.WARNING, logger="omnid.watch"):
            w = DirWatcher(loop)
    why = f"[Errno {errno.EMFILE}] inotify_init1: {os.strerror(errno.EMFILE)}"
    assert exc.value.errno == errno.EMFILE and str(exc.value) == why
    assert caplog.messages == [f"cannot watch files ({why}): changes are noticed by the periodic checks only"]
    assert w.mode == "periodic checks" and w.watch(tmp_path, Seen()) is False
    w.close()


def test_an_inotify_watcher_on_descriptor_0_closes_it_too(loop):
    """A daemon started with stdin closed (``omnid serve <&-``) gets its inotify instance as fd 0."""
    from omnid.daemon.watch import InotifyWatcher

    stdin = os.dup(0)
    os.close(0)
    try:
        w = InotifyWatcher(loop)
        assert w._fd == 0
        w.close()
        with pytest.raises(OSError):
            os.fstat(0)
    finally:
        os.dup2(stdin, 0)
        os.close(stdin)
