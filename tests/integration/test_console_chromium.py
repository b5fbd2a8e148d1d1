"""The console in real headless Chromium (Debian's, driven by Playwright) against `up` with real agents
and a real Docker engine: pages without console errors, live rows, silences from the page, refusals."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bus.server import EmbeddedServer, free_port
from sinks.console.state import row_id
from tests.conftest import require
from tests.integration.docker_env import Containers, containers, docker
from tests.integration.test_cli import CLI, cli_env, run_cli, write_config

pytestmark = pytest.mark.integration
__all__ = ["containers"]  # the fixture, imported for pytest

TOKEN = "console-test-token-0123456789abcdef"
HOST = "console-web01"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
START_TIMEOUT = 40.0


def chromium_binary() -> str:
    binary = shutil.which("chromium")
    require(binary is not None, "chromium is not installed (apt-get install chromium)")
    assert binary is not None
    return binary


@dataclass
class Stack:
    url: str
    config: Path
    process: subprocess.Popen[str]
    containers: Containers

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("-c", str(self.config), *args, env=cli_env())


def closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


async def _answers(url: str, deadline: float, log: Path, process: subprocess.Popen[str]) -> None:
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"up exited: {(await asyncio.to_thread(log.read_text))[-3000:]}")
            try:
                async with session.get(f"{url}/login") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"the console did not answer at {url} within {START_TIMEOUT:.0f}s")


@pytest.fixture
async def stack(
    nats_server: EmbeddedServer, prefix: str, tmp_path: Path, containers: Containers
) -> AsyncIterator[Stack]:
    """`up` on the session's nats-server: host, container and probe agents every second (the
    container agent watching this test's containers only), a rule that fires at once on a closed
    port, and the console on a free port with a token."""
    port = free_port()
    config = write_config(
        tmp_path / "up.toml",
        f"""
data_dir = "{tmp_path / "data"}"
[bus]
servers = ["{nats_server.url}"]
prefix = "{prefix}"
[agents]
hostname = "{HOST}"
[agents.host]
interval = "1s"
[agents.container]
interval = "1s"
filter_labels = ["{containers.label}"]
[agents.probe]
interval = "1s"
tcp = [{{ name = "payments", host = "127.0.0.1", port = {closed_port()}, timeout = "200ms" }}]
http = [{{ name = "console", url = "http://127.0.0.1:{port}/login" }}]
[evaluator.default_route]
group_wait = "0s"
[[evaluator.rules]]
name = "payments_down"
kind = "health"
matchers = [{{ name = "target", op = "=", value = "payments" }}]
status = ["critical"]
severity = "critical"
summary = "{{target}} is down"
[sinks.slack]
enabled = false
[sinks.console]
port = {port}
""",
    )
    log = tmp_path / "up.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(  # noqa: ASYNC220 - a child that runs for the whole test
            [*CLI, "-c", str(config), "up"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            env=cli_env(JARVIS_CONSOLE_TOKEN=TOKEN),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        await _answers(url, time.monotonic() + START_TIMEOUT, log, process)
        yield Stack(url=url, config=config, process=process, containers=containers)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # one console, running throughout: never a second one failing to bind, never a restart
    assert "console failed" not in await asyncio.to_thread(log.read_text)


@dataclass
class Browser:
    page: Any
    problems: list[str]


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    """A page in Debian's headless chromium (a fresh profile) that records console errors."""
    binary = chromium_binary()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        require(False, "playwright is not installed (pip install -e '.[dev]')")
        raise
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=binary, headless=True, args=list(CHROMIUM_ARGS)
        )
        context = await chromium.new_context(viewport={"width": 1400, "height": 1000})
        page = await context.new_page()
        problems: list[str] = []
        page.on(
            "console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        try:
            yield Browser(page=page, problems=problems)
        finally:
            await chromium.close()


async def log_in(browser: Browser, stack: Stack, path: str = "/") -> None:
    page = browser.page
    await page.goto(f"{stack.url}/login?next={path}")
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(lambda url: "/login" not in url)
    await page.wait_for_selector("#live.on", timeout=10_000)  # the live stream is connected


async def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await condition()
        if found:
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"{what} within {timeout:.0f}s")


async def test_each_page_loads_without_console_errors(stack: Stack, browser: Browser) -> None:
    await log_in(browser, stack)
    page = browser.page
    await page.wait_for_selector(f"#{row_id('host', HOST)}", timeout=15_000)
    for path, section in (
        ("/", "hosts"),
        ("/performance", "performance"),
        ("/errors", "logs"),
        ("/alerts", "history"),
    ):
        await page.goto(f"{stack.url}{path}")
        await page.wait_for_selector(f"section#{section}")
        await page.wait_for_selector("#live.on", timeout=10_000)
        assert await page.evaluate("typeof uPlot") == "function"
    await page.goto(f"{stack.url}/performance?range=24h")  # read back from the stream
    await page.wait_for_selector("#live.on", timeout=10_000)
    assert browser.problems == []


async def test_a_container_turned_unhealthy_shows_on_an_open_page_within_15s(
    stack: Stack, browser: Browser
) -> None:
    name = stack.containers.name("api")
    await stack.containers.run(
        "api",
        "sh",
        "-c",
        "touch /tmp/ok; exec sleep 600",
        options=["--health-cmd", "test -f /tmp/ok", "--health-interval", "1s", "--health-retries", "1"],
    )
    await log_in(browser, stack)
    page = browser.page
    row = f"#{row_id('container', HOST, name)}"
    # healthy, it is listed among the containers running well (folded away, so not visible)
    await page.wait_for_selector(
        f'#container-ok-rows {row}[data-health="healthy"]', state="attached", timeout=30_000
    )
    await page.evaluate("window.__notReloaded = true")
    await docker("exec", name, "rm", "/tmp/ok")
    started = time.monotonic()
    await page.wait_for_selector(f'#container-rows {row}[data-health="unhealthy"]', timeout=15_000)
    assert time.monotonic() - started < 15
    assert await page.evaluate("window.__notReloaded === true")  # live, not a reload
    assert "st-critical" in (await page.get_attribute(row, "class"))
    # worst first: the unhealthy container is the table's first row
    assert await page.evaluate("document.querySelector('#container-rows tr').id") == row[1:]
    assert browser.problems == []


async def _alert(stack: Stack, rule: str) -> dict[str, Any] | None:
    done = await asyncio.to_thread(stack.cli, "alerts", "--json")
    if done.returncode != 0 or not done.stdout.startswith("{"):
        return None
    found = [a for a in json.loads(done.stdout)["alerts"] if a["rule"] == rule]
    return found[0] if found else None


async def test_a_silence_made_on_the_page_is_listed_by_the_cli_and_mutes_the_alert(
    stack: Stack, browser: Browser
) -> None:
    await wait_for(lambda: _alert(stack, "payments_down"), 30, "payments_down did not fire")
    await log_in(browser, stack, "/alerts")
    page = browser.page
    await page.fill("textarea[name=matchers]", "rule=payments_down")
    await page.fill("input[name=duration]", "1h")
    await page.fill("input[name=comment]", "payments migration <b>tonight</b>")
    await page.click(".silence-form button[type=submit]")
    notice = await page.wait_for_selector("#notice")
    found = re.search(r"silence ([0-9a-f]+) added", await notice.inner_text())
    assert found is not None
    silence_id = found[1]

    listed = await asyncio.to_thread(stack.cli, "silence", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [silence] = [s for s in json.loads(listed.stdout) if s["id"] == silence_id]
    assert silence["matchers"] == [{"name": "rule", "op": "=", "value": "payments_down"}]
    assert silence["comment"] == "payments migration <b>tonight</b>"

    async def muted() -> bool:
        alert = await _alert(stack, "payments_down")
        return alert is not None and silence_id in alert["silenced_by"]

    await wait_for(muted, 20, "the evaluator did not mute payments_down")
    # and the open page says so without a reload
    await page.wait_for_selector("#alerts-rows tr.muted .flag", timeout=10_000)
    assert "silenced" in await page.inner_text("#alerts-rows tr.muted")
    # the comment shows as the text it is, not as markup
    assert "payments migration <b>tonight</b>" in await page.inner_text(f"#{row_id('silence', silence_id)}")
    assert browser.problems == []


async def test_a_request_without_the_token_or_the_csrf_token_is_refused(
    stack: Stack, browser: Browser
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{stack.url}/", allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"].startswith("/login")
        for path in ("/events?page=overview", "/metrics", "/alerts?x=1"):
            async with session.get(f"{stack.url}{path}", allow_redirects=False) as response:
                assert response.status in (303, 401), path
        form = {"matchers": "rule=x", "duration": "1h", "comment": "no token"}
        async with session.post(f"{stack.url}/silences", data=form) as response:
            assert response.status == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with session.post(f"{stack.url}/silences", data=form, headers=bearer) as response:
            assert response.status == 403  # the token alone is not enough: no CSRF token
    await log_in(browser, stack, "/alerts")
    page = browser.page
    await page.evaluate("document.querySelector('.silence-form input[name=csrf]').remove()")
    await page.fill("textarea[name=matchers]", "rule=payments_down")
    await page.fill("input[name=comment]", "without csrf")
    async with page.expect_response(lambda r: r.url.endswith("/silences")) as answer:
        await page.click(".silence-form button[type=submit]")
    assert (await answer.value).status == 403
    listed = await asyncio.to_thread(stack.cli, "silence", "list", "--json")
    assert all(s["comment"] != "without csrf" for s in json.loads(listed.stdout))
