"""Line charts as inline SVG: readable without JavaScript or network, every text escaped."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

from bus.text import BIDI_CONTROLS
from sinks.report.model import Chart
from sinks.report.rollups import HOUR

WIDTH, HEIGHT = 640, 220
DOT_RADIUS = 3
LEFT, RIGHT, TOP, BOTTOM = 44, 150, 24, 28
# Control characters are not text: invalid in XML, invisible or worse in a terminal or browser.
_CONTROL = re.compile(f"[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f{BIDI_CONTROLS}]")


def printable(value: object) -> object:
    """Strings with control characters shown as U+FFFD; markup and anything else unchanged."""
    if isinstance(value, str) and not hasattr(value, "__html__"):
        return _CONTROL.sub("\ufffd", value)
    return value


def _text(value: str) -> str:
    """Escaped for SVG text content."""
    return escape(str(printable(value)))


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _ticks(start: float, end: float, zone: dt.tzinfo) -> list[tuple[float, str]]:
    """Every 6 hours for a day, every midnight for longer periods, labelled in local time."""
    step = 6 * 3600 if end - start <= 2 * 86400 else 86400
    fmt = "%H:%M" if step < 86400 else "%m-%d"
    ticks, t = [], start
    while t < end:
        ticks.append((t, dt.datetime.fromtimestamp(t, zone).strftime(fmt)))
        t += step
    return ticks


def runs(points: Sequence[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """Hourly points split where hours are missing, so a gap shows as a gap, not as a line."""
    found: list[list[tuple[float, float]]] = []
    for t, v in points:
        if found and t - found[-1][-1][0] <= HOUR:
            found[-1].append((t, v))
        else:
            found.append([(t, v)])
    return found


def line_chart(chart: Chart, start: float, end: float, zone: dt.tzinfo) -> str:
    """An SVG of `chart`'s series over [start, end); percent charts run from 0 to 100."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    values = [v for s in chart.series for _, v in s.points]
    top = 100.0 if chart.unit == "%" else max([*values, 1e-9]) * 1.1
    span = max(end - start, 1.0)

    def x(t: float) -> float:
        return LEFT + plot_w * min(max((t - start) / span, 0.0), 1.0)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - min(max(v / top, 0.0), 1.0))

    label = f"{chart.title} ({chart.unit})"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" aria-label={quoteattr(str(printable(label)))}>',
        f"<title>{_text(label)}</title>",
        f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{_text(_short(chart.title, 80))}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        value = top * fraction
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            'stroke="#e5e5e5"/>'
            f'<text x="{LEFT - 4}" y="{y(value) + 4:.1f}" font-size="10" text-anchor="end">'
            f"{escape(_number(value))}</text>"
        )
    for t, text in _ticks(start, end, zone):
        parts.append(
            f'<text x="{x(t):.1f}" y="{HEIGHT - 10}" font-size="10" text-anchor="middle">'
            f"{escape(text)}</text>"
        )
    for index, series in enumerate(chart.series):
        colour = PALETTE[index % len(PALETTE)]
        for run in runs(series.points):
            at = [(x(t + HOUR / 2), y(v)) for t, v in run]  # mid-hour
            if len(at) == 1:  # a polyline of one point draws nothing: a dot instead
                ((cx, cy),) = at
                parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{DOT_RADIUS}" fill="{colour}"/>')
            else:
                points = " ".join(f"{px:.1f},{py:.1f}" for px, py in at)
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>'
                )
        legend_y = TOP + 12 + 16 * index
        parts.append(
            f'<rect x="{WIDTH - RIGHT + 10}" y="{legend_y - 8}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{WIDTH - RIGHT + 24}" y="{legend_y + 1}" font-size="11">'
            f"{_text(_short(series.name))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _short(name: str, limit: int = 20) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
