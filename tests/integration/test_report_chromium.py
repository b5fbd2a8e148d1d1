"""The HTML report in headless Chromium: no console errors, the SVG charts in the DOM, a drawn page."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from sinks.report.config import ReportSinkConfig
from sinks.report.render import produce
from sinks.report.rollups import RollupStore
from tests.conftest import require
from tests.test_report_render import SECTIONS, hostile_events
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


def chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    require(binary is not None, "chromium is not installed (apt-get install chromium)")
    assert binary is not None
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
