"""The console's /metrics with 100 hosts (22 host samples, 30 containers and 28 checks each): a scrape
over HTTP and the page's rendering, against prometheus_client's generate_latest of a plain registry
holding the same series, measured in the same run; and what observing a fleet cycle costs.

Run alone with `python -m tests.bench.console_metrics`.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bus.events import Alert, HealthEvent, Heartbeat, MetricBatch, any_event, encode
from bus.server import free_port
from sinks.console.prom import MetricsExporter
from tests.console_events import cycle

HOSTS = 100
ROUNDS = 15
T0 = 1_800_000_000.0

ExporterEvent = MetricBatch | HealthEvent | Heartbeat | Alert


def fleet_cycle(step: int) -> list[ExporterEvent]:
    """One cycle of every host's agents, decoded from JSON as the console receives them."""
    events: list[ExporterEvent] = []
    for host in range(HOSTS):
        for event in cycle(f"host{host:03d}", T0 + 10 * step, step, parts=host == 0):
            decoded = any_event.decode(encode(event))
            assert isinstance(decoded, MetricBatch | HealthEvent | Heartbeat | Alert)
            events.append(decoded)
    return events


def plain_registry(page: bytes) -> CollectorRegistry:
    """A registry of plain prometheus_client Gauges holding the same series as `page`."""
    registry = CollectorRegistry()
    for family in text_string_to_metric_families(page.decode()):
        by_labels: dict[tuple[str, ...], list[tuple[dict[str, str], float]]] = defaultdict(list)
        for sample in family.samples:
            by_labels[tuple(sorted(sample.labels))].append((sample.labels, sample.value))
        for index, (names, samples) in enumerate(by_labels.items()):
            gauge = Gauge(f"{family.name}_{index}", family.documentation, names, registry=registry)
            for labels, value in samples:
                (gauge.labels(**labels) if labels else gauge).set(value)
    return registry


def best_and_median(run: Callable[[], object], rounds: int = ROUNDS) -> tuple[float, float]:
    """Milliseconds of `run()`: best and median of `rounds`."""
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        run()
        times.append((time.perf_counter() - began) * 1000)
    return min(times), statistics.median(times)


async def curl_seconds(url: str) -> float:
    """Seconds curl, a scraper in its own process as Prometheus is, takes to fetch the whole page."""
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-o", "/dev/null", "-w", "%{time_total}", url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return float(out)


async def http_scrapes(exporter: MetricsExporter) -> dict[str, tuple[float, float]]:
    """Milliseconds of a whole GET /metrics over loopback (best, median): by curl in its own process
    when it is installed, and by an aiohttp client sharing the server's event loop."""
    app = web.Application()
    app.router.add_get("/metrics", exporter.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    await web.TCPSite(runner, "127.0.0.1", port).start()
    times: dict[str, list[float]] = {"curl": [], "aiohttp": []}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(ROUNDS):
                if shutil.which("curl"):
                    times["curl"].append(await curl_seconds(url) * 1000)
                began = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                times["aiohttp"].append((time.perf_counter() - began) * 1000)
    finally:
        await runner.cleanup()
    return {client: (min(ms), statistics.median(ms)) for client, ms in times.items() if ms}


def observe_cost(exporter: MetricsExporter, events: list[ExporterEvent]) -> float:
    """CPU milliseconds to observe one fleet cycle."""
    began = time.process_time()
    for event in events:
        exporter.observe(event)
    return (time.process_time() - began) * 1000


def decode_cost(events: list[ExporterEvent]) -> float:
    """CPU milliseconds to decode the same cycle from JSON: what receiving it costs anyway."""
    payloads = [encode(event) for event in events]
    began = time.process_time()
    for payload in payloads:
        any_event.decode(payload)
    return (time.process_time() - began) * 1000


async def run() -> list[tuple[str, str, str]]:
    clock = [T0]
    exporter = MetricsExporter(clock=lambda: clock[0])
    first = fleet_cycle(0)
    tracemalloc.start()
    for event in first:
        exporter.observe(event)
    held = tracemalloc.get_traced_memory()[0] / 1024**2
    tracemalloc.stop()
    costs = []
    for step in range(1, 6):  # later cycles reuse what the first one rendered of each label set
        clock[0] = T0 + 10 * step
        costs.append(observe_cost(exporter, fleet_cycle(step)))
    observe_ms = statistics.median(costs)
    decode_ms = decode_cost(first)

    page = exporter.render()
    registry = plain_registry(page)
    ours_best, ours_median = best_and_median(exporter.render)
    plain_best, plain_median = best_and_median(lambda: generate_latest(registry))
    ours_registry = CollectorRegistry()
    ours_registry.register(exporter)
    same_best, _ = best_and_median(lambda: generate_latest(ours_registry), rounds=3)
    scrapes = await http_scrapes(exporter)
    rows = [
        (
            f"/metrics: {HOSTS} hosts, {exporter.series:,} series",
            f"{len(page) / 1024**2:.1f} MiB page; {held:.0f} MiB held (tracemalloc)",
            "-",
        ),
        (
            "baseline: generate_latest, plain registry",
            f"{plain_best:.0f} ms best, {plain_median:.0f} ms median",
            "-",
        ),
        ("generate_latest of the exporter as a collector", f"{same_best:.0f} ms best", "-"),
        (
            "render the page (MetricsExporter.render)",
            f"{ours_best:.1f} ms best, {ours_median:.1f} ms median "
            f"= {ours_median / plain_median:.3f} x baseline",
            "-",
        ),
    ]
    for client, (best, median) in scrapes.items():
        rows.append(
            (
                f"scrape: GET /metrics by {client}, whole body",
                f"{best:.1f} ms best, {median:.1f} ms median",
                "< 100 ms",
            )
        )
    rows.append(
        (
            f"observe one fleet cycle ({len(first):,} events)",
            f"{observe_ms:.0f} ms CPU = {observe_ms / decode_ms:.2f} x decoding it ({decode_ms:.0f} ms)",
            "-",
        )
    )
    return rows


if __name__ == "__main__":
    for measure, result, target in asyncio.run(run()):
        print(f"{measure:<48} {result:<32} (target: {target})")
