"""Search ranks a bounded set of matches: the newest ``CANDIDATES`` of a query that
matches more, best bm25 first, on a real database file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from omnid.store import Store, search, search_rank


def fill(store: Store, bodies: list[str]) -> None:
    with store.write() as db:
        for n, body in enumerate(bodies, 1):
            search.index(db, "message", str(n), body, session_id="s", project_id=None, created_at=float(n))
    store.flush()


def test_the_best_match_comes_first_and_the_limit_holds(tmp_path: Path):
    store = Store(tmp_path / "omnid.db")
    try:
        fill(store, ["needle in hay", "needle needle needle", "hay only", "a needle"])
        hits = search.query(store.db, "needle", project_id=None, session_id=None, kinds=None, limit=2, now=10.0)
    finally:
        store.close()
    assert [h.ref_id for h in hits] == ["2", "4"]
    assert hits[0].score > hits[1].score
    assert hits[0].snippet == "[needle] [needle] [needle]"


def test_a_query_matching_more_than_the_candidates_ranks_only_the_newest(tmp_path: Path):
    store = Store(tmp_path / "omnid.db")
    older = search.CANDIDATES + 5
    try:
        # The old rows match best (the word three times); the newest CANDIDATES match once.
        fill(store, ["word word word"] * older + ["word and more"] * search.CANDIDATES)
        hits = search.query(store.db, "word", project_id=None, session_id=None, kinds=None, limit=5, now=1e9)
    finally:
        store.close()
    assert len(hits) == 5
    assert all(int(h.ref_id) > older for h in hits), "only the newest matches are ranked"
    assert [int(h.ref_id) for h in hits] == sorted((int(h.ref_id) for h in hits), reverse=True)


def query(store: Store, text: str, limit: int = 10) -> list[str]:
    hits = search.query(store.db, text, project_id=None, session_id=None, kinds=None, limit=limit, now=1e9)
    return [h.ref_id for h in hits]


def test_words_match_whole_unless_a_star_follows_them(tmp_path: Path):
    store = Store(tmp_path / "omnid.db")
    try:
        fill(store, ["the zebra crossing", "cross the road", "zebras cross"])
        assert query(store, "cross", limit=2) == ["3", "2"], "whole words fill the page"
        assert sorted(query(store, "cross*", limit=3)) == ["1", "2", "3"]
        assert query(store, "zebra cross*", limit=1) == ["1"]
        assert query(store, "zebra *", limit=1) == ["1"], "a star apart from the word is no prefix"
        assert sorted(query(store, "ZEBRA*")) == ["1", "3"]
        # Fewer whole-word hits than the page holds: the last word (only) widens to a prefix,
        # so a word typed in part still finds.
        assert sorted(query(store, "cross")) == ["1", "2", "3"]
        assert query(store, "zebra cross") == ["1"]
        assert sorted(query(store, "zeb")) == ["1", "3"]
        assert query(store, "cros zebra") == [], "only the last word widens"
    finally:
        store.close()
    Term = search_rank.Term
    assert search_rank.terms("Zebra cross* *x y*z") == [
        Term("zebra", False), Term("cross", True), Term("x", False), Term("y", True), Term("z", False),
    ]


def test_a_rarer_word_weighs_more_than_a_common_one(tmp_path: Path):
    store = Store(tmp_path / "omnid.db")
    try:
        # "common" is in every row, "rare" in two; the older row has the rare word three
        # times, the newer one the common word: only the words' weights put the older first.
        fill(store, ["common filler words here"] * 50 + ["rare rare rare common", "common common common rare"])
        assert query(store, "common rare") == ["51", "52"]
        assert query(store, "rare common") == ["51", "52"]
        first = search.query(store.db, "common rare", project_id=None, session_id=None, kinds=None, limit=1, now=1e9)
        assert first[0].snippet == "[rare] [rare] [rare] [common]"
    finally:
        store.close()


def test_a_common_words_weight_is_estimated_from_its_newest_matches(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(search_rank, "SAMPLE", 10)
    store = Store(tmp_path / "omnid.db")
    try:
        # "half" is in every other row of 200, "few" in 5: "half" is estimated from its 10
        # newest matches (over 20 rows), "few" counted.
        fill(store, [f"row {'half' if n % 2 else 'other'}{' few' if n % 40 == 0 else ''}" for n in range(200)])
        assert search_rank.index_size(store.db) == (200, 2.025)  # five rows have a third word
        half, few, every = search_rank.weights(store.db, search_rank.terms("half few row"), 200)
    finally:
        store.close()
    idf = lambda held: math.log((200 - held + 0.5) / (held + 0.5))  # noqa: E731
    assert half == pytest.approx(idf(100) or 0.0, abs=0.15)  # ~0: in half the rows
    assert few == pytest.approx(idf(5))
    assert every == 1e-6, "a word in most rows weighs next to nothing, as in bm25()"


def test_the_ranking_is_the_same_every_time_and_ties_go_to_the_newest(tmp_path: Path):
    store = Store(tmp_path / "omnid.db")
    try:
        fill(store, ["same words here", "other text", "same words here", "same words here"])
        runs = {tuple(query(store, "same words")) for _ in range(3)}
    finally:
        store.close()
    assert runs == {("4", "3", "1")}


def test_a_filter_that_leaves_out_the_newest_matches_walks_on_to_older_ones(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(search, "CANDIDATES", 4)
    store = Store(tmp_path / "omnid.db")
    try:
        with store.write() as db:
            for n in range(1, 31):  # rows 1-3 in session a; the 27 newer ones in b
                search.index(db, "message", str(n), "shared words", session_id="a" if n <= 3 else "b",
                             project_id=None, created_at=float(n))
        store.flush()
        hits = search.query(store.db, "shared", project_id=None, session_id="a", kinds=None, limit=10, now=1e9)
        newest = search.query(store.db, "shared", project_id=None, session_id=None, kinds=None, limit=10, now=1e9)
    finally:
        store.close()
    assert [h.ref_id for h in hits] == ["3", "2", "1"]
    assert [h.ref_id for h in newest] == ["30", "29", "28", "27"], "no more than CANDIDATES are ranked"


def test_the_ranking_agrees_with_fts5s_bm25_where_its_weights_are_exact(tmp_path: Path):
    store = Store(tmp_path / "omnid.db")
    try:
        # Fewer matches than SAMPLE: each word's weight is counted, not estimated, and the
        # lengths are FTS5's own, so the order must be bm25()'s.
        fill(store, [
            "alpha beta", "alpha alpha beta gamma delta", "beta beta beta alpha", "alpha " * 9 + "beta",
            "gamma alpha beta beta", "a much longer text with alpha and beta and many other words in it",
        ] + ["beta filler"] * 20)
        ours = query(store, "alpha beta")
        theirs = [str(r[0]) for r in store.db.execute(
            "SELECT rowid FROM search_index WHERE search_index MATCH '\"alpha\" \"beta\"' "
            "ORDER BY bm25(search_index), rowid DESC"
        )]
    finally:
        store.close()
    assert ours == theirs
