"""The daemon's store defers search rows: committed to ``search_pending`` with their
batch, moved into the full-text index in batches, and found by searches meanwhile."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable, Iterator

import pytest

from omnid.store import Store, search


class Loop:
    """The event loop's call_soon and call_later, run by hand."""

    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []
        self.later: list[tuple[float, Callable[[], None]]] = []

    def run_soon(self) -> None:
        while self.soon:
            self.soon.pop(0)()

    def run_timers(self) -> None:
        timers, self.later = self.later, []
        for _, fn in timers:
            fn()
        self.run_soon()


def open_store(path: Path, loop: Loop) -> Store:
    return Store(path, schedule=loop.soon.append, schedule_later=lambda d, fn: loop.later.append((d, fn)))


def add(store: Store, loop: Loop, first: int, count: int) -> None:
    with store.write() as db:
        for n in range(first, first + count):
            search.index(db, "message", str(n), f"word{n} common", session_id="s", project_id=None, created_at=1.0)
    loop.run_soon()


@pytest.fixture
def deferring(tmp_path: Path) -> Iterator[tuple[Store, Loop, Path]]:
    """A store as the daemon opens it (so it defers search rows), its loop and its file."""
    loop, path = Loop(), tmp_path / "omnid.db"
    store = open_store(path, loop)
    yield store, loop, path
    store.close()


def rows(path: Path, table: str) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute(f"SELECT ref_id FROM {table} ORDER BY rowid")]
    finally:
        db.close()


def test_rows_wait_in_the_pending_table_until_the_timer_moves_them(deferring):
    store, loop, path = deferring
    add(store, loop, 1, 3)
    assert rows(path, "search_pending") == ["1", "2", "3"], "committed with their batch"
    assert rows(path, "search_index") == []
    assert [d for d, _ in loop.later] == [search.INDEX_LAG]

    loop.run_timers()

    assert rows(path, "search_index") == ["1", "2", "3"]
    assert rows(path, "search_pending") == []
    assert loop.later == [], "no timer while nothing waits"


def test_enough_waiting_rows_move_at_the_commit_oldest_first(deferring):
    store, loop, path = deferring
    add(store, loop, 1, search.INDEX_ROWS - 1)
    add(store, loop, search.INDEX_ROWS, 1)
    assert rows(path, "search_index") == [str(n) for n in range(1, search.INDEX_ROWS + 1)]
    assert rows(path, "search_pending") == []


def test_a_search_finds_waiting_rows_without_writing_them(deferring):
    store, loop, path = deferring
    add(store, loop, 1, 2)  # committed, deferred
    with store.write() as db:  # and one in the open transaction
        search.index(db, "message", "3", "word3 common", session_id="s", project_id=None, created_at=1.0)
    hits = search.query(store.db, "common", project_id=None, session_id=None, kinds=None, limit=10, now=2.0)
    assert sorted(h.ref_id for h in hits) == ["1", "2", "3"]
    loop.run_soon()
    assert rows(path, "search_index") == [], "the search indexed them for itself only"
    assert rows(path, "search_pending") == ["1", "2", "3"]
    loop.run_timers()
    assert rows(path, "search_index") == ["1", "2", "3"]


def test_unindexing_drops_deferred_rows_too(deferring):
    store, loop, path = deferring
    add(store, loop, 1, 2)
    with store.write() as db:
        search.unindex(db, "message", ["1"])
    loop.run_soon()
    assert rows(path, "search_pending") == ["2"]


def test_rows_left_by_a_daemon_that_died_are_indexed_on_the_next_start_and_at_close(tmp_path: Path):
    loop, path = Loop(), tmp_path / "omnid.db"
    store = open_store(path, loop)
    add(store, loop, 1, 2)
    store.db.close()  # the daemon dies: no close(), the rows stay deferred
    store.guard.close()

    loop = Loop()
    store = open_store(path, loop)
    add(store, loop, 3, 1)  # the first commit moves what the last daemon left
    assert rows(path, "search_index") == ["1", "2", "3"]

    add(store, loop, 4, 1)
    store.close()  # and close moves what waits
    assert rows(path, "search_index") == ["1", "2", "3", "4"]
    assert rows(path, "search_pending") == []
