"""The console's pages and row fragments from jinja2 templates: every outside text escaped, controls
and bidirectional overrides shown as U+FFFD, JSON in a page safe against `</script>`."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import msgspec
from markupsafe import Markup

from bus.text import BIDI_CONTROLS
from sinks.console.state import ConsoleState, Ring, row_id

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
_CONTROL = re.compile(f"[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f{BIDI_CONTROLS}]")
_JSON_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
SPARK_W, SPARK_H = 120, 22
NONE = "\u2013"  # an en dash where there is no value
PAGES = ("overview", "performance", "errors", "alerts")
RANGES: dict[str, float] = {"1h": 3600.0, "6h": 6 * 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}


def printable(value: object) -> object:
    """Strings with control and bidi characters shown as U+FFFD; markup and others unchanged."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return _CONTROL.sub("\ufffd", value)
    return value


def clean(value: str, limit: int = 0) -> str:
    text = _CONTROL.sub("\ufffd", value)
    return text if not limit or len(text) <= limit else text[: limit - 1] + "…"


def script_json(value: object) -> Markup:
    """JSON for a `<script type="application/json">` block: no `<`, `>` or `&` can end it early."""
    text = msgspec.json.encode(value).decode()
    text = re.sub("[<>&\u2028\u2029]", lambda m: _JSON_UNSAFE[m.group()], text)
    return Markup(text)


def _pct(value: float | None) -> str:
    return NONE if value is None else f"{value:.1f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return NONE if value is None else f"{value:.{digits}f}"


def _bytes(value: float | None) -> str:
    if value is None:
        return NONE
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _secs(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


def _level(value: float | None) -> str:
    """A css class for a percentage: the runbook's 80 and 90 marks."""
    if value is None:
        return ""
    return "bad" if value >= 90 else "warn" if value >= 80 else ""


def sparkline(ring: Ring | None, start: float, end: float, top: float | None = 100.0) -> Markup:
    """A small inline SVG of one series over [start, end]; one point draws a dot."""
    points = ring.since(start) if ring is not None else []
    if not points:
        return Markup(f'<svg class="spark" width="{SPARK_W}" height="{SPARK_H}" aria-hidden="true"></svg>')
    peak = top if top is not None else max(max(v for _, v in points), 1e-9) * 1.1
    span = max(end - start, 1.0)

    def xy(t: float, v: float) -> str:
        x = SPARK_W * min(max((t - start) / span, 0.0), 1.0)
        y = SPARK_H - 1 - (SPARK_H - 2) * min(max(v / peak, 0.0), 1.0)
        return f"{x:.1f},{y:.1f}"

    last = xy(*points[-1]).split(",")
    line = " ".join(xy(t, v) for t, v in points)
    return Markup(
        f'<svg class="spark" width="{SPARK_W}" height="{SPARK_H}" viewBox="0 0 {SPARK_W} {SPARK_H}" '
        f'aria-hidden="true"><polyline points="{line}"/>'
        f'<circle cx="{last[0]}" cy="{last[1]}" r="1.8"/></svg>'
    )


class Renderer:
    """Pages and fragments; `now` and the zone are passed in, so a page is a function of the model."""

    def __init__(self, zone: dt.tzinfo = dt.UTC) -> None:
        self.zone = zone
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            finalize=printable,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            pct=_pct, num=_num, bytes=_bytes, secs=_secs, level=_level, clean=clean, when=self.when
        )
        self.env.globals.update(row_id=row_id, sparkline=sparkline, ranges=RANGES)
        self._macros: Any = None

    def when(self, ts: float | None) -> str:
        if not ts:
            return NONE
        try:
            moment = dt.datetime.fromtimestamp(ts, self.zone)
        except (OverflowError, OSError, ValueError):
            return "?"
        return moment.strftime("%Y-%m-%d %H:%M:%S")

    def page(self, name: str, context: Mapping[str, Any]) -> str:
        return self.env.get_template(f"{name}.html.j2").render(**context)

    @property
    def macros(self) -> Any:
        if self._macros is None:
            self._macros = self.env.get_template("rows.html.j2").module
        return self._macros

    def fragment(self, macro: str, *args: Any) -> str:
        return str(getattr(self.macros, macro)(*args))


def base_context(state: ConsoleState, now: float, page: str, csrf: str, authed: bool) -> dict[str, Any]:
    """What every page shows: the navigation, the summary bar, the CSRF token for its forms."""
    return {
        "page": page,
        "pages": PAGES,
        "now": now,
        "csrf": csrf,
        "authed": authed,
        "summary": state.summary(now),
        "history_start": now - state.limits.history,
    }


def overview_context(state: ConsoleState, now: float) -> dict[str, Any]:
    alerts = state.alerts()
    return {
        "alerts": alerts,
        "hosts": state.sorted_hosts(now, alerts),
        "containers": state.sorted_containers(now),
        "checks": state.sorted_checks(),
        "parts": state.sorted_parts(now),
    }


def chart(
    chart_id: str, title: str, unit: str, series: Sequence[tuple[str, Sequence[tuple[float, float]]]]
) -> dict[str, Any]:
    """One chart for the page's script: its series as [[t, v], ...], labels cleaned."""
    return {
        "id": chart_id,
        "title": clean(title, 80),
        "unit": unit,
        "series": [
            {"label": clean(name, 60), "points": [list(p) for p in points]} for name, points in series
        ],
    }
