"""The daemon's own embedder against a real daemon: a tiny model2vec model built here (no
network) embeds memories stored without a vector and text queries; without a model, or with
a broken one, text queries are typed errors and the daemon goes on serving, never importing
model2vec unless a model is configured."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from omnid_client import AsyncClient, Invalid, Unsupported
from tests.helpers import DaemonProcess, omnid_error, omnid_json, omnid_ok, run_omnid, start, wait_for

WORDS = ["hello", "world", "reaper", "watches", "pidfds", "sqlite", "stores", "rows", "the"]
DIM = 8


def build_model(directory: Path):
    """A model2vec static model of a few words with random vectors, saved as model2vec saves."""
    np = pytest.importorskip("numpy")
    model2vec = pytest.importorskip("model2vec")
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    vectors = np.random.default_rng(5).standard_normal((len(vocab), DIM)).astype(np.float32)
    model = model2vec.StaticModel(vectors, tokenizer, normalize=True)
    model.save_pretrained(str(directory))
    return model


@pytest.fixture
def model_dir(tmp_path) -> Path:
    directory = tmp_path / "tiny-model"
    build_model(directory)
    return directory


def configure(home: Path, model: Path | str) -> None:
    (home / "config.toml").write_text(f'embedding_model = "{model}"\n')


def doctor_check(name: str) -> dict:
    report = json.loads(run_omnid("doctor", "--json").stdout)
    return next(c for c in report["checks"] if c["name"] == name)


def mapped_libraries(pid: int) -> str:
    """The shared objects and files the process has mapped: numpy's and tokenizers' native
    modules show up here once they are imported."""
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture
def embedding_daemon(home, model_dir):
    configure(home, model_dir)
    d = DaemonProcess(home).start()
    yield d
    assert d.stop() == 0, d.log_text()
    assert "Traceback" not in d.log_text()


def test_memories_stored_without_a_vector_get_one_and_a_text_query_finds_them(embedding_daemon, model_dir, tmp_path):
    model = build_model(tmp_path / "same-model")  # the same seed: the same vectors as the daemon's
    with embedding_daemon.client() as client:
        s = start(client, tmp_path / "ws")
        where = {"project_id": s.project_id}
        hello = client.put_memory("greeting", "hello world", **where)
        client.put_memory("reaping", "the reaper watches pidfds", **where)
        note = client.add_session_memory(s.session_id, "sqlite stores rows")
        client.put_memory("unknown words", "zzz qqq", **where)  # the model knows none: stored, no vector

        found = client.search_similar(text="hello world", k=3, **where)
        assert found.dim == DIM and found.scanned == 3
        assert found.hits[0].memory_id == hello.memory_id and found.hits[0].score == pytest.approx(1.0)
        assert client.search_similar(text="sqlite rows", k=1, **where).hits[0].memory_id == note.memory_id

        # Deterministic: the daemon's vector is the model's own, and the same text again is the same.
        query = [float(x) for x in model.encode(["the reaper watches pidfds"])[0]]
        by_vector = client.search_similar(query, k=1, **where)
        assert by_vector.hits[0].memory.key == "reaping" and by_vector.hits[0].score == pytest.approx(1.0)
        again = client.put_memory("greeting again", "hello world", **where)
        top = client.search_similar(text="hello world", k=2, **where)
        assert {h.memory_id for h in top.hits} == {hello.memory_id, again.memory_id}
        assert {h.score for h in top.hits} == {top.hits[0].score}

        # A vector the caller gives wins over the model's.
        mine = client.put_memory("mine", "hello world", embedding=[-x for x in query], **where)
        assert client.search_similar([-x for x in query], k=1, **where).hits[0].memory_id == mine.memory_id

        with pytest.raises(Invalid) as e:
            client.search_similar(text="zzz", **where)
        assert "none of the words" in str(e.value)
        with pytest.raises(TypeError):
            client.search_similar([1.0] * DIM, text="hello", **where)
        assert client.status().embedding_model_error is None
        assert "numpy" in mapped_libraries(embedding_daemon.pid)  # what the test without a model looks for

        async def by_text() -> str:
            async with AsyncClient(socket_path=str(embedding_daemon.socket)) as aio:
                return (await aio.search_similar(text="hello world", k=1, **where)).hits[0].memory_id

        assert asyncio.run(by_text()) in {hello.memory_id, again.memory_id}
    check = doctor_check("embedding")
    assert check["state"] == "ok" and f"{DIM} dimensions" in check["message"]
    cli = omnid_json("memories", "similar", "--text", "sqlite rows", "-k", "1", "--project", s.project_id)
    assert cli["hits"][0]["memory_id"] == note.memory_id


def test_the_model_must_fit_the_projects_dimension(embedding_daemon, tmp_path):
    with embedding_daemon.client() as client:
        s = start(client, tmp_path / "ws")
        where = {"project_id": s.project_id}
        client.put_memory("two dims", "x", embedding=[1.0, 0.0], **where)
        with pytest.raises(Invalid) as e:
            client.search_similar(text="hello world", **where)
        assert f"embedding_model gives {DIM} dimensions" in str(e.value) and "2 dimensions" in str(e.value)
        # A write is never lost to the model: stored without a vector, and the log says why.
        client.put_memory("words", "hello world", **where)
        note = client.add_session_memory(s.session_id, "hello world")
        assert sorted(m.key for m in client.list_memories(**where)) == ["two dims", "words"]
        assert note.content == "hello world"
        found = client.search_similar([1.0, 0.0], k=10, kinds=["memory", "session_memory"], **where)
        assert found.scanned == 1 and [h.memory.key for h in found.hits if h.memory] == ["two dims"], (
            "the two the model could not embed have no vector"
        )
    wait_for(lambda: f"gives {DIM} dimensions but the project holds vectors of 2" in embedding_daemon.log_text(),
             what="the warning in the log")


def test_without_a_model_text_queries_are_refused_and_model2vec_is_never_loaded(daemon, client, tmp_path):
    s = start(client, tmp_path / "ws")
    where = {"project_id": s.project_id}
    client.put_memory("plain", "hello world", **where)
    assert client.search_similar([1.0, 0.0], **where).dim is None  # stored without a vector
    client.put_memory("vec", "v", embedding=[1.0, 0.0], **where)
    with pytest.raises(Unsupported) as e:
        client.search_similar(text="hello world", **where)
    assert "embedding_model" in str(e.value) and "config.toml" in str(e.value)
    with pytest.raises(Invalid):
        client._call(_raw_search(where))  # neither vector nor text on the wire
    maps = mapped_libraries(daemon.pid)
    assert "numpy" not in maps and "tokenizers" not in maps and "safetensors" not in maps
    err = omnid_error("memories", "similar", "--text", "hello", "--project", s.project_id)
    assert err["code"] == "unsupported" and "embedding_model" in err["message"]


def _raw_search(where: dict):
    from omnid_client._calls import Call
    from omnid_client.protocol import SearchSimilar, SimilarMemories

    return Call("memories.search_similar", SearchSimilar(project_id=where["project_id"]), SimilarMemories)


def test_a_broken_model_is_a_typed_error_and_the_daemon_goes_on(home, start_daemon, model_dir, tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    configure(home, empty)
    d = start_daemon()
    with d.client() as client:
        s = start(client, tmp_path / "ws")
        where = {"project_id": s.project_id}
        with pytest.raises(Unsupported) as e:
            client.search_similar(text="hello", **where)
        assert "not a model2vec model directory: it has no config.json" in str(e.value)
        # A put is never lost to a broken model: it is stored, without a vector.
        assert client.put_memory("k", "hello world", **where).key == "k"
        assert client.get_memory("k", **where).value == "hello world"
        assert "config.json" in (client.status().embedding_model_error or "")
        assert client.put_memory("k", "v", embedding=[1.0, 0.0], **where).key == "k"  # still serving
        assert f"{empty} (UNUSABLE: " in omnid_ok("status")
        assert doctor_check("embedding")["state"] == "fail"

        # A planted link inside the model directory is not followed.
        (empty / "config.json").symlink_to(model_dir / "config.json")
        for name in ("model.safetensors", "tokenizer.json"):
            os.link(model_dir / name, empty / name)
        with pytest.raises(Unsupported) as e:
            client.search_similar(text="hello", **where)
        assert "symlink" in str(e.value)

        # A link as the directory itself, or a relative path: the config is refused, the last settings stay.
        link = tmp_path / "link-to-model"
        link.symlink_to(model_dir)
        for value, words in ((link, "not a directory"), ("relative/model", "relative path")):
            configure(home, value)
            wait_for(lambda: client.status().config_state == "invalid", what="the config to be refused")
            assert words in (client.status().config_error or "")
            (home / "config.toml").unlink()
            wait_for(lambda: client.status().config_state == "default", what="the defaults")

        # Fixed while running: the next request loads the model.
        configure(home, model_dir)
        wait_for(lambda: client.status().settings.embedding_model == str(model_dir), what="the new setting")
        with pytest.raises(Invalid) as e:  # loaded: its 8 dimensions do not fit this project's 2
            client.search_similar(text="hello world", **where)
        assert f"gives {DIM} dimensions" in str(e.value)
        assert client.status().embedding_model_error is None

