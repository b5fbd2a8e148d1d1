"""Console benchmark: the overview of 100 hosts x 30 containers and 28 checks served (and drawn by
Chromium when it is installed) against an empty overview, and bus event to an SSE client on
loopback against a raw nats-py round trip on the same server.

Run alone with `python -m tests.bench console`.
"""

from __future__ import annotations

import asyncio
import html
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import nats
from aiohttp.test_utils import TestServer

from bus import vocabulary as vocab
from bus.config import BusConfig
from bus.connection import connect
from bus.events import Alert, HealthEvent, MetricBatch, Sample, encode
from bus.server import EmbeddedServer, ServerConfig
from sinks.console.app import Context, make_app
from sinks.console.config import ConsoleConfig, ConsoleSecrets
from sinks.console.live import COALESCE, Hub
from sinks.console.render import Renderer
from sinks.console.service import ConsoleService
from sinks.console.state import ConsoleState

HOSTS, CONTAINERS, CHECKS = 100, 30, 28
HISTORY_POINTS = 360  # a full sparkline per host series
REQUESTS = 30
EVENTS = 300
PREFIX = "benchconsole"


def fleet(now: float) -> ConsoleState:
    """The model after hours of a 100-host fleet: full sparklines, every container and check, alerts."""
    state = ConsoleState()
    step = state.step
    for host in range(HOSTS):
        name = f"host{host:03d}"
        for point in range(HISTORY_POINTS):
            ts = now - (HISTORY_POINTS - point) * step
            samples = [
                Sample(vocab.CPU_PERCENT, (host + point) % 100),
                Sample(vocab.MEM_PERCENT, 40 + host % 50),
                Sample(vocab.DISK_PERCENT, 50 + point % 30, {"mount": "/"}),
                Sample(vocab.LOAD_1, 1.5),
                Sample(vocab.LOAD_5, 1.2),
                Sample(vocab.LOAD_15, 1.0),
            ]
            state.observe(MetricBatch(host=name, agent="host", ts=ts, interval=10, samples=samples))
        samples = []
        for index in range(CONTAINERS):
            labels = {"container": f"svc-{index:02d}-{'x' * (index % 3) * 20}", "image": "jarvis/app:1.4"}
            samples += [
                Sample(vocab.CONTAINER_RUNNING, 1.0, labels),
                Sample(vocab.CONTAINER_HEALTHY, 0.0 if (host + index) % 97 == 0 else 1.0, labels),
                Sample(vocab.CONTAINER_RESTART_COUNT, float(index % 4), labels),
                Sample(vocab.CONTAINER_CPU_PERCENT, 3.5, labels),
                Sample(vocab.CONTAINER_MEM_USED_BYTES, 2.5e8, labels),
            ]
        state.observe(MetricBatch(host=name, agent="container", ts=now, interval=10, samples=samples))
    for check in range(CHECKS):
        for ts in (now - 60, now):
            state.observe(
                HealthEvent(
                    host="monitor",
                    agent="probe",
                    target=f"check-{check:02d}",
                    status="critical" if check == 3 else "ok",
                    ts=ts,
                    latency=0.04,
                )
            )
    for index in range(20):
        state.observe(
            Alert(
                fingerprint=f"fp{index:04d}",
                rule="container_unhealthy",
                severity="warning",
                status="firing",
                labels={"host": f"host{index:03d}"},
                summary="container unhealthy",
                starts_at=now - 600,
            )
        )
    return state


def context(state: ConsoleState) -> Context:
    renderer = Renderer()
    return Context(
        config=ConsoleConfig(),
        secrets=ConsoleSecrets(),
        state=state,
        renderer=renderer,
        hub=Hub(state, renderer),
    )


async def _serve_times(state: ConsoleState) -> tuple[list[float], int]:
    """Milliseconds from request to the whole overview received, over loopback; and its size."""
    server = TestServer(make_app(context(state)), host="127.0.0.1")
    await server.start_server()
    times: list[float] = []
    size = 0
    try:
        async with aiohttp.ClientSession() as session:
            url = str(server.make_url("/"))
            for _ in range(REQUESTS + 2):
                start = time.perf_counter()
                async with session.get(url) as response:
                    body = await response.read()
                times.append((time.perf_counter() - start) * 1000)
                size = len(body)
    finally:
        await server.close()
    return sorted(times[2:]), size  # the first two warm the template cache


async def _browser_times(state: ConsoleState) -> list[float] | None:
    """Milliseconds Chromium takes from navigation to a drawn, loaded overview (None without it)."""
    binary = shutil.which("chromium")
    if binary is None:
        return None
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return None
    server = TestServer(make_app(context(state)), host="127.0.0.1")
    await server.start_server()
    times = []
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=binary, args=["--no-sandbox", "--disable-gpu", "--disable-quic"]
            )
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            for _ in range(7):
                await page.goto(str(server.make_url("/")), wait_until="load")
                timing = await page.evaluate(
                    "(() => { const t = performance.getEntriesByType('navigation')[0];"
                    " return t.loadEventEnd - t.startTime; })()"
                )
                times.append(float(timing))
            await browser.close()
    finally:
        await server.close()
    return sorted(times[2:])


def _p(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def bare_table_ms(state: ConsoleState, now: float) -> float:
    """The least any server pays for the same rows: html.escape on each cell of a plain table, joined."""
    start = time.perf_counter()
    rows = [
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>"
        for cells in [
            *(
                (v.host, v.name, v.running, v.health, v.restarts, v.cpu, v.mem_bytes, v.detail)
                for v in state.containers.values()
            ),
            *((v.host, v.cpu, v.mem, v.disk, v.load1, v.load5, v.load15, v.ts) for v in state.hosts.values()),
            *((c.target, c.host, c.status, c.latency, c.detail, c.ts) for c in state.checks.values()),
        ]
    ]
    "".join(rows)
    return (time.perf_counter() - start) * 1000


async def overview_rows() -> list[tuple[str, str, str]]:
    now = time.time()
    full, empty = fleet(now), ConsoleState()
    full_times, size = await _serve_times(full)
    empty_times, _ = await _serve_times(empty)
    bare = statistics.median([bare_table_ms(full, now) for _ in range(7)])
    median, base = statistics.median(full_times), statistics.median(empty_times)
    rows = [
        (
            f"overview {HOSTS}x{CONTAINERS} + {CHECKS} checks, served",
            f"median {median:.0f} ms, p95 {_p(full_times, 0.95):.0f} ms ({size / 1024:.0f} KiB)",
            "<= 300 ms",
        ),
        ("  empty overview, served (baseline)", f"median {base:.1f} ms", "-"),
        (
            "  the same rows as a bare escaped table (baseline)",
            f"median {bare:.0f} ms; the overview costs {median / bare:.1f} x this",
            "-",
        ),
        ("  load average while measuring", f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", "-"),
    ]
    drawn = await _browser_times(full)
    if drawn is not None:
        rows.append(
            (
                "  the same drawn by Chromium (navigation to load)",
                f"median {statistics.median(drawn):.0f} ms, max {max(drawn):.0f} ms",
                "-",
            )
        )
    return rows


async def _raw_round_trips(url: str) -> list[float]:
    """Milliseconds from a raw nats-py publish to its arrival at a subscriber of the same server."""
    pub, sub_nc = await nats.connect(url), await nats.connect(url)
    sub = await sub_nc.subscribe(f"{PREFIX}raw.x")
    await sub_nc.flush()
    times = []
    try:
        for n in range(EVENTS):
            start = time.perf_counter()
            await pub.publish(f"{PREFIX}raw.x", str(n).encode())
            await pub.flush()
            await sub.next_msg(timeout=5)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        await pub.close()
        await sub_nc.close()
    return sorted(times)


async def _sse_latencies(url: str) -> list[float]:
    """Milliseconds from publishing a container's health event to the SSE message that carries it."""
    config = BusConfig(prefix=PREFIX)
    service_bus = await connect(config, "bench console", servers=[url])
    publisher = await connect(config, "bench publisher", servers=[url])
    service = ConsoleService(ConsoleConfig(port=0, backfill=0), service_bus, host="bench")
    task = asyncio.create_task(service.run())
    sent: dict[str, float] = {}
    latencies: list[float] = []
    try:
        await asyncio.wait_for(service.ready.wait(), 10)
        async with aiohttp.ClientSession() as session:
            response = await session.get(f"{service.url}/events?page=overview")
            received = asyncio.Event()

            async def read() -> None:
                async for line in response.content:
                    if not line.startswith(b"data: "):
                        continue
                    arrived = time.perf_counter()
                    text = line.decode()
                    for marker in [m for m in sent if m in text]:
                        latencies.append((arrived - sent.pop(marker)) * 1000)
                    if len(latencies) >= EVENTS:
                        received.set()
                        return

            reader = asyncio.create_task(read())
            for n in range(EVENTS):
                marker = f"marker-{n:05d}-"
                # one container per event within a second: a row shows its latest event only
                target = f"api-{n % 50:02d}"
                subject = publisher.subjects.health("web01", "container", target)
                event = HealthEvent(
                    host="web01",
                    agent="container",
                    target=target,
                    status="critical" if n % 2 else "ok",
                    detail=marker,
                    ts=time.time(),
                )
                sent[marker] = time.perf_counter()
                await publisher.nc.publish(subject, encode(event))
                await publisher.nc.flush()
                await asyncio.sleep(0.02)  # a busy bus, not a burst: one event every 20 ms
            await asyncio.wait_for(received.wait(), 10)
            reader.cancel()
            response.close()
    finally:
        service.stop()
        await task
        await service_bus.close()
        await publisher.close()
    return sorted(latencies)


async def live_rows() -> list[tuple[str, str, str]]:
    with tempfile.TemporaryDirectory() as data:
        server = EmbeddedServer(ServerConfig(port=0), Path(data))
        await server.start()
        try:
            raw = await _raw_round_trips(server.url)
            sse = await _sse_latencies(server.url)
        finally:
            await server.stop()
    lost = EVENTS - len(sse)
    return [
        (
            "bus event to an open page (SSE on loopback)",
            f"p50 {statistics.median(sse):.0f} ms, p99 {_p(sse, 0.99):.0f} ms, {lost} lost",
            "p99 <= 1000 ms",
        ),
        (
            "  raw nats-py round trip (baseline)",
            f"p50 {statistics.median(raw):.2f} ms, p99 {_p(raw, 0.99):.2f} ms",
            "-",
        ),
        (
            "  of which the console's coalescing window",
            f"{COALESCE * 1000:.0f} ms",
            "-",
        ),
    ]


async def run() -> list[tuple[str, str, str]]:
    return [*await overview_rows(), *await live_rows()]


if __name__ == "__main__":
    for measure, result, target in asyncio.run(run()):
        print(f"{measure:<48} {result:<40} (target: {target})")
