"""The HTML report in headless Chromium: no console errors, the SVG charts in the DOM, a drawn page,
long names kept within it and a lone point visible.

Layout and pixels are read over the DevTools protocol on a pipe (`--remote-debugging-pipe`): no port
is opened and nothing beyond Debian's chromium is needed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.events import MetricBatch, Sample
from sinks.report.charts import PALETTE
from sinks.report.config import ReportSinkConfig
from sinks.report.render import produce
from sinks.report.rollups import RollupStore
from tests.conftest import require
from tests.test_report_render import LONG_NAME, SECTIONS, hostile_events, long_name_events
from tests.test_report_synthetic import DAY, T0, fill, synthetic_day

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
)


def chromium_binary() -> str:
    binary = shutil.which("chromium")
    require(binary is not None, "chromium is not installed (apt-get install chromium)")
    assert binary is not None
    return binary


def chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = chromium_binary()
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def console_lines(stderr: str) -> list[str]:
    """What the page logged to the console (errors, exceptions) as Chromium reports it."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def distinct_pixel_bytes(png: bytes) -> int:
    """How many different byte values the decoded image holds: a blank page has very few."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, data = 8, b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        if png[pos + 4 : pos + 8] == b"IDAT":
            data += png[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(data)))


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chromium")
    store = RollupStore(folder / "r.sqlite3")
    fill(store, synthetic_day())
    store.ingest(hostile_events())
    return produce(store, ReportSinkConfig(), "week", DAY, folder, T0 + 86400)[1][2]


def test_the_console_check_catches_a_page_that_fails(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>console.error('boom'); missing();</script></body></html>")
    assert len(console_lines(chromium(tmp_path, page, "--dump-dom").stderr)) == 2


def test_the_report_loads_without_console_errors_and_shows_its_charts(
    tmp_path: Path, report_page: Path
) -> None:
    result = chromium(tmp_path, report_page, "--dump-dom")
    assert console_lines(result.stderr) == []
    dom = result.stdout
    for section in (*SECTIONS, "growth"):
        assert f'<section id="{section}">' in dom
    assert (
        dom.count('<svg xmlns="http://www.w3.org/2000/svg" class="chart"') == 3
    )  # web01 and the two hostile hosts
    assert dom.count("<polyline") >= 4
    assert "<script>" not in dom


def test_the_report_screenshot_is_not_blank(tmp_path: Path, report_page: Path) -> None:
    shot = tmp_path / "report.png"
    chromium(tmp_path, report_page, f"--screenshot={shot}", "--window-size=1200,2400")
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    blank_shot = tmp_path / "blank.png"
    chromium(tmp_path, blank, f"--screenshot={blank_shot}", "--window-size=1200,2400")
    assert distinct_pixel_bytes(blank_shot.read_bytes()) < 10
    assert distinct_pixel_bytes(shot.read_bytes()) > 100


# -- layout and pixels, over the DevTools protocol -----------------------------------------------

PAGE_WIDTH = 1400
TIMEOUT = 30.0


class DevTools:
    """One headless Chromium spoken to over `--remote-debugging-pipe`: JSON messages ended by NUL,
    commands on its fd 3, answers and events on its fd 4."""

    def __init__(self, profile: Path) -> None:
        commands_in, self._commands = os.pipe()
        self._answers, answers_out = os.pipe()

        def pipes_as_3_and_4() -> None:
            # duplicated high first, so that neither pipe is closed by moving the other onto it
            high_in = fcntl.fcntl(commands_in, fcntl.F_DUPFD, 10)
            high_out = fcntl.fcntl(answers_out, fcntl.F_DUPFD, 10)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        args = [chromium_binary(), *CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}"]
        self.process = subprocess.Popen(
            [*args, "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=pipes_as_3_and_4,
            pass_fds=(3, 4),
        )
        os.close(commands_in)
        os.close(answers_out)
        self._buffer = b""
        self._last_id = 0
        self.events: list[dict[str, Any]] = []

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._answers], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._answers, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        decoded: dict[str, Any] = json.loads(message)
        return decoded

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        """Run one command and return its result; events that arrive meanwhile are kept in order."""
        self._last_id += 1
        command: dict[str, Any] = {"id": self._last_id, "method": method, "params": params or {}}
        if session is not None:
            command["sessionId"] = session
        os.write(self._commands, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            message = self._message(deadline)
            if message.get("id") != self._last_id:
                self.events.append(message)
            elif "error" in message:
                raise AssertionError(f"{method}: {message['error']}")
            else:
                return message["result"]

    def wait_for(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while True:
            for event in self.events:
                if event.get("method") == method:
                    self.events.remove(event)
                    return event
            self.events.append(self._message(deadline))

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(10)
        except (OSError, AssertionError, TimeoutError, EOFError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(10)
        finally:
            os.close(self._commands)
            os.close(self._answers)


class Tab:
    """A page opened at PAGE_WIDTH CSS pixels, one device pixel each."""

    def __init__(self, browser: DevTools, page: Path) -> None:
        self.browser = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": PAGE_WIDTH, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
        )
        self.send("Page.navigate", {"url": page.as_uri()})
        browser.wait_for("Page.loadEventFired")

    def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return self.browser.send(method, params, self.session)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (DevTools evaluates it past the page's CSP)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"]["value"]

    def screenshot(self, box: dict[str, float]) -> bytes:
        clip = {**box, "scale": 1}
        params = {"format": "png", "clip": clip, "captureBeyondViewport": True}  # below the fold too
        data = self.send("Page.captureScreenshot", params)["data"]
        return base64.b64decode(data)

    def errors(self) -> list[dict[str, Any]]:
        """Console errors, uncaught exceptions and CSP violations the page reported."""
        found = []
        for event in self.browser.events:
            method, params = event.get("method"), event.get("params", {})
            logged = method == "Log.entryAdded" and params["entry"]["level"] == "error"
            called = method == "Runtime.consoleAPICalled" and params["type"] == "error"
            if method == "Runtime.exceptionThrown" or logged or called:
                found.append(params)
        return found


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    devtools = DevTools(tmp_path / "devtools-profile")
    yield devtools
    devtools.close()


def rgb_pixels(png: bytes) -> list[tuple[int, int, int]]:
    """The pixels of an 8-bit RGB or RGBA PNG, as Chromium writes them, row by row."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, data, header = 8, b"", b""
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        body = png[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        data += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, colour in (2, 6), interlace) == (8, True, 0)
    size = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(data), width * size
    pixels: list[tuple[int, int, int]] = []
    previous = bytearray(stride)
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):  # undo the PNG filter of this scanline
            left = line[i - size] if i >= size else 0
            up, up_left = previous[i], previous[i - size] if i >= size else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - up_left
                near = min(
                    (abs(guess - left), 0, left), (abs(guess - up), 1, up), (abs(guess - up_left), 2, up_left)
                )
                line[i] = (line[i] + near[2]) & 0xFF
        pixels += [(line[i], line[i + 1], line[i + 2]) for i in range(0, stride, size)]
        previous = line
    return pixels


def _page(folder: Path, events: list[Any], kind: str = "day") -> Path:
    store = RollupStore(folder / "r.sqlite3")
    store.ingest(events)
    return produce(store, ReportSinkConfig(), kind, DAY, folder, T0 + 86400)[1][2]  # type: ignore[arg-type]


def test_a_200_character_container_name_keeps_the_container_table_on_the_page(
    tmp_path: Path, browser: DevTools
) -> None:
    tab = Tab(browser, _page(tmp_path, long_name_events()))
    layout = tab.evaluate(
        """(() => {
        const row = [...document.querySelectorAll('#container-health tr')]
            .find(r => r.textContent.includes('api_xxx'));
        const name = row.cells[1].querySelector('.name');
        return {
            pageWidth: document.documentElement.scrollWidth,
            tableHidden: row.closest('.wide').scrollWidth - row.closest('.wide').clientWidth,
            bodyRight: document.body.getBoundingClientRect().right,
            rowRight: Math.max(...[...row.cells].map(c => c.getBoundingClientRect().right)),
            nameWidth: row.cells[1].getBoundingClientRect().width,
            title: name && name.title,
            cut: name && name.scrollWidth > name.clientWidth,
        };
    })()"""
    )
    assert layout["pageWidth"] <= PAGE_WIDTH  # no sideways scrolling
    assert layout["rowRight"] <= layout["bodyRight"]  # every column of its row on the page
    assert layout["tableHidden"] == 0  # and none hidden behind the table's own scrolling
    assert layout["nameWidth"] < PAGE_WIDTH / 3
    assert (layout["title"], layout["cut"]) == (LONG_NAME, True)  # cut, the full name as tooltip
    assert tab.errors() == []


def _lone_point(host: str) -> MetricBatch:
    """A host heard from once: every chart series has one point."""
    samples = [
        Sample("cpu.percent", 50.0),
        Sample("mem.percent", 30.0),
        Sample("disk.percent", 70.0, {"mount": "/"}),
    ]
    return MetricBatch(host=host, agent="host", ts=T0 + 12 * 3600, interval=60, samples=samples)


def _close_to(pixel: tuple[int, int, int], colour: str) -> bool:
    target = bytes.fromhex(colour[1:])
    return all(abs(a - b) <= 24 for a, b in zip(pixel, target, strict=True))


@pytest.mark.parametrize("kind", ["day", "week"])
def test_a_chart_of_a_single_point_draws_it_visibly(tmp_path: Path, browser: DevTools, kind: str) -> None:
    tab = Tab(browser, _page(tmp_path, [_lone_point("lonely")], kind))
    box = tab.evaluate(
        """(() => {
        const plot = document.querySelector('#trends svg rect').getBoundingClientRect();
        return {x: plot.x + 2, y: plot.y + 2, width: plot.width - 4, height: plot.height - 4};
    })()"""
    )
    pixels = rgb_pixels(tab.screenshot(box))
    assert len(pixels) == round(box["width"]) * round(box["height"])
    for colour in PALETTE[:3]:  # cpu, memory and the disk: each shows where its hour is
        assert sum(_close_to(p, colour) for p in pixels) >= 4, colour
    assert tab.errors() == []
