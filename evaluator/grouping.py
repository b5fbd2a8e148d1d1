"""Routes and groups: which route takes an alert, its group key, notification ids."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import msgspec

from bus.events import Alert
from evaluator.config import Route
from evaluator.silences import matches_all


class Group(msgspec.Struct, kw_only=True, array_like=True):
    """One aggregation group of one route: its alerts and what was last notified."""

    key: str
    route: str
    labels: dict[str, str]
    created_at: float
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


def group_key(route: Route, labels: Mapping[str, str]) -> tuple[str, dict[str, str], list[str]]:
    """(key, group labels, missing group_by labels) as in Alertmanager: route:{host="web01"}."""
    missing = [name for name in route.group_by if name not in labels]
    values = {name: labels.get(name, "") for name in route.group_by}
    inner = ",".join(f"{name}={json.dumps(value)}" for name, value in sorted(values.items()))
    return f"{route.name}:{{{inner}}}", values, missing


def notification_id(route: str, key: str, seq: int) -> str:
    """Deterministic: the same group and sequence number always give the same id (Nats-Msg-Id)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{route}-{digest}-{seq}"
