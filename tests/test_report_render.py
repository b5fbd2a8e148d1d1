"""Rendering: every section present, hostile names escaped in HTML, SVG and Markdown."""

from __future__ import annotations

import html.parser
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from bus.events import Alert, HealthEvent, MetricBatch, Sample
from sinks.report.charts import line_chart
from sinks.report.config import ReportSinkConfig
from sinks.report.model import Chart, Series
from sinks.report.render import md_cell, produce, prune_reports
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
    assert "| backend | 99.861% | 99.9% | 2 / 1440 |" in markdown


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
    assert "<" not in markdown.replace("&lt;", "")
    performance = next(line for line in rows if "quoted" in line)
    assert performance.replace("\\|", "").count("|") == 8
    assert "a\\|b c" in performance
    assert "\\`tick\\` \\*star\\*" in performance


def test_control_characters_never_reach_a_page(tmp_path: Path) -> None:
    json_path, markdown, page = _write(tmp_path, hostile_events())
    assert "\x00" not in page.read_text()
    assert "\x00" not in markdown.read_text()
    assert "nul\ufffdhost x" in markdown.read_text()
    hosts = [h["host"] for h in json.loads(json_path.read_text())["hosts"]]
    assert "nul\x00host\nx" in hosts  # the data keeps what was sent


def test_md_cell_escapes_pipes_newlines_and_markup() -> None:
    assert md_cell("a|b\r\nc") == "a\\|b c"
    assert md_cell("<!channel> & [x](y)") == "&lt;!channel&gt; &amp; \\[x\\](y)"


def test_json_keeps_hostile_names_verbatim(tmp_path: Path) -> None:
    report = json.loads(_write(tmp_path, hostile_events())[0].read_text())
    assert report["hosts"][0]["host"] == HOSTILE
    assert report["containers"][0]["container"] == CHANNEL
    assert report["alerts"]["noisiest"][0]["rule"] == "<img src=x onerror=alert(1)>"


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
