"""Embeddings the daemon computes itself, with the configured ``embedding_model``: the
vector of a memory stored without one, and of a text query."""

from __future__ import annotations

import array
import asyncio
import sqlite3
from typing import Any

import msgspec

from omnid_client.errors import Invalid, StorageError

from ..store import vectors as vector_store
from ._context import Context


def will_embed(ctx: Context, given: object) -> bool:
    """True if a write given no embedding (``given`` None) gets one from the model."""
    return given is None and ctx.embedder is not None and ctx.embedder.configured()


def text_of(value: Any) -> str:
    """What a memory's value says, as the model reads it: a string as it is, else its JSON."""
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


async def embed(ctx: Context, text: str, field: str) -> array.array | None:
    """The unit vector of ``text`` (None: the model knows none of its words); Unsupported
    when no usable model is configured. Computed in the embedder's thread."""
    if ctx.embedder is None:  # (never in the daemon: offline tools have no embedder)
        raise Invalid("this process embeds no text; pass a vector", {"field": field})
    vector = await ctx.embedder.embed(text)
    if not any(vector):
        return None
    return vector_store.unit_vector(vector, field)


async def committed(ctx: Context) -> None:
    """Wait until the open transaction (holding this request's write) commits; its
    StorageError if it cannot. A reply from a handler that went on in the background is sent
    when the handler is done, so it must not be done before its write is durable."""
    waited: asyncio.Future[StorageError | None] = asyncio.get_running_loop().create_future()
    ctx.store.after_commit(waited.set_result)
    error = await waited
    if error is not None:
        raise error


def check_model_dim(db: sqlite3.Connection, project_id: str, unit: array.array) -> None:
    """Invalid, in words, when the model's vectors do not fit the project's dimension."""
    found = vector_store.project_dim(db, project_id)
    if found is not None and found != len(unit):
        raise Invalid(
            f"the configured embedding_model gives {len(unit)} dimensions but project {project_id} holds vectors "
            f"of {found} dimensions: configure a model of {found} dimensions, or pass vectors yourself",
            {"field": "embedding_model", "dim": len(unit), "project_dim": found, "project_id": project_id},
        )
