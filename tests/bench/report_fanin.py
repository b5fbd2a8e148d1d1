"""Report sink fan-in: a realistic fleet (host 22 samples, container 30 containers, probe 28 checks,
every 10 s) through the report sink, against bare nats-py consumers of the same messages on the
same server.

Two parts. In process: CPU per message of the sink, of nats-py's `fetch` (the first baseline, what
the sink used before) and of a bare pull through a core subscription (the second: the least any
nats-py consumer can cost), all decoding nothing but the sink. Live: the sink as its own process
(`jarvis-monitor sink report`) while 100 and then 1,000 hosts publish at their real rate: its share
of a core, its resident memory, and whether its backlog grows. `--days=N` gives the live sink's
store N days of hourly rows first, as a sink running that long holds (0 by default).

Run alone with `python -m tests.bench report_fanin` (about six minutes; the machine's other load
shows in the absolute figures, so the ratios are the ones to compare).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import psutil
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bus.config import BusConfig, StreamsConfig
from bus.connection import connect
from bus.events import encode
from bus.jetstream import provision, stream_name
from bus.server import EmbeddedServer, ServerConfig
from bus.units import Duration
from sinks.report.config import ReportSinkConfig
from sinks.report.rollups import HOUR, STORE_FILE
from sinks.report.service import ReportSink
from tests.console_events import container_batch, health_events, host_batch, probe_batch

HOSTS = 100
CYCLES = 6
T0 = 1_800_000_000.0
PREFIX = "benchfanin"
BATCH = 1000
FAMILIES = ("metrics", "health")
# The sink writes every 60 s (commit_every): the first write after its start also makes every
# series' id again, so the share of a core is measured over the second minute (one steady write).
FIRST_MINUTE = 62
LIVE_SECONDS = 125
ROUNDS = 3
ORIGINAL_US = 246.0  # the sink before issue 13, same bench (docs/performance.md)


def fleet(hosts: int, cycles: int, first: int = 0) -> list[tuple[str, bytes]]:
    """(subject, payload) of every metric batch and health event the fleet sends in `cycles`."""
    out = []
    for step in range(first, first + cycles):
        ts = T0 + 10 * step
        for index in range(hosts):
            host = f"host{index:04d}"
            for batch in (
                host_batch(host, ts, step),
                container_batch(host, ts, step),
                probe_batch(host, ts, step),
            ):
                out.append((f"{PREFIX}.metrics.{host}.{batch.agent}", encode(batch)))
            for event in health_events(host, ts):
                out.append((f"{PREFIX}.health.{host}.{event.agent}.{event.target}", encode(event)))
    return out


def fill_history(path: Path, days: int) -> None:
    """Copy the stored hour's rows back over `days` of earlier hours, as a store running that long holds."""
    db = sqlite3.connect(path, isolation_level=None)
    hour = int(T0 // HOUR) * HOUR
    metric = db.execute("SELECT series, count, sum, min, max, sketch FROM metric_hour").fetchall()
    health = db.execute("SELECT * FROM health_hour").fetchall()
    db.execute("BEGIN")
    for back in range(1, days * 24 + 1):
        earlier = hour - back * HOUR
        db.executemany(
            "INSERT INTO metric_hour VALUES (?, ?, ?, ?, ?, ?, ?)", [(r[0], earlier, *r[1:]) for r in metric]
        )
        db.executemany(
            "INSERT INTO health_hour VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(*r[:3], earlier, *r[4:]) for r in health],
        )
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


async def fetch_cpu(url: str, after: dict[str, int]) -> tuple[float, int]:
    """CPU seconds of nats-py's `fetch` taking the messages after `after`, decoding nothing."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    start, count = time.process_time(), 0
    for family in FAMILIES:
        stream = stream_name(PREFIX, family)
        config = ConsumerConfig(
            durable_name="fetch",
            ack_policy=AckPolicy.ALL,
            max_ack_pending=BATCH,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after[stream] + 1,
        )
        sub = await js.pull_subscribe(f"{PREFIX}.{family}.>", durable="fetch", stream=stream, config=config)
        while True:
            try:
                messages = await sub.fetch(BATCH, timeout=1)
            except TimeoutError:
                break
            count += len(messages)
            await messages[-1].ack()
    cpu = time.process_time() - start
    await nc.close()
    return cpu, count


async def bare_cpu(url: str, after: dict[str, int], durable: str = "bare") -> tuple[float, int]:
    """CPU seconds of a bare pull (a core subscription, one request per batch) of the same messages."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    start, count = time.process_time(), 0
    for family in FAMILIES:
        stream = stream_name(PREFIX, family)
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after[stream] + 1,
        )
        await js.add_consumer(stream, config)
        got, done = [0], asyncio.Event()

        async def on_msg(msg: Msg, got: list[int] = got, done: asyncio.Event = done) -> None:
            if msg.reply:
                got[0] += 1
                if got[0] % BATCH == 0:
                    done.set()
            else:  # status: the request expired
                done.set()

        sub = await nc.subscribe(nc.new_inbox(), cb=on_msg, pending_msgs_limit=0, pending_bytes_limit=0)
        while True:
            before = got[0]
            done.clear()
            request = json.dumps({"batch": BATCH, "expires": 500_000_000}).encode()
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}", request, reply=sub.subject)
            await done.wait()
            if got[0] == before:
                break
        count += got[0]
        await sub.unsubscribe()
    cpu = time.process_time() - start
    await nc.close()
    return cpu, count


async def sink_cpu(url: str, data_dir: Path, total: int) -> tuple[float, float]:
    """CPU seconds of the report sink taking in `total` messages and writing them, and wall seconds."""
    bus = await connect(BusConfig(prefix=PREFIX), "bench", servers=[url])
    config = ReportSinkConfig(weekly_on="never", commit_every=Duration(30))
    sink = ReportSink(config, bus, data_dir, clock=lambda: T0)
    start, began = time.process_time(), time.perf_counter()
    task = asyncio.create_task(sink.run())
    while sink.stats.messages < total:
        await asyncio.sleep(0.01)
    await sink.commit()  # what it took in is in the store
    cpu, wall = time.process_time() - start, time.perf_counter() - began
    sink.stop()
    await task
    await bus.close()
    return cpu, wall


async def publish(url: str, messages: list[tuple[str, bytes]]) -> dict[str, int]:
    """Publish `messages` and wait until they are stored; each stream's last sequence before them."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    before = {f: (await js.stream_info(stream_name(PREFIX, f))).state.last_seq for f in FAMILIES}
    for subject, payload in messages:
        await nc.publish(subject, payload)
    await nc.flush()
    for family in FAMILIES:
        want = before[family] + sum(1 for subject, _ in messages if subject.split(".")[1] == family)
        while (await js.stream_info(stream_name(PREFIX, family))).state.last_seq < want:
            await asyncio.sleep(0.05)
    await nc.close()
    return {stream_name(PREFIX, f): seq for f, seq in before.items()}


async def in_process() -> list[tuple[str, str, str]]:
    """Per-message CPU of the sink (cold and warm store) against the two baselines."""
    warm = fleet(HOSTS, 1)
    messages = fleet(HOSTS, CYCLES, first=1)
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(ServerConfig(port=0), Path(tmp) / "nats")
        await server.start()
        try:
            bus = await connect(BusConfig(prefix=PREFIX), "bench", servers=[server.url])
            await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
            await bus.close()
            await publish(server.url, warm)
            cold, _ = await sink_cpu(server.url, Path(tmp) / "data", len(warm))  # every series new
            shutil.copytree(Path(tmp) / "data", Path(tmp) / "warm")
            after = await publish(server.url, messages)
            fetch, fetched = await fetch_cpu(server.url, after)
            # best of three: the machine's other load only ever adds
            bare, ours, wall = math.inf, math.inf, math.inf
            for round_ in range(ROUNDS):
                cpu, bared = await bare_cpu(server.url, after, f"bare{round_}")
                bare = min(bare, cpu)
                data = Path(tmp) / f"data{round_}"
                shutil.copytree(Path(tmp) / "warm", data)
                cpu, seconds = await sink_cpu(server.url, data, len(messages))
                ours, wall = min(ours, cpu), min(wall, seconds)
        finally:
            await server.stop()
    assert fetched == bared == len(messages), (fetched, bared, len(messages))
    n = len(messages)
    per_msg, fetch_us, bare_us = ours / n * 1e6, fetch / n * 1e6, bare / n * 1e6
    return [
        (f"report fan-in: nats-py fetch, {n:,} msgs (baseline 1)", f"{fetch_us:.1f} us CPU/msg", "-"),
        (
            "report fan-in: bare nats-py pull, same msgs (baseline 2), best of 3",
            f"{bare_us:.1f} us CPU/msg",
            "-",
        ),
        (
            "report fan-in: the report sink, same msgs, store warm, best of 3",
            f"{per_msg:.1f} us CPU/msg = {per_msg / fetch_us:.2f} x baseline 1, "
            f"{per_msg / bare_us:.2f} x baseline 2, {n / wall:,.0f} msg/s",
            f"<= {ORIGINAL_US / 10:.1f} us (10 x less than {ORIGINAL_US:.0f})",
        ),
        (
            "report fan-in: the sink's own work above baseline 2",
            f"{per_msg - bare_us:.1f} us CPU/msg",
            "-",
        ),
        (
            f"report fan-in: first cycle, every series new ({len(warm):,} msgs)",
            f"{cold / len(warm) * 1e6:.1f} us CPU/msg",
            "-",
        ),
    ]


def live_config(tmp: Path, url: str) -> tuple[list[str], dict[str, str]]:
    config = tmp / "jarvis.toml"
    config.write_text(f'data_dir = "{tmp / "data"}"\n[bus]\nprefix = "{PREFIX}"\n')
    env = {**os.environ, "JARVIS_NATS_URL": url}
    return [sys.executable, "-m", "jarvis_monitor", "-c", str(config), "sink", "report"], env


async def backlog(js: JetStreamContext) -> int:
    """Messages the sink's consumers have still to deliver."""
    total = 0
    for family in FAMILIES:
        try:
            info = await js.consumer_info(stream_name(PREFIX, family), "report")
        except nats.js.errors.NotFoundError:
            return -1
        total += info.num_pending
    return total


async def at_rate(nc: Client, cycle: list[tuple[str, bytes]], seconds: float) -> None:
    """Publish `cycle` every 10 s, spread evenly, for `seconds`, as agents on their intervals do."""
    slices = 100  # per 10 s
    per = -(-len(cycle) // slices)
    start = time.perf_counter()
    step = 0
    while True:
        at = start + step * 10 / slices
        if at - start >= seconds:
            break
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        part = (step % slices) * per
        for subject, payload in cycle[part : part + per]:
            await nc.publish(subject, payload)
        step += 1
    await nc.flush()


def days_kept(argv: list[str], part: str = "report_fanin", default: int = 0) -> int:
    """`--days`: the days of hourly rows a bench's store holds before it is measured."""
    parser = argparse.ArgumentParser(prog=f"python -m tests.bench {part}", add_help=False)
    parser.add_argument("--days", type=int, default=default, help="days of hourly rows stored first")
    return int(parser.parse_known_args(argv)[0].days)


async def live(hosts: int, days: int = 0) -> list[tuple[str, str, str]]:
    """The sink as its own process under `hosts` publishing at their rate, `days` of rollups kept
    in its store: CPU, RSS, backlog."""
    warm, cycle = fleet(hosts, 1), fleet(hosts, 1, first=1)
    rate = len(cycle) / 10
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        server = EmbeddedServer(ServerConfig(port=0), tmp / "nats")
        await server.start()
        command, env = live_config(tmp, server.url)
        try:
            bus = await connect(BusConfig(prefix=PREFIX), "bench", servers=[server.url])
            await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
            await bus.close()
            await publish(server.url, warm)
            # a first run takes the warm-up cycle in (every series new) and writes it as it stops
            first = await asyncio.create_subprocess_exec(*command, env=env, stderr=asyncio.subprocess.DEVNULL)
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            while await backlog(js) != 0:
                await asyncio.sleep(0.2)
            first.terminate()
            await first.wait()
            fill_history(tmp / "data" / STORE_FILE, days)
            sink = await asyncio.create_subprocess_exec(*command, env=env, stderr=asyncio.subprocess.DEVNULL)
            process = psutil.Process(sink.pid)
            while await backlog(js) != 0:
                await asyncio.sleep(0.1)
            began = steady_from = time.perf_counter()
            rss = 0
            publisher = asyncio.create_task(at_rate(nc, cycle, LIVE_SECONDS))
            behind, marks = [], [process.cpu_times()]
            while not publisher.done():
                await asyncio.sleep(1)
                rss = max(rss, process.memory_info().rss)
                behind.append(await backlog(js))
                if len(marks) == 1 and time.perf_counter() - began >= FIRST_MINUTE:
                    marks.append(process.cpu_times())
                    steady_from = time.perf_counter()
            await publisher
            marks.append(process.cpu_times())
            wall, steady = time.perf_counter() - began, time.perf_counter() - steady_from
            # caught up at the end: what was published is delivered within a few seconds
            caught = time.perf_counter()
            while await backlog(js) > 0 and time.perf_counter() - caught < 30:
                await asyncio.sleep(0.1)
            late = time.perf_counter() - caught
            sink.terminate()
            await sink.wait()
            await nc.close()
        finally:
            await server.stop()

    def used(a: Any, b: Any) -> float:
        return float((b.user - a.user) + (b.system - a.system))

    cpu, whole = used(marks[1], marks[2]), used(marks[0], marks[2])
    half = len(behind) // 2
    growth = (max(behind[half:]) - max(behind[:half])) / (wall / 2) if half else 0.0
    return [
        (
            f"report fan-in live: {hosts:,} hosts x 3 agents ({rate:,.0f} msg/s), {days} days kept, sink",
            f"{100 * cpu / steady:.1f}% of a core, {cpu / steady / rate * 1e6:.1f} us CPU/msg "
            f"(with the first minute: {100 * whole / wall:.1f}%), peak RSS {rss / 2**20:.0f} MB",
            "< 15% and < 150 MB at 1,000 hosts",
        ),
        (
            f"report fan-in live: {hosts:,} hosts, backlog",
            f"peak {max(behind):,} msgs, growth {growth:+,.0f} msg/s, drained {late:.1f} s after the last",
            "no growth",
        ),
    ]


async def run() -> list[tuple[str, str, str]]:
    rows = await in_process()
    days = days_kept(sys.argv[1:])
    for hosts in (100, 1000):
        rows += await live(hosts, days)
    return rows


if __name__ == "__main__":
    for measure, result, target in asyncio.run(run()):
        print(f"{measure:<60} {result:<50} (target: {target})")
