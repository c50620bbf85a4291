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
import logging
import math
import re
import sqlite3
from typing import Any, Callable, ContextManager, NamedTuple, Sequence

from omnid_client.protocol import SearchHit

log = logging.getLogger("omnid.store")

_TERM = re.compile(r"(\w+)(\*?)", re.UNICODE)
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
SAMPLE = 1000
"""How many of a word's newest matches estimate how common it is (its weight)."""
SCANNED = 8192
"""Characters of each candidate in which a word's occurrences are counted."""
K1, B = 1.2, 0.75
"""BM25's constants, as FTS5's bm25() has them."""


class Term(NamedTuple):
    word: str
    """Lower case."""
    prefix: bool


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
    last = _last_row(db)
    db.executemany(_INSERT, [(last + n, *row) for n, row in enumerate(rows, 1)])
    db.executemany(_REF, [(row[1], row[2], last + n, row[3]) for n, row in enumerate(rows, 1)])


def _last_row(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT rowid FROM search_index ORDER BY rowid DESC LIMIT 1").fetchone()
    return 0 if row is None else int(row[0])


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
    last = _last_row(db)
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


def terms(text: str) -> list[Term]:
    """The words of ``text``, each whole, or a prefix where a ``*`` follows it at once
    (``"zebra cross*"``); nothing else in it is query syntax."""
    return [Term(m[1].lower(), bool(m[2])) for m in _TERM.finditer(text)]


def match_expression(words: Sequence[Term]) -> str:
    """An FTS5 query matching rows holding all ``words``, so user text never reaches
    FTS5's query syntax."""
    return " ".join(f'"{w.word}"*' if w.prefix else f'"{w.word}"' for w in words)


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
    where, args = _conditions(match_expression(words), project_id, session_id, kinds, now)
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
    expression: str, project_id: str | None, session_id: str | None, kinds: Sequence[str] | None, now: float
) -> tuple[list[str], list[Any]]:
    # Expired memories wait for the purge in the index, but are never returned.
    where = [
        "search_index MATCH ?",
        "NOT (kind = 'memory' AND ref_id IN (SELECT memory_id FROM memories WHERE expires_at <= ?))",
    ]
    args: list[Any] = [expression, now]
    if project_id is not None:
        where.append("project_id = ?")
        args.append(project_id)
    if session_id is not None:
        where.append("session_id = ?")
        args.append(session_id)
    if kinds:
        where.append(f"kind IN ({','.join('?' * len(kinds))})")
        args += kinds
    return where, args


_SNIPPET = "snippet(search_index, 0, '[', ']', '…', 16)"


def _top(db: sqlite3.Connection, words: list[Term], where: list[str], args: list[Any], limit: int) -> list[SearchHit]:
    # Bounded top-k: FTS5 walks the matches newest first and stops after CANDIDATES, which
    # are ranked here (a heap, not a sort of every match), so a query matching most of a big
    # index costs about what one matching CANDIDATES rows does. FTS5's bm25() is not used:
    # it counts every match of each word in the whole index first (see _weights).
    # A prefix makes FTS5 merge every matching word's doclist at each query, so then the
    # snippets come with the candidates instead of from a second query.
    prefixed = any(w.prefix for w in words)
    rows = db.execute(
        "SELECT rowid, kind, ref_id, session_id, project_id, created_at, length(body), substr(body, 1, ?)"
        f"{', ' + _SNIPPET if prefixed else ''} FROM search_index WHERE {' AND '.join(where)} "
        "ORDER BY rowid DESC LIMIT ?",
        (SCANNED, *args, CANDIDATES),
    ).fetchall()
    if not rows:
        return []
    best = heapq.nlargest(limit, _scored(rows, words, _weights(db, words)))
    if prefixed:
        snippets = {row[0]: row[8] for _, _, row in best}
    else:
        snippets = dict(db.execute(
            f"SELECT rowid, {_SNIPPET} FROM search_index WHERE search_index MATCH ? "
            f"AND rowid IN ({','.join('?' * len(best))})",
            (args[0], *(rowid for _, rowid, _ in best)),
        ).fetchall())
    return [SearchHit(r[1], r[2], r[3], r[4], snippets[rowid], score, r[5]) for score, rowid, r in best]


def _weights(db: sqlite3.Connection, words: list[Term]) -> list[float]:
    """Each word's BM25 weight (its IDF), from how many rows hold it, estimated from its
    newest ``SAMPLE`` matches: a word matched more often than that holds about as large a
    share of the whole index as of the rows since its ``SAMPLE``-th newest match (so a
    search never walks a word's every match, which FTS5's bm25() does). The row count is
    the span of rowids, holes included."""
    newest, oldest = db.execute(
        "SELECT (SELECT rowid FROM search_index ORDER BY rowid DESC LIMIT 1), "
        "(SELECT rowid FROM search_index ORDER BY rowid LIMIT 1)"
    ).fetchone()
    total = newest - oldest + 1
    weights = []
    for word in words:
        expression = match_expression([word])
        row = db.execute(
            "SELECT rowid FROM search_index WHERE search_index MATCH ? ORDER BY rowid DESC LIMIT 1 OFFSET ?",
            (expression, SAMPLE - 1),
        ).fetchone()
        if row is None:
            count = "SELECT count(*) FROM search_index WHERE search_index MATCH ?"
            (held,) = db.execute(count, (expression,)).fetchone()
        else:
            held = min(total, SAMPLE * total / (newest - row[0] + 1))
        weights.append(math.log((total - held + 0.5) / (held + 0.5) + 1))
    return weights


def _occurrences(term: Term) -> re.Pattern[str]:
    """Where ``term`` is a word (or starts one) in lower-case text: no letter or digit
    before it (nor after it, unless a prefix), as FTS5's tokenizer splits words. The word
    comes first so that ``re`` looks for it as a literal: ~20x faster than a lookbehind first."""
    word = re.escape(term.word)
    return re.compile(word + r"(?<![^\W_]" + word + ")" + ("" if term.prefix else r"(?![^\W_])"))


def _scored(rows: list[Any], words: list[Term], weights: list[float]) -> list[tuple[float, int, Any]]:
    """(score, rowid, row) of each candidate row: BM25 over the rows' first ``SCANNED``
    characters, with their length in characters against the candidates' mean. A word
    FTS5 matched but not found so (its accents differ) counts once. Ties go to the newest."""
    counters = [(weight * (K1 + 1), _occurrences(w).findall) for w, weight in zip(words, weights, strict=True)]
    fixed, per_char = K1 * (1 - B), K1 * B / max(1.0, sum(r[6] for r in rows) / len(rows))
    scored = []
    for row in rows:
        text = row[7].lower()
        norm = fixed + per_char * row[6]
        score = 0.0
        for weight, findall in counters:
            tf = len(findall(text)) or 1
            score += weight * tf / (tf + norm)
        scored.append((score, row[0], row))
    return scored
