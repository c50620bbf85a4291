"""The metrics snapshot as Prometheus text (format 0.0.4) or OpenMetrics 1.0 text, for
``omnid metrics`` and node_exporter's textfile collector.

Hand-written to the exposition rules (``# HELP``/``# TYPE`` per family, ``_total`` on
counter samples, cumulative ``_bucket`` samples with an ``le`` label ending at ``+Inf``
then ``_sum`` and ``_count``, escaped label values, ``# EOF`` closing OpenMetrics); the
tests check it with prometheus-client's parsers, which the daemon never imports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from omnid_client.protocol import DaemonMetrics, Histogram

from .. import __version__

Labels = tuple[tuple[str, str], ...]


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{escape_label(value)}"' for name, value in labels) + "}"


class _Writer:
    def __init__(self, openmetrics: bool):
        self.openmetrics = openmetrics
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        """Start a family; a counter's ``name`` is given without ``_total``."""
        declared = name if self.openmetrics or kind != "counter" else f"{name}_total"
        help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self.lines += [f"# HELP {declared} {help_text}", f"# TYPE {declared} {kind}"]

    def sample(self, name: str, labels: Labels, value: float) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def counter(self, name: str, help_text: str, samples: Iterable[tuple[Labels, int]]) -> None:
        self.family(name, "counter", help_text)
        for labels, value in samples:
            self.sample(f"{name}_total", labels, value)

    def gauge(self, name: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> None:
        self.family(name, "gauge", help_text)
        for labels, value in samples:
            self.sample(name, labels, value)

    def histogram(self, name: str, help_text: str, samples: Iterable[tuple[Labels, Histogram]]) -> None:
        self.family(name, "histogram", help_text)
        for labels, hist in samples:
            cumulative = 0
            for bound, count in zip([*hist.bounds, math.inf], hist.counts, strict=False):
                cumulative += count
                self.sample(f"{name}_bucket", (*labels, ("le", _number(float(bound)))), cumulative)
            self.sample(f"{name}_sum", labels, hist.sum)
            self.sample(f"{name}_count", labels, cumulative)


def render(m: DaemonMetrics, *, openmetrics: bool = False) -> str:
    """Every metric of the snapshot, as exposition text ending in a newline."""
    w = _Writer(openmetrics)
    w.gauge("omnid_info", "The running daemon's version (always 1).", [((("version", __version__),), 1)])
    w.gauge("omnid_start_time_seconds", "When the daemon started, in seconds since the epoch.", [((), m.started_at)])
    w.counter("omnid_requests", "Replies written, by method.", _by("method", m.since_start.requests))
    w.counter(
        "omnid_errors", "Error replies, by method and error code.",
        ((((("method", method), ("code", code)), n) for method, codes in m.since_start.errors.items()
          for code, n in codes.items())),
    )
    w.histogram(
        "omnid_request_duration_seconds", "Seconds from a decoded request frame to its reply written, by method.",
        ((((("method", name),), mm.latency) for name, mm in m.methods.items())),
    )
    w.counter(
        "omnid_get_or_create", "session.get_or_create calls by tool and outcome (created, existing, resumed).",
        ((((("tool", tool), ("outcome", outcome)), n) for tool, outcomes in m.since_start.get_or_create.items()
          for outcome, n in outcomes.items())),
    )
    if m.reuse_rate is not None:
        w.gauge(
            "omnid_session_reuse_ratio", "Share of get_or_create calls since start that found a session.",
            [((), m.reuse_rate)],
        )
    ended = {"ended": 0, "reaped": 0, "expired": 0, **m.since_start.sessions_ended}
    w.counter("omnid_sessions_ended", "Sessions ended, by reason (ended, reaped, expired).", _by("reason", ended))
    w.histogram(
        "omnid_reap_latency_seconds",
        "Seconds from an owner's death to its sessions' end: exact from an exit event (via=event), "
        "an upper bound for a sweep (via=sweep).",
        (((("via", via),), hist) for via, hist in m.reap_latency.items()),
    )
    w.histogram("omnid_commit_batch_writes", "Writes joined in each group commit.", [((), m.commit_batch)])
    w.histogram("omnid_commit_duration_seconds", "Seconds each group commit took.", [((), m.commit_seconds)])
    w.counter("omnid_commit_failures", "Group commits that failed (and undid their batch).", [((), m.commit_failures)])
    w.gauge("omnid_connections", "Client connections open now.", [((), m.connections)])
    w.gauge("omnid_watched_owners", "Owner processes watched for their exit now.", [((), m.watched_owners)])
    w.gauge("omnid_database_bytes", "Size of the SQLite database file.", [((), m.database_bytes)])
    w.gauge("omnid_wal_bytes", "Size of the SQLite write-ahead log.", [((), m.wal_bytes)])
    if openmetrics:
        w.lines.append("# EOF")
    return "\n".join(w.lines) + "\n"


def _by(label: str, counts: dict[str, int]) -> Iterator[tuple[Labels, int]]:
    for value, n in counts.items():
        yield ((label, value),), n
