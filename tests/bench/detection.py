"""Breach to Slack: `python -m tests.bench detection`.

A real nats-server, the EvaluatorService (a rule without `for`, no group_wait) and the Slack sink in
webhook mode against a local fake Slack: the time from publishing a breaching MetricBatch to Slack's
request, once per new host, against a raw nats-py request/reply round trip on the same server
measured in the same run.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import nats
from nats.aio.msg import Msg

from bus.config import BusConfig
from bus.connection import connect
from bus.events import MetricBatch, Sample
from bus.jetstream import provision
from bus.server import EmbeddedServer, ServerConfig
from bus.units import Duration
from evaluator.config import DefaultRoute, EvaluatorConfig, Rule
from evaluator.service import EvaluatorService
from sinks.slack import SlackSink, SlackSinkConfig
from tests.fakeslack import FakeSlack

BREACHES = 60
ROUND_TRIPS = 500
CONFIG = EvaluatorConfig(
    default_rules=False,
    default_inhibit_rules=False,
    rules=[Rule(name="disk_full", metric="disk.percent", threshold=85, severity="critical")],
    default_route=DefaultRoute(group_wait=Duration(0)),
)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


async def round_trips(url: str) -> list[float]:
    nc = await nats.connect(url)
    try:

        async def echo(msg: Msg) -> None:
            await msg.respond(b"ok")

        await nc.subscribe("bench.echo", cb=echo)
        out = []
        for _ in range(ROUND_TRIPS):
            start = time.perf_counter()
            await nc.request("bench.echo", b"ping", timeout=5)
            out.append(time.perf_counter() - start)
        return out
    finally:
        await nc.close()


async def breaches(url: str, data: Path) -> list[float]:
    slack = FakeSlack()
    await slack.start()
    bus = await connect(BusConfig(prefix="bench"), "bench", servers=[url])
    await provision(bus.nc.jetstream(), bus.subjects, BusConfig().streams)
    service = EvaluatorService(CONFIG, bus, batch_window=0.2)
    sink = SlackSink(
        SlackSinkConfig(min_interval=Duration(0.001)), bus, environ={"SLACK_WEBHOOK_URL": slack.webhook_url}
    )
    tasks = [asyncio.create_task(service.run()), asyncio.create_task(sink.run())]
    latencies = []
    try:
        await asyncio.wait_for(service.ready.wait(), 30)
        for n in range(BREACHES + 5):  # the first few warm up every path
            before = len(slack.webhook_posts)
            batch = MetricBatch(
                host=f"web{n:03d}",
                agent="host",
                ts=time.time(),
                interval=10,
                samples=[Sample("disk.percent", 95.0, {"mount": "/"})],
            )
            start = time.perf_counter()
            await bus.publish(bus.subjects.metrics(batch.host, "host"), batch)
            while len(slack.webhook_posts) == before:
                await asyncio.sleep(0.0005)
                if time.perf_counter() - start > 10:
                    raise TimeoutError(f"breach {n} never reached Slack")
            if n >= 5:
                latencies.append(time.perf_counter() - start)
            await asyncio.sleep(0.25)  # an idle pipeline between breaches, as a real one is
    finally:
        service.stop()
        sink.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        await bus.close()
        await slack.stop()
    return latencies


async def run() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory() as data:
        server = EmbeddedServer(ServerConfig(port=0), Path(data))
        await server.start()
        try:
            raw = await round_trips(server.url)
            ours = await breaches(server.url, Path(data))
        finally:
            await server.stop()
    raw_p99, ours_p50, ours_p99 = p99(raw), statistics.median(ours), p99(ours)
    return [
        (
            "raw NATS request/reply, p50 / p99",
            f"{statistics.median(raw) * 1e3:.2f} / {raw_p99 * 1e3:.2f} ms",
            "baseline",
        ),
        (
            "breach to Slack request, p50",
            f"{ours_p50 * 1e3:.1f} ms = {ours_p50 / statistics.median(raw):.0f} x",
            "-",
        ),
        (
            "breach to Slack request, p99",
            f"{ours_p99 * 1e3:.1f} ms = {ours_p99 / raw_p99:.0f} x raw p99",
            "<= 25 ms",
        ),
    ]
