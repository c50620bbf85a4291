"""A disk that fills up, turns read-only, or holds a damaged database: writes fail with a
storage error, reads keep working, nothing acknowledged is lost, and a corrupt database
is moved aside (never deleted) and reported.

Full and read-only are real file systems mounted on the test's OMNID_HOME: a small tmpfs,
and an ext4 image on a loop device that the kernel turns read-only on an error. Both
need root (or the mount capability); without it those tests are skipped, saying why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from omnid_client import StorageError
from omnid_client._core import result_of
from omnid_client.protocol import FindResult, Session
from tests.helpers import DaemonProcess, Wire, db_rows, hello, request, started_daemons, wait_for

pytestmark = pytest.mark.usefixtures("no_stray_daemons")

OMNID = [sys.executable, "-m", "omnid"]


class OffDiskLog(DaemonProcess):
    """A daemon whose log is kept off the file system under test (a full disk would eat it)."""

    def __init__(self, home: Path, log: Path):
        super().__init__(home)
        self._log = log

    @property
    def log(self) -> Path:
        return self._log


@pytest.fixture
def outside() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="omnid-out-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemons(home, outside) -> Iterator:
    """Start daemons on ``home`` logging to ``outside``; stopped (status 0) at the end, no tracebacks."""
    with started_daemons(lambda n: OffDiskLog(home, outside / f"omnid-{n}.log")) as start:
        yield start


def mount(*args: str) -> None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a test file system here (mount {' '.join(args)}: {r.stderr.strip()})")


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(home) -> Iterator[Path]:
    """An 8 MiB tmpfs as OMNID_HOME."""
    mount("-t", "tmpfs", "-o", "size=8m,mode=0700", "omnid-test", str(home))
    yield home
    unmount(home)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    try:
        while True:
            os.write(fd, b"\0")
    except OSError:
        pass
    os.close(fd)
    return filler


def stored(db_path: Path) -> tuple[str, dict[str, str | None], list[str]]:
    """(integrity_check, {session id: end reason} , message contents) of a database file."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        sessions = dict(db.execute("SELECT session_id, end_reason FROM sessions"))
        messages = [m for (m,) in db.execute("SELECT content FROM messages ORDER BY message_id")]
    return check, sessions, messages


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


# --- a full disk -----------------------------------------------------------------------------


def test_a_full_disk_fails_writes_keeps_reads_and_loses_nothing(small_disk, daemons, spawn_owner):
    d = daemons()
    owner, doomed = spawn_owner(), spawn_owner()
    with d.client() as c:
        acked = [c.get_or_create(f"before-{i}", pid=owner.pid).session.session_id for i in range(20)]
        sid = acked[0]
        c.add_message(sid, "user", "written before the disk filled")
        doomed_sid = c.get_or_create("doomed", pid=doomed.pid).session.session_id
        filler = fill(small_disk)

        # Some writes may still fit in space SQLite already holds; soon every one fails.
        refused = 0
        for i in range(300):
            try:
                got = c.get_or_create(f"full-{i}", pid=owner.pid, metadata={"pad": "x" * 4000})
                acked.append(got.session.session_id)
            except StorageError as e:
                assert e.code == "storage" and "full" in str(e), e
                refused += 1
        assert refused, "no write failed on a full disk"
        with pytest.raises(StorageError):
            c.add_message(sid, "user", "y" * 200_000)
        newcomer = spawn_owner()
        with pytest.raises(StorageError):
            c.get_or_create("newcomer", pid=newcomer.pid, metadata={"pad": "x" * 4000})

        # Reads go on, and see exactly what was acknowledged, even one that arrives in the
        # same batch as a failing write (and may have seen that write before it was undone).
        with Wire(d.socket) as w:
            w.send(hello())
            assert w.reply().error is None
            w.send(
                request(1, "session.get_or_create",
                        {"tool_id": "batched", "pid": owner.pid, "metadata": {"pad": "x" * 4000}})
                + request(2, "session.find", {"tool_id": "batched", "pid": owner.pid})
                + request(3, "session.get", {"session_id": sid})
            )
            replies = {r.id: r for r in (w.reply(), w.reply(), w.reply())}
        assert replies[1].error is not None and replies[1].error.code == "storage"
        assert replies[2].error is None and result_of(replies[2], FindResult).session is None
        assert replies[3].error is None and result_of(replies[3], Session).session_id == sid
        assert c.get(sid).live
        assert [m.content for m in c.list_messages(sid).messages] == ["written before the disk filled"]
        assert c.status().live_sessions == len(acked) + 1
        assert {s.session_id for s in c.list_sessions(status="live", limit=1000).sessions} == set(acked) | {doomed_sid}
        assert [h.ref_id for h in c.search("filled")]
        # The failed create's owner is not watched: the watches match the database.
        assert c.status().watched_processes == 2

        # An owner dies while nothing can be written: no busy loop of failing commits, reads
        # still answered, and its session is ended once there is room again.
        busy_before = cpu_seconds(d.pid)
        doomed.kill()
        doomed.wait()
        # Its exit was seen (the watch is gone) and ending its session failed to commit ...
        wait_for(lambda: c.status().watched_processes == 1, what="the doomed owner's exit to be noticed")
        # ... and the retries that follow back off: over a window holding the first ones
        # (after 1 s, then 2 s more) the daemon stays far from a second of CPU. The wait
        # ends early, failing, as soon as a spinning daemon has burnt that second.
        window_end = time.monotonic() + 2.0
        wait_for(lambda: time.monotonic() >= window_end or cpu_seconds(d.pid) - busy_before >= 1.0,
                 what="the retry window to pass")
        assert cpu_seconds(d.pid) - busy_before < 1.0, "the daemon spun on failing commits"
        if not c.get(doomed_sid).live:
            # Its end fit in space SQLite already held (pages freed since, as when waiting
            # search rows move into the index): then that end was committed, as told.
            ended = db_rows(small_disk / "omnid.db", "SELECT end_reason FROM sessions WHERE session_id = ?", doomed_sid)
            assert ended == [("reaped",)], "the doomed session cannot have been ended without a commit"

        filler.unlink()
        wait_for(lambda: c.get(doomed_sid).end_reason == "reaped", timeout=20, what="the retried reap")
        assert c.get_or_create("after", pid=owner.pid).status == "created"
        assert c.add_message(sid, "user", "written after space was freed").message_count == 2
        # The metrics saw each refusal (the loop's, the newcomer's, the batched one) and the failed commits.
        m = c.metrics()
        assert m.since_start.errors["session.get_or_create"] == {"storage": refused + 2}
        assert m.commit_failures >= 1 and m.since_start.sessions_ended == {"reaped": 1}
    assert d.stop() == 0

    check, sessions, messages = stored(small_disk / "omnid.db")
    assert check == "ok"
    assert all(sessions.get(s, "missing") is None for s in acked), "an acknowledged session was lost"
    assert sessions[doomed_sid] == "reaped"
    assert messages == ["written before the disk filled", "written after space was freed"]
    log = d.log_text()
    assert log.count("commit failed: database or disk is full") == 1, "one failure logged per minute"


def test_a_daemon_starting_on_a_full_disk_refuses_saying_so(small_disk, daemons, spawn_owner):
    """Without room for its lock, or for the WAL index of the database it must open, the
    daemon cannot start: it says the disk is full, and starts once there is room, with
    everything it had."""
    serve = [*OMNID, "serve", "--log-file", os.devnull]
    filler = fill(small_disk)
    r = subprocess.run(serve, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "No space left" in r.stderr and str(small_disk / "omnid.lock") in r.stderr, r.stderr
    filler.unlink()

    d = daemons()
    owner = spawn_owner()
    with d.client() as c:
        sid = c.get_or_create("before", pid=owner.pid).session.session_id
    assert d.stop() == 0
    filler = fill(small_disk)
    r = subprocess.run(serve, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert f"the file system holding {small_disk} is full" in r.stderr and "Traceback" not in r.stderr, r.stderr

    filler.unlink()
    d = daemons()
    with d.client() as c:
        assert c.get(sid).live
        assert c.get_or_create("after", pid=owner.pid).status == "created"


# --- a file system that turns read-only ---------------------------------------------------------


@pytest.fixture
def fragile_disk(home, outside) -> Iterator[tuple[Path, Path]]:
    """OMNID_HOME on an ext4 image on a loop device, mounted errors=remount-ro; yields the
    mount point and the image."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed")
    image = outside / "disk.img"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mount("-o", "loop,errors=remount-ro", str(image), str(home))
    os.chmod(home, 0o700)
    yield home, image
    unmount(home)


def _loop_device(mount_point: Path) -> str:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mount_point):
            return fields[fields.index("-") + 2]
    raise AssertionError(f"{mount_point} is not mounted")


def make_read_only(mount_point: Path) -> None:
    """Make the kernel remount the file system read-only as it does on an ext4 error (open
    files included, which ``mount -o remount,ro`` refuses)."""
    trigger = Path("/sys/fs/ext4") / Path(_loop_device(mount_point)).name / "trigger_fs_error"
    if not trigger.exists():
        pytest.skip(f"{trigger} does not exist (kernel without the ext4 error trigger)")
    trigger.write_text("1\n")
    wait_for(lambda: _is_read_only(mount_point), what="the file system to turn read-only")


def _is_read_only(mount_point: Path) -> bool:
    # (statvfs may not say so: recent kernels mark the ext4 "emergency_ro", not the mount)
    try:
        (mount_point / "probe").touch()
    except OSError as e:
        return e.errno == errno.EROFS
    (mount_point / "probe").unlink()
    return False


def test_a_file_system_turned_read_only_fails_writes_keeps_reads_and_loses_nothing(fragile_disk, daemons, spawn_owner):
    mount_point, image = fragile_disk
    d = daemons()
    owner = spawn_owner()
    with d.client() as c:
        acked = [c.get_or_create(f"before-{i}", pid=owner.pid).session.session_id for i in range(20)]
        sid = acked[0]
        c.add_message(sid, "user", "written before the disk turned read-only")
        # Acknowledged means committed to the WAL, not synced (synchronous=NORMAL survives a
        # crash of omnid, not of the machine): sync, as time would, before the disk fails.
        os.sync()
        make_read_only(mount_point)

        for attempt in range(3):
            with pytest.raises(StorageError) as err:
                c.get_or_create(f"read-only-{attempt}", pid=owner.pid)
            assert err.value.code == "storage"
        with pytest.raises(StorageError):
            c.add_message(sid, "user", "never stored")
        with pytest.raises(StorageError):
            c.end(acked[1])

        assert c.get(sid).live and c.get(acked[1]).live
        assert [m.content for m in c.list_messages(sid).messages] == ["written before the disk turned read-only"]
        assert c.status().live_sessions == len(acked)
        assert {s.session_id for s in c.list_sessions(status="live").sessions} == set(acked)
    # It stops cleanly even though it can remove nothing (socket, status file).
    assert d.stop() == 0

    # Repair the file system as an administrator would, and start again on it.
    unmount(mount_point)
    subprocess.run(["e2fsck", "-f", "-y", str(image)], capture_output=True)
    mount("-o", "loop,errors=remount-ro", str(image), str(mount_point))
    check, sessions, messages = stored(mount_point / "omnid.db")
    assert check == "ok"
    assert all(sessions.get(s, "missing") is None for s in acked), "an acknowledged session was lost"
    assert messages == ["written before the disk turned read-only"]
    d = daemons()
    with d.client() as c:
        assert all(c.get(s).live for s in acked)
        assert c.get_or_create("after-repair", pid=owner.pid).status == "created"


# --- a corrupt database at start -------------------------------------------------------------------


def _garbage(db: Path) -> None:
    db.write_bytes(os.urandom(64 * 1024))


def _damaged_page(db: Path) -> None:
    """A valid database whose sessions table's root page has a broken header."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sessions'").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" + os.urandom(15))


def _filled(home: Path, daemons, spawn_owner) -> list[str]:
    """A database with a few sessions in it, checkpointed into the main file."""
    d = daemons()
    owner = spawn_owner()
    with d.client() as c:
        sids = [c.get_or_create(f"precious-{i}", pid=owner.pid).session.session_id for i in range(30)]
    assert d.stop() == 0
    return sids


@pytest.mark.parametrize("damage", [_garbage, _damaged_page], ids=["garbage", "damaged page"])
def test_a_corrupt_database_is_set_aside_and_reported_never_deleted(home, daemons, spawn_owner, damage):
    _filled(home, daemons, spawn_owner)
    db = home / "omnid.db"
    damage(db)
    wal = Path(f"{db}-wal")
    wal.write_bytes(b"a WAL that belongs to the damaged database")
    before = {p.name: p.read_bytes() for p in (db, wal)}

    d = daemons()

    with d.client() as c:
        st = c.status()
        assert c.list_sessions().sessions == [], "the new database should be empty"
        assert c.get_or_create("fresh").status == "created"
    assert len(st.set_aside) >= 2, st.set_aside
    kept = {Path(p).name: Path(p).read_bytes() for p in st.set_aside}
    main = next(n for n in kept if n.startswith("omnid.db.corrupt-") and not n.endswith(("-wal", "-shm")))
    assert kept[main] == before["omnid.db"], "the damaged database was not kept as it was"
    assert kept[f"{main}-wal"] == before["omnid.db-wal"], "its WAL was not kept beside it"
    assert all(Path(p).parent == home for p in st.set_aside)
    log = d.log_text()
    assert "moved it aside to" in log and main in log

    # omnid status says so, in both forms.
    out = subprocess.run([*OMNID, "status"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and f"set aside:      {home / main}" in out.stdout, out.stdout

    # The next start finds a healthy database and sets nothing aside.
    assert d.stop() == 0
    d = daemons()
    with d.client() as c:
        assert c.status().set_aside == []
        assert [s.tool_id for s in c.list_sessions().sessions] == ["fresh"]
    assert (home / main).exists()
