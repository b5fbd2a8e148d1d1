"""The console's live model, built from events alone: hosts, containers, checks, request performance,
log lines, parts and alerts, each bounded. Pure: no I/O, the time is always passed in."""

from __future__ import annotations

import datetime as dt
import hashlib
import zoneinfo
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from bus import vocabulary as vocab
from bus.events import Alert, HealthEvent, Heartbeat, MetricBatch, Status
from bus.records import ActiveAlert, ActiveAlerts, Silence

# Lower is worse: what is wrong sorts first.
RANK: dict[str, int] = {"critical": 0, "warning": 1, "unknown": 2, "ok": 3}
SEVERITY_STATUS: dict[str, Status] = {"critical": "critical", "warning": "warning", "info": "ok"}
# A heartbeat is late after 1.5 of its intervals and silent after 3 (as `jarvis-monitor status`).
LATE, SILENT = 1.5, 3.0
STALE_INTERVALS = 3.0  # a host or container not reported for this many intervals is unknown
AVAILABILITY_GAP = 300.0  # a check's status counts until its next check, for no longer than this
UP: frozenset[str] = frozenset(("ok", "warning"))
MAX_MOUNTS = 32
ALERT_HISTORY = 200
PERF_METRICS = {
    vocab.HTTP_REQUEST_RATE: "rate",
    vocab.HTTP_ERROR_RATIO: "error_ratio",
    vocab.HTTP_LATENCY_P50: "p50",
    vocab.HTTP_LATENCY_P95: "p95",
    vocab.HTTP_LATENCY_P99: "p99",
    vocab.HTTP_LATENCY: "latency",
}
HOST_SERIES = ("cpu", "mem", "disk", "load")


def row_id(table: str, *key: str) -> str:
    """An HTML id for one row: outside names never reach an attribute that the page's script reads."""
    digest = hashlib.sha256("\x00".join(key).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{table}-{digest}"


def worst(statuses: Iterable[str]) -> str:
    return min(statuses, key=lambda s: RANK.get(s, 2), default="ok")


class Ring:
    """One point per `step` seconds (the step's largest value, so a spike stays visible), `size` at most."""

    __slots__ = ("points", "step")

    def __init__(self, step: float, size: int) -> None:
        self.step = step
        self.points: deque[tuple[float, float]] = deque(maxlen=size)

    def add(self, t: float, value: float) -> None:
        slot = t - t % self.step
        if self.points:
            last_slot, last = self.points[-1]
            if slot < last_slot:  # older than what is kept: a late event changes no history
                return
            if slot == last_slot:
                self.points[-1] = (slot, max(last, value))
                return
        self.points.append((slot, value))

    def since(self, start: float) -> list[tuple[float, float]]:
        return [p for p in self.points if p[0] >= start]


@dataclass
class HostView:
    host: str
    ts: float = 0.0
    interval: float = 10.0
    cpu: float | None = None
    mem: float | None = None
    disk: float | None = None  # the fullest mount
    disks: dict[str, float] = field(default_factory=dict)
    load1: float | None = None
    load5: float | None = None
    load15: float | None = None
    cores: float | None = None
    history: dict[str, Ring] = field(default_factory=dict)


@dataclass
class ContainerView:
    host: str
    name: str
    ts: float = 0.0
    interval: float = 10.0
    image: str = ""
    status: str = "unknown"  # the container agent's health event
    detail: str = ""
    running: bool | None = None
    health: str = "none"  # healthy, unhealthy, starting, none (no health check)
    restarts: int = 0
    cpu: float | None = None
    mem_bytes: float | None = None
    mem_percent: float | None = None
    log_errors: Ring | None = None


@dataclass
class CheckView:
    host: str
    agent: str
    target: str
    ts: float = 0.0
    status: str = "unknown"
    latency: float | None = None
    detail: str = ""
    day: str = ""
    up_seconds: float = 0.0
    seen_seconds: float = 0.0
    sla: float | None = None  # the availability target of its service, percent

    @property
    def availability(self) -> float | None:
        """Percent of today's observed time it was up (ok or warning), None before two checks."""
        return 100.0 * self.up_seconds / self.seen_seconds if self.seen_seconds > 0 else None

    @property
    def meets_sla(self) -> bool | None:
        availability = self.availability
        if availability is None or self.sla is None:
            return None
        return availability >= self.sla


@dataclass
class PerfView:
    """One service's request performance, from the probe's scrape of its metrics."""

    check: str
    ts: float = 0.0
    latest: dict[str, float] = field(default_factory=dict)
    history: dict[str, Ring] = field(default_factory=dict)


@dataclass
class LogView:
    host: str
    container: str
    ts: float = 0.0
    lines: deque[tuple[float, str]] = field(default_factory=deque)


@dataclass
class PartView:
    host: str
    agent: str
    ts: float
    interval: float
    counters: dict[str, int]
    problem: str = ""  # its supervisor's or collector's last bad news, cleared by good news

    def state(self, now: float) -> str:
        intervals = max(0.0, now - self.ts) / max(self.interval, 0.001)
        return "silent" if intervals >= SILENT else "late" if intervals >= LATE else "ok"


@dataclass(frozen=True)
class AlertRow:
    """An alert as the pages show it: the evaluator's view when it has one, else the event's."""

    fingerprint: str
    rule: str
    severity: str
    state: str  # firing or pending
    labels: dict[str, str]
    summary: str
    value: float | None
    since: float
    silenced_by: tuple[str, ...] = ()
    inhibited_by: tuple[str, ...] = ()
    acked: bool = False
    flapping: bool = False

    @property
    def muted(self) -> bool:
        return bool(self.silenced_by or self.inhibited_by or self.acked)

    @property
    def flags(self) -> list[str]:
        return [
            name
            for name, on in (
                ("silenced", self.silenced_by),
                ("inhibited", self.inhibited_by),
                ("acked", self.acked),
                ("flapping", self.flapping),
            )
            if on
        ]


def _from_active(alert: ActiveAlert) -> AlertRow:
    return AlertRow(
        fingerprint=alert.fingerprint,
        rule=alert.rule,
        severity=alert.severity,
        state=alert.state,
        labels=dict(alert.labels),
        summary=alert.summary,
        value=alert.value,
        since=alert.since,
        silenced_by=tuple(alert.silenced_by),
        inhibited_by=tuple(alert.inhibited_by),
        acked=alert.acked,
        flapping=alert.flapping,
    )


def _from_event(alert: Alert) -> AlertRow:
    return AlertRow(
        fingerprint=alert.fingerprint,
        rule=alert.rule,
        severity=alert.severity,
        state=alert.status,
        labels=dict(alert.labels),
        summary=alert.summary,
        value=alert.value,
        since=alert.starts_at,
        flapping=alert.flapping,
    )


@dataclass(frozen=True)
class Limits:
    """The model's bounds (from the console's config)."""

    history: float = 6 * 3600.0
    points: int = 360
    max_series: int = 20_000
    log_lines: int = 20


@dataclass
class Counters:
    events: int = 0
    dropped_series: int = 0  # a new host, container or check beyond max_series


class ConsoleState:
    """Everything the pages show, updated event by event; `take_dirty` says which rows changed."""

    def __init__(
        self,
        limits: Limits = Limits(),
        *,
        sla: dict[str, float] | None = None,
        zone: dt.tzinfo = dt.UTC,
    ) -> None:
        self.limits = limits
        self.step = limits.history / limits.points
        self.sla = sla or {}  # check name -> availability target, percent
        self.zone = zone
        self.hosts: dict[str, HostView] = {}
        self.containers: dict[tuple[str, str], ContainerView] = {}
        self.checks: dict[tuple[str, str, str], CheckView] = {}
        self.perf: dict[str, PerfView] = {}
        self.logs: dict[tuple[str, str], LogView] = {}
        self.parts: dict[tuple[str, str], PartView] = {}
        self.live_alerts: dict[str, Alert] = {}  # from the alert events, firing and pending
        self.active: ActiveAlerts | None = None  # the evaluator's list from KV
        self.history: deque[Alert] = deque(maxlen=ALERT_HISTORY)
        self.silences: list[Silence] = []
        self.counters = Counters()
        self._dirty: dict[tuple[str, str], tuple[str, ...]] = {}
        self.latest_ts = 0.0  # the newest event time seen

    # -- bookkeeping ------------------------------------------------------------------------

    def _series_count(self) -> int:
        return len(self.hosts) + len(self.containers) + len(self.checks) + len(self.perf)

    def _room(self) -> bool:
        if self._series_count() < self.limits.max_series:
            return True
        self.counters.dropped_series += 1
        return False

    def _mark(self, table: str, *key: str) -> None:
        self._dirty[(table, row_id(table, *key))] = key

    def take_dirty(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """The rows changed since the last call, by (table, row id), with their keys."""
        dirty, self._dirty = self._dirty, {}
        return dirty

    def _ring(self) -> Ring:
        return Ring(self.step, self.limits.points)

    # -- events -----------------------------------------------------------------------------

    def observe(self, event: MetricBatch | HealthEvent | Heartbeat | Alert) -> None:
        """Fold one event into the model."""
        self.counters.events += 1
        if isinstance(event, MetricBatch):
            self.latest_ts = max(self.latest_ts, event.ts)
            self._metrics(event)
        elif isinstance(event, HealthEvent):
            self.latest_ts = max(self.latest_ts, event.ts)
            self._health(event)
        elif isinstance(event, Heartbeat):
            self._heartbeat(event)
        else:
            self._alert(event)

    def _metrics(self, batch: MetricBatch) -> None:
        if batch.agent == vocab.HOST_AGENT:
            self._host_metrics(batch)
        elif batch.agent == vocab.CONTAINER_AGENT:
            self._container_metrics(batch)
        else:
            self._perf_metrics(batch)

    def _host_metrics(self, batch: MetricBatch) -> None:
        view = self.hosts.get(batch.host)
        if view is None:
            if not self._room():
                return
            view = self.hosts[batch.host] = HostView(
                host=batch.host, history={name: self._ring() for name in HOST_SERIES}
            )
        if batch.ts < view.ts:
            return
        view.ts, view.interval = batch.ts, batch.interval
        disks: dict[str, float] = {}
        for sample in batch.samples:
            name = sample.name
            if name == vocab.CPU_PERCENT:
                view.cpu = sample.value
            elif name == vocab.MEM_PERCENT:
                view.mem = sample.value
            elif name == vocab.DISK_PERCENT and len(disks) < MAX_MOUNTS:
                disks[sample.labels.get("mount", "?")] = sample.value
            elif name == vocab.LOAD_1:
                view.load1 = sample.value
            elif name == vocab.LOAD_5:
                view.load5 = sample.value
            elif name == vocab.LOAD_15:
                view.load15 = sample.value
            elif name == vocab.CPU_COUNT:
                view.cores = sample.value
        if disks:
            view.disks = disks
            view.disk = max(disks.values())
        latest = {"cpu": view.cpu, "mem": view.mem, "disk": view.disk, "load": view.load1}
        for series, value in latest.items():
            if value is not None:
                view.history[series].add(batch.ts, value)
        self._mark("host", batch.host)

    def _container(self, host: str, name: str) -> ContainerView | None:
        view = self.containers.get((host, name))
        if view is None and self._room():
            view = self.containers[(host, name)] = ContainerView(host=host, name=name)
        return view

    def _container_metrics(self, batch: MetricBatch) -> None:
        touched: set[str] = set()
        for sample in batch.samples:
            name = sample.labels.get("container")
            if name is None or not sample.name.startswith(vocab.CONTAINER_PREFIX):
                continue
            view = self._container(batch.host, name)
            if view is None:
                continue
            touched.add(name)
            view.ts = max(view.ts, batch.ts)
            view.interval = batch.interval
            view.image = sample.labels.get("image", view.image)
            metric, value = sample.name, sample.value
            if metric == vocab.CONTAINER_RUNNING:
                view.running = value >= 1
            elif metric == vocab.CONTAINER_HEALTHY:
                if view.health not in ("starting", "unhealthy") or value >= 1:
                    view.health = "healthy" if value >= 1 else "unhealthy"
            elif metric == vocab.CONTAINER_RESTART_COUNT:
                view.restarts = int(value)
            elif metric == vocab.CONTAINER_CPU_PERCENT:
                view.cpu = value
            elif metric == vocab.CONTAINER_MEM_USED_BYTES:
                view.mem_bytes = value
            elif metric == vocab.CONTAINER_MEM_PERCENT:
                view.mem_percent = value
            elif metric == vocab.CONTAINER_LOG_ERRORS:
                if view.log_errors is None:
                    view.log_errors = self._ring()
                view.log_errors.add(batch.ts, value)
        for name in touched:
            self._mark("container", batch.host, name)

    def _perf_metrics(self, batch: MetricBatch) -> None:
        for sample in batch.samples:
            short = PERF_METRICS.get(sample.name)
            check = sample.labels.get("check")
            if short is None or check is None:
                continue
            view = self.perf.get(check)
            if view is None:
                if not self._room():
                    continue
                view = self.perf[check] = PerfView(check=check)
            view.ts = max(view.ts, batch.ts)
            view.latest[short] = sample.value
            ring = view.history.get(short)
            if ring is None:
                ring = view.history[short] = self._ring()
            ring.add(batch.ts, sample.value)
            self._mark("perf", check)

    def _health(self, event: HealthEvent) -> None:
        target = event.target
        if target.startswith("_"):  # the agent's own collection, or its supervisor
            part = self.parts.get((event.host, event.agent))
            if part is not None:
                part.problem = "" if event.status == "ok" else event.detail
                self._mark("part", event.host, event.agent)
            return
        if event.agent == vocab.CONTAINER_AGENT and target.startswith("log:"):
            self._log(event, target[len("log:") :])
        elif event.agent == vocab.CONTAINER_AGENT and target != vocab.DOCKER_TARGET:
            self._container_health(event)
        else:
            self._check(event)

    def _container_health(self, event: HealthEvent) -> None:
        view = self._container(event.host, event.target)
        if view is None:
            return
        if event.ts < view.ts and event.event is None:
            return
        view.ts = max(view.ts, event.ts)
        view.status, view.detail = event.status, event.detail
        view.image = event.labels.get("image", view.image)
        detail = event.detail.lower()
        if "unhealthy" in detail:
            view.health = "unhealthy"
        elif "starting" in detail and "health" in detail:
            view.health = "starting"
        elif "healthy" in detail:
            view.health = "healthy"
        if detail.startswith("running"):
            view.running = True
        elif event.event in ("die", "oom", "kill", "stop") or detail.startswith(
            ("exited", "restarting", "dead", "completed", "created", "killed")
        ):
            view.running = False
        self._mark("container", event.host, event.target)

    def _log(self, event: HealthEvent, container: str) -> None:
        lines = event.detail.split("\n")[1:]  # the first line is the counts
        if not lines:
            return
        key = (event.host, container)
        view = self.logs.get(key)
        if view is None:
            if len(self.logs) >= self.limits.max_series:
                self.counters.dropped_series += 1
                return
            view = self.logs[key] = LogView(
                host=event.host, container=container, lines=deque(maxlen=self.limits.log_lines)
            )
        view.ts = max(view.ts, event.ts)
        view.lines.extend((event.ts, line) for line in lines if line)
        self._mark("log", event.host, container)

    def _check(self, event: HealthEvent) -> None:
        key = (event.host, event.agent, event.target)
        view = self.checks.get(key)
        if view is None:
            if not self._room():
                return
            view = self.checks[key] = CheckView(
                host=event.host, agent=event.agent, target=event.target, sla=self.sla.get(event.target)
            )
        if event.ts < view.ts:
            return
        day = dt.datetime.fromtimestamp(event.ts, self.zone).date().isoformat()
        if day != view.day:  # "so far today": a new day starts afresh
            view.day, view.up_seconds, view.seen_seconds = day, 0.0, 0.0
        elif view.ts:
            elapsed = min(event.ts - view.ts, AVAILABILITY_GAP)
            view.seen_seconds += elapsed
            if view.status in UP:
                view.up_seconds += elapsed
        view.ts, view.status, view.latency, view.detail = event.ts, event.status, event.latency, event.detail
        self._mark("check", *key)

    def _heartbeat(self, beat: Heartbeat) -> None:
        key = (beat.host, beat.agent)
        part = self.parts.get(key)
        if part is None:
            if len(self.parts) >= self.limits.max_series:
                self.counters.dropped_series += 1
                return
            part = self.parts[key] = PartView(beat.host, beat.agent, beat.ts, beat.interval, {})
        if beat.ts < part.ts:
            return
        part.ts, part.interval, part.counters = beat.ts, beat.interval, dict(beat.counters)
        self._mark("part", *key)

    def _alert(self, alert: Alert) -> None:
        if alert.status in ("firing", "pending"):
            self.live_alerts[alert.fingerprint] = alert
        else:
            self.live_alerts.pop(alert.fingerprint, None)
        if alert.status != "inactive":
            self.history.appendleft(alert)
        self._mark("alerts", "")

    def set_active(self, active: ActiveAlerts) -> None:
        """The evaluator's own list (with silenced, inhibited and acked) from KV."""
        if self.active is not None and active.ts <= self.active.ts:
            return
        self.active = active
        self._mark("alerts", "")

    def set_silences(self, silences: Sequence[Silence]) -> None:
        self.silences = sorted(silences, key=lambda s: (-s.ends_at, s.id))
        self._mark("alerts", "")

    # -- what the pages read ------------------------------------------------------------------

    def alerts(self) -> list[AlertRow]:
        """Active alerts, firing before pending, worst first: the evaluator's list, brought up to date
        by the alert events that came after it."""
        rows: dict[str, AlertRow] = {}
        since = self.active.ts if self.active is not None else 0.0
        if self.active is not None:
            rows = {a.fingerprint: _from_active(a) for a in self.active.alerts}
        for fingerprint, alert in self.live_alerts.items():
            changed_at = alert.starts_at if alert.status in ("firing", "pending") else alert.ends_at or 0.0
            if fingerprint not in rows and changed_at >= since:
                rows[fingerprint] = _from_event(alert)
            elif fingerprint in rows and rows[fingerprint].state != alert.status and changed_at >= since:
                rows[fingerprint] = replace(rows[fingerprint], state=alert.status)
        for alert in self.history:  # resolved after the evaluator's list was written
            end = alert.ends_at or 0.0
            if alert.status == "resolved" and end >= since and alert.fingerprint not in self.live_alerts:
                rows.pop(alert.fingerprint, None)
        order = {"critical": 0, "warning": 1, "info": 2}
        return sorted(
            rows.values(),
            key=lambda a: (a.state != "firing", a.muted, order.get(a.severity, 3), -a.since, a.rule),
        )

    def alerts_on(self, rows: Sequence[AlertRow], host: str, container: str | None = None) -> list[AlertRow]:
        """The alerts about one host (or one of its containers)."""
        out = []
        for alert in rows:
            if alert.labels.get("host") != host:
                continue
            if container is not None and container not in (
                alert.labels.get("container"),
                alert.labels.get("target"),
            ):
                continue
            out.append(alert)
        return out

    def host_status(self, view: HostView, now: float, rows: Sequence[AlertRow]) -> str:
        if now - view.ts > STALE_INTERVALS * view.interval:
            return "unknown"
        unmuted = [a for a in rows if a.state == "firing" and not a.muted]
        return worst(SEVERITY_STATUS.get(a.severity, "unknown") for a in unmuted)

    def container_status(self, view: ContainerView, now: float) -> str:
        if now - view.ts > STALE_INTERVALS * view.interval:
            return "unknown"
        if view.health == "unhealthy":
            return "critical"
        if view.status == "unknown" and view.running is not None:  # metrics came before a check
            return "ok" if view.running and view.health != "starting" else "warning"
        return view.status

    def sorted_hosts(self, now: float, rows: Sequence[AlertRow]) -> list[tuple[HostView, str]]:
        out = [(v, self.host_status(v, now, self.alerts_on(rows, v.host))) for v in self.hosts.values()]
        return sorted(out, key=lambda item: (RANK.get(item[1], 2), item[0].host))

    def sorted_containers(self, now: float) -> list[tuple[ContainerView, str]]:
        out = [(v, self.container_status(v, now)) for v in self.containers.values()]
        return sorted(out, key=lambda item: (RANK.get(item[1], 2), item[0].host, item[0].name))

    def sorted_checks(self) -> list[CheckView]:
        return sorted(
            self.checks.values(),
            key=lambda c: (RANK.get(c.status, 2), c.meets_sla is not False, c.target, c.host),
        )

    def sorted_parts(self, now: float) -> list[PartView]:
        order = {"silent": 0, "late": 1, "ok": 2}
        return sorted(
            self.parts.values(),
            key=lambda p: (order[p.state(now)], p.problem == "", p.host, p.agent),
        )

    def failing_checks(self) -> list[CheckView]:
        return [c for c in self.sorted_checks() if c.status != "ok"]

    def log_views(self) -> list[LogView]:
        return sorted(self.logs.values(), key=lambda v: -v.ts)

    def summary(self, now: float) -> dict[str, int]:
        """The counts a person reads first."""
        rows = self.alerts()
        containers = [self.container_status(v, now) for v in self.containers.values()]
        loud = [a for a in rows if a.state == "firing" and not a.muted]
        return {
            "critical": sum(1 for a in loud if a.severity == "critical"),
            "warning": sum(1 for a in loud if a.severity == "warning"),
            "pending": sum(1 for a in rows if a.state == "pending"),
            "muted": sum(1 for a in rows if a.muted),
            "checks_down": sum(1 for c in self.checks.values() if c.status == "critical"),
            "checks": len(self.checks),
            "containers_bad": sum(1 for s in containers if s in ("critical", "warning")),
            "containers": len(containers),
            "hosts": len(self.hosts),
            "parts_silent": sum(1 for p in self.parts.values() if p.state(now) == "silent"),
        }

    def prune(self, now: float) -> int:
        """Forget what has not been heard of for the whole history window; how many rows went.
        A part gone silent stays shown as silent as long as the evaluator reports it down."""
        cutoff = now - self.limits.history
        tables: list[tuple[str, dict[Any, Any], float]] = [
            ("host", self.hosts, cutoff),
            ("container", self.containers, cutoff),
            ("check", self.checks, cutoff),
            ("perf", self.perf, cutoff),
            ("log", self.logs, cutoff),
            ("part", self.parts, now - max(self.limits.history, PARTS_KEPT)),
        ]
        gone = 0
        for name, table, before in tables:
            for key in _drop_older(table, before):  # marked: open pages drop the row too
                self._mark(name, *((key,) if isinstance(key, str) else key))
                gone += 1
        return gone


K = TypeVar("K")
# the evaluator's default forget_agents_after: its agent_down fires that long for a silent part
PARTS_KEPT = 7 * 86400.0


def _drop_older(table: dict[K, Any], cutoff: float) -> list[K]:
    stale = [key for key, view in table.items() if view.ts < cutoff]
    for key in stale:
        del table[key]
    return stale


def iter_series(rings: dict[str, Ring], start: float) -> Iterator[tuple[str, list[tuple[float, float]]]]:
    for name, ring in rings.items():
        yield name, ring.since(start)


def zone_of(name: str) -> dt.tzinfo:
    """A tzinfo for an IANA name, UTC for a name that is not one."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return dt.UTC
