"""Semantic search over memories: the k stored embeddings nearest a query vector by cosine."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from .content import Memory, SessionMemory
from .fields import Embedding, PathText, ProjectId

MAX_QUERY_TEXT = 64 << 10
"""Longest text query, in characters: a static model reads only its first tokens anyway."""

VectorKind = Literal["memory", "session_memory"]
VectorEngine = Literal["auto", "python", "sqlite-vec"]
"""How a search is computed: "python" scans every vector in Python (exact, slow past a few
thousand), "sqlite-vec" in SQLite with the sqlite-vec extension (the ``vec`` extra);
"auto": the daemon's ``vector_engine`` setting."""


class SearchSimilar(Struct):
    vector: Embedding | None = None
    """The query; its length must be the project's dimension. Exactly one of this and ``text``."""
    k: Annotated[int, Meta(ge=1, le=1000)] = 10
    project_id: ProjectId | None = None
    workspace: PathText | None = None
    min_score: Annotated[float, Meta(ge=-1, le=1)] | None = None
    """Leave out hits whose cosine similarity is below this."""
    kinds: list[VectorKind] | None = None
    """Project memories, session memories (of the project's sessions), or both (None)."""
    engine: VectorEngine = "auto"
    text: Annotated[str, Meta(min_length=1, max_length=MAX_QUERY_TEXT)] | None = None
    """A query in words, embedded by the daemon's ``embedding_model`` (Unsupported without one)."""


class SimilarHit(Struct):
    kind: VectorKind
    memory_id: str
    score: float
    """Cosine similarity, -1 to 1: 1 is the same direction."""
    memory: Memory | None = None
    """The project memory (kind "memory"); reading it here is no access."""
    session_memory: SessionMemory | None = None
    """The session memory (kind "session_memory")."""


class SimilarMemories(Struct):
    hits: list[SimilarHit]
    """Best first; equal scores by memory id."""
    dim: int | None
    """The project's dimension (None: no vector stored in it yet)."""
    engine: Literal["python", "sqlite-vec", "none"]
    """What computed the search ("none": nothing to search)."""
    scanned: int = 0
    """Vectors compared with the query (live ones of the kinds asked for)."""
