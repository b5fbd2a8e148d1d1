"""Evaluator fan-in: the evaluator as its own process under a realistic fleet at its real rate.

The fleet is report_fanin's (host 22 samples, container 30 containers, probe 28 checks, every
10 s) plus each agent's heartbeat, stamped with the time they are sent. `jarvis-monitor evaluator`
runs on the default config (the built-in rules) while 100 and then 1,000 hosts publish: its share
of a core over a steady minute, its peak resident memory and whether its consumers' backlog
(num_pending of `evaluator` on the metrics, health and heartbeat streams) grows. The same-run
baseline is a bare nats-py core subscriber, its own process too, taking the same messages over the
same minute and decoding nothing.

`python -m tests.bench evaluator_fanin [--hosts=100,1000] [--warmup=20] [--window=60]
[--evaluators=1,2] [--rounds=1]` (about five minutes a round; the machine's other load shows in
the absolute figures, the ratio is the one to compare).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.js.errors
import psutil
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bus import vocabulary as vocab
from bus.config import BusConfig, StreamsConfig
from bus.connection import connect
from bus.events import encode
from bus.jetstream import provision, stream_name
from bus.partitions import partition_stream
from bus.server import EmbeddedServer, ServerConfig
from evaluator.rules import AGENT_DOWN_RULE
from evaluator.service import DURABLE, partition_durable
from tests.bench.idle_cpu import wakeups
from tests.bench.report_fanin import PREFIX, T0
from tests.console_events import container_batch, health_events, heartbeats, host_batch, probe_batch

FAMILIES = ("metrics", "health", "heartbeat")
AGENTS = (vocab.HOST_AGENT, vocab.CONTAINER_AGENT, vocab.PROBE_AGENT)
# Every payload is encoded once with this stamp, replaced by the time it is sent.
STAMP = repr(T0).encode()
SLICES = 100  # per 10 s cycle: each host's messages go out together, the hosts spread evenly
DRAIN_LIMIT = 60.0
HEARTBEAT_WAIT = 15.0  # the evaluator's own heartbeat comes every 10 s (bus.heartbeat.PART_INTERVAL)
ISSUE_FIGURES = {100: "8%", 1000: "63%"}  # issue 13's measure of the evaluator before it


def cycle(hosts: int) -> list[tuple[str, bytes]]:
    """(subject, payload) of one 10 s cycle of the fleet, host by host, each stamped STAMP."""
    out = []
    for index in range(hosts):
        host = f"host{index:04d}"
        for batch in (host_batch(host, T0), container_batch(host, T0), probe_batch(host, T0)):
            out.append((f"{PREFIX}.metrics.{host}.{batch.agent}", encode(batch)))
        for event in health_events(host, T0):
            out.append((f"{PREFIX}.health.{host}.{event.agent}.{event.target}", encode(event)))
        for beat in heartbeats(host, T0):
            out.append((f"{PREFIX}.heartbeat.{host}.{beat.agent}", encode(beat)))
    assert all(payload.count(STAMP) >= 1 for _, payload in out)
    return out


def stamped(messages: Sequence[tuple[str, bytes]], now: float) -> Iterator[tuple[str, bytes]]:
    stamp = repr(now).encode()
    for subject, payload in messages:
        yield subject, payload.replace(STAMP, stamp)


async def at_rate(nc: Client, messages: Sequence[tuple[str, bytes]], seconds: float, sent: list[int]) -> None:
    """Publish `messages` every 10 s, spread evenly and stamped as sent, for `seconds`; counted in `sent`."""
    per = -(-len(messages) // SLICES)
    start = time.perf_counter()
    step = 0
    while (at := start + step * 10 / SLICES) - start < seconds:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        part = (step % SLICES) * per
        for subject, payload in stamped(messages[part : part + per], time.time()):
            await nc.publish(subject, payload)
            sent[0] += 1
        step += 1
    await nc.flush()


def consumers(partitions: int) -> list[tuple[str, str]]:
    """(stream, durable) of every consumer the evaluators read their inputs through."""
    if partitions == 1:
        return [(stream_name(PREFIX, family), DURABLE) for family in FAMILIES]
    return [
        (partition_stream(PREFIX, family), partition_durable(partition))
        for partition in range(partitions)
        for family in FAMILIES
    ]


async def backlog(js: JetStreamContext, partitions: int = 1, *, unacked: bool = False) -> int | None:
    """Messages the evaluators' consumers have still to deliver (and with `unacked`, delivered but
    not yet acked: not yet in a commit); None before they all exist."""
    total = 0
    for stream, durable in consumers(partitions):
        try:
            info = await js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            return None
        total += (info.num_pending or 0) + (info.num_ack_pending or 0) * unacked
    return total


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def machine_busy() -> float:
    """CPU seconds every core of the machine spent on anything but idling so far."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


@dataclass(frozen=True)
class Load:
    """The busiest evaluator's share of a core, and the bare subscriber's over the same minute."""

    busiest: float
    bare: float

    def carry(self, more: Load) -> tuple[float, float]:
        """How many times this load `more` evaluators carry: by each run's own baseline, and raw."""
        return (self.busiest / self.bare) / (more.busiest / more.bare), self.busiest / more.busiest


@dataclass
class Mark:
    """CPU seconds so far of each process measured, and of the machine, at one instant."""

    at: float
    cpu: dict[str, float]
    done: int  # messages sent and committed by the evaluator
    wakes: dict[str, int]  # voluntary context switches of each process's threads so far

    @classmethod
    async def take(
        cls, processes: dict[str, psutil.Process], js: JetStreamContext, sent: int, partitions: int
    ) -> Mark:
        cpu = {name: cpu_seconds(process) for name, process in processes.items()}
        done = sent - (await backlog(js, partitions, unacked=True) or 0)
        wakes = {name: wakeups(process.pid) for name, process in processes.items()}
        return cls(time.perf_counter(), {**cpu, "machine": machine_busy()}, done, wakes)

    def share(self, later: Mark, name: str) -> float:
        """`name`'s share of a core from this mark to `later`."""
        return (later.cpu[name] - self.cpu[name]) / (later.at - self.at)

    def wakeups(self, later: Mark, name: str) -> float:
        """`name`'s wakeups a second from this mark to `later`."""
        return (later.wakes[name] - self.wakes[name]) / (later.at - self.at)


@dataclass
class Counters:
    """The latest counters the evaluator's own heartbeat carried."""

    latest: dict[str, int] = field(default_factory=dict)
    beats: int = 0

    async def on_msg(self, msg: Msg) -> None:
        self.latest = json.loads(msg.data).get("counters", {})
        self.beats += 1

    async def next(self, timeout: float) -> dict[str, int]:
        seen, deadline = self.beats, time.perf_counter() + timeout
        while self.beats == seen and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        return self.latest


@dataclass
class Outputs:
    """What the evaluator published: alerts by rule and status, notifications by status."""

    alerts: Counter[str] = field(default_factory=Counter)
    notifications: Counter[str] = field(default_factory=Counter)

    # agent_down alerts that started while the fleet was still publishing: false alarms
    early: int = 0
    fleet_stopped: float = math.inf

    async def on_alert(self, msg: Msg) -> None:
        alert = json.loads(msg.data)
        self.alerts[f"{alert.get('rule')} {alert.get('status')}"] += 1
        if alert.get("rule") == AGENT_DOWN_RULE and alert.get("status") == "firing":
            self.early += alert.get("starts_at", 0) < self.fleet_stopped

    async def on_notification(self, msg: Msg) -> None:
        notification = json.loads(msg.data)
        self.notifications[f"{notification.get('status')} x{len(notification.get('alerts', []))}"] += 1

    def told(self) -> str:
        alerts = ", ".join(f"{key} {n:,}" for key, n in sorted(self.alerts.items()))
        notifications = ", ".join(f"{key} {n:,}" for key, n in sorted(self.notifications.items()))
        return (
            f"alerts: {alerts or 'none'}; notifications (status x alerts): {notifications or 'none'}; "
            f"agent_down started before the fleet stopped: {self.early:,}"
        )


async def start(command: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=out, stdin=asyncio.subprocess.DEVNULL
        )


def problems(log: Path) -> list[str]:
    """The evaluator's warnings, errors and tracebacks, each distinct line once."""
    seen: dict[str, None] = {}
    for line in log.read_text(errors="replace").splitlines():
        found = [line.find(word) for word in ("WARNING", "ERROR", "CRITICAL", "Traceback") if word in line]
        if found:  # from the level on: the time stamp would make every line distinct
            seen.setdefault(line[min(found) :][:160], None)
    return list(seen)


async def live(
    hosts: int, warmup: float, window: float, profile: Path | None = None, evaluators: int = 1
) -> tuple[list[tuple[str, str, str]], Load]:
    """The evaluator (or `evaluators` processes sharing as many partitions) and the bare subscriber
    under `hosts`: CPU, RSS, backlog, the evaluator's counters; and the busiest one's load."""
    messages = cycle(hosts)
    rate = len(messages) / 10
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        config = tmp / "jarvis.toml"
        partitioned = f"[evaluator]\npartitions = {evaluators}\n" if evaluators > 1 else ""
        config.write_text(f'data_dir = "{tmp / "data"}"\n[bus]\nprefix = "{PREFIX}"\n{partitioned}')
        server = EmbeddedServer(ServerConfig(port=0), tmp / "nats")
        await server.start()
        env = {**os.environ, "JARVIS_NATS_URL": server.url}
        profiler = ["-m", "cProfile", "-o", str(profile)] if profile else []
        evaluator_cmd = [sys.executable, *profiler, "-m", "jarvis_monitor", "-c", str(config), "evaluator"]
        bare_cmd = [sys.executable, "-m", "tests.bench.evaluator_fanin", "--subscriber", server.url]
        children: list[asyncio.subprocess.Process] = []
        try:
            bus = await connect(BusConfig(prefix=PREFIX), "bench", servers=[server.url])
            await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
            await bus.close()
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            counters = Counters()
            await nc.subscribe(f"{PREFIX}.heartbeat.*.{vocab.EVALUATOR_PART}", cb=counters.on_msg)
            outputs = Outputs()
            await nc.subscribe(f"{PREFIX}.alerts.>", cb=outputs.on_alert)
            await nc.subscribe(f"{PREFIX}.notifications.>", cb=outputs.on_notification)
            bare = await start(bare_cmd, env, tmp / "bare.log")
            children.append(bare)
            assert bare.stdout is not None
            await asyncio.wait_for(bare.stdout.readline(), 30)  # subscribed
            names = [f"evaluator-{n}" for n in range(1, evaluators + 1)] if evaluators > 1 else ["evaluator"]
            started: dict[str, asyncio.subprocess.Process] = {}
            for which in names:  # one after the other: the first hands partitions to the next
                evaluator = await start(evaluator_cmd, env, tmp / f"{which}.log")
                children.append(evaluator)
                started[which] = evaluator
                began = time.perf_counter()
                while (await backlog(js, evaluators)) is None:
                    if evaluator.returncode is not None or time.perf_counter() - began > 60:
                        raise RuntimeError(f"the evaluator did not start: {problems(tmp / f'{which}.log')}")
                    await asyncio.sleep(0.2)
            assert server.process is not None
            processes = {
                **{which: psutil.Process(child.pid) for which, child in started.items()},
                "bare": psutil.Process(bare.pid),
                "nats-server": psutil.Process(server.process.pid),
                "publisher": psutil.Process(),
            }
            began = time.perf_counter()
            sent = [0]
            publisher = asyncio.create_task(at_rate(nc, messages, warmup + window, sent))
            behind: list[int] = []
            rss = 0
            marks: list[Mark] = []
            while not publisher.done():
                await asyncio.sleep(1)
                rss = max(rss, *(processes[which].memory_info().rss for which in names))
                behind.append(await backlog(js, evaluators) or 0)
                if not marks and time.perf_counter() - began >= warmup:
                    marks.append(await Mark.take(processes, js, sent[0], evaluators))
            await publisher
            outputs.fleet_stopped = time.time()
            marks.append(await Mark.take(processes, js, sent[0], evaluators))
            wall = time.perf_counter() - began
            caught = time.perf_counter()
            while (await backlog(js, evaluators) or 0) > 0 and time.perf_counter() - caught < DRAIN_LIMIT:
                await asyncio.sleep(0.1)
            late = time.perf_counter() - caught
            final = await counters.next(HEARTBEAT_WAIT)
            bare.send_signal(signal.SIGTERM)
            received = int((await asyncio.wait_for(bare.stdout.readline(), 30)).decode() or -1)
            for evaluator in started.values():
                evaluator.send_signal(signal.SIGTERM)
            for evaluator in started.values():
                await asyncio.wait_for(evaluator.wait(), 60)
            await nc.close()
        finally:
            for child in children:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
            await server.stop()
            troubles = [line for which in names for line in problems(tmp / f"{which}.log")]

    first, last = marks
    steady = last.at - first.at
    shares = {which: first.share(last, which) for which in names}
    # the busiest process is the one that runs out of its core first
    ours_cpu, bare_cpu = max(shares.values()), first.share(last, "bare")
    others = ", ".join(
        f"{name} {100 * first.share(last, name):.0f}%" for name in ("nats-server", "publisher")
    )
    cores = psutil.cpu_count() or 1
    evaluated = (last.done - first.done) / steady  # committed per second over the window
    half = len(behind) // 2
    growth = (max(behind[half:]) - max(behind[:half])) / (wall / 2) if half else 0.0
    shown = ("received", "evaluated", "rejected", "dead_lettered", "failed", "alerts", "notifications")
    label = f"evaluator fan-in: {hosts:,} hosts x 3 agents ({rate:,.0f} msg/s)"
    if evaluators > 1:
        label += f", {evaluators} evaluators on {evaluators} partitions"
    split = ", ".join(
        f"{which} {100 * share:.1f}%, {first.wakeups(last, which):,.0f} wakeups/s"
        for which, share in shares.items()
    )
    rows = [
        (
            f"{label}, bare nats-py subscriber (baseline)",
            f"{100 * bare_cpu:.1f}% of a core, {bare_cpu / rate * 1e6:.1f} us CPU/msg, "
            f"took {received:,} of {sent[0]:,}",
            "-",
        ),
        (
            f"{label}, busiest evaluator process, {steady:.0f} s after {warmup:.0f} s",
            f"{100 * ours_cpu:.1f}% of a core ({split}), {ours_cpu / rate * 1e6:.1f} us CPU/msg sent = "
            f"{ours_cpu / bare_cpu:.1f} x baseline; committed {evaluated:,.0f} msg/s, "
            f"{ours_cpu / evaluated * 1e6:.1f} us CPU/msg committed; peak RSS {rss / 2**20:.0f} MB",
            f"issue 13 measured {ISSUE_FIGURES.get(hosts, '-')} of a core"
            if evaluators == 1
            else "two carry at least 1.7 x one: the busiest at most 1/1.7 of one evaluator's share",
        ),
        (
            f"{label}, evaluator backlog (num_pending)",
            f"peak {max(behind):,} msgs, growth {growth:+,.0f} msg/s, drained {late:.1f} s after the last",
            "no growth",
        ),
        (
            f"{label}, evaluator counters",
            ", ".join(f"{key} {final.get(key, '?'):,}" for key in shown),
            "failed 0, dead_lettered 0",
        ),
        (
            f"{label}, the machine over the same {steady:.0f} s",
            f"{100 * first.share(last, 'machine') / cores:.0f}% of {cores} cores busy; {others} of a core",
            "-",
        ),
        (f"{label}, evaluator outputs", outputs.told(), "agent_down 0 before the fleet stopped"),
        (f"{label}, evaluator log", "; ".join(troubles[:3]) or "no warning or error", "none"),
    ]
    return rows, Load(ours_cpu, bare_cpu)


async def subscriber(url: str) -> None:
    """The baseline: a bare core subscriber of the fleet's subjects; prints its count on SIGTERM."""
    nc = await nats.connect(url)
    count = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal count
        count += 1

    subjects = [f"{PREFIX}.metrics.>", f"{PREFIX}.health.>"]
    subjects += [f"{PREFIX}.heartbeat.*.{agent}" for agent in AGENTS]
    for subject in subjects:
        await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=0, pending_bytes_limit=0)
    await nc.flush()
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    print("ready", flush=True)
    await stopped.wait()
    await nc.drain()
    print(count, flush=True)


def options(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench evaluator_fanin", add_help=False)
    parser.add_argument("--hosts", default="100,1000", help="comma-separated fleet sizes")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before the measured window")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--profile", help="write the evaluator's cProfile to PATH.<hosts> (slows it)")
    parser.add_argument(
        "--evaluators",
        default="1",
        help="comma-separated counts of evaluator processes (each >1: as many partitions)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every count this many times, one after the other; the carry is the median",
    )
    known, _ = parser.parse_known_args(list(argv))
    return known


async def run() -> list[tuple[str, str, str]]:
    chosen = options(sys.argv[1:])
    counts = [int(n) for n in chosen.evaluators.split(",")]
    rows: list[tuple[str, str, str]] = []
    for hosts in (int(n) for n in chosen.hosts.split(",")):
        profile = Path(f"{chosen.profile}.{hosts}") if chosen.profile else None
        # The machine's pace drifts by a third between runs minutes apart (a shared host), and the
        # bare subscriber's cost drifts with it: each count is judged against its own run's, and
        # the order turns every round (1, 2, then 2, 1), so that a steady drift favours neither.
        carries: dict[int, list[tuple[float, float]]] = {count: [] for count in counts if count > 1}
        for round_ in range(chosen.rounds):
            loads: dict[int, Load] = {}
            for evaluators in counts[:: -1 if round_ % 2 else 1]:
                found, loads[evaluators] = await live(
                    hosts, chosen.warmup, chosen.window, profile, evaluators
                )
                rows += found
            for evaluators, carry in carries.items():
                if 1 in loads:
                    carry.append(loads[1].carry(loads[evaluators]))
        for evaluators, carry in carries.items():
            if carry:
                judged = statistics.median(by_baseline for by_baseline, _ in carry)
                each = ", ".join(f"{by_baseline:.2f} ({raw:.2f})" for by_baseline, raw in carry)
                rows.append(
                    (
                        f"evaluator fan-in: {hosts:,} hosts, {evaluators} evaluators against one",
                        f"carry {judged:.2f} x one: one's share over the busiest's, each over its run's "
                        f"bare subscriber; median of {len(carry)} (raw shares): {each}",
                        "at least 1.7 x",
                    )
                )
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["--subscriber"]:
        asyncio.run(subscriber(sys.argv[2]))
    else:
        for measure, result, target in asyncio.run(run()):
            print(f"{measure:<72} {result:<60} (target: {target})")
