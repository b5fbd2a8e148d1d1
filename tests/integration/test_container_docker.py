"""The container agent against the real Docker engine: healthy, unhealthy, crash-looping,
OOM-killed and log-spewing containers, events as they happen, and the engine going away."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from agents.container import DOCKER_TARGET, METRICS, ContainerAgentConfig, ContainerCollector, LogWatchConfig
from agents.runner import AgentRunner, Check, Collection
from bus.connection import Bus
from bus.events import HealthEvent, MetricBatch, health_event, metric_batch
from bus.server import EmbeddedServer
from bus.subjects import sanitize_token
from bus.testing import RecordingPublisher
from bus.units import Duration
from tests.conftest import wait_until

from .docker_env import IMAGE_2, Containers, EngineProxy, containers, docker

pytestmark = pytest.mark.integration
__all__ = ["containers"]  # the fixture, imported for pytest

HEALTHY = ("--health-cmd", "true", "--health-interval", "1s")
UNHEALTHY = ("--health-cmd", "false", "--health-interval", "1s", "--health-retries", "1")
# verified to be OOM-killed under an 8 MB limit
OOM = 'x=$(head -c 50000000 /dev/zero | tr "\\0" a); sleep 60'
SPEW = (
    'while true; do echo "ERROR db down at postgres://app:s3cret@db/x"; '
    'echo "WARNING slow"; echo ok; sleep 0.2; done'
)


class Recorder:
    """Collects what `watch` emits."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    async def __call__(self, check: Check) -> None:
        self.checks.append(check)

    def find(self, target: str, event: str | None = None) -> list[Check]:
        return [c for c in self.checks if c.target == target and (event is None or c.event == event)]


@contextlib.asynccontextmanager
async def watching(collector: ContainerCollector) -> AsyncIterator[Recorder]:
    """The collector's watcher running in the background, connected to the engine."""
    recorder = Recorder()
    task = asyncio.create_task(collector.watch(recorder))
    try:
        await wait_until(lambda: bool(recorder.find(DOCKER_TARGET, "connected")), timeout=10)
        yield recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def collect_until(
    collector: ContainerCollector, condition: Callable[[Collection], bool], timeout: float = 30
) -> Collection:
    """Collect every half second until `condition` holds for a collection."""

    async def poll() -> Collection:
        while True:
            collection = await collector.collect()
            if condition(collection):
                return collection
            await asyncio.sleep(0.5)

    return await asyncio.wait_for(poll(), timeout)


def check_of(collection: Collection, target: str) -> Check | None:
    return next((c for c in collection.checks if c.target == target and c.event is None), None)


def sample(collection: Collection, name: str, container: str | None = None) -> float | None:
    for s in collection.samples:
        if s.name == name and (container is None or s.labels.get("container") == container):
            return s.value
    return None


def config(containers: Containers, **more: object) -> ContainerAgentConfig:
    return ContainerAgentConfig(filter_labels=[containers.label], **more)  # type: ignore[arg-type]


# every cycle -----------------------------------------------------------------------------------


async def test_cycle_reports_state_health_restarts_exit_codes_and_resources(containers: Containers) -> None:
    await containers.run("healthy", "sleep", "600", options=(*HEALTHY, "--memory", "64m"))
    await containers.run("unhealthy", "sleep", "600", options=UNHEALTHY)
    await containers.run("crash", "sh", "-c", "exit 3", options=("--restart", "always"))
    await containers.run("oom", "sh", "-c", OOM, options=("--memory", "8m", "--memory-swap", "8m"))
    await containers.run("job", "true")
    name = containers.name
    collector = ContainerCollector(config(containers))

    def settled(c: Collection) -> bool:
        states = {t: check_of(c, name(t)) for t in ("healthy", "unhealthy", "crash", "oom", "job")}
        return (
            all(states.values())
            and states["healthy"].status == "ok"  # type: ignore[union-attr]
            and "healthy" in states["healthy"].detail  # type: ignore[union-attr]
            and states["unhealthy"].status == "critical"  # type: ignore[union-attr]
            and states["crash"].status == "critical"  # type: ignore[union-attr]
            and (sample(c, "container.restart_count", name("crash")) or 0) >= 2
            and states["oom"].status == "critical"  # type: ignore[union-attr]
            and sample(c, "container.exit_code", name("oom")) == 137
            and "completed" in states["job"].detail  # type: ignore[union-attr]
            # read between two runs of its 1 s health check, whose exec counts in its pids (7 seen)
            and sample(c, "container.pids", name("healthy")) == 1
        )

    try:
        collection = await collect_until(collector, settled)
    finally:
        await collector.close()

    assert (check_of(collection, name("oom")) or Check("", "ok")).status == "critical"
    assert sample(collection, "container.exit_code", name("oom")) == 137
    assert sample(collection, "container.exit_code", name("crash")) == 3
    assert sample(collection, "container.healthy", name("healthy")) == 1
    assert sample(collection, "container.healthy", name("unhealthy")) == 0
    assert sample(collection, "container.healthy", name("job")) is None  # no health check
    assert sample(collection, "container.running", name("healthy")) == 1
    assert sample(collection, "container.running", name("job")) == 0
    assert sample(collection, "container.mem.limit_bytes", name("healthy")) == 64 * 1024**2
    assert 0 < (sample(collection, "container.mem.used_bytes", name("healthy")) or 0) < 64 * 1024**2
    cpu = sample(collection, "container.cpu.percent", name("healthy"))
    assert cpu is not None  # 0.0 is a reading: `sleep` between two health checks is idle
    assert cpu >= 0
    assert sample(collection, "container.pids", name("healthy")) == 1
    assert (sample(collection, "container.uptime_seconds", name("healthy")) or 0) > 0
    assert sample(collection, "containers.unhealthy") == 1
    assert sample(collection, "containers.stopped") == 2  # the OOM-killed one and the finished job
    docker_check = check_of(collection, DOCKER_TARGET)
    assert docker_check is not None
    assert docker_check.status == "ok"
    healthy = check_of(collection, name("healthy"))
    assert healthy is not None
    assert healthy.labels["image"] == "jarvis-test/busybox:1"
    assert len(healthy.labels["id"]) == 12
    for s in collection.samples:
        assert s.name in METRICS, f"{s.name} is emitted but not declared"
        assert set(s.labels) == set(METRICS[s.name].labels), s


# events ----------------------------------------------------------------------------------------


async def test_events_are_published_as_they_happen(containers: Containers) -> None:
    collector = ContainerCollector(config(containers))
    name = containers.name
    async with watching(collector) as events:
        await containers.run("healthy", "sleep", "600", options=HEALTHY)
        await containers.run("unhealthy", "sleep", "600", options=UNHEALTHY)
        await containers.run("crash", "sh", "-c", "exit 3", options=("--restart", "on-failure:2"))
        await containers.run("oom", "sh", "-c", OOM, options=("--memory", "8m", "--memory-swap", "8m"))
        await wait_until(lambda: bool(events.find(name("healthy"), "health_status")), timeout=15)
        await docker("stop", "-t", "1", name("healthy"))
        await docker("rm", name("healthy"))

        def seen(target: str, event: str, status: str) -> Callable[[], bool]:
            return lambda: any(c.status == status for c in events.find(name(target), event))

        await wait_until(seen("unhealthy", "health_status", "critical"), timeout=15)
        await wait_until(seen("crash", "die", "critical"), timeout=15)
        await wait_until(seen("oom", "oom", "critical"), timeout=15)
        await wait_until(seen("healthy", "stop", "critical"), timeout=15)
        await wait_until(seen("healthy", "destroy", "ok"), timeout=15)

    assert events.find(name("healthy"), "start")[0].status == "ok"
    assert events.find(name("crash"), "die")[0].labels["exit_code"] == "3"
    assert {c.labels["image"] for c in events.find(name("oom"), "oom")} == {"jarvis-test/busybox:1"}


async def test_a_container_recreated_from_a_new_image_is_announced_as_deployed(
    containers: Containers,
) -> None:
    name = containers.name("app")
    await containers.run("app", "sleep", "600")
    watched = ContainerCollector(config(containers))
    unwatched = ContainerCollector(config(containers))  # sees it only through its cycles
    await unwatched.collect()
    try:
        async with watching(watched) as events:
            await watched.collect()  # learns the current image
            await docker("rm", "-f", name)
            await containers.run("app", "sleep", "600", image=IMAGE_2)
            await wait_until(lambda: bool(events.find(name, "deployed")), timeout=10)
        cycle = await unwatched.collect()
    finally:
        await unwatched.close()

    (deployed,) = events.find(name, "deployed")
    assert (deployed.status, deployed.detail) == ("ok", f"deployed {IMAGE_2}")
    assert deployed.labels["previous_image"] == "jarvis-test/busybox:1"
    assert [c.detail for c in cycle.checks if c.event == "deployed"] == [f"deployed {IMAGE_2}"]


# logs ------------------------------------------------------------------------------------------


async def test_matching_log_lines_are_counted_per_interval_and_quoted_and_a_restart_is_followed(
    containers: Containers,
) -> None:
    by_name, by_label = containers.name("spew"), containers.name("labelled")
    await containers.run("spew", "sh", "-c", SPEW)
    await containers.run("labelled", "sh", "-c", SPEW, options=("--label", "jarvis.logs=true"))
    await containers.run("quiet", "sh", "-c", SPEW)  # not selected: never followed
    logs = LogWatchConfig(containers=[by_name], labels=["jarvis.logs=true"], keep_lines=2, burst_errors=1)
    collector = ContainerCollector(config(containers, logs=logs))

    def errors(c: Collection, name: str) -> float:
        return sample(c, "container.log.errors", name) or 0

    async with watching(collector) as events:
        await collector.collect()  # starts the followers
        first = await collect_until(
            collector,
            lambda c: (
                min(
                    errors(c, by_name), errors(c, by_label), sample(c, "container.log.warnings", by_name) or 0
                )
                > 0
            ),
        )
        await docker("restart", "-t", "0", by_name)
        await collector.collect()  # drains what came before the restart
        after = await collect_until(collector, lambda c: errors(c, by_name) > 0)

    assert sample(first, "container.log.errors", containers.name("quiet")) is None
    warnings = sample(first, "container.log.warnings", by_name) or 0
    assert abs(warnings - errors(first, by_name)) <= 1  # one of each per loop
    (log_check,) = [c for c in first.checks if c.target == f"log:{by_name}"]
    assert (log_check.status, log_check.event) == ("warning", "log")
    lines = log_check.detail.splitlines()
    assert len(lines) == 3  # the counts, then the last two matching lines
    assert "ERROR db down at postgres://***@db/x" in lines[1:]
    assert "s3cret" not in log_check.detail
    assert errors(after, by_name) > 0  # followed again after the restart
    assert [c.status for c in events.find(by_name, "restart")] == ["warning"]


async def test_log_followers_leave_the_request_connections_to_inspect_and_list(
    containers: Containers,
) -> None:
    """A followed log holds its connection while the container runs; taken from the request pool
    (100), a hundred followed containers would leave every inspect waiting until it timed out."""
    await containers.run("spew1", "sh", "-c", SPEW)
    await containers.run("spew2", "sh", "-c", SPEW)
    logs = LogWatchConfig(containers=[containers.name("spew*")])
    collector = ContainerCollector(config(containers, logs=logs))
    async with watching(collector):
        await collector.collect()  # starts the followers
        await collect_until(
            collector, lambda c: (sample(c, "container.log.errors", containers.name("spew2")) or 0) > 0
        )
        assert collector.logs.following == 2
        assert collector._docker is not None
        # what stays acquired on the request client between cycles: the event stream alone
        assert len(collector._docker.connector._acquired) == 1


# the acceptance check, through a real nats-server ------------------------------------------------


async def test_unhealthy_and_stopped_containers_reach_nats_as_critical_within_10s(
    containers: Containers, bus: Bus, nats_server: EmbeddedServer, prefix: str
) -> None:
    stopped, sick = containers.name("stopme"), containers.name("sick")
    await containers.run("stopme", "sleep", "600", options=HEALTHY)
    agent_config = config(containers, interval=Duration(2))
    collector = ContainerCollector(agent_config)
    runner = AgentRunner(collector, bus, agent_config, "web01")
    client = await nats.connect(nats_server.url)
    health: list[HealthEvent] = []
    batches: list[MetricBatch] = []

    async def on_health(msg: Msg) -> None:
        health.append(health_event.decode(msg.data))

    async def on_metrics(msg: Msg) -> None:
        batches.append(metric_batch.decode(msg.data))

    await client.subscribe(f"{prefix}.health.web01.container.>", cb=on_health)
    await client.subscribe(f"{prefix}.metrics.web01.container", cb=on_metrics)
    running = asyncio.create_task(runner.run())

    def count(name: str) -> float | None:
        return (
            next((s.value for s in reversed(batches[-1].samples) if s.name == name), None)
            if batches
            else None
        )

    def critical(name: str) -> bool:
        return any(e.target == name and e.status == "critical" for e in health)

    try:
        await wait_until(
            lambda: count("containers.running") == 1 and count("containers.unhealthy") == 0, timeout=15
        )
        before = (count("containers.running"), count("containers.stopped"))
        health.clear()
        await containers.run("sick", "sleep", "600", options=UNHEALTHY)
        await docker("stop", "-t", "1", stopped)
        await wait_until(lambda: critical(sick) and critical(stopped), timeout=10)
        await wait_until(
            lambda: count("containers.unhealthy") == 1 and count("containers.stopped") == 1, timeout=10
        )
    finally:
        runner.stop()
        await running
        await client.close()

    assert before == (1, 0)
    assert count("containers.running") == 1  # the sick one; the stopped one went
    sick_event = next(e for e in health if e.target == sick and e.status == "critical")
    assert sick_event.host == "web01"
    assert sick_event.labels["image"] == "jarvis-test/busybox:1"


# hostile names ---------------------------------------------------------------------------------


async def test_dotted_and_long_container_names_become_one_token_and_arrive_intact(
    containers: Containers,
) -> None:
    dotted = containers.name("my.app.v2")
    long = containers.name("x" * 200)
    agent_config = config(containers)
    publisher = RecordingPublisher()
    runner = AgentRunner(ContainerCollector(agent_config), publisher, agent_config, "web01")
    running = asyncio.create_task(runner.run())
    try:
        await wait_until(lambda: bool(publisher.events("jarvis.health.web01.container.docker")), timeout=10)
        await containers.run("", "sleep", "600", name=dotted)
        await containers.run("", "sleep", "600", name=long)

        def arrived(name: str, event: str | None) -> bool:
            subject = f"jarvis.health.web01.container.{sanitize_token(name)}"
            return any(isinstance(e, HealthEvent) and e.event == event for e in publisher.events(subject))

        await wait_until(
            lambda: all(arrived(n, e) for n in (dotted, long) for e in ("start", None)), timeout=15
        )
    finally:
        runner.stop()
        await running

    for name in (dotted, long):
        token = sanitize_token(name)
        assert "." not in token
        assert len(token) <= 128
        events = publisher.events(f"jarvis.health.web01.container.{token}", HealthEvent)
        assert {e.target for e in events if isinstance(e, HealthEvent)} == {name}
    batch = publisher.events("jarvis.metrics.web01.container", MetricBatch)[-1]
    assert isinstance(batch, MetricBatch)
    assert {s.labels["container"] for s in batch.samples if s.labels} >= {dotted, long}


# the engine going away -------------------------------------------------------------------------


def closed_socket(path: Path) -> str:
    """A unix socket path nobody listens on."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()
    return f"unix://{path}"


async def test_unreachable_engine_is_a_critical_docker_event_with_backoff_and_no_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", closed_socket(tmp_path / "docker.sock"))
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0)

    agent_config = ContainerAgentConfig(retry_max=Duration(4))
    collector = ContainerCollector(agent_config, sleep=sleep)
    publisher = RecordingPublisher()
    runner = AgentRunner(collector, publisher, agent_config, "web01")
    await runner.run_cycle()
    recorder = Recorder()
    watcher = asyncio.create_task(collector.watch(recorder))
    try:
        await wait_until(lambda: len(waits) >= 6, timeout=10)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    (cycle,) = publisher.events("jarvis.health.web01.container.docker", HealthEvent)
    assert isinstance(cycle, HealthEvent)
    assert cycle.status == "critical"
    assert "docker.sock" in cycle.detail
    assert not publisher.events("jarvis.health.web01.container._collector")  # collect never raised
    assert waits[:6] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    (reported,) = recorder.checks  # once per outage, not once per attempt
    assert (reported.target, reported.status, reported.event) == (DOCKER_TARGET, "critical", "disconnected")


async def test_engine_restart_is_reported_and_events_missed_meanwhile_are_published_late(
    containers: Containers, tmp_path: Path
) -> None:
    proxy = EngineProxy(tmp_path / "engine.sock")
    await proxy.start()
    talker = containers.name("talker")
    logs = LogWatchConfig(containers=[talker])
    collector = ContainerCollector(config(containers, docker_url=proxy.url, retry_max=Duration(1), logs=logs))
    before, during, after = containers.name("before"), containers.name("during"), containers.name("after")

    def count(c: Collection, name: str) -> float:
        return sample(c, name, talker) or 0

    try:
        async with watching(collector) as events:
            await containers.run("before", "sleep", "600")
            await containers.run(
                "talker", "sh", "-c", "echo ERROR once; while true; do echo WARNING; sleep 0.3; done"
            )
            await wait_until(lambda: bool(events.find(before, "start")), timeout=10)
            await collect_until(collector, lambda c: count(c, "container.log.errors") == 1)
            await proxy.stop()
            await wait_until(lambda: bool(events.find(DOCKER_TARGET, "disconnected")), timeout=10)
            outage = await collector.collect()
            await containers.run("during", "sh", "-c", "exit 5")  # while the agent is cut off
            await proxy.start()
            await wait_until(lambda: len(events.find(DOCKER_TARGET, "connected")) == 2, timeout=10)
            await wait_until(lambda: bool(events.find(during, "die")), timeout=10)
            await containers.run("after", "sleep", "600")
            await wait_until(lambda: bool(events.find(after, "start")), timeout=10)
            cycles = [await collector.collect()]
            # the log is followed again once new lines come in; the old ERROR must not count twice
            cycles.append(await collect_until(collector, lambda c: count(c, "container.log.warnings") > 0))
    finally:
        await proxy.stop()

    assert [c.status for c in events.find(DOCKER_TARGET)] == ["ok", "critical", "ok"]
    assert [c.status for c in outage.checks] == ["critical"]
    assert [c.detail for c in events.find(during, "die")] == ["died with exit code 5"]
    assert len(events.find(before, "start")) == 1  # resumed after the last event: no repeats
    assert sample(cycles[0], "container.running", after) == 1
    assert [count(c, "container.log.errors") for c in cycles] == [0, 0]
