"""An agent and the evaluator through a real nats-server that stops for 10 s: no false agent-down,
and the one evaluator keeps evaluating."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable

import msgspec
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError

from agents.runner import AgentConfig, AgentRunner
from bus.config import BusConfig
from bus.connection import Bus, connect
from bus.events import Alert, alert, heartbeat
from bus.jetstream import provision, stream_name
from bus.server import EmbeddedServer
from bus.units import Duration
from evaluator.config import EvaluatorConfig
from evaluator.service import DURABLE, EvaluatorService
from evaluator.store import LEASE_KEY, LEASE_TTL, LeaseRecord, open_buckets
from tests.conftest import wait_until

from .test_agent_outage import Steady

pytestmark = pytest.mark.integration

INTERVAL = 2.0
OUTAGE = 10.0
TIMEOUT = 30.0
HOST = "web01"


async def eventually(condition: Callable[[], Awaitable[object]], what: str, timeout: float = TIMEOUT) -> None:
    """Poll the async `condition` until it holds; fail the test naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.2)


async def stored(bus: Bus, family: str) -> list[tuple[int, float, bytes]]:
    """Every message the family's stream holds now, as (stream sequence, time stored, payload)."""
    js = bus.nc.jetstream()
    count = (await js.stream_info(stream_name(bus.subjects.prefix, family))).state.messages
    sub = await js.subscribe(
        bus.subjects.family(family),
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    try:
        found = []
        for _ in range(count):
            msg = await sub.next_msg(timeout=5)
            meta = msg.metadata
            found.append((meta.sequence.stream, meta.timestamp.timestamp(), msg.data))
        return found
    finally:
        await sub.unsubscribe()


async def agent_beats(bus: Bus) -> list[tuple[int, float, bytes]]:
    """The agent's heartbeats only: the evaluator publishes heartbeats of its own too."""
    beats = await stored(bus, "heartbeat")
    return [beat for beat in beats if heartbeat.decode(beat[2]).host == HOST]


async def stored_alerts(bus: Bus) -> list[tuple[float, Alert]]:
    return [(at, alert.decode(data)) for _, at, data in await stored(bus, "alerts")]


async def lease_record(bus: Bus) -> LeaseRecord | None:
    state, _ = await open_buckets(bus.nc.jetstream(), bus.subjects.prefix)
    try:
        entry = await state.blobs.kv.get(LEASE_KEY)
    except KeyNotFoundError:
        return None
    return msgspec.json.decode(entry.value or b"", type=LeaseRecord)


async def evaluator_acked(bus: Bus, family: str) -> int:
    """The last stream sequence of `family` the evaluator has evaluated, saved and acked."""
    info = await bus.nc.jetstream().consumer_info(stream_name(bus.subjects.prefix, family), DURABLE)
    return info.ack_floor.stream_seq if info.ack_floor else 0


class Gate:
    """A loopback TCP relay to the server that turns connections away while shut: it holds one
    client back while the other reconnects, so the order of reconnection is the test's choice."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.is_open = True
        self._relays: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        self._server.close()
        for task in self._relays:
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.is_open:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:  # the server is down
            writer.close()
            return
        relay = asyncio.create_task(_relay(reader, writer, up_reader, up_writer))
        self._relays.add(relay)
        relay.add_done_callback(self._relays.discard)


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.mark.parametrize(
    "first", ["agent", "evaluator"], ids=["agent-reconnects-first", "evaluator-reconnects-first"]
)
async def test_a_10s_server_outage_raises_no_agent_down_and_the_evaluator_keeps_evaluating(
    own_nats_server: EmbeddedServer, prefix: str, caplog: pytest.LogCaptureFixture, first: str
) -> None:
    """An agent every 2 s, the evaluator, and the server stopped for 10 s under them: once the
    evaluator has evaluated the outage's heartbeats and three intervals more, no agent_down fired,
    it never stood by, and it renewed its lease. Whichever of agent and evaluator is back first."""
    caplog.set_level(logging.INFO, logger="evaluator")
    url = own_nats_server.url
    gate = Gate(own_nats_server.port)
    await gate.start()
    # three connections, as the agent, the evaluator and an operator are three processes
    observer = await connect(BusConfig(prefix=prefix), "observer", servers=[url])
    config = BusConfig(prefix=prefix)
    agent_bus = await connect(config, "agent", servers=[url if first == "agent" else gate.url])
    evaluator_bus = await connect(config, "evaluator", servers=[url if first == "evaluator" else gate.url])
    held_back = evaluator_bus if first == "agent" else agent_bus
    await provision(observer.nc.jetstream(), observer.subjects, BusConfig().streams)
    service = EvaluatorService(EvaluatorConfig(), evaluator_bus)
    runner = AgentRunner(Steady(), agent_bus, AgentConfig(interval=Duration(INTERVAL)), HOST)
    service_task = asyncio.create_task(service.run())
    agent_task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(service.ready.wait(), TIMEOUT)

        async def evaluating_the_agent() -> bool:
            beats = await agent_beats(observer)
            return len(beats) >= 3 and await evaluator_acked(observer, "heartbeat") >= beats[-1][0]

        await eventually(evaluating_the_agent, "the evaluator to evaluate the agent's first heartbeats")
        assert runner.cycles >= 3

        await own_nats_server.stop()
        outage_start = time.time()
        gate.is_open = False
        await asyncio.sleep(OUTAGE)  # the outage itself
        await own_nats_server.start()
        restarted = time.time()
        evaluated_at_restart = service.stats.evaluated
        first_bus = agent_bus if first == "agent" else evaluator_bus
        await wait_until(lambda: first_bus.nc.is_connected, TIMEOUT)
        gate.is_open = True  # the other one is back at its next attempt, within its 5 s backoff cap
        await wait_until(lambda: held_back.nc.is_connected, TIMEOUT)
        both_back = time.time()

        after: list[tuple[int, float]] = []

        async def evaluated_three_intervals_past_the_restart() -> bool:
            # Buffered heartbeats, then live ones, up to three intervals after both are back: by
            # then agent_down would have fired, had the outage or the reconnection counted as silence.
            after[:] = [
                (seq, beat.ts)
                for seq, _, data in await agent_beats(observer)
                if (beat := heartbeat.decode(data)).ts > outage_start
            ]
            late = [seq for seq, ts in after if ts >= both_back + 3 * INTERVAL]
            return bool(late) and await evaluator_acked(observer, "heartbeat") >= late[0]

        await eventually(
            evaluated_three_intervals_past_the_restart,
            "the evaluator to evaluate heartbeats three intervals after the restart",
        )
        during = [ts for _, ts in after if ts < restarted]
        assert len(during) >= OUTAGE / INTERVAL - 1, f"the outage's heartbeats were not stored: {during}"

        # the evaluator's side first: it never stood by and went on evaluating and renewing
        assert service.standing_by is None
        assert service.ready.is_set()
        assert service.stats.evaluated >= evaluated_at_restart + len(after)
        gave_up = [
            r.getMessage()
            for r in caplog.records
            if "standing by" in r.getMessage() or "took over" in r.getMessage()
        ]
        assert gave_up == [], gave_up

        async def lease_renewed_after_the_outage() -> bool:
            record = await lease_record(observer)
            return record is not None and record.expires_at >= restarted + LEASE_TTL

        await eventually(lease_renewed_after_the_outage, "the evaluator to renew its lease after the outage")
        record = await lease_record(observer)
        assert record is not None
        assert record.pid == os.getpid()

        # then the engine's: a heartbeat every interval, stored late, is no silence
        down = [(at, a) for at, a in await stored_alerts(observer) if a.rule == "agent_down"]
        seen = [(a.status, round(at - restarted, 1), round(a.starts_at - outage_start, 1)) for at, a in down]
        assert not [a for _, a in down if a.status == "firing"], (
            f"agent_down after a {restarted - outage_start:.1f}s outage under an agent beating every "
            f"{INTERVAL:g}s; the {first} reconnected first, both were back {both_back - restarted:.1f}s "
            "after the restart; the alerts (status, stored s after the restart, starts_at s after the "
            f"outage began): {seen}; heartbeat ts s after the outage began: "
            f"{[round(ts - outage_start, 1) for _, ts in after]}"
        )
    finally:
        runner.stop()
        service.stop()
        await asyncio.wait_for(asyncio.gather(agent_task, service_task), TIMEOUT)
        for bus in (agent_bus, evaluator_bus, observer):
            await bus.close()
        await gate.close()
