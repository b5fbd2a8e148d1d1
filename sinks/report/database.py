"""The report's database section: each PostgreSQL server's connection use and health over the period,
and its slowest and busiest statements (the runbook's weekly "identify slow queries").

Pure functions of the stored rollups, as the rest of the model. pg_stat_statements' counters are
cumulative, so a statement's figures are those of the period's end (as the runbook's query would
show them then), and its calls in the period are the counter's growth within it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

import msgspec

from bus import vocabulary as vocab
from sinks.report.rollups import HealthHour, MetricHour
from sinks.report.sketch import Sketch, decode_sketch

SLOW_QUERIES = 10  # statements per table, as the runbook's LIMIT 10
# What the section reads, by the names the database agent publishes under.
SERVER_METRICS = (
    vocab.POSTGRES_CONNECTIONS_PERCENT,
    vocab.POSTGRES_CONNECTIONS_TOTAL,
    vocab.POSTGRES_CONNECTIONS_MAX,
    vocab.POSTGRES_OLDEST_QUERY,
    vocab.POSTGRES_LOCKS_WAITING,
    vocab.POSTGRES_LOCKS_OLDEST_WAIT,
    vocab.POSTGRES_DEADLOCKS,
    vocab.POSTGRES_CACHE_HIT_RATIO,
    vocab.POSTGRES_TPS,
)
STATEMENT_METRICS = (
    vocab.POSTGRES_STATEMENT_CALLS,
    vocab.POSTGRES_STATEMENT_TOTAL,
    vocab.POSTGRES_STATEMENT_ROWS,
    vocab.POSTGRES_STATEMENT_INFO,
)
METRICS_READ = (*SERVER_METRICS, *STATEMENT_METRICS)


class DatabaseHealth(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    server: str
    availability_percent: float | None  # logins and SELECT 1 that succeeded
    connections_avg_percent: float | None  # of max_connections
    connections_p95_percent: float | None
    connections_max_percent: float | None
    busiest_hour: float | None  # start of the hour with the highest average connection use
    peak_connections: float | None
    max_connections: float | None
    longest_query_seconds: float | None
    most_lock_waiters: float | None
    longest_lock_wait_seconds: float | None
    deadlocks: float | None
    cache_hit_ratio: float | None
    transactions_per_second: float | None


class SlowQuery(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    server: str
    database: str
    user: str
    queryid: str
    query: str  # as pg_stat_statements normalises it, literals masked, cut by the agent
    calls: float  # since pg_stat_statements was last reset, at the period's end
    calls_in_period: float
    mean_ms: float
    total_seconds: float
    rows: float


Key = tuple[str, str]  # host, server
StatementKey = tuple[str, str, str, str, str]  # host, server, database, user, queryid


def _by_metric(rows: Iterable[MetricHour]) -> dict[str, list[MetricHour]]:
    grouped: dict[str, list[MetricHour]] = defaultdict(list)
    for row in rows:
        grouped[row.metric].append(row)
    return grouped


def _mean(rows: Sequence[MetricHour]) -> float | None:
    count = sum(r.count for r in rows)
    return sum(r.total for r in rows) / count if count else None


def _high(rows: Sequence[MetricHour]) -> float | None:
    return max((r.high for r in rows), default=None)


def _p95(rows: Sequence[MetricHour]) -> float | None:
    if not rows:
        return None
    sketch = Sketch()
    for row in rows:
        sketch.merge(decode_sketch(row.sketch))
    value = sketch.quantile(0.95)
    return None if value is None else min(max(value, min(r.low for r in rows)), max(r.high for r in rows))


def _busiest_hour(rows: Sequence[MetricHour]) -> float | None:
    hours: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        hours[row.hour][0] += row.total
        hours[row.hour][1] += row.count
    if not hours:
        return None
    return float(max(sorted(hours), key=lambda hour: hours[hour][0] / hours[hour][1]))


def _availability(hours: Sequence[HealthHour]) -> float | None:
    up, down = sum(h.up for h in hours), sum(h.down for h in hours)
    return 100.0 * up / (up + down) if up + down else None


def database_health(metrics: Sequence[MetricHour], health: Sequence[HealthHour]) -> list[DatabaseHealth]:
    """Per server the agent watched: availability, connection use, long queries, locks, counters."""
    by_server: dict[Key, list[MetricHour]] = defaultdict(list)
    for row in metrics:
        if row.metric in SERVER_METRICS and row.labels.get("server"):
            by_server[(row.host, row.labels["server"])].append(row)
    checks: dict[Key, list[HealthHour]] = defaultdict(list)
    for h in health:
        if h.agent == vocab.POSTGRES_AGENT and ":" not in h.target and not h.target.startswith("_"):
            checks[(h.host, h.target)].append(h)
    result = []
    for host, server in sorted(set(by_server) | set(checks)):
        rows = _by_metric(by_server.get((host, server), []))
        percent = rows[vocab.POSTGRES_CONNECTIONS_PERCENT]
        deadlocks = rows[vocab.POSTGRES_DEADLOCKS]
        result.append(
            DatabaseHealth(
                host=host,
                server=server,
                availability_percent=_availability(checks.get((host, server), [])),
                connections_avg_percent=_mean(percent),
                connections_p95_percent=_p95(percent),
                connections_max_percent=_high(percent),
                busiest_hour=_busiest_hour(percent),
                peak_connections=_high(rows[vocab.POSTGRES_CONNECTIONS_TOTAL]),
                max_connections=_high(rows[vocab.POSTGRES_CONNECTIONS_MAX]),
                longest_query_seconds=_high(rows[vocab.POSTGRES_OLDEST_QUERY]),
                most_lock_waiters=_high(rows[vocab.POSTGRES_LOCKS_WAITING]),
                longest_lock_wait_seconds=_high(rows[vocab.POSTGRES_LOCKS_OLDEST_WAIT]),
                deadlocks=sum(r.total for r in deadlocks) if deadlocks else None,
                cache_hit_ratio=_mean(rows[vocab.POSTGRES_CACHE_HIT_RATIO]),
                transactions_per_second=_mean(rows[vocab.POSTGRES_TPS]),
            )
        )
    return result


def _statement_key(row: MetricHour) -> StatementKey:
    labels = row.labels
    return (
        row.host,
        labels.get("server", ""),
        labels.get("database", ""),
        labels.get("user", ""),
        labels.get("queryid", ""),
    )


def statements(metrics: Sequence[MetricHour]) -> list[SlowQuery]:
    """Every statement the agent published in the period, with its figures at the period's end."""
    grouped: dict[StatementKey, list[MetricHour]] = defaultdict(list)
    for row in metrics:
        if row.metric in STATEMENT_METRICS:
            grouped[_statement_key(row)].append(row)
    found = []
    for key, rows in grouped.items():
        by_metric = _by_metric(rows)
        calls_rows, total_rows = (
            by_metric[vocab.POSTGRES_STATEMENT_CALLS],
            by_metric[vocab.POSTGRES_STATEMENT_TOTAL],
        )
        calls, total = _high(calls_rows), _high(total_rows)
        if not calls or total is None or not math.isfinite(total):
            continue
        info = sorted(by_metric[vocab.POSTGRES_STATEMENT_INFO], key=lambda r: r.hour)
        host, server, database, user, queryid = key
        found.append(
            SlowQuery(
                host=host,
                server=server,
                database=database,
                user=user,
                queryid=queryid,
                query=info[-1].labels.get("query", "") if info else "",
                calls=calls,
                calls_in_period=max(0.0, calls - min(r.low for r in calls_rows)),
                mean_ms=total / calls * 1000,
                total_seconds=total,
                rows=_high(by_metric[vocab.POSTGRES_STATEMENT_ROWS]) or 0.0,
            )
        )
    return found


def slow_queries(found: Sequence[SlowQuery], limit: int = SLOW_QUERIES) -> list[SlowQuery]:
    """The slowest statements by mean time, as the runbook's weekly query orders them."""
    return sorted(found, key=lambda s: (-s.mean_ms, s.server, s.queryid))[:limit]


def busiest_queries(found: Sequence[SlowQuery], limit: int = SLOW_QUERIES) -> list[SlowQuery]:
    """The statements that cost the most time in total."""
    return sorted(found, key=lambda s: (-s.total_seconds, s.server, s.queryid))[:limit]
