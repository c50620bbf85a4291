"""The async client's project and session memory methods, semantic search among them included."""

from __future__ import annotations

from typing import Any

from . import _calls
from ._async_connection import AsyncConnection
from ._calls import EmbeddingLike
from .protocol import Deleted, Memory, MemoryHistory, SessionMemory, SimilarMemories, VectorEngine, VectorKind


class AsyncMemoryMethods(AsyncConnection):
    async def put_memory(
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
        """As ``Client.put_memory``."""
        return await self._call(_calls.put_memory(
            key, value, project_id=project_id, workspace=workspace, metadata=metadata, ttl=ttl, embedding=embedding
        ))

    async def get_memory(self, key: str, *, project_id: str | None = None, workspace: str | None = None) -> Memory:
        return await self._call(_calls.get_memory(key, project_id=project_id, workspace=workspace))

    async def list_memories(
        self, *, project_id: str | None = None, workspace: str | None = None, limit: int = 50
    ) -> list[Memory]:
        """Live memories, most recently accessed first."""
        return await self._call(_calls.list_memories(project_id=project_id, workspace=workspace, limit=limit))

    async def delete_memory(self, key: str, *, project_id: str | None = None, workspace: str | None = None) -> Deleted:
        return await self._call(_calls.delete_memory(key, project_id=project_id, workspace=workspace))

    async def memory_history(
        self, key: str, *, project_id: str | None = None, workspace: str | None = None
    ) -> MemoryHistory:
        """Every version of a memory, oldest first."""
        return await self._call(_calls.memory_history(key, project_id=project_id, workspace=workspace))

    async def add_session_memory(
        self,
        session_id: str,
        content: str,
        *,
        memory_type: str = "note",
        metadata: dict[str, Any] | None = None,
        embedding: EmbeddingLike | None = None,
    ) -> SessionMemory:
        """As ``Client.add_session_memory``."""
        return await self._call(_calls.add_session_memory(
            session_id, content, memory_type=memory_type, metadata=metadata, embedding=embedding
        ))

    async def list_session_memories(self, session_id: str) -> list[SessionMemory]:
        return await self._call(_calls.list_session_memories(session_id))

    async def search_similar(
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
        """As ``Client.search_similar``."""
        return await self._call(_calls.search_similar(
            vector, text=text, k=k, project_id=project_id, workspace=workspace, min_score=min_score, kinds=kinds,
            engine=engine,
        ))
