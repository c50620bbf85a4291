"""memories.search_similar off the event loop: a worker thread with read-only connections of its own,
scoring by exact cosine in pure Python or with sqlite-vec's ``vec_distance_cosine``.

Vectors are plain float32 BLOBs written by the store's connection; only this thread ever
loads sqlite-vec, into a connection of the stdlib ``sqlite3`` when it can load extensions,
or else of ``pysqlite3`` (both in the ``vec`` extra). Neither is imported until a search
wants it, so the daemon runs without them (``python`` engine)."""

from __future__ import annotations

import array
import concurrent.futures
import contextlib
import heapq
import importlib
import importlib.util
import logging
import math
import operator
import sqlite3
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from omnid_client.errors import Conflict, Unsupported
from omnid_client.protocol import SimilarHit, SimilarMemories

from . import memories as memory_store
from .vectors import encode, from_blob, to_blob

log = logging.getLogger("omnid.similar")

SCORE_DIGITS = 6
"""Scores are rounded to this many decimals, and equal rounded scores ordered by memory id,
so both engines (float32 sqlite-vec, float64 Python) give the same order."""


@dataclass(frozen=True)
class Query:
    vector: array.array
    """Normalised float32."""
    project_id: str
    kinds: tuple[str, ...]
    k: int
    min_score: float | None
    now: float
    dim: int
    engine: str
    """"python" or "sqlite-vec" (already resolved from "auto")."""


class VecUnavailable(Exception):
    """sqlite-vec cannot be used here; the message says why."""


def _where(q: Query) -> tuple[str, list[Any]]:
    marks = ",".join("?" * len(q.kinds))
    return (
        f"project_id = ? AND kind IN ({marks}) AND (expires_at IS NULL OR expires_at > ?)",
        [q.project_id, *q.kinds, q.now],
    )


class Stopped(Conflict):
    """The daemon is stopping: the search was abandoned (a typed reply, should one still go out)."""


def python_top_k(
    rows: Iterable[tuple[str, str, bytes]], q: Query, stopping: Callable[[], bool] = lambda: False
) -> tuple[list[tuple[float, str, str]], int]:
    """The best ``q.k`` of (ref_id, kind, blob) rows by dot product with the unit query (the
    cosine: stored vectors are unit vectors), and how many rows were scored."""
    query = q.vector
    mul = operator.mul
    scanned = 0

    def scored() -> Iterable[tuple[float, str, str]]:
        nonlocal scanned
        for ref_id, kind, blob in rows:
            scanned += 1
            if not scanned % 4096 and stopping():
                raise Stopped("the daemon is stopping")
            score = round(sum(map(mul, from_blob(blob), query)), SCORE_DIGITS)
            if q.min_score is None or score >= q.min_score:
                yield score, ref_id, kind

    best = heapq.nsmallest(q.k, scored(), key=lambda t: (-t[0], t[1]))
    return best, scanned


def vec_top_k(db: Any, q: Query) -> list[tuple[float, str, str]]:
    """The same best ``q.k``, computed by sqlite-vec inside SQLite: the compact int8 copies
    rule out all but a few vectors, which are then scored exactly; when the bounds cannot
    rule out enough, every float32 vector is scored. Either way the answer is the one the
    full float32 scan gives. Call it inside a read transaction (one snapshot for both reads)."""
    found = _candidates(db, q)
    return _exact_top_k(db, q, found)


CANDIDATES = 256
"""Rows the compact scan returns first, best upper bound first (8 per hit asked when more)."""
RESCORE_MOST = 8192
"""When the first rows leave it open, the vectors the bounds cannot rule out are fetched by a
second compact scan, up to this many; past it, rescoring them would cost about what scoring
every vector does, and every vector is scored."""

_UNIT = 2.0**-24  # float32's unit roundoff


def _candidates(db: Any, q: Query) -> list[str] | None:
    """The ids that may be among the best ``q.k`` by the exact score, or None if there are
    too many to rescore.

    With ``v = s*c + r`` (stored, ``|r| <= err``) and ``q = t*c_q + r_q``: ``q.v = t*s*(c.c_q)
    + t*c_q.r + r_q.v``, so ``|q.v - t*s*(c.c_q)| <= (1 + |r_q|)*err + |r_q|``. sqlite-vec
    gives ``c.c_q`` through the int8 L2 distance (``(|c|^2 + |c_q|^2 - d^2) / 2``, float32
    accumulation: the first term of the width covers it); the rest of the width covers the
    float32 cosine of the exact engine and a margin that keeps a ruled-out vector below the
    k-th even after scores are rounded to 6 decimals. Any vector whose upper bound is below
    the k-th best lower bound (or below ``min_score``) cannot make the top k."""
    n = q.dim
    query = encode(q.vector)
    engine_err = 4 * (n + 4) * _UNIT + 1e-6
    where, args = _where(q)
    bounds = (
        "SELECT ref_id, ? * scale * (norm2 + ? - d * d) / 2 + w AS upper, w FROM ("
        "SELECT ref_id, scale, norm2, ? * scale * (norm2 + ?) + ? * err + ? AS w, "
        "vec_distance_l2(vec_int8(code), vec_int8(?)) AS d "
        f"FROM memory_vector_codes WHERE {where} LIMIT -1)"
    )
    bounds_args = [
        query.scale, query.norm2,
        query.scale * (n + 2) * _UNIT * 1.01, query.norm2, 1 + query.err + 1e-6,
        query.err * (1 + 1e-6) + engine_err + 2e-6, query.code,
        *args,
    ]
    limit = max(CANDIDATES, 8 * q.k)
    rows = db.execute(f"{bounds} ORDER BY upper DESC LIMIT ?", [*bounds_args, limit]).fetchall()
    lowers = sorted((upper - 2 * w for _, upper, w in rows), reverse=True)
    threshold = lowers[q.k - 1] if len(lowers) >= q.k else -math.inf
    if q.min_score is not None:
        threshold = max(threshold, q.min_score)
    if len(rows) == limit and rows[-1][1] >= threshold:
        rows = db.execute(
            f"SELECT * FROM ({bounds}) WHERE upper >= ? LIMIT ?", [*bounds_args, threshold, RESCORE_MOST + 1]
        ).fetchall()
        if len(rows) > RESCORE_MOST:
            return None
    return [ref_id for ref_id, upper, _ in rows if upper >= threshold]


def _exact_top_k(db: Any, q: Query, ids: list[str] | None) -> list[tuple[float, str, str]]:
    """The best ``q.k`` by sqlite-vec's float32 cosine among ``ids`` (None: every live vector)."""
    query = to_blob(q.vector)
    rows: list[tuple[str, str, float]] = []
    if ids is None:
        where, args = _where(q)
        # A few more than k, so that the ones equal after rounding are ordered by id as
        # Python orders them; min_score is applied after, as the rows come nearest first.
        rows = db.execute(
            "SELECT ref_id, kind, vec_distance_cosine(vector, ?) AS d FROM memory_vectors "
            f"WHERE {where} ORDER BY d, ref_id LIMIT ?",
            [query, *args, q.k * 2 + 8],
        ).fetchall()
    for start in range(0, len(ids or ()), 500):
        chunk = (ids or [])[start : start + 500]
        rows += db.execute(
            "SELECT ref_id, kind, vec_distance_cosine(vector, ?) FROM memory_vectors "
            f"WHERE ref_id IN ({','.join('?' * len(chunk))})",
            [query, *chunk],
        ).fetchall()
    scored = [(round(1.0 - d, SCORE_DIGITS), ref_id, kind) for ref_id, kind, d in rows]
    if q.min_score is not None:
        scored = [s for s in scored if s[0] >= q.min_score]
    return sorted(scored, key=lambda t: (-t[0], t[1]))[: q.k]


def _open_vec(path: Path) -> Any:
    """A read-only connection with sqlite-vec loaded, or VecUnavailable saying why not."""
    if importlib.util.find_spec("sqlite_vec") is None:
        raise VecUnavailable("the sqlite-vec package is not installed (pip install 'omnid[vec]')")
    module: Any = sqlite3
    if not hasattr(sqlite3.Connection, "enable_load_extension"):
        if importlib.util.find_spec("pysqlite3") is None:
            raise VecUnavailable(
                "this Python's sqlite3 cannot load extensions, and pysqlite3 is not installed "
                "(pip install 'omnid[vec]')"
            )
        module = importlib.import_module("pysqlite3.dbapi2")
    try:
        sqlite_vec = importlib.import_module("sqlite_vec")
        db = module.connect(_read_only(path), uri=True, check_same_thread=False)
        db.enable_load_extension(True)
        sqlite_vec.load(db)
        db.enable_load_extension(False)
        db.execute("PRAGMA busy_timeout = 5000")
    except Exception as e:
        raise VecUnavailable(f"sqlite-vec did not load: {type(e).__name__}: {e}") from None
    return db


def _read_only(path: Path) -> str:
    return f"file:{urllib.parse.quote(str(path))}?mode=ro"


class SimilarSearch:
    """Runs searches one at a time in a thread of its own, so a long scan never holds up the
    event loop; it reads committed data only (replies to writes wait for their commit)."""

    def __init__(self, path: Path, setting: Callable[[], str] = lambda: "auto"):
        self.path = path
        self._setting = setting
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._connections: dict[str, Any] = {}
        self._vec_error: str | None = None
        self._lock = threading.Lock()
        self._closing = False

    def plan(self, requested: str) -> tuple[str, bool]:
        """The engine a search asking for ``requested`` runs on ("auto": the setting's), and
        whether it may fall back to python (only when both say "auto"). Unsupported if it
        must be sqlite-vec and that did not load."""
        choice = self._setting() if requested == "auto" else requested
        if choice == "auto":
            return ("python", False) if self._vec_error is not None else ("sqlite-vec", True)
        if choice == "sqlite-vec" and self._vec_error is not None:
            raise Unsupported(f"the sqlite-vec engine is unavailable: {self._vec_error}", {"engine": "sqlite-vec"})
        return choice, False

    def submit(self, q: Query, fallback: bool) -> concurrent.futures.Future[SimilarMemories]:
        """Start the search; with ``fallback``, a sqlite-vec that cannot load means python."""
        with self._lock:
            if self._closing:
                raise Stopped("the daemon is stopping")
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="omnid-similar")
            return self._executor.submit(self._search, q, fallback)

    def _connection(self, engine: str) -> Any:
        db = self._connections.get(engine)
        if db is None:
            if engine == "sqlite-vec":
                try:
                    db = _open_vec(self.path)
                except VecUnavailable as e:
                    self._vec_error = str(e)
                    raise
                log.info("memories.search_similar uses sqlite-vec")
            else:
                db = sqlite3.connect(_read_only(self.path), uri=True, check_same_thread=False)
                db.execute("PRAGMA busy_timeout = 5000")
            self._connections[engine] = db
        return db

    def _search(self, q: Query, fallback: bool) -> SimilarMemories:
        engine = q.engine
        try:
            db = self._connection(engine)
        except VecUnavailable as e:
            if not fallback:
                raise Unsupported(f"the sqlite-vec engine is unavailable: {e}", {"engine": "sqlite-vec"}) from None
            log.info("memories.search_similar falls back to pure Python: %s", e)
            engine = "python"
            db = self._connection(engine)
        where, args = _where(q)
        if engine == "sqlite-vec":
            db.execute("BEGIN")  # one snapshot: the compact scan and the rescoring see the same rows
            try:
                best = vec_top_k(db, q)
                scanned = db.execute(f"SELECT count(*) FROM memory_vectors WHERE {where}", args).fetchone()[0]
            finally:
                db.rollback()
        else:
            rows = db.execute(f"SELECT ref_id, kind, vector FROM memory_vectors WHERE {where}", args)
            best, scanned = python_top_k(rows, q, lambda: self._closing)
        used: Literal["python", "sqlite-vec"] = "sqlite-vec" if engine == "sqlite-vec" else "python"
        return SimilarMemories(_hits(db, best, q.now), q.dim, used, scanned)

    def close(self) -> None:
        """Abandon a search under way (its reply is never sent: the daemon is stopping)."""
        self._closing = True
        with self._lock:
            executor, self._executor = self._executor, None
        for db in list(self._connections.values()):
            with contextlib.suppress(Exception):
                db.interrupt()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        for db in self._connections.values():
            with contextlib.suppress(Exception):
                db.close()
        self._connections.clear()


def _hits(db: Any, best: list[tuple[float, str, str]], now: float) -> list[SimilarHit]:
    """The hits with their memories; one deleted or expired since it was scored is left out."""
    memories = memory_store.live_by_ids(db, [r for _, r, kind in best if kind == "memory"], now)
    notes = memory_store.session_memories_by_ids(db, [r for _, r, kind in best if kind == "session_memory"])
    hits = []
    for score, ref_id, kind in best:
        if kind == "memory" and ref_id in memories:
            hits.append(SimilarHit("memory", ref_id, score, memory=memories[ref_id]))
        elif kind == "session_memory" and ref_id in notes:
            hits.append(SimilarHit("session_memory", ref_id, score, session_memory=notes[ref_id]))
    return hits
