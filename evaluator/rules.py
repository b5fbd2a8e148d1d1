"""Rules compiled for evaluation: matchers, conditions, templates; and the built-in defaults."""

from __future__ import annotations

import difflib
import string
from collections.abc import Callable, Mapping

from bus import vocabulary as vocab
from bus.records import regex_matches
from bus.units import Duration
from evaluator.config import (
    EvaluatorConfig,
    InhibitRule,
    Matcher,
    Rule,
    template_fields,
)

# A container's log check: warning while burst_errors error lines came within burst_window.
LOG_TARGETS = vocab.LOG_TARGET.format(name=".+")
# A container whose jarvis.* labels the probe's discovery refused: one target per container.
DISCOVERY_TARGETS = vocab.DISCOVERY_TARGET.format(container=".+")
# Database checks by name: "postgres", "db", "database-main", "postgres:5432" (not "feedback").
# an agent's own collection and a part's supervisor: health of the monitor, never a service
INTERNAL_TARGETS = f"{vocab.COLLECTOR_TARGET}|{vocab.SUPERVISOR_TARGET}"
AGENT_DOWN_RULE = "agent_down"  # the dead-man rule: the watchdog and inhibition name it
DATABASE_CHECK = vocab.DATABASE_NAME


def _m(name: str, op: str, value: str) -> Matcher:
    return Matcher(name=name, op=op, value=value)  # type: ignore[arg-type]


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        name="disk_usage_high",
        metric=vocab.DISK_PERCENT,
        threshold=85,
        clear_threshold=80,
        for_=Duration(300),
        severity="critical",
        summary="disk {mount} on {host} is {value:.0f}% full",
        description="Above 85% for 5 minutes; resolves below 80%. Free space or grow the volume.",
    ),
    Rule(
        name="memory_usage_high",
        metric=vocab.MEM_PERCENT,
        threshold=85,
        clear_threshold=80,
        for_=Duration(300),
        severity="warning",
        summary="memory on {host} is {value:.0f}% used",
        description="Above 85% for 5 minutes; resolves below 80%.",
    ),
    Rule(
        name="cpu_usage_high",
        metric=vocab.CPU_PERCENT,
        threshold=90,
        clear_threshold=85,
        for_=Duration(300),
        severity="warning",
        summary="CPU on {host} is {value:.0f}% busy",
        description="Above 90% for 5 minutes; resolves below 85%.",
    ),
    Rule(
        name="http_error_rate_high",
        metric=vocab.HTTP_ERROR_RATIO,
        threshold=0.05,
        clear_threshold=0.04,
        for_=Duration(300),
        keep_firing_for=Duration(60),
        severity="warning",
        summary="{check}: {value:.1%} of requests fail",
        description="More than 5% of requests answered 5xx for 5 minutes; resolves below 4% for a minute.",
    ),
    Rule(
        name="http_latency_p95_high",
        metric=vocab.HTTP_LATENCY_P95,
        threshold=2,
        clear_threshold=1.8,
        for_=Duration(300),
        keep_firing_for=Duration(60),
        severity="warning",
        summary="{check}: P95 latency {value:.2f}s",
        description="P95 latency above 2 s for 5 minutes; resolves below 1.8 s for a minute.",
    ),
    Rule(
        name="performance_degradation",
        metric=vocab.HTTP_LATENCY_P95,
        threshold=0.5,
        clear_threshold=0.45,
        for_=Duration(900),
        keep_firing_for=Duration(60),
        severity="info",
        summary="{check}: P95 latency {value:.2f}s, above its 500 ms baseline",
        description="P95 latency above its 500 ms baseline for 15 minutes; resolves below 450 ms.",
    ),
    Rule(
        name="tls_cert_expiring",
        metric=vocab.TLS_CERT_EXPIRY,
        op="<",
        threshold=14 * 86400,
        severity="warning",
        summary="{check}: TLS certificate expires on {expires}",
        description="The certificate this HTTPS check was served expires within 14 days; renew it.",
    ),
    Rule(
        name="tls_cert_expiry_critical",
        metric=vocab.TLS_CERT_EXPIRY,
        op="<",
        threshold=3 * 86400,
        severity="critical",
        summary="{check}: TLS certificate expires on {expires}, in less than 3 days",
        description="The certificate this HTTPS check was served expires within 3 days (or has expired, "
        "when the check does not verify it); renew it now.",
    ),
    Rule(
        name="check_labels_invalid",
        kind="health",
        matchers=[_m("agent", "=", vocab.PROBE_AGENT), _m("target", "=~", DISCOVERY_TARGETS)],
        status=["warning"],
        severity="warning",
        summary="{target} on {host}: its jarvis.* check labels are refused",
        description="{detail}",
    ),
    Rule(
        name="container_unhealthy",
        kind="health",
        matchers=[
            _m("agent", "=", vocab.CONTAINER_AGENT),
            _m("target", "!~", f"{INTERNAL_TARGETS}|{vocab.DOCKER_TARGET}"),
        ],
        status=["critical"],
        for_=Duration(60),
        severity="warning",
        summary="container {target} on {host}: {detail}",
        description="Unhealthy, restarting, dead, killed for lack of memory or exited with an error.",
    ),
    Rule(
        name="container_log_errors",
        kind="health",
        matchers=[_m("agent", "=", vocab.CONTAINER_AGENT), _m("target", "=~", LOG_TARGETS)],
        status=["warning"],
        for_=Duration(120),
        severity="warning",
        summary="{container} on {host} keeps logging errors",
        description="{detail}",
    ),
    Rule(
        name="docker_unreachable",
        kind="health",
        matchers=[_m("agent", "=", vocab.CONTAINER_AGENT), _m("target", "=", vocab.DOCKER_TARGET)],
        status=["critical"],
        for_=Duration(60),
        severity="critical",
        summary="Docker engine on {host} unreachable",
        description="{detail}",
    ),
    Rule(
        name="service_down",
        kind="health",
        matchers=[
            _m("agent", "=", vocab.PROBE_AGENT),
            _m("target", "!~", INTERNAL_TARGETS),
            _m("target", "!~", DATABASE_CHECK),
        ],
        status=["critical"],
        for_=Duration(60),
        severity="critical",
        summary="{target} is down",
        description="{detail}",
        labels={"check": "{target}"},
    ),
    Rule(
        name="database_unreachable",
        kind="health",
        # the probe's TCP check of a database, or the database agent's login and SELECT 1
        matchers=[
            _m("agent", "=~", f"{vocab.PROBE_AGENT}|{vocab.POSTGRES_AGENT}"),
            _m("target", "=~", DATABASE_CHECK),
        ],
        status=["critical"],
        for_=Duration(60),
        severity="critical",
        summary="database unreachable: {target}",
        description="{detail}",
        labels={"check": "{target}"},
    ),
    Rule(
        name="postgres_connections_high",
        metric=vocab.POSTGRES_CONNECTIONS_PERCENT,
        threshold=80,
        clear_threshold=75,
        for_=Duration(300),
        severity="warning",
        summary="{server} on {host}: {value:.0f}% of max_connections in use",
        description="Above 80% of max_connections for 5 minutes; resolves below 75%. New clients are "
        "refused once it is full: look for leaked or idle sessions, or raise max_connections.",
    ),
    Rule(
        name="postgres_connections_critical",
        metric=vocab.POSTGRES_CONNECTIONS_PERCENT,
        threshold=95,
        clear_threshold=90,
        for_=Duration(60),
        severity="critical",
        summary="{server} on {host}: {value:.0f}% of max_connections in use, nearly full",
        description="Above 95% of max_connections for a minute; resolves below 90%.",
    ),
    Rule(
        name="postgres_long_query",
        metric=vocab.POSTGRES_OLDEST_QUERY,
        threshold=300,
        clear_threshold=240,
        severity="warning",
        summary="{server} on {host}: a query has been running for {value:.0f}s",
        description="A query running longer than 5 minutes; pg_stat_activity shows which one.",
    ),
    Rule(
        name="postgres_lock_wait",
        metric=vocab.POSTGRES_LOCKS_OLDEST_WAIT,
        threshold=60,
        severity="warning",
        summary="{server} on {host}: a session has waited {value:.0f}s for a lock",
        description="A session waiting on a lock for more than a minute: pg_blocking_pids() names the "
        "holder, whose transaction must end.",
    ),
    Rule(
        name=AGENT_DOWN_RULE,
        kind="heartbeat",
        op=">=",
        threshold=3,
        severity="critical",
        summary="{agent} agent on {host} is silent",
        description="No heartbeat for {value:.1f} intervals (3 make it down).",
    ),
    Rule(
        name="part_failed",
        kind="health",
        matchers=[_m("target", "=", vocab.SUPERVISOR_TARGET)],
        status=["critical"],
        severity="critical",
        summary="{agent} on {host} failed and is being restarted",
        description="{detail}",
    ),
    Rule(
        name="container_deployed",
        kind="health",
        matchers=[_m("agent", "=", vocab.CONTAINER_AGENT)],
        status=[],
        events=["deployed"],
        keep_firing_for=Duration(600),
        severity="info",
        summary="{target} on {host} deployed with image {image}",
        send_resolved=False,
    ),
)

DEFAULT_INHIBIT_RULES: tuple[InhibitRule, ...] = (
    InhibitRule(  # an agent down: what it last reported is stale
        source_matchers=[
            _m("rule", "=", AGENT_DOWN_RULE),
            # the pipeline's own parts beat under the monitoring host's name, as the probe's checks
            # do: a report sink down says nothing of the services probed from there
            _m("agent", "!~", "|".join((*vocab.PARTS, vocab.CONSOLE_PART))),
        ],
        target_matchers=[_m("rule", "!=", AGENT_DOWN_RULE)],
        # the host's other agents still report: a disk filling or a service down stays loud
        equal=["host", "agent"],
    ),
    InhibitRule(
        source_matchers=[_m("rule", "=~", "service_down|database_unreachable")],
        target_matchers=[
            _m("rule", "=~", "http_error_rate_high|http_latency_p95_high|performance_degradation")
        ],
        equal=["host", "check"],
    ),
    InhibitRule(
        source_matchers=[_m("rule", "=", "tls_cert_expiry_critical")],
        target_matchers=[_m("rule", "=", "tls_cert_expiring")],
        equal=["host", "check"],
    ),
    InhibitRule(
        source_matchers=[_m("rule", "=", "postgres_connections_critical")],
        target_matchers=[_m("rule", "=", "postgres_connections_high")],
        equal=["host", "server"],
    ),
)


def effective_rules(config: EvaluatorConfig) -> list[Rule]:
    """The defaults (if on) tuned or replaced by name, then the user's new rules."""
    user = {rule.name: rule for rule in config.rules}
    rules = []
    for rule in DEFAULT_RULES if config.default_rules else ():
        tuning = config.tune.get(rule.name)
        if tuning is not None and tuning.enabled is False:
            continue
        replaced = user.pop(rule.name, None)
        if replaced is not None:
            rules.append(replaced)
        else:
            rules.append(tuning.apply(rule) if tuning is not None else rule)
    return rules + list(user.values())


def tuning_problems(config: EvaluatorConfig) -> list[str]:
    """What is wrong with `tune`: a name that is no built-in rule, or a change the rule cannot take."""
    builtins = {rule.name: rule for rule in DEFAULT_RULES}
    problems = []
    for name, tuning in config.tune.items():
        rule = builtins.get(name)
        if rule is None:
            near = difflib.get_close_matches(name, builtins, n=3)
            hint = f"did you mean {', '.join(near)}?" if near else f"built-in rules: {', '.join(builtins)}"
            problems.append(f"tune.{name}: no built-in rule of that name ({hint})")
            continue
        try:
            tuning.apply(rule)
        except (ValueError, TypeError) as exc:
            problems.append(f"tune.{name}: {exc}")
    return problems


def effective_inhibit_rules(config: EvaluatorConfig) -> list[InhibitRule]:
    defaults = list(DEFAULT_INHIBIT_RULES) if config.default_inhibit_rules else []
    return defaults + list(config.inhibit_rules)


class TemplateError(Exception):
    """A template could not be rendered; `missing` names an absent label, if that was why."""

    def __init__(self, reason: str, missing: str | None = None) -> None:
        super().__init__(reason)
        self.missing = missing


class Template:
    """A str.format template restricted to plain names (validated by the config)."""

    __slots__ = ("_parts", "text")

    def __init__(self, text: str, what: str) -> None:
        template_fields(text, what)
        self.text = text
        self._parts = list(string.Formatter().parse(text))

    def render(self, context: Mapping[str, object]) -> str:
        out = []
        for literal, field, spec, conversion in self._parts:
            out.append(literal)
            if field is None:
                continue
            if field not in context:
                raise TemplateError(f"missing label {field!r}", missing=field)
            value = context[field]
            if conversion == "r":
                value = repr(value)
            elif conversion == "s":
                value = str(value)
            try:
                out.append(format(value, spec or ""))
            except (TypeError, ValueError) as exc:
                raise TemplateError(f"cannot format {field!r} ({value!r}) as {spec!r}: {exc}") from None
        return "".join(out)


def comparator(op: str, threshold: float) -> Callable[[float], bool]:
    """`value op threshold` as one fast bound method (threshold.__lt__ for >, etc.)."""
    t = float(threshold)
    methods = {">": t.__lt__, ">=": t.__le__, "<": t.__gt__, "<=": t.__ge__, "==": t.__eq__, "!=": t.__ne__}
    return methods[op]


# How a compiled matcher reads its label: from the host, the agent, or the labels mapping.
_HOST, _AGENT, _LABELS = 0, 1, 2


class CompiledRule:
    """A rule ready for the hot path: matchers, condition and templates prepared once."""

    __slots__ = (
        "description",
        "events",
        "for_seconds",
        "keep_firing_seconds",
        "kind",
        "label_templates",
        "matchers",
        "metric",
        "name",
        "rule",
        "severity",
        "statuses",
        "still_holds",
        "summary",
        "test",
        "threshold",
    )

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.name = rule.name
        self.kind = rule.kind
        self.metric = rule.metric
        self.severity = rule.severity
        self.threshold = rule.threshold
        self.for_seconds = rule.for_.seconds
        self.keep_firing_seconds = rule.keep_firing_for.seconds
        self.test = comparator(rule.op, rule.threshold) if rule.threshold is not None else None
        self.still_holds = None
        if rule.clear_threshold is not None:  # hysteresis: hold until past the clear threshold
            self.still_holds = comparator(">=" if rule.op in (">", ">=") else "<=", rule.clear_threshold)
        self.statuses = frozenset(rule.status) if rule.status else None
        self.events = frozenset(rule.events) if rule.events else None
        self.matchers = [
            (
                {"host": _HOST, "agent": _AGENT}.get(m.name, _LABELS),
                m.name,
                m.op,
                m.value,
                m.op in ("=~", "!~"),  # a regex (the Matcher checked it)
            )
            for m in rule.matchers
        ]
        self.summary = Template(rule.summary or _generic_summary(rule), "summary")
        self.description = Template(rule.description, "description")
        self.label_templates = [(key, Template(value, f"label {key}")) for key, value in rule.labels.items()]

    def matches(self, host: str, agent: str, labels: Mapping[str, str]) -> bool:
        for where, name, op, value, regex in self.matchers:
            actual = host if where == _HOST else agent if where == _AGENT else labels.get(name, "")
            if not regex:
                if (actual == value) != (op == "="):
                    return False
            elif regex_matches(value, actual) != (op == "=~"):
                return False
        return True


def _generic_summary(rule: Rule) -> str:
    if rule.kind == "metrics":
        return f"{{rule}} on {{host}}: {rule.metric} is {{value}} ({rule.op} {{threshold}})"
    if rule.kind == "health":
        return "{rule}: {target} on {host} is {status}"
    return "{rule}: {agent} agent on {host} silent for {value:.1f} intervals"
