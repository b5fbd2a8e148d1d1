"""Screenshots of the console's pages for docs/: `python -m tests.console_screenshots [DIR]`.

A real console (ConsoleService on an embedded nats-server) is given six hours of a small fleet's
history, then live events through the bus, and Debian's headless chromium (driven by Playwright)
takes each page at 1400 px wide.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bus import vocabulary as vocab
from bus.config import BusConfig
from bus.connection import Bus, connect
from bus.events import Alert, HealthEvent, Heartbeat, MetricBatch, Sample
from bus.jetstream import KV_BUCKETS, bucket_name, ensure_bucket
from bus.kvblob import BlobStore
from bus.records import ActiveAlert, ActiveAlerts, Matcher, Silence, SilenceStore, save_active
from bus.server import EmbeddedServer, ServerConfig
from sinks.console.config import ConsoleConfig
from sinks.console.service import ConsoleService

PREFIX = "screens"
HOSTS = ("jarvis-app01", "jarvis-app02", "jarvis-db01", "jarvis-gpu01", "jarvis-edge01", "jarvis-ops01")
CONTAINERS = ("backend", "frontend", "ollama", "postgres", "redis")
SERVICES = ("backend", "frontend", "ollama", "database")
PAGES = {
    "overview": "/",
    "performance": "/performance?range=6h",
    "errors": "/errors?range=6h",
    "alerts": "/alerts",
}


def history(service: ConsoleService, now: float) -> None:
    """Six hours of host, container and probe batches, one every two minutes."""
    for step in range(180, -1, -1):
        ts = now - step * 120
        wave = math.sin(step / 14)
        for n, host in enumerate(HOSTS):
            cpu = 35 + 25 * wave + 8 * n + (40 if host == "jarvis-gpu01" and step < 40 else 0)
            samples = [
                Sample(vocab.CPU_PERCENT, min(cpu, 99)),
                Sample(vocab.MEM_PERCENT, 48 + 6 * n + 3 * wave),
                Sample(vocab.DISK_PERCENT, 61 + 5 * n + (180 - step) / 60, {"mount": "/"}),
                Sample(vocab.LOAD_1, 1.2 + n / 3 + wave),
                Sample(vocab.LOAD_5, 1.1 + n / 3),
                Sample(vocab.LOAD_15, 1.0 + n / 3),
            ]
            service.observe(MetricBatch(host=host, agent="host", ts=ts, interval=10, samples=samples))
        probe = []
        for n, name in enumerate(SERVICES):
            labels = {"check": name}
            errors = 0.004 + (0.09 if name == "ollama" and 30 < step < 70 else 0.0)
            probe += [
                Sample(vocab.HTTP_REQUEST_RATE, 40 + 30 * wave + 10 * n, labels),
                Sample(vocab.HTTP_ERROR_RATIO, errors, labels),
                Sample(vocab.HTTP_LATENCY_P50, 0.03 + 0.01 * n, labels),
                Sample(vocab.HTTP_LATENCY_P95, 0.09 + 0.03 * n + 0.02 * wave, labels),
                Sample(vocab.HTTP_LATENCY_P99, 0.2 + 0.08 * n + 0.05 * wave, labels),
            ]
        service.observe(MetricBatch(host="jarvis-ops01", agent="probe", ts=ts, interval=30, samples=probe))
        logs = []
        for host in HOSTS[:2]:
            for name in CONTAINERS:
                labels = {"container": name, "image": f"jarvis/{name}:1.4"}
                count = 3.0 if name == "backend" and step < 25 else 0.0
                logs.append(Sample(vocab.CONTAINER_LOG_ERRORS, count, labels))
            service.observe(MetricBatch(host=host, agent="container", ts=ts, interval=10, samples=logs))
            logs = []


async def live(bus: Bus, now: float) -> None:
    """What the agents and the evaluator say now: containers, checks, heartbeats, alerts."""
    subjects = bus.subjects
    for n, host in enumerate(HOSTS[:3]):
        samples = []
        for m, name in enumerate(CONTAINERS):
            labels = {"container": name, "image": f"jarvis/{name}:1.4"}
            samples += [
                Sample(vocab.CONTAINER_RUNNING, 1.0, labels),
                Sample(vocab.CONTAINER_HEALTHY, 1.0, labels),
                Sample(vocab.CONTAINER_RESTART_COUNT, float((n + m) % 3), labels),
                Sample(vocab.CONTAINER_CPU_PERCENT, 4.0 + 7 * m, labels),
                Sample(vocab.CONTAINER_MEM_USED_BYTES, (200 + 150 * m) * 2**20, labels),
            ]
        batch = MetricBatch(host=host, agent="container", ts=now, interval=10, samples=samples)
        await bus.publish(subjects.metrics(host, "container"), batch)
        for name in CONTAINERS:
            bad = host == "jarvis-app01" and name == "backend"
            event = HealthEvent(
                host=host,
                agent="container",
                target=name,
                status="critical" if bad else "ok",
                detail="running but unhealthy, restarted 2 times" if bad else "running, healthy",
                ts=now,
            )
            await bus.publish(subjects.health(host, "container", name), event)
    lines = (
        "1 error and 0 warning lines since the last cycle\n"
        "2026-12-01T10:41:07Z ERROR db pool exhausted: 20 of 20 connections busy (timeout 30s)\n"
        "2026-12-01T10:41:09Z ERROR POST /api/chat 500: upstream ollama timed out after 60s"
    )
    log = HealthEvent(
        host="jarvis-app01", agent="container", target="log:backend", status="warning", detail=lines, ts=now
    )
    await bus.publish(subjects.health("jarvis-app01", "container", "log:backend"), log)
    for n, name in enumerate(SERVICES):
        for ts in (now - 3600, now - 600, now):
            down = name == "ollama" and now - 900 < ts < now - 100
            event = HealthEvent(
                host="jarvis-ops01",
                agent="probe",
                target=name,
                status="critical" if down else "ok",
                latency=0.02 + 0.05 * n,
                detail="HTTP 502 from http://ollama:11434/api/tags" if down else "HTTP 200",
                ts=ts,
            )
            await bus.publish(subjects.health("jarvis-ops01", "probe", name), event)
    for part in ("host", "container", "probe", "evaluator", "slack", "report", "console"):
        beat = Heartbeat(host="jarvis-ops01", agent=part, version="jarvis-monitor", interval=10, ts=now)
        await bus.publish(subjects.heartbeat("jarvis-ops01", part), beat)
    for alert in alerts(now):
        await bus.publish(subjects.alerts(alert.severity, alert.labels["host"], alert.rule), alert)
    await bus.nc.flush()


def alerts(now: float) -> list[Alert]:
    return [
        Alert(
            fingerprint="a1c3e5",
            rule="container_unhealthy",
            severity="warning",
            status="firing",
            labels={"host": "jarvis-app01", "container": "backend", "target": "backend"},
            summary="container backend on jarvis-app01: running but unhealthy, restarted 2 times",
            starts_at=now - 420,
        ),
        Alert(
            fingerprint="b2d4f6",
            rule="high_cpu",
            severity="critical",
            status="firing",
            labels={"host": "jarvis-gpu01"},
            summary="CPU on jarvis-gpu01 at 97% for 5 minutes",
            value=97.0,
            starts_at=now - 900,
        ),
        Alert(
            fingerprint="c9e8a7",
            rule="disk_usage_high",
            severity="warning",
            status="pending",
            labels={"host": "jarvis-db01"},
            summary="disk / on jarvis-db01 at 82%",
            value=82.0,
            starts_at=now - 60,
        ),
    ]


async def evaluator_state(bus: Bus, now: float) -> None:
    """The evaluator's list (one alert silenced) and a silence, in KV as the evaluator keeps them."""
    js = bus.nc.jetstream()
    kv = {}
    for bucket in ("state", "silences"):
        name = bucket_name(PREFIX, bucket)
        await ensure_bucket(js, name, KV_BUCKETS[bucket])
        kv[bucket] = await js.key_value(name)
    silence = Silence(
        id="5f1e2d3c4b5a",
        matchers=[Matcher(name="host", value="jarvis-db01"), Matcher(name="rule", op="=~", value="disk_.*")],
        starts_at=now - 300,
        ends_at=now + 7200,
        author="ops",
        comment="disk cleanup running until 14:00",
    )
    await SilenceStore(kv["silences"]).add(silence)
    rows = []
    for alert in alerts(now):
        rows.append(
            ActiveAlert(
                fingerprint=alert.fingerprint,
                rule=alert.rule,
                severity=alert.severity,
                state=alert.status,
                labels=dict(alert.labels),
                summary=alert.summary,
                value=alert.value,
                since=alert.starts_at,
                silenced_by=[silence.id] if alert.rule == "disk_usage_high" else [],
                inhibited_by=[],
                acked=alert.rule == "container_unhealthy",
                flapping=False,
            )
        )
    await save_active(BlobStore(kv["state"]), ActiveAlerts(ts=now, alerts=rows))


async def shoot(out: Path) -> list[Path]:
    binary = shutil.which("chromium")
    if binary is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as data:
        server = EmbeddedServer(ServerConfig(port=0), Path(data))
        await server.start()
        bus = await connect(BusConfig(prefix=PREFIX), "screens console", servers=[server.url])
        publisher = await connect(BusConfig(prefix=PREFIX), "screens agents", servers=[server.url])
        sla = {"backend": 99.9, "ollama": 99.5}
        service = ConsoleService(ConsoleConfig(port=0, backfill=0), bus, sla=sla, host="jarvis-ops01")
        task = asyncio.create_task(service.run())
        shots = []
        try:
            await asyncio.wait_for(service.ready.wait(), 10)
            now = time.time()
            history(service, now)
            await evaluator_state(publisher, now)
            await live(publisher, now)
            await asyncio.sleep(2.5)  # the console reads the evaluator's list every second
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=binary, args=["--no-sandbox", "--disable-gpu", "--disable-quic"]
                )
                page = await browser.new_page(viewport={"width": 1400, "height": 900})
                for name, path in PAGES.items():
                    await page.goto(f"{service.url}{path}")
                    await page.wait_for_selector("#live.on")
                    shot = out / f"console-{name}.png"
                    await page.screenshot(path=str(shot), full_page=True)
                    shots.append(shot)
                await browser.close()
        finally:
            service.stop()
            await task
            await bus.close()
            await publisher.close()
            await server.stop()
    return shots


if __name__ == "__main__":
    for path in asyncio.run(shoot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"))):
        print(path)
