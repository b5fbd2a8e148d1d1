"""The evaluator's time against a stream leader's clock, without a server: inputs handed to the
service as its feeds would, with the stored times a leader would give them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from bus.events import Alert, HealthEvent, Heartbeat, MetricBatch, encode
from bus.subjects import Subjects
from evaluator.config import EvaluatorConfig
from evaluator.engine import Engine
from evaluator.service import _INPUTS, EvaluatorService, _Feed, _Message
from evaluator.testing import heartbeat, metrics

WALL = 1_000_000.0


class Service:
    def __init__(self, clock: list[float]) -> None:
        config = EvaluatorConfig()
        bus: Any = SimpleNamespace(
            nc=SimpleNamespace(is_connected=True, max_payload=1 << 20, jetstream=lambda: None),
            subjects=Subjects("jarvis"),
            replicas=1,
        )
        self.subjects = bus.subjects
        self.service = EvaluatorService(config, bus, clock=lambda: clock[0])
        self.service._engine = Engine(config, clock[0] - 300)
        wake = asyncio.Event()
        self.feeds = {
            family: _Feed(family=family, decode=decode, wake=wake, config=None)  # type: ignore[arg-type]
            for family, decode in _INPUTS.items()
        }
        self.seq = 0
        self.alerts: list[Alert] = []

    def deliver(self, event: MetricBatch | Heartbeat | HealthEvent, stored: float) -> None:
        self.seq += 1
        if isinstance(event, MetricBatch):
            family, subject = "metrics", self.subjects.metrics(event.host, event.agent)
        else:
            family, subject = "heartbeat", self.subjects.heartbeat(event.host, event.agent)
        msg: Any = SimpleNamespace(data=encode(event), subject=subject)
        service = self.service
        service._evaluate(service.engine, self.feeds[family], _Message(stored, self.seq, msg))

    def tick(self) -> None:
        self.service._tick()
        self.alerts += self.service.engine.drain().alerts


def test_one_input_stamped_an_hour_ahead_by_a_leader_does_not_hold_back_every_timer() -> None:
    """A leader whose clock ran an hour ahead (stepped back since) stamped one cycle: engine time
    must not stay there, or web01's full disk never fires and web02's silence never reads as down."""
    wall = [WALL]
    run = Service(wall)
    for cycle in range(60):
        now = wall[0]
        ahead = 3600.0 if cycle == 6 else 0.0
        disk = 95.0 if cycle > 6 else 50.0
        run.deliver(metrics("web01", [("disk.percent", disk, {"mount": "/"})], ts=now), now + ahead)
        run.deliver(heartbeat("web01"), now + ahead)
        if cycle <= 6:
            run.deliver(heartbeat("web02"), now + ahead)
        run.tick()
        wall[0] += 10
    firing = {(a.rule, a.labels["host"]) for a in run.alerts if a.status == "firing"}
    assert ("disk_usage_high", "web01") in firing, "its 5 m `for` ran out within 9 minutes"
    assert ("agent_down", "web02") in firing
