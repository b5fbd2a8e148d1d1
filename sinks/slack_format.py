"""Notifications as Slack messages (Block Kit, mrkdwn) and as console text: pure, no I/O.

Every value that comes from outside (labels, summaries, group keys) is escaped for mrkdwn, so a
container named `<!channel>` shows as text and pings nobody, and every text and block list is cut
to Slack's limits with "+N more".
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from bus.events import Alert, Notification
from bus.text import BIDI_CONTROLS

# Slack's limits (https://docs.slack.dev/reference/block-kit/blocks).
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_HEADER_TEXT = 150
MAX_MESSAGE_TEXT = 40000
# Slack also refuses a message whose blocks hold too much text in all (`msg_blocks_too_long`), at
# about 11,000-13,000 characters: an undocumented limit (slackapi/bolt-js#2509, #2867).
MAX_ALERTS_TEXT = 9000
MAX_SILENCE_COMMANDS = 3

SEVERITY_EMOJI = {"critical": "🔴", "warning": "⚠️", "info": "\u2139\ufe0f"}  # information source
SEVERITY_COLOR = {"critical": "#d0021b", "warning": "#f2a900", "info": "#439fe0"}
SEVERITY_ORDER = ("critical", "warning", "info")
RESOLVED_EMOJI = "✅"
RESOLVED_COLOR = "#2eb67d"
FLAPPING_MARK = "🔁 flapping"
STABLE_MARK = "🟢 stable again"
REMINDER_MARK = "⏰ reminder"

# Labels that name what a group is about, in the order they make a title (`web01 disk_full`).
TITLE_LABELS = ("host", "container", "target", "service", "rule")

_CONTROL = re.compile(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{BIDI_CONTROLS}]")


def escape(text: str) -> str:
    """Text safe inside mrkdwn: `&`, `<` and `>` become entities, so no link or mention is made;
    control and bidirectional-override characters become `?`."""
    return _CONTROL.sub("?", text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def fit(raw: str, limit: int) -> str:
    """`raw` escaped and cut to at most `limit` characters, ending in "… +N more" when cut.

    The cut is made on the raw text, so an entity such as `&amp;` is never split in half.
    """
    escaped = escape(raw)
    if len(escaped) <= limit:
        return escaped

    def cut(keep: int) -> str:
        return f"{escape(raw[:keep])}… +{len(raw) - keep} more"

    low, high = 0, len(raw)  # the longest raw prefix that fits, by bisection
    while low < high:
        middle = (low + high + 1) // 2
        if len(cut(middle)) <= limit:
            low = middle
        else:
            high = middle - 1
    text = cut(low)
    return text if len(text) <= limit else "…"


def console_safe(text: str) -> str:
    """Text safe for a terminal: control characters (escape sequences) become `?`."""
    return _CONTROL.sub("?", text)


def number(value: float) -> str:
    """A value as people read it: `93.2`, `0.0031`, `1,234,567`."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def utc_time(ts: float) -> str:
    """`2026-11-26 14:02 UTC`; a time no calendar holds (milli- or nanoseconds sent as seconds)
    is shown as the number it is, never an error that would hold up every later message."""
    try:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        return f"{ts:g} (not a time)"


def alert_labels(alert: Alert) -> dict[str, str]:
    """An alert's labels with its rule and severity, as silences and routes match them."""
    return {**alert.labels, "rule": alert.rule, "severity": alert.severity}


def common_labels(alerts: Sequence[Alert]) -> dict[str, str]:
    """The labels every alert of the group shares."""
    if not alerts:
        return {}
    first, *rest = (alert_labels(a) for a in alerts)
    return {k: v for k, v in first.items() if all(other.get(k) == v for other in rest)}


def group_title_labels(alerts: Sequence[Alert]) -> list[tuple[str, str]]:
    """The shared labels that say what the group is about, e.g. [("host", "web01")]."""
    common = common_labels(alerts)
    return [(name, common[name]) for name in TITLE_LABELS if name in common]


def matcher(name: str, value: str) -> str:
    """`name=value` as `silence add` parses it back to exactly `value`.

    The parser trims blanks, reads `=~` as a regex and strips surrounding quotes, so such values
    are wrapped in double quotes, which it removes again.
    """
    if (
        not value
        or value != value.strip()
        or value[0] == "~"
        or (len(value) >= 2 and value[0] == value[-1] in "\"'")
    ):
        return f'{name}="{value}"'
    return f"{name}={value}"


def silence_command(matchers: Sequence[tuple[str, str]], duration: str) -> str:
    """The `jarvis-monitor silence add` command for these label matchers, quoted for a POSIX shell."""
    words = ["jarvis-monitor", "silence", "add"]
    words += [shlex.quote(matcher(name, value)) for name, value in matchers]
    words += ["--for", shlex.quote(duration), "--comment", shlex.quote("investigating")]
    return " ".join(words)


def silence_commands(alerts: Sequence[Alert], duration: str) -> list[str]:
    """One command for the whole group when it shares a host, rule, ...; else one per alert."""
    shared = group_title_labels(alerts)
    if shared:
        return [silence_command(shared, duration)]
    commands: list[str] = []
    for alert in alerts:
        labels = alert_labels(alert)
        command = silence_command([(n, labels[n]) for n in TITLE_LABELS if n in labels], duration)
        if command not in commands:
            commands.append(command)
    return commands


def runbook_link(template: str | None, rule: str) -> str | None:
    """The runbook URL for a rule: `{rule}` in the configured URL becomes the rule's name."""
    if not template:
        return None
    return template.replace("{rule}", quote(rule, safe=""))


@dataclass(frozen=True)
class FormatOptions:
    """What the formatting takes from config."""

    runbook_url: str | None = None
    silence_duration: str = "2h"


@dataclass(frozen=True)
class SlackMessage:
    """What is sent to Slack: fallback text (notifications, screen readers) and a coloured attachment."""

    text: str
    attachments: list[dict[str, Any]] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        return {"text": self.text, "attachments": self.attachments}


def firing(notification: Notification) -> list[Alert]:
    """The alerts a message is about: firing, or flapping (whatever their state right now)."""
    return [a for a in notification.alerts if a.status != "resolved" or a.flapping]


def seconds_text(seconds: float) -> str:
    """A short length of time: 45s, 3m20s, 2h5m."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"


def flap_fact(alert: Alert) -> str | None:
    """Flapping with its outages and downtime so far, or stable again after them; None otherwise."""
    if not alert.episodes:
        return FLAPPING_MARK if alert.flapping else None
    outages = f"{alert.episodes} outage{'s' if alert.episodes != 1 else ''}"
    if alert.flapping:
        return f"{FLAPPING_MARK}: {outages}, down {seconds_text(alert.downtime)} so far"
    return f"{STABLE_MARK} after {outages} (down {seconds_text(alert.downtime)})"


def worst_severity(alerts: Sequence[Alert]) -> str:
    present = {a.severity for a in alerts}
    return next((s for s in SEVERITY_ORDER if s in present), "info")


def title(notification: Notification) -> str:
    """`[FIRING:3] web01`, `[RESOLVED] web01`, unescaped (plain text)."""
    shared = group_title_labels(notification.alerts)
    about = " ".join(value for _, value in shared) or notification.group_key or notification.route
    if notification.status == "resolved":
        return f"[RESOLVED] {about}"
    return f"[FIRING:{len(firing(notification))}] {about}"


def headline(notification: Notification) -> str:
    """The title with its severity emoji, and the reminder mark when it is one (unescaped)."""
    if notification.status == "resolved":
        return f"{RESOLVED_EMOJI} {title(notification)}"
    emoji = SEVERITY_EMOJI.get(worst_severity(firing(notification) or notification.alerts), "")
    line = f"{emoji} {title(notification)}"
    return f"{line} · {REMINDER_MARK}" if notification.status == "reminder" else line


def alert_text(alert: Alert, shared: set[str], options: FormatOptions) -> str:
    """The mrkdwn of one alert: emoji, rule, summary, value, threshold, since, labels, runbook.

    Each outside text has its own share of the section's 3000 characters.
    """
    emoji = RESOLVED_EMOJI if alert.status == "resolved" else SEVERITY_EMOJI.get(alert.severity, "")
    first = f"{emoji} *{fit(alert.rule, 150)}*"
    if alert.summary:
        first += f" {fit(alert.summary, 700)}"
    facts = []
    if alert.value is not None:
        facts.append(f"value *{number(alert.value)}*")
    if alert.threshold is not None:
        facts.append(f"threshold {number(alert.threshold)}")
    facts.append(f"since {utc_time(alert.starts_at)}")
    if alert.status == "resolved" and alert.ends_at is not None:
        facts.append(f"resolved {utc_time(alert.ends_at)}")
    flap = flap_fact(alert)
    if flap:
        facts.append(flap)
    link = runbook_link(options.runbook_url, alert.rule)
    if link:
        facts.append(f"<{escape(link)}|runbook>")
    lines = [first, " · ".join(facts)]
    extra = {
        k: v for k, v in alert.labels.items() if k not in shared and k not in ("agent", "severity", "rule")
    }
    if extra:
        lines.append(
            fit_markup(" ".join(f"`{escape(k)}={escape(v)}`" for k, v in sorted(extra.items())), 600)
        )
    if alert.description:
        lines.append(fit(alert.description, 700))
    return fit_markup("\n".join(lines), MAX_SECTION_TEXT)


def header(notification: Notification) -> dict[str, Any]:
    return {
        "type": "header",
        "text": {"type": "plain_text", "text": fit(headline(notification), MAX_HEADER_TEXT), "emoji": True},
    }


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def blocks(notification: Notification, options: FormatOptions) -> list[dict[str, Any]]:
    """The Block Kit blocks: header, one section per alert (cut with "+N more"), silence, context."""
    tail: list[dict[str, Any]] = []
    commands = silence_commands(firing(notification) or notification.alerts, options.silence_duration)
    if notification.status != "resolved" and commands:
        shown = [f"`{escape(c)}`" for c in commands[:MAX_SILENCE_COMMANDS]]
        if len(commands) > MAX_SILENCE_COMMANDS:
            shown.append(f"+{len(commands) - MAX_SILENCE_COMMANDS} more")
        tail.append(section(fit_markup("To silence: " + "\n".join(shown), MAX_SECTION_TEXT)))
    context = f"route `{fit(notification.route, 200)}` · group `{fit(notification.group_key, 2000)}`"
    tail.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})

    shared = {name for name, _ in group_title_labels(notification.alerts)}
    texts = [alert_text(a, shared, options) for a in notification.alerts]
    count = fitting(texts, MAX_BLOCKS - 1 - len(tail))
    alerts = [section(text) for text in texts[:count]]
    if count < len(texts):
        alerts.append(section(f"+{len(texts) - count} more alerts"))
    return [header(notification), *alerts, *tail]


def fitting(texts: Sequence[str], room: int) -> int:
    """How many of `texts` fit in `room` blocks and MAX_ALERTS_TEXT; when not all do, one block
    is kept for "+N more"."""
    if len(texts) <= room and sum(map(len, texts)) <= MAX_ALERTS_TEXT:
        return len(texts)
    used = 0
    for count, text in enumerate(texts[: room - 1]):
        used += len(text)
        if used > MAX_ALERTS_TEXT:
            return count
    return min(len(texts), room - 1)


def short_blocks(notification: Notification) -> list[dict[str, Any]]:
    """The header and a count: for a message Slack refused as too long."""
    count = len(notification.alerts)
    note = (
        f"{count} alert{'' if count == 1 else 's'}: too long for Slack to show here; "
        "`jarvis-monitor alerts` and the console list them"
    )
    return [header(notification), section(note)]


def fit_markup(markup: str, limit: int) -> str:
    """Already-escaped mrkdwn cut to `limit`; only our own short markup can be that long."""
    if len(markup) <= limit:
        return markup
    cut = markup[: limit - 20]
    cut = cut[: cut.rfind("&")] if cut.rfind("&") > cut.rfind(";") else cut  # no half entity
    return f"{cut}… +{len(markup) - len(cut)} more"


def fallback_text(notification: Notification) -> str:
    """The message's `text`: shown in notifications and by clients that cannot show blocks."""
    return fit(headline(notification), MAX_MESSAGE_TEXT)


def colour(notification: Notification) -> str:
    if notification.status == "resolved":
        return RESOLVED_COLOR
    return SEVERITY_COLOR.get(worst_severity(firing(notification) or notification.alerts), "#888888")


def render(notification: Notification, options: FormatOptions, *, short: bool = False) -> SlackMessage:
    """The whole Slack message for a notification; `short`, only its header and alert count."""
    shown = short_blocks(notification) if short else blocks(notification, options)
    return SlackMessage(
        text=fallback_text(notification), attachments=[{"color": colour(notification), "blocks": shown}]
    )


def resolved_reply(notification: Notification) -> SlackMessage:
    """The short thread reply posted when a group resolves."""
    count = len(notification.alerts)
    noun = "alert" if count == 1 else "alerts"
    return SlackMessage(text=f"{RESOLVED_EMOJI} resolved: {count} {noun}")


def console_text(notification: Notification, options: FormatOptions) -> str:
    """A readable multi-line rendering for the console, when no Slack is configured."""
    lines = [f"{console_safe(headline(notification))}  (route {console_safe(notification.route)})"]
    for alert in notification.alerts:
        emoji = RESOLVED_EMOJI if alert.status == "resolved" else SEVERITY_EMOJI.get(alert.severity, "")
        facts = [f"since {utc_time(alert.starts_at)}"]
        if alert.value is not None:
            facts.insert(0, f"value {number(alert.value)}")
        if alert.threshold is not None:
            facts.insert(1, f"threshold {number(alert.threshold)}")
        flap = flap_fact(alert)
        if flap:
            facts.append(flap)
        lines.append(
            f"  {emoji} {console_safe(alert.rule)}: {console_safe(alert.summary)} ({', '.join(facts)})"
        )
    if notification.status != "resolved":
        for command in silence_commands(
            firing(notification) or notification.alerts, options.silence_duration
        ):
            lines.append(f"  silence: {console_safe(command)}")
    return "\n".join(lines)
