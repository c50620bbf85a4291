"""What the sync and async clients share: framing, the method surface, reply decoding."""

from __future__ import annotations

import logging
import os
import socket
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

import msgspec

from . import __version__
from .errors import Invalid, OmnidError, ProtocolError, TooLarge, Unsupported, from_wire
from .protocol import (
    HEADER,
    MAX_FRAME,
    METHODS,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    AddInteraction,
    AddMessages,
    AddSessionMemory,
    AppendContext,
    Appended,
    CleanupOrphans,
    CleanupResult,
    ContextEvent,
    CreateTask,
    DaemonStatus,
    Deleted,
    Empty,
    Find,
    GetContext,
    GetOrCreate,
    GetOrCreateResult,
    Hello,
    ImportRecords,
    ImportResult,
    IncomingResponse,
    Interaction,
    ListMemories,
    ListMessages,
    ListProjects,
    ListSessions,
    ListTasks,
    Memory,
    MemoryHistory,
    MemoryKeyRef,
    MessagePage,
    MessagesAdded,
    NewMessage,
    Project,
    ProjectPage,
    ProjectRef,
    PutMemory,
    Reap,
    ReapResult,
    Record,
    Reply,
    RequestFrame,
    RetentionResult,
    RunRetention,
    Search,
    SearchHit,
    ServiceStats,
    Session,
    SessionContext,
    SessionMemory,
    SessionPage,
    SessionRef,
    SessionSummary,
    Task,
    TaskPage,
    TaskRef,
    UpdateTask,
    Welcome,
    version_note,
)

log = logging.getLogger("omnid_client")
T = TypeVar("T")
_noted: set[str] = set()
_encoder = msgspec.msgpack.Encoder()
_response_decoder = msgspec.msgpack.Decoder(IncomingResponse)

HAVE_UNIX_SOCKETS = hasattr(socket, "AF_UNIX")
"""False on a platform without Unix sockets (Windows' Python): the client imports, and every
call raises Unsupported (or returns None when failing open)."""


def require_unix_sockets() -> None:
    if not HAVE_UNIX_SOCKETS:
        raise Unsupported(f"omnid talks over Unix sockets, which Python on {sys.platform} does not offer")


def encode_frame(msg: Any, buf: bytearray | None = None) -> bytearray:
    """A length-prefixed frame, in ``buf`` if given (replacing what it held, so a blocking
    sender can reuse one); TooLarge (nothing sent) past the daemon's frame limit."""
    if buf is None:
        buf = bytearray(HEADER.size)
    try:
        _encoder.encode_into(msg, buf, HEADER.size)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as e:
        del buf[HEADER.size :]
        raise Invalid(f"cannot encode the request: {e}") from None
    size = len(buf) - HEADER.size
    if size > MAX_FRAME:
        del buf[HEADER.size :]
        raise TooLarge(f"request is {size} bytes encoded; the frame limit is {MAX_FRAME}", {"size": size})
    HEADER.pack_into(buf, 0, size)
    return buf


def frame_length(header: bytes | bytearray | memoryview) -> int:
    """The payload length a frame starts with (from the first bytes of ``header``)."""
    (n,) = HEADER.unpack_from(header)
    if n > MAX_FRAME:
        raise ProtocolError(f"daemon sent a {n}-byte frame; the limit is {MAX_FRAME}")
    return n


@lru_cache(maxsize=None)
def _decoder(result_type: type) -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(result_type)


def parse_response(payload: bytes) -> IncomingResponse:
    try:
        return _response_decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise ProtocolError(f"malformed reply from daemon: {e}") from e


def result_of(resp: IncomingResponse, result_type: type) -> Any:
    """The decoded result of a reply; raises the typed error for an error reply."""
    if resp.error is not None:
        raise from_wire(resp.error.code, resp.error.message, resp.error.details)
    try:
        return _decoder(result_type).decode(resp.result)
    except msgspec.DecodeError as e:
        raise ProtocolError(f"malformed {result_type.__name__} from daemon: {e}") from e


_reply_decoders: dict[type, Callable[[Any], Reply]] = {}


def decode_reply(payload: Any, result_type: type) -> Reply:
    """A reply whose result is ``result_type`` (or an error), in one pass: not the
    envelope first and the result from it again."""
    decode = _reply_decoders.get(result_type)
    if decode is None:
        decode = _reply_decoders[result_type] = msgspec.msgpack.Decoder(Reply[result_type]).decode  # type: ignore[valid-type]
    try:
        return decode(payload)
    except msgspec.DecodeError as e:
        raise ProtocolError(f"malformed {result_type.__name__} reply from daemon: {e}") from e


def result_or_raise(reply: Reply) -> Any:
    """The result of a decoded reply; raises the typed error for an error reply."""
    if reply.error is not None:
        raise from_wire(reply.error.code, reply.error.message, reply.error.details)
    if reply.result is None:
        raise ProtocolError("reply from daemon carries neither a result nor an error")
    return reply.result


def hello_frame(client_name: str) -> bytearray:
    hello = Hello(PROTOCOL_MAJOR, PROTOCOL_MINOR, __version__, client_name)
    return encode_frame(RequestFrame(0, "hello", hello))


class Call(Generic[T]):
    """One RPC about to be made: method, parameters, and how to shape the result."""

    __slots__ = ("method", "params", "idempotent", "result_type", "shape")

    def __init__(self, method: str, params: Any, shape: Callable[[Any], T] | None = None, idempotent: bool | None = None):
        spec = METHODS[method]
        self.method = method
        self.params = params
        self.result_type = spec.result
        self.idempotent = spec.idempotent if idempotent is None else idempotent
        self.shape = shape

    def finish(self, result: Any) -> T:
        return self.shape(result) if self.shape else result


class Methods:
    """Every omnid call, written once, and the options both clients take. ``_call`` is
    blocking in ``Client`` and a coroutine in ``AsyncClient``, so each method returns
    a value or an awaitable.

    ``timeout`` bounds each whole call: connecting, starting a daemon and the request;
    within it, ``connect_timeout`` bounds each connection attempt. With ``autostart`` a
    missing daemon is started (and waited for, up to ``start_timeout``). With
    ``fail_open`` every call returns None instead of raising an ``OmnidError``, for
    tools that must never block or crash because of omnid; an autostart that fails and a
    platform without Unix sockets (``Unsupported``) included.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 1.0,
        autostart: bool = True,
        start_timeout: float = 5.0,
        fail_open: bool = False,
        client_name: str = "",
    ):
        self.socket_path = Path(socket_path) if socket_path else None
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.autostart = autostart
        self.start_timeout = start_timeout
        self.fail_open = fail_open
        self.client_name = client_name
        self.welcome: Welcome | None = None
        self.version_note: str | None = None
        """Set when the daemon is another release than this client, naming the older side."""
        self._next_id = 1
        self._init_connection()

    def _init_connection(self) -> None:  # pragma: no cover - overridden
        """Set up the (unconnected) connection state of this kind of client."""

    def _call(self, call: Call) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def get_or_create(
        self,
        tool_id: str,
        *,
        pid: int | None = None,
        tool_version: str | None = None,
        workspace: str | None = None,
        session_type: str = "default",
        metadata: dict[str, Any] | None = None,
        dedup: bool = True,
        owner_must_be_ancestor: bool = False,
    ) -> GetOrCreateResult:
        """The live session of ``tool_id`` for process ``pid`` (default: the caller), created if none.
        With ``owner_must_be_ancestor``, ``pid`` must be the caller or one of its ancestors."""
        params = GetOrCreate(
            tool_id, pid, tool_version, workspace, session_type, metadata or {}, dedup, owner_must_be_ancestor
        )
        return self._call(Call("session.get_or_create", params, idempotent=dedup))

    def find(self, tool_id: str, *, pid: int | None = None) -> Session | None:
        """The live session of ``tool_id`` for ``pid`` (default: the caller), or None. Never creates."""
        return self._call(Call("session.find", Find(tool_id, pid), shape=lambda r: r.session))

    def heartbeat(self, session_id: str) -> Session:
        return self._call(Call("session.heartbeat", SessionRef(session_id)))

    def end(self, session_id: str) -> Session:
        """End a session (idempotent: an already-ended session is returned as it is)."""
        return self._call(Call("session.end", SessionRef(session_id)))

    def get(self, session_id: str) -> Session:
        return self._call(Call("session.get", SessionRef(session_id)))

    def list_sessions(
        self,
        *,
        tool_id: str | None = None,
        session_type: str | None = None,
        status: str = "all",
        workspace: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SessionPage:
        """Sessions newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
        params = ListSessions(tool_id, session_type, status, workspace, limit, cursor)
        return self._call(Call("session.list", params))

    def status(self) -> DaemonStatus:
        return self._call(Call("daemon.status", Empty()))

    def reap(self, *, dry_run: bool = False) -> ReapResult:
        """Check every live session's owner now and end those whose process is gone."""
        return self._call(Call("daemon.reap", Reap(dry_run), idempotent=True))

    def stats(self) -> ServiceStats:
        """Totals and averages over every session, message, memory and task."""
        return self._call(Call("daemon.stats", Empty()))

    def cleanup_orphans(self, older_than: float, *, dry_run: bool = False) -> CleanupResult:
        """Delete ended sessions that started over ``older_than`` seconds ago and hold nothing
        (no tasks, messages, context or memories); returns their ids."""
        return self._call(Call("maintenance.cleanup_orphans", CleanupOrphans(older_than, dry_run)))

    def session_summary(self, session_id: str) -> SessionSummary:
        """Counts, tokens, cost and times of one session."""
        return self._call(Call("session.summary", SessionRef(session_id)))

    # -- projects ----------------------------------------------------------------------

    def list_projects(self, *, limit: int = 50, cursor: str | None = None) -> ProjectPage:
        """Projects, most recently active first."""
        return self._call(Call("project.list", ListProjects(limit, cursor)))

    def get_project(self, project_id: str | None = None, *, workspace: str | None = None) -> Project:
        """A project by id, or the one containing ``workspace`` (default: the current directory)."""
        return self._call(Call("project.get", ProjectRef(*_project(project_id, workspace))))

    # -- session context -----------------------------------------------------------------

    def append_context(self, session_id: str, events: list[ContextEvent]) -> Appended:
        """Record what happened in a session: file accesses, searches, decisions, memory
        references, file changes. All events are stored, or none."""
        return self._call(Call("context.append", AppendContext(session_id, list(events))))

    def get_context(self, session_id: str, **caps: int) -> SessionContext:
        """The session's context: files by importance, recent searches and decisions, memories,
        changed files, and its size. ``caps`` (max_files=…, max_searches=…) bound each list."""
        return self._call(Call("context.get", GetContext(session_id, **caps)))

    # -- project memories ----------------------------------------------------------------

    def put_memory(
        self,
        key: str,
        value: Any,
        *,
        project_id: str | None = None,
        workspace: str | None = None,
        metadata: dict[str, Any] | None = None,
        ttl: float | None = None,
    ) -> Memory:
        """Store ``value`` under ``key`` in a project (default: the one containing the current
        directory); an earlier value is kept as a version. ``ttl`` is in seconds."""
        project = _project(project_id, workspace)
        return self._call(Call("memory.put", PutMemory(key, value, *project, metadata or {}, ttl)))

    def get_memory(self, key: str, *, project_id: str | None = None, workspace: str | None = None) -> Memory:
        return self._call(Call("memory.get", MemoryKeyRef(key, *_project(project_id, workspace))))

    def list_memories(self, *, project_id: str | None = None, workspace: str | None = None, limit: int = 50) -> list[Memory]:
        """Live memories, most recently accessed first."""
        project = _project(project_id, workspace)
        return self._call(Call("memory.list", ListMemories(*project, limit), shape=lambda r: r.memories))

    def delete_memory(self, key: str, *, project_id: str | None = None, workspace: str | None = None) -> Deleted:
        return self._call(Call("memory.delete", MemoryKeyRef(key, *_project(project_id, workspace))))

    def memory_history(self, key: str, *, project_id: str | None = None, workspace: str | None = None) -> MemoryHistory:
        """Every version of a memory, oldest first."""
        return self._call(Call("memory.history", MemoryKeyRef(key, *_project(project_id, workspace))))

    # -- session memories ------------------------------------------------------------------

    def add_session_memory(
        self, session_id: str, content: str, *, memory_type: str = "note", metadata: dict[str, Any] | None = None
    ) -> SessionMemory:
        return self._call(
            Call("session_memory.add", AddSessionMemory(session_id, content, memory_type, metadata or {}))
        )

    def list_session_memories(self, session_id: str) -> list[SessionMemory]:
        return self._call(Call("session_memory.list", SessionRef(session_id), shape=lambda r: r.memories))

    # -- messages ------------------------------------------------------------------------

    def add_messages(self, session_id: str, messages: list[NewMessage]) -> MessagesAdded:
        """Append messages in order, all or none; returns their ids and the session's totals."""
        return self._call(Call("message.add", AddMessages(session_id, list(messages))))

    def add_message(
        self,
        session_id: str,
        role: str,
        content: str,
        *,
        message_type: str = "text",
        metadata: dict[str, Any] | None = None,
        tokens_used: int = 0,
        cost_usd: float = 0.0,
    ) -> MessagesAdded:
        message = NewMessage(role, content, message_type, metadata or {}, tokens_used, cost_usd)  # type: ignore[arg-type]
        return self.add_messages(session_id, [message])

    def list_messages(self, session_id: str, *, limit: int = 100, after_seq: int = 0) -> MessagePage:
        """Messages in order; pass ``next_after_seq`` back as ``after_seq`` for the next page."""
        return self._call(Call("message.list", ListMessages(session_id, limit, after_seq)))

    # -- tasks ---------------------------------------------------------------------------

    def create_task(
        self, session_id: str, title: str, *, external_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Task:
        """A task in a live session; ``external_id`` (e.g. an agent CLI's own conversation id)
        is unique among open tasks."""
        return self._call(Call("task.create", CreateTask(session_id, title, external_id, metadata or {})))

    def update_task(
        self,
        task_id: str,
        *,
        status: str | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Task:
        return self._call(Call("task.update", UpdateTask(task_id, status, title, metadata)))  # type: ignore[arg-type]

    def get_task(self, task_id: str, *, max_interactions: int = 200) -> Task:
        """A task with its interactions."""
        return self._call(Call("task.get", TaskRef(task_id, max_interactions)))

    def list_tasks(
        self,
        *,
        session_id: str | None = None,
        status: str | None = None,
        external_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        return self._call(Call("task.list", ListTasks(session_id, status, external_id, limit, cursor)))  # type: ignore[arg-type]

    def add_interaction(
        self, task_id: str, content: str, *, kind: str = "note", metadata: dict[str, Any] | None = None
    ) -> Interaction:
        return self._call(Call("interaction.add", AddInteraction(task_id, content, kind, metadata or {})))

    # -- search --------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        project_id: str | None = None,
        session_id: str | None = None,
        kinds: list[str] | None = None,
        limit: int = 20,
    ) -> list[SearchHit]:
        """Ranked full-text search over messages, memories and decisions (all words must match)."""
        params = Search(query, project_id, session_id, kinds, limit)  # type: ignore[arg-type]
        return self._call(Call("search", params, shape=lambda r: r.hits))

    # -- moving data -----------------------------------------------------------------------

    def import_records(
        self, records: list[Record], *, lines: list[int] | None = None, dry_run: bool = False
    ) -> ImportResult:
        """Import one batch of export records, all or nothing, keeping their ids; records
        already present are counted as existing (importing twice adds nothing). ``lines``
        (one per record) are named in errors. The batch must fit one frame."""
        return self._call(Call("maintenance.import", ImportRecords(list(records), list(lines or []), dry_run)))

    def run_retention(
        self,
        *,
        older_than: float | None = None,
        archive: str | None = None,
        purge: bool = False,
        dry_run: bool = False,
        limit: int = 500,
    ) -> RetentionResult:
        """Archive (to ``archive``, default the daemon's archive file) or ``purge``, then delete,
        up to ``limit`` ended sessions that ended over ``older_than`` seconds ago (default:
        the configured retention). ``remaining`` says how many more are due."""
        params = RunRetention(older_than, archive, purge, dry_run, limit)
        return self._call(Call("maintenance.retention", params))

    def shutdown(self) -> Empty:
        """Ask the daemon to stop gracefully (it replies first)."""
        return self._call(Call("daemon.shutdown", Empty()))


def _project(project_id: str | None, workspace: str | None) -> tuple[str | None, str | None]:
    """(project_id, workspace) for a call; the current directory's project by default."""
    if project_id is None and workspace is None:
        workspace = os.getcwd()
    return project_id, workspace


def check_welcome(payload: bytes) -> Welcome:
    return result_of(parse_response(payload), Welcome)


def note_versions(welcome: Welcome) -> str | None:
    """Which side is older when client and daemon differ (logged once per process), or None."""
    note = version_note(__version__, welcome.server_version)
    if note is not None and note not in _noted:
        _noted.add(note)
        log.info("%s", note)
    return note


__all__ = ["Call", "Methods", "OmnidError", "encode_frame", "parse_response", "result_of", "decode_reply", "result_or_raise", "frame_length", "hello_frame", "check_welcome", "note_versions"]
