"""The evaluator service through a real nats-server: alerts, notifications, silences, dead-man,
garbage, and SIGKILL-and-restart with nothing lost and nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.js.api import DeliverPolicy

from bus.config import BusConfig
from bus.connection import Bus, connect
from bus.events import Alert, HealthEvent, Heartbeat, MetricBatch, Notification, Sample, alert, notification
from bus.jetstream import provision
from bus.kvblob import decode_manifest
from bus.server import EmbeddedServer, ServerConfig, free_port
from bus.units import Duration
from evaluator.config import EvaluatorConfig, Route, Rule
from evaluator.service import EvaluatorService
from evaluator.silences import Silence, parse_matcher
from evaluator.store import LEASE_KEY, Lease, LeaseRecord, SavedState, StateStore, StoreError, open_buckets
from tests.conftest import nats_server_binary, wait_until

GROUP_WAIT, REPEAT = 1.0, 3.0
FOR = 2.0
HEARTBEAT_EVERY = 0.3
DISK_RULE = "disk_usage_high"
# Long enough for a restart in the middle of a scenario, short enough for a test.
TIMEOUT = 30.0


def evaluator_config() -> EvaluatorConfig:
    """Built-in rules, with integration-test timings instead of the runbook's minutes."""
    return EvaluatorConfig(
        rules=[
            Rule(
                name=DISK_RULE,
                metric="disk.percent",
                threshold=85,
                clear_threshold=80,
                for_=Duration(FOR),
                severity="critical",
                summary="disk {mount} on {host} is {value:.0f}% full",
            )
        ],
        default_route=Route(
            name="default",
            receiver="#alerts",
            group_wait=Duration(GROUP_WAIT),
            group_interval=Duration(GROUP_WAIT),
            repeat_interval=Duration(REPEAT),
        ),
    )


CONFIG_TOML = f"""
log_level = "debug"
[bus]
servers = ["{{url}}"]
prefix = "{{prefix}}"
[agents.host]
enabled = false
[evaluator.default_route]
name = "default"
receiver = "#alerts"
group_wait = "{GROUP_WAIT:g}s"
group_interval = "{GROUP_WAIT:g}s"
repeat_interval = "{REPEAT:g}s"
[[evaluator.rules]]
name = "{DISK_RULE}"
metric = "disk.percent"
threshold = 85
clear_threshold = 80
for = "{FOR:g}s"
severity = "critical"
"""


def write_config(path: Path, url: str, prefix: str) -> Path:
    path.write_text(CONFIG_TOML.format(url=url, prefix=prefix))
    return path


@dataclass
class Recorder:
    """Everything the alert and notification streams hold (stored messages, not core publishes:
    a repeat the stream deduplicated is not seen here)."""

    alerts: list[Alert] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)

    @classmethod
    @contextlib.asynccontextmanager
    async def on(cls, bus: Bus) -> AsyncIterator[Recorder]:
        recorder = cls()
        js = bus.nc.jetstream()

        async def on_alert(msg: object) -> None:
            recorder.alerts.append(alert.decode(msg.data))  # type: ignore[attr-defined]

        async def on_notification(msg: object) -> None:
            recorder.notifications.append(notification.decode(msg.data))  # type: ignore[attr-defined]

        subs = [
            await js.subscribe(
                bus.subjects.family("alerts"),
                cb=on_alert,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
            ),
            await js.subscribe(
                bus.subjects.family("notifications"),
                cb=on_notification,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
            ),
        ]
        try:
            yield recorder
        finally:
            for sub in subs:
                await sub.unsubscribe()

    def alerts_of(self, host: str, rule: str | None = None) -> list[Alert]:
        return [a for a in self.alerts if a.labels.get("host") == host and rule in (None, a.rule)]

    def notified(self, host: str, status: str | None = None) -> list[Notification]:
        return [
            n
            for n in self.notifications
            if any(a.labels.get("host") == host for a in n.alerts) and status in (None, n.status)
        ]

    async def wait_for(self, condition: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
        try:
            await wait_until(lambda: bool(condition()), timeout)
        except TimeoutError:
            pytest.fail(
                f"timed out waiting for {what}; alerts {self.alerts}; notifications {self.notifications}"
            )

    def assert_nothing_twice(self) -> None:
        ids = [n.id for n in self.notifications]
        assert len(ids) == len(set(ids)), f"notification ids repeat: {ids}"


class Agent:
    """A fake agent publishing disk usage and heartbeats, as AgentRunner does."""

    def __init__(self, bus: Bus, host: str, disk: float = 50.0) -> None:
        self.bus = bus
        self.host = host
        self.disk = disk
        self.beating = True
        self.beats = 0
        self._task: asyncio.Task[None] | None = None

    async def publish_once(self) -> None:
        subjects, now = self.bus.subjects, time.time()
        batch = MetricBatch(
            host=self.host,
            agent="host",
            ts=now,
            interval=HEARTBEAT_EVERY,
            samples=[Sample("disk.percent", self.disk, {"mount": "/"})],
        )
        await self.bus.publish(subjects.metrics(self.host, "host"), batch)
        beat = Heartbeat(host=self.host, agent="host", version="test", interval=HEARTBEAT_EVERY, ts=now)
        await self.bus.publish(subjects.heartbeat(self.host, "host"), beat)
        self.beats += 1

    async def _run(self) -> None:
        while self.beating:
            await self.publish_once()
            await asyncio.sleep(HEARTBEAT_EVERY)  # the agent's own schedule

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self.beating = False
        if self._task is not None:
            await self._task


async def provisioned(bus: Bus) -> None:
    await provision(bus.nc.jetstream(), bus.subjects, BusConfig().streams)


# --- the evaluator in-process, or as a process that can be killed --------------------------------

Restart = Callable[[], Awaitable[None]]


@contextlib.asynccontextmanager
async def service_in_process(bus: Bus) -> AsyncIterator[EvaluatorService]:
    service = EvaluatorService(evaluator_config(), bus)
    task = asyncio.create_task(service.run())
    await asyncio.wait_for(service.ready.wait(), TIMEOUT)
    try:
        yield service
    finally:
        service.stop()
        await asyncio.wait_for(task, TIMEOUT)


class EvaluatorProcess:
    """`jarvis-monitor evaluator` as a child process, killed with SIGKILL and restarted."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jarvis_monitor", "-c", str(self.config), "evaluator"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if k != "JARVIS_NATS_URL"},
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.kills += 1

    async def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.asynccontextmanager
async def service_process(tmp_path: Path, url: str, prefix: str) -> AsyncIterator[EvaluatorProcess]:
    process = EvaluatorProcess(
        write_config(tmp_path / "jarvis.toml", url, prefix), tmp_path / "evaluator.log"
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()
        sys.stderr.write(process.log.read_text(errors="replace")[-20000:])


async def no_restart() -> None:
    return None


# --- scenarios, each run in-process and with SIGKILLs in the middle ------------------------------


async def breach_lifecycle(bus: Bus, recorder: Recorder, restart: Restart) -> None:
    """Pending, firing, one notification after group_wait, a reminder after repeat_interval,
    resolved when the metric returns."""
    agent = Agent(bus, "web01", disk=95.0)
    agent.start()
    try:
        await recorder.wait_for(lambda: recorder.alerts_of("web01", DISK_RULE), "the pending alert")
        await restart()  # in the middle of `for`
        await recorder.wait_for(lambda: recorder.notified("web01", "firing"), "the firing notification")
        await restart()  # between the notification and the reminder
        await recorder.wait_for(
            lambda: recorder.notified("web01", "reminder"), "a reminder", TIMEOUT + REPEAT
        )
        agent.disk = 40.0
        await restart()  # while it resolves
        await recorder.wait_for(lambda: recorder.notified("web01", "resolved"), "the resolved notification")
    finally:
        await agent.stop()

    statuses = [a.status for a in recorder.alerts_of("web01", DISK_RULE)]
    assert statuses == ["pending", "firing", "resolved"], statuses
    firing = recorder.notified("web01", "firing")
    assert len(firing) == 1, firing
    assert [a.rule for a in firing[0].alerts] == [DISK_RULE]
    assert firing[0].ts - firing[0].alerts[0].starts_at >= GROUP_WAIT - 1e-6
    reminders = recorder.notified("web01", "reminder")
    times = [firing[0].ts, *(r.ts for r in reminders)]
    assert all(later - earlier >= REPEAT - 1e-6 for earlier, later in itertools.pairwise(times)), times
    assert len(recorder.notified("web01", "resolved")) == 1
    recorder.assert_nothing_twice()


async def heartbeat_gone(bus: Bus, recorder: Recorder, restart: Restart) -> None:
    """The agent stops: one agent-down alert, and its breach is inhibited, never notified."""
    agent = Agent(bus, "web04", disk=50.0)
    agent.start()
    await recorder.wait_for(lambda: agent.beats >= 5, "a few heartbeats")
    agent.disk = 95.0
    await agent.publish_once()  # a breach in its very last batch
    await agent.stop()
    await restart()  # while the evaluator counts missing heartbeats
    await recorder.wait_for(lambda: recorder.notified("web04", "firing"), "the agent-down notification")
    await recorder.wait_for(lambda: recorder.notified("web04", "reminder"), "a reminder", TIMEOUT + REPEAT)

    down = recorder.alerts_of("web04", "agent_down")
    assert [a.status for a in down] == ["firing"], down
    notified_rules = {a.rule for n in recorder.notified("web04") for a in n.alerts}
    assert notified_rules == {"agent_down"}, notified_rules
    recorder.assert_nothing_twice()


async def silenced(
    bus: Bus, recorder: Recorder, restart: Restart, silence: Callable[[str], Awaitable[None]]
) -> None:
    """A silenced host is never notified; a host without a silence is, in the same time."""
    await silence("web02")
    await restart()  # the silence must survive it
    quiet, loud = Agent(bus, "web02", disk=95.0), Agent(bus, "web03", disk=95.0)
    quiet.start()
    loud.start()
    try:
        await recorder.wait_for(
            lambda: recorder.notified("web03", "reminder"), "web03's reminder", TIMEOUT + REPEAT
        )
    finally:
        await quiet.stop()
        await loud.stop()
    assert [a.status for a in recorder.alerts_of("web02", DISK_RULE)][:2] == ["pending", "firing"]
    assert recorder.notified("web02") == []
    recorder.assert_nothing_twice()


async def cli_silence(config_path: Path, host: str) -> None:
    from jarvis_monitor.cli import main

    code = await asyncio.to_thread(
        main, ["-c", str(config_path), "silence", "add", f"host={host}", "--for", "1h", "--comment", "test"]
    )
    assert code == 0


# --- in-process -----------------------------------------------------------------------------------


async def test_breach_pending_firing_notified_reminded_resolved(bus: Bus) -> None:
    await provisioned(bus)
    async with Recorder.on(bus) as recorder, service_in_process(bus):
        await breach_lifecycle(bus, recorder, no_restart)


async def test_agent_down_is_the_only_alert_notified_for_its_host(bus: Bus) -> None:
    await provisioned(bus)
    async with Recorder.on(bus) as recorder, service_in_process(bus):
        await heartbeat_gone(bus, recorder, no_restart)


async def test_silence_from_the_cli_mutes_notifications(
    bus: Bus, nats_server: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    await provisioned(bus)
    config_path = write_config(tmp_path / "jarvis.toml", nats_server.url, prefix)
    async with Recorder.on(bus) as recorder, service_in_process(bus) as service:

        async def silence(host: str) -> None:
            await cli_silence(config_path, host)
            await wait_until(lambda: bool(service.silences), 5)

        await silenced(bus, recorder, no_restart, silence)


async def test_a_stored_silence_that_cannot_be_read_mutes_nothing_and_says_why(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """A silence kept before regexes went to RE2 (a lookahead) is logged and not applied; the
    silences beside it are."""
    await provisioned(bus)
    _, silences = await open_buckets(bus.nc.jetstream(), bus.subjects.prefix)
    good = Silence(
        id="good",
        matchers=[parse_matcher("host=web01")],
        starts_at=0,
        ends_at=time.time() + 3600,
        author="ops",
        comment="deploy",
    )
    old = msgspec.json.encode(good).replace(b'"value":"web01"', b'"op":"=~","value":"(?=web)web02"')
    await silences.kv.put("silence.old", old)
    await silences.add(good)
    told = "evaluator: silence old cannot be read and mutes nothing: invalid regex '(?=web)web02'"
    async with service_in_process(bus) as service:
        await wait_until(lambda: told in caplog.text, TIMEOUT)  # as its watcher reads it
        assert [s.id for s in service.silences] == ["good"]


async def test_an_evaluator_that_lost_its_lease_and_took_it_again_keeps_no_old_subscription(bus: Bus) -> None:
    """Each loss of the lease left the three input feeds' subscriptions open on the connection."""
    await provisioned(bus)
    _, silences = await open_buckets(bus.nc.jetstream(), bus.subjects.prefix)

    async def watched(silence_id: str) -> None:  # the silences' watcher is up: all is subscribed
        await silences.add(
            Silence(
                id=silence_id,
                matchers=[parse_matcher("host=x")],
                starts_at=0,
                ends_at=time.time() + 3600,
                author="",
                comment="",
            )
        )
        await wait_until(lambda: silence_id in {s.id for s in service.silences}, TIMEOUT)

    async with service_in_process(bus) as service:
        await watched("before")
        subscriptions = len(bus.nc._subs)
        lease = msgspec.json.encode(
            LeaseRecord(host="elsewhere", pid=1, started=0.0, token="other", expires_at=time.time() + 8)
        )
        await service._state.blobs.kv.put(LEASE_KEY, lease)  # another evaluator took it, for 8 s
        await wait_until(lambda: service.standing_by is not None, TIMEOUT)
        await wait_until(lambda: service.standing_by is None and service.ready.is_set(), TIMEOUT)
        await watched("after")
        assert len(bus.nc._subs) == subscriptions


async def test_garbage_payloads_are_counted_and_skipped(bus: Bus) -> None:
    await provisioned(bus)
    async with Recorder.on(bus) as recorder, service_in_process(bus) as service:
        subjects = bus.subjects
        for subject in (subjects.metrics("web05", "host"), subjects.heartbeat("web05", "host")):
            await bus.nc.publish(subject, b"\x00not json")
        await bus.nc.publish(subjects.health("web05", "probe", "api"), b'{"kind": "health"}')
        await bus.nc.publish(subjects.metrics("web05", "host"), b'{"kind": "heartbeat", "v": 1}')
        agent = Agent(bus, "web05", disk=95.0)
        agent.start()
        try:
            await recorder.wait_for(
                lambda: recorder.alerts_of("web05", DISK_RULE), "an alert after the garbage"
            )
        finally:
            await agent.stop()
        assert service.stats.undecodable == 4


async def test_a_second_evaluator_stands_by_and_takes_over_when_the_first_stops(bus: Bus) -> None:
    await provisioned(bus)
    async with Recorder.on(bus) as recorder:
        first = EvaluatorService(evaluator_config(), bus)
        first_task = asyncio.create_task(first.run())
        await asyncio.wait_for(first.ready.wait(), TIMEOUT)
        second = EvaluatorService(evaluator_config(), bus)
        second_task = asyncio.create_task(second.run())
        try:
            await wait_until(lambda: second.standing_by is not None, TIMEOUT)
            assert second.standing_by is not None
            assert second.standing_by.pid == os.getpid()
            assert not second.ready.is_set()
            first.stop()
            await first_task
            await asyncio.wait_for(second.ready.wait(), TIMEOUT)
            agent = Agent(bus, "web08", disk=95.0)
            agent.start()
            try:
                await recorder.wait_for(
                    lambda: recorder.alerts_of("web08", DISK_RULE), "an alert from the second"
                )
            finally:
                await agent.stop()
        finally:
            first.stop()
            second.stop()
            await asyncio.gather(first_task, second_task)


async def test_lease_of_another_host_expires_and_of_a_dead_process_is_free_at_once(bus: Bus) -> None:
    await provisioned(bus)
    state, _ = await open_buckets(bus.nc.jetstream(), bus.subjects.prefix)
    kv = state.blobs.kv
    now = [1000.0]
    lease = Lease(kv, clock=lambda: now[0])
    elsewhere = msgspec.structs.replace(lease.mine, host="elsewhere", token="t", expires_at=1015.0)
    await kv.put(LEASE_KEY, msgspec.json.encode(elsewhere))
    assert await lease.acquire() == elsewhere
    now[0] = 1016.0
    assert await lease.acquire() is None
    assert await lease.renew()

    finished = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await finished.wait()
    dead = msgspec.structs.replace(lease.mine, pid=finished.pid, token="t", expires_at=2000.0)
    await kv.put(LEASE_KEY, msgspec.json.encode(dead))
    assert not await lease.renew()  # someone else wrote the lease meanwhile
    assert await Lease(kv, clock=lambda: now[0]).acquire() is None


async def test_silences_expired_long_ago_are_deleted_recent_ones_kept(bus: Bus) -> None:
    await provisioned(bus)
    _, silences = await open_buckets(bus.nc.jetstream(), bus.subjects.prefix)
    now = time.time()
    matchers = [parse_matcher("host=web09")]
    old = Silence(
        id="old",
        matchers=matchers,
        starts_at=now - 8 * 86400,
        ends_at=now - 6 * 86400,
        author="a",
        comment="",
    )
    recent = msgspec.structs.replace(old, id="recent", ends_at=now - 3600)
    for silence in (old, recent):
        await silences.add(silence)
    async with service_in_process(bus):
        deadline = time.monotonic() + TIMEOUT
        while [s.id for s in await silences.silences()] != ["recent"]:
            assert time.monotonic() < deadline, "the old silence was not deleted"
            await asyncio.sleep(0.05)


async def test_a_server_outage_delays_but_loses_nothing(tmp_path: Path, prefix: str) -> None:
    """The server goes away while an alert is pending and comes back: the notification arrives."""
    port = free_port()

    def server() -> EmbeddedServer:
        return EmbeddedServer(ServerConfig(port=port), tmp_path, nats_server_binary())

    nats = server()
    await nats.start()
    observer = await connect(BusConfig(prefix=prefix), "observer", servers=[nats.url])
    evaluator_bus = await connect(BusConfig(prefix=prefix), "evaluator", servers=[nats.url])
    await provisioned(observer)
    agent = Agent(observer, "web11", disk=95.0)
    try:
        async with Recorder.on(observer) as recorder, service_in_process(evaluator_bus) as service:
            agent.start()
            await recorder.wait_for(lambda: recorder.alerts_of("web11", DISK_RULE), "the pending alert")
            await nats.stop()
            outage = service.stats.snapshots
            nats = server()
            await nats.start()
            await recorder.wait_for(lambda: recorder.notified("web11", "firing"), "the firing notification")
            assert service.stats.snapshots > outage
            await agent.stop()
        recorder.assert_nothing_twice()
        assert [a.status for a in recorder.alerts_of("web11", DISK_RULE)][:2] == ["pending", "firing"]
    finally:
        await agent.stop()
        await evaluator_bus.close()
        await observer.close()
        await nats.stop()


async def test_state_of_10000_series_survives_a_restart(bus: Bus) -> None:
    """A snapshot too large for one KV value is chunked, and a new evaluator picks it up whole."""
    await provisioned(bus)
    now = time.time()
    async with service_in_process(bus) as service:
        for host in range(10):
            samples = [Sample("disk.percent", 95.0, {"mount": f"/m{i}"}) for i in range(1000)]
            batch = MetricBatch(host=f"h{host}", agent="host", ts=now, interval=10, samples=samples)
            await bus.publish(bus.subjects.metrics(f"h{host}", "host"), batch)
        await wait_until(lambda: service.stats.evaluated >= 10 and service.stats.snapshots > 0, TIMEOUT)
        await wait_until(lambda: len(service.engine.active(time.time())) == 10_000, TIMEOUT)
        size = service.stats.snapshot_bytes
    async with service_in_process(bus) as restarted:
        assert len(restarted.engine.active(time.time())) == 10_000
    print(f"snapshot of 10,000 series: {size} bytes")


async def test_large_value_is_chunked_and_a_torn_write_keeps_the_previous_one(bus: Bus) -> None:
    await provisioned(bus)
    state, _ = await open_buckets(bus.nc.jetstream(), bus.subjects.prefix)
    first = SavedState(engine=os.urandom(3_000_000), cursors={"metrics": 7})  # incompressible: 6 chunks
    await state.save(first)
    assert await state.load() == first
    # a crash after the chunks of the next value but before its manifest: the first stays whole
    # (in slot 0b, the other of the first writer's, which wrote 0a)
    for index in range(3):
        await state.blobs.kv.put(f"snapshot.0b.{index}", b"torn")
    assert await StateStore(state.blobs.kv).load() == first
    second = SavedState(engine=b"small", cursors={"metrics": 8})
    await state.save(second)
    assert await StateStore(state.blobs.kv).load() == second
    manifest = decode_manifest("snapshot", (await state.blobs.kv.get("snapshot")).value)
    assert manifest is not None
    await state.blobs.kv.put(f"snapshot.{manifest.slot}.0", b"corrupted")
    with pytest.raises(StoreError):
        await StateStore(state.blobs.kv).load()


# --- SIGKILL and restart --------------------------------------------------------------------------


@pytest.fixture
async def observer(nats_server: EmbeddedServer, prefix: str) -> AsyncIterator[Bus]:
    connection = await connect(BusConfig(prefix=prefix), "observer", servers=[nats_server.url])
    await provisioned(connection)
    yield connection
    await connection.close()


async def test_killed_during_a_breach_same_notifications_none_twice(
    observer: Bus, nats_server: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    async with (
        Recorder.on(observer) as recorder,
        service_process(tmp_path, nats_server.url, prefix) as process,
    ):
        await breach_lifecycle(observer, recorder, process.restart)
    assert process.kills == 3


async def test_killed_while_an_agent_goes_down_same_notifications_none_twice(
    observer: Bus, nats_server: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    async with (
        Recorder.on(observer) as recorder,
        service_process(tmp_path, nats_server.url, prefix) as process,
    ):
        await heartbeat_gone(observer, recorder, process.restart)
    assert process.kills == 1


async def test_down_for_a_while_then_catching_up_raises_no_false_agent_down(
    observer: Bus, nats_server: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    """The backlog of heartbeats is evaluated at its own time, not the restart's."""
    async with (
        Recorder.on(observer) as recorder,
        service_process(tmp_path, nats_server.url, prefix) as process,
    ):
        agent = Agent(observer, "web10", disk=50.0)
        agent.start()
        try:
            await recorder.wait_for(lambda: agent.beats >= 5, "a few heartbeats")
            process.kill()
            beats = agent.beats
            await recorder.wait_for(lambda: agent.beats >= beats + 10, "heartbeats while it is down")
            process.start()
            agent.disk = 95.0  # evaluated after the backlog: its alert shows the catch-up is done
            await recorder.wait_for(lambda: recorder.alerts_of("web10", DISK_RULE), "the disk alert")
        finally:
            await agent.stop()
    assert recorder.alerts_of("web10", "agent_down") == []


async def test_killed_after_a_silence_still_silenced(
    observer: Bus, nats_server: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    async with (
        Recorder.on(observer) as recorder,
        service_process(tmp_path, nats_server.url, prefix) as process,
    ):

        async def silence(host: str) -> None:
            await cli_silence(process.config, host)

        await silenced(observer, recorder, process.restart, silence)
    assert process.kills == 1


async def test_a_flush_due_at_an_instant_tells_what_all_of_its_streams_carried(bus: Bus) -> None:
    """An agent's batch, checks and heartbeat of one instant travel on three streams: a group flush
    due at that instant waits until they have all arrived (SETTLE), not only the first of them
    (versus run 12: a flush run on the probe's batch told RESOLVED while its check said flapping)."""
    await provisioned(bus)
    config = evaluator_config()
    config = msgspec.structs.replace(
        config,
        rules=[Rule(name="check_failed", kind="health", severity="warning")],
        default_rules=False,
        default_inhibit_rules=False,
        default_route=Route(
            name="default",
            receiver="#alerts",
            group_by=["host"],
            group_wait=Duration(1),
            group_interval=Duration(2),
            repeat_interval=Duration(3600),
        ),
    )
    subjects = bus.subjects

    async def check(target: str, ts: float) -> None:
        event = HealthEvent(host="web01", agent="probe", target=target, status="critical", ts=ts)
        await bus.publish(subjects.health("web01", "probe", target), event)

    async with Recorder.on(bus) as recorder:
        service = EvaluatorService(config, bus)
        task = asyncio.create_task(service.run())
        try:
            await asyncio.wait_for(service.ready.wait(), TIMEOUT)
            first = time.time()
            await check("a", first)
            await recorder.wait_for(lambda: recorder.notified("web01"), "the first flush")
            await check("b", time.time())  # flushed with the group's next one, at first + 1 + 2
            due = first + 3.0
            await asyncio.sleep(max(0.0, due + 0.05 - time.time()))  # before the wall clock's tick
            batch = MetricBatch(host="web01", agent="probe", ts=due, interval=5, samples=[Sample("x.y", 1)])
            await bus.publish(subjects.metrics("web01", "probe"), batch)
            await asyncio.sleep(0.005)
            await check("c", due)  # the same instant, a moment later, on another stream
            await recorder.wait_for(lambda: len(recorder.notified("web01")) >= 2, "the second flush")
        finally:
            service.stop()
            await asyncio.wait_for(task, TIMEOUT)

    second = recorder.notified("web01")[1]
    assert sorted(a.labels["target"] for a in second.alerts) == ["a", "b", "c"]


async def test_the_active_alerts_are_built_once_a_second_while_inputs_stream_in(bus: Bus) -> None:
    """Building them costs a few ms per thousand alerts; unchanged, they were rebuilt on every pass
    of the loop, which took 40 % of the evaluator's CPU at 1,000 hosts (tests.bench evaluator_fanin)."""
    await provisioned(bus)
    async with service_in_process(bus) as service:
        engine = service.engine
        built = [0]
        active = engine.active

        def counted(now: float) -> list[Any]:
            built[0] += 1
            return active(now)

        engine.active = counted  # type: ignore[method-assign]
        agent = Agent(bus, "web01")
        began = time.monotonic()
        for _ in range(300):  # 3 s of inputs, a pass of the loop for each
            await agent.publish_once()
            await asyncio.sleep(0.01)
        await wait_until(lambda: service.stats.evaluated >= 2 * agent.beats, TIMEOUT)
        seconds = time.monotonic() - began
    assert built[0] <= seconds + 2, f"built {built[0]} times in {seconds:.1f} s"


async def test_a_start_that_fails_after_taking_the_lease_goes_on_with_it_not_standing_by_for_itself(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """A consumer made too slowly (a cluster electing a leader) fails the start after the lease was
    taken; the retry must know that lease for its own, or it waits out its TTL (15 s) behind itself."""
    await provisioned(bus)
    service = EvaluatorService(evaluator_config(), bus)
    subscribe = service._subscribe_all
    failed: list[bool] = []

    async def slow_once() -> Any:
        if not failed:
            failed.append(True)
            raise TimeoutError("consumer create timed out")
        return await subscribe()

    service._subscribe_all = slow_once  # type: ignore[method-assign]
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.ready.wait(), 10)  # the lease's TTL is 15 s
        assert failed
        assert "standing by" not in caplog.text
    finally:
        service.stop()
        await asyncio.wait_for(task, 10)
