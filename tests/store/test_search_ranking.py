"""Search ranks a bounded set of matches: the newest ``CANDIDATES`` of a query that
matches more, best bm25 first, on a real database file."""

from __future__ import annotations

from pathlib import Path

from omnid.store import Store, search


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
