"""The rollup store: hourly metric rollups, health outcomes and alert incidents in SQLite (WAL).

One writer (the sink) adds events in transactions; readers (the report) may open the same file
concurrently. Everything written in one `ingest` call commits together with the stream positions
it came from, so a redelivered message is recognised and never counted twice.
"""

from __future__ import annotations

import math
import sqlite3
from array import array
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from pathlib import Path
from typing import Any, Protocol, TypeAlias, TypeVar

import msgspec

from bus.events import Alert, HealthEvent, MetricBatch
from sinks.report.intake import Batch, Change, Check, Input, labels_of, narrow
from sinks.report.layout import prepare
from sinks.report.sketch import Sketch, decode_sketch, encode_sketch

HOUR = 3600
STORE_FILE = Path("report") / "rollups.sqlite3"


K = TypeVar("K")
T = TypeVar("T")
_labels_encoder = msgspec.json.Encoder(order="sorted")
_labels_decoder = msgspec.json.Decoder(dict[str, str])


# What a window holds of one hour: the series (or targets) and, at the same index, what each got.
# Side by side in two lists: a tuple each, and a dict to group them by at the write, were the
# largest part of the sink's peak memory.
ByHour = dict[int, tuple[list[K], list[T]]]


def _put(by_hour: ByHour[K, T], hour: int, owner: K, item: T) -> None:
    held = by_hour.get(hour)
    if held is None:
        held = by_hour[hour] = ([], [])
    held[0].append(owner)
    held[1].append(item)


def _each(group: T | list[T]) -> list[T]:
    """The items of one owner in a write: alone, or in a list once a second one came."""
    return group if isinstance(group, list) else [group]


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

    def add_all(self, values: array[float]) -> None:
        self.count += len(values)
        self.total += sum(values)
        self.low = min(self.low, min(values))
        self.high = max(self.high, max(values))
        self.sketch.add_all(values)

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

    def add_delta(self, delta: HealthDelta) -> None:
        self.up += delta.up
        self.down += delta.down
        self.unknown += delta.unknown
        self.healthy_seconds += delta.healthy_seconds
        self.unhealthy_seconds += delta.unhealthy_seconds
        self.restarts += delta.restarts
        if delta.latencies is not None:
            self.latency.add_all(delta.latencies)

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
_CHUNK = 4096  # rows merged and written at a time


# The sink keeps one Series per series and one Target per health target for as long as it runs:
# hundreds of thousands at 1,000 hosts. None can hold a reference cycle, so the garbage collector
# need not track them (gc=False), and each is its own key (eq=False).


class Series(msgspec.Struct, gc=False, eq=False):
    """A series the sink has seen: its id once stored, and its values since the last write
    (of `hour`, the latest hour it had values of)."""

    id: int = 0
    hour: int = -1
    values: array[float] | None = None
    writing: array[float] | list[array[float]] | None = None  # the window's values, while written


class HealthDelta(msgspec.Struct, gc=False, eq=False):
    """A target's outcomes in one hour since the last write (latencies folded at the write)."""

    up: int = 0
    down: int = 0
    unknown: int = 0
    restarts: int = 0
    healthy_seconds: float = 0.0
    unhealthy_seconds: float = 0.0
    latencies: array[float] | None = None


class Target(msgspec.Struct, gc=False, eq=False):
    """A health target the sink knows: its latest status, and what came since the last write."""

    key: TargetKey
    status: str
    ts: float
    hour: int = -1
    delta: HealthDelta | None = None  # of `hour`
    writing: HealthDelta | list[HealthDelta] | None = None  # the window's of one hour, while written


class _Holder(Protocol[T]):
    writing: T | list[T] | None


H = TypeVar("H", bound=_Holder[Any])


def _hold(owners: list[H], items: list[Any]) -> list[H]:
    """Hand each owner what it got in one hour (`writing`): the owners, once each, in the order met.
    An owner met twice (a late sample, a status lasting back into an earlier hour) gets a list."""
    held = []
    for owner, item in zip(owners, items, strict=True):
        got = owner.writing
        if got is None:
            owner.writing = item
            held.append(owner)
        elif isinstance(got, list):
            got.append(item)
        else:
            owner.writing = [got, item]
    return held


_series_id = attrgetter("id")
_target_key = attrgetter("key")
# the targets heard of, with their latest status and its time as they were taken
Last: TypeAlias = "tuple[list[Target], list[str], array[float]]"


@dataclass
class Window:
    """What came in since the last write, as `take` detached it: what one `write` commits."""

    metrics: ByHour[Series, array[float]] = field(default_factory=dict)
    new_series: list[tuple[Series, SeriesKey]] = field(default_factory=list)
    health: ByHour[Target, HealthDelta] = field(default_factory=dict)
    last: Last = field(default_factory=lambda: ([], [], array("d")))
    alerts: list[Change] = field(default_factory=list)
    counts: IngestStats = field(default_factory=IngestStats)


class RollupStore:
    """Hourly rollups in one SQLite file. Events are `add`ed in memory, each series' values and
    each target's outcomes kept beside it until `take` detaches them as a window, which `write`
    commits with the stream positions it came from (`ingest` does all three)."""

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
            prepare(self._db, path)
            self._db.execute(
                "CREATE TEMP TABLE wanted (n INTEGER PRIMARY KEY, host TEXT, agent TEXT, metric TEXT, "
                "labels TEXT)"
            )
        self._db.execute("PRAGMA busy_timeout=5000")
        self.health_gap = health_gap
        self.restart_events = frozenset(restart_events)
        self.stats = IngestStats()
        # (host, agent) -> metric -> labels as sent -> series: nested, so that a sample costs
        # lookups and no key of its own (many small objects a second keep the collector busy)
        self._series: dict[tuple[str, str], dict[str, dict[bytes, Series]]] = {}
        self._touched: list[Series] = []
        self._new: list[tuple[Series, SeriesKey]] = []
        self._spilled: ByHour[Series, array[float]] = {}  # values of an earlier hour
        # one copy of each name and label set, however many hosts send it: a fleet runs the same
        # containers and checks everywhere (30 MB of the sink's 230 at 1,000 hosts)
        self._names: dict[str, str] = {}
        self._label_sets: dict[bytes, bytes] = {}
        self._emptied: set[int] = set()  # series ids the last prune deleted, for `forget`
        self._targets: dict[TargetKey, Target] = {} if readonly else self._load_targets()
        self._changed: list[Target] = []
        self._spilled_health: ByHour[Target, HealthDelta] = {}
        self._alerts: list[Change] = []
        self._counts = IngestStats()

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
            self.take()
            self._series.clear()
            self._targets = self._load_targets()
            raise

    def add(self, whole: Event) -> None:
        """Roll one event (in stream order) in; ValueError if it cannot be stored."""
        event = whole if isinstance(whole, Check | Batch | Change) else narrow(whole)
        counts = self._counts
        if isinstance(event, Check):
            self._add_health(event)
            counts.health_events += 1
        elif isinstance(event, Batch):
            self._add_batch(event)
            counts.metric_batches += 1
            counts.samples += len(event.samples)
        else:
            self._alerts.append(event)
            counts.alerts += 1

    def take(self) -> Window:
        """What came in since the last `take`, to `write`; what comes next is kept apart."""
        metrics = self._spilled
        for series in self._touched:
            if series.values is not None:
                _put(metrics, series.hour, series, series.values)
                series.values = None
        health = self._spilled_health
        changed = self._changed
        for target in changed:
            if target.delta is not None:
                _put(health, target.hour, target, target.delta)
                target.delta = None
        last = (changed, [target.status for target in changed], array("d", (target.ts for target in changed)))
        window = Window(metrics, self._new, health, last, self._alerts, self._counts)
        self._touched, self._new, self._spilled, self._changed, self._spilled_health = [], [], {}, [], {}
        self._alerts, self._counts = [], IngestStats()
        return window

    def _name(self, name: str) -> str:
        return self._names.setdefault(name, name)

    def _add_batch(self, batch: Batch) -> None:
        hour = int(batch.ts // HOUR) * HOUR
        keep = self.metrics
        group = self._series.get((batch.host, batch.agent))
        if group is None:
            group = self._series[(self._name(batch.host), self._name(batch.agent))] = {}
        found: list[tuple[Series | None, float]] = []
        fresh: list[tuple[str, bytes]] = []
        for sample in batch.samples:
            name = sample.name
            if keep is not None and name not in keep:
                continue
            raw = bytes(sample.labels)
            by_labels = group.get(name)
            series = by_labels.get(raw) if by_labels is not None else None
            if series is None:
                fresh.append((name, raw))
            found.append((series, sample.value))
        if fresh:  # series not seen yet: checked first, so that a batch is refused whole
            for _, raw in fresh:
                labels_of(msgspec.Raw(raw))
            made = iter(fresh)
            for index, (series, value) in enumerate(found):
                if series is None:
                    name, raw = next(made)
                    name, raw = self._name(name), self._label_sets.setdefault(raw, raw)
                    by_labels = group.get(name)
                    if by_labels is None:
                        by_labels = group[name] = {}
                    series = by_labels.get(raw)
                    if series is None:
                        series = by_labels[raw] = Series()
                        self._new.append((series, (batch.host, batch.agent, name, raw)))
                    found[index] = (series, value)
        touched = self._touched
        for series, value in found:
            assert series is not None
            values = series.values
            if series.hour == hour and values is not None:
                values.append(value)
                continue
            if hour < series.hour:  # a late sample of an earlier hour: on its own
                _put(self._spilled, hour, series, array("d", (value,)))
                continue
            if values is not None:  # a new hour: the last one's values go as they are
                _put(self._spilled, series.hour, series, values)
            else:
                touched.append(series)
            series.hour = hour
            series.values = array("d", (value,))

    def _delta(self, target: Target, hour: int) -> HealthDelta:
        """The target's outcomes of `hour` in this window."""
        delta = target.delta
        if target.hour == hour and delta is not None:
            return delta
        fresh = HealthDelta()
        if hour < target.hour:  # an earlier hour (a late event, or a status lasting back then)
            _put(self._spilled_health, hour, target, fresh)
            return fresh
        if delta is not None:
            _put(self._spilled_health, target.hour, target, delta)
        target.hour, target.delta = hour, fresh
        return fresh

    def _add_health(self, event: Check) -> None:
        key = (event.host, event.agent, event.target)
        ts = event.ts
        hour = int(ts // HOUR) * HOUR
        target = self._targets.get(key)
        if target is None:
            key = (self._name(event.host), self._name(event.agent), self._name(event.target))
            target = self._targets[key] = Target(key, "", -math.inf)
            first = True
        else:
            first = target.ts == -math.inf
        if target.delta is None:
            self._changed.append(target)
        now = self._delta(target, hour)
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
                if now.latencies is None:
                    now.latencies = array("d")
                now.latencies.append(latency)
        if first:
            target.status, target.ts = event.status, ts
            return
        if event.event in self.restart_events:
            now.restarts += 1
        if ts > target.ts and target.status != "unknown":
            self._add_duration(target, ts)
        if ts >= target.ts:
            target.status, target.ts = event.status, ts

    def _add_duration(self, target: Target, ts: float) -> None:
        """The target's latest status lasted until `ts` (up to health_gap): split over its hours."""
        healthy = target.status == "ok"
        start, end = target.ts, min(ts, target.ts + self.health_gap)
        while start < end:
            hour = int(start // HOUR) * HOUR
            piece = min(end, hour + HOUR) - start
            delta = self._delta(target, hour)
            if healthy:
                delta.healthy_seconds += piece
            else:
                delta.unhealthy_seconds += piece
            start += piece

    def _load_targets(self) -> dict[TargetKey, Target]:
        rows = self._db.execute("SELECT host, agent, target, status, ts FROM health_last")
        name = self._name
        targets = {}
        for host, agent, target, status, ts in rows:
            key = (name(host), name(agent), name(target))
            targets[key] = Target(key, name(status), ts)
        return targets

    # -- writing (a worker thread) -------------------------------------------------------------

    def write(self, window: Window, positions: Mapping[str, int] | None = None) -> None:
        """Commit `window` and `positions` in one transaction, merged into the stored hours. The
        window is left as it was, so a failed write can be tried again."""
        self._db.execute("BEGIN IMMEDIATE")
        # a new series gets its id in this transaction, and keeps it only if it commits
        fresh = [series for series, _ in window.new_series if series.id == 0]
        try:
            ids = self._series_ids([key for series, key in window.new_series if series.id == 0])
            for series, series_id in zip(fresh, ids, strict=True):
                series.id = series_id
            self._write_by_hour(window.metrics, _series_id, self._write_metric_rows)
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
            for series in fresh:
                series.id = 0
            raise
        for name in ("samples", "metric_batches", "health_events", "alerts"):
            setattr(self.stats, name, getattr(self.stats, name) + getattr(window.counts, name))

    def _series_ids(self, keys: Sequence[SeriesKey]) -> list[int]:
        """The id of each of `keys`, made for those not stored yet: in a few statements, not two per
        series (after a restart every series of the fleet is new to the process)."""
        if not keys:
            return []
        # the same label set sent in another key order is the same series
        self._db.executemany(
            "INSERT INTO temp.wanted VALUES (?, ?, ?, ?, ?)",
            (
                (n, host, agent, metric, _labels_encoder.encode(labels_of(msgspec.Raw(raw))).decode())
                for n, (host, agent, metric, raw) in enumerate(keys)
            ),
        )
        try:
            self._db.execute(
                "INSERT OR IGNORE INTO series (host, agent, metric, labels) "
                "SELECT host, agent, metric, labels FROM temp.wanted ORDER BY n"
            )
            ids = [
                series_id
                for (series_id,) in self._db.execute(
                    "SELECT s.id FROM temp.wanted w JOIN series s ON s.host = w.host "
                    "AND s.agent = w.agent AND s.metric = w.metric AND s.labels = w.labels ORDER BY w.n"
                )
            ]
        finally:
            self._db.execute("DELETE FROM temp.wanted")
        if len(ids) != len(keys):  # each key is unique, and was just made if it was missing
            raise RuntimeError(f"{len(keys) - len(ids)} of {len(keys)} series have no id")
        return ids

    def _stored(self, one: str, every: str, keys: Sequence[tuple[Any, ...]], hour: int) -> dict[Any, Any]:
        """The stored columns of `keys` (sorted) in `hour`: when many are wanted, one query over
        their range (`every` selects the key columns first, bounded by two row values), else one
        query per key."""
        found: dict[Any, Any] = {}
        if len(keys) > _BULK_READ:
            width = len(keys[0])
            wanted = set(keys)
            for row in self._db.execute(every, (hour, *keys[0], *keys[-1])):
                if (key := row[:width]) in wanted:
                    found[key] = row[width:]
            return found
        for key in keys:
            row = self._db.execute(one, (*key, hour)).fetchone()
            if row is not None:
                found[key] = row
        return found

    def _write_by_hour(
        self, by_hour: ByHour[H, Any], key: Callable[[H], Any], write_rows: Callable[[int, list[H]], None]
    ) -> None:
        """Merge each hour's owners (series or targets) into their stored rows, in `key` order:
        each holds what it got on its `writing` slot while its rows are written, and no longer."""
        for hour, (owners, items) in by_hour.items():
            writing = _hold(owners, items)
            try:
                writing.sort(key=key)
                for at in range(0, len(writing), _CHUNK):  # in chunks: what a write holds stays small
                    write_rows(hour, writing[at : at + _CHUNK])
            finally:
                for owner in writing:
                    owner.writing = None

    def _write_metric_rows(self, hour: int, chunk: list[Series]) -> None:
        stored = self._stored(
            "SELECT count, sum, min, max, sketch FROM metric_hour WHERE series = ? AND hour = ?",
            "SELECT series, count, sum, min, max, sketch FROM metric_hour "
            "WHERE hour = ? AND series BETWEEN ? AND ?",
            [(series.id,) for series in chunk],
            hour,
        )
        rows, first = [], []
        # one series sent with its labels in two orders is two Series of one id, side by side
        for series_id, same in groupby(chunk, _series_id):
            row = stored.get((series_id,))
            if row is None:
                total = Rollup()
                first.append((hour, series_id, hour))
            else:
                total = Rollup(row[0], row[1], row[2], row[3], decode_sketch(row[4]))
            for series in same:
                assert series.writing is not None
                for values in _each(series.writing):
                    total.add_all(values)
            sketch = encode_sketch(total.sketch)
            rows.append((series_id, hour, total.count, total.total, total.low, total.high, sketch))
        self._db.executemany(
            "INSERT INTO metric_hour VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (hour, series) "
            "DO UPDATE SET count = excluded.count, sum = excluded.sum, min = excluded.min, "
            "max = excluded.max, sketch = excluded.sketch",
            rows,
        )
        # a series' first rows of an hour: what a prune reads to know which series it empties
        self._db.executemany("UPDATE series SET last_hour = ? WHERE id = ? AND last_hour < ?", first)

    def _write_health(self, by_hour: ByHour[Target, HealthDelta], last: Last) -> None:
        self._write_by_hour(by_hour, _target_key, self._write_health_rows)
        targets, statuses, stamps = last
        self._db.executemany(
            "INSERT INTO health_last VALUES (?, ?, ?, ?, ?) ON CONFLICT (host, agent, target) "
            "DO UPDATE SET status = excluded.status, ts = excluded.ts",
            ((*target.key, status, ts) for target, status, ts in zip(targets, statuses, stamps, strict=True)),
        )

    def _write_health_rows(self, hour: int, chunk: list[Target]) -> None:
        stored = self._stored(
            "SELECT up, down, unknown, healthy_seconds, unhealthy_seconds, restarts, "
            "latency_sketch FROM health_hour "
            "WHERE host = ? AND agent = ? AND target = ? AND hour = ?",
            "SELECT host, agent, target, up, down, unknown, healthy_seconds, unhealthy_seconds, "
            "restarts, latency_sketch FROM health_hour WHERE hour = ? "
            "AND (host, agent, target) BETWEEN (?, ?, ?) AND (?, ?, ?)",
            [target.key for target in chunk],
            hour,
        )
        rows = []
        for key, same in groupby(chunk, _target_key):  # one Target a key, but never two rows of one
            row = stored.get(key)
            if row is None:
                total = HealthRollup()
            else:
                up, down, unknown, healthy, unhealthy, restarts, latency = row
                total = HealthRollup(up, down, unknown, healthy, unhealthy, restarts, decode_sketch(latency))
            for target in same:
                assert target.writing is not None
                for delta in _each(target.writing):
                    total.add_delta(delta)
            rows.append(
                (
                    *key,
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
            "ON CONFLICT (hour, host, agent, target) DO UPDATE SET up = excluded.up, "
            "down = excluded.down, unknown = excluded.unknown, "
            "healthy_seconds = excluded.healthy_seconds, "
            "unhealthy_seconds = excluded.unhealthy_seconds, restarts = excluded.restarts, "
            "latency_sketch = excluded.latency_sketch",
            rows,
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
        deleted = self.prune_rows(before)
        self.forget(before)
        return deleted

    def prune_rows(self, before: float) -> int:
        """The stored part of `prune` (for a worker thread; `forget` follows in the event loop)."""
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
            emptied = self._db.execute("SELECT id FROM series WHERE last_hour < ?", (cutoff,)).fetchall()
            self._db.execute("DELETE FROM series WHERE last_hour < ?", (cutoff,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._emptied = {series_id for (series_id,) in emptied}
        return deleted

    def forget(self, before: float) -> None:
        """Drop the series and targets that `prune_rows(before)` deleted: the series whose latest
        stored hour it deleted, the targets last heard of before `before`. A deleted series with
        values since (they came while it was pruned) stays, and the next write stores it anew."""
        emptied, self._emptied = self._emptied, set()
        for (host, agent), group in list(self._series.items()):
            for name, by_labels in list(group.items()):
                for raw, series in list(by_labels.items()):
                    if series.id not in emptied:
                        continue
                    if series.values is None:
                        del by_labels[raw]
                    else:
                        series.id = 0
                        self._new.append((series, (host, agent, name, raw)))
                if not by_labels:
                    del group[name]
            if not group:
                del self._series[(host, agent)]
        for key, target in list(self._targets.items()):
            if target.ts < before and target.delta is None:
                del self._targets[key]

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
            (start, end, *metrics, *like),  # each hour in one period only, whatever the zone's offset
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
            (start, end),  # hours starting in [start, end): a half-hour zone's boundary hour is one day's
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
