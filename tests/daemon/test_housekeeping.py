"""The daemon's minute tick in this process, with a real Reaper, Store and event loop: it is
jittered within ten percent of the sweep interval (so many users' daemons do not wake in step),
and a new interval from the config file re-arms it at once. (tests/api/test_promises.py checks
end to end that the tick's sweep finds a reused pid.)"""

from __future__ import annotations

import msgspec
import pytest

from omnid.daemon.housekeeping import Housekeeping
from omnid.jobs.idle import IdleExpiry
from omnid.jobs.reaper import Reaper
from omnid.jobs.retention import Archiver
from omnid_client.protocol import Settings


@pytest.fixture
def housekeeping(store, loop, tmp_path):
    """Housekeeping ticking for a real reaper; no instance or config (the tick's file checks
    are not what these tests look at, and ``_arm_tick``/``apply_settings`` never use them)."""
    reaper = Reaper(store, loop, sweep_interval=100.0)
    reaper.start()
    hk = Housekeeping(
        loop, None, None,  # type: ignore[arg-type]
        log_level_fixed=True, retention_fixed=True, sweep_fixed=False, serve_on=print, stop=print,
    )
    archiver = Archiver(store, loop, age=lambda: None, archive_path=tmp_path / "archive.db")
    hk.store, hk.reaper, hk.idle, hk.archiver = store, reaper, IdleExpiry(store, loop, reaper), archiver
    yield hk
    hk.stop()
    reaper.stop()


def next_tick(hk: Housekeeping) -> float:
    handle = hk._tick._handle
    assert handle is not None, "the tick is armed"
    return handle.when() - hk.loop.time()


def test_the_tick_is_jittered_within_ten_percent_of_the_sweep_interval(housekeeping):
    delays = []
    for interval in range(100, 150):
        housekeeping.reaper.set_interval(float(interval))
        housekeeping._arm_tick()
        delay = next_tick(housekeeping)
        delays.append(delay / interval)
        assert 0.9 * interval - 0.5 <= delay <= 1.1 * interval + 0.01, (interval, delay)
    assert len({round(d, 3) for d in delays}) > 1, "the delay varies"


def test_a_new_sweep_interval_re_arms_the_tick_by_it(housekeeping):
    housekeeping._arm_tick()
    assert next_tick(housekeeping) > 80
    old = Settings(sweep_interval=100.0)
    housekeeping.apply_settings(old, msgspec.structs.replace(old, sweep_interval=30.0))
    assert housekeeping.reaper.sweep_interval == 30.0
    assert 0.9 * 30 - 0.5 <= next_tick(housekeeping) <= 1.1 * 30 + 0.01
    housekeeping.sweep_fixed = True  # OMNID_SWEEP_INTERVAL set: the config file's value is ignored
    housekeeping.apply_settings(Settings(sweep_interval=30.0), Settings(sweep_interval=200.0))
    assert housekeeping.reaper.sweep_interval == 30.0 and next_tick(housekeeping) < 40
