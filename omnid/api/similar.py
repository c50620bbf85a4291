"""memories.search_similar: the k project and session memories whose embeddings are nearest a query vector."""

from __future__ import annotations

import array
import asyncio

from omnid_client.errors import Invalid, Unsupported
from omnid_client.protocol import SearchSimilar, SimilarMemories

from ..store import vectors as vector_store
from ..store.similar import Query
from ._common import project_of
from ._context import Caller, Context
from ._dispatch import handles
from ._embed import check_model_dim, embed

KINDS = ("memory", "session_memory")


@handles("memories.search_similar")
def search_similar(ctx: Context, caller: Caller, p: SearchSimilar) -> SimilarMemories | asyncio.Future[SimilarMemories]:
    """Checked here, on the event loop; scored in the search thread (a scan of every vector
    of the project can take a while), so the reply comes when that is done. A text query
    is embedded first, in the embedder's thread."""
    if ctx.similar is None:
        raise Unsupported("this daemon runs no similarity search", {"method": "memories.search_similar"})
    if p.kinds is not None and not p.kinds:
        raise Invalid("kinds is empty: leave it out to search both kinds", {"field": "kinds"})
    if (p.vector is None) == (p.text is None):
        raise Invalid("give exactly one of vector and text as the query", {"field": "vector"})
    project_id = project_of(ctx, p.project_id, p.workspace, create=False)
    if p.vector is None:
        return asyncio.ensure_future(_by_text(ctx, p, project_id))
    return _search(ctx, p, project_id, vector_store.unit_vector(p.vector, "vector"))


async def _by_text(ctx: Context, p: SearchSimilar, project_id: str) -> SimilarMemories:
    assert p.text is not None
    query = await embed(ctx, p.text, "text")  # Unsupported without a usable model
    if query is None:
        raise Invalid("the embedding model knows none of the words of text: reword it", {"field": "text"})
    check_model_dim(ctx.store.db, project_id, query)
    found = _search(ctx, p, project_id, query)
    return found if isinstance(found, SimilarMemories) else await found


def _search(
    ctx: Context, p: SearchSimilar, project_id: str, query: array.array
) -> SimilarMemories | asyncio.Future[SimilarMemories]:
    assert ctx.similar is not None
    store = ctx.store
    dim = vector_store.project_dim(store.db, project_id)
    if dim is None:
        return SimilarMemories([], None, "none", 0)
    vector_store.check_dim(dim, len(query), project_id, "vector")
    engine, fallback = ctx.similar.plan(p.engine)
    kinds = tuple(k for k in KINDS if p.kinds is None or k in p.kinds)
    q = Query(query, project_id, kinds, p.k, p.min_score, store.now(), dim, engine)
    return asyncio.wrap_future(ctx.similar.submit(q, fallback))
