"""No message can stop a consumer: poisoned and oversized inputs are set aside with their reason,
the next breach is notified within its timers (before and after a restart), and a notification
too big for max_payload is delivered in parts that each fit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js.api import DeliverPolicy

from bus import deadletter
from bus.config import StreamsConfig
from bus.connection import Bus
from bus.events import (
    SUBJECT_MISMATCH,
    HealthEvent,
    Heartbeat,
    MetricBatch,
    Notification,
    Sample,
    encode,
    notification,
)
from bus.jetstream import provision
from bus.payload import payload_limit
from bus.units import Duration
from evaluator.config import DefaultRoute, EvaluatorConfig, Rule
from evaluator.service import EvaluatorService
from sinks.report.config import ReportSinkConfig
from sinks.report.rollups import STORE_FILE, RollupStore
from sinks.report.service import ReportSink
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
RULE = Rule(name="disk_full", metric="disk.percent", threshold=85, severity="critical", summary="{host}")


def config(**route: object) -> EvaluatorConfig:
    settings: dict[str, object] = {"group_wait": Duration(0.5), "group_interval": Duration(0.5), **route}
    return EvaluatorConfig(
        default_rules=False,
        default_inhibit_rules=False,
        rules=[RULE],
        default_route=DefaultRoute(**settings),  # type: ignore[arg-type]
    )


class Notes:
    """Notifications as the stream stores them, with each stored payload's size."""

    def __init__(self) -> None:
        self.items: list[Notification] = []
        self.sizes: list[int] = []

    async def follow(self, bus: Bus) -> None:
        async def on(msg: object) -> None:
            data = msg.data  # type: ignore[attr-defined]
            self.sizes.append(len(data))
            self.items.append(notification.decode(data))

        await bus.nc.jetstream().subscribe(
            bus.subjects.family("notifications"),
            cb=on,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )

    def hosts(self) -> set[str]:
        return {a.labels["host"] for n in self.items if n.status == "firing" for a in n.alerts}


async def dead_letters(bus: Bus) -> list[deadletter.DeadLetter]:
    js = bus.nc.jetstream()
    sub = await js.subscribe(
        bus.subjects.family("deadletter"), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    letters: list[deadletter.DeadLetter] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except TimeoutError:
                return letters
            letters.append(deadletter.read(msg))
    finally:
        await sub.unsubscribe()


def breach(host: str) -> MetricBatch:
    return MetricBatch(
        host=host,
        agent="host",
        ts=time.time(),
        interval=10,
        samples=[Sample("disk.percent", 95.0, {"mount": "/"})],
    )


async def poison(bus: Bus) -> None:
    """A valid-looking event with a 400 KB host name, and garbage, on the evaluator's input."""
    subject = bus.subjects.metrics("web01", "host")
    huge = encode(breach("h" * 400_000))
    await bus.nc.jetstream().publish(subject, huge)
    await bus.nc.jetstream().publish(subject, b"\x00 not json")


async def run(service: EvaluatorService) -> asyncio.Task[None]:
    task = asyncio.create_task(service.run())
    await asyncio.wait_for(service.ready.wait(), TIMEOUT)
    return task


async def stop(service: EvaluatorService, task: asyncio.Task[None]) -> None:
    service.stop()
    await asyncio.wait_for(task, TIMEOUT)


@contextlib.asynccontextmanager
async def reporting(bus: Bus, data_dir: Path, batch_size: int) -> AsyncIterator[ReportSink]:
    """A report sink running beside the test, stopped and awaited on exit."""
    report = ReportSink(ReportSinkConfig(batch_size=batch_size), bus, data_dir)
    task = asyncio.create_task(report.run())
    try:
        yield report
    finally:
        report.stop()
        await asyncio.wait_for(task, TIMEOUT)


def stored(data_dir: Path) -> RollupStore:
    return RollupStore(data_dir / STORE_FILE, readonly=True)


async def test_poison_is_set_aside_and_the_next_breach_is_notified_before_and_after_a_restart(
    bus: Bus, tmp_path: Path
) -> None:
    await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
    notes = Notes()
    await notes.follow(bus)
    async with reporting(bus, tmp_path, 50) as report:
        service = EvaluatorService(config(), bus)
        task = await run(service)
        try:
            await poison(bus)
            await bus.nc.jetstream().publish(bus.subjects.metrics("web01", "host"), encode(breach("web01")))
            await wait_until(lambda: "web01" in notes.hosts(), TIMEOUT)
            assert service.stats.undecodable == 2
            assert service.rejections.by_reason["Expected `str` of length <= N - at `$.host`"] == 1
            await stop(service, task)

            service = EvaluatorService(config(), bus)  # restarted: the poison is not met again
            task = await run(service)
            await poison(bus)
            await bus.nc.jetstream().publish(bus.subjects.metrics("web02", "host"), encode(breach("web02")))
            await wait_until(lambda: "web02" in notes.hosts(), TIMEOUT)
            await wait_until(lambda: report.stats.malformed == 4, TIMEOUT)
        finally:
            await stop(service, task)
    letters = await dead_letters(bus)
    inputs = [letter for letter in letters if letter.subject == bus.subjects.dead_letter("input", "metrics")]
    assert len(inputs) == 4, "each poisoned message kept once, though two consumers refused it"
    assert {letter.by for letter in inputs} <= {"evaluator", "report"}
    assert any("$.host" in letter.reason for letter in inputs)
    assert all(letter.original_subject == bus.subjects.metrics("web01", "host") for letter in inputs)


async def test_an_event_speaking_for_another_host_or_part_than_its_subject_is_set_aside(bus: Bus) -> None:
    """An agent may publish on its own subjects only; a body naming the Slack sink on mon01 would
    keep that sink's agent_down from ever firing, and land in another partition's series."""
    await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
    notes = Notes()
    await notes.follow(bus)
    service = EvaluatorService(config(), bus)
    task = await run(service)
    js = bus.nc.jetstream()
    try:
        forged = Heartbeat(host="mon01", agent="slack", version="x", interval=10, ts=time.time())
        await js.publish(bus.subjects.heartbeat("web01", "host"), encode(forged))
        await js.publish(bus.subjects.metrics("web01", "host"), encode(breach("web02")))
        await js.publish(bus.subjects.metrics("web01", "host"), encode(breach("web01")))
        await wait_until(lambda: "web01" in notes.hosts(), TIMEOUT)
        assert service.rejections.by_reason[SUBJECT_MISMATCH] == 2
        assert "web02" not in notes.hosts()
    finally:
        await stop(service, task)
    letters = [letter for letter in await dead_letters(bus) if letter.reason == SUBJECT_MISMATCH]
    assert sorted(letter.original_subject for letter in letters) == sorted(
        [bus.subjects.heartbeat("web01", "host"), bus.subjects.metrics("web01", "host")]
    )


async def test_the_report_sink_sets_aside_a_check_speaking_for_another_host(bus: Bus, tmp_path: Path) -> None:
    """A check on web01's subject that names db01's database would count in db01's SLA."""
    await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
    js = bus.nc.jetstream()
    now = time.time()
    async with reporting(bus, tmp_path, 1) as report:
        forged = HealthEvent(host="db01", agent="probe", target="database", status="critical", ts=now)
        await js.publish(bus.subjects.health("web01", "probe", "backend"), encode(forged))
        genuine = HealthEvent(host="web01", agent="probe", target="backend", status="ok", ts=now)
        await js.publish(bus.subjects.health("web01", "probe", "backend"), encode(genuine))
        await wait_until(lambda: report.stats.messages == 2, TIMEOUT)
        assert report.rejections.by_reason[SUBJECT_MISMATCH] == 1
    store = stored(tmp_path)
    hours = store.health_hours(now - 7200, now + 3600)
    store.close()
    assert {(hour.host, hour.target) for hour in hours} == {("web01", "backend")}
    [letter] = [letter for letter in await dead_letters(bus) if letter.reason == SUBJECT_MISMATCH]
    assert letter.by == "report"


async def test_one_bad_sample_does_not_take_the_rest_of_its_batch_with_it(bus: Bus, tmp_path: Path) -> None:
    """Refused whole every cycle, a batch with one bad sample would leave the host's other metrics
    stale, and their alerts would resolve while the disk stays full; and out of the report."""
    await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
    notes = Notes()
    await notes.follow(bus)
    sent = breach("web01")
    async with reporting(bus, tmp_path, 1) as report:
        service = EvaluatorService(config(), bus)
        task = await run(service)
        try:
            good = encode(sent).decode()
            bad = good.replace('"samples":[', '"samples":[{"name":"mem.percent","value":1e999},', 1)
            assert bad != good
            await bus.nc.jetstream().publish(bus.subjects.metrics("web01", "host"), bad.encode())
            await wait_until(lambda: "web01" in notes.hosts(), TIMEOUT)
            await wait_until(lambda: report.stats.malformed == 1, TIMEOUT)
        finally:
            await stop(service, task)
    (letter,) = [letter for letter in await dead_letters(bus) if letter.reason.startswith("samples refused")]
    assert letter.reason == "samples refused, the others taken in: Number out of range - at `$.value`"
    store = stored(tmp_path)
    [disk] = store.metric_hours(sent.ts - 3600, sent.ts + 3600, ["disk.percent"])
    store.close()
    assert (disk.host, disk.count, disk.high) == ("web01", 1, 95.0)


async def test_a_2500_host_group_is_delivered_in_parts_that_each_fit(bus: Bus) -> None:
    await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
    notes = Notes()
    await notes.follow(bus)
    service = EvaluatorService(config(group_by=["rule"], group_wait=Duration(3)), bus)
    task = await run(service)
    hosts = [f"jarvis-worker-{n:05d}.cluster-a.example.internal" for n in range(2500)]
    try:
        js = bus.nc.jetstream()
        for start in range(0, len(hosts), 250):
            await asyncio.gather(
                *(
                    js.publish(bus.subjects.metrics(h, "host"), encode(breach(h)))
                    for h in hosts[start : start + 250]
                )
            )
        await wait_until(lambda: notes.hosts() == set(hosts), 60)
    finally:
        await stop(service, task)
    parts = [n for n in notes.items if n.status == "firing"]
    assert len(parts) > 1, "one notification would be over max_payload"
    assert max(notes.sizes) <= payload_limit(bus.nc.max_payload)
    assert {n.parts for n in parts} == {len(parts)}
    assert sorted(n.part for n in parts) == list(range(1, len(parts) + 1))
    assert sum(len(n.alerts) for n in parts) == 2500
