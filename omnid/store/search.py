"""The full-text index (FTS5) over messages, memories, session memories and decisions.

On the store's connection, rows to index wait in ``pending_search_rows`` and are written
together just before the transaction commits: FTS5 writes a new index segment (and later
merges it) whenever a savepoint ends, and each request runs in its own savepoint, so rows
written as they came cost a segment per request instead of one per commit. In the daemon
(``defer``) they are committed to the plain table ``search_pending`` instead, which costs
a fraction of an FTS5 segment, and moved into the index in batches (``move_deferred``):
once ``INDEX_ROWS`` wait, or ``INDEX_LAG`` seconds after the first. Unindexing drops
waiting rows too, and a search indexes every waiting row first, so no reader can tell.
"""

from __future__ import annotations

import heapq
import json
import logging
import sqlite3
from typing import Any, Callable, ContextManager, Sequence

from omnid_client.protocol import SearchHit

from .search_rank import SCANNED, Term, index_size, last_rowid, match_expression, scored, terms, varint, weights

log = logging.getLogger("omnid.store")

_COLUMNS = "body, kind, ref_id, session_id, project_id, created_at"
_INSERT = f"INSERT INTO search_index (rowid, {_COLUMNS}) VALUES (?,?,?,?,?,?,?)"
_REF = "INSERT INTO search_refs (kind, ref_id, row, session_id) VALUES (?,?,?,?)"
_DEFER = f"INSERT INTO search_pending ({_COLUMNS}) VALUES (?,?,?,?,?,?)"
INDEX_ROWS = 256
"""Deferred rows that are moved into the index at the next commit."""
INDEX_LAG = 0.25
"""Seconds a deferred row waits at most before it is moved into the index."""

Row = tuple[object, ...]
CANDIDATES = 1000
"""Most matches a search ranks: when a query matches more, the newest this many are
ranked and older ones are not returned."""


class StoreConnection(sqlite3.Connection):
    """The store's connection, holding the search rows its open transaction will index
    when it commits. Any other connection indexes each row as it is written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending_search_rows: list[Row] = []
        self.pending_events: list[Any] = []
        """Events the open transaction causes (``store.events.Staged``), published once it commits."""


def index(
    db: sqlite3.Connection,
    kind: str,
    ref_id: str | int,
    body: str,
    *,
    session_id: str | None,
    project_id: str | None,
    created_at: float,
) -> None:
    row = (body, kind, str(ref_id), session_id, project_id, created_at)
    if isinstance(db, StoreConnection) and db.in_transaction:
        db.pending_search_rows.append(row)
    else:
        _insert(db, [row])


def _insert(db: sqlite3.Connection, rows: list[Row]) -> None:
    """Index ``rows`` under the next rowids, and note in ``search_refs`` where each went, so
    unindexing deletes by rowid (FTS5 finds rows by their unindexed columns only by reading
    every row)."""
    last = last_rowid(db)
    db.executemany(_INSERT, [(last + n, *row) for n, row in enumerate(rows, 1)])
    db.executemany(_REF, [(row[1], row[2], last + n, row[3]) for n, row in enumerate(rows, 1)])


def write_pending(db: sqlite3.Connection, *, defer: bool = False) -> None:
    """Index the rows waiting on ``db`` now (``defer``: put them in ``search_pending``); if
    that fails they are still waiting."""
    if isinstance(db, StoreConnection) and db.pending_search_rows:
        if defer:
            db.executemany(_DEFER, db.pending_search_rows)
        else:
            _insert(db, db.pending_search_rows)
        db.pending_search_rows = []  # a new list: see Store.write


def deferred(db: sqlite3.Connection) -> int:
    """Rows committed to ``search_pending`` (or written there in the open transaction)."""
    count: int = db.execute("SELECT count(*) FROM search_pending").fetchone()[0]
    return count


def move_deferred(db: sqlite3.Connection) -> None:
    """Move the deferred rows into the index, oldest first (in the open transaction)."""
    last = last_rowid(db)
    numbered = "? + row_number() OVER (ORDER BY id)"
    db.execute(f"INSERT INTO search_index (rowid, {_COLUMNS}) SELECT {numbered}, {_COLUMNS} FROM search_pending",
               (last,))
    db.execute(f"INSERT INTO search_refs (kind, ref_id, row, session_id) SELECT kind, ref_id, {numbered}, "
               "session_id FROM search_pending", (last,))
    db.execute("DELETE FROM search_pending")


class Deferral:
    """The daemon's deferred indexing: at each commit the batch's rows join the deferred
    ones, which move into the index then if ``INDEX_ROWS`` wait, else ``INDEX_LAG``
    seconds later (a timer set only while rows wait, so an idle daemon never wakes)."""

    def __init__(
        self,
        db: sqlite3.Connection,
        schedule_later: Callable[[float, Callable[[], None]], object],
        write: Callable[[], ContextManager[sqlite3.Connection]],
    ):
        self._db = db
        self._schedule_later = schedule_later
        self._write = write
        self.waiting = INDEX_ROWS if deferred(db) else 0
        """Rows deferred since the last move (a hint: a lost batch leaves it high); rows
        left by a daemon that crashed move at the first commit."""
        self._due = False
        self.closed = False

    def at_commit(self) -> None:
        """In the transaction about to commit: defer its rows, and move them all if enough wait."""
        db = self._db
        assert isinstance(db, StoreConnection)
        self.waiting += len(db.pending_search_rows)
        write_pending(db, defer=True)
        if self.waiting >= INDEX_ROWS:
            move_deferred(db)
            self.waiting = 0
        elif self.waiting and not self._due:
            self._due = True
            self._schedule_later(INDEX_LAG, self._timer)

    def _timer(self) -> None:
        self._due = False
        if self.closed or not self.waiting:
            return
        if not deferred(self._db):
            self.waiting = 0
            return
        try:
            with self._write() as db:
                move_deferred(db)
            self.waiting = 0
        except sqlite3.Error as e:  # they stay deferred (and found by searches): the next commit moves them
            log.warning("indexing deferred search rows failed: %s", e)


def unindex(db: sqlite3.Connection, kind: str, ref_ids: list[str]) -> None:
    for ref_id in ref_ids:
        _delete(db, "kind = ? AND ref_id = ?", (kind, ref_id))
    ids = set(ref_ids)
    _drop_pending(db, lambda row: row[1] == kind and row[2] in ids)


def unindex_sessions(db: sqlite3.Connection, session_ids: list[str]) -> None:
    for sid in session_ids:
        _delete(db, "session_id = ?", (sid,))
    ids = set(session_ids)
    _drop_pending(db, lambda row: row[3] in ids)


def _delete(db: sqlite3.Connection, where: str, args: tuple[str, ...]) -> None:
    """Delete the indexed and deferred rows ``where`` says (by rowid, through ``search_refs``)."""
    db.execute(f"DELETE FROM search_index WHERE rowid IN (SELECT row FROM search_refs WHERE {where})", args)
    db.execute(f"DELETE FROM search_refs WHERE {where}", args)
    db.execute(f"DELETE FROM search_pending WHERE {where}", args)


def _drop_pending(db: sqlite3.Connection, matches: Callable[[Row], bool]) -> None:
    if not isinstance(db, StoreConnection):
        return
    pending = db.pending_search_rows
    if pending and any(matches(row) for row in pending):
        db.pending_search_rows = [row for row in pending if not matches(row)]


def query(
    db: sqlite3.Connection,
    text: str,
    *,
    project_id: str | None,
    session_id: str | None,
    kinds: Sequence[str] | None,
    limit: int,
    now: float,
) -> list[SearchHit]:
    words = terms(text)
    if not words:
        return []
    # Rows written before the search are found too: those of the open transaction, and
    # those deferred, are indexed just for this query (in a savepoint undone after it), so
    # a search never writes, and never fails for a disk that cannot take a commit.
    where, args = _conditions(project_id, session_id, kinds, now)
    joined = db.in_transaction
    transient = _index_waiting(db)
    try:
        return _top(db, words, where, args, limit)
    finally:
        if transient:
            _undo(db, joined)


def _index_waiting(db: sqlite3.Connection) -> bool:
    """Index the rows not in the index yet inside the savepoint ``search_rows``, if any wait."""
    if not isinstance(db, StoreConnection):
        return False
    pending = db.pending_search_rows
    waiting = deferred(db)
    if not waiting and not pending:
        return False
    joined = db.in_transaction
    db.execute("SAVEPOINT search_rows")
    try:
        if waiting:
            move_deferred(db)
        if pending:
            _insert(db, pending)
    except BaseException:
        _undo(db, joined)
        raise
    return True


def _undo(db: sqlite3.Connection, joined: bool) -> None:
    """Undo the savepoint ``search_rows``; and end the transaction it began, if it began one
    (a read must never leave one open: nothing would commit it)."""
    if not db.in_transaction:
        return
    if joined:
        db.execute("ROLLBACK TO search_rows")
        db.execute("RELEASE search_rows")
    else:
        db.execute("ROLLBACK")


def _conditions(
    project_id: str | None, session_id: str | None, kinds: Sequence[str] | None, now: float
) -> tuple[list[str], list[Any]]:
    """What a candidate must also be, on FTS5's content table (c1 kind, c2 ref_id,
    c3 session_id, c4 project_id, c5 created_at, c0 the body)."""
    # Expired memories wait for the purge in the index, but are never returned.
    where = ["NOT (c1 = 'memory' AND c2 IN (SELECT memory_id FROM memories WHERE expires_at <= ?))"]
    args: list[Any] = [now]
    if project_id is not None:
        where.append("c4 = ?")
        args.append(project_id)
    if session_id is not None:
        where.append("c3 = ?")
        args.append(session_id)
    if kinds:
        where.append(f"c1 IN ({','.join('?' * len(kinds))})")
        args += kinds
    return where, args


_SNIPPET = "snippet(search_index, 0, '[', ']', '…', 16)"


def _top(
    db: sqlite3.Connection, words: list[Term], where: list[str], args: list[Any], limit: int
) -> list[SearchHit]:
    # Bounded top-k: the newest CANDIDATES matches are ranked here (a heap, not a sort of
    # every match), so a query matching most of a big index costs about what one matching
    # CANDIDATES rows does. FTS5's bm25() is not used: see search_rank.
    expression = match_expression(words)
    rows = _candidates(db, expression, where, args)
    if len(rows) < limit and not words[-1].prefix:
        # A last word typed in part ("sess") still finds: when whole words fill less than
        # the page, the last also matches the words it starts, as ``word*`` does. A page
        # that whole words fill never pays for the prefix (FTS5 merges every matching
        # word's list for one: ~20-100 ms on a big index).
        words = [*words[:-1], words[-1]._replace(prefix=True)]
        expression = match_expression(words)
        rows = _candidates(db, expression, where, args)
    if not rows:
        return []
    total, mean = index_size(db)
    best = heapq.nlargest(limit, scored(rows, words, weights(db, words, max(total, len(rows))), mean))
    chosen = [rowid for _, rowid, _ in best]
    if any(w.prefix for w in words):
        # FTS5 merges every matching word's doclist at each query, and again for each rowid
        # of an IN list: one pass over the winners' span instead.
        found = db.execute(
            f"SELECT rowid, CASE WHEN rowid IN (SELECT value FROM json_each(?)) THEN {_SNIPPET} END "
            "FROM search_index WHERE search_index MATCH ? AND rowid BETWEEN ? AND ?",
            (json.dumps(chosen), expression, min(chosen), max(chosen)),
        )
    else:
        found = db.execute(
            f"SELECT rowid, {_SNIPPET} FROM search_index WHERE search_index MATCH ? "
            f"AND rowid IN ({','.join('?' * len(chosen))})",
            (expression, *chosen),
        )
    snippets = {rowid: snippet for rowid, snippet in found if snippet is not None}
    found = db.execute(
        "SELECT id, c1, c2, c3, c4, c5 FROM search_index_content WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(chosen),),
    )
    about: dict[int, tuple[Any, ...]] = {row[0]: row for row in found}
    return [_hit(about[rowid], snippets[rowid], score) for score, rowid, _ in best]


def _hit(row: tuple[Any, ...], snippet: str, score: float) -> SearchHit:
    _, kind, ref_id, session_id, project_id, created_at = row
    return SearchHit(kind, ref_id, session_id, project_id, snippet, score, created_at)


def _candidates(db: sqlite3.Connection, expression: str, where: list[str], args: list[Any]) -> list[Any]:
    """The newest ``CANDIDATES`` rows matching ``expression`` and ``where``: (rowid, the
    body's words, its first ``SCANNED`` characters). FTS5 gives the matching rowids newest
    first, a growing chunk at a time, and the rows are read from its content table directly:
    ~3x faster than through FTS5, which looks each row up again for every column asked (the
    table is FTS5's own, fixed by its file format)."""
    rows: list[Any] = []
    below, chunk = None, CANDIDATES
    while len(rows) < CANDIDATES:
        ids = [r[0] for r in db.execute(
            "SELECT rowid FROM search_index WHERE search_index MATCH ? AND rowid < ? ORDER BY rowid DESC LIMIT ?",
            (expression, 2**63 - 1 if below is None else below, chunk),
        )]
        if not ids:
            break
        rows += [(rowid, varint(size)[0], text) for rowid, size, text in db.execute(
            "SELECT c.id, d.sz, substr(c0, 1, ?) FROM search_index_content c JOIN search_index_docsize d "
            f"ON d.id = c.id WHERE c.id IN (SELECT value FROM json_each(?)) AND {' AND '.join(where)} "
            "ORDER BY c.id DESC",
            (SCANNED, json.dumps(ids), *args),
        )]
        if len(ids) < chunk:
            break
        below, chunk = ids[-1], chunk * 4
    return rows[:CANDIDATES]
