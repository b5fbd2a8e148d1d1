"""Inhibition: a firing source alert mutes target alerts that share the `equal` labels."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from bus.events import Alert
from evaluator.config import InhibitRule
from evaluator.silences import matches_all


class Inhibitor:
    """Index of the firing source alerts per inhibit rule, rebuilt when the firing set changes."""

    def __init__(self, rules: Sequence[InhibitRule]) -> None:
        self.rules = list(rules)
        self._index: list[dict[tuple[str, ...], list[str]]] | None = None

    def is_source(self, labels: Mapping[str, str]) -> bool:
        return any(matches_all(rule.source_matchers, labels) for rule in self.rules)

    def invalidate(self) -> None:
        self._index = None

    def inhibited_by(self, alert: Alert, firing: Callable[[], Iterable[Alert]]) -> list[str]:
        """Fingerprints of the firing alerts that inhibit `alert` (never itself)."""
        if self._index is None:
            alerts = list(firing())
            self._index = [self._build(rule, alerts) for rule in self.rules]
        sources: list[str] = []
        for rule, index in zip(self.rules, self._index, strict=True):
            if not index or not matches_all(rule.target_matchers, alert.labels):
                continue
            key = tuple(alert.labels.get(name, "") for name in rule.equal)
            sources += [fp for fp in index.get(key, ()) if fp != alert.fingerprint and fp not in sources]
        return sources

    @staticmethod
    def _build(rule: InhibitRule, firing: Iterable[Alert]) -> dict[tuple[str, ...], list[str]]:
        index: dict[tuple[str, ...], list[str]] = {}
        for alert in firing:
            if matches_all(rule.source_matchers, alert.labels):
                key = tuple(alert.labels.get(name, "") for name in rule.equal)
                index.setdefault(key, []).append(alert.fingerprint)
        return index
