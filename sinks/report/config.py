"""The report sink's config table: schedule, retention, baselines, SLA targets and advice thresholds."""

from __future__ import annotations

import re
import zoneinfo
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from bus.units import Duration

Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
WEEKDAYS: tuple[Weekday, ...] = (
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
)


class ServiceSLA(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One service's SLA: which probe checks make it up, and the targets it is held to."""

    name: Annotated[str, Meta(description="service name shown in the report", examples=["backend"])]
    checks: Annotated[
        list[str],
        Meta(
            description="probe check names (health targets of the probe agent) that make up this service",
            examples=[["backend-health", "backend-api"]],
        ),
    ]
    availability_percent: Annotated[
        float, Meta(description="availability target", ge=0, le=100, examples=[99.9])
    ]
    latency_p95: Annotated[
        Duration, Meta(description="95th percentile check latency target", examples=["200ms"])
    ]

    def __post_init__(self) -> None:
        if not self.checks:
            raise ValueError(f"service {self.name!r} names no checks")


DEFAULT_SERVICES = (
    ServiceSLA(name="backend", checks=["backend"], availability_percent=99.9, latency_p95=Duration(0.2)),
    ServiceSLA(name="frontend", checks=["frontend"], availability_percent=99.9, latency_p95=Duration(0.5)),
    ServiceSLA(name="ollama", checks=["ollama"], availability_percent=99.5, latency_p95=Duration(3.0)),
    ServiceSLA(
        name="database",
        checks=["database", "postgres", "postgresql"],
        availability_percent=99.95,
        latency_p95=Duration(0.05),
    ),
)


class Baselines(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The runbook's performance baselines and acceptable ranges, per service."""

    latency_p95: Annotated[Duration, Meta(description="expected p95 latency")] = Duration(0.5)
    latency_p95_acceptable: Annotated[
        Duration, Meta(description="p95 latency above this is out of the acceptable range")
    ] = Duration(2.0)
    error_rate_percent: Annotated[float, Meta(description="expected error rate", ge=0, le=100)] = 1.0
    error_rate_acceptable_percent: Annotated[
        float, Meta(description="an error rate above this is out of the acceptable range", ge=0, le=100)
    ] = 5.0


class Advice(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """When the data earns a recommendation."""

    disk_full_days: Annotated[
        float, Meta(description="recommend action when a disk is projected full within this many days", gt=0)
    ] = 30.0
    trend_window: Annotated[
        Duration, Meta(description="history fitted for disk and growth trends (linear)")
    ] = Duration(7 * 86400)
    memory_percent: Annotated[
        float, Meta(description="memory use above this, hour after hour, is pressure", gt=0, le=100)
    ] = 85.0
    memory_hours: Annotated[
        int, Meta(description="hours above memory_percent within a day that count as sustained", ge=1)
    ] = 3
    noisy_rule_per_day: Annotated[
        float, Meta(description="a rule firing this often per day is worth tuning", gt=0)
    ] = 10.0
    restarts_per_day: Annotated[
        float, Meta(description="a container restarting this often per day needs a look", gt=0)
    ] = 3.0


class ReportSinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: Annotated[bool, Meta(description="run the report sink in `up`")] = True
    out_dir: Annotated[
        str | None,
        Meta(
            description="where reports/post-golive/ is written; unset: the data dir",
            examples=["/srv/reports"],
        ),
    ] = None
    daily_at: Annotated[
        str, Meta(description="local time (HH:MM) the report of the day that just ended is written")
    ] = "00:05"
    timezone: Annotated[
        str, Meta(description="IANA time zone of days, weeks and daily_at", examples=["Europe/Berlin"])
    ] = "UTC"
    weekly_on: Annotated[
        Weekday | Literal["never"],
        Meta(description='day whose daily run also writes the report of the 7 days before, or "never"'),
    ] = "monday"
    report_retention: Annotated[Duration, Meta(description="reports older than this are deleted")] = Duration(
        90 * 86400
    )
    rollup_retention: Annotated[
        Duration, Meta(description="hourly rollups older than this are pruned (the metrics retention)")
    ] = Duration(30 * 86400)
    durable: Annotated[str, Meta(description="name of the durable JetStream consumers (one per stream)")] = (
        "report"
    )
    batch_size: Annotated[
        int,
        Meta(
            description="messages rolled up in memory before they are written to SQLite in one "
            "transaction, at most (memory grows with the series, not the messages)",
            ge=1,
            le=10_000_000,
        ),
    ] = 1_000_000
    commit_every: Annotated[
        Duration,
        Meta(
            description="how long messages are rolled up in memory before they are written: each "
            "write costs about one row per series, however many samples it holds; a crash takes "
            "back at most this much, redelivered at the next start"
        ),
    ] = Duration(60)
    health_gap: Annotated[
        Duration,
        Meta(
            description="a health status counts until the next check of its target, but for no "
            "longer than this (an agent that went quiet says nothing about its targets)"
        ),
    ] = Duration(300)
    restart_events: Annotated[
        list[str],
        Meta(
            description="container events counted as a restart of a container seen before "
            "(Docker emits start on every restart, by policy or by `docker restart`)"
        ),
    ] = msgspec.field(default_factory=lambda: ["start"])
    check_labels: Annotated[
        list[str],
        Meta(description="label keys naming the probe check of an http.* metric, first present wins"),
    ] = msgspec.field(default_factory=lambda: ["check", "target", "name"])
    baselines: Annotated[Baselines, Meta(description="performance baselines and acceptable ranges")] = (
        Baselines()
    )
    services: Annotated[
        list[ServiceSLA], Meta(description="SLA targets per service (the runbook's by default)")
    ] = msgspec.field(default_factory=lambda: list(DEFAULT_SERVICES))
    advice: Annotated[Advice, Meta(description="thresholds for the report's recommendations")] = Advice()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", self.daily_at):
            raise ValueError(f"daily_at {self.daily_at!r} is not a time HH:MM (00:00 to 23:59)")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not a known IANA time zone") from None
        names = [service.name for service in self.services]
        if len(set(names)) != len(names):
            raise ValueError("services: each service name may appear once")

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def daily_time(self) -> tuple[int, int]:
        hour, minute = self.daily_at.split(":")
        return int(hour), int(minute)
