"""Agents against a real nats-server that goes away and comes back."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from agents.host import HostAgentConfig, HostCollector
from agents.runner import AgentConfig, AgentRunner, Collection
from bus.config import BusConfig
from bus.connection import connect
from bus.events import Heartbeat, Sample, heartbeat
from bus.jetstream import provision, stream_name
from bus.server import EmbeddedServer, ServerConfig, free_port
from bus.units import Duration

from ..conftest import nats_server_binary
from .test_cli import cli_env, write_config

pytestmark = pytest.mark.integration


class Steady:
    """A collector that always has one sample, so the test is about the bus, not psutil."""

    name = "host"

    async def collect(self) -> Collection:
        return Collection(samples=[Sample("cpu.percent", 1.0)])


async def stored_heartbeats(server_url: str, prefix: str) -> list[Heartbeat]:
    bus = await connect(BusConfig(prefix=prefix), "reader", servers=[server_url])
    try:
        js = bus.nc.jetstream()
        try:
            info = await js.stream_info(stream_name(prefix, "heartbeat"))
        except NotFoundError:  # not provisioned yet
            return []
        sub = await js.subscribe(
            f"{prefix}.heartbeat.>",
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        beats = []
        for _ in range(info.state.messages):
            msg = await sub.next_msg(timeout=5)
            beats.append(heartbeat.decode(msg.data))
        await sub.unsubscribe()
        return beats
    finally:
        await bus.close()


async def test_heartbeats_published_during_an_outage_arrive_after_restart(
    tmp_path: Path, prefix: str
) -> None:
    """The server restarts under a running agent: it reconnects and the outage's heartbeats are stored."""
    port = free_port()
    server = EmbeddedServer(ServerConfig(port=port), tmp_path, nats_server_binary())
    await server.start()
    config = BusConfig(prefix=prefix)
    bus = await connect(config, "agent", servers=[server.url])
    await provision(bus.nc.jetstream(), bus.subjects, config.streams)
    runner = AgentRunner(Steady(), bus, AgentConfig(interval=Duration(0.2)), "web01")
    task = asyncio.create_task(runner.run())
    try:
        while runner.cycles < 3:
            await asyncio.sleep(0.05)
        await server.stop()
        outage_start = time.time()
        await asyncio.sleep(2)  # the outage itself
        outage_end = time.time()
        server = EmbeddedServer(ServerConfig(port=port), tmp_path, nats_server_binary())
        await server.start()
        deadline = time.monotonic() + 15
        while True:
            beats = await stored_heartbeats(server.url, prefix)
            during = [b for b in beats if outage_start < b.ts < outage_end]
            after = [b for b in beats if b.ts > outage_end]
            if len(during) >= 5 and after:
                break
            assert time.monotonic() < deadline, f"{len(during)} outage heartbeats stored, {len(after)} after"
            await asyncio.sleep(0.2)
        assert all(b.dropped == 0 for b in beats)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 5)
        await bus.close()
        await server.stop()


async def test_a_full_buffer_during_an_outage_is_counted_in_the_next_heartbeat(
    tmp_path: Path, prefix: str
) -> None:
    """Publishes that do not fit the reconnect buffer are dropped, and the heartbeat after says how many."""
    port = free_port()
    server = EmbeddedServer(ServerConfig(port=port), tmp_path, nats_server_binary())
    await server.start()
    config = BusConfig(prefix=prefix, reconnect_buffer=600)
    bus = await connect(config, "agent", servers=[server.url])
    await provision(bus.nc.jetstream(), bus.subjects, config.streams)
    runner = AgentRunner(Steady(), bus, AgentConfig(interval=Duration(0.1)), "web01")
    task = asyncio.create_task(runner.run())
    try:
        await server.stop()
        while bus.stats.dropped < 5:
            await asyncio.sleep(0.05)
        server = EmbeddedServer(ServerConfig(port=port), tmp_path, nats_server_binary())
        await server.start()
        deadline = time.monotonic() + 15
        while True:
            beats = await stored_heartbeats(server.url, prefix)
            if beats and beats[-1].dropped >= 5:
                break
            assert time.monotonic() < deadline, "no heartbeat reported the drops"
            await asyncio.sleep(0.2)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 5)
        await bus.close()
        await server.stop()


async def test_agent_command_stops_on_sigterm_and_flushes(
    nats_server: EmbeddedServer, tmp_path: Path, prefix: str
) -> None:
    """`jarvis-monitor agent host` exits 0 on SIGTERM after publishing its heartbeats."""
    config = write_config(
        tmp_path / "a.toml", f'[bus]\nprefix = "{prefix}"\n[agents.host]\ninterval = "1s"\n'
    )
    env = cli_env(JARVIS_NATS_URL=nats_server.url)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jarvis_monitor",
        "-c",
        str(config),
        "agent",
        "host",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while not [b for b in await stored_heartbeats(nats_server.url, prefix) if b.agent == "host"]:
            assert time.monotonic() < deadline, "the agent published no heartbeat"
            await asyncio.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_host_collector_config_is_what_up_uses() -> None:
    """The host agent's defaults follow the runbook: every 10 s."""
    assert HostAgentConfig().interval == Duration(10)
    assert HostCollector(HostAgentConfig()).name == "host"
