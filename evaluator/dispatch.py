"""The dispatcher: aggregation groups and their timers, turning alert changes into notifications.

It owns nothing but groups (Alertmanager's `dispatch/`): which group an alert joins, when a group
flushes (group_wait, group_interval, repeat_interval) and what a flush sends. What an alert looks
like now, whether it is acknowledged and whether it is muted, it asks the engine and the mute stage.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from bus.events import Alert, Notification, NotificationStatus
from evaluator.config import Route
from evaluator.grouping import Group, group_key, is_urgent, notification_id, select_route
from evaluator.mute import MuteStage


class AlertView(Protocol):
    """What the dispatcher asks about an alert when a group flushes."""

    def current(self, alert: Alert, now: float) -> Alert:
        """The alert as it is at `now`: state, value and summary (itself if its series is gone)."""
        ...

    def acked(self, fingerprint: str) -> bool: ...

    def sends_resolved(self, rule: str) -> bool: ...


class GroupChanges:
    """Groups touched (key -> the group object then) and removed since the last delta, and the
    groups whose notification sequence moved on: what the engine's delta writes of the dispatcher."""

    __slots__ = ("dirty", "removed", "seq")

    def __init__(self) -> None:
        self.dirty: dict[str, Group] = {}
        self.removed: dict[str, None] = {}
        self.seq: dict[str, None] = {}


class Dispatcher:
    """Groups per route and group labels; `flush_due` runs the group timers due by a deadline."""

    def __init__(self, routes: Sequence[Route], default: Route, mute: MuteStage, view: AlertView) -> None:
        self._route_list = list(routes)
        self._default = default
        self._routes = {route.name: route for route in [*routes, default]}
        self._mute = mute
        self._view = view
        self.groups: dict[str, Group] = {}
        self.seq: dict[str, int] = {}
        self.first_seq = 0  # a group's first notification is number first_seq + 1
        self._timers: list[tuple[float, str]] = []
        self.notifications: list[Notification] = []
        self.sent = 0
        self.changes = GroupChanges()

    def restore(self, groups: Iterable[Group], seq: dict[str, int]) -> None:
        """Continue from saved groups; their timers are rebuilt from each group's next flush."""
        self.groups = {group.key: group for group in groups}
        self.seq = seq
        self.changes = GroupChanges()
        self._timers = [(g.next_flush, g.key) for g in self.groups.values() if g.next_flush is not None]
        heapq.heapify(self._timers)

    def route(self, labels: Mapping[str, str]) -> tuple[Route, str, list[str]]:
        """(route, group key, group_by labels missing from `labels`) of an alert."""
        route = select_route(self._route_list, self._default, labels)
        key, missing = group_key(route, labels)
        return route, key, missing

    def add(self, alert: Alert, now: float, force: bool = False) -> list[str]:
        """An alert started or stopped firing (or flapping); returns the missing group_by labels."""
        route, key, missing = self.route(alert.labels)
        group = self.groups.get(key)
        if group is None:
            group = Group(key=key, route=route.name)
            self.groups[key] = group
            self.changes.dirty.pop(key, None)  # made now: it goes after the groups that exist
        self.changes.dirty[key] = group
        pinned = group.alerts.get(alert.fingerprint)
        if not force and alert.flapping and pinned is not None and pinned.flapping:
            return missing  # flapping: notified once, quiet until stable
        # A critical that starts, or ends after a while: urgent. One that ends within twice group_wait
        # of firing may be the first blip of a flap: group_interval batches it, as any alert's.
        lasted = (alert.ends_at or now) - alert.starts_at
        brief = alert.status == "resolved" and lasted < 2 * route.group_wait.seconds
        urgent = is_urgent(route, alert.labels) and not brief
        if not group.alerts and (group.flushed_at is None or not urgent):
            # a new incident of the group: group_wait batches its siblings, as in a new group
            self._schedule(group, now + route.group_wait.seconds)
        else:  # a group kept since its last notification takes a critical at once
            self._touch(group, now, urgent=urgent)
        group.alerts[alert.fingerprint] = alert
        return missing

    def touch_all(self, now: float) -> None:
        """What is muted changed: every notified group re-checks at its next interval."""
        for group in self.groups.values():
            self._touch(group, now)

    def next_deadline(self) -> float | None:
        timers = self._timers
        while timers:
            deadline, key = timers[0]
            group = self.groups.get(key)
            if group is not None and group.next_flush == deadline:
                return deadline
            heapq.heappop(timers)
        return None

    def flush_due(self, deadline: float) -> None:
        """Flush the groups whose timer is at `deadline` (call with next_deadline())."""
        timers = self._timers
        while timers and timers[0][0] <= deadline:
            at, key = heapq.heappop(timers)
            group = self.groups.get(key)
            if group is not None and group.next_flush == at:
                self.changes.dirty[key] = group
                group.next_flush = None
                self._flush(group, at)

    def drain(self) -> list[Notification]:
        out, self.notifications = self.notifications, []
        return out

    # --- timers -----------------------------------------------------------------------------

    def _schedule(self, group: Group, at: float) -> None:
        if group.next_flush is None or at < group.next_flush:
            self.changes.dirty[group.key] = group
            group.next_flush = at
            heapq.heappush(self._timers, (at, group.key))

    def _touch(self, group: Group, now: float, urgent: bool = False) -> None:
        """Something changed in a group: before its first flush group_wait runs, else group_interval.

        An urgent change (a critical starting or ending, on a route with critical_first) waits no
        longer than group_wait after the group's last flush, whatever else the group holds.
        """
        if group.flushed_at is not None:
            route = self._routes.get(group.route, self._default)
            interval = route.group_wait if urgent else route.group_interval
            self._schedule(group, max(group.flushed_at + interval.seconds, now))

    # --- a flush ----------------------------------------------------------------------------

    def _flush(self, group: Group, now: float) -> None:
        route = self._routes.get(group.route, self._default)
        view, mute = self._view, self._mute
        group.alerts = {fp: view.current(alert, now) for fp, alert in group.alerts.items()}
        visible = {
            fp: alert
            for fp, alert in group.alerts.items()
            if (alert.status == "firing" or alert.flapping) and not mute.mutes(alert.labels, now)
        }
        new = [fp for fp, alert in visible.items() if group.notified.get(fp) != alert.flapping]
        resolved = []
        if route.send_resolved:
            for fp in group.notified:
                alert = group.alerts.get(fp)
                if (
                    fp not in visible
                    and alert is not None
                    and alert.status == "resolved"
                    and view.sends_resolved(alert.rule)
                    and not mute.mutes(alert.labels, now)
                ):
                    resolved.append(alert)
        if new or resolved:
            status: NotificationStatus = "firing" if visible else "resolved"
            self._notify(group, route, status, _ordered(visible.values()) + _ordered(resolved), now)
        elif visible and group.sent_at is not None and now >= group.sent_at + route.repeat_interval.seconds:
            reminders = [a for fp, a in visible.items() if not a.flapping and not view.acked(fp)]
            if reminders:
                self._notify(group, route, "reminder", _ordered(reminders), now)
        group.notified = {fp: alert.flapping for fp, alert in visible.items()}
        group.flushed_at = now
        for fp in [fp for fp, a in group.alerts.items() if a.status == "resolved" and not a.flapping]:
            del group.alerts[fp]
        remindable = any(not a.flapping and not view.acked(fp) for fp, a in visible.items())
        if remindable and group.sent_at is not None:
            self._schedule(group, group.sent_at + route.repeat_interval.seconds)
        if not group.alerts and group.next_flush is None:
            # Kept for repeat_interval after it last notified, so that a critical on the same
            # labels (a service failing again) is sent at once rather than after group_wait.
            if group.sent_at is not None and now < group.sent_at + route.repeat_interval.seconds:
                self._schedule(group, group.sent_at + route.repeat_interval.seconds)
            else:
                del self.groups[group.key]
                self.changes.dirty.pop(group.key, None)
                self.changes.removed[group.key] = None

    def _notify(
        self, group: Group, route: Route, status: NotificationStatus, alerts: list[Alert], now: float
    ) -> None:
        seq = self.seq.get(group.key, self.first_seq) + 1
        self.seq[group.key] = seq
        self.changes.seq[group.key] = None
        self.notifications.append(
            Notification(
                id=notification_id(route.name, group.key, seq),
                group_key=group.key,
                route=route.name,
                status=status,
                alerts=alerts,
                ts=now,
                receiver=route.receiver,
                seq=seq,
            )
        )
        self.sent += 1
        group.sent_at = now


def _ordered(alerts: Iterable[Alert]) -> list[Alert]:
    return sorted(alerts, key=lambda a: (a.rule, a.fingerprint))
