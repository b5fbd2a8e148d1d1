"""Silences (ad-hoc, from the CLI and KV) and recurring maintenance windows (from config)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence

import msgspec

from evaluator.config import WEEKDAYS, MaintenanceWindow, Matcher, parse_clock, zone

__all__ = ["MaintenanceWindow", "Matcher", "Silence", "matches_all", "parse_matcher", "window_state"]

_MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(=~|!~|!=|=)\s*(.*?)\s*")


def parse_matcher(text: str) -> Matcher:
    """A matcher from "host=web01", "rule=~disk.*", 'severity!="info"'; ValueError if malformed."""
    match = _MATCHER.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid matcher {text!r}: write label=value, label!=value, label=~regex or label!~regex"
        )
    name, op, value = match.groups()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return Matcher(name=name, op=op, value=value)  # type: ignore[arg-type]  # op is one of MatchOp


def matches_all(matchers: Sequence[Matcher], labels: Mapping[str, str]) -> bool:
    """Do all matchers hold for these labels (a missing label being the empty string)?"""
    return all(m.matches_value(labels.get(m.name, "")) for m in matchers)


class Silence(msgspec.Struct, frozen=True, kw_only=True):
    """Mutes notifications of matching alerts from starts_at until ends_at."""

    id: str
    matchers: list[Matcher]
    starts_at: float
    ends_at: float
    author: str
    comment: str

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, labels: Mapping[str, str]) -> bool:
        # A silence without matchers would mute everything by accident: it matches nothing.
        return bool(self.matchers) and matches_all(self.matchers, labels)


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
