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
from typing import Any

import msgspec

from bus.events import Alert, HealthEvent, MetricBatch
from sinks.report.intake import Batch, Change, Check, Input, labels_of, narrow
from sinks.report.sketch import Sketch, decode_sketch, encode_sketch

HOUR = 3600
STORE_FILE = Path("report") / "rollups.sqlite3"

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
        if value < self.low:
            self.low = value
        if value > self.high:
            self.high = value
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
# Above this many rows of one hour in a write, that hour's stored rows are read in one query
# rather than one by one.
_BULK_READ = 256


# A window's metrics: (host, agent, hour) -> metric -> labels as sent -> rollup. Nested so that a
# sample costs dict lookups and no new key of its own (many small objects a second would keep the
# garbage collector busy).
MetricWindow = dict[tuple[str, str, int], dict[str, dict[bytes, Rollup]]]
HealthWindow = dict[int, dict[TargetKey, HealthRollup]]  # hour -> target -> rollup


@dataclass
class Window:
    """What came in since the last write, rolled up as it came: what one `write` commits."""

    metrics: MetricWindow = field(default_factory=dict)
    health: HealthWindow = field(default_factory=dict)
    last: list[tuple[str, str, str, str, float]] = field(default_factory=list)  # set by `take`
    alerts: list[Change] = field(default_factory=list)
    counts: IngestStats = field(default_factory=IngestStats)


class RollupStore:
    """Hourly rollups in one SQLite file; events are `add`ed to a window in memory, and `write`
    commits a window with the stream positions it came from (`ingest` does both)."""

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
            # written from a worker thread while the event loop adds to the next window
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._db.execute("PRAGMA busy_timeout=5000")
        self.health_gap = health_gap
        self.restart_events = frozenset(restart_events)
        self.stats = IngestStats()
        # committed series ids: only `write` changes it (after its commit), `add` only reads it
        self._series: dict[SeriesKey, int] = {}
        self._names: dict[str, str] = {}  # one copy of each host, agent and metric name
        self._window = Window()
        # each target's latest status: read for every health event, so all of it is in memory
        self._last: dict[TargetKey, tuple[str, float]] = {} if readonly else self._load_last()

    def close(self) -> None:
        self._db.close()

    @classmethod
    def empty(cls) -> RollupStore:
        """A store in memory with nothing in it (a report before any data)."""
        return cls(":memory:")

    # -- taking in (the event loop) ------------------------------------------------------------

    def positions(self) -> dict[str, int]:
        """The last stream sequence ingested, per stream."""
        return dict(self._db.execute("SELECT stream, seq FROM consumed").fetchall())

    def ingest(self, events: Iterable[Event], positions: Mapping[str, int] | None = None) -> None:
        """Add `events` (in stream order) and record `positions` in one transaction; on failure
        nothing of them is kept."""
        try:
            for event in events:
                self.add(event)
            self.write(self.take(), positions)
        except BaseException:
            self._window = Window()
            self._last = self._load_last()
            raise

    def add(self, whole: Event) -> None:
        """Roll one event (in stream order) into the window; ValueError if it cannot be stored."""
        event = whole if isinstance(whole, Check | Batch | Change) else narrow(whole)
        counts = self._window.counts
        if isinstance(event, Check):
            self._add_health(event)
            counts.health_events += 1
        elif isinstance(event, Batch):
            self._add_batch(event)
            counts.metric_batches += 1
            counts.samples += len(event.samples)
        else:
            self._window.alerts.append(event)
            counts.alerts += 1

    def take(self) -> Window:
        """The window so far, to `write`; the next events go to a new one."""
        window, self._window = self._window, Window()
        last = self._last
        targets = {target for by_target in window.health.values() for target in by_target}
        window.last = [(*target, *last[target]) for target in targets if target in last]
        return window

    def _name(self, name: str) -> str:
        return self._names.setdefault(name, name)

    def _add_batch(self, batch: Batch) -> None:
        hour = int(batch.ts // HOUR) * HOUR
        keep = self.metrics
        window = self._window.metrics
        group = window.get((batch.host, batch.agent, hour))
        if group is None:
            group = window[(self._name(batch.host), self._name(batch.agent), hour)] = {}
        found: list[tuple[Rollup | None, float]] = []
        fresh: list[tuple[str, bytes]] = []
        for sample in batch.samples:
            name = sample.name
            if keep is not None and name not in keep:
                continue
            raw = bytes(sample.labels)
            by_name = group.get(name)
            rollup = by_name.get(raw) if by_name is not None else None
            if rollup is None:
                fresh.append((name, raw))
            found.append((rollup, sample.value))
        if fresh:  # series new to this window: checked first, so a batch is refused whole
            host, agent, known = self._name(batch.host), self._name(batch.agent), self._series
            for name, raw in fresh:
                if (host, agent, name, raw) not in known:
                    labels_of(msgspec.Raw(raw))
            made = iter(fresh)
            for index, (rollup, value) in enumerate(found):
                if rollup is None:
                    name, raw = next(made)
                    by_name = group.get(name)
                    if by_name is None:
                        by_name = group[self._name(name)] = {}
                    rollup = by_name.get(raw)
                    if rollup is None:
                        rollup = by_name[raw] = Rollup()
                    found[index] = (rollup, value)
        for rollup, value in found:
            rollup.add(value)  # type: ignore[union-attr]

    def _add_health(self, event: Check) -> None:
        target = (event.host, event.agent, event.target)
        ts = event.ts
        hour = int(ts // HOUR) * HOUR
        hours = self._window.health
        by_target = hours.get(hour)
        if by_target is None:
            by_target = hours[hour] = {}
        now = by_target.get(target)
        if now is None:
            now = by_target[target] = HealthRollup()
        if event.event is None:  # a periodic check: what availability is counted from
            status = event.status
            if status == "ok" or status == "warning":
                now.up += 1
            elif status == "critical":
                now.down += 1
            else:
                now.unknown += 1
            latency = event.latency
            if latency is not None and math.isfinite(latency):
                now.latency.add(latency)
        last = self._last.get(target)
        if last is None:
            self._last[target] = (event.status, ts)
            return
        if event.event in self.restart_events:
            now.restarts += 1
        if ts > last[1] and last[0] != "unknown":
            self._add_duration(target, last, ts, hour, now)
        if ts >= last[1]:
            self._last[target] = (event.status, ts)

    def _add_duration(
        self, target: TargetKey, last: tuple[str, float], ts: float, hour: int, now: HealthRollup
    ) -> None:
        """The previous status lasted until `ts` (up to health_gap): split it over its hours."""
        healthy = last[0] == "ok"
        start, end = last[1], min(ts, last[1] + self.health_gap)
        while start < end:
            piece_hour = int(start // HOUR) * HOUR
            piece = min(end, piece_hour + HOUR) - start
            if piece_hour == hour:
                rollup = now
            else:
                by_target = self._window.health.setdefault(piece_hour, {})
                rollup = by_target.get(target) or by_target.setdefault(target, HealthRollup())
            if healthy:
                rollup.healthy_seconds += piece
            else:
                rollup.unhealthy_seconds += piece
            start += piece

    def _load_last(self) -> dict[TargetKey, tuple[str, float]]:
        rows = self._db.execute("SELECT host, agent, target, status, ts FROM health_last")
        return {(host, agent, target): (status, ts) for host, agent, target, status, ts in rows}

    # -- writing (a worker thread) -------------------------------------------------------------

    def write(self, window: Window, positions: Mapping[str, int] | None = None) -> None:
        """Commit `window` and `positions` in one transaction, merged into the stored hours. The
        window is left as it was, so a failed write can be tried again."""
        new_ids: dict[SeriesKey, int] = {}
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._write_metrics(window.metrics, new_ids)
            self._write_health(window.health, window.last)
            for alert in window.alerts:
                self._add_alert(alert)
            self._db.executemany(
                "INSERT INTO consumed (stream, seq) VALUES (?, ?) "
                "ON CONFLICT (stream) DO UPDATE SET seq = max(seq, excluded.seq)",
                list((positions or {}).items()),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._series.update(new_ids)  # only now are they the store's
        for name in ("samples", "metric_batches", "health_events", "alerts"):
            setattr(self.stats, name, getattr(self.stats, name) + getattr(window.counts, name))

    def _series_id(self, key: SeriesKey, new_ids: dict[SeriesKey, int]) -> int:
        found = self._series.get(key) or new_ids.get(key)
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
        new_ids[key] = series_id
        return int(series_id)

    def _stored(self, one: str, every: str, keys: Sequence[tuple[Any, ...]], hour: int) -> dict[Any, Any]:
        """The stored columns of `keys` in `hour`: one query for the whole hour when many are
        wanted (`every` selects the key columns first), else one query per key."""
        found: dict[Any, Any] = {}
        if len(keys) > _BULK_READ:
            width = len(keys[0])
            wanted = set(keys)
            for row in self._db.execute(every, (hour,)):
                if (key := row[:width]) in wanted:
                    found[key] = row[width:]
            return found
        for key in keys:
            row = self._db.execute(one, (*key, hour)).fetchone()
            if row is not None:
                found[key] = row
        return found

    def _write_metrics(self, pending: MetricWindow, new_ids: dict[SeriesKey, int]) -> None:
        by_hour: dict[int, list[tuple[int, Rollup]]] = {}
        for (host, agent, hour), group in pending.items():
            deltas = by_hour.setdefault(hour, [])
            for name, by_labels in group.items():
                for raw, delta in by_labels.items():
                    deltas.append((self._series_id((host, agent, name, raw), new_ids), delta))
        rows = []
        for hour, deltas in by_hour.items():
            stored = self._stored(
                "SELECT count, sum, min, max, sketch FROM metric_hour WHERE series = ? AND hour = ?",
                "SELECT series, count, sum, min, max, sketch FROM metric_hour WHERE hour = ?",
                [(series_id,) for series_id, _ in deltas],
                hour,
            )
            for series_id, delta in deltas:
                row = stored.get((series_id,))
                if row is None:
                    total = delta
                else:
                    total = Rollup(row[0], row[1], row[2], row[3], decode_sketch(row[4]))
                    total.merge(delta)
                rows.append(
                    (
                        series_id,
                        hour,
                        total.count,
                        total.total,
                        total.low,
                        total.high,
                        encode_sketch(total.sketch),
                    )
                )
        self._db.executemany(
            "INSERT INTO metric_hour VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (series, hour) DO UPDATE SET "
            "count = excluded.count, sum = excluded.sum, min = excluded.min, max = excluded.max, "
            "sketch = excluded.sketch",
            rows,
        )

    def _write_health(self, pending: HealthWindow, last: list[tuple[str, str, str, str, float]]) -> None:
        rows = []
        for hour, by_target in pending.items():
            deltas = list(by_target.items())
            stored = self._stored(
                "SELECT up, down, unknown, healthy_seconds, unhealthy_seconds, restarts, latency_sketch "
                "FROM health_hour WHERE host = ? AND agent = ? AND target = ? AND hour = ?",
                "SELECT host, agent, target, up, down, unknown, healthy_seconds, unhealthy_seconds, "
                "restarts, latency_sketch FROM health_hour WHERE hour = ?",
                [target for target, _ in deltas],
                hour,
            )
            for target, delta in deltas:
                row = stored.get(target)
                if row is None:
                    total = delta
                else:
                    up, down, unknown, healthy, unhealthy, restarts, latency = row
                    total = HealthRollup(
                        up, down, unknown, healthy, unhealthy, restarts, decode_sketch(latency)
                    )
                    total.merge(delta)
                rows.append(
                    (
                        *target,
                        hour,
                        total.up,
                        total.down,
                        total.unknown,
                        total.healthy_seconds,
                        total.unhealthy_seconds,
                        total.restarts,
                        encode_sketch(total.latency),
                    )
                )
        self._db.executemany(
            "INSERT INTO health_hour VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (host, agent, target, hour) DO UPDATE SET up = excluded.up, down = excluded.down, "
            "unknown = excluded.unknown, healthy_seconds = excluded.healthy_seconds, "
            "unhealthy_seconds = excluded.unhealthy_seconds, restarts = excluded.restarts, "
            "latency_sketch = excluded.latency_sketch",
            rows,
        )
        self._db.executemany(
            "INSERT INTO health_last VALUES (?, ?, ?, ?, ?) ON CONFLICT (host, agent, target) "
            "DO UPDATE SET status = excluded.status, ts = excluded.ts",
            last,
        )

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
        # May run beside `add` (in a thread, under the sink's store lock): each step below is one
        # atomic dict operation, and a series forgotten here is only looked up again.
        self._series.clear()
        for target, (_, ts) in list(self._last.items()):
            if ts < before:
                self._last.pop(target, None)
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
