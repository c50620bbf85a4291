"""The metrics summary ``omnid stats`` and ``omnid status`` show (without click): the reuse
rate and the busiest methods' latency."""

from __future__ import annotations

from typing import Any

from omnid_client.protocol import DaemonMetrics

from ._text import when

TOP_METHODS = 5


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.3g} ms"


def _rate(rate: float | None, outcomes: dict[str, dict[str, int]]) -> str:
    if rate is None:
        return "no get_or_create yet"
    by: dict[str, int] = {}
    for counts in outcomes.values():
        for outcome, n in counts.items():
            by[outcome] = by.get(outcome, 0) + n
    calls = sum(by.values())
    parts = ", ".join(f"{by.get(o, 0)} {o}" for o in ("existing", "resumed", "created"))
    return f"{rate:.1%} of {calls} get_or_create ({parts})"


def top_methods(m: DaemonMetrics, top: int = TOP_METHODS) -> list[dict[str, Any]]:
    """The ``top`` methods by replies since start, with p50/p99 estimated from their histograms."""
    busiest = sorted(m.methods.items(), key=lambda kv: (-kv[1].requests, kv[0]))[:top]
    return [
        {
            "method": name,
            "requests": mm.requests,
            "errors": sum(mm.errors.values()),
            "p50_seconds": mm.latency.quantile(0.5),
            "p99_seconds": mm.latency.quantile(0.99),
        }
        for name, mm in busiest
    ]


def summary_json(m: DaemonMetrics) -> dict[str, Any]:
    return {
        "reuse_rate": m.reuse_rate,
        "total_reuse_rate": m.total_reuse_rate,
        "totals_since": m.totals_since,
        "get_or_create": m.since_start.get_or_create,
        "top_methods": top_methods(m),
        "quantiles": "estimated from histogram buckets (linear inside a bucket)",
    }


def summary_fields(m: DaemonMetrics) -> list[tuple[str, str | None]]:
    """(label, text) lines: the reuse rate since start and in total, and the top methods."""
    busiest = "; ".join(
        f"{row['method']} {row['requests']} calls, {row['errors']} errors, p50 {_ms(row['p50_seconds'])}, "
        f"p99 {_ms(row['p99_seconds'])}"
        for row in top_methods(m)
    )
    return [
        ("reuse rate", _rate(m.reuse_rate, m.since_start.get_or_create) + " since start"),
        ("reuse total", _rate(m.total_reuse_rate, m.totals.get_or_create) + f" since {when(m.totals_since)}"),
        ("busiest", f"{busiest} (p50/p99 estimated from histogram buckets)" if busiest else None),
        ("metrics", None if m.enabled else "off (OMNID_METRICS=off): nothing is counted"),
    ]
