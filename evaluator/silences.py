"""Silences (ad-hoc, from the CLI and KV; their record lives in bus/records.py) and recurring
maintenance windows (from config)."""

from __future__ import annotations

import datetime as dt

from bus.records import Matcher, Silence, matches_all, parse_matcher
from evaluator.config import WEEKDAYS, MaintenanceWindow, parse_clock, zone

__all__ = ["MaintenanceWindow", "Matcher", "Silence", "matches_all", "parse_matcher", "window_state"]


def _occurrences(window: MaintenanceWindow, now: float) -> list[tuple[float, float]]:
    """(start, end) epoch seconds of the window's occurrences starting from 8 days before to 8 after now."""
    tz = zone(window.timezone)
    start_hm, end_hm = parse_clock(window.start), parse_clock(window.end)
    crosses_midnight = end_hm <= start_hm
    today = dt.datetime.fromtimestamp(now, tz).date()
    days = {WEEKDAYS.index(day) for day in window.days}
    spans = []
    for offset in range(-8, 9):
        day = today + dt.timedelta(days=offset)
        if day.weekday() not in days:
            continue
        end_day = day + dt.timedelta(days=1) if crosses_midnight else day
        start = dt.datetime.combine(day, dt.time(*start_hm), tz).timestamp()
        end = dt.datetime.combine(end_day, dt.time(*end_hm), tz).timestamp()
        spans.append((start, end))
    return spans


def window_state(window: MaintenanceWindow, now: float) -> tuple[bool, float | None]:
    """(is the window active at `now`, the next instant after `now` when that may change)."""
    spans = _occurrences(window, now)
    active = any(start <= now < end for start, end in spans)
    boundaries = [t for span in spans for t in span if t > now]
    return active, min(boundaries) if boundaries else None
