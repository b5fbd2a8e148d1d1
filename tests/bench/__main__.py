"""Benchmarks: `python -m tests.bench [PART ...]`. Ratios against a baseline measured in the same run.

Parts: host (this module), and one module per part (`tests/bench/<part>.py`), each with
`async def run()` returning rows of (measure, result, target). Parts in ON_REQUEST run only when
named, and read their own `--flags` from the command line.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import psutil

from agents.host import HostAgentConfig, HostCollector
from agents.runner import AgentRunner
from bus.config import BusConfig
from bus.connection import connect
from bus.events import MetricBatch, encode
from bus.server import EmbeddedServer, ServerConfig
from bus.testing import RecordingPublisher

CYCLES = 300
MESSAGES = 20_000
ROUNDS = 5


async def host_cycle_cpu() -> tuple[float, float]:
    """CPU milliseconds per full host-agent cycle (collect, encode, heartbeat): median and p95."""
    runner = AgentRunner(HostCollector(HostAgentConfig()), RecordingPublisher(), HostAgentConfig(), "bench")
    await runner.run_cycle()  # the first cycle sets psutil's CPU baseline
    costs = []
    for _ in range(CYCLES):
        start = time.process_time()
        await runner.run_cycle()
        costs.append((time.process_time() - start) * 1000)
        runner.publisher.clear()  # type: ignore[attr-defined]
    costs.sort()
    return statistics.median(costs), costs[int(len(costs) * 0.95)]


async def sample_batch() -> MetricBatch:
    collector = HostCollector(HostAgentConfig())
    await collector.collect()
    collection = await collector.collect()
    return MetricBatch(host="bench", agent="host", ts=time.time(), interval=10.0, samples=collection.samples)


async def _rate(publish: Callable[[], Awaitable[object]], flush: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    for _ in range(MESSAGES):
        await publish()
    await flush()
    return MESSAGES / (time.perf_counter() - start)


async def publish_rates(url: str, batch: MetricBatch) -> tuple[float, float, float]:
    """Best of ROUNDS, alternating: raw nats-py publishing pre-encoded bytes, raw nats-py with
    the stdlib's json.dumps of the same dict each time (what a hand-written agent does), and
    `Bus.publish` encoding the typed event each time."""
    payload = encode(batch)
    as_dict = json.loads(payload)
    subject = "bench.metrics.bench.host"
    raw = await nats.connect(url)
    bus = await connect(BusConfig(prefix="bench"), "bench", servers=[url])
    raw_rates, json_rates, our_rates = [], [], []
    for _ in range(ROUNDS):
        raw_rates.append(await _rate(lambda: raw.publish(subject, payload), raw.flush))
        json_rates.append(await _rate(lambda: raw.publish(subject, json.dumps(as_dict).encode()), raw.flush))
        our_rates.append(await _rate(lambda: bus.publish(subject, batch), bus.nc.flush))
    await raw.close()
    await bus.close()
    return max(raw_rates), max(json_rates), max(our_rates)


async def agent_rss(url: str) -> float:
    """Resident memory (MB) of a `jarvis-monitor agent host` process after a few cycles."""
    env = {**os.environ, "JARVIS_NATS_URL": url}
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as config:
        config.write('[bus]\nprefix = "benchrss"\n[agents.host]\ninterval = "1s"\n')
    process = subprocess.Popen(  # noqa: ASYNC220 - the benchmark measures this very process
        [sys.executable, "-m", "jarvis_monitor", "-c", config.name, "agent", "host"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nc = await nats.connect(url)
    sub = await nc.subscribe("benchrss.heartbeat.>")
    try:
        for _ in range(5):
            await sub.next_msg(timeout=30)
        return psutil.Process(process.pid).memory_info().rss / 1024**2
    finally:
        await nc.close()
        process.terminate()
        process.wait(10)
        os.unlink(config.name)


PARTS = (
    "host",
    "container",
    "container_logs",
    "probe",
    "postgres",
    "evaluator_engine",
    "evaluator_service",
    "detection",
    "report",
    "report_fanin",
    "console_metrics",
    "console",
    "agent_rss",
)
# Minutes long and need Debian's Prometheus stack: `python -m tests.bench versus [--quick]`, `idle_cpu`;
# minutes long: `commit_cost [--quick]`, `report_store [--days=7]`.
ON_REQUEST = ("versus", "idle_cpu", "commit_cost", "evaluator_fanin", "report_store")


async def host() -> None:
    median, p95 = await host_cycle_cpu()
    batch = await sample_batch()
    with tempfile.TemporaryDirectory() as data:
        server = EmbeddedServer(ServerConfig(port=0), Path(data))
        await server.start()
        try:
            raw_rate, json_rate, ours = await publish_rates(server.url, batch)
            rss = await agent_rss(server.url)
        finally:
            await server.stop()
    ratio = ours / raw_rate
    encode_us = encode_cost_us(batch)
    size = len(encode(batch))
    print(f"host agent CPU per cycle     median {median:.2f} ms, p95 {p95:.2f} ms   (target <= 5 ms)")
    print(f"agent resident memory        {rss:.1f} MB                      (target < 60 MB)")
    print(f"MetricBatch: {size} bytes, {len(batch.samples)} samples; best of {ROUNDS} x {MESSAGES} publishes")
    print(f"  raw nats-py, pre-encoded   {raw_rate:,.0f} msg/s (baseline)")
    print(f"  Bus.publish, encoding each {ours:,.0f} msg/s = {ratio:.2f} x baseline, ", end="")
    print(f"overhead {100 * (1 - ratio):.0f}%   (target < 20%)")
    print(
        f"  raw nats-py + json.dumps   {json_rate:,.0f} msg/s = {json_rate / raw_rate:.2f} x baseline; ",
        end="",
    )
    print(f"Bus.publish is {ours / json_rate:.2f} x this")
    share = encode_us / 10 / median
    print(f"  encoding alone             {encode_us:.2f} us per batch = {share:.2f}% of a host cycle's CPU")


def encode_cost_us(batch: MetricBatch, repeat: int = 100_000) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        encode(batch)
    return (time.perf_counter() - start) / repeat * 1e6


async def main(parts: list[str]) -> None:
    for part in parts:
        print(f"## {part}", flush=True)
        if part == "host":
            await host()
            continue
        module = importlib.import_module(f"tests.bench.{part}")
        for measure, result, target in await module.run():
            print(f"{measure:<48} {result:<32} (target: {target})", flush=True)


if __name__ == "__main__":
    chosen = [arg for arg in sys.argv[1:] if not arg.startswith("-")] or list(PARTS)
    unknown = sorted(set(chosen) - set(PARTS) - set(ON_REQUEST))
    if unknown:
        sys.exit(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS + ON_REQUEST)}")
    asyncio.run(main(chosen))
