"""deploy/nats-cluster/ on three real nats-servers, bus.replicas, and the pipeline surviving the
loss of a node and of its evaluator: every breach notified once, none lost, none twice."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import msgspec
import nats.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, NotFoundError

from bus.config import BusConfig, StreamsConfig
from bus.connection import Bus, connect
from bus.events import HealthEvent, Heartbeat, MetricBatch, Notification, Sample, notification
from bus.jetstream import FAMILIES, KV_BUCKETS, ProvisioningError, bucket_name, provision, stream_name
from bus.partitions import INPUT_TOKENS, host_partition, partition_stream
from bus.server import EmbeddedServer
from evaluator.store import LEASE_KEY, LeaseRecord, partition_namespace
from tests.conftest import nats_server_binary
from tests.integration.nats_cluster import AUTHORIZATION, CLUSTER, DEPLOY, NODES, Cluster
from tests.integration.test_evaluator_service import DISK_RULE, EvaluatorProcess

pytestmark = pytest.mark.integration

ROLES = ("AGENT", "EVALUATOR", "SLACK", "REPORT", "OPERATOR", "VIEWER")
TIMEOUT = 30.0
HOSTS = 100
CONNECTIONS = 4  # the fleet's agents share a few connections, spread over the nodes
INTERVAL = 2.0  # the agents' cycle: long enough that a reconnection is no missed heartbeat
BREACHES = 10  # hosts that breach in each phase


def all_stream_names(prefix: str) -> list[str]:
    """Every stream provisioning makes, the KV buckets' included."""
    streams = [stream_name(prefix, family) for family in (*FAMILIES, "deadletter")]
    return streams + [f"KV_{bucket_name(prefix, bucket)}" for bucket in KV_BUCKETS]


@pytest.fixture
def binary() -> str:
    return nats_server_binary()


@contextlib.asynccontextmanager
async def running(cluster: Cluster) -> AsyncIterator[Cluster]:
    cluster.start_all()
    try:
        await cluster.wait_formed()
        yield cluster
    finally:
        cluster.stop_all()


# --- the shipped configuration ------------------------------------------------------------------


def test_each_shipped_node_config_is_accepted_by_nats_server(tmp_path: Path, binary: str) -> None:
    """deploy/nats-cluster/ exactly as shipped, installed beside the shared authorization file and
    the passwords template as deploy/README.md says: `nats-server -t` takes every node's file."""
    shutil.copytree(CLUSTER, tmp_path / "nats-cluster")
    shutil.copy(DEPLOY / AUTHORIZATION, tmp_path)
    shutil.copy(DEPLOY / "jarvis-passwords.example.conf", tmp_path / "jarvis-passwords.conf")
    for node in NODES:
        result = subprocess.run(
            [binary, "-c", str(tmp_path / "nats-cluster" / f"{node}.conf"), "-t"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, f"{node}: {result.stdout}{result.stderr}"


def test_the_cluster_and_the_single_node_share_one_authorization_file() -> None:
    """The permissions are written once: both configurations include the same file, and neither
    has an authorization block of its own."""
    block = re.compile(r"^\s*authorization\s*\{", re.MULTILINE)
    single = (DEPLOY / "nats-server.conf").read_text()
    common = (CLUSTER / "common.conf").read_text()
    nodes = [(CLUSTER / f"{node}.conf").read_text() for node in NODES]
    assert f'include "{AUTHORIZATION}"' in single
    assert f'include "../{AUTHORIZATION}"' in common
    assert all('include "common.conf"' in node for node in nodes)
    assert not any(block.search(text) for text in (single, common, *nodes))
    assert block.search((DEPLOY / AUTHORIZATION).read_text())


async def test_the_shipped_cluster_forms_and_keeps_three_copies_under_the_shipped_users(
    tmp_path: Path, binary: str
) -> None:
    """The three nodes elect a JetStream meta leader; the evaluator's user provisions R1 then
    scales to R3 (bus.replicas = 3) with its permissions; an agent's publish is stored."""
    (tmp_path / "jarvis-passwords.conf").write_text(
        "".join(f'{role}_PASSWORD: "{role.lower()}-pw"\n' for role in ROLES)
    )
    async with running(Cluster(tmp_path, binary)) as cluster:
        evaluator_config = BusConfig(user="evaluator", inbox_prefix="_INBOX_evaluator", replicas=3)
        agent_config = BusConfig(user="agent", inbox_prefix="_INBOX_agent")
        environ = {"JARVIS_NATS_PASSWORD": "evaluator-pw"}
        evaluator = await connect(evaluator_config, "evaluator", servers=cluster.urls, environ=environ)
        agent = await connect(
            agent_config, "agent", servers=cluster.urls, environ={"JARVIS_NATS_PASSWORD": "agent-pw"}
        )
        try:
            js = evaluator.nc.jetstream()
            names = all_stream_names("jarvis")
            first = await provision(js, evaluator.subjects, StreamsConfig())
            assert set(first.values()) == {"created"}
            scaled = await provision(js, evaluator.subjects, StreamsConfig(), replicas=3)
            assert scaled == dict.fromkeys(first, "updated")
            for name in names:
                assert (await js.stream_info(name)).config.num_replicas == 3, name
                await wait_for(partial(copies_current, js, name, 3), f"{name}'s 3 copies")
            again = await provision(js, evaluator.subjects, StreamsConfig(), replicas=3)
            assert set(again.values()) == {"unchanged"}

            batch = MetricBatch(host="web01", agent="host", ts=time.time(), interval=10, samples=[])
            assert await agent.publish(agent.subjects.metrics("web01", "host"), batch)
            await agent.nc.flush()
            metrics = stream_name("jarvis", "metrics")
            await wait_for(lambda: messages_in(js, metrics, 1), "the agent's batch stored")
        finally:
            await agent.close()
            await evaluator.close()


async def copies_current(js: JetStreamContext, stream: str, copies: int) -> bool:
    """The stream's leader and its other copies are all up to date, on as many servers."""
    cluster = (await js.stream_info(stream)).cluster
    if cluster is None or not cluster.leader:
        return False
    peers = cluster.replicas or []
    return len(peers) == copies - 1 and all(peer.current for peer in peers)


async def messages_in(js: JetStreamContext, stream: str, count: int) -> bool:
    return (await js.stream_info(stream)).state.messages >= count


async def wait_for(
    condition: Callable[[], Awaitable[object]],
    what: str,
    timeout: float = TIMEOUT,
    missing: Callable[[], object] = lambda: None,
) -> None:
    """Poll the async `condition` until it holds; fail naming `what` (and what is `missing`) after
    `timeout`. A request that fails or times out (a node going, the client moving to another) is
    only a "not yet"."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            if await condition():
                return
        except (nats.errors.Error, TimeoutError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout:g}s waiting for {what} (missing: {missing()}; "
                f"last error: {last_error!r})"
            )
        await asyncio.sleep(0.2)


async def test_replicas_a_single_server_cannot_keep_are_refused_with_what_to_set(
    nats_server: EmbeddedServer, bus: Bus
) -> None:
    """bus.replicas = 3 against one nats-server: one message naming the streams and the fix."""
    with pytest.raises(ProvisioningError) as info:
        await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig(), replicas=3)
    (failure,) = info.value.failures
    assert "cannot keep 3 replicas: this nats-server is not part of a cluster" in failure
    assert "set bus.replicas = 1 for a single server" in failure
    for name in (stream_name(bus.subjects.prefix, "alerts"), bucket_name(bus.subjects.prefix, "state")):
        assert name in failure


# --- the pipeline through the loss of a node and of the active evaluator -------------------------

CONFIG_TOML = """
log_level = "info"
[bus]
servers = {servers}
prefix = "{prefix}"
replicas = 3
[agents.host]
enabled = false
[evaluator]
partitions = {partitions}
[evaluator.default_route]
name = "default"
receiver = "#alerts"
group_wait = "0s"
group_interval = "1s"
repeat_interval = "1h"
[[evaluator.rules]]
name = "{rule}"
metric = "disk.percent"
threshold = 85
clear_threshold = 80
for = "0s"
severity = "critical"
"""


class Fleet:
    """Agents of HOSTS hosts, a few connections each carrying many: every INTERVAL a host batch
    (disk, cpu, memory, load), a probe check, and both agents' heartbeats, per host."""

    def __init__(self, buses: list[Bus]) -> None:
        self.buses = buses
        self.hosts = [f"host{index:03d}" for index in range(HOSTS)]
        self.disk = dict.fromkeys(self.hosts, 40.0)
        self.cycles = 0
        self._task: asyncio.Task[None] | None = None

    async def publish_cycle(self) -> None:
        now = time.time()
        for index, host in enumerate(self.hosts):
            bus = self.buses[index % len(self.buses)]
            samples = [
                Sample("disk.percent", self.disk[host], {"mount": "/"}),
                Sample("cpu.percent", 12.0 + index % 7),
                Sample("mem.percent", 41.0),
                Sample("load.1", 0.4),
            ]
            subjects = bus.subjects
            await bus.publish(
                subjects.metrics(host, "host"),
                MetricBatch(host=host, agent="host", ts=now, interval=INTERVAL, samples=samples),
            )
            check = HealthEvent(host=host, agent="probe", target="api", status="ok", latency=0.01, ts=now)
            await bus.publish(subjects.health(host, "probe", "api"), check)
            for agent in ("host", "probe"):
                beat = Heartbeat(host=host, agent=agent, version="test", interval=INTERVAL, ts=now)
                await bus.publish(subjects.heartbeat(host, agent), beat)
        self.cycles += 1

    async def _run(self) -> None:
        while True:
            await self.publish_cycle()
            await asyncio.sleep(INTERVAL)  # the agents' own schedule

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def breach(self, hosts: list[str]) -> None:
        for host in hosts:
            self.disk[host] = 95.0


async def stored_notifications(bus: Bus) -> list[Notification]:
    """Every notification the stream holds now (what the sinks would deliver)."""
    js = bus.nc.jetstream()
    count = (await js.stream_info(stream_name(bus.subjects.prefix, "notifications"))).state.messages
    sub = await js.subscribe(
        bus.subjects.family("notifications"),
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    try:
        return [notification.decode((await sub.next_msg(timeout=5)).data) for _ in range(count)]
    finally:
        await sub.unsubscribe()


def firing_hosts(notifications: list[Notification]) -> collections.Counter[str]:
    """How many firing notifications told each host's disk breach."""
    return collections.Counter(
        alert.labels.get("host", "")
        for n in notifications
        if n.status == "firing"
        for alert in n.alerts
        if alert.rule == DISK_RULE
    )


async def lease_holders(bus: Bus, partitions: int) -> list[LeaseRecord | None]:
    """Who holds the lease of each partition (the only lease when unpartitioned)."""
    kv = await bus.nc.jetstream().key_value(bucket_name(bus.subjects.prefix, "state"))
    keys = (
        [LEASE_KEY]
        if partitions == 1
        else [partition_namespace(p, partitions) + LEASE_KEY for p in range(partitions)]
    )
    holders: list[LeaseRecord | None] = []
    for key in keys:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            holders.append(None)
            continue
        holders.append(msgspec.json.decode(entry.value, type=LeaseRecord) if entry.value else None)
    return holders


@pytest.mark.parametrize("partitions", [1, 2])
async def test_a_node_and_the_active_evaluator_killed_every_breach_notified_once(
    tmp_path: Path, binary: str, prefix: str, partitions: int
) -> None:
    """Three nodes, R3 streams, 100 hosts, two evaluators: one evaluating and one standing by, or
    each evaluating a partition of the hosts. Breaches before, while and after SIGKILL of the node
    leading the alert stream, then of an evaluator (the one evaluating partition 0): each breach is
    in exactly one firing notification, and nothing else fires."""
    async with contextlib.AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(
            running(Cluster(tmp_path / "nats", binary, authorization=False))
        )
        config = tmp_path / "jarvis.toml"
        servers = "[" + ", ".join(f'"{url}"' for url in cluster.urls) + "]"
        config.write_text(
            CONFIG_TOML.format(servers=servers, prefix=prefix, rule=DISK_RULE, partitions=partitions)
        )
        evaluators = [EvaluatorProcess(config, tmp_path / f"evaluator-{n}.log") for n in (1, 2)]
        for process in evaluators:
            process.start()
            stack.callback(process.stop)
        stack.callback(lambda: _dump_logs(cluster, evaluators))

        bus_config = BusConfig(prefix=prefix)
        observer = await connect(bus_config, "observer", servers=cluster.urls)
        stack.push_async_callback(observer.close)
        js = observer.nc.jetstream()

        async def provisioned_r3() -> bool:
            extra = [partition_stream(prefix, family) for family in INPUT_TOKENS] if partitions > 1 else []
            for name in [*all_stream_names(prefix), *extra]:
                try:
                    info = await js.stream_info(name)
                except NotFoundError:
                    return False
                assert info.config.num_replicas == 3, f"{name}: {info.config.num_replicas} replicas"
            return True

        await wait_for(provisioned_r3, "the evaluator to provision every stream and bucket with 3 replicas")

        pids = {process.process.pid: process for process in evaluators if process.process is not None}

        async def leases_taken() -> bool:
            holders = await lease_holders(observer, partitions)
            if partitions > 1 and len({h.pid for h in holders if h is not None}) < 2:
                return False  # each of the two evaluates one partition
            return all(h is not None and h.pid in pids for h in holders)

        await wait_for(leases_taken, "the evaluators to take the leases", 2 * TIMEOUT)

        agent_buses = []
        for index in range(CONNECTIONS):
            # each connection starts on another node, as the agents of a fleet would be spread
            urls = cluster.urls[index % 3 :] + cluster.urls[: index % 3]
            agent_bus = await connect(bus_config, f"agents {index}", servers=urls)
            stack.push_async_callback(agent_bus.close)
            agent_buses.append(agent_bus)
        fleet = Fleet(agent_buses)
        fleet.start()
        stack.push_async_callback(fleet.stop)

        expected: list[str] = []

        async def breach_and_wait(hosts: list[str], what: str, timeout: float = TIMEOUT) -> None:
            fleet.breach(hosts)
            expected.extend(hosts)

            unnotified: list[str] = []

            async def all_notified() -> bool:
                told = firing_hosts(await stored_notifications(observer))
                unnotified[:] = [host for host in expected if not told[host]]
                return not unnotified

            def by_partition() -> dict[int, list[str]]:
                where = {host: host_partition(host, partitions) for host in unnotified}
                return {p: [h for h in unnotified if where[h] == p] for p in range(partitions)}

            began = time.monotonic()
            await wait_for(all_notified, what, timeout, by_partition)
            sys.stderr.write(f"{what}: notified in {time.monotonic() - began:.1f} s\n")

        phases = [fleet.hosts[n * BREACHES : (n + 1) * BREACHES] for n in range(4)]
        await breach_and_wait(phases[0], "the first breaches notified")

        alerts_leader = (await js.stream_info(stream_name(prefix, "alerts"))).cluster
        assert alerts_leader is not None
        assert alerts_leader.leader
        cluster.kill(cluster.node_named(alerts_leader.leader))
        # the streams the dead node led elect new leaders, and the partitions' mirrors reach
        # their families again, within seconds to a minute: late, never lost
        await breach_and_wait(phases[1], "breaches made while the alert stream's leader is gone", 3 * TIMEOUT)

        found: list[LeaseRecord] = []

        async def the_holder_is_read() -> bool:  # the state bucket may be electing a new leader
            record = (await lease_holders(observer, partitions))[0]
            found[:] = [record] if record is not None and record.pid in pids else []
            return bool(found)

        await wait_for(the_holder_is_read, "the lease holder to be read back")
        holder = found[0]
        active = pids[holder.pid]
        active.kill()
        # the node is still down: the survivor's consumers for what it takes over are made again,
        # each waiting out its replicas' election (up to 8 s here, more on a loaded machine)
        await breach_and_wait(phases[2], "breaches made while the standby takes over", 3 * TIMEOUT)

        async def survivor_evaluates() -> bool:
            holders = await lease_holders(observer, partitions)
            return all(now is not None and now.pid != holder.pid and now.pid in pids for now in holders)

        await wait_for(survivor_evaluates, "the other evaluator to hold every lease")
        # a last breach once the standby evaluates: what it notifies comes after everything it
        # restored and replayed, so a repeat of an earlier breach would be in the stream by now
        await breach_and_wait(phases[3], "breaches made after the takeover")

        notifications = await stored_notifications(observer)
        told = firing_hosts(notifications)
        twice = {host: count for host, count in told.items() if count != 1}
        told_twice = [
            (n.id, n.status, round(n.ts, 2), [(a.rule, a.labels.get("host"), a.starts_at) for a in n.alerts])
            for n in notifications
            if any(a.labels.get("host") in twice for a in n.alerts)
        ]
        assert not twice, f"breaches notified more than once: {twice}: {told_twice}"
        assert sorted(told) == sorted(expected), "a breach was lost, or a host fired that never breached"
        others = [
            (n.status, alert.rule, alert.labels.get("host"))
            for n in notifications
            for alert in n.alerts
            if alert.rule != DISK_RULE or n.status != "firing"
        ]
        assert not others, f"notified besides the breaches: {others}"
        ids = [n.id for n in notifications]
        assert len(ids) == len(set(ids)), "a notification is stored twice"


def _dump_logs(cluster: Cluster, evaluators: list[EvaluatorProcess]) -> None:
    for process in evaluators:
        if process.log.exists():
            sys.stderr.write(f"--- {process.log.name}\n{process.log.read_text(errors='replace')[-6000:]}")
    sys.stderr.write(cluster.logs())
