"""``omnid memories similar``: the memories whose embeddings are nearest a query vector."""

from __future__ import annotations

from typing import cast

import click

from omnid_client.protocol import VectorEngine, VectorKind

from ._output import connect, fail_cleanly, json_option, print_json, print_table, project_options, short
from ._vector_input import read_vector
from .content import memories


@memories.command("similar")
@click.argument("vector", default="-", metavar="[VECTOR_FILE]")
@project_options
@click.option("--text", help="A query in words instead of a vector (the daemon's embedding_model embeds it).")
@click.option("-k", "k", type=click.IntRange(1, 1000), default=10, show_default=True, help="How many to return.")
@click.option("--min-score", type=click.FloatRange(-1, 1), help="Leave out hits less similar than this (cosine).")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["memory", "session_memory"]),
              help="Only this kind of memory; repeatable. Default: both.")
@click.option("--engine", type=click.Choice(["auto", "python", "sqlite-vec"]), default="auto", show_default=True,
              help="What computes the search (auto: the daemon's vector_engine setting).")
@json_option
@fail_cleanly
def memories_similar(
    vector: str, text: str | None, project_id: str | None, workspace: str | None, k: int, min_score: float | None,
    kinds: tuple[str, ...], engine: str, as_json: bool,
) -> None:
    """The K project and session memories whose embeddings are nearest the query vector (a
    JSON array in VECTOR_FILE, or on stdin), best first by cosine similarity. With --text,
    the query is in words, embedded by the daemon's embedding_model (see config.toml)."""
    if text is not None and vector != "-":
        raise click.UsageError("give either VECTOR_FILE or --text, not both")
    query = read_vector(vector, "VECTOR_FILE") if text is None else None
    with connect(autostart=False) as client:
        found = client.search_similar(
            query, text=text, k=k, project_id=project_id, workspace=workspace, min_score=min_score,
            kinds=cast("list[VectorKind]", list(kinds)) or None, engine=cast(VectorEngine, engine),
        )
    if as_json:
        print_json(found)
        return
    if not found.hits:
        click.echo("no memories with embeddings" if found.dim is None else "no similar memories")
        return
    rows = []
    for h in found.hits:
        if h.memory is not None:
            rows.append((f"{h.score:.4f}", "memory", h.memory.key, short(h.memory.value)))
        elif h.session_memory is not None:
            note = h.session_memory
            rows.append((f"{h.score:.4f}", note.memory_type, note.session_id, short(note.content)))
    print_table(["SCORE", "KIND", "KEY / SESSION", "VALUE"], rows)
