"""The probe's Prometheus side against Debian's real `prometheus` server scraping a real app."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest

from agents.probe import ProbeAgentConfig, ProbeCollector
from agents.runner import Collection
from bus.server import free_port
from bus.units import dec_hook
from tests.conftest import require
from tests.probe_targets import LATENCY_BUCKETS, Targets, closed_port, running_targets

pytestmark = pytest.mark.integration

P95 = "histogram_quantile(0.95, sum(rate(jarvis_request_duration_seconds_bucket[5m])) by (le))"


class Prometheus:
    """A prometheus server on a free loopback port, scraping one target every second."""

    def __init__(self, tmp_path: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tmp_path
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: jarvis\n    static_configs: [{{targets: ['{target}']}}]\n"
        )

    async def __aenter__(self) -> Prometheus:
        binary = shutil.which("prometheus")
        assert binary is not None
        self.log = (self.dir / "prometheus.log").open("wb")
        self.process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            stdout=self.log,
            stderr=self.log,
        )
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        self.log.close()

    async def query(self, expression: str) -> list[dict[str, object]]:
        """The result vector of an instant query; empty while Prometheus is not up or has no data."""
        try:
            async with self.session.get(f"{self.url}/api/v1/query", params={"query": expression}) as response:
                body = await response.json()
        except aiohttp.ClientError:
            return []
        result: list[dict[str, object]] = body["data"]["result"] if body.get("status") == "success" else []
        return result

    async def wait_for(self, expression: str, timeout: float = 60.0) -> float:
        """Poll until the query has a finite value, and return it."""
        found: list[float] = []

        async def has_value() -> None:
            while True:
                result = await self.query(expression)
                values = [float(e["value"][1]) for e in result]  # type: ignore[index]
                if values and math.isfinite(values[0]):
                    found.append(values[0])
                    return
                await asyncio.sleep(0.25)

        try:
            await asyncio.wait_for(has_value(), timeout)
        except TimeoutError:
            log = (self.dir / "prometheus.log").read_text(errors="replace")[-2000:]
            pytest.fail(f"prometheus had no value for {expression} within {timeout}s; its log:\n{log}")
        return found[0]


async def steady_traffic(targets: Targets, stop: asyncio.Event) -> None:
    """Every 50 ms: 18 fast answers (50-100 ms), 2 slow ones (0.5-1 s), one of them a 500."""
    while not stop.is_set():
        targets.metrics.serve(18, "200", 0.07)
        targets.metrics.serve(1, "200", 0.7)
        targets.metrics.serve(1, "500", 0.7)
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def app_under_traffic() -> AsyncIterator[Targets]:
    async with running_targets() as targets:
        stop = asyncio.Event()
        traffic = asyncio.create_task(steady_traffic(targets, stop))
        try:
            yield targets
        finally:
            stop.set()
            await traffic


def bucket_width_at(seconds: float) -> float:
    """Width of the histogram bucket that holds `seconds`."""
    bounds = (0.0, *LATENCY_BUCKETS)
    index = min(bisect.bisect_left(bounds, seconds), len(bounds) - 1)
    return bounds[index] - bounds[max(index - 1, 0)]


def values_of(collection: Collection, name: str) -> dict[str, float]:
    return {s.labels.get("status", ""): s.value for s in collection.samples if s.name == name}


async def test_scrape_p95_agrees_with_prometheus_and_promql_queries_become_metrics(tmp_path: Path) -> None:
    require(
        shutil.which("prometheus") is not None,
        "the prometheus binary is not installed (apt install prometheus)",
    )
    async with (
        app_under_traffic() as targets,
        Prometheus(tmp_path, targets.base.removeprefix("http://")) as prom,
    ):
        unreachable = f"http://127.0.0.1:{closed_port()}"
        config = msgspec.convert(
            {
                "interval": "30s",
                "scrape": [{"name": "backend", "url": targets.url("/metrics")}],
                "promql": [
                    {"name": "request_rate", "server": prom.url, "query": "rate(jarvis_requests_total[1h])"},
                    {"name": "latency_p95", "server": prom.url, "query": P95, "metric": "jarvis.latency_p95"},
                    {"name": "broken", "server": prom.url, "query": "rate(jarvis_requests_total[5m]"},
                    {"name": "nowhere", "server": unreachable, "query": "up"},
                ],
            },
            ProbeAgentConfig,
            dec_hook=dec_hook,
        )
        collector = ProbeCollector(config)
        try:
            await collector.collect()  # the scrape baseline
            theirs = await prom.wait_for(P95)  # a few seconds of data: the window of our next scrape
            collection = await collector.collect()
        finally:
            await collector.close()

    checks = {check.target: check for check in collection.checks}
    samples = {s.name: s for s in collection.samples if not s.name.startswith(("promql.", "jarvis."))}
    ours = samples["http.latency_p95_seconds"].value
    assert abs(ours - theirs) <= bucket_width_at(theirs), (ours, theirs)
    assert 0.5 < ours <= 1.0  # 10% of requests take 0.7s: the 95th percentile lies in (0.5, 1]
    assert samples["http.error_ratio"].value == pytest.approx(0.05)  # 1 in 20 is a 500
    assert samples["http.requests_per_second"].value > 0

    # the runbook's queries, as Prometheus answered them, one sample per series
    rates = values_of(collection, "promql.request_rate")
    assert set(rates) == {"200", "500"}
    assert rates["200"] == pytest.approx(19 * rates["500"], rel=0.2)
    (p95,) = [s for s in collection.samples if s.name == "jarvis.latency_p95"]
    assert p95.labels == {}
    assert abs(p95.value - theirs) <= bucket_width_at(theirs)
    assert checks["request_rate"].status == "ok"
    assert checks["request_rate"].detail == "2 series"

    # a query Prometheus refuses, and a Prometheus that is not there, each say why
    assert checks["broken"].status == "critical"
    assert checks["broken"].detail.startswith("Prometheus refused the query (HTTP 400): bad_data: ")
    assert "parse error" in checks["broken"].detail
    assert checks["nowhere"].status == "critical"
    assert checks["nowhere"].detail == f"cannot query Prometheus at {unreachable}: connection refused"
