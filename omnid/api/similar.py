"""memories.search_similar: the k project and session memories whose embeddings are nearest a query vector."""

from __future__ import annotations

import asyncio

from omnid_client.errors import Invalid, Unsupported
from omnid_client.protocol import SearchSimilar, SimilarMemories

from ..store import vectors as vector_store
from ..store.similar import Query
from ._common import project_of
from ._context import Caller, Context
from ._dispatch import handles

KINDS = ("memory", "session_memory")


@handles("memories.search_similar")
def search_similar(ctx: Context, caller: Caller, p: SearchSimilar) -> SimilarMemories | asyncio.Future[SimilarMemories]:
    """Checked here, on the event loop; scored in the search thread (a scan of every vector
    of the project can take a while), so the reply comes when that is done."""
    if ctx.similar is None:
        raise Unsupported("this daemon runs no similarity search", {"method": "memories.search_similar"})
    if p.kinds is not None and not p.kinds:
        raise Invalid("kinds is empty: leave it out to search both kinds", {"field": "kinds"})
    store = ctx.store
    project_id = project_of(ctx, p.project_id, p.workspace, create=False)
    query = vector_store.unit_vector(p.vector, "vector")
    dim = vector_store.project_dim(store.db, project_id)
    if dim is None:
        return SimilarMemories([], None, "none", 0)
    vector_store.check_dim(dim, len(query), project_id, "vector")
    engine, fallback = ctx.similar.plan(p.engine)
    kinds = tuple(k for k in KINDS if p.kinds is None or k in p.kinds)
    q = Query(query, project_id, kinds, p.k, p.min_score, store.now(), dim, engine)
    return asyncio.wrap_future(ctx.similar.submit(q, fallback))
