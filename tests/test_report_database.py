"""The report's database section from a synthetic day of the database agent's events."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from bus import vocabulary as vocab
from bus.events import HealthEvent, MetricBatch, Sample
from sinks.report.config import ReportSinkConfig
from sinks.report.render import produce
from sinks.report.rollups import RollupStore

DAY = dt.date(2026, 11, 25)
T0 = dt.datetime(2026, 11, 25, tzinfo=dt.UTC).timestamp()
NOW = T0 + 86400 + 300
SLOW = "SELECT * FROM orders WHERE customer = $1 | ORDER BY created <script>"
BUSY = "UPDATE sessions SET seen = now() WHERE id = $1"


def _statement(queryid: str, query: str, calls: float, total_seconds: float) -> list[Sample]:
    labels = {"server": "postgres", "database": "app", "user": "web", "queryid": queryid}
    return [
        Sample(vocab.POSTGRES_STATEMENT_CALLS, calls, labels),
        Sample(vocab.POSTGRES_STATEMENT_MEAN, total_seconds / calls, labels),
        Sample(vocab.POSTGRES_STATEMENT_TOTAL, total_seconds, labels),
        Sample(vocab.POSTGRES_STATEMENT_ROWS, calls * 2, labels),
        Sample(vocab.POSTGRES_STATEMENT_INFO, 1.0, {**labels, "query": query}),
    ]


def database_day() -> list[MetricBatch | HealthEvent]:
    """db01's server "postgres" every 10 minutes: 40% of 100 connections, 90% from 14:00 to 15:00;
    down for 30 minutes at 03:00; one deadlock an hour; two statements whose counters grow."""
    events: list[MetricBatch | HealthEvent] = []
    labels = {"server": "postgres"}
    for step in range(144):
        ts = T0 + 600 * step
        hour = step // 6
        down = hour == 3 and step % 6 < 3
        events.append(
            HealthEvent(
                host="db01",
                agent="postgres",
                target="postgres",
                status="critical" if down else "ok",
                latency=None if down else 0.002,
                ts=ts,
            )
        )
        if down:
            continue
        percent = 90.0 if hour == 14 else 40.0
        samples = [
            Sample(vocab.POSTGRES_CONNECTIONS_PERCENT, percent, labels),
            Sample(vocab.POSTGRES_CONNECTIONS_TOTAL, percent, labels),
            Sample(vocab.POSTGRES_CONNECTIONS_MAX, 100, labels),
            Sample(vocab.POSTGRES_OLDEST_QUERY, 400.0 if step == 50 else 1.0, labels),
            Sample(vocab.POSTGRES_LOCKS_WAITING, 3.0 if step == 60 else 0.0, labels),
            Sample(vocab.POSTGRES_LOCKS_OLDEST_WAIT, 75.0 if step == 60 else 0.0, labels),
            Sample(vocab.POSTGRES_DEADLOCKS, 1.0 if step % 6 == 0 else 0.0, labels),
            Sample(vocab.POSTGRES_CACHE_HIT_RATIO, 0.99, labels),
            Sample(vocab.POSTGRES_TPS, 120.0, labels),
        ]
        # a slow statement called 10 times a day, a fast one called 1000 times an hour
        samples += _statement("1", SLOW, 100 + step // 14, (100 + step // 14) * 2.5)
        samples += _statement("2", BUSY, 5000 + step * 167, (5000 + step * 167) * 0.01)
        events.append(MetricBatch(host="db01", agent="postgres", ts=ts, interval=600, samples=samples))
    return events


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("report")
    store = RollupStore(folder / "rollups.sqlite3")
    store.ingest(database_day())
    _, paths = produce(store, ReportSinkConfig(), "day", DAY, folder, NOW)
    return {path.suffix: path for path in paths}


@pytest.fixture(scope="module")
def report(written: dict[str, Path]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(written[".json"].read_text())
    return data


def test_connection_use_over_the_day_with_its_busiest_hour(report: dict[str, Any]) -> None:
    (db,) = report["databases"]
    assert (db["host"], db["server"]) == ("db01", "postgres")
    assert db["connections_avg_percent"] == pytest.approx((40 * 135 + 90 * 6) / 141)
    assert db["connections_max_percent"] == 90
    assert db["busiest_hour"] == T0 + 14 * 3600
    assert (db["peak_connections"], db["max_connections"]) == (90, 100)
    (chart,) = report["database_charts"]
    assert chart["title"] == "postgres connections (db01)"
    points = dict(chart["series"][0]["points"])
    assert (points[T0 + 14 * 3600], points[T0 + 13 * 3600]) == (90, 40)


def test_availability_long_queries_locks_and_counters_of_the_day(report: dict[str, Any]) -> None:
    (db,) = report["databases"]
    assert db["availability_percent"] == pytest.approx(100 * 141 / 144)
    assert db["longest_query_seconds"] == 400
    assert (db["most_lock_waiters"], db["longest_lock_wait_seconds"]) == (3, 75)
    assert db["deadlocks"] == 24 - 1  # one an hour, but the 03:00 reading was missed while down
    assert db["cache_hit_ratio"] == pytest.approx(0.99)
    assert db["transactions_per_second"] == pytest.approx(120)


def test_the_database_sla_is_held_to_the_database_agents_logins(report: dict[str, Any]) -> None:
    sla = {s["service"]: s for s in report["sla"]}["database"]
    assert (sla["checks_total"], sla["checks_failed"]) == (144, 3)
    assert sla["availability_met"] is False  # 97.9% < 99.95%
    assert sla["latency_p95_ms"] == pytest.approx(2, rel=0.02)


def test_slow_queries_by_mean_and_the_busiest_by_total_as_of_the_days_end(report: dict[str, Any]) -> None:
    slow = [(q["query"], q["calls"], q["mean_ms"]) for q in report["slow_queries"]]
    assert slow[0] == (SLOW, 100 + 143 // 14, pytest.approx(2500))
    busiest = report["busiest_queries"][0]
    assert busiest["query"] == BUSY
    assert busiest["total_seconds"] == pytest.approx((5000 + 143 * 167) * 0.01)
    assert busiest["calls_in_period"] == 143 * 167
    assert busiest["rows"] == (5000 + 143 * 167) * 2
    assert (busiest["database"], busiest["user"]) == ("app", "web")


def test_the_html_and_markdown_show_the_section_with_outside_text_escaped(written: dict[str, Path]) -> None:
    html = written[".html"].read_text()
    assert '<section id="database">' in html
    assert "Slow queries, by mean time" in html
    assert "&lt;script&gt;" in html
    assert "<script>" not in html
    markdown = written[".md"].read_text()
    assert "## Database" in markdown
    assert "### Slow queries, by mean time" in markdown
    row = next(line for line in markdown.splitlines() if "orders" in line)
    assert "\\|" in row  # the pipe in the query text stays inside its cell
    assert "2,500.0 ms" in row


def test_a_day_without_the_database_agent_says_so(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "rollups.sqlite3")
    report, paths = produce(store, ReportSinkConfig(), "day", DAY, tmp_path, NOW)
    assert (report.databases, report.slow_queries, report.database_charts) == ([], [], [])
    assert "No database watched in this period." in paths[1].read_text()
