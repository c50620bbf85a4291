"""The optional local embedder: a model2vec static model (the ``embed`` extra) named by the
``embedding_model`` setting, loaded and run in a thread of its own, never on the event loop.

Nothing here imports model2vec (or numpy) until a request needs an embedding with a model
configured. The model's files are opened without following links and read whole, so the
model is built from bytes omnid checked, and model2vec never looks anything up online."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from omnid_client.errors import Unsupported

from ..safefile import UnsafePath, directory_problem, open_private, os_message

log = logging.getLogger("omnid.embedder")

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
"""What ``StaticModel.save_pretrained`` writes that a model needs (its README is left unread)."""
MAX_MODEL_BYTES = 4 << 30


class ModelError(Exception):
    """The configured directory is no usable model; the message says why and what to do."""


def _read(directory: str, name: str) -> bytes:
    path = os.path.join(directory, name)
    try:
        fd = open_private(path, os.O_RDONLY, owned=False)
    except FileNotFoundError:
        raise ModelError(f"{directory} is not a model2vec model directory: it has no {name}") from None
    except OSError as e:
        raise ModelError(f"cannot read {path}: {os_message(e)}") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_MODEL_BYTES + 1)
    if len(data) > MAX_MODEL_BYTES:
        raise ModelError(f"{path} is over {MAX_MODEL_BYTES >> 30} GiB; omnid loads smaller models only")
    return data


def load_model(directory: str) -> Any:
    """A model2vec StaticModel from ``directory`` (ModelError if it is not one, or the
    ``embed`` extra is not installed). Blocking: call it in the embedder's thread."""
    problem = directory_problem(directory)
    if problem is not None:
        raise ModelError(f"{directory} {problem}")
    raw = {name: _read(directory, name) for name in MODEL_FILES}
    try:
        import safetensors.numpy
        from model2vec import StaticModel
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ModelError(
            f"embedding_model needs the embed extra (pip install 'omnid[embed]'): cannot import {e.name}"
        ) from None
    try:
        config = json.loads(raw["config.json"])
        tensors = safetensors.numpy.load(raw["model.safetensors"])
        tokenizer = Tokenizer.from_str(raw["tokenizer.json"].decode())
        vectors = tensors["embeddings"]
        if not isinstance(config, dict) or vectors.ndim != 2:
            raise ValueError("config.json is no object, or the embeddings are not a matrix")
        return StaticModel(
            vectors=vectors, tokenizer=tokenizer, config=config, normalize=bool(config.get("normalize", True)),
            weights=tensors.get("weights"), token_mapping=tensors.get("mapping"),
        )
    except Exception as e:  # the files are the user's: anything in them can be wrong
        raise ModelError(f"{directory} is not a usable model2vec model: {type(e).__name__}: {e}") from None


class Embedder:
    """Embeds text with the configured model, one request at a time in one worker thread."""

    def __init__(self, model_path: Callable[[], str | None]):
        self._model_path = model_path
        self._pool: ThreadPoolExecutor | None = None
        self._model: tuple[str, Any] | None = None
        self._failed: tuple[str, str] | None = None

    @property
    def error(self) -> str | None:
        """Why the configured model could not be used when a request last needed it."""
        failed = self._failed
        return failed[1] if failed is not None and failed[0] == self._model_path() else None

    def configured(self) -> bool:
        return self._model_path() is not None

    def embed(self, text: str, field: str) -> asyncio.Future[list[float]]:
        """The embedding of ``text`` (a future resolved from the worker thread); Unsupported
        when no model is configured (naming the request's ``field``) or the configured one
        cannot be loaded."""
        path = self._model_path()
        if path is None:
            raise Unsupported(
                "no embedding model is configured: set embedding_model in config.toml to a model2vec model "
                "directory (and pip install 'omnid[embed]'), or pass a vector",
                {"field": field, "setting": "embedding_model"},
            )
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="omnid-embed")
        return asyncio.wrap_future(self._pool.submit(self._embed, path, text))

    def _embed(self, path: str, text: str) -> list[float]:
        model = self._model[1] if self._model is not None and self._model[0] == path else None
        if model is None:
            try:
                model = load_model(path)
            except (ModelError, UnsafePath) as e:
                if self._failed != (path, str(e)):
                    log.error("embedding_model: %s", e)
                self._failed = (path, str(e))
                raise Unsupported(f"the embedding model cannot be used: {e}", {"embedding_model": path}) from None
            self._model, self._failed = (path, model), None
            log.info("embedding_model %s loaded (%d dimensions)", path, model.dim)
        return [float(x) for x in model.encode([text])[0]]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
