"""The console's Prometheus endpoint: the latest samples, checks, alerts and heartbeats on the bus.

Names on the page, the rule a dashboard or a PromQL query can rely on:

- a metric `bus.vocabulary` declares is `jarvis_` and its dotted name with `_` for `.`, plus its
  unit's suffix when the name lacks it (`cpu.percent` is `jarvis_cpu_percent{host,agent}`);
  RENAMED lists the few that Prometheus's conventions name otherwise;
- any other name (a PromQL query's `promql.<name>` or `metric`) is `jarvis_` and the name with every
  character outside [a-zA-Z0-9_] as `_` (a leading `jarvis.` is not doubled); a name another
  already holds is refused and counted;
- a gauge whose name would end as a counter's or a histogram's series do (`_total`, `_count`, ...)
  gets `_value` appended (`postgres.connections.total` is `jarvis_postgres_connections_total_value`);
- label names: characters outside [a-zA-Z0-9_] become `_`, a name starting with a digit or `__` is
  prefixed `label_`, one the exporter sets itself (host, agent, check, ...) with another value
  becomes `exported_<name>` as in Prometheus; empty values are left out (Prometheus reads them so).

A batch replaces its agent's previous batch; what is not updated for `stale_after` (or three of
its agent's intervals, if longer) is dropped, heartbeats after `heartbeat_stale_after` so a silent
agent's age stays visible; alerts stay until resolved, or until the evaluator's snapshot of its
active alerts (`set_active`) no longer holds them. At most `max_series` series: the rest is
refused and counted in `jarvis_console_rejected_total{reason="series_cap"}`.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, TypeVar, get_args

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from bus import vocabulary as vocab
from bus.events import Alert, HealthEvent, Heartbeat, MetricBatch, Status
from bus.records import ActiveAlerts

Kind = Literal["gauge", "counter"]
LabelPairs = tuple[tuple[str, str], ...]
RawLabels = tuple[tuple[str, str], ...]  # an event's labels as they came, in their order
ExporterEvent = MetricBatch | HealthEvent | Heartbeat | Alert
K = TypeVar("K")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
DEFAULT_STALE_AFTER = 300.0
DEFAULT_HEARTBEAT_STALE_AFTER = 86400.0
DEFAULT_MAX_SERIES = 250_000
STALE_INTERVALS = 3  # a series outlives three of its agent's intervals, however long stale_after is
MAX_NAMES = 10_000  # distinct undeclared metric names; more are refused
SWEEP_EVERY = 10.0  # seconds between sweeps for stale records while nobody scrapes
STATUSES: tuple[Status, ...] = get_args(Status)
UP_STATUSES = frozenset({"ok", "warning"})  # a warning check still answers
ALERT_GONE = frozenset({"resolved", "inactive"})
ALERT_SHOWN = frozenset({"pending", "firing"})

UNIT_SUFFIXES = {
    "percent": "_percent",
    "bytes": "_bytes",
    "bytes/s": "_bytes_per_second",
    "seconds": "_seconds",
    "ratio": "_ratio",
}
# Declared metrics the rule would name against Prometheus's conventions: `_count` belongs to
# histograms and summaries, and a restart count only grows, so it is a counter.
RENAMED: dict[str, tuple[str, Kind]] = {
    vocab.CPU_COUNT: ("jarvis_cpu_cores", "gauge"),
    vocab.PROC_COUNT: ("jarvis_processes", "gauge"),
    vocab.CONTAINER_RESTART_COUNT: ("jarvis_container_restarts", "counter"),
}
RESERVED_SUFFIXES = ("_total", "_count", "_sum", "_bucket", "_created")
# Heartbeat counters that go up and down; `lag.<input>` ones are gauges too, apart.
# Their names are the parts' own (evaluator, evaluator partitions, console, Slack sink).
PART_GAUGES = frozenset({"standing_by", "partitions", "pages_open", "held.notifications"})
LAG_PREFIX = "lag."

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True, eq=False)
class Family:
    """One metric family on the page; `name` lacks the `_total` a counter's samples carry."""

    name: str
    kind: Kind
    help: str
    exposed: str = field(init=False)
    header: str = field(init=False)

    def __post_init__(self) -> None:
        exposed = f"{self.name}_total" if self.kind == "counter" else self.name
        text = self.help.replace("\\", r"\\").replace("\n", r"\n")
        object.__setattr__(self, "exposed", exposed)
        object.__setattr__(self, "header", f"# HELP {exposed} {text}\n# TYPE {exposed} {self.kind}\n")


def _gauge(name: str, help: str) -> Family:
    return Family(name, "gauge", help)


def _counter(name: str, help: str) -> Family:
    return Family(name, "counter", help)


def declared_family(spec: vocab.MetricSpec) -> Family:
    """The family of a metric the vocabulary declares, named by its name and unit."""
    help = f"{spec.description} ({spec.unit}; {spec.name} on the bus)"
    if spec.name in RENAMED:
        name, kind = RENAMED[spec.name]
        return Family(name, kind, help)
    name = "jarvis_" + _INVALID.sub("_", spec.name)
    suffix = unit_suffix(spec.unit)
    if suffix and not name.endswith(suffix):
        name += suffix
    return Family(_unreserved(name), "gauge", help)


def unit_suffix(unit: str) -> str:
    """What a name in `unit` ends with: `_seconds`, `_bytes`, `_per_second` for any rate, ..."""
    if unit in UNIT_SUFFIXES:
        return UNIT_SUFFIXES[unit]
    return "_per_second" if unit.endswith("/s") else ""


def _unreserved(name: str) -> str:
    """A gauge never ends as a counter's or a histogram's series do: `_value` is appended then."""
    return f"{name}_value" if name.endswith(RESERVED_SUFFIXES) else name


def undeclared_name(name: str) -> str | None:
    """The family name of a metric no agent declares, or None for a name that leaves nothing."""
    body = _INVALID.sub("_", name.removeprefix("jarvis."))
    if not body.strip("_"):
        return None
    return _unreserved(f"jarvis_{body}")


@lru_cache(maxsize=4096)
def label_name(name: str) -> str:
    """A valid Prometheus label name for any label name from outside."""
    clean = _INVALID.sub("_", name)
    if not clean or clean[0].isdigit() or clean.startswith("__"):
        clean = f"label_{clean}"
    return clean


_go_float: Callable[[float], str] = floatToGoString


def _number(value: float) -> str:
    """prometheus_client's rendering of a value (Go's), so the page is what generate_latest writes."""
    if value < 1e6:  # below, Go's and Python's shortest representations agree: the common case, fast
        return repr(float(value))
    return _go_float(value)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_text(labels: LabelPairs) -> str:
    if not labels:
        return ""
    return "{" + ",".join([f'{key}="{_escape(value)}"' for key, value in labels]) + "}"


DECLARED: dict[str, Family] = {
    spec.name: declared_family(spec)
    for metrics in vocab.AGENT_METRICS.values()
    for spec in metrics.values()
    if spec.name != vocab.PROMQL_METRIC
}

CHECK_UP = _gauge("jarvis_check_up", "1 while a check passes or warns, 0 when critical or unknown")
CHECK_STATUS = _gauge("jarvis_check_status", "1 for a check's latest status (ok, warning, critical, unknown)")
CHECK_LATENCY = _gauge("jarvis_check_latency_seconds", "time the latest check took, when it measured one")
CHECK_TIMESTAMP = _gauge("jarvis_check_timestamp_seconds", "when the latest check ran, by its agent's clock")
CHECK_INFO = _gauge(
    "jarvis_check_info", "the context of a check's target (url, image, state, ...), as labels"
)
ALERTS = _gauge("ALERTS", "1 for each pending or firing alert, as Prometheus's own ALERTS")
ALERTS_FOR_STATE = _gauge("ALERTS_FOR_STATE", "when each pending or firing alert started (seconds)")
HEARTBEAT_TIMESTAMP = _gauge("jarvis_heartbeat_timestamp_seconds", "when an agent or part last beat")
HEARTBEAT_INTERVAL = _gauge("jarvis_heartbeat_interval_seconds", "how often an agent or part beats")
AGENT_INFO = _gauge("jarvis_agent_info", "1 for each agent or part, with the version it reports")
PUBLISH_DROPPED = _counter("jarvis_publish_dropped", "publishes lost to a full reconnect buffer")
PUBLISH_ERRORS = _counter("jarvis_publish_errors", "publishes that failed")
COLLECT_ERRORS = _counter("jarvis_collect_errors", "collections that failed or timed out")
PART_EVENTS = _counter("jarvis_part_events", "what a part of the pipeline did since it started, by name")
PART_STATE = _gauge("jarvis_part_state", "a state a part reports in its heartbeat (standing_by, ...)")
PART_LAG = _gauge("jarvis_part_lag_messages", "messages a part had still to fetch, by input")
PART_REJECTED = _counter("jarvis_part_rejected", "inputs a part refused since it started, by reason")
CONSOLE_SERIES = _gauge("jarvis_console_series", "series this endpoint holds")
CONSOLE_MAX_SERIES = _gauge("jarvis_console_max_series", "series this endpoint holds at most")
CONSOLE_EVENTS = _counter("jarvis_console_events", "events this endpoint observed, by kind")
CONSOLE_REJECTED = _counter(
    "jarvis_console_rejected", "samples, labels or events this endpoint refused, by reason"
)
CONSOLE_EXPIRED = _counter("jarvis_console_expired_series", "series dropped for not being updated")
OWN_FAMILIES = (
    CHECK_UP,
    CHECK_STATUS,
    CHECK_LATENCY,
    CHECK_TIMESTAMP,
    CHECK_INFO,
    ALERTS,
    ALERTS_FOR_STATE,
    HEARTBEAT_TIMESTAMP,
    HEARTBEAT_INTERVAL,
    AGENT_INFO,
    PUBLISH_DROPPED,
    PUBLISH_ERRORS,
    COLLECT_ERRORS,
    PART_EVENTS,
    PART_STATE,
    PART_LAG,
    PART_REJECTED,
    CONSOLE_SERIES,
    CONSOLE_MAX_SERIES,
    CONSOLE_EVENTS,
    CONSOLE_REJECTED,
    CONSOLE_EXPIRED,
)


@dataclass(slots=True)
class _Record:
    """What one event left on the page: its series per family, and their lines rendered once."""

    ts: float  # the event's own time: an older event never replaces a newer one
    seen: float  # when it arrived, by the exporter's clock
    keep: float  # seconds after `seen` it is dropped
    series: dict[Family, dict[LabelPairs, float]] = field(default_factory=dict)
    text: dict[Family, str] = field(default_factory=dict)
    size: int = 0
    # what the next event of the same source reuses: its labels come back every cycle
    pairs: dict[RawLabels, LabelPairs] = field(default_factory=dict)
    label_text: dict[LabelPairs, str] = field(default_factory=dict)


class _Builder:
    """Collects one record's series, at most `room` of them, counting what it refuses."""

    def __init__(self, room: int, rejected: Counter[str], old: _Record | None = None) -> None:
        self.room = room
        self.rejected = rejected
        self.series: dict[Family, dict[LabelPairs, float]] = {}
        self.size = 0
        self._old_pairs = old.pairs if old is not None else {}
        self._old_text = old.label_text if old is not None else {}
        self.pairs: dict[RawLabels, LabelPairs] = {}
        self._text: dict[LabelPairs, str] = {}

    def add(self, family: Family, labels: LabelPairs, value: float) -> None:
        if not math.isfinite(value):
            self.rejected["non_finite"] += 1
            return
        bucket = self.series.setdefault(family, {})
        if labels not in bucket:
            if self.size >= self.room:
                self.rejected["series_cap"] += 1
                return
            self.size += 1
        bucket[labels] = value

    def known_pairs(self, raw: RawLabels) -> LabelPairs | None:
        """The labels made of `raw` by the previous event of this source, if it had the same."""
        pairs = self.pairs.get(raw)
        if pairs is None:
            pairs = self._old_pairs.get(raw)
            if pairs is not None:
                self.pairs[raw] = pairs
        return pairs

    def _label_text(self, labels: LabelPairs) -> str:
        text = self._text.get(labels)
        if text is None:
            text = self._old_text.get(labels)
            if text is None:
                text = _label_text(labels)
            self._text[labels] = text
        return text

    def record(self, ts: float, seen: float, keep: float) -> _Record:
        text = {}
        for family, bucket in self.series.items():
            if bucket:
                name, label = family.exposed, self._label_text
                text[family] = "".join(
                    [f"{name}{label(pairs)} {_number(v)}\n" for pairs, v in bucket.items()]
                )
        return _Record(ts, seen, keep, self.series, text, self.size, self.pairs, self._text)


class MetricsExporter:
    """The latest state of the bus as Prometheus metric families, served by `handler`.

    Also a prometheus_client Collector: `collect()` yields the same families the page shows.
    """

    def __init__(
        self,
        *,
        stale_after: float = DEFAULT_STALE_AFTER,
        heartbeat_stale_after: float = DEFAULT_HEARTBEAT_STALE_AFTER,
        max_series: int = DEFAULT_MAX_SERIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stale_after = stale_after
        self.heartbeat_stale_after = heartbeat_stale_after
        self.max_series = max_series
        self.clock = clock
        self.series = 0
        self.observed: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.expired = 0
        self._batches: dict[tuple[str, str], _Record] = {}
        self._checks: dict[tuple[str, str, str], _Record] = {}
        self._beats: dict[tuple[str, str], _Record] = {}
        self._alerts: dict[str, _Record] = {}
        self._gone: dict[str, float] = {}  # alerts an event resolved, and when
        self._intervals: dict[tuple[str, str], float] = {}
        self._undeclared: dict[str, Family | None] = {}
        self._taken = {family.name for family in (*DECLARED.values(), *OWN_FAMILIES)}
        self._next_sweep = 0.0

    # -- the model ------------------------------------------------------------------------------

    def observe(self, event: ExporterEvent) -> None:
        """Take one event from the bus into the page."""
        now = self.clock()
        self.observed[str(type(event).__struct_config__.tag)] += 1
        if isinstance(event, MetricBatch):
            self._observe_batch(event, now)
        elif isinstance(event, HealthEvent):
            self._observe_health(event, now)
        elif isinstance(event, Heartbeat):
            self._observe_heartbeat(event, now)
        else:
            self._observe_alert(event, now)
        if now >= self._next_sweep:
            self.sweep(now)

    def family(self, name: str) -> Family | None:
        """The family a sample named `name` goes to; None (counted) when refused."""
        declared = DECLARED.get(name)
        if declared is not None:
            return declared
        if name in self._undeclared:
            found = self._undeclared[name]
        elif len(self._undeclared) >= MAX_NAMES:
            self.rejected["names_cap"] += 1
            return None
        else:
            found = self._undeclared[name] = self._new_undeclared(name)
        if found is None:
            self.rejected["bad_name"] += 1
        return found

    def _new_undeclared(self, name: str) -> Family | None:
        family_name = undeclared_name(name)
        if family_name is None or family_name in self._taken:
            return None
        self._taken.add(family_name)
        return _gauge(family_name, f"{name} on the bus, undeclared: its unit is its publisher's")

    def _labels(self, own: Mapping[str, str], theirs: Mapping[str, str], builder: _Builder) -> LabelPairs:
        """`own` labels and the event's; `own` must be the same for every event of the builder's source."""
        raw = tuple(theirs.items())
        pairs = builder.known_pairs(raw)
        if pairs is None:
            pairs = builder.pairs[raw] = self._merge(own, theirs)
        return pairs

    def _merge(self, own: Mapping[str, str], theirs: Mapping[str, str]) -> LabelPairs:
        """`own` labels and the event's, sanitised, sorted; a clash keeps ours, theirs as exported_."""
        if not theirs:
            return tuple(sorted(own.items()))
        out = dict(own)
        for key in sorted(theirs):  # sorted: which of two clashing names wins never depends on order
            value = theirs[key]
            if not value:
                continue
            name = label_name(key)
            if name in own:
                if own[name] == value:
                    continue
                name = f"exported_{name}"
            if name in out:
                self.rejected["label_collision"] += 1
                continue
            out[name] = value
        return tuple(sorted(out.items()))

    def _builder(self, old: _Record | None) -> _Builder:
        held = self.series - (old.size if old is not None else 0)
        return _Builder(max(self.max_series - held, 0), self.rejected, old)

    def _fresh(self, old: _Record | None, ts: float, keep: float, now: float) -> bool:
        if now - ts > keep:
            self.rejected["stale_on_arrival"] += 1
            return False
        if old is not None and ts < old.ts:
            self.rejected["out_of_order"] += 1
            return False
        return True

    def _store(self, table: dict[K, _Record], key: K, record: _Record) -> None:
        old = table.get(key)
        if old is not None:
            self.series -= old.size
        if record.size:
            table[key] = record
            self.series += record.size
        elif old is not None:
            del table[key]

    def _keep(self, host: str, agent: str, floor: float) -> float:
        return max(floor, STALE_INTERVALS * self._intervals.get((host, agent), 0.0))

    def _observe_batch(self, batch: MetricBatch, now: float) -> None:
        key = (batch.host, batch.agent)
        self._intervals[key] = batch.interval
        keep = self._keep(batch.host, batch.agent, self.stale_after)
        old = self._batches.get(key)
        if not self._fresh(old, batch.ts, keep, now):
            return
        own = {"host": batch.host, "agent": batch.agent}
        builder = self._builder(old)
        for sample in batch.samples:
            family = self.family(sample.name)
            if family is not None:
                builder.add(family, self._labels(own, sample.labels, builder), sample.value)
        self._store(self._batches, key, builder.record(batch.ts, now, keep))

    def _observe_health(self, event: HealthEvent, now: float) -> None:
        key = (event.host, event.agent, event.target)
        keep = self._keep(event.host, event.agent, self.stale_after)
        old = self._checks.get(key)
        if not self._fresh(old, event.ts, keep, now):
            return
        own = {"host": event.host, "agent": event.agent, "check": event.target}
        base = tuple(sorted(own.items()))
        builder = self._builder(old)
        builder.add(CHECK_UP, base, 1.0 if event.status in UP_STATUSES else 0.0)
        for status in STATUSES:
            builder.add(CHECK_STATUS, (*base, ("status", status)), 1.0 if status == event.status else 0.0)
        if event.latency is not None:
            builder.add(CHECK_LATENCY, base, event.latency)
        builder.add(CHECK_TIMESTAMP, base, event.ts)
        builder.add(CHECK_INFO, self._labels(own, event.labels, builder), 1.0)
        self._store(self._checks, key, builder.record(event.ts, now, keep))

    def _observe_heartbeat(self, beat: Heartbeat, now: float) -> None:
        key = (beat.host, beat.agent)
        self._intervals[key] = beat.interval
        keep = self._keep(beat.host, beat.agent, self.heartbeat_stale_after)
        old = self._beats.get(key)
        if not self._fresh(old, beat.ts, keep, now):
            return
        base = (("agent", beat.agent), ("host", beat.host))
        builder = self._builder(old)
        builder.add(HEARTBEAT_TIMESTAMP, base, beat.ts)
        builder.add(HEARTBEAT_INTERVAL, base, beat.interval)
        builder.add(AGENT_INFO, (*base, ("version", beat.version)), 1.0)
        builder.add(PUBLISH_DROPPED, base, beat.dropped)
        builder.add(PUBLISH_ERRORS, base, beat.publish_errors)
        builder.add(COLLECT_ERRORS, base, beat.collect_errors)
        for name, value in beat.counters.items():
            if name.startswith(LAG_PREFIX):
                builder.add(PART_LAG, (*base, ("input", name.removeprefix(LAG_PREFIX))), value)
            elif name in PART_GAUGES:
                builder.add(PART_STATE, (*base, ("name", name)), value)
            else:
                builder.add(PART_EVENTS, (*base, ("name", name)), value)
        for reason, value in beat.rejected.items():
            builder.add(PART_REJECTED, (*base, ("reason", reason)), value)
        self._store(self._beats, key, builder.record(beat.ts, now, keep))

    def _observe_alert(self, alert: Alert, now: float) -> None:
        if alert.status in ALERT_GONE:
            self._store(self._alerts, alert.fingerprint, _Record(now, now, math.inf))
            self._gone[alert.fingerprint] = now  # an older snapshot of the active alerts cannot revive it
        else:
            self._gone.pop(alert.fingerprint, None)
            self._put_alert(
                alert.fingerprint,
                alert.rule,
                alert.status,
                alert.severity,
                alert.labels,
                alert.starts_at,
                now,
            )

    def _put_alert(
        self,
        fingerprint: str,
        rule: str,
        state: str,
        severity: str,
        labels: Mapping[str, str],
        starts_at: float,
        ts: float,
    ) -> None:
        own = {"alertname": rule, "alertstate": state, "severity": severity}
        pairs = self._merge(own, labels)
        builder = self._builder(self._alerts.get(fingerprint))
        builder.add(ALERTS, pairs, 1.0)
        builder.add(ALERTS_FOR_STATE, tuple(pair for pair in pairs if pair[0] != "alertstate"), starts_at)
        self._store(self._alerts, fingerprint, builder.record(ts, ts, math.inf))

    def set_active(self, active: ActiveAlerts) -> None:
        """The evaluator's active alerts as it stores them in KV, so a console started after an alert
        fired serves it too; what an event said after the snapshot was taken stands."""
        current = set()
        for alert in active.alerts:
            if alert.state not in ALERT_SHOWN:
                continue
            current.add(alert.fingerprint)
            old = self._alerts.get(alert.fingerprint)
            newer = old.ts if old is not None else self._gone.get(alert.fingerprint, -math.inf)
            if newer < active.ts:
                self._put_alert(
                    alert.fingerprint,
                    alert.rule,
                    alert.state,
                    alert.severity,
                    alert.labels,
                    alert.since,
                    active.ts,
                )
        for fingerprint in [fp for fp, r in self._alerts.items() if fp not in current and r.ts < active.ts]:
            self._store(self._alerts, fingerprint, _Record(active.ts, active.ts, math.inf))
        for fingerprint in [fp for fp, ts in self._gone.items() if ts < active.ts]:
            del self._gone[fingerprint]

    def sweep(self, now: float | None = None) -> None:
        """Drop every record not updated within its window."""
        now = self.clock() if now is None else now
        self._expire(self._batches, now)
        self._expire(self._checks, now)
        self._expire(self._beats, now)
        for key in [key for key in self._intervals if key not in self._batches and key not in self._beats]:
            del self._intervals[key]
        for fingerprint in [fp for fp, ts in self._gone.items() if now - ts > self.stale_after]:
            del self._gone[fingerprint]
        self._next_sweep = now + min(SWEEP_EVERY, self.stale_after / 10)

    def _expire(self, table: dict[K, _Record], now: float) -> None:
        for key in [key for key, record in table.items() if now - record.seen > record.keep]:
            size = table.pop(key).size
            self.series -= size
            self.expired += size

    # -- the page -------------------------------------------------------------------------------

    def _own_record(self) -> _Record:
        builder = _Builder(len(self.observed) + len(self.rejected) + 4, Counter())
        builder.add(CONSOLE_SERIES, (), self.series)
        builder.add(CONSOLE_MAX_SERIES, (), self.max_series)
        for kind, count in sorted(self.observed.items()):
            builder.add(CONSOLE_EVENTS, (("kind", kind),), count)
        for reason, count in sorted(self.rejected.items()):
            builder.add(CONSOLE_REJECTED, (("reason", reason),), count)
        builder.add(CONSOLE_EXPIRED, (), self.expired)
        return builder.record(0.0, 0.0, math.inf)

    def _records(self) -> Iterator[_Record]:
        for table in (self._batches, self._checks, self._beats, self._alerts):
            yield from table.values()
        yield self._own_record()

    def _grouped(self) -> list[tuple[Family, list[_Record]]]:
        self.sweep()
        groups: dict[Family, list[_Record]] = {}
        for record in self._records():
            for family in record.text:
                groups.setdefault(family, []).append(record)
        return sorted(groups.items(), key=lambda item: item[0].exposed)

    def render(self) -> bytes:
        """The page in Prometheus's text format 0.0.4: what generate_latest makes of `collect()`."""
        parts: list[str] = []
        for family, records in self._grouped():
            parts.append(family.header)
            parts.extend(record.text[family] for record in records)
        # a lone surrogate cannot come off the wire (msgspec refuses it), but must never crash a scrape
        return "".join(parts).encode("utf-8", "replace")

    def collect(self) -> Iterable[Metric]:
        """The same families as prometheus_client metric families, for a CollectorRegistry."""
        for family, records in self._grouped():
            metric: Metric = (
                CounterMetricFamily(family.name, family.help)
                if family.kind == "counter"
                else GaugeMetricFamily(family.name, family.help)
            )
            for record in records:
                for labels, value in record.series[family].items():
                    metric.add_sample(family.exposed, dict(labels), value)
            yield metric

    async def handler(self, request: web.Request) -> web.Response:
        """GET /metrics."""
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE})
