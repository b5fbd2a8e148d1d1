"""The console's pages and row fragments from jinja2 templates: every outside text escaped, controls
and bidirectional overrides shown as U+FFFD, JSON in a page safe against `</script>`."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import msgspec
from markupsafe import Markup, escape

from bus.text import BIDI_CONTROLS
from sinks.console.state import ConsoleState, ContainerView, HostView, Ring, row_id

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


SPARK_POINTS = 60  # two pixels a point: more would only weigh on the page


def _thin(points: Sequence[tuple[float, float]], start: float) -> list[tuple[float, float]]:
    """The points from `start` on, at most SPARK_POINTS: the largest of each run, so a spike shows."""
    kept = [p for p in points if p[0] >= start]
    if len(kept) <= SPARK_POINTS:
        return kept
    size = -(-len(kept) // SPARK_POINTS)
    out = []
    for i in range(0, len(kept), size):
        best = kept[i]
        for point in kept[i + 1 : i + size]:
            if point[1] > best[1]:
                best = point
        out.append(best)
    return out


def sparkline(ring: Ring | None, start: float, end: float, top: float | None = 100.0) -> Markup:
    """A small inline SVG of one series over [start, end]; one point draws a dot."""
    points = _thin(ring.points, start) if ring is not None else []
    if not points:
        return Markup(f'<svg class="spark" width="{SPARK_W}" height="{SPARK_H}" aria-hidden="true"></svg>')
    peak = top if top is not None else max(max(v for _, v in points), 1e-9) * 1.1
    sx = SPARK_W / max(end - start, 1.0)
    sy = (SPARK_H - 2) / peak
    bottom = SPARK_H - 1
    line = " ".join(
        f"{min(max((t - start) * sx, 0), SPARK_W):.0f},{bottom - sy * min(max(v, 0.0), peak):.1f}"
        for t, v in points
    )
    x, y = line.rsplit(" ", 1)[-1].split(",")
    return Markup(
        f'<svg class="spark" width="{SPARK_W}" height="{SPARK_H}" viewBox="0 0 {SPARK_W} {SPARK_H}" '
        f'aria-hidden="true"><polyline points="{line}"/><circle cx="{x}" cy="{y}" r="1.8"/></svg>'
    )


def esc(value: object) -> Markup:
    """Outside text for HTML: controls and bidi overrides neutralised, then escaped."""
    return escape(printable(value) if isinstance(value, str) else str(value))


ORDER = {"critical": 0, "warning": 1, "unknown": 2}


def _gauge(value: float | None, ring: Ring | None, start: float, end: float) -> str:
    return f'<td class="num {_level(value)}">{_pct(value)}</td><td>{sparkline(ring, start, end)}</td>'


def host_row(view: HostView, status: str, start: float, end: float, when: Callable[[float], str]) -> Markup:
    """One host: status, CPU, memory, disk and load now and over the history window."""
    h = view.history
    name = esc(view.host)
    rid = row_id("host", view.host)
    cells = [
        f'<tr id="{rid}" data-order="{ORDER.get(status, 3)}|{name}" class="st-{status}">',
        f'<td><span class="badge st-{status}">{status}</span></td>',
        f'<td class="name" title="{name}">{name}</td>',
        _gauge(view.cpu, h.get("cpu"), start, end),
        _gauge(view.mem, h.get("mem"), start, end),
        _gauge(view.disk, h.get("disk"), start, end),
        f'<td class="num">{_num(view.load1)} / {_num(view.load5)} / {_num(view.load15)}</td>',
        f"<td>{sparkline(h.get('load'), start, end, None)}</td>",
        f'<td class="when">{when(view.ts)}</td></tr>',
    ]
    return Markup("".join(cells))


def container_row(view: ContainerView, status: str) -> Markup:
    """One container: status, host, name, state, health, restarts, CPU, memory and the agent's detail."""
    host, name, detail = esc(view.host), esc(view.name), esc(view.detail)
    running = "running" if view.running else ("stopped" if view.running is False else NONE)
    short = esc(clean(view.detail, 120))
    rid = row_id("container", view.host, view.name)
    return Markup(
        f'<tr id="{rid}" data-order="{ORDER.get(status, 3)}|{host}|{name}" class="st-{status}" '
        f'data-health="{esc(view.health)}"><td><span class="badge st-{status}">{status}</span></td>'
        f'<td class="name">{host}</td><td class="name" title="{name}">{name}</td>'
        f'<td>{running}</td><td class="health h-{esc(view.health)}">{esc(view.health)}</td>'
        f'<td class="num">{view.restarts}</td><td class="num">{_pct(view.cpu)}</td>'
        f'<td class="num">{_bytes(view.mem_bytes)}</td><td class="detail" title="{detail}">{short}</td></tr>'
    )


def _segment(value: str) -> str:
    """One path segment: `/` and `..` escaped too (jinja's urlencode keeps `/`), so a fingerprint
    from the bus such as `x/../../alerts/fp1` cannot aim a button at another alert."""
    return quote(value, safe="").replace(".", "%2E")


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
            pct=_pct,
            num=_num,
            bytes=_bytes,
            secs=_secs,
            level=_level,
            clean=clean,
            when=self.when,
            segment=_segment,
        )
        self.env.globals.update(
            row_id=row_id,
            sparkline=sparkline,
            ranges=RANGES,
            host_row=lambda v, status, start, end: host_row(v, status, start, end, self.when),
            container_row=container_row,
        )
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
        if macro == "host_row":
            view, status, start, end = args
            return str(host_row(view, status, start, end, self.when))
        if macro == "container_row":
            return str(container_row(*args))
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


def overview_context(state: ConsoleState, now: float, when: Callable[[float], str]) -> dict[str, Any]:
    """The overview's rows; the thousands of host and container rows joined here, not in the template."""
    alerts = state.alerts()
    start = now - state.limits.history
    hosts = state.sorted_hosts(now, alerts)
    containers = state.sorted_containers(now)
    return {
        "alerts": alerts,
        "host_rows": Markup("".join([host_row(v, status, start, now, when) for v, status in hosts])),
        "container_rows": Markup("".join([container_row(v, s) for v, s in containers if s != "ok"])),
        "container_ok_rows": Markup("".join([container_row(v, s) for v, s in containers if s == "ok"])),
        "containers_ok": sum(1 for _, status in containers if status == "ok"),
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
