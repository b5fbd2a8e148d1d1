"""The evaluator's time against a stream leader's clock, without a server: inputs handed to the
service as its feeds would, with the stored times a leader would give them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from bus.events import Alert, HealthEvent, Heartbeat, MetricBatch, encode
from bus.subjects import Subjects
from evaluator.clock import ClockLead
from evaluator.config import EvaluatorConfig
from evaluator.engine import Engine
from evaluator.service import _INPUTS, EvaluatorService, _Feed, _Message
from evaluator.testing import metrics

WALL = 1_000_000.0


def beat(host: str, at: float) -> Heartbeat:
    return Heartbeat(host=host, agent="host", version="test", interval=10.0, ts=at)


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
        run.deliver(beat("web01", now), now + ahead)
        if cycle <= 6:
            run.deliver(beat("web02", now), now + ahead)
        run.tick()
        wall[0] += 10
    firing = {(a.rule, a.labels["host"]) for a in run.alerts if a.status == "firing"}
    assert ("disk_usage_high", "web01") in firing, "its 5 m `for` ran out within 9 minutes"
    assert ("agent_down", "web02") in firing


def test_an_evaluator_clock_two_minutes_ahead_of_the_servers_reads_no_live_agent_as_down() -> None:
    """Heartbeats carry the server's time, timers ran on ours: two minutes ahead, every live agent
    went down and came back at every beat. The dead one must still be told."""
    wall = [WALL]
    run = Service(wall)
    for cycle in range(60):
        server = wall[0] - 120.0  # the stream leader's clock
        run.deliver(beat("web01", server), server + 0.01)
        if cycle < 20:
            run.deliver(beat("web02", server), server + 0.01)
        run.tick()
        wall[0] += 10
    down = [(a.labels["host"], a.status) for a in run.alerts if a.rule == "agent_down"]
    assert down == [("web02", "firing")]


def test_the_lead_is_the_least_delay_of_recent_inputs_and_none_below_the_tick_lag() -> None:
    lead = ClockLead(window=60.0, below=0.5)
    assert lead.lead() == 0.0
    lead.observe(1000.0, 1000.0 - 0.02)  # delivered in 20 ms: no lead
    assert lead.lead() == 0.0
    lead = ClockLead(window=60.0, below=0.5)
    lead.observe(1000.0, 700.0)  # a backlog message
    lead.observe(1001.0, 880.9)  # 120 s ahead, 0.1 s on the way
    assert lead.lead() == pytest.approx(120.1)
    for t in range(1002, 1200):  # the servers' clock is put right
        lead.observe(float(t), t - 0.01)
    assert lead.lead() == 0.0, "two windows on, the old lead is forgotten"
