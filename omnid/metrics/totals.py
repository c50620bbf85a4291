"""The counters' totals across restarts, kept in ``metrics.json`` in the state dir
(histograms and gauges are not kept)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

from omnid_client.protocol import Counts

from ..safefile import atomic_write, open_private, os_message

log = logging.getLogger("omnid.metrics")

MAX_BYTES = 1 << 20


class Saved(msgspec.Struct):
    since: float
    """When the first run counted (UTC epoch seconds)."""
    counts: Counts


def load(path: Path) -> Saved | None:
    """The totals saved by earlier runs; None if there are none, or (logged) if the file is unusable."""
    try:
        fd = open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("ignoring the metrics totals in %s: %s; totals start afresh", path, os_message(e))
        return None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_BYTES + 1)
    try:
        if len(raw) > MAX_BYTES:
            raise msgspec.DecodeError(f"over {MAX_BYTES} bytes")
        return msgspec.json.decode(raw, type=Saved)
    except msgspec.DecodeError as e:
        log.warning("ignoring the metrics totals in %s: %s; totals start afresh", path, e)
        return None


def save(path: Path, saved: Saved) -> None:
    """Replace the totals file whole (OSError if it cannot be written)."""
    with atomic_write(path, owned=True) as pending:
        pending.file.write(msgspec.json.encode(saved))
