"""The console's /metrics against Debian's real Prometheus: promtool passes the page, and every PromQL
expression of the three Grafana dashboards returns data from a Prometheus scraping it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bus import vocabulary as vocab
from bus.events import Heartbeat, MetricBatch, Sample
from bus.server import free_port
from sinks.console.prom import MetricsExporter
from tests.conftest import require
from tests.console_events import cycle
from tests.integration.test_probe_prometheus import Prometheus

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).parents[2] / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
HOSTS = ("web-1", "db-1")
# What Grafana puts in place of its variables: every host and check, a range a person would pick,
# and a rate interval of several 1 s scrapes.
VARIABLES = {"$__rate_interval": "10s", "$__range": "5m", "$host": ".*", "$check": ".*"}
LABEL_VALUES = re.compile(r"label_values\((?P<selector>.+),\s*(?P<label>\w+)\)")
OR_ZERO = " or vector(0)"


def exprs_in(node: Any) -> Iterator[str]:
    """Every `expr` of a dashboard: panels' targets, rows' panels and annotations."""
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield node["expr"]
        for value in node.values():
            yield from exprs_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from exprs_in(value)


def substituted(expr: str) -> str:
    for variable in ("$host", "$check"):  # only ever a regex matcher, so `.*` means All
        assert expr.count(variable) == expr.count(f'=~"{variable}"'), expr
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def dashboard_queries() -> dict[str, str]:
    """Each query to run (substituted) and the dashboard it came from; `... or vector(0)` is also run
    without its fallback, so the fallback cannot hide a query that finds nothing."""
    queries: dict[str, str] = {}
    for path in DASHBOARDS:
        for expr in exprs_in(json.loads(path.read_text())):
            queries[substituted(expr)] = path.name
            if expr.endswith(OR_ZERO):
                queries[substituted(expr.removesuffix(OR_ZERO))] = path.name
    return queries


def variable_queries() -> list[tuple[str, str, str]]:
    """(selector, label, dashboard) of each `label_values(...)` template variable."""
    found = []
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text())["templating"]["list"]:
            if variable["type"] == "query":
                match = LABEL_VALUES.fullmatch(variable["query"]["query"])
                assert match, variable["query"]
                found.append((match["selector"], match["label"], path.name))
    return found


async def feed(exporter: MetricsExporter, stop: asyncio.Event) -> None:
    """Two hosts' agents every second (with a part's heartbeats), and one agent that went silent."""
    exporter.observe(
        Heartbeat(host="old-1", agent=vocab.HOST_AGENT, version="0.1.0", interval=10, ts=time.time() - 600)
    )
    step = 0
    while not stop.is_set():
        now = time.time()
        for host in HOSTS:
            for event in cycle(host, now, step, parts=host == HOSTS[0]):
                exporter.observe(event)
        step += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


@contextlib.asynccontextmanager
async def serving(exporter: MetricsExporter) -> AsyncIterator[str]:
    """The exporter's handler on a loopback port, as the console mounts it; yields host:port."""
    app = web.Application()
    app.router.add_get("/metrics", exporter.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    feeding = asyncio.create_task(feed(exporter, stop))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop.set()
        await feeding
        await runner.cleanup()


def scrape_config(target: str) -> str:
    """deploy/prometheus-scrape.yml as shipped, pointed at the test's port and scraping every second."""
    text = (DEPLOY / "prometheus-scrape.yml").read_text()
    assert "127.0.0.1:10201" in text
    text = text.replace("127.0.0.1:10201", target)
    text = re.sub(r"scrape_interval: \d+s", "scrape_interval: 1s", text)
    return re.sub(r"scrape_timeout: \d+s", "scrape_timeout: 1s", text)


async def instant(prom: Prometheus, expr: str) -> list[dict[str, Any]]:
    """The result of an instant query; a query Prometheus refuses fails the test with its reason."""
    async with prom.session.get(f"{prom.url}/api/v1/query", params={"query": expr}) as response:
        body = await response.json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def wait_until_up(prom: Prometheus, timeout: float = 60.0) -> None:
    """Until Prometheus has scraped the endpoint; its log in the failure if it never does or exits."""

    async def scraped() -> bool:
        with contextlib.suppress(aiohttp.ClientError, AssertionError):
            return bool(await instant(prom, 'up{job="jarvis-monitor"} == 1'))
        return False

    async def up() -> None:
        while prom.process.returncode is None and not await scraped():
            await asyncio.sleep(0.25)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(up(), timeout)
    if prom.process.returncode is not None or not await scraped():
        log = (prom.dir / "prometheus.log").read_text(errors="replace")[-2000:]
        pytest.fail(f"prometheus did not scrape the endpoint within {timeout}s; its log:\n{log}")


def promtool() -> str:
    binary = shutil.which("promtool")
    require(binary is not None, "promtool is not installed (apt install prometheus)")
    assert binary is not None
    return binary


def test_the_scrape_config_is_valid_for_prometheus() -> None:
    result = subprocess.run(
        [promtool(), "check", "config", str(DEPLOY / "prometheus-scrape.yml")],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_three_runbook_dashboards_are_there_for_a_current_grafana() -> None:
    titles = {}
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        titles[board["title"]] = board
        assert board["schemaVersion"] >= 36
        assert board["templating"]["list"][0] | {"current": {}} == {
            **board["templating"]["list"][0],
            "name": "datasource",
            "type": "datasource",
            "query": "prometheus",
        }
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    assert set(titles) == {
        "JARVIS / System Overview",
        "JARVIS / Request Performance",
        "JARVIS / Error Tracking",
    }


def test_promtool_passes_every_metric_the_vocabulary_declares() -> None:
    """Names a new declaration would get wrong (a `_count`, a type in the name) fail here, not in Grafana."""
    exporter = MetricsExporter()
    samples = [
        Sample(spec.name, 1.0, dict.fromkeys(spec.labels, "x"))
        for metrics in vocab.AGENT_METRICS.values()
        for spec in metrics.values()
        if spec.name in vocab.declared_metrics()
    ]
    exporter.observe(MetricBatch(host="h", agent="any", ts=time.time(), interval=10, samples=samples))
    assert exporter.series == len(samples)

    lint = subprocess.run(
        [promtool(), "check", "metrics"], input=exporter.render(), capture_output=True, check=False
    )

    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()


async def test_promtool_passes_the_page_and_every_dashboard_query_returns_data(tmp_path: Path) -> None:
    require(
        shutil.which("prometheus") is not None,
        "the prometheus binary is not installed (apt install prometheus)",
    )
    tool = promtool()
    queries = dashboard_queries()
    assert len(queries) > 50  # three dashboards' worth
    exporter = MetricsExporter()
    async with serving(exporter) as target:
        async with aiohttp.ClientSession() as session, session.get(f"http://{target}/metrics") as response:
            page = await response.read()
        lint = await asyncio.to_thread(
            subprocess.run, [tool, "check", "metrics"], input=page, capture_output=True, check=False
        )
        assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
        assert lint.stdout.strip() == lint.stderr.strip() == b""

        prom = Prometheus(tmp_path, target)
        (tmp_path / "prometheus.yml").write_text(scrape_config(target))
        async with prom:
            await wait_until_up(prom)
            empty = dict(queries)
            deadline = time.monotonic() + 60
            while empty and time.monotonic() < deadline:
                for expr in list(empty):
                    if await instant(prom, expr):
                        del empty[expr]
                await asyncio.sleep(0.5)
            variables = {}
            for selector, label, board in variable_queries():
                found = await instant(prom, selector)
                variables[(selector, label, board)] = {series["metric"].get(label) for series in found}

    assert not empty, "queries without data:\n" + "\n".join(f"{b}: {e}" for e, b in empty.items())
    assert variables
    for (selector, label, board), values in variables.items():
        assert values, f"{board}: label_values({selector}, {label}) is empty"
        assert None not in values, f"{board}: {selector} has series without {label}"
