"""The report's data: pure functions from stored rollups to the figures every output shows.

`load_inputs` is the only part that reads the store; `build_report` is pure, so each figure is
tested against a known answer with no I/O.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import msgspec

from bus import vocabulary as vocab
from sinks.report import database
from sinks.report.config import ReportSinkConfig, ServiceSLA
from sinks.report.rollups import HOUR, HealthHour, Incident, MetricHour, RollupStore
from sinks.report.sketch import RELATIVE_ERROR, Sketch, decode_sketch

REPORT_VERSION = 1
# What the report reads, by the names the agents publish under.
HOST_METRICS = (vocab.CPU_PERCENT, vocab.MEM_PERCENT, vocab.DISK_PERCENT)
HTTP_METRICS = (
    vocab.HTTP_REQUEST_RATE,
    vocab.HTTP_ERROR_RATIO,
    vocab.HTTP_LATENCY_P50,
    vocab.HTTP_LATENCY_P95,
    vocab.HTTP_LATENCY,
)
CONTAINER_METRICS = (vocab.CONTAINER_CPU_PERCENT, vocab.CONTAINER_MEM_PERCENT)
METRICS_READ = (*HOST_METRICS, *HTTP_METRICS, *CONTAINER_METRICS, *database.METRICS_READ)

LEVEL_ORDER: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}
# How many names a reason lists; the sections below it list them all.
MAX_SUBJECTS = 5
# What each kind of recommendation says about the status, in the executive summary.
ADVICE_REASONS = {
    "sla": "SLA breached",
    "disk": "disk filling up",
    "memory": "sustained memory pressure",
    "restarts": "frequent restarts",
    "performance": "latency or errors outside the acceptable range",
}

PeriodKind = Literal["day", "week"]
Level = Literal["critical", "warning", "info"]
Status = Literal["healthy", "degraded", "critical", "no data"]
Standing = Literal["ok", "above baseline", "out of range", "no data"]


class _Out(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Period(_Out, frozen=True, kw_only=True):
    kind: PeriodKind
    label: str  # file stem: 2026-11-25, 2026-11-25-week
    first_day: str
    last_day: str
    start: float
    end: float
    timezone: str

    @property
    def days(self) -> float:
        return (self.end - self.start) / 86400


class Stat(_Out, frozen=True, kw_only=True):
    avg: float
    p95: float
    max: float


class DiskHealth(_Out, frozen=True, kw_only=True):
    mount: str
    usage: Stat
    last: float
    growth_per_day: float | None  # percentage points per day over the trend window
    days_to_full: float | None


class HostHealth(_Out, frozen=True, kw_only=True):
    host: str
    cpu: Stat | None
    memory: Stat | None
    memory_hours_over: int  # hours whose average memory use exceeded advice.memory_percent
    disks: list[DiskHealth]


class ContainerHealth(_Out, frozen=True, kw_only=True):
    host: str
    container: str
    unhealthy_minutes: float
    restarts: int
    availability_percent: float | None
    cpu: Stat | None
    memory: Stat | None


class ServicePerformance(_Out, frozen=True, kw_only=True):
    check: str
    request_rate: float | None  # requests per second, average
    error_rate_percent: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency: Standing
    errors: Standing


class SLAResult(_Out, frozen=True, kw_only=True):
    service: str
    checks: list[str]
    availability_target: float
    availability_percent: float | None
    checks_total: int
    checks_failed: int
    latency_target_ms: float
    latency_p95_ms: float | None
    availability_met: bool | None
    latency_met: bool | None
    compliant: bool | None  # None: no data for this service


class RuleCount(_Out, frozen=True, kw_only=True):
    rule: str
    incidents: int


class AlertSummary(_Out, frozen=True, kw_only=True):
    incidents: int
    by_severity: dict[str, int]
    resolved: int
    open: int
    resolve_seconds_mean: float | None
    resolve_seconds_median: float | None
    resolve_seconds_max: float | None
    noisiest: list[RuleCount]


class Recommendation(_Out, frozen=True, kw_only=True):
    level: Level
    kind: str
    subject: str  # the outside names it is about: a renderer escapes them as names
    text: str  # our own words and figures only, so a renderer may keep its markup


class Series(_Out, frozen=True, kw_only=True):
    name: str
    points: list[tuple[float, float]]  # (hour start, hourly average)


class Chart(_Out, frozen=True, kw_only=True):
    title: str
    unit: str
    series: list[Series]


class Growth(_Out, frozen=True, kw_only=True):
    host: str
    metric: str
    subject: str  # the mount for disks, "" otherwise
    first_day_avg: float
    last_day_avg: float
    per_day: float
    projected_30d: float
    projected_90d: float
    days_to_full: float | None


class Reason(_Out, frozen=True, kw_only=True):
    """One thing that made the status what it is: our words, then the names it concerns."""

    level: Level
    text: str  # our own words and figures only
    subjects: list[str]  # rules, checks, services, hosts: outside names


class Summary(_Out, frozen=True, kw_only=True):
    status: Status
    reasons: list[Reason]  # why the status is what it is, the gravest first
    availability_percent: float | None
    incidents: int
    critical_incidents: int
    sla_breaches: int
    hosts: int
    containers: int


class Report(_Out, frozen=True, kw_only=True):
    v: int = REPORT_VERSION
    generated_at: float
    # the streams the sink had not read up to the report's run when it wrote it (a backlog past
    # sinks.report's wait): the report is written again at its next start or daily run
    unread: list[str] = msgspec.field(default_factory=list)
    period: Period
    percentile_relative_error: float = RELATIVE_ERROR
    summary: Summary
    hosts: list[HostHealth]
    containers: list[ContainerHealth]
    performance: list[ServicePerformance]
    sla: list[SLAResult]
    alerts: AlertSummary
    recommendations: list[Recommendation]
    charts: list[Chart]
    growth: list[Growth]  # weekly reports only
    databases: list[database.DatabaseHealth] = msgspec.field(default_factory=list)
    database_charts: list[Chart] = msgspec.field(default_factory=list)  # connection use per server
    slow_queries: list[database.SlowQuery] = msgspec.field(default_factory=list)  # by mean time
    busiest_queries: list[database.SlowQuery] = msgspec.field(default_factory=list)  # by total time


@dataclass(frozen=True)
class Inputs:
    """What the store holds for one report: the period's rows and the trend window's."""

    metrics: list[MetricHour]  # host, container, http and database metrics of the period
    trend: list[MetricHour]  # host metrics of the trend window ending with the period
    health: list[HealthHour]
    incidents: list[Incident]


# -- periods ---------------------------------------------------------------------------------


def _midnight(day: dt.date, zone: dt.tzinfo) -> float:
    return dt.datetime.combine(day, dt.time(), tzinfo=zone).timestamp()


def make_period(kind: PeriodKind, last_day: dt.date, zone_name: str, zone: dt.tzinfo) -> Period:
    """The day `last_day`, or the 7 days ending with it, from local midnight to local midnight."""
    first_day = last_day - dt.timedelta(days=6 if kind == "week" else 0)
    label = last_day.isoformat() + ("-week" if kind == "week" else "")
    return Period(
        kind=kind,
        label=label,
        first_day=first_day.isoformat(),
        last_day=last_day.isoformat(),
        start=_midnight(first_day, zone),
        end=_midnight(last_day + dt.timedelta(days=1), zone),
        timezone=zone_name,
    )


def load_inputs(store: RollupStore, period: Period, config: ReportSinkConfig) -> Inputs:
    """Read what `build_report` needs for `period`."""
    trend_start = min(period.start, period.end - config.advice.trend_window.seconds)
    trend = store.metric_hours(trend_start, period.end, HOST_METRICS)
    metrics = [row for row in trend if row.hour >= period.start]
    metrics += store.metric_hours(period.start, period.end, HTTP_METRICS, (vocab.CONTAINER_PREFIX,))
    metrics += store.metric_hours(period.start, period.end, (), (vocab.POSTGRES_PREFIX,))
    return Inputs(
        metrics=metrics,
        trend=trend,
        health=store.health_hours(period.start, period.end),
        incidents=store.incidents(period.start, period.end),
    )


# -- statistics ------------------------------------------------------------------------------


def stat_of(rows: Sequence[MetricHour]) -> Stat | None:
    """Average, p95 and max over many hourly rollups (p95 merged from their sketches)."""
    p95 = quantile_of(rows, 0.95)
    if p95 is None:
        return None
    average = sum(r.total for r in rows) / sum(r.count for r in rows)
    return Stat(avg=average, p95=p95, max=max(r.high for r in rows))


def quantile_of(rows: Sequence[MetricHour], q: float) -> float | None:
    """The q-quantile of every value the rollups saw, kept within their min and max."""
    if not rows:
        return None
    sketch = Sketch()
    for row in rows:
        sketch.merge(decode_sketch(row.sketch))
    value = sketch.quantile(q)
    assert value is not None
    return min(max(value, min(r.low for r in rows)), max(r.high for r in rows))


def mean_of(rows: Iterable[MetricHour]) -> float | None:
    rows = list(rows)
    count = sum(r.count for r in rows)
    return sum(r.total for r in rows) / count if count else None


def hourly(rows: Iterable[MetricHour]) -> list[tuple[float, float]]:
    """(hour, average) points, series of the same hour (several devices of a mount) merged."""
    totals: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        totals[row.hour][0] += row.total
        totals[row.hour][1] += row.count
    return [(float(hour), total / count) for hour, (total, count) in sorted(totals.items())]


def slope_per_day(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per day; None for fewer than 3 points."""
    if len(points) < 3:
        return None
    xs = [t for t, _ in points]
    if max(xs) - min(xs) < 2 * HOUR:
        return None
    slope, _ = statistics.linear_regression(xs, [v for _, v in points])
    return slope * 86400


def days_to_full(last: float, per_day: float | None) -> float | None:
    if per_day is None or per_day <= 0:
        return None
    return max(0.0, (100.0 - last) / per_day)


K = TypeVar("K", str, tuple[str, ...])


def _group(rows: Iterable[MetricHour], key: Callable[[MetricHour], K]) -> dict[K, list[MetricHour]]:
    groups: dict[K, list[MetricHour]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return dict(sorted(groups.items()))


def _check_of(row: MetricHour, label_keys: Sequence[str]) -> str:
    for key in label_keys:
        if row.labels.get(key):
            return row.labels[key]
    return row.host


# -- sections --------------------------------------------------------------------------------


def host_health(inputs: Inputs, config: ReportSinkConfig) -> list[HostHealth]:
    by_host: dict[str, dict[str, list[MetricHour]]] = defaultdict(lambda: defaultdict(list))
    for row in inputs.metrics:
        if row.metric in HOST_METRICS:
            by_host[row.host][row.metric].append(row)
    trend_disks = _group(
        (r for r in inputs.trend if r.metric == vocab.DISK_PERCENT),
        lambda r: (r.host, r.labels.get("mount", "")),
    )
    hosts = []
    for host, metrics in sorted(by_host.items()):
        memory_hours = hourly(metrics[vocab.MEM_PERCENT])
        disks = []
        for mount, rows in _group(metrics[vocab.DISK_PERCENT], lambda r: r.labels.get("mount", "")).items():
            usage = stat_of(rows)
            assert usage is not None
            points = hourly(trend_disks.get((host, mount), rows))
            growth = slope_per_day(points)
            last = points[-1][1]
            disks.append(
                DiskHealth(
                    mount=mount,
                    usage=usage,
                    last=last,
                    growth_per_day=growth,
                    days_to_full=days_to_full(last, growth),
                )
            )
        hosts.append(
            HostHealth(
                host=host,
                cpu=stat_of(metrics[vocab.CPU_PERCENT]),
                memory=stat_of(metrics[vocab.MEM_PERCENT]),
                memory_hours_over=sum(1 for _, v in memory_hours if v > config.advice.memory_percent),
                disks=disks,
            )
        )
    return hosts


def _availability(up: int, down: int) -> float | None:
    return 100.0 * up / (up + down) if up + down else None


def is_container(target: str) -> bool:
    """Not the engine, a log ("log:<name>") nor an agent's own target; Docker names never hold ":"."""
    return target != vocab.DOCKER_TARGET and ":" not in target and not target.startswith("_")


def container_health(inputs: Inputs) -> list[ContainerHealth]:
    checks: dict[tuple[str, str], list[HealthHour]] = defaultdict(list)
    for h in inputs.health:
        if h.agent == vocab.CONTAINER_AGENT and is_container(h.target):
            checks[(h.host, h.target)].append(h)
    metrics: dict[tuple[str, str], list[MetricHour]] = defaultdict(list)
    for row in inputs.metrics:
        if row.metric.startswith(vocab.CONTAINER_PREFIX) and "container" in row.labels:
            metrics[(row.host, row.labels["container"])].append(row)
    result = []
    for host, name in sorted(set(checks) | set(metrics)):
        hours = checks.get((host, name), [])
        rows = metrics.get((host, name), [])
        result.append(
            ContainerHealth(
                host=host,
                container=name,
                unhealthy_minutes=sum(h.unhealthy_seconds for h in hours) / 60,
                restarts=sum(h.restarts for h in hours),
                availability_percent=_availability(sum(h.up for h in hours), sum(h.down for h in hours)),
                cpu=stat_of([r for r in rows if r.metric == vocab.CONTAINER_CPU_PERCENT]),
                memory=stat_of([r for r in rows if r.metric == vocab.CONTAINER_MEM_PERCENT]),
            )
        )
    return result


def _standing(value: float | None, baseline: float, acceptable: float) -> Standing:
    if value is None:
        return "no data"
    if value <= baseline:
        return "ok"
    return "above baseline" if value <= acceptable else "out of range"


def _either(reported: float | None, measured: Sequence[MetricHour], q: float) -> float | None:
    """The service's own figure when it reports one, else the quantile of what the probe measured."""
    return quantile_of(measured, q) if reported is None else reported


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def performance(inputs: Inputs, config: ReportSinkConfig) -> list[ServicePerformance]:
    """Per check: the service's own figures (scraped) where present, else what the probe measured."""
    rows = (r for r in inputs.metrics if r.metric in HTTP_METRICS)
    base = config.baselines
    result = []
    for check, group in _group(rows, lambda r: _check_of(r, config.check_labels)).items():
        by_metric = _group(group, lambda r: r.metric)
        measured = by_metric.get(vocab.HTTP_LATENCY, [])
        p50 = _either(mean_of(by_metric.get(vocab.HTTP_LATENCY_P50, [])), measured, 0.5)
        p95 = _either(mean_of(by_metric.get(vocab.HTTP_LATENCY_P95, [])), measured, 0.95)
        ratio = mean_of(by_metric.get(vocab.HTTP_ERROR_RATIO, []))
        errors = None if ratio is None else ratio * 100
        result.append(
            ServicePerformance(
                check=check,
                request_rate=mean_of(by_metric.get(vocab.HTTP_REQUEST_RATE, [])),
                error_rate_percent=errors,
                latency_p50_ms=_ms(p50),
                latency_p95_ms=_ms(p95),
                latency=_standing(p95, base.latency_p95.seconds, base.latency_p95_acceptable.seconds),
                errors=_standing(errors, base.error_rate_percent, base.error_rate_acceptable_percent),
            )
        )
    return result


def sla_result(service: ServiceSLA, health: Sequence[HealthHour]) -> SLAResult:
    # the probe's checks, and the database agent's logins (its health target is the server's name)
    agents = (vocab.PROBE_AGENT, vocab.POSTGRES_AGENT)
    hours = [h for h in health if h.agent in agents and h.target in service.checks]
    up, down = sum(h.up for h in hours), sum(h.down for h in hours)
    latency = Sketch()
    for h in hours:
        latency.merge(decode_sketch(h.latency))
    availability = _availability(up, down)
    p95 = latency.quantile(0.95)
    availability_met = None if availability is None else availability >= service.availability_percent
    latency_met = None if p95 is None else p95 <= service.latency_p95.seconds
    verdicts = [v for v in (availability_met, latency_met) if v is not None]
    return SLAResult(
        service=service.name,
        checks=list(service.checks),
        availability_target=service.availability_percent,
        availability_percent=availability,
        checks_total=up + down,
        checks_failed=down,
        latency_target_ms=service.latency_p95.seconds * 1000,
        latency_p95_ms=_ms(p95),
        availability_met=availability_met,
        latency_met=latency_met,
        compliant=all(verdicts) if verdicts else None,
    )


def alert_summary(incidents: Sequence[Incident]) -> AlertSummary:
    by_rule: dict[str, int] = defaultdict(int)
    by_severity = {"critical": 0, "warning": 0, "info": 0}
    for incident in incidents:
        by_rule[incident.rule] += 1
        by_severity[incident.severity] = by_severity.get(incident.severity, 0) + 1
    durations = [i.ends_at - i.starts_at for i in incidents if i.ends_at is not None]
    noisiest = sorted(by_rule.items(), key=lambda item: (-item[1], item[0]))[:5]
    return AlertSummary(
        incidents=len(incidents),
        by_severity=by_severity,
        resolved=len(durations),
        open=len(incidents) - len(durations),
        resolve_seconds_mean=statistics.fmean(durations) if durations else None,
        resolve_seconds_median=statistics.median(durations) if durations else None,
        resolve_seconds_max=max(durations) if durations else None,
        noisiest=[RuleCount(rule=rule, incidents=count) for rule, count in noisiest],
    )


def recommendations(
    hosts: Sequence[HostHealth],
    containers: Sequence[ContainerHealth],
    services: Sequence[ServicePerformance],
    sla: Sequence[SLAResult],
    alerts: AlertSummary,
    config: ReportSinkConfig,
    days: float,
) -> list[Recommendation]:
    advice = config.advice
    found: list[Recommendation] = []
    for result in sla:
        if result.compliant is False:
            missed = []
            if result.availability_met is False:
                missed.append(
                    f"availability {result.availability_percent:.3f}% < {result.availability_target}%"
                )
            if result.latency_met is False:
                missed.append(
                    f"p95 latency {result.latency_p95_ms:.0f} ms > {result.latency_target_ms:.0f} ms"
                )
            text = f"SLA breached: {'; '.join(missed)}. Find the cause before the next period."
            found.append(Recommendation(level="critical", kind="sla", subject=result.service, text=text))
    for host in hosts:
        for disk in host.disks:
            if disk.days_to_full is not None and disk.days_to_full < advice.disk_full_days:
                level: Level = "critical" if disk.days_to_full < 7 else "warning"
                text = (
                    f"{disk.last:.1f}% full and growing "
                    f"{disk.growth_per_day:.2f} points a day: full in about {disk.days_to_full:.0f} days. "
                    "Free space or grow the volume."
                )
                found.append(
                    Recommendation(level=level, kind="disk", subject=f"{host.host} {disk.mount}", text=text)
                )
        if host.memory_hours_over >= advice.memory_hours * days:
            text = (
                f"Memory above {advice.memory_percent:.0f}% for {host.memory_hours_over} hours: sustained "
                "pressure. Check for leaks, add memory or move services."
            )
            found.append(Recommendation(level="warning", kind="memory", subject=host.host, text=text))
    for container in containers:
        if container.restarts >= advice.restarts_per_day * days:
            text = f"Restarted {container.restarts} times: look at its logs and exit codes."
            subject = f"{container.host} {container.container}"
            found.append(Recommendation(level="warning", kind="restarts", subject=subject, text=text))
    for service in services:
        out = []
        if service.latency == "out of range":
            out.append(f"p95 latency {service.latency_p95_ms:.0f} ms")
        if service.errors == "out of range":
            out.append(f"error rate {service.error_rate_percent:.2f}%")
        if out:
            text = f"Outside the acceptable range: {', '.join(out)}."
            subject = service.check
            found.append(Recommendation(level="warning", kind="performance", subject=subject, text=text))
    for rule in alerts.noisiest:
        if rule.incidents >= advice.noisy_rule_per_day * days:
            text = f"Fired {rule.incidents} times: tune its threshold, `for` duration or grouping."
            found.append(Recommendation(level="info", kind="noisy-rule", subject=rule.rule, text=text))
    return sorted(found, key=lambda r: LEVEL_ORDER[r.level])


def charts(inputs: Inputs) -> list[Chart]:
    """Per host: hourly CPU, memory and disk use over the period."""
    rows = [r for r in inputs.metrics if r.metric in HOST_METRICS]
    result = []
    for host, group in _group(rows, lambda r: r.host).items():
        series = [
            Series(name=name, points=hourly(r for r in group if r.metric == metric))
            for name, metric in (("cpu", vocab.CPU_PERCENT), ("memory", vocab.MEM_PERCENT))
        ]
        for mount, disk in _group(
            (r for r in group if r.metric == vocab.DISK_PERCENT), lambda r: r.labels.get("mount", "")
        ).items():
            series.append(Series(name=f"disk {mount}", points=hourly(disk)))
        result.append(Chart(title=host, unit="%", series=[s for s in series if s.points]))
    return result


def growth(inputs: Inputs, period: Period) -> list[Growth]:
    """Weekly capacity planning: first and last day, daily growth and where it leads."""
    rows = [r for r in inputs.metrics if r.metric in HOST_METRICS]
    result = []
    for (host, metric, subject), group in _group(
        rows, lambda r: (r.host, r.metric, r.labels.get("mount", ""))
    ).items():
        points = hourly(group)
        first = [v for t, v in points if t < period.start + 86400]
        last = [v for t, v in points if t >= period.end - 86400]
        per_day = slope_per_day(points)
        if not first or not last or per_day is None:
            continue
        current = points[-1][1]
        result.append(
            Growth(
                host=host,
                metric=metric,
                subject=subject,
                first_day_avg=statistics.fmean(first),
                last_day_avg=statistics.fmean(last),
                per_day=per_day,
                projected_30d=min(100.0, max(0.0, current + 30 * per_day)),
                projected_90d=min(100.0, max(0.0, current + 90 * per_day)),
                days_to_full=days_to_full(current, per_day) if metric == vocab.DISK_PERCENT else None,
            )
        )
    return result


def _availability_hours(health: Sequence[HealthHour]) -> list[HealthHour]:
    """Probe checks when there are any (what users see), else every periodic check."""
    probes = [h for h in health if h.agent == vocab.PROBE_AGENT]
    return probes or [h for h in health if not h.target.startswith("_")]


def overall_availability(health: Sequence[HealthHour]) -> float | None:
    hours = _availability_hours(health)
    return _availability(sum(h.up for h in hours), sum(h.down for h in hours))


def failed_checks(health: Sequence[HealthHour]) -> list[str]:
    """The checks the availability counts that failed, most failures first."""
    down: dict[str, int] = defaultdict(int)
    for h in _availability_hours(health):
        if h.down:
            down[h.target if h.agent == vocab.PROBE_AGENT else f"{h.host} {h.target}"] += h.down
    return [name for name, _ in sorted(down.items(), key=lambda item: (-item[1], item[0]))]


def _names(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))[:MAX_SUBJECTS]


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _problems(
    inputs: Inputs, advice: Sequence[Recommendation], availability: float | None, config: ReportSinkConfig
) -> list[Reason]:
    """Everything that makes the period critical or degraded, each with the names to look at."""
    found = []
    critical = [i for i in inputs.incidents if i.severity == "critical"]
    if critical:
        text = _plural(len(critical), "critical incident")
        found.append(Reason(level="critical", text=text, subjects=_names(i.rule for i in critical)))
    # availability under every SLA target is an outage, whatever else the period looked like
    lowest_target = min((s.availability_percent for s in config.services), default=99.0)
    if availability is not None and availability < lowest_target:
        text = f"availability {availability:.3f}% under the lowest SLA target of {lowest_target}%; failed"
        found.append(Reason(level="critical", text=text, subjects=_names(failed_checks(inputs.health))))
    levels: tuple[Level, ...] = ("critical", "warning")
    for level in levels:
        by_kind: dict[str, list[str]] = defaultdict(list)
        for r in advice:
            if r.level == level and r.kind in ADVICE_REASONS:
                by_kind[r.kind].append(r.subject)
        found += [
            Reason(level=level, text=ADVICE_REASONS[kind], subjects=_names(subjects))
            for kind, subjects in by_kind.items()
        ]
    still_open = [i for i in inputs.incidents if i.ends_at is None]
    if still_open:
        text = f"{_plural(len(still_open), 'incident')} still open"
        found.append(Reason(level="warning", text=text, subjects=_names(i.rule for i in still_open)))
    return sorted(found, key=lambda r: LEVEL_ORDER[r.level])


def overall_status(
    inputs: Inputs, advice: Sequence[Recommendation], availability: float | None, config: ReportSinkConfig
) -> tuple[Status, list[Reason]]:
    """The period's status and why; critical only with a critical incident or check to name."""
    if not (inputs.metrics or inputs.health or inputs.incidents):
        nothing = "nothing recorded in this period: no metrics, no checks, no alerts"
        return "no data", [Reason(level="info", text=nothing, subjects=[])]
    reasons = _problems(inputs, advice, availability, config)
    levels = {r.level for r in reasons}
    status: Status = "critical" if "critical" in levels else "degraded" if "warning" in levels else "healthy"
    if not reasons:
        text = "no critical incident, no SLA breach, no warning, nothing left open"
        reasons.append(Reason(level="info", text=text, subjects=[]))
    missing = []
    if availability is None:
        missing.append("no checks in this period: availability unknown")
    if not any(row.metric in HOST_METRICS for row in inputs.metrics):
        missing.append("no host metrics in this period")
    reasons += [Reason(level="info", text=text, subjects=[]) for text in missing]
    return status, reasons


def database_charts(inputs: Inputs) -> list[Chart]:
    """Per PostgreSQL server: hourly connection use, as a share of max_connections."""
    rows = [r for r in inputs.metrics if r.metric == vocab.POSTGRES_CONNECTIONS_PERCENT]
    return [
        Chart(
            title=f"{server} connections ({host})",
            unit="%",
            series=[Series(name="connections", points=hourly(group))],
        )
        for (host, server), group in _group(rows, lambda r: (r.host, r.labels.get("server", ""))).items()
    ]


def build_report(
    inputs: Inputs, config: ReportSinkConfig, period: Period, generated_at: float, unread: Sequence[str] = ()
) -> Report:
    """Every section of the report from the stored rollups."""
    hosts = host_health(inputs, config)
    containers = container_health(inputs)
    services = performance(inputs, config)
    sla = [sla_result(service, inputs.health) for service in config.services]
    alerts = alert_summary(inputs.incidents)
    advice = recommendations(hosts, containers, services, sla, alerts, config, period.days)
    availability = overall_availability(inputs.health)
    status, reasons = overall_status(inputs, advice, availability, config)
    found = database.statements(inputs.metrics)
    summary = Summary(
        status=status,
        reasons=reasons,
        availability_percent=availability,
        incidents=alerts.incidents,
        critical_incidents=alerts.by_severity.get("critical", 0),
        sla_breaches=sum(1 for s in sla if s.compliant is False),
        hosts=len(hosts),
        containers=len(containers),
    )
    return Report(
        generated_at=generated_at,
        unread=list(unread),
        period=period,
        summary=summary,
        hosts=hosts,
        containers=containers,
        performance=services,
        sla=sla,
        alerts=alerts,
        recommendations=advice,
        charts=charts(inputs),
        growth=growth(inputs, period) if period.kind == "week" else [],
        databases=database.database_health(inputs.metrics, inputs.health),
        database_charts=database_charts(inputs),
        slow_queries=database.slow_queries(found),
        busiest_queries=database.busiest_queries(found),
    )
