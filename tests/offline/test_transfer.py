"""Backup, export and import end to end: the ``omnid`` commands as real processes against
real daemons, real sockets and real SQLite files, in throwaway OMNID_HOMEs."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import msgspec
import pytest

from omnid.projects import project_id_for
from omnid_client import Client, Conflict, Invalid, TooLarge
from omnid_client.protocol import (
    MAX_CONTENT,
    ContextEvent,
    ExportHeader,
    MemoryRecord,
    MessageRecord,
    NewMessage,
    ProjectRecord,
    Record,
    SessionRecord,
    TaskRecord,
)
from tests.helpers import (
    SEARCH_ROWS,
    DaemonProcess,
    db_rows,
    omnid_error,
    omnid_json,
    omnid_ok,
    run_omnid,
    started_daemons,
    wait_for,
)

TOOL = "transfer-test"
CONTENT_TABLES = (
    "sessions", "projects", "context_events", "memories", "memory_versions",
    "session_memories", "messages", "tasks", "interactions", "search_index",
)
UNICODE = "héllo wörld — 你好 🌍 שלום e\u0301 \u2028 nul\x00 tab\tnewline\n\"quoted\" \\ back \U0010ffff"


# --- helpers ---------------------------------------------------------------------------


def omnid(*args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """Bytes out: exports are compared byte for byte."""
    return run_omnid(*args, text=False, **kwargs)


def ok(*args: str) -> bytes:
    return omnid_ok(*args, text=False)


def table_counts(db_path: Path) -> dict[str, int]:
    return {
        t: db_rows(db_path, f"SELECT count(*) FROM {SEARCH_ROWS if t == 'search_index' else t}")[0][0]
        for t in CONTENT_TABLES
    }


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def decode_all(path: Path) -> list[Record]:
    decoder = msgspec.json.Decoder(Record)
    return [decoder.decode(line) for line in lines_of(path)]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" if not isinstance(r, bytes) else r for r in records))
    return path


def imported(result: Any, kind: str) -> tuple[int, int, dict[str, int]]:
    c = result["records"][kind] if isinstance(result, dict) else result.records[kind]
    if isinstance(c, dict):
        return c["imported"], c["existing"], c["skipped"]
    return c.imported, c.existing, c.skipped


@pytest.fixture
def other_home(monkeypatch) -> Iterator:
    """Switch this test (and the commands it runs) to a fresh OMNID_HOME with its own
    daemon; stopped and removed at the end."""
    homes: list[Path] = []

    def fresh_home(_: int) -> DaemonProcess:
        path = Path(tempfile.mkdtemp(prefix="omnid-t2-", dir="/tmp"))
        homes.append(path)
        monkeypatch.setenv("OMNID_HOME", str(path))
        return DaemonProcess(path)

    with started_daemons(fresh_home) as switch:
        yield switch
    for path in homes:
        shutil.rmtree(path, ignore_errors=True)


def repo(root: Path) -> Path:
    (root / ".git").mkdir(parents=True)
    return root


def rich_dataset(client: Client, tmp_path: Path, spawn_owner) -> dict[str, Any]:
    """Every kind of thing omnid holds, with unicode and nested metadata, in ended and
    live sessions; one live session belongs to a process the test can kill."""
    a = repo(tmp_path / "alpha")
    b = tmp_path / "beta plain"
    b.mkdir()
    meta = {"nested": {"list": [1, 2.5, None, True, "ü"], "empty": {}}, "z": 0, "a": UNICODE, "big": 2**53 + 1}

    done = client.get_or_create(
        TOOL, workspace=str(a), tool_version="1.2.3", session_type="cli", metadata=meta, dedup=False
    ).session
    client.append_context(done.session_id, [
        ContextEvent("file_access", str(a / "src" / "main.py"), 0.9),
        ContextEvent("file_access", str(a / "src" / "main.py"), 0.3),  # the same event twice
        ContextEvent("search", "how to ünicode", detail="3 hits"),
        ContextEvent("decision", "use SQLite WAL", 1.0, "one writer, many readers"),
        ContextEvent("memory_ref", "style-guide"),
        ContextEvent("file_change", str(a / "README.md"), detail="edited"),
    ])
    client.append_context(done.session_id, [ContextEvent("decision", UNICODE)])
    client.add_messages(done.session_id, [
        NewMessage("system", "You are helpful."),
        NewMessage("user", UNICODE, metadata=meta, tokens_used=12, cost_usd=0.000123456),
        NewMessage("assistant", "x" * 5000, message_type="code", tokens_used=7, cost_usd=1.5),
        NewMessage("tool", "", message_type="tool_result"),
    ])
    client.add_session_memory(done.session_id, "remember the 🌍", memory_type="insight", metadata={"w": 1})
    client.add_session_memory(done.session_id, UNICODE)
    finished = client.create_task(done.session_id, "ship it ✓", external_id="ext-1", metadata=meta)
    client.add_interaction(finished.task_id, "step 1", kind="plan")
    client.add_interaction(finished.task_id, UNICODE, metadata={"n": 2})
    client.update_task(finished.task_id, status="done")
    client.create_task(done.session_id, "still open", external_id="ext-2")
    client.end(done.session_id)

    live = client.get_or_create(TOOL, workspace=str(a / "src"), metadata={"live": True}).session
    client.add_message(live.session_id, "user", "still talking")
    client.append_context(live.session_id, [ContextEvent("search", "live query")])

    owner = spawn_owner()
    orphan = client.get_or_create(TOOL + "-other", pid=owner.pid, workspace=str(b)).session
    client.add_message(orphan.session_id, "user", "my owner will die")
    client.create_task(orphan.session_id, "left behind")

    other = client.get_or_create("other-tool", workspace=str(b), dedup=False).session
    client.end(other.session_id)

    client.put_memory("style", "black", workspace=str(a), metadata={"by": "test"})
    client.put_memory("style", {"line": 100, "tools": ["ruff", "black"]}, workspace=str(a))
    client.put_memory("style", UNICODE, workspace=str(a), metadata=meta)
    client.put_memory("soon", 1.25, workspace=str(a), ttl=3600)
    client.get_memory("style", workspace=str(a))  # an access
    client.put_memory("note", [1, "two", {"3": None}], workspace=str(b))
    return {"done": done, "live": live, "orphan": orphan, "owner": owner, "other": other, "alpha": a, "beta": b}


# --- backup ----------------------------------------------------------------------------


def test_backup_while_the_daemon_writes_is_complete_and_intact(daemon, client, home, tmp_path):
    session = client.get_or_create(TOOL, workspace=str(tmp_path), dedup=False).session
    acknowledged = []
    stop = threading.Event()

    def write() -> None:
        with daemon.client() as c:
            while not stop.is_set():
                c.add_message(session.session_id, "user", "m" * 2000)
                acknowledged.append(time.monotonic())

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_for(lambda: len(acknowledged) >= 200, what="a few hundred writes")
        before = len(acknowledged)
        started = time.monotonic()
        info = omnid_json("backup", str(tmp_path / "copy.db"))
        done_by = sum(1 for t in acknowledged if t < started)
    finally:
        stop.set()
        writer.join()

    copy = tmp_path / "copy.db"
    assert info["path"] == str(copy) and info["integrity"] == "ok" and info["bytes"] == copy.stat().st_size
    assert db_rows(copy, "PRAGMA integrity_check") == [("ok",)]
    assert db_rows(copy, "PRAGMA journal_mode") == [("delete",)]  # one self-contained file
    assert not Path(f"{copy}-wal").exists()
    messages = db_rows(copy, "SELECT count(*) FROM messages")[0][0]
    assert messages >= max(before, done_by)  # every write acknowledged before the backup began
    assert db_rows(copy, "SELECT seq FROM messages ORDER BY seq") == [(n,) for n in range(1, messages + 1)]
    assert db_rows(copy, "SELECT message_count FROM sessions")[0][0] == messages  # one snapshot: counters match rows
    assert oct(copy.stat().st_mode & 0o777) == oct(0o600)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_backup_refuses_an_existing_file_unless_forced(daemon, client, home, tmp_path):
    client.get_or_create(TOOL, workspace=str(tmp_path), dedup=False)
    target = tmp_path / "exists.db"
    target.write_bytes(b"precious")

    error = omnid_error("backup", str(target))
    assert error["code"] == "exists" and "--force" in error["message"]
    assert target.read_bytes() == b"precious"

    assert omnid_json("backup", str(target), "--force")["sessions"] == 1
    assert db_rows(target, "SELECT count(*) FROM sessions") == [(1,)]
    assert omnid("backup", str(tmp_path)).returncode == 2  # a directory: a usage error
    assert omnid_error("backup", str(tmp_path / "no" / "dir" / "x.db"))["code"] == "io"


def test_backup_works_while_the_daemon_is_stopped_and_needs_a_database(home, daemon, client, tmp_path, monkeypatch):
    client.get_or_create(TOOL, workspace=str(tmp_path), dedup=False)
    assert daemon.stop() == 0
    assert omnid_json("backup", str(tmp_path / "b.db"))["sessions"] == 1
    assert not daemon.socket.exists()  # the backup started no daemon

    empty = tmp_path / "empty-home"
    empty.mkdir()
    monkeypatch.setenv("OMNID_HOME", str(empty))
    assert omnid_error("backup", str(tmp_path / "c.db"))["code"] == "not_found"
    assert omnid_error("export", "-o", str(tmp_path / "e.jsonl"))["code"] == "not_found"
    assert not (tmp_path / "c.db").exists() and not (empty / "omnid.db").exists()


# --- export and import: the round trip ---------------------------------------------------


def test_export_import_export_is_byte_identical(daemon, client, home, tmp_path, spawn_owner, other_home):
    data = rich_dataset(client, tmp_path, spawn_owner)
    first = tmp_path / "first.jsonl"
    summary = omnid_json("export", "-o", str(first))
    assert oct(first.stat().st_mode & 0o777) == oct(0o600)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    stats_before = client.stats()

    records = decode_all(first)
    assert isinstance(records[0], ExportHeader)
    kinds = [r.__struct_config__.tag for r in records]
    assert summary["records"] == {k: kinds.count(k) for k in dict.fromkeys(kinds[1:])}
    assert set(kinds) == {"omnid-export", "project", "memory", "memory_version", "session", "context", "message",
                          "session_memory", "task", "interaction"}
    assert kinds.index("session") > kinds.index("memory") > kinds.index("project")
    assert lines_of(first) == [msgspec.json.encode(r) + b"\n" for r in records]  # canonical encoding
    by_id = {r.session_id: r for r in records if isinstance(r, SessionRecord)}
    assert by_id[data["orphan"].session_id].ended_at is None  # exported while its owner ran

    # The orphan's owner dies after the export: imported elsewhere, it must not stay live.
    data["owner"].kill()
    data["owner"].wait()
    assert daemon.stop() == 0
    second_daemon = other_home()
    result = omnid_json("import", str(first))
    assert imported(result, "session") == (4, 0, {})
    assert imported(result, "message") == (6, 0, {})
    assert result["reaped"] == [data["orphan"].session_id]

    second = tmp_path / "second.jsonl"
    ok("export", "-o", str(second))
    a, b = lines_of(first), lines_of(second)
    assert len(a) == len(b)
    differing = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    assert len(differing) == 1, differing
    was, now = (msgspec.json.decode(line) for line in differing[0])
    assert was["session_id"] == data["orphan"].session_id
    assert (was["ended_at"], was["end_reason"], now["end_reason"]) == (None, None, "reaped")
    assert now["ended_at"] >= was["last_activity"]
    assert {k: v for k, v in was.items() if k not in ("ended_at", "end_reason", "last_activity")} == {
        k: v for k, v in now.items() if k not in ("ended_at", "end_reason", "last_activity")
    }

    # Importing the same file again adds nothing; the next export is still the same.
    again = omnid_json("import", str(first))
    for kind, counts in again["records"].items():
        assert counts["imported"] == 0, (kind, counts)
    assert again["reaped"] == []
    third = tmp_path / "third.jsonl"
    ok("export", "-o", str(third))
    assert third.read_bytes() == second.read_bytes()

    with second_daemon.client() as c2:
        stats = c2.stats()
        assert (stats.sessions, stats.messages, stats.total_tokens, stats.total_cost, stats.tasks) == (
            stats_before.sessions, stats_before.messages, stats_before.total_tokens, stats_before.total_cost,
            stats_before.tasks,
        )
        assert c2.get(data["live"].session_id).ended_at is None  # its owner (this test) still runs
        assert c2.status().watched_processes == 1
        hits = c2.search("SQLite WAL")
        assert [h.kind for h in hits] == ["decision"] and hits[0].session_id == data["done"].session_id
        assert {h.kind for h in c2.search("quoted")} == {"message", "decision", "session_memory", "memory"}
        assert c2.get_memory("style", workspace=str(data["alpha"])).value == UNICODE
        assert [v.version for v in c2.memory_history("style", workspace=str(data["alpha"])).versions] == [1, 2, 3]
        task = c2.list_tasks(session_id=data["done"].session_id, status="done").tasks[0]
        assert [i.content for i in c2.get_task(task.task_id).interactions] == ["step 1", UNICODE]
        more = c2.add_message(data["live"].session_id, "assistant", "and on")  # imported live sessions go on
        assert more.message_count == 2


def test_a_dry_run_writes_nothing_and_says_what_would_happen(daemon, client, home, tmp_path):
    s = client.get_or_create(TOOL, workspace=str(tmp_path), dedup=False).session
    client.add_message(s.session_id, "user", "hi")
    client.end(s.session_id)
    export = tmp_path / "e.jsonl"
    ok("export", "-o", str(export))
    client.put_memory("later", "v", workspace=str(tmp_path))  # in the database, not in the file
    before = table_counts(home / "omnid.db")

    dry = omnid_json("import", str(export), "--dry-run")
    assert dry["dry_run"] is True
    assert imported(dry, "session") == (0, 1, {}) and imported(dry, "message") == (0, 1, {})
    assert table_counts(home / "omnid.db") == before

    other = tmp_path / "other.jsonl"
    new_id = "11111111-2222-4333-8444-555555555555"
    write_jsonl(other, [
        ExportHeader(),
        SessionRecord(new_id, TOOL, None, "default", None, None, None, True, None, {}, 1.0, 2.0, 2.0, "ended",
                      None, 1, 0, 0),
        MessageRecord(new_id, 1, "user", "x", "text", {}, 0, 0, 1.5),
    ])
    dry = omnid_json("import", str(other), "--dry-run")
    assert imported(dry, "session") == (1, 0, {}) and imported(dry, "message") == (1, 0, {})
    assert table_counts(home / "omnid.db") == before


def test_messages_imported_into_an_existing_session_count_in_its_totals(daemon, client, tmp_path):
    sid = "11111111-2222-4333-8444-666666666666"
    session = SessionRecord(sid, TOOL, None, "default", None, None, None, True, None, {}, 1.0, 2.0, 2.0, "ended",
                            None, 1, 5, 1000)
    message = MessageRecord(sid, 1, "user", "x", "text", {}, 5, 1000, 1.5)
    first = write_jsonl(tmp_path / "first.jsonl", [ExportHeader(), session, message])
    assert imported(omnid_json("import", str(first)), "message") == (1, 0, {})
    s = client.get(sid)
    assert (s.message_count, s.total_tokens, s.total_cost) == (1, 5, 1e-6)

    later = write_jsonl(tmp_path / "later.jsonl", [
        ExportHeader(), session,
        MessageRecord(sid, 1, "user", "x", "text", {}, 5, 1000, 1.5),
        MessageRecord(sid, 2, "assistant", "y", "text", {}, 7, 3000, 1.7),
    ])
    result = omnid_json("import", str(later))
    assert imported(result, "session") == (0, 1, {}) and imported(result, "message") == (1, 1, {})
    s = client.get(sid)
    assert (s.message_count, s.total_tokens, s.total_cost) == (2, 12, 4e-6)
    assert client.stats().messages == 2


def test_export_filters_by_session_project_and_time(daemon, client, home, tmp_path):
    a, b = repo(tmp_path / "a"), repo(tmp_path / "b")
    old = client.get_or_create(TOOL, workspace=str(a), dedup=False).session
    old = client.end(old.session_id)
    client.put_memory("k", "v", workspace=str(a))
    time.sleep(1.5)
    new_a = client.get_or_create(TOOL, workspace=str(a), dedup=False).session
    in_b = client.get_or_create(TOOL, workspace=str(b), dedup=False).session
    client.put_memory("kb", "vb", workspace=str(b))

    def exported(*args: str) -> list[Record]:
        out = tmp_path / f"f{len(list(tmp_path.iterdir()))}.jsonl"
        ok("export", "-o", str(out), *args)
        return decode_all(out)[1:]

    def ids(records: list[Record]) -> list[tuple[str, str]]:
        names = {"project": "project_id", "memory": "key", "memory_version": "memory_id", "session": "session_id"}
        return [(r.__struct_config__.tag, getattr(r, names[r.__struct_config__.tag])) for r in records]

    pa, pb = project_id_for(str(a)), project_id_for(str(b))
    memory_a = client.get_memory("k", workspace=str(a)).memory_id
    assert ids(exported("--session", in_b.session_id)) == [("project", pb), ("session", in_b.session_id)]
    assert ids(exported("--project", pa)) == [
        ("project", pa), ("memory", "k"), ("memory_version", memory_a), ("session", old.session_id),
        ("session", new_a.session_id),
    ]
    from datetime import datetime

    midpoint = datetime.fromtimestamp((old.ended_at + new_a.started_at) / 2).isoformat()
    recent = ids(exported("--since", midpoint))
    assert ("session", old.session_id) not in recent and ("memory", "k") not in recent
    assert ("session", new_a.session_id) in recent and ("session", in_b.session_id) in recent
    assert ("memory", "kb") in recent and ("project", pa) in recent and ("project", pb) in recent
    assert len(ids(exported("--since", "1h"))) == 9  # 2 projects, 2 memories + versions, 3 sessions
    both = ids(exported("--session", old.session_id, "--session", in_b.session_id))
    assert [x for x in both if x[0] == "session"] == [("session", old.session_id), ("session", in_b.session_id)]

    stdout = omnid("export", "--project", pb)
    assert stdout.returncode == 0 and stdout.stdout.startswith(b'{"type":"omnid-export","format":1}\n')
    assert b"exported" in stdout.stderr
    target = tmp_path / "taken.jsonl"
    target.write_text("keep")
    assert omnid_error("export", "-o", str(target))["code"] == "exists" and target.read_text() == "keep"
    assert omnid("export", "--since", "yesterday-ish").returncode == 2


# --- bad input ---------------------------------------------------------------------------


def test_a_bad_line_is_named_and_nothing_is_written(daemon, client, home, tmp_path):
    s = client.get_or_create(TOOL, workspace=str(tmp_path), dedup=False).session
    client.end(s.session_id)
    good = tmp_path / "good.jsonl"
    ok("export", "-o", str(good))
    client.get_or_create(TOOL, workspace=str(tmp_path / "x"), dedup=False)
    # A fresh id, so the good lines would import if anything were written.
    text = good.read_text().replace(s.session_id, "22222222-3333-4444-8555-666666666666")
    before = table_counts(home / "omnid.db")

    cases = {
        b"{not json\n": "line 4: not a JSON record",
        b'{"type":"session","session_id":"nope"}\n': "line 4",
        b'{"type":"mystery"}\n': "line 4",
        b'{"type":"message","session_id":"22222222-3333-4444-8555-666666666666","seq":1,"role":"robot",'
        b'"content":"x","message_type":"text","metadata":{},"tokens_used":0,"cost_nanos":0,"created_at":1}\n': "role",
        b"[1, 2]\n": "line 4",
        b'{"type":"context","session_id":"22222222-3333-4444-8555-666666666666","seq":5,"kind":"search",'
        b'"subject":"q","importance":null,"detail":null,"created_at":1}\n': "should be 1",
    }
    bad = tmp_path / "bad.jsonl"
    for line, expected in cases.items():
        bad.write_bytes(text.encode() + line + b'{"type":"omnid-export","format":1}\n')
        error = omnid_error("import", str(bad))
        assert error["code"] == "invalid" and expected in error["message"], (line, error)
        assert table_counts(home / "omnid.db") == before, line
    assert omnid_error("import", str(tmp_path / "missing.jsonl"))["code"] == "io"
    assert client.status().pid == daemon.pid


def test_a_failing_batch_writes_nothing_and_earlier_batches_stay(daemon, client, home, tmp_path):
    sid = "33333333-4444-4555-8666-777777777777"
    big = "b" * (MAX_CONTENT - 10)  # about four of these fill a request
    records: list[Any] = [
        ExportHeader(),
        SessionRecord(sid, TOOL, None, "default", None, None, None, True, None, {}, 1.0, 2.0, 2.0, "ended",
                      None, 12, 0, 0),
    ]
    records += [MessageRecord(sid, n, "user", big, "text", {}, 0, 0, 1.5) for n in range(1, 13)]
    # Line 15: a memory of a project that is nowhere: the daemon refuses it.
    records.append(MemoryRecord("mem_0123456789ab", "prj_000000000000", "k", "v", {}, 1, 1.0, 1.0, None, 0, None))
    path = write_jsonl(tmp_path / "big.jsonl", records)

    error = omnid_error("import", str(path))
    assert error["code"] == "invalid" and "line 15" in error["message"] and "prj_000000000000" in error["message"]
    stored = db_rows(home / "omnid.db", "SELECT count(*) FROM messages WHERE session_id = ?", sid)[0][0]
    assert 0 < stored < 12, stored  # the batches before the failing one were imported, whole
    assert db_rows(home / "omnid.db", "SELECT max(seq) FROM messages")[0][0] == stored
    # A record from the failing batch is absent: that batch wrote nothing.
    assert db_rows(home / "omnid.db", "SELECT count(*) FROM memories") == [(0,)]

    fixed = write_jsonl(tmp_path / "fixed.jsonl", records[:-1])
    result = omnid_json("import", str(fixed))
    assert imported(result, "message") == (12 - stored, stored, {})
    assert imported(result, "session") == (0, 1, {})
    assert db_rows(home / "omnid.db", "SELECT count(*), max(seq) FROM messages") == [(12, 12)]


def test_import_batches_are_all_or_nothing_and_checked_by_the_daemon(daemon, client, home, tmp_path):
    """Raw batches through the client: each refused batch leaves every table as it was."""
    root = str(tmp_path)
    pid = project_id_for(root)
    project = ProjectRecord(pid, root, "p", None, 1.0, 2.0)
    sid = "44444444-5555-4666-8777-888888888888"
    session = SessionRecord(
        sid, TOOL, None, "default", None, None, None, True, root, {}, 1.0, 2.0, 2.0, "ended", pid, 0, 0, 0
    )
    live_mine = SessionRecord(
        "55555555-6666-4777-8888-999999999999", TOOL, None, "default", None, None, None, True, None, {}, 1.0, 2.0,
        None, None, None, 0, 0, 0,
    )
    before = table_counts(home / "omnid.db")
    cases: list[tuple[str, list[Any], type[Exception], str]] = [
        ("project id not of its root", [ProjectRecord("prj_000000000000", root, "p", None, 1.0, 1.0)], Invalid, "root"),
        ("ended without a reason", [project, msgspec.structs.replace(session, end_reason=None)], Invalid, "end_reason"),
        ("activity before start", [project, msgspec.structs.replace(session, last_activity=0.5)], Invalid, "before"),
        ("message of no session", [project, MessageRecord("66666666-7777-4888-8999-000000000000", 1, "user", "x",
                                                          "text", {}, 0, 0, 1.0)], Invalid, "no session"),
        ("a gap in messages", [project, session, MessageRecord(sid, 2, "user", "x", "text", {}, 0, 0, 1.0)],
         Invalid, "does not follow"),
        ("finished task without end", [project, session, TaskRecord("task_0123456789abcdef", sid, "t", "done", None,
                                                                    {}, 1.0, 1.0, None)], Invalid, "ended_at"),
        ("metadata too large", [project, msgspec.structs.replace(session, metadata={"x": "y" * 70000})], TooLarge,
         "metadata"),
        ("session of no project", [session], Invalid, "no project"),
    ]
    for case, records, error, words in cases:
        with pytest.raises(error) as raised:
            client.import_records(records, lines=list(range(10, 10 + len(records))))
        message = str(raised.value)
        assert words in message and message.startswith(f"line {9 + len(records)}: "), (case, message)
        assert table_counts(home / "omnid.db") == before, case
    with pytest.raises(Invalid, match="line numbers"):
        client.import_records([project], lines=[1, 2])

    # Two live sessions of one tool and owner conflict, as they would if created.
    mine = client.get_or_create(TOOL).session
    clash = msgspec.structs.replace(
        live_mine, owner_pid=mine.owner_pid, owner_start=mine.owner_start, boot_id=mine.boot_id
    )
    with pytest.raises(Conflict, match="same tool and owner"):
        client.import_records([clash])
    result = client.import_records([msgspec.structs.replace(clash, dedup=False)])
    assert imported(result, "session") == (1, 0, {}) and result.reaped == []
    assert client.get(clash.session_id).ended_at is None
    assert client.status().pid == daemon.pid


def test_memories_that_expired_or_whose_key_is_taken_are_skipped(daemon, client, home, tmp_path):
    root = str(tmp_path)
    pid = project_id_for(root)
    taken = client.put_memory("taken", "mine", workspace=root)
    now = time.time()

    def memory(memory_id: str, key: str, expires_at: float | None) -> MemoryRecord:
        return MemoryRecord(memory_id, pid, key, "theirs", {}, 1, now - 10, now - 5, expires_at, 0, None)

    from omnid_client.protocol import MemoryVersionRecord

    result = client.import_records([
        ProjectRecord(pid, root, tmp_path.name, None, now, now),
        memory("mem_aaaaaaaaaaa1", "taken", None),
        MemoryVersionRecord("mem_aaaaaaaaaaa1", 1, "theirs", {}, now - 10, None),
        memory("mem_aaaaaaaaaaa2", "old", now - 1),
        memory("mem_aaaaaaaaaaa3", "fresh", now + 3600),
        MemoryVersionRecord("mem_aaaaaaaaaaa3", 1, "theirs", {}, now - 10, now + 3600),
    ])
    assert imported(result, "project") == (0, 1, {})
    assert imported(result, "memory") == (1, 0, {"expired": 1, "key_taken": 1})
    assert imported(result, "memory_version") == (1, 0, {"no_memory": 1})
    assert client.get_memory("taken", workspace=root).memory_id == taken.memory_id
    assert client.get_memory("fresh", workspace=root).expires_at == now + 3600
    assert [h.ref_id for h in client.search("theirs")] == ["mem_aaaaaaaaaaa3"]


def test_a_record_too_large_for_one_request_is_named(daemon, client, home, tmp_path):
    sid = "77777777-8888-4999-8aaa-bbbbbbbbbbbb"
    path = write_jsonl(tmp_path / "huge.jsonl", [
        SessionRecord(
            sid, TOOL, None, "default", None, None, None, True, None, {}, 1.0, 2.0, 2.0, "ended", None, 1, 0, 0
        ),
        MessageRecord(sid, 1, "user", "😀" * MAX_CONTENT, "text", {}, 0, 0, 1.5),  # 1 MiB of UTF-8
    ])
    before = table_counts(home / "omnid.db")
    error = omnid_error("import", str(path))
    assert error["code"] == "too_large" and "line 2" in error["message"]
    assert table_counts(home / "omnid.db") == before


def test_resume_keys_owner_history_and_edits_survive_export_and_import(daemon, client, tmp_path, spawn_owner,
                                                                        other_home):
    first, second = spawn_owner(), spawn_owner()
    sid = client.get_or_create(TOOL, pid=first.pid, resume_key="instance-1").session.session_id
    first.kill()
    first.wait()
    wait_for(lambda: client.get(sid).end_reason == "reaped", what="the reap")
    assert client.get_or_create(TOOL, pid=second.pid, resume_key="instance-1").status == "resumed"
    client.update_session(sid, title="résumé ✓", tags=["b", "a"], pinned=True, archived=True)
    client.end(sid)
    plain = client.get_or_create(TOOL, dedup=False).session.session_id
    client.end(plain)
    first_export = tmp_path / "first.jsonl"
    ok("export", "-o", str(first_export))
    exported = {r.session_id: r for r in decode_all(first_export) if isinstance(r, SessionRecord)}
    assert [o.pid for o in exported[sid].past_owners] == [first.pid]
    # A session that uses none of it is written as before these fields existed.
    assert not {"resume_key", "title", "tags", "pinned", "archived_at", "owner_since", "past_owners"} & set(
        msgspec.json.decode(msgspec.json.encode(exported[plain]))
    )
    before = (client.get(sid), client.session_owners(sid))

    assert daemon.stop() == 0
    second_daemon = other_home()
    assert imported(omnid_json("import", str(first_export)), "session") == (2, 0, {})
    second_export = tmp_path / "second.jsonl"
    ok("export", "-o", str(second_export))
    assert second_export.read_bytes() == first_export.read_bytes()
    with second_daemon.client() as c2:
        assert (c2.get(sid), c2.session_owners(sid)) == before
        assert [s.session_id for s in c2.list_sessions(tag="a", archived="include").sessions] == [sid]
        third = spawn_owner()  # the key works in the new home: it names the imported session
        resumed = c2.get_or_create(TOOL, pid=third.pid, resume_key="instance-1", resume_ended=True)
        assert (resumed.status, resumed.session.session_id) == ("resumed", sid)
        assert resumed.session.archived_at is None and resumed.session.tags == ["a", "b"]
        assert [o.pid for o in c2.session_owners(sid).owners] == [first.pid, second.pid, third.pid]


# --- round trip over batch boundaries ----------------------------------------------------

MESSAGE_COUNTS = (0, 1, 4_999, 5_000, 5_001, 12_000)
"""Around an import batch (5,000 records, the session's record included in the first) and
well over two of them."""


def corpus(root: str) -> list[Any]:
    """An export, in the export's own order and encoding, of sessions with the message
    counts above (with every context kind, session memories, tasks with interactions) and
    project memories with versions and TTLs."""
    from omnid_client.protocol import ContextRecord, InteractionRecord, MemoryVersionRecord, SessionMemoryRecord

    project = project_id_for(root)
    future = time.time() + 30 * 86400
    records: list[Any] = [ExportHeader(), ProjectRecord(project, root, "corpus", "git", 1_000.0, 90_000.0)]
    records += [
        MemoryRecord("mem_00000000000a", project, "style", {"line": 100}, {"by": "b"}, 3, 1_000.0, 1_300.5,
                     future, 4, 1_400.0),
        MemoryVersionRecord("mem_00000000000a", 1, "black", {}, 1_000.0, None),
        MemoryVersionRecord("mem_00000000000a", 2, ["ruff", "black"], {"n": 2}, 1_200.25, future - 60),
        MemoryVersionRecord("mem_00000000000a", 3, {"line": 100}, {"by": "b"}, 1_300.5, future),
        MemoryRecord("mem_00000000000b", project, "note ü", "plain", {}, 1, 2_000.0, 2_000.0, None, 0, None),
        MemoryVersionRecord("mem_00000000000b", 1, "plain", {}, 2_000.0, None),
    ]
    kinds = ("file_access", "search", "decision", "memory_ref", "file_change")
    for n, count in enumerate(MESSAGE_COUNTS):
        sid = f"00000000-0000-4000-8000-{n:012x}"
        start = 10_000.0 + n * 10_000
        messages = [
            MessageRecord(sid, seq, ("user", "assistant", "tool", "system")[seq % 4], f"message {seq} of {sid} ✓",
                          "text", {"i": seq} if seq % 1000 == 0 else {}, seq % 7, (seq % 5) * 1_000, start + seq * 0.25)
            for seq in range(1, count + 1)
        ]
        last = messages[-1].created_at if messages else start
        records.append(SessionRecord(
            sid, TOOL, "1.0", "default", None, None, None, True, root, {"n": n}, start, last + 1, last + 2, "ended",
            project, count, sum(m.tokens_used for m in messages), sum(m.cost_nanos for m in messages),
        ))
        records += [
            ContextRecord(sid, seq, kind, f"{root}/f{seq}.py" if "file" in kind else f"{kind} {seq}",
                          0.5 if kind == "file_access" else None, "why" if kind == "decision" else None, start + seq)
            for seq, kind in enumerate(kinds, 1)
        ]
        records += messages
        records.append(SessionMemoryRecord(f"smem_{n:012x}", sid, "insight", f"insight {n}", {}, start + 3))
        task = f"task_{n:016x}"
        records.append(TaskRecord(task, sid, f"task {n}", "done", None, {"t": n}, start + 4, start + 5, start + 5))
        records += [InteractionRecord(task, seq, "step", f"step {seq}", {}, start + 4 + seq / 10) for seq in (1, 2)]
    return records


def test_export_import_export_is_exact_across_import_batches(daemon, client, home, tmp_path):
    root = str(repo(tmp_path / "corpus"))
    source = write_jsonl(tmp_path / "corpus.jsonl", corpus(root))

    result = omnid_json("import", str(source))
    assert imported(result, "message") == (sum(MESSAGE_COUNTS), 0, {})
    assert imported(result, "session") == (len(MESSAGE_COUNTS), 0, {})
    assert imported(result, "memory_version") == (4, 0, {}) and imported(result, "interaction") == (12, 0, {})

    exported = tmp_path / "exported.jsonl"
    ok("export", "-o", str(exported))
    a, b = lines_of(source), lines_of(exported)
    assert len(a) == len(b)
    # record for record, byte for byte
    assert [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y][:5] == []

    totals = {s.session_id: (s.message_count, s.total_tokens) for s in client.list_sessions(limit=50).sessions}
    assert sorted(n for n, _ in totals.values()) == sorted(MESSAGE_COUNTS)  # 12,000 stays 12,000
    stats = client.stats()
    assert stats.messages == sum(MESSAGE_COUNTS) == db_rows(home / "omnid.db", "SELECT count(*) FROM messages")[0][0]
    assert stats.total_tokens == db_rows(home / "omnid.db", "SELECT sum(tokens_used) FROM messages")[0][0]
    assert round(stats.total_cost * 1e9) == db_rows(home / "omnid.db", "SELECT sum(cost_nanos) FROM messages")[0][0]

    again = omnid_json("import", str(exported))  # nothing new, and the totals do not move
    assert all(c["imported"] == 0 for c in again["records"].values())
    assert client.stats().messages == sum(MESSAGE_COUNTS)


def test_imported_live_sessions_bound_to_processes_the_importer_does_not_own_come_in_ended(
    daemon, client, home, tmp_path, spawn_owner
):
    """An export file can name any running process as a live session's owner, identity and
    all: one of another user's (here ``nobody``'s), init, or the daemon itself must not
    get a session bound to it that way; the importer's own running process still may."""
    from omnid.identity import inspect

    nobody = spawn_owner(user=65534)
    mine = spawn_owner()
    owners = {"nobody": nobody.pid, "init": 1, "daemon": daemon.pid, "mine": mine.pid}
    records: list[Any] = [ExportHeader()]
    ids = {}
    for n, (name, pid) in enumerate(owners.items()):
        identity = inspect(pid).identity
        ids[name] = f"77777777-0000-4000-8000-00000000000{n}"
        records.append(SessionRecord(
            ids[name], TOOL, None, "default", identity.pid, identity.start, identity.boot_id, True, None, {},
            1.0, 2.0, None, None, None, 0, 0, 0,
        ))
    path = write_jsonl(tmp_path / "planted.jsonl", records)

    out = run_omnid("import", str(path), "--json")
    assert out.returncode == 0, out.stderr
    result = msgspec.json.decode(out.stdout)
    assert sorted(result["reaped"]) == sorted(ids[n] for n in ("nobody", "init", "daemon"))
    assert "belongs to uid 65534" in result["why"][ids["nobody"]]
    assert "init process" in result["why"][ids["init"]]
    assert "omnid daemon itself" in result["why"][ids["daemon"]]
    for name in ("nobody", "init", "daemon"):
        assert client.get(ids[name]).end_reason == "reaped", name
    assert client.get(ids["mine"]).live, "a live session of the importer's own running process stays live"
    assert client.status().watched_processes == 1
    assert f"ended live session {ids['nobody']}: process {nobody.pid} belongs to uid 65534" in daemon.log_text()
