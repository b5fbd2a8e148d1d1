"""Helpers for tests of the engine: short event builders and a driver with a manual clock."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bus.events import Alert, HealthEvent, Heartbeat, MetricBatch, Notification, Sample, Status
from evaluator.config import DefaultRoute, EvaluatorConfig, Rule
from evaluator.engine import INSTANT, Engine


def metrics(
    host: str,
    samples: Mapping[str, float] | Iterable[tuple[str, float, dict[str, str]]],
    *,
    agent: str = "host",
    interval: float = 10.0,
    ts: float = 0.0,
) -> MetricBatch:
    """A batch from {"cpu.percent": 95} or [("disk.percent", 90, {"mount": "/"})]."""
    items = (
        [(name, value, {}) for name, value in samples.items()] if isinstance(samples, Mapping) else samples
    )
    return MetricBatch(
        host=host,
        agent=agent,
        ts=ts,
        interval=interval,
        samples=[Sample(name, float(value), dict(labels)) for name, value, labels in items],
    )


def health(
    host: str,
    agent: str,
    target: str,
    status: Status,
    *,
    event: str | None = None,
    labels: dict[str, str] | None = None,
    detail: str = "",
) -> HealthEvent:
    return HealthEvent(
        host=host,
        agent=agent,
        target=target,
        status=status,
        ts=0.0,
        event=event,
        labels=labels or {},
        detail=detail,
    )


def heartbeat(host: str, agent: str = "host", interval: float = 10.0) -> Heartbeat:
    return Heartbeat(host=host, agent=agent, version="test", interval=interval, ts=0.0)


def only_rules(*rules: Rule, **settings: Any) -> EvaluatorConfig:
    """A config with just these rules: no defaults, no default inhibition, Alertmanager's grouping."""
    settings.setdefault("default_rules", False)
    settings.setdefault("default_route", DefaultRoute(critical_first=False))
    settings.setdefault("default_inhibit_rules", False)
    return EvaluatorConfig(rules=list(rules), **settings)


class Driver:
    """An engine on a manual clock: at(t) runs timers due by t; outputs are collected."""

    def __init__(self, config: EvaluatorConfig, start: float = 0.0) -> None:
        self.engine = Engine(config, start)
        self.config = config
        self.now = start
        self.alerts: list[Alert] = []
        self.notifications: list[Notification] = []

    def at(self, t: float, *events: MetricBatch | HealthEvent | Heartbeat) -> Driver:
        """Advance to t as the service does: timers due before t, the events at t, then the
        timers due at t and group flushes due within INSTANT after it (they see what was stamped t)."""
        self.now = t
        self.engine.tick(t - INSTANT)
        for event in events:
            self.engine.observe(event, t)
        self.engine.tick(t, flush_within=INSTANT)
        self.collect()
        return self

    def collect(self) -> None:
        output = self.engine.drain()
        self.alerts += output.alerts
        self.notifications += output.notifications

    def restart(self) -> Driver:
        """Snapshot and restore, as after a SIGKILL right after a state save."""
        self.engine = Engine.restore(self.config, self.engine.snapshot(), self.now)
        return self

    def take(self) -> tuple[list[Alert], list[Notification]]:
        """The outputs collected so far, clearing them."""
        out = (self.alerts, self.notifications)
        self.alerts, self.notifications = [], []
        return out
