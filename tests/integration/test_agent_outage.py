"""Agents against a real nats-server that goes away and comes back."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from agents.runner import AgentConfig, AgentRunner, Collection
from bus.config import BusConfig
from bus.connection import connect
from bus.events import Heartbeat, Sample, heartbeat
from bus.jetstream import provision, stream_name
from bus.server import EmbeddedServer, ServerConfig, free_port
from bus.units import Duration
from tests.conftest import nats_server_binary, wait_until

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


class AgentUnderOutage:
    """A running agent on its own nats-server, which the test can stop and start again."""

    def __init__(self, tmp_path: Path, prefix: str, interval: float, reconnect_buffer: int) -> None:
        self.tmp_path = tmp_path
        self.prefix = prefix
        self.port = free_port()
        self.config = BusConfig(prefix=prefix, reconnect_buffer=reconnect_buffer)
        self.interval = interval

    def _server(self) -> EmbeddedServer:
        return EmbeddedServer(ServerConfig(port=self.port), self.tmp_path, nats_server_binary())

    async def __aenter__(self) -> AgentUnderOutage:
        self.server = self._server()
        await self.server.start()
        self.bus = await connect(self.config, "agent", servers=[self.server.url])
        await provision(self.bus.nc.jetstream(), self.bus.subjects, self.config.streams)
        self.runner = AgentRunner(Steady(), self.bus, AgentConfig(interval=Duration(self.interval)), "web01")
        self.task = asyncio.create_task(self.runner.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.runner.stop()
        await asyncio.wait_for(self.task, 5)
        await self.bus.close()
        await self.server.stop()

    async def restart_server(self) -> None:
        self.server = self._server()
        await self.server.start()

    async def heartbeats_until(
        self, done: Callable[[list[Heartbeat]], bool], timeout: float = 15
    ) -> list[Heartbeat]:
        """The stored heartbeats, once `done` holds for them; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            beats = await stored_heartbeats(self.server.url, self.prefix)
            if done(beats):
                return beats
            assert time.monotonic() < deadline, f"gave up after {timeout}s with {len(beats)} heartbeats"
            await asyncio.sleep(0.2)


async def test_heartbeats_published_during_an_outage_arrive_after_restart(
    tmp_path: Path, prefix: str
) -> None:
    """The server restarts under a running agent: it reconnects and the outage's heartbeats are stored."""
    async with AgentUnderOutage(tmp_path, prefix, interval=0.2, reconnect_buffer=2 * 1024**2) as agent:
        await wait_until(lambda: agent.runner.cycles >= 3)
        await agent.server.stop()
        outage_start = time.time()
        await asyncio.sleep(2)  # the outage itself
        outage_end = time.time()
        await agent.restart_server()

        beats = await agent.heartbeats_until(
            lambda beats: (
                len([b for b in beats if outage_start < b.ts < outage_end]) >= 5
                and any(b.ts > outage_end for b in beats)
            )
        )
        assert all(b.dropped == 0 for b in beats)


async def test_a_full_buffer_during_an_outage_is_counted_in_the_next_heartbeat(
    tmp_path: Path, prefix: str
) -> None:
    """Publishes that do not fit the reconnect buffer are dropped, and the heartbeat after says how many."""
    async with AgentUnderOutage(tmp_path, prefix, interval=0.1, reconnect_buffer=600) as agent:
        await agent.server.stop()
        await wait_until(lambda: agent.bus.stats.dropped >= 5)
        await agent.restart_server()

        await agent.heartbeats_until(lambda beats: bool(beats) and beats[-1].dropped >= 5)


async def test_agent_command_stops_on_sigterm(
    nats_server: EmbeddedServer, tmp_path: Path, prefix: str
) -> None:
    """`jarvis-monitor agent host`, once publishing, exits 0 on SIGTERM."""
    config = write_config(
        tmp_path / "a.toml", f'[bus]\nprefix = "{prefix}"\n[agents.host]\ninterval = "1s"\n'
    )
    env = cli_env(JARVIS_NATS_URL=nats_server.url)
    # the streams are the evaluator's to make (an agent's NATS user may not): made here as it would
    evaluator = await connect(BusConfig(prefix=prefix), "evaluator", servers=[nats_server.url])
    try:
        await provision(evaluator.nc.jetstream(), evaluator.subjects, BusConfig().streams)
    finally:
        await evaluator.close()
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
