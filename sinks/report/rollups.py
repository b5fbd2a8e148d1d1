"""The rollup store: hourly metric rollups, health outcomes and alert incidents in SQLite (WAL).

One writer (the sink) adds events in transactions; readers (the report) may open the same file
concurrently. Everything written in one `ingest` call commits together with the stream positions
it came from, so a redelivered message is recognised and never counted twice.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from bus.events import Alert, HealthEvent, MetricBatch
from sinks.report.intake import Batch, Change, Check, Input, labels_of, narrow
from sinks.report.sketch import Sketch, decode_sketch, encode_sketch

HOUR = 3600
STORE_FILE = Path("report") / "rollups.sqlite3"
# Kept in memory after a write so that the hour being filled (and the one before, for late
# events) is not re-read for every batch.
_HOT_HOURS = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, host TEXT NOT NULL, agent TEXT NOT NULL, metric TEXT NOT NULL,
    labels TEXT NOT NULL, UNIQUE (host, agent, metric, labels));
CREATE INDEX IF NOT EXISTS series_metric ON series (metric);
CREATE TABLE IF NOT EXISTS metric_hour (
    series INTEGER NOT NULL, hour INTEGER NOT NULL, count INTEGER NOT NULL, sum REAL NOT NULL,
    min REAL NOT NULL, max REAL NOT NULL, sketch BLOB NOT NULL, PRIMARY KEY (series, hour))
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metric_hour_hour ON metric_hour (hour);
CREATE TABLE IF NOT EXISTS health_hour (
    host TEXT NOT NULL, agent TEXT NOT NULL, target TEXT NOT NULL, hour INTEGER NOT NULL,
    up INTEGER NOT NULL, down INTEGER NOT NULL, unknown INTEGER NOT NULL,
    healthy_seconds REAL NOT NULL, unhealthy_seconds REAL NOT NULL, restarts INTEGER NOT NULL,
    latency_sketch BLOB NOT NULL, PRIMARY KEY (host, agent, target, hour)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS health_hour_hour ON health_hour (hour);
CREATE TABLE IF NOT EXISTS health_last (
    host TEXT NOT NULL, agent TEXT NOT NULL, target TEXT NOT NULL, status TEXT NOT NULL,
    ts REAL NOT NULL, PRIMARY KEY (host, agent, target)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS incidents (
    fingerprint TEXT NOT NULL, starts_at REAL NOT NULL, rule TEXT NOT NULL, severity TEXT NOT NULL,
    host TEXT NOT NULL, summary TEXT NOT NULL, ends_at REAL, PRIMARY KEY (fingerprint, starts_at))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumed (stream TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""

_labels_encoder = msgspec.json.Encoder(order="sorted")
_labels_decoder = msgspec.json.Decoder(dict[str, str])


def hour_of(ts: float) -> int:
    return int(ts // HOUR) * HOUR


@dataclass(slots=True)
class Rollup:
    """count, sum, min, max and a percentile sketch of the values of one series in one hour."""

    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    sketch: Sketch = field(default_factory=Sketch)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        self.sketch.add(value)

    def merge(self, other: Rollup) -> None:
        self.count += other.count
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        self.sketch.merge(other.sketch)


@dataclass(slots=True)
class HealthRollup:
    """Outcomes of one target's checks in one hour."""

    up: int = 0
    down: int = 0
    unknown: int = 0
    healthy_seconds: float = 0.0
    unhealthy_seconds: float = 0.0
    restarts: int = 0
    latency: Sketch = field(default_factory=Sketch)

    def merge(self, other: HealthRollup) -> None:
        self.up += other.up
        self.down += other.down
        self.unknown += other.unknown
        self.healthy_seconds += other.healthy_seconds
        self.unhealthy_seconds += other.unhealthy_seconds
        self.restarts += other.restarts
        self.latency.merge(other.latency)


@dataclass(frozen=True)
class MetricHour:
    host: str
    agent: str
    metric: str
    labels: dict[str, str]
    hour: int
    count: int
    total: float
    low: float
    high: float
    sketch: bytes

    @property
    def mean(self) -> float:
        return self.total / self.count


@dataclass(frozen=True)
class HealthHour:
    host: str
    agent: str
    target: str
    hour: int
    up: int
    down: int
    unknown: int
    healthy_seconds: float
    unhealthy_seconds: float
    restarts: int
    latency: bytes


@dataclass(frozen=True)
class Incident:
    fingerprint: str
    starts_at: float
    rule: str
    severity: str
    host: str
    summary: str
    ends_at: float | None


@dataclass
class IngestStats:
    samples: int = 0
    metric_batches: int = 0
    health_events: int = 0
    alerts: int = 0


SeriesKey = tuple[str, str, str, bytes]  # host, agent, metric, labels as sent (raw JSON)
TargetKey = tuple[str, str, str]
Event = MetricBatch | HealthEvent | Alert | Input


class RollupStore:
    """Hourly rollups in one SQLite file; `ingest` is the single way events get in."""

    def __init__(
        self,
        path: Path | str,
        *,
        health_gap: float = 300.0,
        restart_events: Sequence[str] = ("start",),
        readonly: bool = False,
        metrics: Collection[str] | None = None,
    ) -> None:
        """`metrics`: the only metric names kept (the ones the report reads), or None for all."""
        self.path = path
        self.metrics = None if metrics is None else frozenset(metrics)
        if readonly:
            self._db = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            if isinstance(path, Path):
                path.parent.mkdir(parents=True, exist_ok=True)
            # used from worker threads, one at a time (the sink serialises with a lock)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._db.execute("PRAGMA busy_timeout=5000")
        self.health_gap = health_gap
        self.restart_events = frozenset(restart_events)
        self.stats = IngestStats()
        self._series: dict[SeriesKey, int] = {}
        self._hot: dict[tuple[int, int], Rollup] = {}
        self._hot_health: dict[tuple[TargetKey, int], HealthRollup] = {}
        self._last: dict[TargetKey, tuple[str, float] | None] = {}

    def close(self) -> None:
        self._db.close()

    @classmethod
    def empty(cls) -> RollupStore:
        """A store in memory with nothing in it (a report before any data)."""
        return cls(":memory:")

    # -- writing -------------------------------------------------------------------------------

    def positions(self) -> dict[str, int]:
        """The last stream sequence ingested, per stream."""
        return dict(self._db.execute("SELECT stream, seq FROM consumed").fetchall())

    def ingest(self, events: Iterable[Event], positions: Mapping[str, int] | None = None) -> None:
        """Add `events` (in stream order) and record `positions` in one transaction."""
        metrics: dict[tuple[int, int], Rollup] = {}
        health: dict[tuple[TargetKey, int], HealthRollup] = {}
        changed: set[TargetKey] = set()
        counts = IngestStats()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for whole in events:
                event = narrow(whole) if isinstance(whole, MetricBatch | HealthEvent | Alert) else whole
                if isinstance(event, Batch):
                    self._add_batch(event, metrics)
                    counts.metric_batches += 1
                    counts.samples += len(event.samples)
                elif isinstance(event, Check):
                    self._add_health(event, health)
                    changed.add((event.host, event.agent, event.target))
                    counts.health_events += 1
                else:
                    self._add_alert(event)
                    counts.alerts += 1
            self._write_metrics(metrics)
            self._write_health(health, changed)
            self._db.executemany(
                "INSERT INTO consumed (stream, seq) VALUES (?, ?) "
                "ON CONFLICT (stream) DO UPDATE SET seq = max(seq, excluded.seq)",
                list((positions or {}).items()),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            # the caches may hold what was just rolled back
            self._forget()
            raise
        for name in ("samples", "metric_batches", "health_events", "alerts"):
            setattr(self.stats, name, getattr(self.stats, name) + getattr(counts, name))

    def _forget(self) -> None:
        """Drop the caches: they may hold what a rollback undid."""
        self._series.clear()
        self._hot.clear()
        self._hot_health.clear()
        self._last.clear()

    def _series_id(self, key: SeriesKey) -> int:
        found = self._series.get(key)
        if found is not None:
            return found
        host, agent, metric, raw = key
        # the same label set sent in another key order is the same series
        encoded = _labels_encoder.encode(labels_of(msgspec.Raw(raw))).decode()
        self._db.execute(
            "INSERT OR IGNORE INTO series (host, agent, metric, labels) VALUES (?, ?, ?, ?)",
            (host, agent, metric, encoded),
        )
        (series_id,) = self._db.execute(
            "SELECT id FROM series WHERE host = ? AND agent = ? AND metric = ? AND labels = ?",
            (host, agent, metric, encoded),
        ).fetchone()
        self._series[key] = series_id
        return int(series_id)

    def _add_batch(self, batch: Batch, into: dict[tuple[int, int], Rollup]) -> None:
        hour = hour_of(batch.ts)
        host, agent, keep, series = batch.host, batch.agent, self.metrics, self._series
        for sample in batch.samples:
            if keep is not None and sample.name not in keep:
                continue
            found = (host, agent, sample.name, bytes(sample.labels))
            series_id = series.get(found)
            if series_id is None:
                series_id = self._series_id(found)
            key = (series_id, hour)
            rollup = into.get(key)
            if rollup is None:
                rollup = into[key] = Rollup()
            rollup.add(sample.value)

    def _write_metrics(self, pending: dict[tuple[int, int], Rollup]) -> None:
        rows = []
        for key, rollup in pending.items():
            base = self._hot.get(key) or self._load_rollup(key)
            base.merge(rollup)
            self._hot[key] = base
            rows.append((*key, base.count, base.total, base.low, base.high, encode_sketch(base.sketch)))
        self._db.executemany("INSERT OR REPLACE INTO metric_hour VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        if pending:
            newest = max(hour for _, hour in pending)
            stale = [key for key in self._hot if key[1] < newest - _HOT_HOURS * HOUR]
            for key in stale:
                del self._hot[key]

    def _load_rollup(self, key: tuple[int, int]) -> Rollup:
        row = self._db.execute(
            "SELECT count, sum, min, max, sketch FROM metric_hour WHERE series = ? AND hour = ?", key
        ).fetchone()
        if row is None:
            return Rollup()
        return Rollup(row[0], row[1], row[2], row[3], decode_sketch(row[4]))

    def _last_of(self, target: TargetKey) -> tuple[str, float] | None:
        if target not in self._last:
            row = self._db.execute(
                "SELECT status, ts FROM health_last WHERE host = ? AND agent = ? AND target = ?", target
            ).fetchone()
            self._last[target] = (row[0], row[1]) if row else None
        return self._last[target]

    def _add_health(self, event: Check, into: dict[tuple[TargetKey, int], HealthRollup]) -> None:
        target = (event.host, event.agent, event.target)

        def at(hour: int) -> HealthRollup:
            rollup = into.get((target, hour))
            if rollup is None:
                rollup = into[(target, hour)] = HealthRollup()
            return rollup

        now = at(hour_of(event.ts))
        if event.event is None:  # a periodic check: what availability is counted from
            if event.status in ("ok", "warning"):
                now.up += 1
            elif event.status == "critical":
                now.down += 1
            else:
                now.unknown += 1
            if event.latency is not None and math.isfinite(event.latency):
                now.latency.add(event.latency)
        last = self._last_of(target)
        if last is not None and event.event in self.restart_events:
            now.restarts += 1
        if last is not None and event.ts > last[1] and last[0] != "unknown":
            healthy = last[0] == "ok"
            start, end = last[1], min(event.ts, last[1] + self.health_gap)
            while start < end:  # the previous status lasted until now: split it over hours
                hour = hour_of(start)
                piece = min(end, hour + HOUR) - start
                if healthy:
                    at(hour).healthy_seconds += piece
                else:
                    at(hour).unhealthy_seconds += piece
                start += piece
        if last is None or event.ts >= last[1]:
            self._last[target] = (event.status, event.ts)

    def _write_health(
        self, pending: dict[tuple[TargetKey, int], HealthRollup], changed: set[TargetKey]
    ) -> None:
        rows = []
        for key, delta in pending.items():
            target, hour = key
            rollup = self._hot_health.get(key) or self._load_health(key)
            rollup.merge(delta)
            self._hot_health[key] = rollup
            rows.append(
                (
                    *target,
                    hour,
                    rollup.up,
                    rollup.down,
                    rollup.unknown,
                    rollup.healthy_seconds,
                    rollup.unhealthy_seconds,
                    rollup.restarts,
                    encode_sketch(rollup.latency),
                )
            )
        self._db.executemany(
            "INSERT OR REPLACE INTO health_hour VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
        )
        last_rows = [(*t, *last) for t in changed if (last := self._last.get(t)) is not None]
        self._db.executemany("INSERT OR REPLACE INTO health_last VALUES (?, ?, ?, ?, ?)", last_rows)
        if pending:
            newest = max(hour for _, hour in pending)
            for stale in [key for key in self._hot_health if key[1] < newest - _HOT_HOURS * HOUR]:
                del self._hot_health[stale]

    def _load_health(self, key: tuple[TargetKey, int]) -> HealthRollup:
        (host, agent, target), hour = key
        row = self._db.execute(
            "SELECT up, down, unknown, healthy_seconds, unhealthy_seconds, restarts, latency_sketch "
            "FROM health_hour WHERE host = ? AND agent = ? AND target = ? AND hour = ?",
            (host, agent, target, hour),
        ).fetchone()
        if row is None:
            return HealthRollup()
        up, down, unknown, healthy, unhealthy, restarts, latency = row
        return HealthRollup(up, down, unknown, healthy, unhealthy, restarts, decode_sketch(latency))

    def _add_alert(self, alert: Change) -> None:
        if alert.status == "resolved":
            # Only what fired is an incident: evaluators older than `inactive` sent "resolved" for
            # pending series that never fired, and the stream still holds their firing otherwise.
            ends_at = alert.starts_at if alert.ends_at is None else alert.ends_at
            self._db.execute(
                "UPDATE incidents SET ends_at = ? WHERE fingerprint = ? AND starts_at = ?",
                (ends_at, alert.fingerprint, alert.starts_at),
            )
            return
        if alert.status != "firing":  # pending, or inactive: never an incident
            return
        host = alert.labels.get("host", "")
        self._db.execute(
            "INSERT INTO incidents VALUES (?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (fingerprint, starts_at) "
            "DO NOTHING",
            (alert.fingerprint, alert.starts_at, alert.rule, alert.severity, host, alert.summary),
        )

    def prune(self, before: float) -> int:
        """Delete everything that ended before `before`; returns the rows deleted."""
        cutoff = hour_of(before)
        deleted = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for sql, arg in (
                ("DELETE FROM metric_hour WHERE hour < ?", cutoff),
                ("DELETE FROM health_hour WHERE hour < ?", cutoff),
                ("DELETE FROM health_last WHERE ts < ?", before),
                (
                    "DELETE FROM incidents WHERE coalesce(ends_at, starts_at) < ? AND ends_at IS NOT NULL",
                    before,
                ),
            ):
                deleted += self._db.execute(sql, (arg,)).rowcount
            self._db.execute("DELETE FROM series WHERE id NOT IN (SELECT DISTINCT series FROM metric_hour)")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        finally:
            self._forget()
        return deleted

    # -- reading -------------------------------------------------------------------------------

    def metric_hours(
        self, start: float, end: float, metrics: Sequence[str] = (), prefixes: Sequence[str] = ()
    ) -> list[MetricHour]:
        """Rollups of hours starting in [start, end) for the named metrics and metric prefixes."""
        conditions = [f"s.metric IN ({','.join('?' * len(metrics))})"] if metrics else []
        conditions += ["s.metric LIKE ? ESCAPE '\\'"] * len(prefixes)
        like = [p.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%" for p in prefixes]
        if not conditions:
            return []
        rows = self._db.execute(
            "SELECT s.host, s.agent, s.metric, s.labels, m.hour, m.count, m.sum, m.min, m.max, m.sketch "
            "FROM metric_hour m JOIN series s ON s.id = m.series "
            f"WHERE m.hour >= ? AND m.hour < ? AND ({' OR '.join(conditions)}) "
            "ORDER BY m.hour, s.host, s.agent, s.metric, s.labels",
            (hour_of(start), end, *metrics, *like),
        )
        return [MetricHour(row[0], row[1], row[2], _labels_decoder.decode(row[3]), *row[4:]) for row in rows]

    def first_hour(self) -> int | None:
        """The earliest hour holding any metric or health rollup."""
        row = self._db.execute(
            "SELECT min(hour) FROM (SELECT min(hour) AS hour FROM metric_hour "
            "UNION ALL SELECT min(hour) FROM health_hour)"
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def health_hours(self, start: float, end: float) -> list[HealthHour]:
        rows = self._db.execute(
            "SELECT * FROM health_hour WHERE hour >= ? AND hour < ? ORDER BY hour, host, agent, target",
            (hour_of(start), end),
        )
        return [HealthHour(*row) for row in rows]

    def incidents(self, start: float, end: float) -> list[Incident]:
        """Incidents that started in [start, end)."""
        rows = self._db.execute(
            "SELECT fingerprint, starts_at, rule, severity, host, summary, ends_at FROM incidents "
            "WHERE starts_at >= ? AND starts_at < ? ORDER BY starts_at",
            (start, end),
        )
        return [Incident(*row) for row in rows]
