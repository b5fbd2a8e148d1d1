"""The watchdog pings an external dead-man URL while the pipeline is healthy, and stops when one of
its parts falls silent, so the outside notices; a real evaluator, nats-server and HTTP server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp import web

from bus.config import StreamsConfig
from bus.connection import Bus
from bus.events import Heartbeat
from bus.jetstream import provision
from bus.units import Duration
from evaluator.config import EvaluatorConfig
from evaluator.service import EvaluatorService
from evaluator.watchdog import WatchdogConfig, WatchdogError, watchdog_url
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


async def test_pings_while_healthy_and_not_once_a_sink_is_silent(bus: Bus, tmp_path: Path) -> None:
    pings: list[float] = []

    async def ping(request: web.Request) -> web.Response:
        pings.append(time.time())
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_get("/ping/abc-secret", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url_file = tmp_path / "watchdog-url"
    url_file.write_text(f"http://127.0.0.1:{port}/ping/abc-secret\n")
    await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
    config = EvaluatorConfig(watchdog=WatchdogConfig(url_file=str(url_file), interval=Duration(0.2)))
    service = EvaluatorService(config, bus, host="mon01")
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.ready.wait(), 30)
        await wait_until(lambda: service.watchdog.pings >= 3, 30)
        slack = Heartbeat(host="mon01", agent="slack", version="1", interval=0.5, ts=time.time())
        await bus.publish(bus.subjects.heartbeat("mon01", "slack"), slack)  # then silent
        await wait_until(lambda: (service.health_problem() or "").startswith("silent: slack on mon01"), 30)
        pinged = service.watchdog.pings
        held = service.watchdog.held
        await wait_until(lambda: service.watchdog.held >= held + 3, 30)
        assert service.watchdog.pings == pinged, "no ping while the slack sink is silent"
    finally:
        service.stop()
        await asyncio.wait_for(task, 30)
        await runner.cleanup()
    assert service.watchdog.failed == 0


def test_the_watchdog_url_comes_from_its_file_or_the_environment_and_is_never_shown(tmp_path: Path) -> None:
    assert watchdog_url(WatchdogConfig(), {}) is None
    assert (
        watchdog_url(WatchdogConfig(), {"JARVIS_WATCHDOG_URL": "https://hc.example/x"})
        == "https://hc.example/x"
    )
    secret = tmp_path / "url"
    secret.write_text("https://hc.example/from-file\n")
    config = WatchdogConfig(url_file=str(secret))
    assert (
        watchdog_url(config, {"JARVIS_WATCHDOG_URL": "https://hc.example/env"})
        == "https://hc.example/from-file"
    )
    secret.write_text("ftp://token-1234")
    with pytest.raises(WatchdogError, match="not an http") as raised:
        watchdog_url(config, {})
    assert "token-1234" not in str(raised.value)
    with pytest.raises(WatchdogError, match="cannot read"):
        watchdog_url(WatchdogConfig(url_file=str(tmp_path / "missing")), {})
