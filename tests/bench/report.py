"""Report sink benchmark: events/s into the rollups against raw nats-py consumption of the same
messages on the same server, and the time to render reports for 100 hosts over 30 days.

Run alone with `python -m tests.bench.report`.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import nats
from nats.js.api import AckPolicy, ConsumerConfig

from bus.config import BusConfig, StreamsConfig
from bus.connection import connect
from bus.events import Alert, HealthEvent, MetricBatch, Sample, encode
from bus.jetstream import provision, stream_name
from bus.server import EmbeddedServer, ServerConfig
from sinks.report.config import ReportSinkConfig
from sinks.report.model import Period, PeriodKind, build_report, load_inputs
from sinks.report.render import write_report
from sinks.report.rollups import RollupStore
from sinks.report.service import ReportSink

MESSAGES = 20_000
HOSTS = 100
DAYS = 30
BATCH = 1000
T0 = 1_790_000_000.0 - 1_790_000_000.0 % 86400
PREFIX = "benchreport"


def host_batch(host: int, ts: float) -> MetricBatch:
    """What the host agent sends each cycle: about 25 samples."""
    phase = (ts / 3600) % 24
    samples = [
        Sample("cpu.percent", 20 + phase),
        *(Sample("cpu.core.percent", 10 + core + phase, {"core": str(core)}) for core in range(8)),
        Sample("load.1", 1.5),
        Sample("mem.percent", 50 + host % 40),
        Sample("mem.used_bytes", 8e9),
        Sample("swap.percent", 1.0),
        *(
            Sample(name, value + (ts - T0) / 86400, {"mount": mount, "device": "sda", "fstype": "ext4"})
            for mount in ("/", "/var/lib/docker")
            for name, value in (("disk.percent", 40.0), ("disk.used_bytes", 4e10))
        ),
        Sample("net.recv_bytes_per_second", 1e5),
        Sample("net.sent_bytes_per_second", 5e4),
        Sample("proc.count", 300),
    ]
    return MetricBatch(host=f"host{host:03d}", agent="host", ts=ts, interval=10, samples=samples)


async def raw_consume(url: str, subject: str, stream: str) -> float:
    """Messages per second through a plain nats-py pull consumer that decodes nothing."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    config = ConsumerConfig(durable_name="raw", ack_policy=AckPolicy.ALL, max_ack_pending=BATCH)
    start = time.perf_counter()
    sub = await js.pull_subscribe(subject, durable="raw", stream=stream, config=config)
    seen = 0
    while seen < MESSAGES:
        messages = await sub.fetch(BATCH, timeout=5)
        seen += len(messages)
        await messages[-1].ack()
    rate = MESSAGES / (time.perf_counter() - start)
    await nc.close()
    return rate


async def sink_consume(url: str, data_dir: Path) -> float:
    """Messages per second into the rollups through the report sink."""
    bus = await connect(BusConfig(prefix=PREFIX), "bench", servers=[url])
    sink = ReportSink(
        ReportSinkConfig(batch_size=BATCH, weekly_on="never"), bus, data_dir, clock=lambda: T0 + 60
    )
    start = time.perf_counter()
    task = asyncio.create_task(sink.run())
    while sink.stats.messages < MESSAGES:
        await asyncio.sleep(0.005)
    await sink.commit()  # in the store, as a timed commit would have it
    rate = MESSAGES / (time.perf_counter() - start)
    sink.stop()
    await task
    await bus.close()
    return rate


async def ingest_rates() -> tuple[float, float, int]:
    """(raw, sink) messages per second, best of alternating rounds, and samples per message."""
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(ServerConfig(port=0), Path(tmp) / "nats")
        await server.start()
        try:
            bus = await connect(BusConfig(prefix=PREFIX), "bench", servers=[server.url])
            await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
            js = bus.nc.jetstream()
            batches = [host_batch(i % HOSTS, T0 + 10 * (i // HOSTS)) for i in range(MESSAGES)]
            for chunk in range(0, MESSAGES, 1000):
                await asyncio.gather(
                    *(
                        js.publish(bus.subjects.metrics(b.host, b.agent), encode(b))
                        for b in batches[chunk : chunk + 1000]
                    )
                )
            await bus.close()
            stream = stream_name(PREFIX, "metrics")
            raw_rates, sink_rates = [], []
            for round_ in range(3):
                raw_rates.append(await raw_consume(server.url, f"{PREFIX}.metrics.>", stream))
                sink_rates.append(await sink_consume(server.url, Path(tmp) / f"data{round_}"))
                nc = await nats.connect(server.url)
                await nc.jetstream().delete_consumer(stream, "raw")
                await nc.jetstream().delete_consumer(stream, "report")
                await nc.close()
        finally:
            await server.stop()
    return max(raw_rates), max(sink_rates), len(batches[0].samples)


def fill_month(store: RollupStore) -> None:
    """30 days of 100 hosts (one batch per host every 20 minutes), probe checks and alerts."""
    for hour in range(DAYS * 24):
        events: list[MetricBatch | HealthEvent | Alert] = []
        for slot in range(3):
            ts = T0 + hour * 3600 + slot * 1200
            events += [host_batch(h, ts) for h in range(HOSTS)]
            events += [
                HealthEvent(host="probe", agent="probe", target=t, status="ok", latency=0.05, ts=ts)
                for t in ("backend", "frontend", "ollama", "postgres")
            ]
        events += [
            Alert(
                fingerprint=f"f{hour}",
                rule=f"rule{hour % 7}",
                severity="warning",
                status="resolved",
                labels={"host": f"host{hour % HOSTS:03d}"},
                summary="bench",
                starts_at=T0 + hour * 3600,
                ends_at=T0 + hour * 3600 + 300,
            )
        ]
        store.ingest(events)


def render_seconds(store: RollupStore, out: Path, days: int) -> float:
    """Seconds to build and write (HTML, Markdown, JSON) the report of the last `days` days."""
    config = ReportSinkConfig()
    end = T0 + DAYS * 86400
    kind: PeriodKind = "day" if days == 1 else "week"
    period = Period(
        kind=kind,
        label=f"bench-{days}d",
        first_day="",
        last_day="",
        start=end - days * 86400,
        end=end,
        timezone="UTC",
    )
    start = time.perf_counter()
    report = build_report(load_inputs(store, period, config), config, period, end)
    write_report(report, out, config.zone)
    return time.perf_counter() - start


async def run() -> list[tuple[str, str, str]]:
    raw, ours, samples = await ingest_rates()
    rows = [
        ("report sink: raw nats-py pull, no decode", f"{raw:,.0f} msg/s (baseline)", "-"),
        (
            f"report sink: into SQLite rollups ({samples} samples/msg)",
            f"{ours:,.0f} msg/s = {ours / raw:.2f} x baseline",
            ">= 100 msg/s (100 hosts x 3 agents every 10 s is 30)",
        ),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = RollupStore(Path(tmp) / "rollups.sqlite3")
        began = time.perf_counter()
        fill_month(store)
        filled = time.perf_counter() - began
        rows.append((f"report: fill {HOSTS} hosts x {DAYS} days (direct ingest)", f"{filled:.1f} s", "-"))
        for days, target in ((1, "< 5 s"), (7, "< 15 s"), (30, "< 60 s")):
            seconds = render_seconds(store, Path(tmp), days)
            rows.append(
                (
                    f"report: render {days}-day report, {HOSTS} hosts, {DAYS} days stored",
                    f"{seconds:.2f} s",
                    target,
                )
            )
        store.close()
    return rows


if __name__ == "__main__":
    for measure, result, target in asyncio.run(run()):
        print(f"{measure:<60} {result:<40} (target: {target})")
