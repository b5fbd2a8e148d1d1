"""The probe agent on a real nats-server, as a plain NATS subscriber sees it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import pytest

from agents.probe import ProbeAgentConfig, ProbeCollector
from agents.runner import AgentRunner
from bus.connection import Bus
from bus.events import HealthEvent, Heartbeat, MetricBatch, any_event
from bus.server import EmbeddedServer
from bus.units import dec_hook
from tests.conftest import wait_until
from tests.probe_targets import Targets, closed_port, running_targets

pytestmark = pytest.mark.integration

HOST = "web01"


class Subscriber:
    """A plain nats-py client recording (subject, event) of everything under one pattern."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []

    def health(self) -> dict[str, tuple[str, HealthEvent]]:
        """The latest health event of each target, with the subject it came on."""
        return {e.target: (s, e) for s, e in self.received if isinstance(e, HealthEvent)}

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for _, e in self.received if isinstance(e, kind)]


@contextlib.asynccontextmanager
async def subscribed(server: EmbeddedServer, pattern: str) -> AsyncIterator[Subscriber]:
    nc = await nats.connect(server.url)
    subscriber = Subscriber()

    async def record(msg: Any) -> None:
        subscriber.received.append((msg.subject, any_event.decode(msg.data, msg.subject)))

    await nc.subscribe(pattern, cb=record)
    await nc.flush()
    try:
        yield subscriber
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def probe_agent(bus: Bus, table: dict[str, Any]) -> AsyncIterator[AgentRunner]:
    """An AgentRunner with the probe collector, running until the block ends; the session closed after."""
    config = msgspec.convert(table, ProbeAgentConfig, dec_hook=dec_hook)
    collector = ProbeCollector(config)
    runner = AgentRunner(collector, bus, config, HOST)
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        runner.stop()
        await task
        await collector.close()


@pytest.fixture
async def targets() -> AsyncIterator[Targets]:
    async with running_targets() as running:
        yield running


async def test_healthy_url_500_url_and_closed_port_are_ok_critical_critical_on_the_bus(
    nats_server: EmbeddedServer, bus: Bus, prefix: str, targets: Targets
) -> None:
    port = closed_port()
    table = {
        "interval": "5s",
        "http": [
            {"name": "backend", "url": targets.url("/health")},
            {"name": "frontend", "url": targets.url("/fail")},
        ],
        "tcp": [{"name": "postgres", "host": "127.0.0.1", "port": port}],
    }
    async with subscribed(nats_server, f"{prefix}.>") as sub, probe_agent(bus, table):
        await wait_until(lambda: {"backend", "frontend", "postgres"} <= set(sub.health()))
        await wait_until(lambda: bool(sub.of(MetricBatch)))

    health = sub.health()
    assert health["backend"][0] == f"{prefix}.health.{HOST}.probe.backend"
    assert health["backend"][1].status == "ok"
    assert health["frontend"][0] == f"{prefix}.health.{HOST}.probe.frontend"
    assert (health["frontend"][1].status, health["frontend"][1].detail) == (
        "critical",
        "status 500, expected 2xx or 3xx",
    )
    assert health["postgres"][0] == f"{prefix}.health.{HOST}.probe.postgres"
    assert (health["postgres"][1].status, health["postgres"][1].detail) == ("critical", "connection refused")
    assert health["postgres"][1].labels == {"address": f"127.0.0.1:{port}"}
    batch = sub.of(MetricBatch)[0]
    assert batch.agent == "probe"
    assert {s.labels["check"] for s in batch.samples if s.name == "http.latency_seconds"} == {
        "backend",
        "frontend",
    }


HOSTILE = {
    "api.v1 health": "api_v1_health",
    "*": "_",
    "> all": "__all",
    "<!channel>": "<!channel_",
    "tab\there": "tab_here",
}


async def test_hostile_check_names_become_one_subject_token_and_arrive_intact(
    nats_server: EmbeddedServer, bus: Bus, prefix: str, targets: Targets
) -> None:
    long_name = "very long " * 40
    names = [*HOSTILE, long_name]
    table = {"interval": "5s", "http": [{"name": name, "url": targets.url("/health")} for name in names]}
    # `*` matches exactly one token: anything that split a name into two would not arrive here
    async with subscribed(nats_server, f"{prefix}.health.{HOST}.probe.*") as sub, probe_agent(bus, table):
        await wait_until(lambda: set(names) <= set(sub.health()))

    health = sub.health()
    for name, token in HOSTILE.items():
        subject, event = health[name]
        assert subject == f"{prefix}.health.{HOST}.probe.{token}"
        assert (event.target, event.status) == (name, "ok")
    long_subject, long_event = health[long_name]
    long_token = long_subject.rsplit(".", 1)[1]
    assert len(long_token) == 128
    assert long_token.startswith("very_long_very_long_")
    assert long_event.target == long_name


async def test_a_hung_target_never_shifts_the_cadence_of_the_cycles(
    nats_server: EmbeddedServer, bus: Bus, prefix: str, targets: Targets
) -> None:
    """Every cycle finishes inside its interval: no tick skipped, no collection overrun, and every
    cycle publishes the healthy check's result beside the hung one's timeout."""
    table = {
        "interval": "1s",
        "warmup": "0s",
        "http": [
            {"name": "hung", "url": targets.url("/hang"), "timeout": "600ms"},
            {"name": "healthy", "url": targets.url("/health")},
        ],
    }
    async with subscribed(nats_server, f"{prefix}.>") as sub, probe_agent(bus, table) as runner:
        await wait_until(lambda: len(sub.of(Heartbeat)) >= 4, timeout=20)
        skipped, errors = runner.skipped, runner.collect_errors

    assert (skipped, errors) == (0, 0)
    events = sub.of(HealthEvent)
    healthy = [e for e in events if e.target == "healthy"]
    hung = [e for e in events if e.target == "hung"]
    assert len(healthy) >= 4
    assert {e.status for e in healthy} == {"ok"}
    assert {(e.status, e.detail) for e in hung} == {("critical", "timed out after 0.6s")}
    assert not [e for e in events if e.target == "_collector"]
