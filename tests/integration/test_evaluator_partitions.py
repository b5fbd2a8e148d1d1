"""Partitioned evaluators on a real nats-server: the server splits the hosts as the evaluator
expects, two evaluators share the partitions and notify each breach once, the one left takes the
other's partitions over with their state, and `alerts` lists every partition's alerts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.js.manager import JetStreamManager

from bus.connection import Bus
from bus.events import Heartbeat, MetricBatch, Sample
from bus.jetstream import stream_name
from bus.kvblob import BlobStore
from bus.partitions import (
    INPUT_TOKENS,
    ensure_partition_streams,
    host_partition,
    original_subject,
    partition_of,
    partition_stream,
)
from bus.records import ActiveAlert, ActiveAlerts, load_active, save_active, save_partitions
from evaluator import service
from evaluator.partitions import PartitionedEvaluator
from evaluator.store import open_buckets
from tests.integration.test_evaluator_service import (
    DISK_RULE,
    HEARTBEAT_EVERY,
    TIMEOUT,
    Agent,
    Recorder,
    evaluator_config,
    provisioned,
    service_in_process,
)
from tests.integration.test_poison import dead_letters

pytestmark = pytest.mark.integration

PARTITIONS = 2
HOSTS = [f"web-{n}" for n in range(8)]


async def test_the_server_puts_each_host_on_the_partition_the_evaluator_computes(bus: Bus) -> None:
    """Every family's subjects, hostile host names included, land in partition(N, host token), as
    partition_of says, under a subject that gives the original back, with the family's sequence
    and time and no header."""
    await provisioned(bus)
    partitions = 5
    prefix = bus.subjects.prefix
    await ensure_partition_streams(bus.nc.jetstream(), prefix, partitions)
    hosts = [*HOSTS, "db.prod*1", "host with spaces", "ünïcode", "x" * 200]
    published: dict[str, list[str]] = {"metrics": [], "heartbeat": []}
    for host in hosts:
        batch = MetricBatch(
            host=host, agent="host", ts=1.0, interval=10.0, samples=[Sample("cpu.percent", 1.0)]
        )
        published["metrics"].append(bus.subjects.metrics(host, "host"))
        await bus.publish(published["metrics"][-1], batch)
        published["heartbeat"].append(bus.subjects.heartbeat(host, "probe"))
        beat = Heartbeat(host=host, agent="probe", version="t", interval=10.0, ts=1.0)
        await bus.publish(published["heartbeat"][-1], beat)
    js = bus.nc.jetstream()
    for family, subjects in published.items():
        originals = await js.subscribe(bus.subjects.family(family), ordered_consumer=True)
        copies = await js.subscribe(
            f"{prefix}.partition.>", stream=partition_stream(prefix, family), ordered_consumer=True
        )
        stored = [await copies.next_msg(timeout=TIMEOUT) for _ in subjects]
        source = [await originals.next_msg(timeout=TIMEOUT) for _ in subjects]
        await copies.unsubscribe()
        await originals.unsubscribe()
        assert [original_subject(prefix, m.subject) for m in stored] == subjects
        for copy, msg in zip(stored, source, strict=True):
            host_token = original_subject(prefix, copy.subject).split(".")[2]
            assert copy.subject.split(".")[2] == str(partition_of(host_token, partitions)), copy.subject
            assert copy.headers is None
            copied, original = copy.metadata, msg.metadata
            assert (copied.sequence.stream, copied.timestamp) == (
                original.sequence.stream,
                original.timestamp,
            )
        assert len({msg.subject.split(".")[2] for msg in stored}) > 1, "every host on one partition"


async def test_a_change_of_partitions_makes_the_mirrors_again(bus: Bus) -> None:
    await provisioned(bus)
    js, prefix = bus.nc.jetstream(), bus.subjects.prefix
    names = [partition_stream(prefix, family) for family in INPUT_TOKENS]
    assert await ensure_partition_streams(js, prefix, 2) == dict.fromkeys(names, "created")
    assert await ensure_partition_streams(js, prefix, 2) == dict.fromkeys(names, "unchanged")
    assert await ensure_partition_streams(js, prefix, 3) == dict.fromkeys(names, "updated")
    for name in names:
        mirror = (await js.stream_info(name)).config.mirror
        assert mirror is not None
        assert all("partition(3,1)" in (t.dest or "") for t in mirror.subject_transforms or [])


async def test_alerts_lists_the_active_alerts_of_every_partition(bus: Bus) -> None:
    state, _ = await open_buckets(bus.nc.jetstream(), bus.subjects.prefix)
    blobs = BlobStore(state.blobs.kv)

    def active(host: str) -> ActiveAlert:
        return ActiveAlert(
            fingerprint=host, rule=DISK_RULE, severity="critical", state="firing", labels={"host": host},
            summary="full", value=95.0, since=1.0, silenced_by=[], inhibited_by=[], acked=False,
            flapping=False,
        )  # fmt: skip

    await save_active(blobs, ActiveAlerts(ts=5.0, alerts=[active("old")]))  # before partitioning
    await save_active(blobs, ActiveAlerts(ts=10.0, alerts=[active("a")]), 0)
    await save_active(blobs, ActiveAlerts(ts=9.0, alerts=[active("b"), active("c")]), 1)
    loaded = await load_active(blobs)
    assert loaded is not None
    assert [a.fingerprint for a in loaded.alerts] == ["old"]
    await save_partitions(blobs, 2)
    loaded = await load_active(blobs)
    assert loaded is not None
    assert sorted(a.fingerprint for a in loaded.alerts) == ["a", "b", "c"]
    assert loaded.ts == 9.0  # as fresh as the partition written longest ago
    await save_partitions(blobs, 1)  # back to one evaluator
    loaded = await load_active(blobs)
    assert loaded is not None
    assert [a.fingerprint for a in loaded.alerts] == ["old"]


@contextlib.asynccontextmanager
async def evaluating(bus: Bus) -> AsyncIterator[tuple[PartitionedEvaluator, asyncio.Task[None]]]:
    config = msgspec.structs.replace(evaluator_config(), partitions=PARTITIONS)
    evaluator = PartitionedEvaluator(config, bus)
    task = asyncio.create_task(evaluator.run())
    try:
        yield evaluator, task
    finally:
        evaluator.stop()
        await asyncio.wait_for(task, TIMEOUT)


async def test_two_evaluators_share_the_partitions_and_the_last_one_takes_them_all(bus: Bus) -> None:
    """The first evaluator takes both partitions, hands one to the second when it comes; breaches
    on hosts of both partitions are notified once; after the second stops, the first evaluates its
    partition from its saved state: a breach there is notified, the earlier ones are not again."""
    await provisioned(bus)
    by_partition = {p: [h for h in HOSTS if host_partition(h, PARTITIONS) == p] for p in (0, 1)}
    assert all(len(hosts) >= 2 for hosts in by_partition.values()), by_partition
    agents = {host: Agent(bus, host) for host in HOSTS}
    async with contextlib.AsyncExitStack() as stack, Recorder.on(bus) as recorder:
        for agent in agents.values():
            agent.start()
            stack.push_async_callback(agent.stop)
        first, _ = await stack.enter_async_context(evaluating(bus))
        await recorder.wait_for(lambda: len(first.share.held) == PARTITIONS, "the first to take both")
        async with evaluating(bus) as (second, _):
            await recorder.wait_for(
                lambda: len(first.share.held) == 1 and len(second.share.held) == 1, "one partition each"
            )
            assert first.share.held != second.share.held
            breached = [by_partition[0][0], by_partition[1][0]]
            for host in breached:
                agents[host].disk = 95.0
            await recorder.wait_for(
                lambda: all(recorder.notified(h, "firing") for h in breached), "both breaches notified"
            )
            moved = next(iter(second.share.held))
        await recorder.wait_for(lambda: len(first.share.held) == PARTITIONS, "the first to take both again")
        late = by_partition[moved][1]
        agents[late].disk = 95.0
        await recorder.wait_for(lambda: recorder.notified(late, "firing"), "a breach after the takeover")
        fired = [a for a in recorder.alerts if a.rule == DISK_RULE and a.status == "firing"]
        assert sorted(a.labels["host"] for a in fired) == sorted({*breached, late})
        recorder.assert_nothing_twice()
        for host in breached:
            assert len(recorder.notified(host, "firing")) == 1, recorder.notified(host)


async def test_partitions_continue_what_one_evaluator_left_and_back(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One evaluator notifies two breaches and stops; both disks recover meanwhile. Two partitions
    take its hosts over and tell the first resolved (starting afresh, they would know of no breach
    to resolve); back to one evaluator, it starts from the partitions' state, not from what it
    saved itself before them."""
    monkeypatch.setattr(service, "LOOKBACK", 0.5)  # a fresh start would know only the recovery
    await provisioned(bus)
    web = [h for h in HOSTS if host_partition(h, PARTITIONS) == 0][:1]
    web += [h for h in HOSTS if host_partition(h, PARTITIONS) == 1][:1]
    agents = {host: Agent(bus, host, disk=95.0) for host in web}
    async with contextlib.AsyncExitStack() as stack, Recorder.on(bus) as recorder:
        for agent in agents.values():
            agent.start()
            stack.push_async_callback(agent.stop)
        async with service_in_process(bus):
            await recorder.wait_for(lambda: all(recorder.notified(h, "firing") for h in web), "both breaches")
        agents[web[0]].disk = 50.0
        await asyncio.sleep(2 * service.LOOKBACK)  # stored after the evaluator stopped: only 50 % now
        async with evaluating(bus):
            await recorder.wait_for(lambda: recorder.notified(web[0], "resolved"), "the first resolved")
        async with service_in_process(bus) as single:
            active = {a.labels["host"] for a in single.engine.active(time.time())}
            assert active == {web[1]}, "restored from its own state of before the partitions"
            agents[web[1]].disk = 50.0
            await recorder.wait_for(lambda: recorder.notified(web[1], "resolved"), "the second resolved")
        recorder.assert_nothing_twice()
        for host in web:
            assert len(recorder.notified(host, "firing")) == 1, recorder.notified(host)
            assert len(recorder.notified(host, "resolved")) == 1, recorder.notified(host)


async def test_garbage_on_a_partition_is_dead_lettered_under_the_subject_it_was_published_on(
    bus: Bus,
) -> None:
    """A partition refuses what does not decode, counts it, and keeps it under the agent's subject
    and the family stream's sequence (the id the report sink's letter of it has too); the next
    breach on that host is still notified."""
    await provisioned(bus)
    host = HOSTS[0]
    subject = bus.subjects.metrics(host, "host")
    async with Recorder.on(bus) as recorder, evaluating(bus) as (evaluator, _):
        await recorder.wait_for(lambda: len(evaluator.share.held) == PARTITIONS, "both partitions held")
        stored = await bus.nc.jetstream().publish(subject, b"\x00 not json")
        agent = Agent(bus, host, disk=95.0)
        agent.start()
        try:
            await recorder.wait_for(lambda: recorder.notified(host, "firing"), "a breach after the garbage")
        finally:
            await agent.stop()
        (letter,) = await dead_letters(bus)
        assert letter.original_subject == subject
        assert letter.by == "evaluator"
        assert letter.reason == "JSON is malformed: invalid character (byte 0)"
        assert evaluator.counters()["rejected"] == 1
    msg = await bus.nc.jetstream().get_msg(stream_name(bus.subjects.prefix, "deadletter"), letter.seq)
    assert (msg.headers or {})["Nats-Msg-Id"] == f"input-metrics-{stored.seq}"


async def test_while_the_input_streams_do_not_answer_no_agent_is_judged_silent(
    bus: Bus, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The family streams stop answering for their info, as one without a leader does (and drops
    what agents send): an agent that falls silent then is not reported down, though another's
    inputs keep time moving; once the streams answer again, it is, judged without the time they
    did not."""
    await provisioned(bus)
    families = {stream_name(bus.subjects.prefix, family) for family in INPUT_TOKENS}
    unanswered, answered = asyncio.Event(), asyncio.Event()
    stream_info = JetStreamManager.stream_info

    async def info_of(manager: JetStreamManager, name: str, subjects_filter: str | None = None) -> object:
        if unanswered.is_set() and name in families:
            await answered.wait()
        return await stream_info(manager, name, subjects_filter)

    monkeypatch.setattr(JetStreamManager, "stream_info", info_of)
    quiet, busy = [h for h in HOSTS if host_partition(h, PARTITIONS) == 0][:2]
    agents = {host: Agent(bus, host) for host in (quiet, busy)}
    async with contextlib.AsyncExitStack() as stack, Recorder.on(bus) as recorder:
        for agent in agents.values():
            agent.start()
            stack.push_async_callback(agent.stop)
        evaluator, _ = await stack.enter_async_context(evaluating(bus))
        partition = evaluator.services[0]
        await recorder.wait_for(lambda: partition.stats.evaluated >= 20, "both agents evaluated")
        unanswered.set()
        await agents[quiet].stop()
        silent_from, evaluated = time.time(), partition.stats.evaluated
        await recorder.wait_for(
            lambda: any("may miss messages" in record.getMessage() for record in caplog.records),
            "the evaluator to take its inputs for unsure",
        )
        await recorder.wait_for(
            lambda: (
                time.time() > silent_from + 10 * HEARTBEAT_EVERY and partition.stats.evaluated > evaluated
            ),
            "the quiet agent's deadline long past, the busy agent's inputs evaluated meanwhile",
        )
        assert not recorder.alerts_of(quiet, "agent_down"), "judged silent while the streams did not answer"

        unanswered.clear()
        answered.set()
        answering_from = time.time()
        await recorder.wait_for(lambda: recorder.alerts_of(quiet, "agent_down"), "the quiet one told down")
        (down,) = recorder.alerts_of(quiet, "agent_down")
        assert down.starts_at >= answering_from, "its silence was judged from before the streams answered"
        assert not recorder.alerts_of(busy, "agent_down")
