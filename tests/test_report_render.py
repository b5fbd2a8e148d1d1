"""Rendering: every section present, hostile names inert in HTML, SVG and Markdown, long names bounded,
single points drawn."""

from __future__ import annotations

import datetime as dt
import html.parser
import json
import os
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bus.events import Alert, HealthEvent, MetricBatch, Sample
from sinks.report.charts import BOTTOM, HEIGHT, LEFT, RIGHT, TOP, WIDTH, line_chart
from sinks.report.config import ReportSinkConfig
from sinks.report.model import Chart, Series
from sinks.report.render import NAME_LIMIT, md_cell, md_code, md_text, produce, prune_reports
from sinks.report.rollups import RollupStore
from tests.test_report_synthetic import DAY, T0, fill, synthetic_day

HOSTILE = "<script>alert('x')</script>"
CHANNEL = "<!channel>"
PIPE = 'a|b\nc "quoted" `tick` *star*'
SECTIONS = (
    "summary",
    "system-health",
    "container-health",
    "performance",
    "sla",
    "alerts",
    "recommendations",
    "trends",
)


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [name for name, _ in attrs]
        self.ids += [value or "" for name, value in attrs if name == "id"]


def _tags(text: str) -> _Tags:
    parser = _Tags()
    parser.feed(text)
    return parser


def hostile_events() -> list[MetricBatch | HealthEvent | Alert]:
    ts = T0 + 60
    return [
        MetricBatch(
            host=HOSTILE,
            agent="host",
            ts=ts,
            interval=60,
            samples=[
                Sample("cpu.percent", 50.0),
                Sample("mem.percent", 50.0),
                Sample("disk.percent", 95.0, {"mount": '/"><svg onload=alert(1)>'}),
                Sample("http.latency_p95_seconds", 9.0, {"check": PIPE}),
                Sample("container.cpu.percent", 1.0, {"container": CHANNEL}),
            ],
        ),
        *(
            MetricBatch(
                host="nul\x00host\nx",
                agent="host",
                ts=ts + 3600 * h,
                interval=60,
                samples=[Sample("disk.percent", 50.0 + h, {"mount": "/\x00"})],
            )
            for h in range(4)
        ),
        HealthEvent(host=HOSTILE, agent="container", target=CHANNEL, status="critical", ts=ts),
        HealthEvent(host=HOSTILE, agent="container", target=CHANNEL, status="ok", ts=ts + 60),
        Alert(
            fingerprint="x",
            rule="<img src=x onerror=alert(1)>",
            severity="critical",
            status="firing",
            labels={"host": HOSTILE},
            summary=HOSTILE,
            starts_at=ts,
        ),
    ]


def _write(tmp_path: Path, events: list[MetricBatch | HealthEvent | Alert], kind: str = "day") -> list[Path]:
    store = RollupStore(tmp_path / "r.sqlite3")
    store.ingest(events)
    config = ReportSinkConfig(services=[*ReportSinkConfig().services])
    return produce(store, config, kind, DAY, tmp_path, T0 + 86400)[1]  # type: ignore[arg-type]


def test_every_section_is_in_the_html_and_the_markdown(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3")
    fill(store, synthetic_day())
    _, paths = produce(store, ReportSinkConfig(), "day", DAY, tmp_path, T0 + 86400)
    page = paths[2].read_text()
    assert set(SECTIONS) <= set(_tags(page).ids)
    assert page.count("<svg") == 1
    assert "BREACHED" in page
    markdown = paths[1].read_text()
    for heading in (
        "Executive summary",
        "System health",
        "Container health",
        "Performance",
        "SLA compliance",
        "Alert summary",
        "Recommendations",
        "Resource trends",
    ):
        assert f"## {heading}" in markdown
    assert "| `backend` | 99.861% | 99.9% | 2 / 1440 |" in markdown


def test_hostile_names_render_as_text_in_html(tmp_path: Path) -> None:
    page = _write(tmp_path, hostile_events())[2].read_text()
    tags = _tags(page)
    assert "script" not in tags.tags
    assert "img" not in tags.tags
    assert tags.tags.count("svg") == 2  # only the charts: the mount's <svg onload> stayed text
    assert not [a for a in tags.attributes if a.startswith("on")]
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "&lt;!channel&gt;" in page


def test_svg_chart_escapes_its_title_and_legend() -> None:
    chart = Chart(
        title=HOSTILE, unit="%", series=[Series(name='"><script>', points=[(T0, 10.0), (T0 + 3600, 20.0)])]
    )
    svg = line_chart(chart, T0, T0 + 86400, ReportSinkConfig().zone)
    root = ET.fromstring(svg)  # well-formed XML whatever the names
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = [el.text for el in root.iter() if el.text]
    assert HOSTILE in texts
    assert root.get("aria-label") == f"{HOSTILE} (%)"
    assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 1


def test_markdown_cells_cannot_break_the_table(tmp_path: Path) -> None:
    markdown = _write(tmp_path, hostile_events())[1].read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    performance = next(line for line in rows if "quoted" in line)
    assert len(_cells(performance)) == 7  # as many as the header: the pipe in the name is escaped
    assert _cells(performance)[0] == '``a\\|b c "quoted" `tick` *star*``'
    tables = re.findall(r"(?:^\|.*\n)+", markdown, re.MULTILINE)
    assert len(tables) >= 6
    for table in tables:
        widths = {len(_cells(row)) for row in table.splitlines()}
        assert len(widths) == 1, table  # every row as wide as its header


def _cells(row: str) -> list[str]:
    """A GFM table row split as GFM does: on every pipe not escaped, code spans included."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def code_spans(line: str) -> tuple[list[str], str]:
    """CommonMark's code spans of `line` (a run of n backticks closed by the next run of n) and the
    text outside them."""
    spans, outside, i = [], [], 0
    while i < len(line):
        if line[i] != "`":
            outside.append(line[i])
            i += 1
            continue
        opening = re.match(r"`+", line[i:])
        assert opening is not None
        fence = opening.group()
        closing = re.search(f"(?<!`){fence}(?!`)", line[i + len(fence) :])
        if closing is None:  # no closing run: the backticks are literal
            outside.append(fence)
            i += len(fence)
            continue
        content = line[i + len(fence) : i + len(fence) + closing.start()]
        if content.startswith(" ") and content.endswith(" ") and content.strip():
            content = content[1:-1]
        spans.append(content)
        outside.append(" ")
        i += len(fence) + closing.end()
    return spans, "".join(outside)


# Entity references a Markdown renderer would decode: the report never writes one.
ENTITY = re.compile(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")


def test_markdown_has_no_html_entities_and_outside_text_only_in_code_spans(tmp_path: Path) -> None:
    events = [
        *hostile_events(),
        *(  # a hostile mount filling up: named in the summary and in a recommendation too
            MetricBatch(
                host="db\u202e01",
                agent="host",
                ts=T0 + 3600 * h,
                interval=60,
                samples=[Sample("disk.percent", 90.0 + h, {"mount": "/`x` | <b>&"})],
            )
            for h in range(5)
        ),
    ]
    _, markdown_path, html_path = _write(tmp_path, events)
    markdown = markdown_path.read_text()
    assert not ENTITY.search(markdown)
    assert "\u202e" not in markdown
    assert "\u202e" not in html_path.read_text()  # nor in a tooltip: titles hold the whole name
    spans: list[str] = []
    for line in markdown.splitlines():
        inside, outside = code_spans(line)
        spans += [span.replace("\\|", "|") if line.startswith("| ") else span for span in inside]
        assert not re.search(r"<[A-Za-z/!?]", outside), line  # no tag, comment or autolink
        assert "\\`" not in outside, line  # no escaped backticks: code spans with longer fences
    for name in (HOSTILE, CHANNEL, "<img src=x onerror=alert(1)>", '/"><svg onload=alert(1)>', "/`x` | <b>&"):
        assert name in spans
    assert 'a|b c "quoted" `tick` *star*' in spans
    assert "db\ufffd01 /`x` | <b>&" in spans  # the recommendation's subject, the bidi control shown as U+FFFD


def test_our_own_markdown_is_written_as_markdown_not_escaped(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3")
    fill(store, synthetic_day())
    markdown = produce(store, ReportSinkConfig(), "day", DAY, tmp_path, T0 + 86400)[1][1].read_text()
    assert "tune its threshold, `for` duration or grouping" in markdown
    assert "SLA breached: availability 99.861% < 99.9%." in markdown
    assert "&lt;" not in markdown
    assert "\\" not in markdown  # nothing in the synthetic day needs an escape


def test_control_characters_never_reach_a_page(tmp_path: Path) -> None:
    json_path, markdown, page = _write(tmp_path, hostile_events())
    assert "\x00" not in page.read_text()
    assert "\x00" not in markdown.read_text()
    assert "nul\ufffdhost x" in markdown.read_text()
    hosts = [h["host"] for h in json.loads(json_path.read_text())["hosts"]]
    assert "nul\x00host\nx" in hosts  # the data keeps what was sent


def test_md_cell_is_a_code_span_on_one_line_with_its_pipes_escaped() -> None:
    assert md_cell("a|b\r\nc") == "`a\\|b c`"
    assert md_cell("<!channel> & [x](y)") == "`<!channel> & [x](y)`"
    assert md_cell("") == ""


def test_md_code_fences_backticks_with_a_longer_run() -> None:
    assert md_code("`tick`") == "`` `tick` ``"  # padded: CommonMark strips the spaces again
    assert md_code("a``b`c") == "```a``b`c```"
    assert code_spans(md_code("x ``` y"))[0] == ["x ``` y"]


def test_md_text_keeps_our_markdown_and_escapes_what_could_start_html() -> None:
    assert md_text("tune `for`: 99.1% < 99.9% & more") == "tune `for`: 99.1% < 99.9% & more"
    assert md_text("<b>x</b> &amp;") == "\\<b>x\\</b> \\&amp;"


LONG_NAME = "api_" + "x" * 196  # 200 characters with no place to break a line


def long_name_events() -> list[MetricBatch | HealthEvent | Alert]:
    """A container whose name is 200 characters long, beside one with a short name."""
    return [
        HealthEvent(host="web01", agent="container", target=name, status="ok", ts=T0 + 60 * n)
        for n in range(10)
        for name in (LONG_NAME, "db")
    ]


def test_a_long_container_name_is_cut_in_markdown_and_kept_whole_in_html_and_json(tmp_path: Path) -> None:
    json_path, markdown_path, html_path = _write(tmp_path, long_name_events())
    assert LONG_NAME in [c["container"] for c in json.loads(json_path.read_text())["containers"]]
    row = next(line for line in markdown_path.read_text().splitlines() if "api_xxx" in line)
    assert len(row) < 160  # a 200-character name would push the row past any reader's width
    assert _cells(row)[1] == f"`{LONG_NAME[: NAME_LIMIT - 1]}\u2026`"
    page = html_path.read_text()
    # the page cuts it with an ellipsis; the full name is its tooltip
    assert f'<span class="name" title="{LONG_NAME}">{LONG_NAME}</span>' in page
    assert (
        ".name { display: inline-block; max-width: 16em; overflow: hidden; text-overflow: ellipsis;" in page
    )


def _dots_and_lines(svg: str) -> tuple[list[ET.Element], list[ET.Element]]:
    root = ET.fromstring(svg)
    return root.findall("{http://www.w3.org/2000/svg}circle"), root.findall(
        "{http://www.w3.org/2000/svg}polyline"
    )


@pytest.mark.parametrize("unit", ["%", "ms"])
@pytest.mark.parametrize("days", [1, 7])
def test_a_series_of_one_point_is_drawn_as_a_dot_inside_the_plot(unit: str, days: int) -> None:
    chart = Chart(title="h", unit=unit, series=[Series(name="cpu", points=[(T0 + 3600, 42.0)])])
    dots, lines = _dots_and_lines(line_chart(chart, T0, T0 + days * 86400, ReportSinkConfig().zone))
    assert lines == []  # a polyline of one point draws nothing
    (dot,) = dots
    assert float(dot.get("r", "0")) >= 2
    x, y = float(dot.get("cx", "-1")), float(dot.get("cy", "-1"))
    assert LEFT < x < WIDTH - RIGHT
    assert TOP < y < HEIGHT - BOTTOM


def test_missing_hours_split_a_series_and_a_lone_hour_between_gaps_is_a_dot() -> None:
    hours = [0, 1, 2, 5, 9, 10]  # three hours, a gap, one hour, a gap, two hours
    chart = Chart(
        title="h", unit="%", series=[Series(name="cpu", points=[(T0 + 3600 * h, 10.0) for h in hours])]
    )
    dots, lines = _dots_and_lines(line_chart(chart, T0, T0 + 86400, ReportSinkConfig().zone))
    assert [len(line.get("points", "").split()) for line in lines] == [3, 2]
    assert len(dots) == 1


def test_json_keeps_hostile_names_verbatim(tmp_path: Path) -> None:
    report = json.loads(_write(tmp_path, hostile_events())[0].read_text())
    assert report["hosts"][0]["host"] == HOSTILE
    assert report["containers"][0]["container"] == CHANNEL
    assert report["alerts"]["noisiest"][0]["rule"] == "<img src=x onerror=alert(1)>"


def test_retention_goes_past_what_it_did_not_write_and_clears_the_leftovers_of_a_crash(
    tmp_path: Path,
) -> None:
    """A directory shaped like a report stopped the retention for good, every day; the temporary
    file of a write cut short by a crash was never deleted."""
    folder = tmp_path / "reports" / "post-golive"
    folder.mkdir(parents=True)
    (folder / "2020-01-01.html").mkdir()
    (folder / "2020-01-02.html").symlink_to(tmp_path / "elsewhere.html")
    (tmp_path / "elsewhere.html").write_text("someone's")
    (folder / "2026-08-26.html").write_text("old")
    leftover = folder / ".2026-11-30.html.k3j2h1"
    leftover.write_text("half")
    fresh = folder / ".2026-12-01.html.a1b2c3"  # a write going on now
    fresh.write_text("half")
    day_ago = time.time() - 2 * 86400
    os.utime(leftover, (day_ago, day_ago))
    deleted = prune_reports(tmp_path, DAY, 90)
    assert sorted(p.name for p in deleted) == [leftover.name, "2026-08-26.html"]
    assert (folder / "2020-01-01.html").is_dir()
    assert (tmp_path / "elsewhere.html").read_text() == "someone's"
    assert fresh.exists()


def test_reports_older_than_the_retention_are_deleted(tmp_path: Path) -> None:
    folder = tmp_path / "reports" / "post-golive"
    folder.mkdir(parents=True)
    names = [
        "2026-08-26.html",
        "2026-08-26.md",
        "2026-08-26-week.json",
        "2026-08-27.json",
        "notes.txt",
        "2026-11-25.html",
        "2026-13-40.html",  # a report's shape but no date: left alone, and no error
    ]
    for name in names:
        (folder / name).write_text("x")
    deleted = prune_reports(tmp_path, DAY, 90)
    assert sorted(p.name for p in deleted) == ["2026-08-26-week.json", "2026-08-26.html", "2026-08-26.md"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "2026-08-27.json",
        "2026-11-25.html",
        "2026-13-40.html",
        "notes.txt",
    ]  # 90 days old: kept


def test_rewriting_a_report_replaces_it_whole(tmp_path: Path) -> None:
    first = _write(tmp_path, [])
    second = _write(tmp_path, hostile_events())
    assert first == second
    assert sorted(p.name for p in (tmp_path / "reports" / "post-golive").iterdir()) == [
        "2026-11-25.html",
        "2026-11-25.json",
        "2026-11-25.md",
    ]


def test_in_a_half_hour_zone_each_hour_counts_in_one_day_only(tmp_path: Path) -> None:
    """Asia/Kolkata's midnight is 18:30 UTC, inside an hourly rollup: the hour across it was
    counted in both days (25 hours each, and a failure at 23:45 in the next day's SLA too)."""
    store = RollupStore(tmp_path / "r.sqlite3")
    start = dt.datetime(2026, 11, 24, tzinfo=dt.UTC).timestamp()
    failure = dt.datetime(2026, 11, 25, 18, 15, 1, tzinfo=dt.UTC).timestamp()  # 23:45 IST on the 25th
    events = [
        HealthEvent(
            host="p",
            agent="probe",
            target="backend",
            status="critical" if ts == failure else "ok",
            latency=0.01,
            ts=ts,
        )
        for ts in (start + 60 * minute + 1 for minute in range(4 * 1440))
    ]
    store.ingest(events)
    config = ReportSinkConfig(timezone="Asia/Kolkata")
    checks = {}
    for day in (dt.date(2026, 11, 25), dt.date(2026, 11, 26)):
        report, _ = produce(store, config, "day", day, tmp_path, start + 5 * 86400)
        (backend,) = [s for s in report.sla if s.service == "backend"]
        checks[day] = (backend.checks_total, backend.checks_failed)
    assert checks == {dt.date(2026, 11, 25): (1440, 1), dt.date(2026, 11, 26): (1440, 0)}
