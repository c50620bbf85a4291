"""Retention against real daemons: ended sessions past the age are archived (the export
format) and deleted, by ``omnid retention run`` and by the daemon's own timer, never
silently: each run is logged and counted in the daemon's status."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
import pytest

from omnid.cli._style import iso_times
from omnid.jobs.retention import retention_from_env, write_archive
from omnid_client import Client, Invalid, NotFound, StorageError
from omnid_client.protocol import ContextEvent, ExportHeader, Record, SessionRecord
from tests.helpers import DaemonProcess, count, db_rows, omnid_error, omnid_json, run_omnid, wait_for

TOOL = "retention-test"


@pytest.fixture(autouse=True)
def _no_retention_unless_set(monkeypatch) -> None:
    monkeypatch.delenv("OMNID_RETENTION", raising=False)








def held_by(home: Path, session_id: str) -> dict[str, int]:
    """Rows anywhere that belong to the session."""
    return {
        table: count(home, table, "session_id = ?", session_id)
        for table in ("sessions", "context_events", "messages", "session_memories", "tasks", "search_index")
    } | {"interactions": db_rows(
        home / "omnid.db",
        "SELECT count(*) FROM interactions i JOIN tasks t USING (task_id) WHERE t.session_id = ?",
        session_id,
    )[0][0]}


def full_session(client: Client, workspace: Path, *, end: bool = True) -> str:
    """A session holding one of everything (all of it indexed or cascaded), ended unless told."""
    s = client.get_or_create(TOOL, workspace=str(workspace), dedup=False).session
    client.append_context(s.session_id, [ContextEvent("decision", "archive me"), ContextEvent("file_access", "/f")])
    client.add_message(s.session_id, "user", "archived words")
    client.add_session_memory(s.session_id, "a session memory")
    task = client.create_task(s.session_id, "a task")
    client.add_interaction(task.task_id, "a step")
    if end:
        client.end(s.session_id)
    return s.session_id


def archived(path: Path) -> list[Record]:
    decoder = msgspec.json.Decoder(Record)
    return [decoder.decode(line) for line in path.read_bytes().splitlines()]


def session_ids(records: list[Record]) -> list[str]:
    return [r.session_id for r in records if isinstance(r, SessionRecord)]


# --- on request --------------------------------------------------------------------------


def test_run_archives_then_deletes_only_sessions_ended_long_enough_ago(daemon, client, home, tmp_path):
    old = full_session(client, tmp_path)
    time.sleep(1.5)  # room for the commands' own start-up time (see just_past_old)
    young = full_session(client, tmp_path)
    live = full_session(client, tmp_path, end=False)
    archive = tmp_path / "my archive.jsonl"
    old_end = client.get(old).ended_at

    def just_past_old() -> str:
        """An age whose cutoff falls just after ``old`` ended (and, with the command's own
        start-up time, still well before ``young`` did)."""
        return f"{time.time() - old_end - 0.05:.3f}s"

    dry = omnid_json("retention", "run", "--older-than", just_past_old(), "--archive", str(archive), "--dry-run")
    assert (dry["dry_run"], dry["session_ids"], dry["remaining"]) == (True, [old], 0)
    assert not archive.exists() and held_by(home, old)["sessions"] == 1

    result = omnid_json("retention", "run", "--older-than", just_past_old(), "--archive", str(archive))
    assert (result["dry_run"], result["session_ids"], result["archive"]) == (False, [old], str(archive))
    assert set(held_by(home, old).values()) == {0}  # with its content and its search rows
    for kept in (young, live):
        assert held_by(home, kept)["sessions"] == 1 and held_by(home, kept)["search_index"] == 3
    assert client.search("archived words", session_id=young)

    records = archived(archive)
    assert isinstance(records[0], ExportHeader) and session_ids(records) == [old]
    assert [r.__struct_config__.tag for r in records] == [
        "omnid-export", "project", "session", "context", "context", "message", "session_memory", "task", "interaction",
    ]
    assert oct(archive.stat().st_mode & 0o777) == oct(0o600)

    status = client.status().retention
    assert (status.age, status.runs, status.archived, status.purged, status.failures) == (None, 1, 1, 0, 0)
    assert (status.last_run.trigger, status.last_run.deleted, status.last_run.archive) == ("manual", 1, str(archive))
    assert status.next_run is None  # no age configured: the daemon never runs it on its own
    assert "retention (manual): archived 1 session(s)" in daemon.log_text()

    # The archive is an export: importing it brings the session back, whole.
    back = omnid_json("import", str(archive))
    assert back["records"]["session"]["imported"] == 1 and back["records"]["project"]["existing"] == 1
    assert held_by(home, old) == held_by(home, young)

    # A second run appends to the same archive.
    omnid_json("retention", "run", "--older-than", "0s", "--archive", str(archive))
    assert sorted(session_ids(archived(archive))) == sorted([old, old, young])
    assert [r.__struct_config__.tag for r in archived(archive)].count("omnid-export") == 2


def test_purge_deletes_without_an_archive_and_the_default_archive_is_in_the_state_dir(daemon, client, home, tmp_path):
    first = full_session(client, tmp_path)
    purged = omnid_json("retention", "run", "--older-than", "0s", "--purge")
    assert (purged["session_ids"], purged["archive"]) == ([first], None)
    assert set(held_by(home, first).values()) == {0}
    assert not (home / "archive.jsonl").exists()

    second = full_session(client, tmp_path)
    out = run_omnid("retention", "run", "--older-than", "0s")
    assert out.returncode == 0 and "archived 1 session(s)" in out.stdout and second in out.stdout
    assert session_ids(archived(home / "archive.jsonl")) == [second]

    status = client.status().retention
    assert (status.runs, status.archived, status.purged, status.archive) == (2, 1, 1, str(home / "archive.jsonl"))
    shown = omnid_json("retention", "status")
    assert shown == json.loads(msgspec.json.encode(iso_times(client.status().retention)))
    assert "purged 1 session(s)" in daemon.log_text()


def test_runs_work_through_many_sessions_a_chunk_at_a_time(daemon, client, home, tmp_path):
    ids = [full_session(client, tmp_path) for _ in range(5)]
    first = client.run_retention(older_than=0, purge=True, limit=2)
    assert (len(first.session_ids), first.remaining) == (2, 3)
    everything = omnid_json("retention", "run", "--older-than", "0s", "--purge")  # the command finishes the job
    assert sorted(first.session_ids + everything["session_ids"]) == sorted(ids)
    assert everything["remaining"] == 0
    assert db_rows(home / "omnid.db", "SELECT count(*) FROM sessions") == [(0,)]


def test_bad_requests_are_refused_and_delete_nothing(daemon, client, home, tmp_path):
    sid = full_session(client, tmp_path)
    error = omnid_error("retention", "run")
    assert error["code"] == "invalid" and "OMNID_RETENTION" in error["message"]
    assert run_omnid("retention", "run", "--older-than", "soon").returncode == 2
    assert run_omnid("retention", "run", "--older-than", "1s", "--purge", "--archive", "x").returncode == 2
    with pytest.raises(Invalid, match="absolute"):
        client.run_retention(older_than=0, archive="relative.jsonl")
    with pytest.raises(Invalid, match="not both"):
        client.run_retention(older_than=0, archive=str(tmp_path / "a"), purge=True)
    for own in (home / "omnid.db", home / "omnid.db-wal", home / "status.json"):
        with pytest.raises(Invalid, match="own files"):
            client.run_retention(older_than=0, archive=str(own))
    assert held_by(home, sid)["sessions"] == 1
    assert client.status().retention.runs == 0

    # An archive that cannot be written: nothing is deleted, and the failure is counted.
    with pytest.raises(StorageError, match="nothing was deleted"):
        client.run_retention(older_than=0, archive=str(tmp_path / "no such dir" / "a.jsonl"))
    assert held_by(home, sid)["messages"] == 1
    status = client.status().retention
    assert (status.runs, status.failures) == (0, 1) and "cannot append" in status.last_run.error
    assert "retention (manual): failed, nothing deleted" in daemon.log_text()


def test_a_device_as_the_archive_is_refused_and_deletes_nothing(daemon, client, home, tmp_path):
    sid = full_session(client, tmp_path)
    with pytest.raises(Invalid, match="character device, not a regular file.*nothing was deleted"):
        client.run_retention(older_than=0, archive="/dev/full")  # every write would fail: ENOSPC
    assert held_by(home, sid)["messages"] == 1


def test_an_archive_is_cut_back_when_a_write_fails_midway(tmp_path):
    """No half line is ever left for the next run to append after."""
    archive = tmp_path / "a.jsonl"
    archive.write_bytes(b'{"type":"omnid-export","format":1}\n')

    def records():
        for _ in range(3000):  # over 1 MiB: some of it reaches the file before the failure
            yield SessionRecord("88888888-9999-4aaa-8bbb-cccccccccccc", TOOL, None, "default", None, None, None,
                                True, None, {"pad": "p" * 500}, 1.0, 1.0, 1.0, "ended", None, 0, 0, 0)
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        write_archive(archive, records())
    assert archive.read_bytes() == b'{"type":"omnid-export","format":1}\n'
    assert write_archive(archive, [ExportHeader()]) == len(b'{"type":"omnid-export","format":1}\n')
    assert archive.read_bytes().count(b"\n") == 2


# --- by the daemon -----------------------------------------------------------------------


def test_the_daemon_archives_on_its_own_only_when_an_age_is_configured(home, tmp_path, monkeypatch):
    first = DaemonProcess(home).start()
    with first.client() as c:
        ended = [full_session(c, tmp_path) for _ in range(3)]
        live = full_session(c, tmp_path, end=False)
        st = c.status().retention
        assert (st.age, st.runs, st.next_run) == (None, 0, None)
    assert first.stop() == 0
    assert "retention (" not in first.log_text()
    time.sleep(1.2)  # now they ended over a second ago

    monkeypatch.setenv("OMNID_RETENTION", "1")
    second = DaemonProcess(home).start()
    try:
        with second.client() as c:
            st = wait_for(lambda: (s := c.status().retention).runs >= 1 and s, what="the startup retention run")
            assert (st.age, st.archived, st.failures) == (1.0, 3, 0)
            assert (st.last_run.trigger, st.last_run.deleted) == ("timer", 3)
            assert sorted(session_ids(archived(home / "archive.jsonl"))) == sorted(ended)
            for sid in ended:
                with pytest.raises(NotFound):
                    c.get(sid)
            assert c.get(live).ended_at is None  # live sessions are never touched
            # Idle, it sleeps at least 30 s between runs, whatever the age.
            assert st.next_run is not None and st.next_run - st.last_run.at >= 29.0
        log = second.log_text()
        assert "retention: ended sessions are archived to" in log
        assert "retention (timer): archived 3 session(s)" in log
    finally:
        assert second.stop() == 0


def test_an_unusable_retention_setting_is_reported_and_deletes_nothing(home, tmp_path, monkeypatch):
    monkeypatch.setenv("OMNID_RETENTION", "a week")
    d = DaemonProcess(home).start()
    try:
        with d.client() as c:
            sid = full_session(c, tmp_path)
            st = c.status().retention
            assert (st.age, st.runs, st.next_run) == (None, 0, None)
            assert c.get(sid).session_id == sid
        assert "OMNID_RETENTION='a week' is not a number of seconds; retention is off" in d.log_text()
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize(
    "value, age, warned",
    [(None, None, False), ("", None, False), ("0", None, False), ("86400", 86400.0, False), (" 2.5 ", 2.5, False),
     ("-1", None, True), ("inf", None, True), ("nan", None, True), ("7d", None, True)],
)
def test_the_retention_setting_is_seconds(value, age, warned):
    got, warning = retention_from_env({} if value is None else {"OMNID_RETENTION": value})
    assert got == age and (warning is not None) == warned, warning


def test_the_config_files_retention_drives_the_daemon_and_is_applied_live(home, tmp_path, monkeypatch):
    monkeypatch.delenv("OMNID_RETENTION", raising=False)
    d = DaemonProcess(home).start()
    try:
        with d.client() as c:
            ended = [full_session(c, tmp_path) for _ in range(2)]
            assert c.status().retention.age is None
            time.sleep(1.2)  # they ended over a second ago
            (home / "config.toml").write_text("retention = 1\n")
            st = wait_for(lambda: (s := c.status().retention).runs >= 1 and s, what="a retention run after reload")
            assert (st.age, st.archived) == (1.0, 2)
            assert sorted(session_ids(archived(home / "archive.jsonl"))) == sorted(ended)
    finally:
        assert d.stop() == 0
