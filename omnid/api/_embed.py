"""Embeddings the daemon computes itself, with the configured ``embedding_model``: the
vector of a memory stored without one, and of a text query."""

from __future__ import annotations

import array
import logging
import sqlite3
from typing import Any

import msgspec

from omnid_client.errors import Invalid, Unsupported

from ..store import vectors as vector_store
from ._context import Context

log = logging.getLogger("omnid.embed")
_warned: set[tuple[str, int]] = set()


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
    vector = await ctx.embedder.embed(text, field)
    if not any(vector):
        return None
    return vector_store.unit_vector(vector, field)


async def stored_vector(ctx: Context, text: str, field: str) -> array.array | None:
    """The model's vector for a memory being stored, or None when the model cannot be used
    now: the memory is stored all the same, without a vector (a write is never lost to an
    embedding), and status and doctor say what is wrong with the model."""
    try:
        return await embed(ctx, text, field)
    except Unsupported as e:
        log.debug("stored without a vector: %s", e)
        return None


def _misfit(db: sqlite3.Connection, project_id: str, unit: array.array) -> int | None:
    """The project's dimension if the model's vector ``unit`` has another (None: it fits)."""
    found = vector_store.project_dim(db, project_id)
    return found if found is not None and found != len(unit) else None


def fits_project(db: sqlite3.Connection, project_id: str, unit: array.array) -> bool:
    """Whether the model's vector fits the project's dimension; if not, the memory is stored
    without one, and the log says why (once per project and dimension)."""
    found = _misfit(db, project_id, unit)
    if found is None:
        return True
    if (project_id, found) not in _warned:
        _warned.add((project_id, found))
        log.warning(
            "memories of project %s are stored without vectors: the embedding_model gives %d dimensions "
            "but the project holds vectors of %d", project_id, len(unit), found,
        )
    return False


def check_model_dim(db: sqlite3.Connection, project_id: str, unit: array.array) -> None:
    """Invalid, in words, when the model's vectors do not fit the project's dimension."""
    found = _misfit(db, project_id, unit)
    if found is not None:
        raise Invalid(
            f"the configured embedding_model gives {len(unit)} dimensions but project {project_id} holds vectors "
            f"of {found} dimensions: configure a model of {found} dimensions, or pass vectors yourself",
            {"field": "embedding_model", "dim": len(unit), "project_dim": found, "project_id": project_id},
        )
