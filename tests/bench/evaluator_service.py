"""The evaluator service through NATS: `python -m tests.bench.evaluator_service`.

The engine benchmark's workload (50 rules over 10,000 series, 500 hosts x 20 samples per batch)
is published to the metrics stream, then consumed twice from the same stream in the same run: by
raw nats-py (pull fetch and ack, nothing else: the baseline) and by the EvaluatorService (decode,
evaluate, publish alerts and notifications, save snapshots to KV, ack). Best of ROUNDS each.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bus.config import BusConfig
from bus.connection import Bus, connect
from bus.events import encode
from bus.jetstream import provision, stream_name
from bus.server import EmbeddedServer, ServerConfig
from evaluator.service import EvaluatorService
from tests.bench.evaluator_engine import CONFIG, HOSTS, METRICS, MOUNTS, batches, engine_rate

CYCLES = 10  # 5,000 messages, 100,000 samples
ROUNDS = 3
FETCH = 500


async def publish_workload(bus: Bus) -> tuple[int, int]:
    """(messages, samples) published to the metrics stream and stored."""
    js = bus.nc.jetstream()
    messages = samples = 0
    for cycle in batches(CYCLES):
        acks = [await js.publish_async(bus.subjects.metrics(b.host, b.agent), encode(b)) for b in cycle]
        await asyncio.gather(*acks)
        messages += len(cycle)
        samples += sum(len(b.samples) for b in cycle)
    return messages, samples


async def raw_consume(url: str, prefix: str, messages: int) -> float:
    """Seconds raw nats-py takes to pull and ack every message of the metrics stream."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    config = ConsumerConfig(
        ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.ALL, max_ack_pending=200_000, ack_wait=300
    )
    sub = await js.pull_subscribe(
        f"{prefix}.metrics.>",
        durable=f"raw{time.monotonic_ns()}",
        stream=stream_name(prefix, "metrics"),
        config=config,
    )
    start = time.perf_counter()
    seen = 0
    while seen < messages:
        msgs = await sub.fetch(FETCH, timeout=5)
        seen += len(msgs)
        await msgs[-1].ack()
    elapsed = time.perf_counter() - start
    await nc.close()
    return elapsed


async def service_consume(url: str, prefix: str, messages: int) -> tuple[float, EvaluatorService]:
    """Seconds the evaluator service takes to evaluate every message (start-up excluded)."""
    bus = await connect(BusConfig(prefix=prefix), "bench evaluator", servers=[url])
    service = EvaluatorService(CONFIG, bus)
    task = asyncio.create_task(service.run())
    await service.ready.wait()
    start = time.perf_counter()
    while service.stats.evaluated < messages:
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - start
    service.stop()
    await task
    await bus.close()
    return elapsed, service


async def run() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory() as data:
        server = EmbeddedServer(ServerConfig(port=0), Path(data))
        await server.start()
        try:
            raw_times, service_times = [], []
            for round_ in range(ROUNDS):
                prefix = f"benchsvc{round_}"
                bus = await connect(BusConfig(prefix=prefix), "bench", servers=[server.url])
                await provision(bus.nc.jetstream(), bus.subjects, BusConfig().streams)
                messages, samples = await publish_workload(bus)
                await bus.close()
                raw_times.append(await raw_consume(server.url, prefix, messages))
                elapsed, service = await service_consume(server.url, prefix, messages)
                service_times.append(elapsed)
        finally:
            await server.stop()
    raw_rate = samples / min(raw_times)
    service_rate = samples / min(service_times)
    engine_alone = max(engine_rate(batches(CYCLES))[0] for _ in range(ROUNDS))
    # one thread does both: consuming at the raw rate and evaluating at the engine's rate
    ceiling = 1 / (1 / engine_alone + 1 / raw_rate)
    stats = service.stats
    series = HOSTS * METRICS * len(MOUNTS)
    return [
        (
            f"evaluator service: samples evaluated per second through NATS ({len(CONFIG.rules)} rules, "
            f"{series:,} series, {messages:,} batches of {samples // messages})",
            f"{service_rate:,.0f} = {service_rate / raw_rate:.2f} x raw nats-py consumption "
            f"({raw_rate:,.0f}/s)",
            ">= 0.5 x raw",
        ),
        (
            "evaluator service: ceiling of one thread consuming and evaluating",
            f"{ceiling / raw_rate:.2f} x raw (the engine alone evaluates {engine_alone:,.0f} samples/s here)",
            "-",
        ),
        (
            "evaluator service: what the run published and saved",
            f"{stats.alerts} alerts, {stats.notifications} notifications, {stats.snapshots} snapshots "
            f"of {stats.snapshot_bytes:,} bytes",
            "-",
        ),
    ]


def main() -> None:
    for measure, result, target in asyncio.run(run()):
        print(f"{measure}: {result}   (target {target})")


if __name__ == "__main__":
    main()
