"""The alert engine: rule evaluation, the per-series state machine, grouping, silences, inhibition.

Pure: no I/O, no asyncio, no clock of its own. Every method takes `now` (epoch seconds) and
results come out of drain(). Timers (for, keep_firing_for, staleness, dead-man, group waits,
silence and maintenance boundaries) live in one heap; tick(now) runs those due, each at its own
deadline, so outputs do not depend on how often or how late tick runs (a restarted service
catching up gives the same alerts, ids included). Same snapshot + same calls = same outputs.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import msgspec

from bus.events import Alert, HealthEvent, Heartbeat, MetricBatch, Notification, NotificationStatus
from evaluator import flapping
from evaluator.config import EvaluatorConfig, MaintenanceWindow, Route, Rule
from evaluator.grouping import Group, group_key, notification_id, select_route
from evaluator.inhibition import Inhibitor
from evaluator.rules import CompiledRule, TemplateError, effective_inhibit_rules, effective_rules
from evaluator.silences import Silence, matches_all, window_state

INACTIVE, PENDING, FIRING = 0, 1, 2
_STATE_NAMES = ("inactive", "pending", "firing")
_SERIES, _GROUP, _SILENCE, _WINDOW = 0, 1, 2, 3  # timer kinds
STALE_INTERVALS = 3  # a series is stale after at least this many of its own intervals
MAINTENANCE_RULE = "maintenance"
SNAPSHOT_VERSION = 1

SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]

# The announcement of a maintenance window: an info alert, firing while the window is open.
_MAINTENANCE = Rule(
    name=MAINTENANCE_RULE,
    kind="heartbeat",
    threshold=1,
    severity="info",
    summary="maintenance window {window} {status}",
    description="Alerts matching the window are silenced while it is open.",
)


class Output(NamedTuple):
    alerts: list[Alert]
    notifications: list[Notification]


class ActiveAlert(msgspec.Struct, frozen=True, kw_only=True):
    """A pending or firing alert as `jarvis-monitor alerts` lists it."""

    fingerprint: str
    rule: str
    severity: str
    state: str
    labels: dict[str, str]
    summary: str
    value: float | None
    since: float
    silenced_by: list[str]
    inhibited_by: list[str]
    acked: bool
    flapping: bool


class EngineStats(msgspec.Struct, kw_only=True):
    """Counters since the state was created (they survive snapshot/restore)."""

    events: int = 0
    samples: int = 0
    alerts: int = 0
    notifications: int = 0
    # rule -> reason -> count: a rule that could not be evaluated fully (e.g. a missing label)
    unevaluable: dict[str, dict[str, int]] = {}
    template_errors: dict[str, int] = {}

    def count_unevaluable(self, rule: str, reason: str) -> None:
        reasons = self.unevaluable.setdefault(rule, {})
        reasons[reason] = reasons.get(reason, 0) + 1


class Series(msgspec.Struct, kw_only=True, array_like=True):
    """The state of one (rule, series)."""

    rule: str
    key: SeriesKey
    fingerprint: str
    labels: dict[str, str]
    state: int = INACTIVE
    active_at: float = 0.0  # condition began to hold (pending start)
    fired_at: float = 0.0
    last_seen: float = 0.0
    last_true: float = 0.0
    holding: bool = False  # the condition held at the latest evaluation
    value: float | None = None
    interval: float = 0.0
    status: str = ""  # health status (or the maintenance phase)
    detail: str = ""
    context: dict[str, str] = {}  # the latest health event's labels, for templates
    history: int = 0
    history_len: int = 0
    flapping: bool = False
    acked: bool = False
    timer: float | None = None  # earliest deadline of this series in the heap
    alert: Alert | None = None  # the latest Alert emitted


class _Snapshot(msgspec.Struct, kw_only=True, array_like=True):
    version: int
    series: list[Series]
    groups: list[Group]
    timers: list[tuple[float, int, str]]
    seq: dict[str, int]
    silences: list[Silence]
    silence_timer: float | None
    windows: dict[str, bool]
    window_timers: dict[str, float | None]
    alerts: list[Alert]
    notifications: list[Notification]
    stats: EngineStats


_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(_Snapshot)


def fingerprint(rule: str, key: SeriesKey) -> str:
    """Stable id of a series: sha256 of the rule name and its identity labels, 16 hex digits."""
    host, agent, labels = key
    text = "\x00".join([rule, host, agent, *(f"{name}={value}" for name, value in labels)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Engine:
    """Evaluates events against rules; see the module docstring."""

    def __init__(self, config: EvaluatorConfig, now: float) -> None:
        self._setup(config)
        for window in self._windows.values():
            self._update_window(window, now)

    def _setup(self, config: EvaluatorConfig) -> None:
        self.config = config
        # read on every evaluation; the config is frozen
        self._flapping = config.flapping.enabled
        self._stale_seconds = config.stale_after.seconds
        self.stats = EngineStats()
        self._rules = {rule.name: CompiledRule(rule) for rule in effective_rules(config)}
        self._rules[MAINTENANCE_RULE] = CompiledRule(_MAINTENANCE)
        self._states: dict[str, dict[SeriesKey, Series]] = {name: {} for name in self._rules}
        by_metric: dict[str, list[tuple[CompiledRule, dict[SeriesKey, Series]]]] = {}
        for rule in self._rules.values():
            if rule.kind == "metrics" and rule.metric:
                by_metric.setdefault(rule.metric, []).append((rule, self._states[rule.name]))
        self._metric_index = {metric: _MetricRules(rules) for metric, rules in by_metric.items()}
        # (host, agent) -> metric -> how many series of that metric's rules exist: a sample no rule
        # holds for and with no series on its host and metric has nothing to evaluate
        self._live: dict[tuple[str, str], dict[str, int]] = {}
        self._health_rules = [r for r in self._rules.values() if r.kind == "health"]
        self._heartbeat_rules = [
            r for r in self._rules.values() if r.kind == "heartbeat" and r.name != MAINTENANCE_RULE
        ]
        self._routes = {route.name: route for route in config.routes}
        self._default_route = config.default_route.as_route()
        self._routes[self._default_route.name] = self._default_route
        self._inhibitor = Inhibitor(effective_inhibit_rules(config))
        self._windows = {window.name: window for window in config.maintenance_windows}
        self._by_fp: dict[str, Series] = {}
        self._firing: dict[str, Series] = {}
        self._groups: dict[str, Group] = {}
        self._timers: list[tuple[float, int, str]] = []
        self._seq: dict[str, int] = {}
        self._silences: list[Silence] = []
        self._silence_timer: float | None = None
        self._window_open: dict[str, bool] = {}
        self._window_timers: dict[str, float | None] = {}
        self._alerts: list[Alert] = []
        self._notifications: list[Notification] = []

    # --- events ------------------------------------------------------------------------

    def observe(self, event: MetricBatch | HealthEvent | Heartbeat, now: float) -> None:
        """Evaluate one event against every rule that can match it."""
        self.stats.events += 1
        if isinstance(event, MetricBatch):
            self._observe_metrics(event, now)
        elif isinstance(event, HealthEvent):
            self._observe_health(event, now)
        elif isinstance(event, Heartbeat):
            self._observe_heartbeat(event, now)

    def _observe_metrics(self, batch: MetricBatch, now: float) -> None:
        index = self._metric_index
        host, agent, interval = batch.host, batch.agent, batch.interval
        live = self._live.get((host, agent))
        self.stats.samples += len(batch.samples)
        for sample in batch.samples:
            name = sample.name
            metric = index.get(name)
            if metric is None:
                continue
            value = sample.value
            # The hot path: most samples breach nothing and have no series to move on.
            if metric.low < value < metric.high and (live is None or name not in live):
                continue
            labels = sample.labels
            key: SeriesKey | None = None
            for rule, states in metric.rules:
                holds = rule.test(value)  # type: ignore[misc]  # metrics rules always have a test
                if holds:
                    if rule.matchers and not rule.matches(host, agent, labels):
                        continue
                    if key is None:
                        key = (host, agent, _label_key(labels))
                    series = states.get(key)
                    if series is None:
                        series = self._new_series(rule, key, {**labels, "host": host, "agent": agent}, now)
                        live = self._live.get((host, agent))  # it may have just been created
                else:
                    if not states:
                        continue  # nothing breaches, nothing to resolve
                    if key is None:
                        key = (host, agent, _label_key(labels))
                    series = states.get(key)
                    # a series exists only where the matchers match, unless the rule changed since
                    # the snapshot it was restored from: such a series is left to go stale
                    if series is None or (rule.matchers and not rule.matches(host, agent, labels)):
                        continue
                if series.state == FIRING and rule.still_holds is not None:
                    holds = rule.still_holds(value)
                series.value = value
                series.last_seen = now
                series.interval = interval
                self._step(rule, series, holds, now)

    def _observe_health(self, event: HealthEvent, now: float) -> None:
        host, agent, target = event.host, event.agent, event.target
        labels = {**event.labels, "host": host, "agent": agent, "target": target}
        key: SeriesKey = (host, agent, (("target", target),))
        for rule in self._health_rules:
            if rule.events is not None and event.event not in rule.events:
                continue
            if rule.matchers and not rule.matches(host, agent, labels):
                continue
            holds = rule.statuses is None or event.status in rule.statuses
            states = self._states[rule.name]
            series = states.get(key)
            if series is None:
                if not holds:
                    continue
                series = self._new_series(rule, key, labels, now)
            series.status, series.detail, series.context = event.status, event.detail, event.labels
            series.value = event.latency
            series.last_seen = now
            if rule.events is not None:  # an event holds at its instant only
                if holds:
                    series.last_true = now
                    if series.state == FIRING:
                        self._reschedule(rule, series)
                        continue
                    self._step(rule, series, True, now)
                series.holding = False
                self._reschedule(rule, series)
                continue
            self._step(rule, series, holds, now)

    def _observe_heartbeat(self, event: Heartbeat, now: float) -> None:
        key: SeriesKey = (event.host, event.agent, ())
        for rule in self._heartbeat_rules:
            if rule.matchers and not rule.matches(event.host, event.agent, {}):
                continue
            states = self._states[rule.name]
            series = states.get(key)
            if series is None:
                series = self._new_series(rule, key, {"host": event.host, "agent": event.agent}, now)
            series.last_seen = now
            series.interval = max(event.interval, 0.001)
            series.value = 0.0
            self._step(rule, series, False, now)

    # --- the state machine ----------------------------------------------------------------

    def _new_series(self, rule: CompiledRule, key: SeriesKey, labels: dict[str, str], now: float) -> Series:
        labels = dict(labels)
        context: dict[str, object] = {**labels, "value": None, "threshold": rule.threshold}
        for name, template in rule.label_templates:
            try:
                labels[name] = template.render(context)
            except TemplateError as exc:
                self._template_failed(rule.name, f"label {name}", exc)
                labels[name] = ""
        if rule.rule.runbook_url:
            labels["runbook_url"] = rule.rule.runbook_url
        labels["rule"] = rule.name
        labels["severity"] = rule.severity
        fp = fingerprint(rule.name, key)
        series = Series(rule=rule.name, key=key, fingerprint=fp, labels=labels, last_seen=now)
        self._states[rule.name][key] = series
        self._by_fp[fp] = series
        self._count_live(rule, key, 1)
        return series

    def _count_live(self, rule: CompiledRule, key: SeriesKey, delta: int) -> None:
        """Keep `_live` in step with the series of metrics rules (see `_observe_metrics`)."""
        if rule.kind != "metrics" or not rule.metric:
            return
        host_agent = key[0], key[1]
        metrics = self._live.setdefault(host_agent, {})
        count = metrics.get(rule.metric, 0) + delta
        if count > 0:
            metrics[rule.metric] = count
        else:
            metrics.pop(rule.metric, None)
            if not metrics:
                del self._live[host_agent]

    def _step(self, rule: CompiledRule, series: Series, holds: bool, now: float) -> None:
        """One evaluation of a series whose condition does (not) hold at `now`."""
        before = series.state
        series.holding = holds
        if holds:
            series.last_true = now
        if before == INACTIVE:
            if holds:
                series.active_at = now
                if rule.for_seconds > 0:
                    self._transition(rule, series, PENDING, now)
                else:
                    self._transition(rule, series, FIRING, now)
        elif before == PENDING:
            if not holds:
                self._transition(rule, series, INACTIVE, now)
            elif now >= series.active_at + rule.for_seconds:
                self._transition(rule, series, FIRING, now)
        elif not holds and now >= series.last_true + rule.keep_firing_seconds:
            self._transition(rule, series, INACTIVE, now)
        if self._record(rule, series, before, now):
            self._reschedule(rule, series)

    def _transition(self, rule: CompiledRule, series: Series, state: int, now: float) -> None:
        before = series.state
        series.state = state
        if state == FIRING:
            series.fired_at = now
            status = "firing"
        elif state == PENDING:
            status = "pending"
        else:
            status = "resolved"
            series.acked = False
        if state == FIRING or before == FIRING:
            self._firing.pop(series.fingerprint, None)
            self._inhibitor.invalidate()
        changed = (state == FIRING) != (before == FIRING)
        if changed and self.config.flapping.enabled:  # the alert below says whether it flaps
            cfg = self.config.flapping
            series.history, series.history_len = flapping.record(
                series.history, series.history_len, state == FIRING
            )
            percent = flapping.percent_change(series.history, series.history_len)
            series.flapping = flapping.next_flapping(series.flapping, percent, cfg.low, cfg.high)
        alert = self._emit(rule, series, status, now, before)
        if state == FIRING:
            self._firing[series.fingerprint] = series
        if changed:
            self._to_group(series, alert, now)
            if self._inhibitor.is_source(series.labels):
                self._mark_groups(now)

    def _record(self, rule: CompiledRule, series: Series, before: int, now: float) -> bool:
        """Add this evaluation to the flap history, end flapping, drop a quiet series; False if dropped."""
        if (series.state == FIRING) == (before == FIRING):  # a change was recorded by _transition
            if self._flapping:
                series.history, series.history_len = flapping.record(
                    series.history, series.history_len, series.state == FIRING
                )
            if series.flapping:
                cfg = self.config.flapping
                percent = flapping.percent_change(series.history, series.history_len)
                if not flapping.next_flapping(True, percent, cfg.low, cfg.high):
                    self._stop_flapping(series, now)
        # An inactive series whose window holds no firing result is forgotten: memory stays bounded.
        quiet = not self._flapping or (series.history == 0 and series.history_len == flapping.WINDOW)
        if series.state == INACTIVE and quiet and not series.flapping and rule.kind != "heartbeat":
            self._drop(series)
            return False
        return True

    def _drop(self, series: Series) -> None:
        if self._states[series.rule].pop(series.key, None) is not None:
            self._count_live(self._rules[series.rule], series.key, -1)
        self._by_fp.pop(series.fingerprint, None)

    def _stop_flapping(self, series: Series, now: float) -> None:
        series.flapping = False
        if series.alert is not None and series.alert.status != "pending":
            self._to_group(series, msgspec.structs.replace(series.alert, flapping=False), now, force=True)

    def _emit(self, rule: CompiledRule, series: Series, status: str, now: float, before: int) -> Alert:
        context: dict[str, object] = {
            **series.context,
            **series.labels,
            "value": series.value,
            "threshold": rule.threshold,
            "status": series.status,
            "detail": series.detail,
        }
        summary = self._render(rule, "summary", context)
        description = self._render(rule, "description", context)
        if status == "firing":
            starts_at, ends_at = series.fired_at, None
        elif status == "pending":
            starts_at, ends_at = series.active_at, None
        else:
            starts_at = series.fired_at if before == FIRING else series.active_at
            ends_at = now
        alert = Alert(
            fingerprint=series.fingerprint,
            rule=rule.name,
            severity=rule.severity,
            status=status,  # type: ignore[arg-type]  # pending, firing or resolved
            labels=series.labels,
            summary=summary,
            value=series.value,
            starts_at=starts_at,
            ends_at=ends_at,
            description=description,
            threshold=rule.threshold,
            flapping=series.flapping,
        )
        series.alert = alert
        self._alerts.append(alert)
        self.stats.alerts += 1
        return alert

    def _render(self, rule: CompiledRule, what: str, context: Mapping[str, object]) -> str:
        template = rule.summary if what == "summary" else rule.description
        try:
            return template.render(context)
        except TemplateError as exc:
            self._template_failed(rule.name, what, exc)
        if what == "description":
            return ""
        where = context.get("target") or context.get("host") or "?"
        return f"{rule.name} on {where}: value {context.get('value')}"

    def _template_failed(self, rule: str, what: str, exc: TemplateError) -> None:
        self.stats.template_errors[rule] = self.stats.template_errors.get(rule, 0) + 1
        reason = f"missing label {exc.missing!r} in {what}" if exc.missing else f"{what}: {exc}"
        self.stats.count_unevaluable(rule, reason)

    # --- timers ----------------------------------------------------------------------------

    def _push(self, deadline: float, kind: int, ref: str) -> None:
        heapq.heappush(self._timers, (deadline, kind, ref))

    def _reschedule(self, rule: CompiledRule, series: Series) -> None:
        deadline = self._series_deadline(rule, series)
        if deadline is not None and (series.timer is None or deadline < series.timer):
            series.timer = deadline
            self._push(deadline, _SERIES, series.fingerprint)

    def _stale_after(self, series: Series) -> float:
        return max(self._stale_seconds, STALE_INTERVALS * series.interval)

    def _series_deadline(self, rule: CompiledRule, series: Series) -> float | None:
        state = series.state
        if (
            rule.kind == "metrics"
            and rule.events is None
            and (state == INACTIVE or (state == FIRING and series.holding))
        ):
            # the common case, a metric series evaluated again: only its staleness can be due
            return series.last_seen + self._stale_after(series)
        if rule.name == MAINTENANCE_RULE:
            return None
        deadlines = []
        if series.state == PENDING:
            deadlines.append(series.active_at + rule.for_seconds)
        if series.state == FIRING and not series.holding:
            deadlines.append(series.last_true + rule.keep_firing_seconds)
        if rule.kind == "heartbeat":
            if series.state != FIRING:
                deadlines.append(self._heartbeat_deadline(rule, series))
            deadlines.append(series.last_seen + self.config.forget_agents_after.seconds)
        elif rule.events is None or series.state == INACTIVE:  # event rules: keep_firing_for
            deadlines.append(series.last_seen + self._stale_after(series))
        return min(deadlines, default=None)

    @staticmethod
    def _heartbeat_deadline(rule: CompiledRule, series: Series) -> float:
        return series.last_seen + (rule.threshold or 0.0) * series.interval

    def _check_series(self, series: Series, now: float) -> None:
        """A series' timer is due: fire, resolve, go stale, miss a heartbeat, or be forgotten."""
        rule = self._rules.get(series.rule)
        if rule is None:
            return
        # Deadlines and these checks add the same floats, so a due timer always finds its work due.
        if rule.kind == "heartbeat":
            if now >= series.last_seen + self.config.forget_agents_after.seconds:
                self._forget(rule, series, now)
                return
            series.value = round((now - series.last_seen) / series.interval, 3)
            # > and >= alike: missing from the deadline on. A firing series is judged again too: a
            # heartbeat older than the firing may have come in, and it must neither resolve the
            # alert nor leave its timer due forever.
            self._step(rule, series, now >= self._heartbeat_deadline(rule, series), now)
            return
        stale = now >= series.last_seen + self._stale_after(series)
        if stale and (rule.events is None or series.state == INACTIVE):
            self._forget(rule, series, now)
            return
        if series.state == PENDING and now >= series.active_at + rule.for_seconds:
            self._transition(rule, series, FIRING, now)
        elif (
            series.state == FIRING
            and not series.holding
            and now >= series.last_true + rule.keep_firing_seconds
        ):
            self._transition(rule, series, INACTIVE, now)
            if not self._record(rule, series, FIRING, now):
                return
        self._reschedule(rule, series)

    def _forget(self, rule: CompiledRule, series: Series, now: float) -> None:
        """A series gone quiet: resolve it if active (no zombie alerts), then drop its state."""
        if series.state != INACTIVE:
            self._transition(rule, series, INACTIVE, now)
        if series.flapping:
            self._stop_flapping(series, now)
        self._drop(series)

    def tick(self, now: float) -> None:
        """Run every timer due by `now`, each at its own deadline: outputs do not depend on when tick runs."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, kind, ref = heapq.heappop(timers)
            if kind == _SERIES:
                series = self._by_fp.get(ref)
                if series is not None and series.timer == deadline:
                    series.timer = None
                    self._check_series(series, deadline)
            elif kind == _GROUP:
                group = self._groups.get(ref)
                if group is not None and group.next_flush == deadline:
                    group.next_flush = None
                    self._flush(group, deadline)
            elif kind == _SILENCE:
                if self._silence_timer == deadline:
                    self._silence_timer = None
                    self._schedule_silences(deadline)
                    self._mark_groups(deadline)
            elif kind == _WINDOW and self._window_timers.get(ref) == deadline:
                self._window_timers[ref] = None
                window = self._windows.get(ref)
                if window is not None:
                    self._update_window(window, deadline)

    def next_deadline(self) -> float | None:
        """When tick() must run next; None when nothing is scheduled."""
        timers = self._timers
        while timers:
            deadline, kind, ref = timers[0]
            if self._timer_valid(deadline, kind, ref):
                return deadline
            heapq.heappop(timers)
        return None

    def _timer_valid(self, deadline: float, kind: int, ref: str) -> bool:
        if kind == _SERIES:
            series = self._by_fp.get(ref)
            return series is not None and series.timer == deadline
        if kind == _GROUP:
            group = self._groups.get(ref)
            return group is not None and group.next_flush == deadline
        if kind == _SILENCE:
            return self._silence_timer == deadline
        return self._window_timers.get(ref) == deadline

    # --- grouping and notifications ----------------------------------------------------

    def _route(self, name: str) -> Route:
        return self._routes.get(name, self._default_route)

    def _to_group(self, series: Series, alert: Alert, now: float, force: bool = False) -> None:
        route = select_route(self.config.routes, self._default_route, series.labels)
        key, missing = group_key(route, series.labels)
        if series.rule != MAINTENANCE_RULE:  # announcements belong to no host
            for name in missing:
                self.stats.count_unevaluable(series.rule, f"missing group_by label {name!r}")
        group = self._groups.get(key)
        if group is None:
            group = Group(key=key, route=route.name)
            self._groups[key] = group
            self._schedule_group(group, now + route.group_wait.seconds)
        pinned = group.alerts.get(series.fingerprint)
        if not force and series.flapping and pinned is not None and pinned.flapping:
            return  # flapping: notified once, quiet until stable
        group.alerts[series.fingerprint] = alert
        self._touch(group, now)

    def _schedule_group(self, group: Group, at: float) -> None:
        if group.next_flush is None or at < group.next_flush:
            group.next_flush = at
            self._push(at, _GROUP, group.key)

    def _touch(self, group: Group, now: float) -> None:
        """Something changed in a group: before its first flush group_wait runs, else group_interval."""
        if group.flushed_at is not None:
            interval = self._route(group.route).group_interval.seconds
            self._schedule_group(group, max(group.flushed_at + interval, now))

    def _mark_groups(self, now: float) -> None:
        """Silences or inhibition changed: every notified group re-checks at its next interval."""
        for group in self._groups.values():
            self._touch(group, now)

    def _flush(self, group: Group, now: float) -> None:
        route = self._route(group.route)
        visible = {
            fp: alert
            for fp, alert in group.alerts.items()
            if (alert.status == "firing" or alert.flapping) and not self._muted(alert, now)
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
                    and self._sends_resolved(alert)
                    and not self._muted(alert, now)
                ):
                    resolved.append(alert)
        if new or resolved:
            status: NotificationStatus = "firing" if visible else "resolved"
            self._notify(group, route, status, _ordered(visible.values()) + _ordered(resolved), now)
        elif visible and group.sent_at is not None and now >= group.sent_at + route.repeat_interval.seconds:
            reminders = [a for fp, a in visible.items() if not a.flapping and not self._acked(fp)]
            if reminders:
                self._notify(group, route, "reminder", _ordered(reminders), now)
        group.notified = {fp: alert.flapping for fp, alert in visible.items()}
        group.flushed_at = now
        for fp in [
            fp for fp, alert in group.alerts.items() if alert.status == "resolved" and not alert.flapping
        ]:
            del group.alerts[fp]
        remindable = any(not a.flapping and not self._acked(fp) for fp, a in visible.items())
        if remindable and group.sent_at is not None:
            self._schedule_group(group, group.sent_at + route.repeat_interval.seconds)
        if not group.alerts and group.next_flush is None:
            del self._groups[group.key]

    def _sends_resolved(self, alert: Alert) -> bool:
        rule = self._rules.get(alert.rule)
        return rule is None or rule.rule.send_resolved

    def _acked(self, fp: str) -> bool:
        series = self._by_fp.get(fp)
        return series is not None and series.acked

    def _notify(
        self, group: Group, route: Route, status: NotificationStatus, alerts: list[Alert], now: float
    ) -> None:
        seq = self._seq.get(group.key, 0) + 1
        self._seq[group.key] = seq
        self._notifications.append(
            Notification(
                id=notification_id(route.name, group.key, seq),
                group_key=group.key,
                route=route.name,
                status=status,
                alerts=alerts,
                ts=now,
                receiver=route.receiver,
            )
        )
        self.stats.notifications += 1
        group.sent_at = now

    # --- silences, maintenance windows, inhibition ---------------------------------------

    def _silenced_by(self, labels: Mapping[str, str], now: float) -> list[str]:
        ids = [s.id for s in self._silences if s.active(now) and s.matches(labels)]
        if labels.get("rule") != MAINTENANCE_RULE:
            ids += [
                f"maintenance:{name}"
                for name, window in self._windows.items()
                if self._window_open.get(name) and matches_all(window.matchers, labels)
            ]
        return ids

    def _inhibited_by(self, alert: Alert) -> list[str]:
        return self._inhibitor.inhibited_by(alert, self._firing_alerts)

    def _firing_alerts(self) -> list[Alert]:
        return [s.alert for s in self._firing.values() if s.alert is not None]

    def _muted(self, alert: Alert, now: float) -> bool:
        return bool(self._silenced_by(alert.labels, now) or self._inhibited_by(alert))

    def set_silences(self, silences: Sequence[Silence], now: float) -> None:
        """Replace the set of silences; groups re-check what they may notify."""
        self._silences = list(silences)
        self._silence_timer = None
        self._schedule_silences(now)
        self._mark_groups(now)

    def _schedule_silences(self, now: float) -> None:
        boundaries = [t for s in self._silences for t in (s.starts_at, s.ends_at) if t > now]
        if boundaries:
            self._silence_timer = min(boundaries)
            self._push(self._silence_timer, _SILENCE, "")

    def _update_window(self, window: MaintenanceWindow, now: float) -> None:
        open_now, boundary = window_state(window, now)
        if open_now != self._window_open.get(window.name, False):
            self._window_open[window.name] = open_now
            if window.announce:
                self._announce(window.name, open_now, now)
            self._mark_groups(now)
        self._window_timers[window.name] = boundary
        if boundary is not None:
            self._push(boundary, _WINDOW, window.name)

    def _announce(self, window: str, started: bool, now: float) -> None:
        rule = self._rules[MAINTENANCE_RULE]
        key: SeriesKey = ("", "", (("window", window),))
        series = self._states[MAINTENANCE_RULE].get(key)
        if series is None:
            series = self._new_series(rule, key, {"window": window}, now)
        series.status = "started" if started else "ended"
        series.last_seen = now
        if started and series.state != FIRING:
            self._transition(rule, series, FIRING, now)
        elif not started and series.state == FIRING:
            self._transition(rule, series, INACTIVE, now)
            self._drop(series)

    # --- queries and commands --------------------------------------------------------------

    def drain(self) -> Output:
        """Alerts and notifications produced since the last drain."""
        output = Output(self._alerts, self._notifications)
        self._alerts, self._notifications = [], []
        return output

    def ack(self, fingerprint: str, now: float) -> bool:
        """Stop reminders of an active alert until it resolves; False if no such alert."""
        series = self._by_fp.get(fingerprint)
        if series is None or series.state == INACTIVE:
            return False
        series.acked = True
        return True

    def active(self, now: float) -> list[ActiveAlert]:
        """Pending and firing alerts, with what silences, inhibits or acknowledges them."""
        out = []
        for series in self._by_fp.values():
            alert = series.alert
            if series.state == INACTIVE or alert is None:
                continue
            out.append(
                ActiveAlert(
                    fingerprint=series.fingerprint,
                    rule=series.rule,
                    severity=alert.severity,
                    state=_STATE_NAMES[series.state],
                    labels=series.labels,
                    summary=alert.summary,
                    value=series.value,
                    since=series.fired_at if series.state == FIRING else series.active_at,
                    silenced_by=self._silenced_by(series.labels, now),
                    inhibited_by=self._inhibited_by(alert) if series.state == FIRING else [],
                    acked=series.acked,
                    flapping=series.flapping,
                )
            )
        return out

    # --- persistence ------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state: msgpack-encoded with msgspec, then zlib-compressed (labels repeat a lot)."""
        state = _Snapshot(
            version=SNAPSHOT_VERSION,
            series=list(self._by_fp.values()),
            groups=list(self._groups.values()),
            timers=self._timers,
            seq=self._seq,
            silences=self._silences,
            silence_timer=self._silence_timer,
            windows=self._window_open,
            window_timers=self._window_timers,
            alerts=self._alerts,
            notifications=self._notifications,
            stats=self.stats,
        )
        return zlib.compress(_snapshot_encoder.encode(state), 1)

    @classmethod
    def restore(cls, config: EvaluatorConfig, data: bytes, now: float) -> Engine:
        """An engine continuing from a snapshot; series of rules no longer configured resolve."""
        try:
            state = _snapshot_decoder.decode(zlib.decompress(data))
        except (zlib.error, msgspec.DecodeError) as exc:
            raise ValueError(f"unreadable evaluator snapshot: {exc}") from None
        if state.version != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {state.version} is not {SNAPSHOT_VERSION}")
        engine = cls.__new__(cls)
        engine._setup(config)
        engine._restore(state, now)
        return engine

    def _restore(self, state: _Snapshot, now: float) -> None:
        self.stats = state.stats
        self._timers = state.timers
        self._seq = state.seq
        self._silences = state.silences
        self._silence_timer = state.silence_timer
        self._window_open = state.windows
        self._window_timers = state.window_timers
        self._alerts = state.alerts
        self._notifications = state.notifications
        self._groups = {group.key: group for group in state.groups}
        orphans = []
        for series in state.series:
            self._by_fp[series.fingerprint] = series
            states = self._states.get(series.rule)
            if states is None:
                orphans.append(series)
                continue
            states[series.key] = series
            self._count_live(self._rules[series.rule], series.key, 1)
            if series.state == FIRING:
                self._firing[series.fingerprint] = series
        for series in orphans:  # its rule is gone from the config: resolve, never a zombie
            self._states[series.rule] = {series.key: series}
            self._rules[series.rule] = CompiledRule(_orphan_rule(series))
            self._forget(self._rules[series.rule], series, now)
            del self._rules[series.rule], self._states[series.rule]
        for name in [name for name in self._window_open if name not in self._windows]:
            if self._window_open.pop(name):  # a window removed from the config ends now
                self._announce(name, started=False, now=now)
            self._window_timers.pop(name, None)
        for window in self._windows.values():
            if window.name not in self._window_timers:
                self._update_window(window, now)


def _orphan_rule(series: Series) -> Rule:
    alert = series.alert
    return Rule(
        name=series.rule,
        kind="heartbeat",
        threshold=1,
        severity=alert.severity if alert is not None else "info",
        summary=(alert.summary if alert is not None else series.rule).replace("{", "{{").replace("}", "}}"),
    )


class _MetricRules:
    """The rules of one metric, and the open interval of values none of them can hold for."""

    __slots__ = ("high", "low", "rules")

    def __init__(self, rules: list[tuple[CompiledRule, dict[SeriesKey, Series]]]) -> None:
        self.rules = rules
        # Conservative: a value at a bound, or any rule with == or !=, takes the full path.
        self.low = -math.inf
        self.high = math.inf
        for rule, _ in rules:
            threshold = float(rule.threshold or 0.0)
            op = rule.rule.op
            if op in (">", ">="):
                self.high = min(self.high, threshold)
            elif op in ("<", "<="):
                self.low = max(self.low, threshold)
            else:
                self.low, self.high = math.inf, -math.inf


def _label_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The labels part of a series key: sorted, so the order they came in does not matter."""
    if len(labels) < 2:
        return tuple(labels.items())
    return tuple(sorted(labels.items()))


def _ordered(alerts: Iterable[Alert]) -> list[Alert]:
    return sorted(alerts, key=lambda a: (a.rule, a.fingerprint))
