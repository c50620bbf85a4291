"""How full-text search ranks its candidates: BM25, without FTS5's bm25().

FTS5's bm25() first counts every match of each query word in the whole index (its IDF),
which on a big index costs more than the rest of a search together; here a word's
weight is estimated from its newest ``SAMPLE`` matches instead, and each candidate's
occurrences are counted in its text.
"""

from __future__ import annotations

import math
import re
import sqlite3
from typing import Any, NamedTuple, Sequence

_TERM = re.compile(r"(\w+)(\*?)", re.UNICODE)
SAMPLE = 1000
"""How many of a word's newest matches estimate how common it is (its weight)."""
SCANNED = 8192
"""Characters of each candidate in which a word's occurrences are counted; its length is
FTS5's count of its words (its docsize row), as bm25() has it."""
K1, B = 1.2, 0.75
"""BM25's constants, as FTS5's bm25() has them."""


class Term(NamedTuple):
    word: str
    """Lower case."""
    prefix: bool


def terms(text: str) -> list[Term]:
    """The words of ``text``, each whole, or a prefix where a ``*`` follows it at once
    (``"zebra cross*"``); nothing else in it is query syntax."""
    return [Term(m[1].lower(), bool(m[2])) for m in _TERM.finditer(text)]


def match_expression(words: Sequence[Term]) -> str:
    """An FTS5 query matching rows holding all ``words``, so user text never reaches
    FTS5's query syntax."""
    return " ".join(f'"{w.word}"*' if w.prefix else f'"{w.word}"' for w in words)


def weights(db: sqlite3.Connection, words: list[Term], rows: int) -> list[float]:
    """Each word's BM25 weight (its IDF, by bm25()'s formula) among ``rows`` rows, from how
    many hold it, estimated from its newest ``SAMPLE`` matches: a word matched more often
    than that holds about as large a share of the whole index as of the rowids since its
    ``SAMPLE``-th newest match (so a search never walks a word's every match, as bm25()
    does); a rarer word's matches are counted."""
    newest = last_rowid(db)
    found = []
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
            held = min(rows, SAMPLE * rows / (newest - row[0] + 1))
        found.append(max(1e-6, math.log((rows - held + 0.5) / (held + 0.5))))
    return found


def last_rowid(db: sqlite3.Connection) -> int:
    """The newest row's rowid in the index (0 when it is empty)."""
    row = db.execute("SELECT rowid FROM search_index ORDER BY rowid DESC LIMIT 1").fetchone()
    return 0 if row is None else int(row[0])


def occurrences(term: Term) -> re.Pattern[str]:
    """Where ``term`` is a word (or starts one) in lower-case text: no letter or digit
    before it (nor after it, unless a prefix), as FTS5's tokenizer splits words. The word
    comes first so that ``re`` looks for it as a literal: ~20x faster than a lookbehind first."""
    word = re.escape(term.word)
    return re.compile(word + r"(?<![^\W_]" + word + ")" + ("" if term.prefix else r"(?![^\W_])"))


def scored(
    rows: list[Any], words: list[Term], weighted: list[float], mean_length: float
) -> list[tuple[float, int, Any]]:
    """(score, rowid, row) of each candidate (rowid, length in words, text): BM25 over the
    text (the body's first ``SCANNED`` characters). A word FTS5 matched but not found so
    (its accents differ) counts once. Ties go to the newest."""
    counters = [(weight * (K1 + 1), occurrences(w).findall) for w, weight in zip(words, weighted, strict=True)]
    fixed, per_word = K1 * (1 - B), K1 * B / max(1.0, mean_length)
    scored = []
    for row in rows:
        text = row[2].lower()
        norm = fixed + per_word * row[1]
        score = 0.0
        for weight, findall in counters:
            tf = len(findall(text)) or 1
            score += weight * tf / (tf + norm)
        scored.append((score, row[0], row))
    return scored


def varint(data: bytes, at: int = 0) -> tuple[int, int]:
    """The varint at ``at`` in an FTS5 record (SQLite's format), and where the next starts."""
    value = 0
    for n in range(9):
        byte = data[at + n]
        if n == 8:
            return (value << 8) | byte, at + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + n + 1
    raise AssertionError("unreachable")


def index_size(db: sqlite3.Connection) -> tuple[int, float]:
    """Rows in the index and their mean words, from FTS5's averages record (rows, then
    the words of each column), as bm25() reads them."""
    row = db.execute("SELECT block FROM search_index_data WHERE id = 1").fetchone()
    if row is None or not row[0]:
        return 0, 1.0
    rows, at = varint(row[0])
    words, _ = varint(row[0], at)
    return rows, words / rows if rows else 1.0
