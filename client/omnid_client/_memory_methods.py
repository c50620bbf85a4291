"""The blocking client's project and session memory methods, semantic search among them included."""

from __future__ import annotations

from typing import Any

from . import _calls
from ._calls import EmbeddingLike
from ._connection import Connection
from .protocol import Deleted, Memory, MemoryHistory, SessionMemory, SimilarMemories, VectorEngine, VectorKind


class MemoryMethods(Connection):
    def put_memory(
        self,
        key: str,
        value: Any,
        *,
        project_id: str | None = None,
        workspace: str | None = None,
        metadata: dict[str, Any] | None = None,
        ttl: float | None = None,
        embedding: EmbeddingLike | None = None,
    ) -> Memory:
        """Store ``value`` under ``key`` in a project (default: the one containing the current
        directory); an earlier value is kept as a version. ``ttl`` is in seconds. ``embedding``
        (floats, or packed little-endian float32) is found by ``search_similar``; a put
        without one drops the vector an earlier version had."""
        return self._call(_calls.put_memory(
            key, value, project_id=project_id, workspace=workspace, metadata=metadata, ttl=ttl, embedding=embedding
        ))

    def get_memory(self, key: str, *, project_id: str | None = None, workspace: str | None = None) -> Memory:
        return self._call(_calls.get_memory(key, project_id=project_id, workspace=workspace))

    def list_memories(
        self, *, project_id: str | None = None, workspace: str | None = None, limit: int = 50
    ) -> list[Memory]:
        """Live memories, most recently accessed first."""
        return self._call(_calls.list_memories(project_id=project_id, workspace=workspace, limit=limit))

    def delete_memory(self, key: str, *, project_id: str | None = None, workspace: str | None = None) -> Deleted:
        return self._call(_calls.delete_memory(key, project_id=project_id, workspace=workspace))

    def memory_history(
        self, key: str, *, project_id: str | None = None, workspace: str | None = None
    ) -> MemoryHistory:
        """Every version of a memory, oldest first."""
        return self._call(_calls.memory_history(key, project_id=project_id, workspace=workspace))

    def add_session_memory(
        self,
        session_id: str,
        content: str,
        *,
        memory_type: str = "note",
        metadata: dict[str, Any] | None = None,
        embedding: EmbeddingLike | None = None,
    ) -> SessionMemory:
        """A note in a session; ``embedding`` as for ``put_memory`` (its project's dimension)."""
        return self._call(_calls.add_session_memory(
            session_id, content, memory_type=memory_type, metadata=metadata, embedding=embedding
        ))

    def list_session_memories(self, session_id: str) -> list[SessionMemory]:
        return self._call(_calls.list_session_memories(session_id))

    def search_similar(
        self,
        vector: EmbeddingLike | None = None,
        *,
        text: str | None = None,
        k: int = 10,
        project_id: str | None = None,
        workspace: str | None = None,
        min_score: float | None = None,
        kinds: list[VectorKind] | None = None,
        engine: VectorEngine = "auto",
    ) -> SimilarMemories:
        """The ``k`` live project and session memories of a project whose embeddings are
        nearest ``vector`` by cosine, best first (equal scores by memory id). Or a ``text``
        query instead of the vector, which the daemon embeds with its ``embedding_model``
        (Unsupported when none is configured)."""
        return self._call(_calls.search_similar(
            vector, text=text, k=k, project_id=project_id, workspace=workspace, min_score=min_score, kinds=kinds,
            engine=engine,
        ))
