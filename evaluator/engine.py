"""The alert engine: rules evaluated on events, the series state machine, timers, persistence.

Pure: no I/O, no asyncio, no clock of its own. Every method takes `now` (epoch seconds) and
results come out of drain(). The pipeline reads as Alertmanager's does: series states
(evaluator/series.py) change here, the dispatcher (evaluator/dispatch.py) groups the changes
into notifications, and one mute stage (evaluator/mute.py) answers for silences, maintenance
windows and inhibition. Timers (for, keep_firing_for, staleness, dead-man, flap stability,
silence and window boundaries, group flushes) run in tick(now), each at its own deadline, so
outputs do not depend on how often or how late tick runs. Same snapshot + same calls = same outputs.

Persistence is a snapshot (the whole state) plus deltas: every series and group the engine touched
since the last delta(), those it dropped, and the small globals. A snapshot followed by its deltas
restores exactly the state a snapshot taken at the last delta would.
"""

from __future__ import annotations

import heapq
import math
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple, TypeVar

import msgspec

from bus.events import Alert, HealthEvent, Heartbeat, MetricBatch, Notification
from bus.records import ActiveAlert
from evaluator import flapping
from evaluator.config import EvaluatorConfig, Rule
from evaluator.dispatch import Dispatcher, GroupChanges
from evaluator.grouping import Group, group_host
from evaluator.mute import MAINTENANCE_RULE, Inhibitor, MaintenanceWindows, MuteStage, Silences
from evaluator.rules import CompiledRule, TemplateError, effective_inhibit_rules, effective_rules
from evaluator.series import (
    FIRING,
    INACTIVE,
    PENDING,
    STATE_NAMES,
    Series,
    SeriesKey,
    begin_episode,
    downtime,
    end_episode,
    episodes_within,
    fingerprint,
    start_flapping,
)
from evaluator.silences import Silence

__all__ = ["MAINTENANCE_RULE", "ActiveAlert", "Engine", "EngineStats", "Output", "Series", "fingerprint"]

# Timer kinds, in the order they run at one instant: every silence and window boundary of an
# instant before any group flush of it, or a window closing at 01:00 lets a flush page before the
# window opening at 01:00 mutes it.
_SILENCE, _WINDOW, _SERIES, _GROUP = 0, 1, 2, 3
STALE_INTERVALS = 3  # a series is stale after at least this many of its own intervals
SNAPSHOT_VERSION = 2
# Stamps this close are one instant: an agent stamps a cycle when its schedule wakes it, a few
# milliseconds after the instant due (more under load), so two stamps a whole number of intervals
# apart differ from it by that jitter. A sample this close to the end of its series' `for` ends
# it, a timer this close before an event runs after it, and a group flush due this soon after
# the events just evaluated goes out with them (evaluator/service.py, Driver).
INSTANT = 0.025
DELTA_VERSION = 1
# snapshot_parts(): about this much msgpack per part (a few ms of encoding)
SNAPSHOT_PART_BYTES = 1 << 20

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


class _Snapshot(msgspec.Struct, kw_only=True, array_like=True):
    """The state to save; timer heaps are rebuilt from the deadlines each part keeps."""

    version: int
    series: list[Series]
    groups: list[Group]
    seq: dict[str, int]
    silences: list[Silence]
    silence_timer: float | None
    windows: dict[str, bool]
    window_timers: dict[str, float | None]
    alerts: list[Alert]
    notifications: list[Notification]
    stats: EngineStats
    first_seq: int = 0  # the sequence a group starts from in this engine's incarnation


class _Delta(msgspec.Struct, kw_only=True, array_like=True):
    """What changed since the previous delta: series and groups written whole, or removed.

    Removals apply before upserts, so a series dropped and made again since the previous delta
    moves to the end, as it did in the engine: the restored order (of `active()`, of inhibiting
    sources) is the engine's own.
    """

    version: int
    series: list[Series]
    removed: list[str]
    groups: list[Group]
    removed_groups: list[str]
    seq: dict[str, int]
    silences: list[Silence] | None  # None: unchanged
    silence_timer: float | None
    windows: dict[str, bool]
    window_timers: dict[str, float | None]
    alerts: list[Alert]
    notifications: list[Notification]
    stats: EngineStats


_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(_Snapshot)
_delta_decoder = msgspec.msgpack.Decoder(_Delta)
_Saved = TypeVar("_Saved", _Snapshot, _Delta)


def _unpacked(
    decoder: msgspec.msgpack.Decoder[_Saved], data: bytes, name: str, kind: str, version: int
) -> _Saved:
    """A saved snapshot or delta, decompressed and decoded; ValueError if unreadable or of
    another version."""
    try:
        saved = decoder.decode(zlib.decompress(data))
    except (zlib.error, msgspec.DecodeError) as exc:
        raise ValueError(f"unreadable evaluator {name}: {exc}") from None
    if saved.version != version:
        raise ValueError(f"{kind} version {saved.version} is not {version}")
    return saved


class Engine:
    """Evaluates events against rules; see the module docstring."""

    def __init__(self, config: EvaluatorConfig, now: float) -> None:
        self._setup(config)
        # An engine made afresh (no state, or an unusable one) may follow one whose notifications
        # are still in JetStream's duplicate window: its ids must never repeat theirs, or the
        # server drops them as duplicates. Groups' sequences start from the time of making, in ms.
        self.dispatcher.first_seq = int(now * 1000)
        for name in self._windows.windows:
            self._update_window(name, now)

    def _setup(self, config: EvaluatorConfig) -> None:
        self.config = config
        # read on every evaluation; the config is frozen
        self._flapping = config.flapping.enabled
        self._flap = config.flapping
        self._flap_window = config.flapping.within.seconds
        self._stable_for = config.flapping.stable_for.seconds
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
        self._by_fp: dict[str, Series] = {}
        # Touched since the last delta() (fingerprint -> the series object then), and dropped:
        # every method that changes a series touches it, so a delta misses nothing.
        self._dirty: dict[str, Series] = {}
        self._removed: dict[str, None] = {}
        self._silences_dirty = False
        self._firing: dict[str, Series] = {}
        self._timers: list[tuple[float, int, str]] = []
        self._silences = Silences()
        self._silence_timer: float | None = None
        self._windows = MaintenanceWindows(config.maintenance_windows)
        self._window_timers: dict[str, float | None] = {}
        self._inhibitor = Inhibitor(effective_inhibit_rules(config), self._firing_alerts)
        self.mute = MuteStage([self._silences, self._windows], [self._inhibitor])
        self.dispatcher = Dispatcher(config.routes, config.default_route.as_route(), self.mute, self)
        self._alerts: list[Alert] = []
        self._notifications: list[Notification] = []

    # --- events ------------------------------------------------------------------------

    def observe(self, event: MetricBatch | HealthEvent | Heartbeat, now: float) -> None:
        """Evaluate one event against every rule that can match it."""
        self.stats.events += 1
        if isinstance(event, MetricBatch):
            self._alive(event.host, event.agent, now)
            self._observe_metrics(event, now)
        elif isinstance(event, HealthEvent):
            self._alive(event.host, event.agent, now)
            self._observe_health(event, now)
        elif isinstance(event, Heartbeat):
            self._observe_heartbeat(event, now)

    def _alive(self, host: str, agent: str, now: float) -> None:
        """An agent's batch or check proves it alive as its heartbeat does: after an outage its
        buffered metrics may be read before its buffered heartbeats, and must not look like silence."""
        key: SeriesKey = (host, agent, ())
        for rule in self._heartbeat_rules:
            series = self._states[rule.name].get(key)
            if series is not None and series.state != FIRING and now > series.last_seen:
                self._dirty[series.fingerprint] = series
                series.last_seen = now
                self._reschedule(rule, series)

    def _agent_interval(self, host: str, agent: str) -> float:
        """The interval an agent's heartbeats say it runs at; 0 if none was heard."""
        key: SeriesKey = (host, agent, ())
        for rule in self._heartbeat_rules:
            series = self._states[rule.name].get(key)
            if series is not None:
                return series.interval
        return 0.0

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
                self._dirty[series.fingerprint] = series
                series.value = value
                series.last_seen = now
                series.interval = interval
                self._step(rule, series, holds, now)

    def _observe_health(self, event: HealthEvent, now: float) -> None:
        host, agent, target = event.host, event.agent, event.target
        labels = {**event.labels, "host": host, "agent": agent, "target": target}
        key: SeriesKey = (host, agent, (("target", target),))
        interval = None
        for rule in self._health_rules:
            if rule.events is not None and event.event not in rule.events:
                continue
            if rule.matchers and not rule.matches(host, agent, labels):
                continue
            holds = rule.statuses is None or event.status in rule.statuses
            if not holds and event.status == "unknown" and rule.events is None:
                # the agent could not tell (a check that raised, no slot free): no sample, so a
                # firing alert neither resolves on it nor is kept alive by it past its staleness
                continue
            states = self._states[rule.name]
            series = states.get(key)
            if series is None:
                if not holds:
                    continue
                series = self._new_series(rule, key, labels, now)
            self._dirty[series.fingerprint] = series
            series.status, series.detail, series.context = event.status, event.detail, event.labels
            series.value = None  # a check's latency says nothing of the alert
            series.last_seen = now
            # checks carry no interval: an agent that checks every 5 minutes has them go stale
            # after 3 of its heartbeats' intervals, not between two checks
            interval = self._agent_interval(host, agent) if interval is None else interval
            series.interval = interval or series.interval
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
            self._dirty[series.fingerprint] = series
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
        self._dirty.pop(fp, None)  # made now: it goes after the series that exist
        self._dirty[fp] = series
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
        self._dirty[series.fingerprint] = series
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
            elif now >= series.active_at + rule.for_seconds - INSTANT:
                self._transition(rule, series, FIRING, now)
        elif not holds and now >= series.last_true + rule.keep_firing_seconds:
            self._transition(rule, series, INACTIVE, now)
        if self._record(rule, series, before, now):
            self._reschedule(rule, series)

    def _transition(self, rule: CompiledRule, series: Series, state: int, now: float) -> None:
        self._dirty[series.fingerprint] = series
        before = series.state
        series.state = state
        if state == FIRING:
            series.fired_at = now
            status = "firing"
        elif state == PENDING:
            status = "pending"
        else:
            # a pending alert that never fired ends as inactive: it was never an incident
            status = "resolved" if before == FIRING else "inactive"
            series.acked = False
        fired_changed = (state == FIRING) != (before == FIRING)
        if fired_changed:
            self._firing.pop(series.fingerprint, None)
            self._inhibitor.invalidate()
            if before == FIRING:
                series.resolved_at = now
        began_flapping = self._record_change(rule, series, before, now)
        alert = self._emit(rule, series, status, now, before)
        if state == FIRING:
            self._firing[series.fingerprint] = series
        if fired_changed:
            self._to_group(series, alert, now)
            if self._inhibitor.is_source(series.labels):
                self.dispatcher.touch_all(now)
        elif began_flapping:  # flapping though no episode lasted its `for`: still one to tell
            self._to_group(series, self._now_alert(rule, series, now), now)

    def _record_change(self, rule: CompiledRule, series: Series, before: int, now: float) -> bool:
        """The flap record after a transition; True if the series began to flap.

        An episode is a firing; for a health rule it is an outage (the check failing, pending
        included), so a check that fails again and again is flapping even if no failure lasts `for`.
        """
        state = series.state
        fired_changed = (state == FIRING) != (before == FIRING)
        if rule.kind == "health":
            began, ended = before == INACTIVE, state == INACTIVE
        else:
            began, ended = fired_changed and state == FIRING, fired_changed and before == FIRING
        if began:
            if not series.flapping:  # a new incident: the last flap's count is history
                series.flap_episodes, series.flap_downtime = 0, 0.0
            begin_episode(series, now, self._flap.episodes)
        elif ended:
            end_episode(series, now)
        if not self._flapping:
            return False
        if fired_changed:
            series.history, series.history_len = flapping.record(
                series.history, series.history_len, state == FIRING
            )
        if series.flapping or not (began or fired_changed):
            return False
        percent = flapping.percent_change(series.history, series.history_len)
        often = began and len(episodes_within(series, now, self._flap_window)) >= self._flap.episodes
        if often or (
            fired_changed and flapping.next_flapping(False, percent, self._flap.low, self._flap.high)
        ):
            start_flapping(series, now, self._flap_window)
            return True
        return False

    def _record(self, rule: CompiledRule, series: Series, before: int, now: float) -> bool:
        """Add this evaluation to the flap history, end flapping, drop a quiet series; False if dropped."""
        if self._flapping:
            fires = series.state == FIRING
            if fires == (before == FIRING):  # a change was recorded by _record_change
                series.history, series.history_len = flapping.record(
                    series.history, series.history_len, fires
                )
            if series.flapping and self._stable(series, now):
                self._stop_flapping(series, now)
        # An inactive series with no firing in its flap record is forgotten: memory stays bounded.
        if series.state == INACTIVE and rule.kind != "heartbeat" and self._quiet(series, now):
            self._drop(series)
            return False
        return True

    def _quiet(self, series: Series, now: float) -> bool:
        if not self._flapping:
            return True
        if series.flapping or episodes_within(series, now, self._flap_window):
            return False
        return series.history == 0 and series.history_len == flapping.WINDOW

    def _stable(self, series: Series, now: float) -> bool:
        """A flapping series is stable again: one state for stable_for, and few changes of late."""
        if now < series.changed_at + self._stable_for:
            return False
        percent = flapping.percent_change(series.history, series.history_len)
        return not flapping.next_flapping(True, percent, self._flap.low, self._flap.high)

    def _drop(self, series: Series) -> None:
        if self._states[series.rule].pop(series.key, None) is not None:
            self._count_live(self._rules[series.rule], series.key, -1)
        if self._by_fp.pop(series.fingerprint, None) is not None:
            self._removed[series.fingerprint] = None
        self._dirty.pop(series.fingerprint, None)

    def _stop_flapping(self, series: Series, now: float) -> None:
        """Stable again: the group is told once, whatever state the series settled in."""
        self._dirty[series.fingerprint] = series
        series.flapping = False
        rule = self._rules.get(series.rule)
        if rule is not None and series.episodes:
            self._to_group(series, self._now_alert(rule, series, now), now, force=True)

    def _alert(self, rule: CompiledRule, series: Series, status: str, now: float, before: int) -> Alert:
        """The alert of a series at `now`, with summary and description rendered from its state."""
        context: dict[str, object] = {
            **series.context,
            **series.labels,
            "value": series.value,
            "threshold": rule.threshold,
            "status": series.status,
            "detail": series.detail,
        }
        if status == "firing":  # a health check flapping before any outage lasted its `for`
            starts_at, ends_at = series.fired_at or series.active_at, None
        elif status == "pending":
            starts_at, ends_at = series.active_at, None
        elif status == "resolved":
            starts_at = series.fired_at
            ends_at = now if before == FIRING else series.resolved_at
        else:
            starts_at, ends_at = series.active_at, now
        flap = series.flapping or series.flap_episodes > 0
        return Alert(
            fingerprint=series.fingerprint,
            rule=rule.name,
            severity=rule.severity,
            status=status,  # type: ignore[arg-type]  # one of AlertStatus
            labels=series.labels,
            summary=self._render(rule, "summary", context),
            value=series.value,
            starts_at=starts_at,
            ends_at=ends_at,
            description=self._render(rule, "description", context),
            threshold=rule.threshold,
            flapping=series.flapping,
            episodes=series.flap_episodes if flap else 0,
            downtime=round(downtime(series, now), 3) if flap else 0.0,
        )

    def _emit(self, rule: CompiledRule, series: Series, status: str, now: float, before: int) -> Alert:
        alert = self._alert(rule, series, status, now, before)
        self._dirty[series.fingerprint] = series
        series.alert = alert
        self._alerts.append(alert)
        self.stats.alerts += 1
        return alert

    def current(self, alert: Alert, now: float) -> Alert:
        """The alert as true at `now` (the dispatcher's view at a flush); itself if its series is gone."""
        series = self._by_fp.get(alert.fingerprint)
        rule = self._rules.get(alert.rule)
        if series is None or rule is None:
            return alert
        return self._now_alert(rule, series, now)

    def _now_alert(self, rule: CompiledRule, series: Series, now: float) -> Alert:
        """A series as an incident: firing now (or flapping: the flapping is the incident, whichever
        state the series is in this moment), or resolved since it last fired."""
        status = "firing" if series.state == FIRING or series.flapping else "resolved"
        return self._alert(rule, series, status, now, series.state)

    def acked(self, fingerprint: str) -> bool:
        series = self._by_fp.get(fingerprint)
        return series is not None and series.acked

    def sends_resolved(self, rule: str) -> bool:
        compiled = self._rules.get(rule)
        return compiled is None or compiled.rule.send_resolved

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

    def _to_group(self, series: Series, alert: Alert, now: float, force: bool = False) -> None:
        missing = self.dispatcher.add(alert, now, force)
        if series.rule != MAINTENANCE_RULE:  # announcements belong to no host
            for name in missing:
                self.stats.count_unevaluable(series.rule, f"missing group_by label {name!r}")

    # --- timers ----------------------------------------------------------------------------

    def _push(self, deadline: float, kind: int, ref: str) -> None:
        heapq.heappush(self._timers, (deadline, kind, ref))

    def _reschedule(self, rule: CompiledRule, series: Series, checked: float = -math.inf) -> None:
        """Arm the series' earliest deadline; `checked`: a timer of this instant just ran."""
        deadline = self._series_deadline(rule, series, checked)
        if deadline is not None and (series.timer is None or deadline < series.timer):
            self._dirty[series.fingerprint] = series
            series.timer = deadline
            self._push(deadline, _SERIES, series.fingerprint)

    def _stale_after(self, series: Series) -> float:
        return max(self._stale_seconds, STALE_INTERVALS * series.interval)

    def _series_deadline(
        self, rule: CompiledRule, series: Series, checked: float = -math.inf
    ) -> float | None:
        state = series.state
        if (
            rule.kind == "metrics"
            and rule.events is None
            and not series.flapping
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
        # Once its stable_for has passed, a series still changing too often settles only at an
        # evaluation (which checks it): armed again at the instant just checked, tick would spin.
        if series.flapping and series.changed_at + self._stable_for > checked:
            deadlines.append(series.changed_at + self._stable_for)
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
        """A series' timer is due: fire, resolve, go stale, miss a heartbeat, settle, or be forgotten."""
        self._dirty[series.fingerprint] = series
        rule = self._rules.get(series.rule)
        if rule is None:
            return
        if series.flapping and self._stable(series, now):
            self._stop_flapping(series, now)
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
        elif series.state == INACTIVE and self._quiet(series, now):
            self._drop(series)
            return
        self._reschedule(rule, series, checked=now)

    def _forget(self, rule: CompiledRule, series: Series, now: float) -> None:
        """A series gone quiet: resolve it if active (no zombie alerts), then drop its state."""
        if series.state != INACTIVE:
            self._transition(rule, series, INACTIVE, now)
        if series.flapping:
            self._stop_flapping(series, now)
        self._drop(series)

    def _next_timer(self) -> tuple[float, int] | None:
        """The earliest valid timer, as (deadline, kind); the dispatcher's groups included."""
        timers = self._timers
        while timers and not self._timer_valid(*timers[0]):
            heapq.heappop(timers)
        own = (timers[0][0], timers[0][1]) if timers else None
        group = self.dispatcher.next_deadline()
        if group is not None and (own is None or (group, _GROUP) < own):
            return group, _GROUP
        return own

    def tick(self, now: float, flush_within: float = 0.0) -> None:
        """Run every timer due by `now`, each at its own deadline: outputs do not depend on when tick
        runs. Group flushes due within `flush_within` after `now` run too, telling what `now` showed."""
        while (due := self._next_timer()) is not None:
            deadline, kind = due
            if kind == _GROUP:
                if deadline > now + flush_within:
                    break
                self.dispatcher.flush_due(deadline)
                continue
            if deadline > now:
                break
            _, _, ref = heapq.heappop(self._timers)
            if kind == _SERIES:
                series = self._by_fp[ref]
                self._dirty[ref] = series
                series.timer = None
                self._check_series(series, deadline)
            elif kind == _SILENCE:
                self._silence_timer = None
                self._schedule_silences(deadline)
                self.dispatcher.touch_all(deadline)
            else:
                self._window_timers[ref] = None
                if ref in self._windows.windows:
                    self._update_window(ref, deadline)

    def next_deadline(self) -> float | None:
        """When tick() must run next; None when nothing is scheduled."""
        due = self._next_timer()
        return None if due is None else due[0]

    def _timer_valid(self, deadline: float, kind: int, ref: str) -> bool:
        if kind == _SERIES:
            series = self._by_fp.get(ref)
            return series is not None and series.timer == deadline
        if kind == _SILENCE:
            return self._silence_timer == deadline
        return self._window_timers.get(ref) == deadline

    # --- silences, maintenance windows, inhibition ---------------------------------------

    def _firing_alerts(self) -> list[Alert]:
        return [s.alert for s in self._firing.values() if s.alert is not None]

    def set_silences(self, silences: Sequence[Silence], now: float) -> None:
        """Replace the set of silences; groups re-check what they may notify."""
        self._silences.items = list(silences)
        self._silences_dirty = True
        self._silence_timer = None
        self._schedule_silences(now)
        self.dispatcher.touch_all(now)

    def _schedule_silences(self, now: float) -> None:
        self._silence_timer = self._silences.next_boundary(now)
        if self._silence_timer is not None:
            self._push(self._silence_timer, _SILENCE, "")

    def _update_window(self, name: str, now: float) -> None:
        changed, boundary = self._windows.update(name, now)
        if changed:
            if self._windows.windows[name].announce:
                self._announce(name, self._windows.open[name], now)
            self.dispatcher.touch_all(now)
        self._window_timers[name] = boundary
        if boundary is not None:
            self._push(boundary, _WINDOW, name)

    def _announce(self, window: str, started: bool, now: float) -> None:
        rule = self._rules[MAINTENANCE_RULE]
        key: SeriesKey = ("", "", (("window", window),))
        series = self._states[MAINTENANCE_RULE].get(key)
        if series is None:
            series = self._new_series(rule, key, {"window": window}, now)
        self._dirty[series.fingerprint] = series
        series.status = "started" if started else "ended"
        series.last_seen = now
        if started and series.state != FIRING:
            self._transition(rule, series, FIRING, now)
        elif not started and series.state == FIRING:
            self._transition(rule, series, INACTIVE, now)
            self._drop(series)

    def bus_restored(self, now: float, since: float | None = None) -> None:
        """The bus was out of reach from `since` (None: since when is unknown) until `now`: a silence
        during the outage was not the agents'.

        Every series not already firing for its silence is judged as if the outage had not been:
        its silence is shortened by the outage (judged as if seen at `now`, when unknown). No agent
        is reported down and no alert goes stale for an outage of the bus itself, and a dead agent
        is still reported down while the bus blips again and again.
        """
        outage = math.inf if since is None else max(0.0, now - since)
        for series in self._by_fp.values():
            rule = self._rules.get(series.rule)
            if (
                rule is None
                or series.last_seen >= now
                or (rule.kind == "heartbeat" and series.state == FIRING)
            ):
                continue
            self._dirty[series.fingerprint] = series
            series.last_seen = min(now, series.last_seen + outage)
            series.timer = None
            self._reschedule(rule, series)

    # --- queries and commands --------------------------------------------------------------

    def drain(self) -> Output:
        """Alerts and notifications produced since the last drain."""
        notifications = self._notifications + self.dispatcher.drain()
        self.stats.notifications += len(notifications)
        output = Output(self._alerts, notifications)
        self._alerts, self._notifications = [], []
        return output

    def ack(self, fingerprint: str, now: float) -> bool:
        """Stop reminders of an active alert until it resolves; False if no such alert."""
        series = self._by_fp.get(fingerprint)
        if series is None or series.state == INACTIVE:
            return False
        self._dirty[fingerprint] = series
        series.acked = True
        return True

    def active(self, now: float) -> list[ActiveAlert]:
        """Pending and firing alerts as they are now, with what silences, inhibits or acknowledges them."""
        out = []
        for series in self._by_fp.values():
            rule = self._rules.get(series.rule)
            if series.state == INACTIVE or series.alert is None or rule is None:
                continue
            firing = series.state == FIRING
            alert = self._alert(rule, series, STATE_NAMES[series.state], now, series.state)
            out.append(
                ActiveAlert(
                    fingerprint=series.fingerprint,
                    rule=series.rule,
                    severity=alert.severity,
                    state=STATE_NAMES[series.state],
                    labels=series.labels,
                    summary=alert.summary,
                    value=series.value,
                    since=series.fired_at if firing else series.active_at,
                    silenced_by=self.mute.silenced_by(series.labels, now),
                    inhibited_by=self.mute.inhibited_by(series.labels, now) if firing else [],
                    acked=series.acked,
                    flapping=series.flapping,
                )
            )
        return out

    # --- persistence ------------------------------------------------------------------------

    def _state(self, series: list[Series], groups: list[Group]) -> _Snapshot:
        self._notifications += self.dispatcher.drain()  # undrained notifications are state too
        return _Snapshot(
            version=SNAPSHOT_VERSION,
            series=series,
            groups=groups,
            seq=self.dispatcher.seq,
            silences=self._silences.items,
            silence_timer=self._silence_timer,
            windows=self._windows.open,
            window_timers=self._window_timers,
            alerts=self._alerts,
            notifications=self._notifications,
            stats=self.stats,
            first_seq=self.dispatcher.first_seq,
        )

    def snapshot(self) -> bytes:
        """The whole state: msgpack-encoded with msgspec, then zlib-compressed (labels repeat a lot)."""
        state = self._state(list(self._by_fp.values()), list(self.dispatcher.groups.values()))
        return zlib.compress(_snapshot_encoder.encode(state), 1)

    def snapshot_parts(self, part_bytes: int = SNAPSHOT_PART_BYTES) -> Iterator[bytes]:
        """snapshot() before compression, in parts encoded one at a time as they are asked for.

        The series and groups are those of this call, each encoded as it is when its part is made:
        whatever changes meanwhile is in the next delta(), so the parts and the deltas taken after
        this call restore the state (a caller can give its loop back between parts).
        """
        rest = _snapshot_encoder.encode(self._state([], []))
        series = list(self._by_fp.values())
        groups = list(self.dispatcher.groups.values())
        return _snapshot_parts(rest, series, groups, part_bytes)

    def delta(self) -> bytes:
        """What changed since the previous delta() (or since the engine was made or restored),
        compressed as a snapshot is; its size follows the change, not the state."""
        self._notifications += self.dispatcher.drain()
        by_fp, groups = self._by_fp, self.dispatcher.groups
        # a series or group touched after it was dropped is not in the state any more
        series = [s for fp, s in self._dirty.items() if by_fp.get(fp) is s]
        changed = self.dispatcher.changes
        state = _Delta(
            version=DELTA_VERSION,
            series=series,
            removed=list(self._removed),
            groups=[g for key, g in changed.dirty.items() if groups.get(key) is g],
            removed_groups=list(changed.removed),
            seq={key: self.dispatcher.seq[key] for key in changed.seq},
            silences=self._silences.items if self._silences_dirty else None,
            silence_timer=self._silence_timer,
            windows=self._windows.open,
            window_timers=self._window_timers,
            alerts=self._alerts,
            notifications=self._notifications,
            stats=self.stats,
        )
        data = zlib.compress(_snapshot_encoder.encode(state), 1)
        self._dirty, self._removed, self._silences_dirty = {}, {}, False
        self.dispatcher.changes = GroupChanges()
        return data

    @classmethod
    def restore(
        cls, config: EvaluatorConfig, data: bytes, now: float, deltas: Sequence[bytes] = ()
    ) -> Engine:
        """An engine continuing from a snapshot and the deltas taken after it, in order; series of
        rules no longer configured resolve."""
        return cls._from_state(config, _decoded(data, deltas), now)

    @classmethod
    def take_over(
        cls,
        config: EvaluatorConfig,
        saved: Sequence[tuple[bytes, Sequence[bytes]]],
        now: float,
        keep_host: Callable[[str], bool],
        *,
        complete: bool = True,
    ) -> Engine:
        """An engine continuing the hosts `keep_host` takes from the saved states of another
        partitioning (each a snapshot and its deltas): their series and groups, merged. Not
        `complete` (a state was lost): the groups' sequences move on past any the lost one used."""
        states = [_decoded(data, deltas) for data, deltas in saved]
        # windows are announced by one partition: its announcements come from the first state
        # (the old layout's partition 0), never from a copy another partition kept
        announced = {window.name for window in config.maintenance_windows if window.announce}
        for index, state in enumerate(states):
            _keep_hosts(state, keep_host, announced if index == 0 else set())
        merged = states[0]
        for state in states[1:]:
            merged.series += state.series
            merged.groups += state.groups
            for key, seq in state.seq.items():  # an id already sent is never made again
                merged.seq[key] = max(seq, merged.seq.get(key, 0))
            merged.alerts += state.alerts
            merged.notifications += state.notifications
            merged.first_seq = max(merged.first_seq, state.first_seq)
        merged.groups = _latest_groups(merged.groups)
        if not complete:  # its ids may still be in JetStream's duplicate window: none may repeat
            merged.first_seq = max(merged.first_seq, int(now * 1000))
            merged.seq = {key: max(seq, merged.first_seq) for key, seq in merged.seq.items()}
        return cls._from_state(config, merged, now)

    @classmethod
    def _from_state(cls, config: EvaluatorConfig, state: _Snapshot, now: float) -> Engine:
        engine = cls.__new__(cls)
        engine._setup(config)
        engine._restore(state, now)
        return engine

    def _restore(self, state: _Snapshot, now: float) -> None:
        self.stats = state.stats
        self.dispatcher.restore(state.groups, state.seq)
        self.dispatcher.first_seq = state.first_seq
        self._silences.items = state.silences
        self._silence_timer = state.silence_timer
        if state.silence_timer is not None:
            self._push(state.silence_timer, _SILENCE, "")
        self._windows.open = state.windows
        self._window_timers = state.window_timers
        for name, deadline in state.window_timers.items():
            if deadline is not None:
                self._push(deadline, _WINDOW, name)
        self._alerts = state.alerts
        self._notifications = state.notifications
        orphans = []
        for series in state.series:
            self._by_fp[series.fingerprint] = series
            if series.timer is not None:
                self._push(series.timer, _SERIES, series.fingerprint)
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
        for name in [name for name in self._windows.open if name not in self._windows.windows]:
            if self._windows.open.pop(name):  # a window removed from the config ends now
                self._announce(name, started=False, now=now)
            self._window_timers.pop(name, None)
        for name in self._windows.windows:
            if name not in self._window_timers:
                self._update_window(name, now)


def _apply_deltas(state: _Snapshot, deltas: Sequence[bytes]) -> None:
    """Bring a decoded snapshot forward through deltas, in the order they were taken."""
    series = {s.fingerprint: s for s in state.series}
    groups = {g.key: g for g in state.groups}
    for number, data in enumerate(deltas):
        delta = _unpacked(_delta_decoder, data, f"delta {number}", "delta", DELTA_VERSION)
        for fp in delta.removed:
            series.pop(fp, None)
        for item in delta.series:
            series[item.fingerprint] = item
        for key in delta.removed_groups:
            groups.pop(key, None)
        for group in delta.groups:
            groups[group.key] = group
        state.seq.update(delta.seq)
        if delta.silences is not None:
            state.silences = delta.silences
        state.silence_timer = delta.silence_timer
        state.windows = delta.windows
        state.window_timers = delta.window_timers
        state.alerts = delta.alerts
        state.notifications = delta.notifications
        state.stats = delta.stats
    state.series = list(series.values())
    state.groups = list(groups.values())


def _decoded(data: bytes, deltas: Sequence[bytes]) -> _Snapshot:
    """A snapshot brought forward through its deltas; ValueError if unreadable."""
    state = _unpacked(_snapshot_decoder, data, "snapshot", "snapshot", SNAPSHOT_VERSION)
    if deltas:
        _apply_deltas(state, deltas)
    return state


def _keep_hosts(state: _Snapshot, keep_host: Callable[[str], bool], announced: set[str]) -> None:
    """Leave out the series and groups of hosts `keep_host` refuses, and the announcements of
    windows not in `announced`."""

    def kept(rule: str, host: str, labels: Mapping[str, str]) -> bool:
        if rule == MAINTENANCE_RULE:
            return labels.get("window", "") in announced
        return keep_host(host)

    def group_kept(group: Group) -> bool:
        if group.alerts:
            return all(kept(a.rule, a.labels.get("host", ""), a.labels) for a in group.alerts.values())
        # left from a notified incident: its host's partition alone keeps it; the announcements'
        # group (host "") stays with the partition that announces
        host = group_host(group.key) or ""
        return bool(announced) if host == "" else keep_host(host)

    state.series = [s for s in state.series if kept(s.rule, s.key[0], s.labels)]
    state.groups = [group for group in state.groups if group_kept(group)]


def _latest_groups(groups: Sequence[Group]) -> list[Group]:
    """One group per key: of copies from several saved states, the one notified last."""
    latest: dict[str, Group] = {}
    for group in groups:
        kept = latest.get(group.key)
        if kept is None or (group.flushed_at or 0.0) > (kept.flushed_at or 0.0):
            latest[group.key] = group
    return list(latest.values())


def _array_header(length: int) -> bytes:
    """The msgpack header of an array of `length` items (the smallest form, as msgspec writes)."""
    if length < 16:
        return bytes([0x90 | length])
    if length < 1 << 16:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


def _snapshot_parts(
    rest: bytes, series: list[Series], groups: list[Group], part_bytes: int
) -> Iterator[bytes]:
    """A _Snapshot's msgpack with its two lists spliced in, part by part (`rest` has them empty)."""
    # array_like: the header of its fields, the version, then series and groups ([] each: 0x90)
    at = 1 + len(_snapshot_encoder.encode(SNAPSHOT_VERSION))
    assert rest[at : at + 2] == b"\x90\x90", "the snapshot's layout begins version, series, groups"
    yield rest[:at] + _array_header(len(series))
    yield from _items(series, part_bytes)
    yield _array_header(len(groups))
    yield from _items(groups, part_bytes)
    yield rest[at + 2 :]


def _items(items: Sequence[Series | Group], part_bytes: int) -> Iterator[bytes]:
    """The items' msgpack without the array header, about `part_bytes` at a time."""
    start, count = 0, 1  # the first item measures what a part of part_bytes holds
    while start < len(items):
        chunk = items[start : start + count]
        data = _snapshot_encoder.encode(chunk)
        yield data[len(_array_header(len(chunk))) :]
        start += len(chunk)
        count = max(1, count * part_bytes // len(data))


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
