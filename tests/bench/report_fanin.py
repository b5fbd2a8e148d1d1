"""Report sink fan-in: CPU per message of a realistic fleet (host 22 samples, container 30 containers,
probe 28 checks, every 10 s) through the sink, against a raw nats-py pull of the same messages that
decodes nothing, on the same server; and the share of a core that makes at 100 and 1,000 hosts.

Run alone with `python -m tests.bench report_fanin`.
"""

from __future__ import annotations

import asyncio
import resource
import tempfile
import time
from pathlib import Path

import nats
from nats.js.api import AckPolicy, ConsumerConfig

from bus.config import BusConfig, StreamsConfig
from bus.connection import connect
from bus.events import encode
from bus.jetstream import provision, stream_name
from bus.server import EmbeddedServer, ServerConfig
from sinks.report.config import ReportSinkConfig
from sinks.report.service import ReportSink
from tests.console_events import container_batch, health_events, host_batch, probe_batch

HOSTS = 100
CYCLES = 6
T0 = 1_800_000_000.0
PREFIX = "benchfanin"
BATCH = 1000


def fleet(hosts: int, cycles: int) -> list[tuple[str, bytes]]:
    """(subject, payload) of every metric batch and health event the fleet sends in `cycles`."""
    out = []
    for step in range(cycles):
        ts = T0 + 10 * step
        for index in range(hosts):
            host = f"host{index:03d}"
            for batch in (
                host_batch(host, ts, step),
                container_batch(host, ts, step),
                probe_batch(host, ts, step),
            ):
                out.append((f"{PREFIX}.metrics.{host}.{batch.agent}", encode(batch)))
            for event in health_events(host, ts):
                out.append((f"{PREFIX}.health.{host}.{event.agent}.{event.target}", encode(event)))
    return out


async def raw_cpu(url: str) -> float:
    """CPU seconds of a plain nats-py pull of both streams, decoding nothing."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    start = time.process_time()
    for family in ("metrics", "health"):
        config = ConsumerConfig(durable_name="raw", ack_policy=AckPolicy.ALL, max_ack_pending=BATCH)
        sub = await js.pull_subscribe(
            f"{PREFIX}.{family}.>", durable="raw", stream=stream_name(PREFIX, family), config=config
        )
        while True:
            try:
                messages = await sub.fetch(BATCH, timeout=1)
            except TimeoutError:
                break
            await messages[-1].ack()
    cpu = time.process_time() - start
    await nc.close()
    return cpu


async def sink_cpu(url: str, data_dir: Path, total: int) -> tuple[float, float]:
    """CPU seconds of the report sink taking in every message, and the wall seconds it took."""
    bus = await connect(BusConfig(prefix=PREFIX), "bench", servers=[url])
    sink = ReportSink(ReportSinkConfig(batch_size=BATCH, weekly_on="never"), bus, data_dir, clock=lambda: T0)
    start, began = time.process_time(), time.perf_counter()
    task = asyncio.create_task(sink.run())
    while sink.store is None or sink.store.stats.metric_batches + sink.store.stats.health_events < total:
        await asyncio.sleep(0.01)
    cpu, wall = time.process_time() - start, time.perf_counter() - began
    sink.stop()
    await task
    await bus.close()
    return cpu, wall


async def run() -> list[tuple[str, str, str]]:
    messages = fleet(HOSTS, CYCLES)
    per_cycle = len(messages) / CYCLES / HOSTS  # messages a host sends the sink each 10 s
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(ServerConfig(port=0), Path(tmp) / "nats")
        await server.start()
        try:
            bus = await connect(BusConfig(prefix=PREFIX), "bench", servers=[server.url])
            await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
            for subject, payload in messages:
                await bus.nc.publish(subject, payload)
            await bus.nc.flush()
            await asyncio.sleep(0.5)  # the server stores what it was sent
            await bus.close()
            raw = await raw_cpu(server.url)
            ours, wall = await sink_cpu(server.url, Path(tmp) / "data", len(messages))
        finally:
            await server.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_msg, raw_per_msg = ours / len(messages), raw / len(messages)
    rows = [
        (
            f"report fan-in: raw nats-py pull, {len(messages):,} msgs",
            f"{raw_per_msg * 1e6:.1f} us CPU/msg (baseline)",
            "-",
        ),
        (
            "report fan-in: the report sink, same messages",
            f"{per_msg * 1e6:.1f} us CPU/msg = {per_msg / raw_per_msg:.1f} x baseline, "
            f"{len(messages) / wall:,.0f} msg/s",
            "<= 24.5 us (10 x less than 245)",
        ),
    ]
    for hosts in (100, 1000):
        rate = hosts * per_cycle / 10
        share = 100 * rate * per_msg
        rows.append(
            (
                f"report fan-in: {hosts} hosts x 3 agents ({rate:,.0f} msg/s)",
                f"{share:.0f}% of a core; keeps up: {'yes' if len(messages) / wall > rate else 'NO'}",
                "< 15% at 1,000 hosts",
            )
        )
    rows.append(("report fan-in: bench process peak RSS", f"{rss:.0f} MB", "< 150 MB (sink alone)"))
    return rows


if __name__ == "__main__":
    for measure, result, target in asyncio.run(run()):
        print(f"{measure:<60} {result:<50} (target: {target})")
