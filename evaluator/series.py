"""One alert series: its state (inactive, pending, firing), identity and flap record.

Pure data and small functions on it; the engine drives the transitions. Flapping is seen two ways:
Nagios's weighted percentage of state changes (evaluator/flapping.py), and as people see it,
a number of firing episodes within a time window.
"""

from __future__ import annotations

import hashlib
import json

import msgspec

from bus.events import Alert

INACTIVE, PENDING, FIRING = 0, 1, 2
STATE_NAMES = ("inactive", "pending", "firing")

SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]


class Series(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    """The state of one (rule, series)."""

    rule: str
    key: SeriesKey
    fingerprint: str
    labels: dict[str, str]
    state: int = INACTIVE
    active_at: float = 0.0  # condition began to hold (pending start)
    fired_at: float = 0.0
    resolved_at: float = 0.0  # the end of the latest firing
    last_seen: float = 0.0
    last_true: float = 0.0
    holding: bool = False  # the condition held at the latest evaluation
    value: float | None = None
    interval: float = 0.0
    status: str = ""  # health status (or the maintenance phase)
    detail: str = ""
    context: dict[str, str] = {}  # the latest health event's labels, for templates
    history: int = 0  # Nagios flap history bits
    history_len: int = 0
    flapping: bool = False
    changed_at: float = 0.0  # the latest start or end of firing
    # (start, end) of the latest episodes (firings; a health check's failures), end -1 while it
    # lasts; at most the flapping config's `episodes` are kept
    episodes: list[tuple[float, float]] = []
    flap_episodes: int = 0  # firing episodes since the flapping began
    flap_downtime: float = 0.0  # seconds firing in the ended episodes of the flap
    acked: bool = False
    timer: float | None = None  # earliest deadline of this series in the heap
    alert: Alert | None = None  # the latest Alert emitted


def fingerprint(rule: str, key: SeriesKey) -> str:
    """Stable id of a series: sha256 of the rule name and its identity labels, 16 hex digits."""
    host, agent, labels = key
    parts = [rule, host, agent, *(f"{name}={value}" for name, value in labels)]
    text = "\x00".join(parts)
    if text.count("\x00") != len(parts) - 1 or any("=" in name for name, _ in labels):
        # a NUL or a `=` of its own would let two series share the text (an agent named
        # "host\x00mount=/" posing as web01's / disk): such keys are written unambiguously, apart
        # (no rule name starts with \x01); every other key keeps the id it always had
        text = "\x01" + json.dumps([rule, host, agent, labels])
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def begin_episode(series: Series, now: float, keep: int) -> None:
    """The series starts firing (or failing): a new episode, the oldest dropped past `keep`."""
    series.episodes.append((now, -1.0))
    del series.episodes[:-keep]
    series.changed_at = now
    if series.flapping:
        series.flap_episodes += 1


def end_episode(series: Series, now: float) -> None:
    """The series stops firing (or failing): its episode ends now."""
    if series.episodes and series.episodes[-1][1] < 0:
        start = series.episodes[-1][0]
        series.episodes[-1] = (start, now)
        if series.flapping:
            series.flap_downtime += now - start
    series.changed_at = now


def episodes_within(series: Series, now: float, window: float) -> list[tuple[float, float]]:
    """The firing episodes that started within `window` before `now`."""
    return [episode for episode in series.episodes if episode[0] >= now - window]


def start_flapping(series: Series, now: float, window: float) -> None:
    """Flapping begins: its count and downtime start with the episodes in the window."""
    recent = episodes_within(series, now, window) or series.episodes[-1:]
    series.flapping = True
    series.flap_episodes = len(recent)
    series.flap_downtime = sum(end - start for start, end in recent if end >= 0)


def downtime(series: Series, now: float) -> float:
    """Seconds in episodes since the flapping began, the running episode included."""
    running = series.episodes and series.episodes[-1][1] < 0
    return series.flap_downtime + (now - series.episodes[-1][0] if running else 0.0)
