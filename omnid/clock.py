"""The daemon's wall clock: every timestamp comes from it.

Waiting (expiry, idle, timers) runs on the monotonic clock instead, which a wall-clock
jump does not move.

``OMNID_TEST_CLOCK_FILE`` (tests only) names a file holding seconds to add to the wall
clock, read on every call: it lets a test jump this daemon's wall clock without touching
the machine's.
"""

from __future__ import annotations

import os
import time

_SKEW_FILE = os.environ.get("OMNID_TEST_CLOCK_FILE") or None


def wall() -> float:
    """UTC epoch seconds."""
    if _SKEW_FILE is None:
        return time.time()
    try:
        with open(_SKEW_FILE) as f:
            skew = float(f.read() or 0)
    except (OSError, ValueError):
        skew = 0.0
    return time.time() + skew
