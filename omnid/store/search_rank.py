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
"""Characters of each candidate in which a word's occurrences are counted."""
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


def weights(db: sqlite3.Connection, words: list[Term]) -> list[float]:
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
            held = min(total, SAMPLE * total / (newest - row[0] + 1))
        found.append(math.log((total - held + 0.5) / (held + 0.5) + 1))
    return found


def occurrences(term: Term) -> re.Pattern[str]:
    """Where ``term`` is a word (or starts one) in lower-case text: no letter or digit
    before it (nor after it, unless a prefix), as FTS5's tokenizer splits words. The word
    comes first so that ``re`` looks for it as a literal: ~20x faster than a lookbehind first."""
    word = re.escape(term.word)
    return re.compile(word + r"(?<![^\W_]" + word + ")" + ("" if term.prefix else r"(?![^\W_])"))


def scored(rows: list[Any], words: list[Term], weighted: list[float]) -> list[tuple[float, int, Any]]:
    """(score, rowid, row) of each candidate (rowid, length, text) row: BM25 over the rows' first ``SCANNED``
    characters, with their length in characters against the candidates' mean. A word
    FTS5 matched but not found so (its accents differ) counts once. Ties go to the newest."""
    counters = [(weight * (K1 + 1), occurrences(w).findall) for w, weight in zip(words, weighted, strict=True)]
    fixed, per_char = K1 * (1 - B), K1 * B / max(1.0, sum(r[1] for r in rows) / len(rows))
    scored = []
    for row in rows:
        text = row[2].lower()
        norm = fixed + per_char * row[1]
        score = 0.0
        for weight, findall in counters:
            tf = len(findall(text)) or 1
            score += weight * tf / (tf + norm)
        scored.append((score, row[0], row))
    return scored
