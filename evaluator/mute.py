"""Muting: silences, maintenance windows and inhibition, each behind one `mutes(labels, now)` protocol.

As in Alertmanager's `notify/mute.go`, the dispatcher asks one stage whether an alert may be
notified; each muter answers on its own and is tested alone. A muter returns what mutes the
labels (silence ids, `maintenance:<window>`, inhibiting fingerprints): empty means not muted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from bus.events import Alert
from evaluator.config import InhibitRule, MaintenanceWindow
from evaluator.silences import Silence, matches_all, window_state

MAINTENANCE_RULE = "maintenance"  # the rule of a window's own announcement, never muted by it


class Muter(Protocol):
    def mutes(self, labels: Mapping[str, str], now: float) -> list[str]:
        """What mutes alerts with these labels at `now`; empty: nothing does."""
        ...


class Silences:
    """Ad-hoc silences (CLI, console, KV); `next_boundary` is when the muted set may change."""

    def __init__(self, silences: Sequence[Silence] = ()) -> None:
        self.items = list(silences)

    def mutes(self, labels: Mapping[str, str], now: float) -> list[str]:
        return [s.id for s in self.items if s.active(now) and s.matches(labels)]

    def next_boundary(self, now: float) -> float | None:
        return min((t for s in self.items for t in (s.starts_at, s.ends_at) if t > now), default=None)


class MaintenanceWindows:
    """Recurring windows from the config; `update` tells which opened or closed by `now`."""

    def __init__(self, windows: Sequence[MaintenanceWindow]) -> None:
        self.windows = {window.name: window for window in windows}
        self.open: dict[str, bool] = {}

    def mutes(self, labels: Mapping[str, str], now: float) -> list[str]:
        if labels.get("rule") == MAINTENANCE_RULE:
            return []
        return [
            f"maintenance:{name}"
            for name, window in self.windows.items()
            if self.open.get(name) and matches_all(window.matchers, labels)
        ]

    def update(self, name: str, now: float) -> tuple[bool, float | None]:
        """(did window `name` open or close by `now`, its next boundary after `now`)."""
        open_now, boundary = window_state(self.windows[name], now)
        changed = open_now != self.open.get(name, False)
        self.open[name] = open_now
        return changed, boundary


class Inhibitor:
    """A firing source alert mutes target alerts that share the `equal` labels (never itself).

    As in Alertmanager's `inhibit.go`, a target that matches the source side too is muted only by
    sources that do not also match the target side: two alerts of one kind never mute each other.
    The index of firing sources per rule is rebuilt lazily after the firing set changes.
    """

    def __init__(self, rules: Sequence[InhibitRule], firing: Callable[[], Iterable[Alert]]) -> None:
        self.rules = list(rules)
        self._firing = firing
        self._index: list[dict[tuple[str, ...], list[tuple[str, bool]]]] | None = None

    def is_source(self, labels: Mapping[str, str]) -> bool:
        return any(matches_all(rule.source_matchers, labels) for rule in self.rules)

    def invalidate(self) -> None:
        self._index = None

    def mutes(self, labels: Mapping[str, str], now: float) -> list[str]:
        if self._index is None:
            alerts = list(self._firing())
            self._index = [self._build(rule, alerts) for rule in self.rules]
        sources: list[str] = []
        for rule, index in zip(self.rules, self._index, strict=True):
            if not index or not matches_all(rule.target_matchers, labels):
                continue
            key = tuple(labels.get(name, "") for name in rule.equal)
            # an alert itself is among the two-sided sources whenever it is a source
            two_sided_target = matches_all(rule.source_matchers, labels)
            for fingerprint, two_sided in index.get(key, ()):
                if not (two_sided_target and two_sided) and fingerprint not in sources:
                    sources.append(fingerprint)
        return sources

    @staticmethod
    def _build(rule: InhibitRule, firing: Iterable[Alert]) -> dict[tuple[str, ...], list[tuple[str, bool]]]:
        """Firing sources by their `equal` labels: (fingerprint, matches the target side too)."""
        index: dict[tuple[str, ...], list[tuple[str, bool]]] = {}
        for alert in firing:
            if matches_all(rule.source_matchers, alert.labels):
                key = tuple(alert.labels.get(name, "") for name in rule.equal)
                two_sided = matches_all(rule.target_matchers, alert.labels)
                index.setdefault(key, []).append((alert.fingerprint, two_sided))
        return index


class MuteStage:
    """The one stage the dispatcher asks: silenced (silences, windows) or inhibited."""

    def __init__(self, silencers: Sequence[Muter], inhibitors: Sequence[Muter]) -> None:
        self.silencers = list(silencers)
        self.inhibitors = list(inhibitors)

    def silenced_by(self, labels: Mapping[str, str], now: float) -> list[str]:
        return [ref for muter in self.silencers for ref in muter.mutes(labels, now)]

    def inhibited_by(self, labels: Mapping[str, str], now: float) -> list[str]:
        return [ref for muter in self.inhibitors for ref in muter.mutes(labels, now)]

    def mutes(self, labels: Mapping[str, str], now: float) -> bool:
        return any(muter.mutes(labels, now) for muter in (*self.silencers, *self.inhibitors))
