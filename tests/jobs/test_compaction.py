"""Compaction against a real daemon: old context events fold into per-subject totals in the
append that crosses the configured count, the view and the pack stay the same, and an
export round-trips the folded totals. (The 1M-event case is in bench/agent.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omnid_client import Client
from omnid_client.protocol import ContextEvent
from tests.helpers import DaemonProcess, db_rows, omnid_ok, wait_for

KEEP = 50


def events(n: int) -> list[ContextEvent]:
    """A mix of every kind, repeating subjects, with details and importances."""
    out = []
    for i in range(n):
        match i % 7:
            case 0 | 1 | 2:
                out.append(ContextEvent("file_access", f"/src/f{i % 83}.py", (i % 10) / 10))
            case 3:
                out.append(ContextEvent("file_change", f"/src/f{i % 41}.py", detail=f"edit {i}"))
            case 4:
                out.append(ContextEvent("search", f"query {i % 13}", detail=f"{i} hits"))
            case 5:
                out.append(ContextEvent("memory_ref", f"note/{i % 5}"))
            case _:
                out.append(ContextEvent("decision", f"decision {i % 11}", detail="why"))
    return out


def fill(client: Client, sid: str, n: int) -> None:
    batch = events(n)
    for start in range(0, n, 500):
        client.append_context(sid, batch[start : start + 500])


def view(client: Client, sid: str) -> dict:
    caps = ("max_files", "max_searches", "max_decisions", "max_memories", "max_changes")
    c = client.get_context(sid, **dict.fromkeys(caps, 1000))
    return {
        "files": c.files, "changes": c.changes, "searches": c.searches, "decisions": c.decisions,
        "memories": c.memories, "events": c.size.events, "bytes": c.size.bytes, "truncated": c.size.truncated,
    }


def test_folding_keeps_the_view_the_pack_and_the_export(home, tmp_path, monkeypatch):
    (home / "config.toml").write_text("context_keep_events = 0\n")
    d = DaemonProcess(home).start()
    try:
        with d.client() as client:
            sid = client.get_or_create("compact-test", workspace=str(tmp_path), dedup=False).session.session_id
            fill(client, sid, 9000)
            before, pack_before = view(client, sid), client.pack_context(sid, budget_tokens=5000)
            assert client.get_context(sid).size.folded == 0
            rows_before = db_rows(d.paths.database, "SELECT count(*) FROM context_events")[0][0]

            (home / "config.toml").write_text(f"context_keep_events = {KEEP}\n")
            wait_for(lambda: client.status().settings.context_keep_events == KEEP, what="the new setting")
            # The append that finds the session over the line folds, in its own transaction.
            client.append_context(sid, [ContextEvent("decision", "the last one")])
            after = view(client, sid)
            folded = client.get_context(sid).size.folded
            assert folded > 0
            rows_after = db_rows(d.paths.database, "SELECT count(*) FROM context_events")[0][0]
            assert rows_after == rows_before + 1 - folded
            # Files and changes fold to at most KEEP rows each; the newest 1000 searches and
            # memory refs, and every decision, stay rows.
            kinds = dict(db_rows(d.paths.database, "SELECT kind, count(*) FROM context_events GROUP BY kind"))
            assert kinds["file_access"] == KEEP and kinds["file_change"] == KEEP
            assert kinds["search"] == 1000 and kinds["memory_ref"] == 1000 and kinds["decision"] == 1285 + 1

            last = after["decisions"].pop(0)
            assert last.text == "the last one"
            assert after["events"] == before["events"] + 1
            assert after["bytes"] == before["bytes"] + len("the last one")
            for key in ("files", "changes", "searches", "memories", "truncated"):
                assert after[key] == before[key], key
            assert after["decisions"] == before["decisions"][: len(after["decisions"])]
            pack_after = client.pack_context(sid, budget_tokens=5000)
            assert [s for s in pack_after.sections if s.name == "files"] == [
                s for s in pack_before.sections if s.name == "files"
            ]
            assert "folded into per-file/per-query totals" in omnid_ok("context", sid)

            exported = tmp_path / "export.jsonl"
            omnid_ok("export", "--session", sid, "-o", str(exported))
            lines = [json.loads(line) for line in exported.read_text().splitlines()]
            folds = [r for r in lines if r["type"] == "context_fold"]
            assert sum(r["events"] for r in folds) == folded
            first_context = next(r for r in lines if r["type"] == "context")
            assert first_context["seq"] == folded + 1
    finally:
        d.stop()

    # Into a fresh home: the same view, and the same export byte for byte.
    other = Path(str(home) + "-import")
    other.mkdir()
    monkeypatch.setenv("OMNID_HOME", str(other))
    d2 = DaemonProcess(other).start()
    try:
        omnid_ok("import", str(exported))
        omnid_ok("import", str(exported))  # twice adds nothing
        with d2.client() as client:
            assert client.get_context(sid).size.folded == folded
            assert view(client, sid) == {**after, "decisions": [last, *after["decisions"]]}
        again = tmp_path / "again.jsonl"
        omnid_ok("export", "--session", sid, "-o", str(again))
        assert again.read_bytes() == exported.read_bytes()
    finally:
        d2.stop()
        shutil.rmtree(other, ignore_errors=True)
