"""What the versus bench measures, from the notifications each side sent: pure, no I/O.

Every notification (an Alertmanager webhook, a Slack webhook message, a jarvis Notification on
the bus) becomes a `Message`: when it arrived and, per alert in it, the rule, firing or resolved,
and whether it is marked flapping. Each alert is attributed by its rule to the latest incident
phase of that rule that had started by then, so a late resolve still counts for its incident.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bus.events import Notification
from sinks.slack_format import FLAPPING_MARK, REMINDER_MARK, RESOLVED_EMOJI
from tests.bench.scripted_exporter import Span

_ALERT_LINE = re.compile(r"^(?P<emoji>\S+) \*(?P<rule>[^*]+)\*")


@dataclass(frozen=True)
class AlertView:
    rule: str
    resolved: bool
    flapping: bool = False


@dataclass(frozen=True)
class Message:
    """One notification as a user receives it; `at` in seconds since the script began."""

    at: float
    status: str  # firing, resolved or reminder
    alerts: tuple[AlertView, ...]

    @property
    def flapping(self) -> bool:
        return any(alert.flapping for alert in self.alerts)

    def describe(self) -> str:
        alerts = ", ".join(
            f"{a.rule} {'resolved' if a.resolved else 'firing'}{' (flapping)' if a.flapping else ''}"
            for a in self.alerts
        )
        return f"{self.status}: {alerts or 'no alert recognised'}"


def from_alertmanager(body: dict[str, Any], at: float) -> Message:
    """An Alertmanager webhook body (version 4): its status and every alert's alertname and status."""
    alerts = tuple(
        AlertView(str(alert.get("labels", {}).get("alertname", "?")), alert.get("status") == "resolved")
        for alert in body.get("alerts", [])
    )
    return Message(at, str(body.get("status", "?")), alerts)


def from_slack(body: dict[str, Any], at: float) -> Message:
    """A jarvis Slack message: the header says firing, resolved or reminder; each alert section its
    rule (`*rule*`), resolved by its ✅, flapping by its mark (see sinks/slack_format.py)."""
    blocks: list[dict[str, Any]] = []
    for attachment in body.get("attachments", []):
        blocks += attachment.get("blocks", [])
    blocks += body.get("blocks", [])
    header = next((b["text"]["text"] for b in blocks if b.get("type") == "header"), body.get("text", ""))
    status = "resolved" if "[RESOLVED]" in header else "reminder" if REMINDER_MARK in header else "firing"
    alerts = []
    for block in blocks:
        text = block.get("text", {}).get("text", "") if block.get("type") == "section" else ""
        match = _ALERT_LINE.match(text)
        if match:
            alerts.append(AlertView(match["rule"], match["emoji"] == RESOLVED_EMOJI, FLAPPING_MARK in text))
    return Message(at, status, tuple(alerts))


def from_notification(notification: Notification, at: float) -> Message:
    alerts = tuple(AlertView(a.rule, a.status == "resolved", a.flapping) for a in notification.alerts)
    return Message(at, notification.status, alerts)


@dataclass
class IncidentResult:
    span: Span
    first: float | None = None  # the first message announcing it firing, seconds after the phase began
    resolved_at: float | None = None  # the resolve after its last firing message, seconds since the start
    sent: int = 0  # messages telling something about it (a resolve Alertmanager lists again aside)
    flapping: int = 0
    # firing or reminder messages not marked flapping, sent after one that was: the alert was
    # known to flap and the message did not say so (a firing before the flapping shows is not)
    unmarked_after_flapping: int = 0
    false_resolves: int = 0
    other: int = 0  # messages during the phase about something else, resolves of earlier incidents aside

    @property
    def resolve_delay(self) -> str:
        if self.first is None and self.resolved_at is None:
            return "-"
        if self.resolved_at is None:
            return "never"
        if self.resolved_at < self.span.end:
            return "none after the end"
        return f"{self.resolved_at - self.span.end:.1f} s"


@dataclass
class GapResult:
    span: Span
    noise: list[Message] = field(default_factory=list)  # all but resolves of alerts announced firing
    resolves: int = 0


@dataclass
class SideResult:
    name: str
    messages: list[Message]
    incidents: list[IncidentResult]
    gaps: list[GapResult]


def incident_of(rule: str, at: float, spans: Sequence[Span]) -> Span | None:
    """The latest incident phase of `rule` that had started by `at`."""
    started = [s for s in spans if s.phase.incident == rule and s.start <= at]
    return started[-1] if started else None


def span_at(at: float, spans: Sequence[Span]) -> Span | None:
    return next((s for s in spans if s.start <= at < s.end), None)


def measure(name: str, messages: Sequence[Message], spans: Sequence[Span]) -> SideResult:
    ordered = sorted(messages, key=lambda m: m.at)
    incidents = {s.index: IncidentResult(s) for s in spans if s.phase.incident}
    gaps = {s.index: GapResult(s) for s in spans if not s.phase.incident}
    open_rules: set[str] = set()  # rules announced firing and not resolved since
    for message in ordered:
        noisy = not message.alerts  # a firing line, a resolve never announced, an alert of no incident
        counted: set[int] = set()  # incidents the message tells something about
        for alert in message.alerts:
            was_open = alert.rule in open_rules
            if alert.resolved:
                open_rules.discard(alert.rule)
            else:
                open_rules.add(alert.rule)
            incident = incident_of(alert.rule, message.at, spans)
            if incident is None:
                noisy = True
                continue
            result = incidents[incident.index]
            if not alert.resolved:
                noisy = True
                counted.add(incident.index)
                if result.first is None:
                    result.first = message.at - incident.start
                result.resolved_at = None
                continue
            if not was_open and result.first is not None:
                continue  # resolved and said so before: Alertmanager lists resolved alerts again
            noisy = noisy or not was_open
            counted.add(incident.index)
            result.resolved_at = message.at
            if message.at < incident.end:
                result.false_resolves += 1
        for index in counted:
            result = incidents[index]
            result.sent += 1
            unmarked = message.status != "resolved" and not message.flapping
            result.unmarked_after_flapping += unmarked and result.flapping > 0
            result.flapping += message.flapping
        where = span_at(message.at, spans)
        if where is None:
            continue
        if where.index in gaps:
            gap = gaps[where.index]
            if noisy:
                gap.noise.append(message)
            else:
                gap.resolves += 1
        elif where.index not in counted and noisy:
            incidents[where.index].other += 1
    return SideResult(name, ordered, list(incidents.values()), list(gaps.values()))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def incident_table(span: Span, sides: Sequence[SideResult]) -> list[str]:
    lines = [
        f"### {span.phase.name}: {span.phase.incident}, {span.end - span.start:.0f} s "
        f"(t = {span.start:.0f} to {span.end:.0f} s)",
        "",
        "| system | first notification (after the phase began) | resolve delay (after the incident ended) "
        "| notifications | marked flapping | false resolves | other |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for side in sides:
        result = next(r for r in side.incidents if r.span.index == span.index)
        marked = "n/a" if side.name.startswith("Prometheus") else str(result.flapping)
        lines.append(
            f"| {side.name} | {_seconds(result.first)} | {result.resolve_delay} | {result.sent} | "
            f"{marked} | {result.false_resolves} | {result.other} |"
        )
    return [*lines, ""]


def gap_table(spans: Sequence[Span], sides: Sequence[SideResult]) -> list[str]:
    names = " | ".join(side.name for side in sides)
    lines = [
        "### Healthy gaps: notifications but resolves of an earlier incident (a late FIRING counts)",
        "",
        f"| gap | seconds | {names} |",
        "| --- | ---: |" + " ---: |" * len(sides),
    ]
    for span in spans:
        if span.phase.incident:
            continue
        counts = []
        for side in sides:
            gap = next(g for g in side.gaps if g.span.index == span.index)
            counts.append(f"{len(gap.noise)} (+{gap.resolves} resolves)")
        when = f"t = {span.start:.0f} to {span.end:.0f} s"
        lines.append(f"| {when} | {span.end - span.start:.0f} | {' | '.join(counts)} |")
    return [*lines, ""]


def targets(reference: SideResult, ours: SideResult) -> list[tuple[str, str, bool]]:
    """The issue's targets for `ours` (jarvis as Slack shows it) against `reference` (Prometheus + AM)."""
    rows = []
    for mine, theirs in zip(ours.incidents, reference.incidents, strict=True):
        met = mine.first is not None and (theirs.first is None or mine.first <= theirs.first)
        rows.append(
            (
                f"{mine.span.phase.name}: notified no later than Prometheus + Alertmanager",
                f"{_seconds(mine.first)} against {_seconds(theirs.first)}",
                met,
            )
        )
    false_resolves = sum(r.false_resolves for r in ours.incidents)
    rows.append(("false resolves, all phases", str(false_resolves), false_resolves == 0))
    noise = sum(len(g.noise) for g in ours.gaps)
    rows.append(("notifications in healthy gaps", str(noise), noise == 0))
    for result in ours.incidents:
        if result.span.phase.flap is None:
            continue
        met = (
            result.first is not None
            and result.sent <= 3
            and result.flapping > 0
            and result.unmarked_after_flapping == 0
        )
        rows.append(
            (
                f"{result.span.phase.name}: announced in at most 3 messages, marked flapping from the "
                "moment it shows (a first outage is told as it fires)",
                f"{result.sent} message(s), {result.flapping} marked flapping, "
                f"{result.unmarked_after_flapping} unmarked after that, "
                f"{'announced firing' if result.first is not None else 'never announced firing'}",
                met,
            )
        )
    return rows


def targets_table(rows: Sequence[tuple[str, str, bool]]) -> list[str]:
    lines = [
        "### Targets (jarvis-monitor as Slack shows it)",
        "",
        "| target | result | met |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {what} | {result} | {'met' if met else '**not met**'} |" for what, result, met in rows]
    return [*lines, ""]


def timeline_table(
    spans: Sequence[Span], sides: Sequence[SideResult], changes: Sequence[tuple[float, str, str]] = ()
) -> list[str]:
    """Every notification of `sides`, and `changes` (when, source, what), in order of time."""
    lines = [
        "### Every notification, and jarvis's alert changes (t in seconds since the script began)",
        "",
        "| t | phase | source | what |",
        "| ---: | --- | --- | --- |",
    ]
    rows = [(m.at, side.name, m.describe()) for side in sides for m in side.messages]
    for at, source, what in sorted([*rows, *changes], key=lambda row: row[0]):
        where = span_at(at, spans)
        phase = where.phase.short if where else "after the script"
        lines.append(f"| {at:.1f} | {phase} | {source} | {what} |")
    return [*lines, ""]
