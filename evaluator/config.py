"""The evaluator's config table: rules, routes, maintenance windows, inhibition, flapping."""

from __future__ import annotations

import functools
import re
import string
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import UNSET, Meta, UnsetType

from bus.records import MATCH_OPS as MATCH_OPS
from bus.records import Matcher as Matcher
from bus.records import MatchOp as MatchOp
from bus.records import compile_regex as compile_regex
from bus.units import Duration
from evaluator.watchdog_config import WatchdogConfig

MAX_PARTITIONS = 64

CompareOp = Literal[">", ">=", "<", "<=", "==", "!="]
EventKind = Literal["metrics", "health", "heartbeat"]
Severity = Literal["critical", "warning", "info"]
HealthStatus = Literal["ok", "warning", "critical", "unknown"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

COMPARE_OPS: tuple[str, ...] = (">", ">=", "<", "<=", "==", "!=")
SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
HEALTH_STATUSES: tuple[str, ...] = ("ok", "warning", "critical", "unknown")
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Labels the engine sets itself on every alert, so users can route, silence and inhibit on them.
RESERVED_LABELS = ("rule", "severity")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_:-]*")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
MAX_FLAP_EPISODES = 100  # the firing episodes a series keeps for flap detection


def template_fields(template: str, what: str) -> list[str]:
    """The field names a summary/description template uses; ValueError if it cannot render."""
    fields = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"invalid {what} template {template!r}: {exc}") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not _IDENTIFIER.fullmatch(field):
            raise ValueError(
                f"invalid {what} template {template!r}: {{{field}}} is not a plain name "
                "(write {label} or {value:.1f}; attributes and indexes are not allowed)"
            )
        if conversion not in (None, "s", "r") or (spec and "{" in spec):
            raise ValueError(f"invalid {what} template {template!r}: unsupported format of {{{field}}}")
        fields.append(field)
    return fields


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One alerting rule: what it matches, when it holds, what it says."""

    name: Annotated[
        str, Meta(description="unique rule name; the alert's `rule` label", examples=["disk_full"])
    ]
    kind: Annotated[
        EventKind,
        Meta(
            description="events it evaluates: metrics (a sample's value), health (a check's status) "
            "or heartbeat (an agent's silence, measured in its own intervals)"
        ),
    ] = "metrics"
    metric: Annotated[
        str | None, Meta(description="metrics rules: the sample name", examples=["disk.percent"])
    ] = None
    matchers: Annotated[
        list[Matcher],
        Meta(
            description="label matchers, all must hold; host and agent are labels too, and a health "
            "event's target and its labels",
            examples=[[{"name": "mount", "op": "!~", "value": "/boot.*"}]],
        ),
    ] = []
    op: Annotated[CompareOp, Meta(description="comparison of the value with the threshold")] = ">"
    threshold: Annotated[
        float | None,
        Meta(
            description="metrics: the value's limit; heartbeat: intervals without a heartbeat",
            examples=[85],
        ),
    ] = None
    clear_threshold: Annotated[
        float | None,
        Meta(
            description="hysteresis: once firing, the alert resolves only when the value is past "
            "this (below it for > and >=, above it for < and <=); unset: the threshold",
            examples=[80],
        ),
    ] = None
    status: Annotated[
        list[HealthStatus],
        Meta(description="health rules: statuses that make the condition hold; empty: any status"),
    ] = msgspec.field(default_factory=lambda: ["critical"])
    events: Annotated[
        list[str],
        Meta(
            description="health rules: only these events (die, oom, deployed, ...); empty: every "
            "health event, periodic checks included. An event rule fires at once and resolves "
            "after keep_firing_for",
            examples=[["deployed"]],
        ),
    ] = []
    for_: Annotated[
        Duration,
        Meta(description="how long the condition must hold before the alert fires (pending until then)"),
    ] = msgspec.field(default=Duration(0), name="for")
    keep_firing_for: Annotated[
        Duration, Meta(description="once firing, stay firing this long after the condition stops")
    ] = Duration(0)
    severity: Annotated[Severity, Meta(description="critical, warning or info")] = "warning"
    summary: Annotated[
        str,
        Meta(
            description="one line; {label}, {value}, {threshold}, {rule}, {severity}, {status}, "
            "{detail} are replaced (str.format syntax, e.g. {value:.1f}); empty: a generic line",
            examples=["disk {mount} on {host} is {value:.0f}% full"],
        ),
    ] = ""
    description: Annotated[str, Meta(description="longer text, same placeholders as summary")] = ""
    labels: Annotated[
        dict[str, str],
        Meta(
            description="extra labels on the alert; values may use {label} placeholders",
            examples=[{"team": "ops", "check": "{target}"}],
        ),
    ] = {}
    runbook_url: Annotated[
        str, Meta(description="link to the runbook, set as the alert's runbook_url label")
    ] = ""
    send_resolved: Annotated[
        bool, Meta(description="include this rule's resolved alerts in notifications")
    ] = True

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError(f"rule {self.name!r}: {'; '.join(problems)}")

    def _problems(self) -> list[str]:
        out: list[str] = []
        if not _NAME.fullmatch(self.name):
            out.append("name must be letters, digits, _, : or - and start with a letter or _")
        if self.op not in COMPARE_OPS:
            out.append(f"unknown operator {self.op!r}: use one of {', '.join(COMPARE_OPS)}")
        if self.severity not in SEVERITIES:
            out.append(f"unknown severity {self.severity!r}: use one of {', '.join(SEVERITIES)}")
        if self.kind == "metrics":
            if not self.metric:
                out.append("a metrics rule needs `metric`")
            if self.threshold is None:
                out.append("a metrics rule needs `threshold`")
        elif self.kind == "health":
            if self.metric is not None or self.threshold is not None:
                out.append("a health rule matches `status` (and `events`), not metric/threshold")
            for status in self.status:
                if status not in HEALTH_STATUSES:
                    out.append(f"unknown status {status!r}: use one of {', '.join(HEALTH_STATUSES)}")
            if self.events and self.for_.seconds:
                out.append("an event rule fires on the event: `for` must be 0s")
            if self.events and not self.keep_firing_for.seconds:
                out.append("an event rule needs keep_firing_for > 0s, or it resolves the moment it fires")
        elif self.kind == "heartbeat":
            if self.op not in (">", ">="):
                out.append("a heartbeat rule compares missed intervals with > or >=")
            if self.threshold is None or self.threshold <= 0:
                out.append("a heartbeat rule needs `threshold` > 0 (intervals without a heartbeat)")
        else:
            out.append(f"unknown kind {self.kind!r}: use metrics, health or heartbeat")
        if self.clear_threshold is not None:
            out += self._clear_problems()
        for key in self.labels:
            if key in RESERVED_LABELS or not _LABEL.fullmatch(key):
                out.append(f"label {key!r} cannot be set (reserved or not a label name)")
        for what, text in (("summary", self.summary), ("description", self.description)):
            try:
                template_fields(text, what)
            except ValueError as exc:
                out.append(str(exc))
        for key, value in self.labels.items():
            try:
                template_fields(value, f"label {key}")
            except ValueError as exc:
                out.append(str(exc))
        return out

    def _clear_problems(self) -> list[str]:
        clear, threshold = self.clear_threshold, self.threshold
        if self.kind != "metrics" or threshold is None or clear is None:
            return ["clear_threshold applies to metrics rules only"]
        if self.op in (">", ">=") and clear > threshold:
            return [f"clear_threshold {clear} must not exceed threshold {threshold} for {self.op}"]
        if self.op in ("<", "<=") and clear < threshold:
            return [f"clear_threshold {clear} must not be below threshold {threshold} for {self.op}"]
        if self.op in ("==", "!="):
            return [f"clear_threshold needs an ordering operator, not {self.op}"]
        return []


class RuleTuning(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Changes to one built-in rule, by name: only the fields given change; labels are added."""

    enabled: Annotated[bool | UnsetType, Meta(description="false: the built-in rule is off")] = UNSET
    for_: Annotated[Duration | UnsetType, Meta(description="how long the condition must hold")] = (
        msgspec.field(default=UNSET, name="for")
    )
    keep_firing_for: Annotated[
        Duration | UnsetType, Meta(description="stay firing this long after the condition stops")
    ] = UNSET
    threshold: Annotated[float | UnsetType, Meta(description="the value's limit", examples=[95])] = UNSET
    clear_threshold: Annotated[
        float | UnsetType, Meta(description="hysteresis: resolves only past this", examples=[90])
    ] = UNSET
    severity: Annotated[Severity | UnsetType, Meta(description="critical, warning or info")] = UNSET
    labels: Annotated[
        dict[str, str], Meta(description="labels added to the rule's own", examples=[{"team": "db"}])
    ] = {}

    def apply(self, rule: Rule) -> Rule:
        """The rule with these changes, validated as a whole (ValueError says what is wrong)."""
        changes: dict[str, object] = {
            name: value
            for name, value in (
                ("for_", self.for_),
                ("keep_firing_for", self.keep_firing_for),
                ("threshold", self.threshold),
                ("clear_threshold", self.clear_threshold),
                ("severity", self.severity),
            )
            if value is not UNSET
        }
        if self.labels:
            changes["labels"] = {**rule.labels, **self.labels}
        fields = {f.name: getattr(rule, f.name) for f in msgspec.structs.fields(rule)}
        return Rule(**{**fields, **changes})


def _check_route_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"route name {name!r} must be letters, digits, _ or - (a subject token)")


class Consolidation(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a route batches alerts into notifications (Alertmanager's grouping and timers)."""

    group_by: Annotated[
        list[str], Meta(description="alerts with equal values of these labels share a notification")
    ] = msgspec.field(default_factory=lambda: ["host"])
    group_wait: Annotated[
        Duration, Meta(description="wait this long after a new group's first alert, to batch its siblings")
    ] = Duration(30)
    group_interval: Annotated[
        Duration, Meta(description="changes to a group already notified are batched this long")
    ] = Duration(300)
    repeat_interval: Annotated[
        Duration, Meta(description="remind of an unchanged firing group after this long")
    ] = Duration(4 * 3600)
    send_resolved: Annotated[bool, Meta(description="notify when alerts resolve")] = True

    def __post_init__(self) -> None:
        for label in self.group_by:
            if not _LABEL.fullmatch(label):
                raise ValueError(f"invalid group_by label {label!r}")
        if self.repeat_interval.seconds <= 0 or self.group_interval.seconds <= 0:
            raise ValueError("group_interval and repeat_interval must be > 0s")


class DefaultRoute(Consolidation, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The route of every alert no other route takes."""

    name: Annotated[str, Meta(description="route name: the subject token of jarvis.notifications.<name>")] = (
        "default"
    )
    receiver: Annotated[str, Meta(description="Slack channel of this route")] = "#alerts"
    critical_first: Annotated[
        bool,
        Meta(
            description="a critical alert that starts or ends in a group already notified waits no "
            "longer than group_wait, not group_interval: it is sent within its for plus group_wait, "
            "whatever else already fires on its host; false: Alertmanager's timers"
        ),
    ] = True

    def __post_init__(self) -> None:
        _check_route_name(self.name)
        super().__post_init__()

    def as_route(self) -> Route:
        """This route as a Route with no matchers: it takes whatever reaches it."""
        if isinstance(self, Route):
            return self
        return Route(**msgspec.structs.asdict(self))


class Route(DefaultRoute, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where matching alerts go, and how they are consolidated (Alertmanager's route)."""

    name: Annotated[
        str,
        Meta(description="route name: the subject token of jarvis.notifications.<name>", examples=["ops"]),
    ]
    receiver: Annotated[str, Meta(description="Slack channel of this route", examples=["#ops-alerts"])]
    critical_first: Annotated[
        bool,
        Meta(description="as default_route's; off for your own routes unless you turn it on"),
    ] = False
    severity: Annotated[
        list[Severity], Meta(description="severities it takes; empty: all", examples=[["critical"]])
    ] = []
    matchers: Annotated[
        list[Matcher],
        Meta(
            description="label matchers, all must hold (rule and severity are labels too)",
            examples=[[{"name": "host", "op": "=~", "value": "db.*"}]],
        ),
    ] = []

    def __post_init__(self) -> None:
        _check_route_name(self.name)
        for severity in self.severity:
            if severity not in SEVERITIES:
                raise ValueError(f"route {self.name!r}: unknown severity {severity!r}")
        try:
            Consolidation.__post_init__(self)
        except ValueError as exc:
            raise ValueError(f"route {self.name!r}: {exc}") from None


class InhibitRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """While a source alert fires, target alerts with the same `equal` labels are not notified."""

    source_matchers: Annotated[
        list[Matcher],
        Meta(
            description="what the inhibiting alert matches",
            examples=[[{"name": "rule", "value": "agent_down"}]],
        ),
    ]
    target_matchers: Annotated[
        list[Matcher],
        Meta(
            description="what the inhibited alerts match",
            examples=[[{"name": "rule", "op": "!=", "value": "agent_down"}]],
        ),
    ]
    equal: Annotated[
        list[str], Meta(description="labels that must be equal in source and target", examples=[["host"]])
    ] = []

    def __post_init__(self) -> None:
        if not self.source_matchers:
            raise ValueError("an inhibit rule needs source_matchers")
        for label in self.equal:
            if not _LABEL.fullmatch(label):
                raise ValueError(f"inhibit rule: invalid label {label!r} in equal")


@functools.lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone; ValueError naming it when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin") from None


def parse_clock(text: str) -> tuple[int, int]:
    """(hour, minute) of "HH:MM"; ValueError with the expected form."""
    match = _CLOCK.fullmatch(text)
    if match is None:
        raise ValueError(f'invalid time {text!r}: write "HH:MM", 00:00 to 23:59')
    return int(match[1]), int(match[2])


class MaintenanceWindow(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A recurring time range that silences matching alerts; start and end are announced (info)."""

    name: Annotated[str, Meta(description="window name", examples=["nightly-backup"])]
    days: Annotated[
        list[Weekday], Meta(description="days of the week the window starts on", examples=[["sat", "sun"]])
    ] = msgspec.field(default_factory=lambda: list(WEEKDAYS))
    start: Annotated[str, Meta(description="local start time, HH:MM", examples=["22:00"])]
    end: Annotated[
        str, Meta(description="local end time, HH:MM; earlier than start: the next day", examples=["02:00"])
    ]
    timezone: Annotated[str, Meta(description="IANA time zone", examples=["Europe/Berlin"])] = "UTC"
    matchers: Annotated[
        list[Matcher],
        Meta(
            description="alerts it silences; empty: all",
            examples=[[{"name": "host", "value": "db01"}]],
        ),
    ] = []
    announce: Annotated[bool, Meta(description="send an info alert when the window starts and ends")] = True

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"maintenance window name {self.name!r} must be letters, digits, _, : or -")
        for day in self.days:
            if day not in WEEKDAYS:
                raise ValueError(
                    f"maintenance window {self.name!r}: unknown day {day!r}, use {', '.join(WEEKDAYS)}"
                )
        if parse_clock(self.start) == parse_clock(self.end):
            raise ValueError(f"maintenance window {self.name!r}: start and end are equal")
        zone(self.timezone)


class FlappingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Flap detection: a series firing again and again, or Nagios's weighted percent of changes."""

    enabled: Annotated[bool, Meta(description="detect flapping series")] = True
    episodes: Annotated[
        int, Meta(description="flapping when a series starts firing this many times within `within`")
    ] = 3
    within: Annotated[Duration, Meta(description="the window in which `episodes` firings make it flap")] = (
        Duration(600)
    )
    stable_for: Annotated[
        Duration,
        Meta(description="a flapping series is stable again after this long without a change"),
    ] = Duration(300)
    high: Annotated[float, Meta(description="also flapping above this percent of state changes (Nagios)")] = (
        30.0
    )
    low: Annotated[float, Meta(description="stable again only below this percent (Nagios)")] = 20.0

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high <= 100:
            raise ValueError("flapping: need 0 <= low < high <= 100")
        if not 2 <= self.episodes <= MAX_FLAP_EPISODES:
            raise ValueError(f"flapping: episodes must be 2 to {MAX_FLAP_EPISODES}")
        if self.within.seconds <= 0 or self.stable_for.seconds <= 0:
            raise ValueError("flapping: within and stable_for must be > 0s")


class EvaluatorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: Annotated[bool, Meta(description="run the evaluator in `up`")] = True
    default_rules: Annotated[
        bool,
        Meta(
            description="use the built-in rules from the runbook; `rules` add to them or replace one by name"
        ),
    ] = True
    rules: Annotated[
        list[Rule],
        Meta(
            description="alerting rules",
            examples=[
                [{"name": "disk_full", "metric": "disk.percent", "threshold": 95, "severity": "critical"}]
            ],
        ),
    ] = []
    routes: Annotated[
        list[Route],
        Meta(
            description="routes, first match wins; alerts no route takes go to default_route",
            examples=[[{"name": "critical", "receiver": "#oncall", "severity": ["critical"]}]],
        ),
    ] = []
    default_route: Annotated[DefaultRoute, Meta(description="route of the alerts no other route takes")] = (
        msgspec.field(default_factory=DefaultRoute)
    )
    default_inhibit_rules: Annotated[
        bool,
        Meta(
            description="an agent down inhibits the other alerts of its host; a service down "
            "inhibits its own latency and error-rate alerts"
        ),
    ] = True
    inhibit_rules: Annotated[list[InhibitRule], Meta(description="inhibition rules")] = []
    maintenance_windows: Annotated[
        list[MaintenanceWindow],
        Meta(
            description="recurring windows that silence matching alerts",
            examples=[
                [
                    {
                        "name": "backup",
                        "days": ["sun"],
                        "start": "23:00",
                        "end": "01:00",
                        "timezone": "Europe/Berlin",
                    }
                ]
            ],
        ),
    ] = []
    tune: Annotated[
        dict[str, RuleTuning],
        Meta(
            description="change a built-in rule by name, only the fields given (docs/rules.md lists "
            "them); e.g. [evaluator.tune.cpu_usage_high] threshold = 95",
            examples=[{"cpu_usage_high": {"threshold": 95, "for": "10m"}}],
        ),
    ] = {}
    max_clock_skew: Annotated[
        Duration,
        Meta(
            description="an event is judged by its own timestamp, but never earlier than this before "
            "the server stored it (nor later): heartbeats an agent buffered through an outage count"
        ),
    ] = Duration(60)
    watchdog: Annotated[
        WatchdogConfig,
        Meta(description="ping an external dead-man URL while the pipeline is healthy"),
    ] = msgspec.field(default_factory=WatchdogConfig)
    flapping: Annotated[FlappingConfig, Meta(description="flap detection")] = msgspec.field(
        default_factory=FlappingConfig
    )
    stale_after: Annotated[
        Duration,
        Meta(
            description="a pending or firing series not seen for this long (at least 3 of its "
            "intervals) resolves, so no alert stays firing for a series that is gone"
        ),
    ] = Duration(300)
    forget_agents_after: Annotated[
        Duration,
        Meta(description="an agent silent this long is forgotten: its agent-down alert resolves"),
    ] = Duration(7 * 86400)
    partitions: Annotated[
        int,
        Meta(
            description="split the hosts into this many partitions, each evaluated by whichever "
            "`jarvis-monitor evaluator` holds its lease: run several evaluators to share the work; "
            "every route must group by host, every inhibit rule keep host equal and no rule set "
            "the host label (2 to 64; 1: one evaluator evaluates everything)",
            ge=1,
            le=MAX_PARTITIONS,
        ),
    ] = 1

    def __post_init__(self) -> None:
        names = [rule.name for rule in self.rules]
        if "maintenance" in names:
            raise ValueError("rule name 'maintenance' is reserved for the maintenance window announcements")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate rule names: {', '.join(duplicates)}")
        if isinstance(self.default_route, Route) and (
            self.default_route.matchers or self.default_route.severity
        ):
            raise ValueError("default_route takes every remaining alert: no matchers or severity")
        route_names = [route.name for route in self.routes] + [self.default_route.name]
        duplicates = sorted({name for name in route_names if route_names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate route names: {', '.join(duplicates)}")
        if self.tune:
            from evaluator.rules import tuning_problems  # rules imports this module

            problems = tuning_problems(self)
            if problems:
                raise ValueError("; ".join(problems))
        if self.partitions > 1:
            problems = _cross_host(self)
            if problems:
                raise ValueError(
                    f"partitions = {self.partitions} evaluates each host on one partition, so no group or "
                    f"inhibition may span hosts: {'; '.join(problems)}"
                )
        windows = [window.name for window in self.maintenance_windows]
        duplicates = sorted({name for name in windows if windows.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate maintenance window names: {', '.join(duplicates)}")


def _cross_host(config: EvaluatorConfig) -> list[str]:
    """What would join alerts of several hosts: routes not grouping by host, inhibitions across hosts."""
    problems = [
        f"route {route.name!r} must have host in group_by"
        for route in [*config.routes, config.default_route]
        if "host" not in route.group_by
    ]
    problems += [
        f"inhibit_rules[{index}] must have host in equal"
        for index, rule in enumerate(config.inhibit_rules)
        if "host" not in rule.equal
    ]
    problems += [  # its alerts would be grouped apart from the partition evaluating its series
        f"rule {rule.name!r} must not set the host label" for rule in config.rules if "host" in rule.labels
    ]
    return problems


def ignore_for(config: EvaluatorConfig) -> EvaluatorConfig:
    """The same config with every rule's `for` at 0s (for `jarvis-monitor once`)."""
    from evaluator.rules import effective_rules  # rules imports this module

    rules = [msgspec.structs.replace(rule, for_=Duration(0)) for rule in effective_rules(config)]
    return msgspec.structs.replace(config, default_rules=False, rules=rules)
