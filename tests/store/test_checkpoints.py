"""WAL checkpoints of the daemon's store run in a thread of their own, never inside a group commit."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

from omnid.store import Store, sessions as q
from omnid.store.checkpoints import EVERY, FALLBACK_PAGES
from omnid_client.protocol import Session
from tests.helpers import fd_targets


def add_session(store: Store) -> None:
    with store.write() as db:
        q.insert(db, Session(str(uuid.uuid4()), "tool", None, "default", None, None, None, None, {}, 1.0, 1.0),
                 dedup=False)


def test_the_daemons_store_checkpoints_in_a_thread_after_enough_writes(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    path = tmp_path / "omnid.db"
    store = Store(path, schedule=loop.call_soon, schedule_later=loop.call_later)
    try:
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == FALLBACK_PAGES
        size = path.stat().st_size
        for _ in range(EVERY - 1):
            add_session(store)
            loop.run_until_complete(asyncio.sleep(0))  # the batch commits
        assert path.stat().st_size == size, "no commit copied pages back into the database file"
        assert not any(t.name.startswith("omnid-checkpoint") for t in threading.enumerate())
        add_session(store)
        loop.run_until_complete(asyncio.sleep(0))
        running = store.checkpoints._running
        assert running is not None
        running.result(timeout=30)
        assert any(t.name.startswith("omnid-checkpoint") for t in threading.enumerate())
        assert path.stat().st_size > size, "the thread copied the committed pages back"
    finally:
        store.close()
        loop.close()
    assert not any(t.name.startswith("omnid-checkpoint") for t in threading.enumerate()), "closing ends the thread"
    again = Store(path)
    assert again.db.execute("SELECT count(*) FROM sessions").fetchone()[0] == EVERY
    again.close()


def open_files_under(directory: Path) -> list[str]:
    """This process's fds open on files in ``directory`` (the store's database, WAL, shm)."""
    return sorted(target for target in fd_targets() if target.startswith(f"{directory}/"))


def test_the_checkpoint_thread_opens_no_file_after_the_start(tmp_path: Path) -> None:
    """Every file the store holds is open from the start: the first checkpoint, perhaps when a
    crowd of clients holds every fd the daemon may have, needs no new one."""
    loop = asyncio.new_event_loop()
    store = Store(tmp_path / "omnid.db", schedule=loop.call_soon, schedule_later=loop.call_later)
    try:
        at_start = open_files_under(tmp_path)
        assert at_start.count(f"{tmp_path}/omnid.db-wal") == 2, "the store's WAL and the checkpointer's"
        for _ in range(EVERY):
            add_session(store)
            loop.run_until_complete(asyncio.sleep(0))
        running = store.checkpoints._running
        assert running is not None
        running.result(timeout=30)
        assert open_files_under(tmp_path) == at_start
    finally:
        store.close()
        loop.close()


def test_a_store_without_a_loop_leaves_checkpoints_to_sqlite(store: Store) -> None:
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    for _ in range(EVERY):
        add_session(store)
    assert store.checkpoints._running is None
