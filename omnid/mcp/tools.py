"""The MCP tools: each one's arguments (a msgspec struct, whose JSON schema is the tool's
input schema), description, and the client calls it makes for the agent's session.

Nothing here imports the MCP SDK, so the schemas can be printed and checked without it."""

from __future__ import annotations

import os
from typing import Annotated, Any, Awaitable, Callable, Literal, cast

import msgspec
from msgspec import Meta, Struct

from omnid_client.errors import Invalid
from omnid_client.protocol import ContextEvent, GetContext, NewMessage, Session
from omnid_client.protocol.vectors import MAX_QUERY_TEXT

Limit = Annotated[int, Meta(ge=1, le=1000)]
Key = Annotated[str, Meta(min_length=1, max_length=256, description="The memory's key.")]
Embedding = Annotated[
    list[float],
    Meta(min_length=1, max_length=4096, description="Its embedding, for similar_memories (one dimension per project)."),
]


class Args(Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class NoArgs(Args):
    pass


class AppendContextArgs(Args):
    events: Annotated[
        list[ContextEvent],
        Meta(
            min_length=1, max_length=500,
            description="What happened: kind file_access (subject: path; importance 0-1), search (the query), "
            "decision (its text), memory_ref (a memory's id or key), file_change (path; detail: the change).",
        ),
    ]


# context.get's caps, as the protocol defines them, without the session (always the agent's).
GetContextArgs = cast(
    "type[Args]",
    msgspec.defstruct(
        "GetContextArgs",
        [(f.name, f.type, f.default) for f in msgspec.structs.fields(GetContext) if f.name != "session_id"],
        bases=(Args,),
    ),
)


class PutMemoryArgs(Args):
    key: Key
    value: Annotated[Any, Meta(description="Any JSON value; the previous one is kept in the history.")]
    ttl: Annotated[float, Meta(gt=0, le=10 * 365 * 86400, description="Expire after this many seconds.")] | None = None
    metadata: dict[str, Any] = {}
    embedding: Embedding | None = None


class KeyArgs(Args):
    key: Key


class ListMemoriesArgs(Args):
    limit: Limit = 50


class AddSessionMemoryArgs(Args):
    content: Annotated[str, Meta(min_length=1, max_length=256 * 1024)]
    memory_type: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")] = "note"
    metadata: dict[str, Any] = {}
    embedding: Embedding | None = None


class AddMessagesArgs(Args):
    messages: Annotated[list[NewMessage], Meta(min_length=1, max_length=500)]


class ListMessagesArgs(Args):
    limit: Limit = 100
    after_seq: Annotated[int, Meta(ge=0, description="Continue after this sequence number (next_after_seq).")] = 0


class SearchArgs(Args):
    query: Annotated[str, Meta(
        min_length=1,
        max_length=1024,
        description=(
            "Words that must all match, each as a whole word; end one with * to match the words it starts "
            "(the last word does so by itself when whole words find fewer hits than the limit)."
        ),
    )]
    scope: Literal["project", "session", "all"] = "project"
    kinds: list[Literal["message", "memory", "session_memory", "decision"]] | None = None
    limit: Limit = 20


class SummaryArgs(Args):
    session_id: Annotated[str, Meta(description="Another session (default: this one).")] | None = None


class RecentSessionsArgs(Args):
    limit: Annotated[int, Meta(ge=1, le=100)] = 10
    status: Literal["live", "ended", "all"] = "all"


class ContextPackArgs(Args):
    budget_tokens: Annotated[
        int, Meta(ge=0, le=1_000_000, description="Most tokens the pack may take (omnid's estimate: ~4 chars a token).")
    ] = 2000
    markdown: Annotated[
        bool, Meta(description="Return the ready-to-inject Markdown (true) or every section and item as JSON (false).")
    ] = True


class SimilarArgs(Args):
    vector: Annotated[
        list[float], Meta(min_length=1, max_length=4096, description="The query embedding (same model as stored).")
    ] | None = None
    text: Annotated[
        str,
        Meta(
            min_length=1, max_length=MAX_QUERY_TEXT, description="Or a query in words (needs omnid's embedding_model)."
        ),
    ] | None = None
    k: Annotated[int, Meta(ge=1, le=100)] = 10
    min_score: Annotated[float, Meta(ge=-1, le=1, description="Least cosine similarity returned.")] | None = None
    kinds: list[Literal["memory", "session_memory"]] | None = None


class TextResult(Struct):
    """A tool result whose text is ``text`` itself (not JSON), with ``structured`` beside it."""

    text: str
    structured: dict[str, Any]


class Agent:
    """The agent's omnid session, as every tool call finds it: the live session of
    (tool id, agent process), created on first use. Asked again on each call (a cached
    answer on the daemon's side), so a session ended under us is replaced, not reused."""

    def __init__(self, client: Any, tool_id: str, pid: int):
        self.client = client
        self.tool_id = tool_id
        self.pid = pid
        self.tool_version: str | None = None
        self.metadata: dict[str, Any] = {"via": "mcp"}

    async def session(self) -> Session:
        # The server's directory, not the agent's: hosts start servers in the project they serve.
        got = await self.client.get_or_create(
            self.tool_id, pid=self.pid, tool_version=self.tool_version, workspace=os.getcwd(), session_type="agent",
            metadata=self.metadata, owner_must_be_ancestor=True,
        )
        return got.session

    async def project(self) -> dict[str, str]:
        """Where this session's project memories live."""
        s = await self.session()
        if s.project_id is not None:
            return {"project_id": s.project_id}
        return {"workspace": s.workspace or os.getcwd()}


async def current_session(agent: Agent, a: NoArgs) -> Any:
    s = await agent.session()
    summary = await agent.client.session_summary(s.session_id)
    project = await agent.client.get_project(s.project_id) if s.project_id else None
    return {
        "session_id": s.session_id, "tool_id": s.tool_id, "owner_pid": s.owner_pid, "workspace": s.workspace,
        "started_at": s.started_at, "last_activity": s.last_activity,
        "project": (
            None if project is None else {"project_id": project.project_id, "name": project.name, "root": project.root}
        ),
        "counters": {
            "messages": summary.message_count, "tokens": summary.total_tokens, "cost_usd": summary.total_cost,
            "context_events": summary.context_events, "tasks": summary.task_count,
        },
    }


async def append_context(agent: Agent, a: AppendContextArgs) -> Any:
    return await agent.client.append_context((await agent.session()).session_id, a.events)


async def get_context(agent: Agent, a: Args) -> Any:
    return await agent.client.get_context((await agent.session()).session_id, **msgspec.structs.asdict(a))


async def put_memory(agent: Agent, a: PutMemoryArgs) -> Any:
    return await agent.client.put_memory(
        a.key, a.value, metadata=a.metadata, ttl=a.ttl, embedding=a.embedding, **await agent.project()
    )


async def get_memory(agent: Agent, a: KeyArgs) -> Any:
    return await agent.client.get_memory(a.key, **await agent.project())


async def list_memories(agent: Agent, a: ListMemoriesArgs) -> Any:
    return {"memories": await agent.client.list_memories(limit=a.limit, **await agent.project())}


async def delete_memory(agent: Agent, a: KeyArgs) -> Any:
    return await agent.client.delete_memory(a.key, **await agent.project())


async def memory_history(agent: Agent, a: KeyArgs) -> Any:
    return await agent.client.memory_history(a.key, **await agent.project())


async def add_session_memory(agent: Agent, a: AddSessionMemoryArgs) -> Any:
    sid = (await agent.session()).session_id
    return await agent.client.add_session_memory(
        sid, a.content, memory_type=a.memory_type, metadata=a.metadata, embedding=a.embedding
    )


async def list_session_memories(agent: Agent, a: NoArgs) -> Any:
    return {"memories": await agent.client.list_session_memories((await agent.session()).session_id)}


async def add_messages(agent: Agent, a: AddMessagesArgs) -> Any:
    return await agent.client.add_messages((await agent.session()).session_id, a.messages)


async def list_messages(agent: Agent, a: ListMessagesArgs) -> Any:
    return await agent.client.list_messages((await agent.session()).session_id, limit=a.limit, after_seq=a.after_seq)


async def search(agent: Agent, a: SearchArgs) -> Any:
    s = await agent.session()
    where: dict[str, Any] = {}
    if a.scope == "session":
        where["session_id"] = s.session_id
    elif a.scope == "project":
        if s.project_id is None:
            return {"hits": []}
        where["project_id"] = s.project_id
    return {"hits": await agent.client.search(a.query, kinds=a.kinds, limit=a.limit, **where)}


async def session_summary(agent: Agent, a: SummaryArgs) -> Any:
    return await agent.client.session_summary(a.session_id or (await agent.session()).session_id)


async def context_pack(agent: Agent, a: ContextPackArgs) -> Any:
    s = await agent.session()
    pack = await agent.client.pack_context(s.session_id, budget_tokens=a.budget_tokens)
    if not a.markdown:
        return pack
    about = {"session_id": pack.session_id, "budget_tokens": pack.budget_tokens, "tokens": pack.tokens}
    return TextResult(pack.markdown, {"markdown": pack.markdown, **about})


async def similar_memories(agent: Agent, a: SimilarArgs) -> Any:
    where = await agent.project()
    if (a.vector is None) == (a.text is None):
        raise Invalid("give exactly one of vector and text", {"field": "vector"})
    return await agent.client.search_similar(
        a.vector, text=a.text, k=a.k, min_score=a.min_score, kinds=a.kinds, **where
    )


async def recent_sessions(agent: Agent, a: RecentSessionsArgs) -> Any:
    s = await agent.session()
    if s.project_id is None:
        return {"project_id": None, "sessions": []}
    # One more than asked for: the agent's own session is left out.
    page = await agent.client.list_sessions(status=a.status, limit=a.limit + 1, project_id=s.project_id)
    others = [x for x in page.sessions if x.session_id != s.session_id]
    return {"project_id": s.project_id, "sessions": others[: a.limit]}


Handler = Callable[[Agent, Any], Awaitable[Any]]
TOOLS: dict[str, tuple[type[Args], str, Handler]] = {
    "current_session": (
        NoArgs,
        "This agent's omnid session: its id, project and counters (created on first use).",
        current_session,
    ),
    "append_context": (
        AppendContextArgs,
        "Record files accessed (with importance), searches, decisions and memory references in this session's context.",
        append_context,
    ),
    "get_context": (
        GetContextArgs,
        "This session's context: files by importance, recent searches, decisions, memories, changed files.",
        get_context,
    ),
    "put_memory": (
        PutMemoryArgs,
        "Store a value under a key in this project's memories (versioned; optional TTL in seconds).",
        put_memory,
    ),
    "get_memory": (KeyArgs, "Read a project memory by key.", get_memory),
    "list_memories": (ListMemoriesArgs, "This project's live memories, most recently read first.", list_memories),
    "delete_memory": (KeyArgs, "Delete a project memory and its history.", delete_memory),
    "memory_history": (KeyArgs, "Every version of a project memory, oldest first.", memory_history),
    "add_session_memory": (AddSessionMemoryArgs, "Keep a note in this session's memory.", add_session_memory),
    "list_session_memories": (NoArgs, "This session's notes.", list_session_memories),
    "add_messages": (
        AddMessagesArgs,
        "Append messages (role user/assistant/system/tool) to this session, in order.",
        add_messages,
    ),
    "list_messages": (ListMessagesArgs, "This session's messages in order; page with after_seq.", list_messages),
    "search": (
        SearchArgs,
        "Full-text search over messages, memories and decisions of this project (or session, or all), best first.",
        search,
    ),
    "session_summary": (SummaryArgs, "Counts, tokens, cost and times of this session (or another).", session_summary),
    "context_pack": (
        ContextPackArgs,
        "The most useful context of this session within a token budget: goal and summary, files, decisions, "
        "searches, memories, open tasks and last messages, as Markdown to read first when resuming work.",
        context_pack,
    ),
    "similar_memories": (
        SimilarArgs,
        "This project's memories and notes whose stored embeddings are nearest a query embedding (cosine), best "
        "first. Only memories stored with an embedding are found; use search for words (a text query works only "
        "when omnid has an embedding_model configured).",
        similar_memories,
    ),
    "recent_sessions": (
        RecentSessionsArgs,
        "The most recent other sessions of this project, newest first.",
        recent_sessions,
    ),
}

RESOURCES: dict[str, tuple[str, str, Handler, type[Args]]] = {
    "omnid://session/context": (
        "session-context",
        "This session's context (files, searches, decisions, memories, changes).",
        get_context,
        GetContextArgs,
    ),
    "omnid://project/memories": ("project-memories", "This project's live memories.", list_memories, ListMemoriesArgs),
}


def input_schema(args: type[Args]) -> dict[str, Any]:
    """The JSON schema of a tool's arguments, self-contained (no $ref) since not every MCP
    host resolves references."""
    (schema,), components = msgspec.json.schema_components([args], ref_template="#/$defs/{name}")

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(components[node["$ref"].rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items() if k != "title"}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


def decode_args(args: type[Args], arguments: dict[str, Any] | None) -> Args:
    """Raises msgspec.ValidationError naming the bad field."""
    return msgspec.convert(arguments or {}, args)


def to_json(value: Any) -> Any:
    return msgspec.to_builtins(value)
