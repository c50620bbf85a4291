"""context.pack against a real daemon: what goes in, in which order, that it never exceeds
its budget by the counter in use (the daemon's estimate or the caller's), and that the
CLI and the clients give the same pack."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest

from omnid.cli._style import iso_times
from omnid_client import AsyncClient, Client, Invalid, NotFound
from omnid_client.packing import estimate_tokens, repack
from omnid_client.protocol import ContextEvent, ContextPack, NewMessage, Session
from tests.helpers import omnid_error, omnid_json, omnid_ok, start, wait_for


def section(pack: ContextPack, name: str):
    return next(s for s in pack.sections if s.name == name)


def refs(pack: ContextPack, name: str) -> list[str]:
    return [i.ref for i in section(pack, name).items]


@pytest.fixture
def filled(client: Client, tmp_path: Path) -> Session:
    """A session with a title, goal and summary, files, decisions, searches, memories,
    tasks and messages."""
    s = start(client, tmp_path, title="Fix the parser", goal="Parse nested lists", summary="Found the bug in lexer.py")
    sid = s.session_id
    client.append_context(sid, [
        ContextEvent("file_access", "/src/old.py", 0.7),
        ContextEvent("search", "nested list"),
        ContextEvent("decision", "Use a stack", detail="recursion overflows"),
        ContextEvent("file_access", "/src/lexer.py", 0.6),
        ContextEvent("file_access", "/src/lexer.py", 0.8),
        ContextEvent("file_change", "/src/lexer.py", detail="edit"),
        ContextEvent("file_access", "/src/util.py", 0.1),
        ContextEvent("search", "nested list"),
        ContextEvent("decision", "Use a stack", detail="recursion overflows"),
        ContextEvent("decision", "Keep the old API"),
    ])
    client.append_context(sid, [ContextEvent("search", "tokenizer")])  # later: one batch shares one time
    client.put_memory("style", "tabs, not spaces", workspace=str(tmp_path))
    client.put_memory("build", {"cmd": "make"}, workspace=str(tmp_path))
    for _ in range(3):
        client.get_memory("build", workspace=str(tmp_path))
    done = client.create_task(sid, "Write the test")
    client.update_task(done.task_id, status="done")
    client.create_task(sid, "Fix nested lists")
    client.add_messages(sid, [NewMessage("user", f"message {n}") for n in range(8)])
    return s


def test_pack_holds_each_section_in_order_and_counts_what_it_left_out(client, filled, tmp_path):
    pack = client.pack_context(filled.session_id, budget_tokens=100_000, max_messages=3)
    names = [s.name for s in pack.sections]
    assert names == ["session", "files", "decisions", "searches", "memories", "tasks", "messages"]
    assert (pack.title, pack.goal, pack.summary) == (
        "Fix the parser", "Parse nested lists", "Found the bug in lexer.py"
    )
    assert pack.markdown.startswith(
        "## Session\n- **Title:** Fix the parser\n- **Goal:** Parse nested lists\n"
        "- **Summary:** Found the bug in lexer.py\n"
    )
    # One entry per path (reads and changes together), the most important first.
    assert refs(pack, "files") == ["/src/lexer.py", "/src/old.py", "/src/util.py"]
    assert "changed 1x (edit)" in section(pack, "files").items[0].text
    assert refs(pack, "decisions") == ["Keep the old API", "Use a stack"]
    assert section(pack, "decisions").omitted == 1  # the repeated decision
    assert refs(pack, "searches") == ["tokenizer", "nested list"]
    assert section(pack, "searches").items[1].text == "`nested list` (2x)"
    assert refs(pack, "memories") == ["build", "style"]  # the most read first
    assert refs(pack, "tasks") == [t.ref for t in section(pack, "tasks").items]
    assert [i.text.split(" (")[0] for i in section(pack, "tasks").items] == ["Fix nested lists"]
    msgs = section(pack, "messages")
    assert (msgs.available, len(msgs.items), msgs.omitted) == (8, 3, 5)
    # The Markdown shows the last messages oldest first.
    assert pack.markdown.endswith(
        "## Last messages\n- **user:** message 5\n- **user:** message 6\n- **user:** message 7\n"
    )
    assert pack.tokens == estimate_tokens(pack.markdown) <= pack.budget_tokens
    assert pack.counter == "utf8_bytes/4"
    # Same data, same pack.
    assert client.pack_context(filled.session_id, budget_tokens=100_000, max_messages=3) == pack


def test_budgets_zero_tiny_and_huge(client, filled):
    sid = filled.session_id
    zero = client.pack_context(sid, budget_tokens=0)
    assert (zero.markdown, zero.tokens) == ("", 0)
    assert all(not s.items and s.omitted == s.available for s in zero.sections)
    tiny = client.pack_context(sid, budget_tokens=12)
    assert 0 < tiny.tokens <= 12 and tiny.markdown.startswith("## Session\n")
    huge = client.pack_context(sid, budget_tokens=10_000_000)
    assert all(s.omitted == s.available - len(s.items) for s in huge.sections)
    assert len(section(huge, "messages").items) == 5  # the cap, not the budget, stopped it
    previous = -1
    for budget in range(0, huge.tokens + 20, 7):
        pack = client.pack_context(sid, budget_tokens=budget)
        assert pack.tokens == estimate_tokens(pack.markdown) <= budget
        assert pack.tokens >= previous  # a bigger budget never packs less
        previous = pack.tokens
        # Every section's entries are a prefix of what the huge budget packs.
        for s, h in zip(pack.sections, huge.sections, strict=True):
            assert [i.ref for i in s.items] == [i.ref for i in h.items][: len(s.items)]
    assert previous == huge.tokens


def superadditive(text: str) -> int:
    """A counter that counts the whole as more than its parts: assembly by the sum of the
    parts alone would overshoot it."""
    lines = text.count("\n")
    return len(text) // 3 + lines * lines


def test_a_custom_counter_is_never_exceeded(client, filled):
    sid = filled.session_id
    huge = client.pack_context(sid, budget_tokens=10_000_000, counter=superadditive, counter_name="sq")
    assert huge.counter == "sq" and huge.tokens == superadditive(huge.markdown)
    for budget in (0, 1, 5, 40, 100, 200, 400, huge.tokens - 1, huge.tokens):
        pack = client.pack_context(sid, budget_tokens=budget, counter=superadditive)
        assert pack.tokens == superadditive(pack.markdown) <= budget
        assert all(i.tokens == superadditive(f"- {i.text}\n") for s in pack.sections for i in s.items)
    assert client.pack_context(sid, budget_tokens=huge.tokens, counter=superadditive).markdown == huge.markdown
    # With the daemon's own estimate as the counter, the client assembles the daemon's pack.
    for budget in (0, 30, 150, 10_000):
        mine = client.pack_context(sid, budget_tokens=budget, counter=estimate_tokens, counter_name="utf8_bytes/4")
        assert mine == client.pack_context(sid, budget_tokens=budget)


def test_the_async_client_packs_the_same(daemon, filled):
    async def main() -> tuple[ContextPack, ContextPack]:
        async with AsyncClient(daemon.paths.socket) as c:
            return (
                await c.pack_context(filled.session_id, budget_tokens=150),
                await c.pack_context(filled.session_id, budget_tokens=150, counter=superadditive),
            )

    plain, custom = asyncio.run(main())
    with daemon.client() as c:
        assert plain == c.pack_context(filled.session_id, budget_tokens=150)
        assert custom == c.pack_context(filled.session_id, budget_tokens=150, counter=superadditive)
    assert repack(plain, 150, superadditive).tokens <= 150


def test_expired_and_checkpoint_memories_are_never_packed(client, tmp_path):
    s = start(client, tmp_path)
    ws = str(tmp_path)
    client.put_memory("soon-gone", "x", workspace=ws, ttl=0.3)
    for _ in range(5):
        client.get_memory("soon-gone", workspace=ws)
    client.put_memory("kept", "y", workspace=ws)
    client.create_checkpoint(s.session_id, "cp")
    assert "soon-gone" in refs(client.pack_context(s.session_id), "memories")

    def expired() -> bool:
        try:
            client.get_memory("soon-gone", workspace=ws)
        except NotFound:
            return True
        return False

    wait_for(expired, what="the memory to expire")
    pack = client.pack_context(s.session_id, budget_tokens=100_000)
    assert refs(pack, "memories") == ["kept"]
    assert section(pack, "memories").available == 1
    assert "soon-gone" not in pack.markdown and "checkpoint/" not in pack.markdown


def test_a_project_pack_uses_its_latest_session(client, tmp_path):
    first = start(client, tmp_path)
    client.append_context(first.session_id, [ContextEvent("file_access", "/first.py")])
    client.create_task(first.session_id, "From the first session")
    latest = start(client, tmp_path, title="Latest")
    client.append_context(latest.session_id, [ContextEvent("file_access", "/latest.py")])
    pack = client.pack_context(workspace=str(tmp_path), budget_tokens=10_000)
    assert pack.session_id == latest.session_id and pack.title == "Latest"
    assert refs(pack, "files") == ["/latest.py"]
    assert refs(pack, "tasks") != []  # open tasks of every session of the project
    empty_dir = tmp_path / "other"
    empty_dir.mkdir()
    client.put_memory("m", "v", workspace=str(empty_dir))
    lonely = client.pack_context(workspace=str(empty_dir))
    assert lonely.session_id is None and refs(lonely, "memories") == ["m"]


def test_bad_requests_get_typed_errors(client, filled, tmp_path):
    with pytest.raises(Invalid):
        client.pack_context(filled.session_id, workspace=str(tmp_path))
    with pytest.raises(NotFound):
        client.pack_context("00000000-0000-4000-8000-000000000000")
    with pytest.raises(Invalid):
        client.pack_context(filled.session_id, budget_tokens=-1)
    with pytest.raises(Invalid):
        client.pack_context(filled.session_id, max_files=10_000)
    assert client.pack_context(filled.session_id, max_item_chars=16).tokens > 0


def test_cli_prints_the_same_pack_as_the_client(client, filled, tmp_path):
    sid = filled.session_id
    for budget in (0, 25, 300, 100_000):
        pack = client.pack_context(sid, budget_tokens=budget)
        assert omnid_ok("context", "pack", "--session", sid, "--budget", str(budget)) == pack.markdown
        assert omnid_ok("context", "pack", "--session", sid, "--budget", str(budget), "--markdown") == pack.markdown
        assert omnid_json("context", "pack", "--session", sid, "--budget", str(budget)) == json.loads(
            msgspec.json.encode(iso_times(pack))  # as printed: times in ISO 8601
        )
    # Without --session: the current directory's project, through its latest session.
    assert omnid_ok("context", "pack", cwd=tmp_path) == client.pack_context(workspace=str(tmp_path)).markdown
    assert omnid_error("context", "pack", "--session", "00000000-0000-4000-8000-000000000000")["code"] == "not_found"
    # The plain view still answers to `omnid context SESSION_ID`.
    assert omnid_json("context", sid)["session_id"] == sid


def test_the_pack_shows_the_title_session_update_sets(client, tmp_path):
    """The session's own title field wins over a "title" in its metadata; goal and summary
    come from its metadata, as session.update sets them."""
    s = start(client, tmp_path, title="From metadata", goal="First goal")
    assert client.pack_context(s.session_id).title == "From metadata"
    client.update_session(s.session_id, title="Set by update", metadata={"summary": "Halfway", "goal": "Second goal"})
    pack = client.pack_context(s.session_id)
    assert (pack.title, pack.goal, pack.summary) == ("Set by update", "Second goal", "Halfway")
    assert pack.markdown.index("Set by update") < pack.markdown.index("Second goal") < pack.markdown.index("Halfway")
    assert "From metadata" not in pack.markdown
    client.update_session(s.session_id, title="")  # removing the title shows the metadata's again
    assert client.pack_context(s.session_id).title == "From metadata"
