"""``omnid metrics`` and the exposition writer, read back with prometheus-client's own parsers
(Prometheus text 0.0.4 and OpenMetrics 1.0)."""

from __future__ import annotations

import math

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from omnid.metrics import Metrics
from omnid.metrics.exposition import render
from omnid_client import NotFound
from tests.helpers import omnid_json, omnid_ok

TOOL = "exposition-test"


def families(text: str, openmetrics: bool = False) -> dict:
    parse = parse_openmetrics if openmetrics else parse_prometheus
    return {f.name: f for f in parse(text)}


def samples(family, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples if s.name == name}


@pytest.mark.parametrize("openmetrics", [False, True], ids=["prometheus", "openmetrics"])
def test_omnid_metrics_parses_and_says_what_the_daemon_counted(client, spawn_owner, openmetrics):
    owner = spawn_owner()
    client.get_or_create(TOOL, pid=owner.pid)
    client.get_or_create(TOOL, pid=owner.pid)
    with pytest.raises(NotFound):
        client.get("00000000-0000-4000-8000-000000000000")
    text = omnid_ok("metrics", *(["--openmetrics"] if openmetrics else []))
    assert text.endswith("# EOF\n") == openmetrics
    got = families(text, openmetrics)
    snapshot = client.metrics()  # counts one more daemon.metrics than the text saw, nothing else

    # prometheus-client names a counter family without its _total in both formats.
    requests = samples(got["omnid_requests"], "omnid_requests_total")
    assert requests[(("method", "session.get_or_create"),)] == 2
    assert requests[(("method", "session.get"),)] == 1
    assert samples(got["omnid_errors"], "omnid_errors_total") == {(("code", "not_found"), ("method", "session.get")): 1}
    outcomes = samples(got["omnid_get_or_create"], "omnid_get_or_create_total")
    assert outcomes[(("outcome", "created"), ("tool", TOOL))] == 1
    assert outcomes[(("outcome", "existing"), ("tool", TOOL))] == 1
    assert samples(got["omnid_session_reuse_ratio"], "omnid_session_reuse_ratio") == {(): 0.5}
    assert got["omnid_request_duration_seconds"].type == "histogram"
    ended = samples(got["omnid_sessions_ended"], "omnid_sessions_ended_total")
    assert set(ended) == {(("reason", r),) for r in ("ended", "reaped", "expired")}

    # Every method answered so far is in the histogram, its buckets cumulative up to +Inf == _count.
    hist = got["omnid_request_duration_seconds"]
    for method, count in snapshot.since_start.requests.items():
        key = (("method", method),)
        buckets = {
            s.labels["le"]: s.value for s in hist.samples
            if s.name.endswith("_bucket") and s.labels["method"] == method
        }
        if method == "daemon.metrics":
            count -= 1
            if not count:
                assert not buckets
                continue
        values = list(buckets.values())
        assert values == sorted(values) and float(next(iter(buckets))) == 50e-6
        assert math.isinf(float(list(buckets)[-1])) and values[-1] == count
        assert samples(hist, "omnid_request_duration_seconds_count")[key] == count
        assert samples(hist, "omnid_request_duration_seconds_sum")[key] > 0
    for name in ("omnid_connections", "omnid_watched_owners", "omnid_database_bytes", "omnid_wal_bytes",
                 "omnid_commit_batch_writes", "omnid_commit_duration_seconds", "omnid_reap_latency_seconds",
                 "omnid_commit_failures", "omnid_start_time_seconds", "omnid_info"):
        assert name in got, name


@pytest.mark.parametrize("openmetrics", [False, True], ids=["prometheus", "openmetrics"])
def test_label_values_are_escaped_so_the_parser_gets_them_back_exactly(openmetrics):
    metrics = Metrics()
    odd = 'a "quoted" back\\slash\nand a newline'
    metrics.outcome(odd, "created")
    metrics.outcome("plain", "existing")
    got = families(render(metrics.snapshot(), openmetrics=openmetrics), openmetrics)
    outcomes = samples(got["omnid_get_or_create"], "omnid_get_or_create_total")
    assert outcomes[(("outcome", "created"), ("tool", odd))] == 1
    assert outcomes[(("outcome", "existing"), ("tool", "plain"))] == 1


def test_tool_ids_past_the_limit_are_counted_together_as_other():
    metrics = Metrics()
    for i in range(200):
        metrics.outcome(f"tool-{i}", "created")
    counts = metrics.counts().get_or_create
    assert len(counts) == 65 and counts["other"]["created"] == 200 - 64


def test_the_quantile_estimate_interpolates_inside_the_bucket():
    metrics = Metrics()
    for elapsed in (60_000, 70_000, 80_000, 2_000_000):  # three in (50, 100] µs, one in (1, 2.5] ms
        metrics.commit_time.observe(elapsed)
    hist = metrics.snapshot().commit_seconds
    assert hist.count == 4 and hist.sum == pytest.approx(2.21e-3)
    assert hist.quantile(0.5) == pytest.approx(50e-6 + 50e-6 * 2 / 3)
    assert 1e-3 < hist.quantile(0.99) <= 2.5e-3
    assert Metrics().snapshot().commit_seconds.quantile(0.5) is None


def test_stats_and_status_show_the_reuse_rate_and_the_busiest_methods(client, spawn_owner):
    owner = spawn_owner()
    for _ in range(4):
        client.get_or_create(TOOL, pid=owner.pid)
    stats = omnid_json("stats")["metrics"]
    assert stats["reuse_rate"] == 0.75 and stats["get_or_create"] == {TOOL: {"created": 1, "existing": 3, "resumed": 0}}
    top = stats["top_methods"][0]
    assert top["method"] == "session.get_or_create" and top["requests"] == 4 and top["errors"] == 0
    assert 0 < top["p50_seconds"] <= top["p99_seconds"] <= 1.0
    status = omnid_json("status")["metrics"]
    assert status["reuse_rate"] == 0.75 and status["top_methods"][0]["method"] == "session.get_or_create"
    text = omnid_ok("status")
    assert "reuse rate:     75.0% of 4 get_or_create (3 existing, 0 resumed, 1 created) since start" in text
    assert "(p50/p99 estimated from histogram buckets)" in text
    assert "busiest:        session.get_or_create 4 calls, 0 errors, p50 " in text
    assert "reuse rate:" in omnid_ok("stats")
