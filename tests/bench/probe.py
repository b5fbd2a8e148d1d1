"""Probe benchmark: CPU per cycle of 100 HTTP checks on loopback, against raw aiohttp GETs.

`python -m tests.bench.probe`. The target server runs in its own process, so the CPU time
measured here is the probe's alone.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import msgspec
from aiohttp import web

from agents.probe import ProbeAgentConfig, ProbeCollector
from agents.runner import AgentRunner
from bus.events import HealthEvent
from bus.testing import RecordingPublisher
from bus.units import dec_hook

CHECKS = 100
CYCLES = 40
WARMUP = 3


async def _serve() -> None:
    """The target: 100 paths answering a small JSON body; prints its port, runs until killed."""
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "page": request.match_info["n"]})

    app.router.add_get("/page/{n}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


async def _cpu_ms_per_cycle(cycle: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """Median process CPU and wall milliseconds of one call, after a warm-up."""
    for _ in range(WARMUP):
        await cycle()
    cpu, wall = [], []
    for _ in range(CYCLES):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        await cycle()
        cpu.append((time.process_time() - cpu_start) * 1000)
        wall.append((time.perf_counter() - wall_start) * 1000)
    return statistics.median(cpu), statistics.median(wall)


def _raw_gets(session: aiohttp.ClientSession, urls: list[str]) -> Callable[[], Awaitable[object]]:
    async def fetch(url: str) -> bytes:
        async with session.get(url) as response:
            return await response.read()

    async def cycle() -> object:
        return await asyncio.gather(*(fetch(url) for url in urls))

    return cycle


async def run() -> list[tuple[str, str, str]]:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bench.probe", "--serve", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        port = int(await server.stdout.readline())
        urls = [f"http://127.0.0.1:{port}/page/{n}" for n in range(CHECKS)]
        config = msgspec.convert(
            {"interval": "10s", "http": [{"name": f"page-{n}", "url": url} for n, url in enumerate(urls)]},
            ProbeAgentConfig,
            dec_hook=dec_hook,
        )
        collector = ProbeCollector(config)
        publisher = RecordingPublisher()
        runner = AgentRunner(collector, publisher, config, "bench")

        await runner.run_cycle()  # a benchmark of failing checks would measure the wrong thing
        statuses = [e.status for e in publisher.events("*", HealthEvent) if isinstance(e, HealthEvent)]
        assert statuses == ["ok"] * CHECKS, statuses

        async def probe_cycle() -> None:
            await runner.run_cycle()  # collect, then encode and "publish" 100 health events and a batch
            publisher.clear()

        # The same connection policy as the probe (a fresh connection per request), and keep-alive.
        fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32, force_close=True))
        pooled = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32))
        try:
            baseline_cpu, baseline_wall = await _cpu_ms_per_cycle(_raw_gets(fresh, urls))
            pooled_cpu, _ = await _cpu_ms_per_cycle(_raw_gets(pooled, urls))
            probe_cpu, probe_wall = await _cpu_ms_per_cycle(probe_cycle)
        finally:
            await fresh.close()
            await pooled.close()
            await collector.close()
    finally:
        server.kill()
        await server.wait()
    return [
        (
            f"raw aiohttp: {CHECKS} GETs, fresh connection each (baseline)",
            f"{baseline_cpu:.1f} ms CPU, {baseline_wall:.1f} ms wall",
            "-",
        ),
        (f"raw aiohttp: {CHECKS} GETs, keep-alive", f"{pooled_cpu:.1f} ms CPU", "-"),
        (
            f"probe cycle: {CHECKS} HTTP checks, published",
            f"{probe_cpu:.1f} ms CPU = {probe_cpu / baseline_cpu:.2f} x baseline, {probe_wall:.1f} ms wall",
            "< 2 x baseline",
        ),
    ]


async def main() -> None:
    for measure, result, target in await run():
        print(f"{measure:<58} {result:<48} target {target}")


if __name__ == "__main__":
    asyncio.run(_serve() if "--serve" in sys.argv else main())
