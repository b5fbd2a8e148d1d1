"""Writing a report: HTML (autoescaped, inline SVG), Markdown (names in code spans) and JSON; retention."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import jinja2
import msgspec
from markupsafe import Markup

from sinks.report.charts import line_chart, printable
from sinks.report.config import ReportSinkConfig
from sinks.report.model import Chart, PeriodKind, Report, build_report, load_inputs, make_period
from sinks.report.rollups import RollupStore

REPORTS_DIR = Path("reports") / "post-golive"
NO_DATA = "\u2013"  # an en dash: no figure for this period
_REPORT_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})(-week)?\.(html|md|json)")
DAY = 86400.0
log = logging.getLogger(__name__)
# Names longer than this are cut in the Markdown (the JSON keeps them whole).
NAME_LIMIT = 60
_BACKTICKS = re.compile(r"`+")
# A tag, a comment, an autolink or an entity: what a Markdown renderer would take for HTML
_MD_HTML = re.compile(r"<(?=[A-Za-z/!?])|&(?=#?[A-Za-z0-9]+;)")


def number(value: float | None, digits: int = 1, unit: str = "") -> str:
    """A figure for people: fixed digits, a dash for no data."""
    return NO_DATA if value is None else f"{value:,.{digits}f}{unit}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return NO_DATA
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{seconds:.0f}s" if seconds < 60 else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def local_time(ts: float, zone: dt.tzinfo) -> str:
    return dt.datetime.fromtimestamp(ts, zone).strftime("%Y-%m-%d %H:%M %Z")


def _one_line(value: object) -> str:
    return " ".join(str(printable(value)).split())


def cut(text: str, limit: int = NAME_LIMIT) -> str:
    """At most `limit` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def md_code(value: object) -> str:
    """A name from outside as a Markdown code span: shown as typed, never markup or HTML.

    The fence is one backtick longer than any run inside; a name starting or ending with a
    backtick gets the space that CommonMark strips again.
    """
    text = cut(_one_line(value))
    if not text:
        return ""
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    pad = " " if text[0] == "`" or text[-1] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_cell(value: object) -> str:
    """A name as a table cell: a code span whose pipes are escaped, as GFM tables require."""
    return md_code(value).replace("|", "\\|")


def md_text(value: object) -> str:
    """Our own words on one line, keeping their Markdown; a `<` or `&` that could start HTML is escaped."""
    return _MD_HTML.sub(lambda match: "\\" + match[0], _one_line(value))


def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("sinks.report", "templates"),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=printable,
    )
    env.filters.update(num=number, duration=duration, cell=md_cell, code=md_code, text=md_text)
    return env


_html = _environment(autoescape=True)
_markdown = _environment(autoescape=False)


def render_html(report: Report, zone: dt.tzinfo) -> str:
    def svg(chart: Chart) -> Markup:
        # line_chart escapes every text it draws, so its output is markup, not text
        return Markup(line_chart(chart, report.period.start, report.period.end, zone))

    return _html.get_template("report.html.j2").render(
        report=report, svg=svg, when=lambda ts: local_time(ts, zone)
    )


def render_markdown(report: Report, zone: dt.tzinfo) -> str:
    return _markdown.get_template("report.md.j2").render(report=report, when=lambda ts: local_time(ts, zone))


def render_json(report: Report) -> bytes:
    return msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"


def _write_atomically(path: Path, data: bytes) -> None:
    """A reader never sees half a report: write beside it, then rename over it (synced first, so
    a power cut leaves the old file or the new one, never an empty one)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: Report, out_dir: Path, zone: dt.tzinfo) -> list[Path]:
    """Write `<out_dir>/reports/post-golive/<label>.html`, `.md` and `.json`; returns the paths."""
    folder = out_dir / REPORTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {
        ".json": render_json(report),
        ".md": render_markdown(report, zone).encode(),
        ".html": render_html(report, zone).encode(),
    }
    paths = []
    for suffix, data in outputs.items():
        path = folder / f"{report.period.label}{suffix}"
        _write_atomically(path, data)
        paths.append(path)
    return paths


def produce(
    store: RollupStore,
    config: ReportSinkConfig,
    kind: PeriodKind,
    last_day: dt.date,
    out_dir: Path,
    now: float,
    unread: Sequence[str] = (),
) -> tuple[Report, list[Path]]:
    """Build the report of the day (or the week ending with) `last_day` and write its files;
    `unread`: the streams not read up to its run (said in it, and it is written again)."""
    period = make_period(kind, last_day, config.timezone, config.zone)
    report = build_report(load_inputs(store, period, config), config, period, now, unread)
    return report, write_report(report, out_dir, config.zone)


def prune_reports(out_dir: Path, today: dt.date, keep_days: float) -> list[Path]:
    """Delete report files whose date is more than `keep_days` before `today`."""
    folder = out_dir / REPORTS_DIR
    if not folder.is_dir():
        return []
    oldest = today - dt.timedelta(days=keep_days)
    deleted: list[Path] = []
    for path in folder.iterdir():
        if path.is_symlink() or not path.is_file():  # not a file we wrote: a directory, a link
            continue
        if path.name.startswith(".") and _REPORT_NAME.fullmatch(path.name[1:].rsplit(".", 1)[0]):
            # the temporary file of a write cut short by a crash: gone after a day
            if time.time() - path.stat().st_mtime > DAY:
                _unlink(path, deleted)
            continue
        match = _REPORT_NAME.fullmatch(path.name)
        if not match:
            continue
        try:
            day = dt.date.fromisoformat(match[1])
        except ValueError:  # shaped like a report, but no date (2026-13-40.html): not ours
            continue
        if day < oldest:
            _unlink(path, deleted)
    return deleted


def _unlink(path: Path, deleted: list[Path]) -> None:
    """One file less; one that cannot go is logged and the others still go."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("report: cannot delete %s: %s", path, exc.strerror or exc)
        return
    deleted.append(path)
