"""Routes and groups: which route takes an alert, its group key, notification ids."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import msgspec

from bus.events import Alert
from evaluator.config import Route
from evaluator.silences import matches_all


class Group(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    """One aggregation group of one route: its alerts and what was last notified."""

    key: str
    route: str
    # latest Alert per fingerprint: firing, resolved (until flushed) or pinned as flapping
    alerts: dict[str, Alert] = {}
    # the visible firing alerts as of the last flush: fingerprint -> notified as flapping
    notified: dict[str, bool] = {}
    flushed_at: float | None = None
    sent_at: float | None = None
    next_flush: float | None = None


def select_route(routes: Sequence[Route], default: Route, labels: Mapping[str, str]) -> Route:
    """The first route whose severities and matchers take these labels, else the default route."""
    for route in routes:
        if route.severity and labels.get("severity") not in route.severity:
            continue
        if matches_all(route.matchers, labels):
            return route
    return default


def is_urgent(route: Route, labels: Mapping[str, str]) -> bool:
    """A critical alert on a route that sends criticals first."""
    return route.critical_first and labels.get("severity") == "critical"


def group_key(route: Route, labels: Mapping[str, str]) -> tuple[str, list[str]]:
    """(key, group_by labels missing from `labels`), as in Alertmanager: route:{host="web01"}."""
    missing = [name for name in route.group_by if name not in labels]
    inner = ",".join(f"{name}={json.dumps(labels.get(name, ''))}" for name in sorted(route.group_by))
    return f"{route.name}:{{{inner}}}", missing


_JSON = json.JSONDecoder()


def group_host(key: str) -> str | None:
    """The host a group key groups by (None if its route does not group by host)."""
    return _group_labels(key).get("host")


def _group_labels(key: str) -> dict[str, str]:
    """The labels of a key as group_key writes it, read label by label: a value may hold anything."""
    labels: dict[str, str] = {}
    try:
        at = key.index("{") + 1  # route names hold no brace
        while key[at] != "}":
            equals = key.index("=", at)  # label names hold no equals sign
            name = key[at:equals]
            value, at = _JSON.raw_decode(key, equals + 1)
            labels[name] = str(value)
            if key[at] == ",":
                at += 1
    except (ValueError, IndexError):
        return {}
    return labels


def notification_id(route: str, key: str, seq: int) -> str:
    """Deterministic: the same group and sequence number always give the same id (Nats-Msg-Id)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{route}-{digest}-{seq}"
