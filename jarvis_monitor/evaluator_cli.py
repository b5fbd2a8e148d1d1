"""The evaluator's subcommands: evaluator, once, alerts, silence add|list|expire, ack."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import getpass
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import nats.errors

from agents.runner import Check, Collection
from bus import vocabulary as vocab
from bus.connection import Bus, BusConfigError, BusUnavailableError, connect
from bus.events import HealthEvent, MetricBatch, Status
from bus.records import MAX_COMMENT, too_broad, too_costly
from bus.redact import redact_text
from bus.units import Duration
from bus.vocabulary import COLLECTOR_TARGET
from evaluator.config import EvaluatorConfig, ignore_for
from evaluator.engine import ActiveAlert, Engine
from evaluator.partitions import evaluator_service
from evaluator.silences import Silence, parse_matcher
from evaluator.store import (
    AckRecord,
    ActiveAlerts,
    SilenceStore,
    StateStore,
    StoreError,
    new_silence_id,
    open_buckets,
    valid_key_token,
)
from jarvis_monitor import stack
from jarvis_monitor.commands import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, error, run_async
from jarvis_monitor.tail import clean

if TYPE_CHECKING:
    from evaluator.config import Matcher
    from jarvis_monitor.commands import Subparsers
    from jarvis_monitor.config import Config

log = logging.getLogger(__name__)

# `alerts` warns when the evaluator has not refreshed the list for this long.
STALE_AFTER = 120.0


def register(commands: Subparsers) -> None:
    """Add this part's subcommands to `commands`."""
    evaluator = commands.add_parser("evaluator", help="run the evaluator against the configured NATS")
    evaluator.set_defaults(handler=cmd_evaluator)

    once_parser = commands.add_parser(
        "once",
        help="collect and evaluate once without NATS, print checks and alerts, exit 0/1/2/3 "
        "(ok/warning/critical/unknown) as a Nagios plugin",
    )
    once_parser.set_defaults(handler=cmd_once)

    alerts = commands.add_parser(
        "alerts", help="list active alerts: firing, pending, silenced, inhibited, acked"
    )
    alerts.add_argument("--json", action="store_true", help="print the list as JSON")
    alerts.set_defaults(handler=cmd_alerts)

    silence = commands.add_parser("silence", help="add, list or expire silences")
    actions = silence.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="silence the alerts matching every MATCHER; prints the new id")
    add.add_argument(
        "matchers", nargs="+", metavar="MATCHER", help="host=web01, rule=~disk.*, severity!=info"
    )
    until = add.add_mutually_exclusive_group(required=True)
    until.add_argument("--for", dest="duration", metavar="DURATION", help="how long, e.g. 2h or 30m")
    until.add_argument("--until", metavar="TIME", help="ISO time it ends, e.g. 2026-11-27T08:00 (local)")
    add.add_argument("--start", metavar="TIME", help="ISO time it starts (default: now)")
    add.add_argument("--comment", required=True, help="why; shown with the silence")
    add.add_argument("--author", default=None, help="who (default: $USER)")
    add.set_defaults(handler=cmd_silence_add)
    listing = actions.add_parser("list", help="list active and pending silences")
    listing.add_argument("--all", action="store_true", help="include expired silences")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(handler=cmd_silence_list)
    expire = actions.add_parser("expire", help="end a silence now")
    expire.add_argument("id", help="the silence's id (see silence list)")
    expire.set_defaults(handler=cmd_silence_expire)

    ack = commands.add_parser("ack", help="acknowledge an alert: no reminders until it resolves")
    ack.add_argument("fingerprint", help="the alert's fingerprint (or a unique prefix; see alerts)")
    ack.add_argument("--author", default=None, help="who (default: $USER)")
    ack.set_defaults(handler=cmd_ack)


# --- evaluator ----------------------------------------------------------------------------------


async def run_evaluator(config: Config) -> None:
    """The evaluator alone against the configured NATS (waiting for it), until SIGTERM or SIGINT."""
    shutdown = stack.Shutdown()
    try:
        async with stack.open_bus(config, "jarvis-monitor evaluator", embedded=False) as (bus, _):
            service = evaluator_service(config.evaluator, bus)
            shutdown.started(service.stop)
            await service.run()
    except asyncio.CancelledError:
        if not shutdown.requested.is_set():
            raise
        log.info("stopped during start-up")


def cmd_evaluator(args: argparse.Namespace, config: Config) -> int:
    return run_async(run_evaluator(config))


# --- once ---------------------------------------------------------------------------------------

EXIT_CODES: dict[Status, int] = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}
# Which state wins when several are combined (Icinga's order): critical, unknown, warning, ok.
BADNESS: dict[Status, int] = {"ok": 0, "warning": 1, "unknown": 2, "critical": 3}
HEADLINE_METRICS = (vocab.CPU_PERCENT, vocab.MEM_PERCENT, vocab.DISK_PERCENT)
SEVERITY_STATUS: dict[str, Status] = {"critical": "critical", "warning": "warning", "info": "ok"}


@dataclass(frozen=True)
class OnceResult:
    """What `once` found: every check, every firing alert, and the Nagios state of it all."""

    checks: list[HealthEvent]
    alerts: list[ActiveAlert]
    metrics: list[MetricBatch]

    @property
    def status(self) -> Status:
        states: list[Status] = [check.status for check in self.checks]
        states += [SEVERITY_STATUS.get(alert.severity, "unknown") for alert in self.alerts]
        return max(states, key=BADNESS.__getitem__, default="ok")

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


async def _collect(name: str, config: Config) -> Collection:
    agent_config = getattr(config.agents, name)
    timeout = (agent_config.timeout or agent_config.interval).seconds
    collector = stack.make_collector(name, config)
    try:
        return await asyncio.wait_for(collector.collect(), timeout)
    finally:
        close = getattr(collector, "close", None)
        if close is not None:
            await close()


async def collect_once(config: Config, now: float) -> list[MetricBatch | HealthEvent]:
    """One collection of every enabled agent, as the events its runner would publish.

    A collection that fails or overruns becomes an unknown check of that agent, not a crash.
    """
    host = config.agents.resolved_hostname()
    names = stack.enabled_agents(config)  # the database agent only with a server to watch
    outcomes = await asyncio.gather(*(_collect(name, config) for name in names), return_exceptions=True)
    events: list[MetricBatch | HealthEvent] = []
    for name, outcome in zip(names, outcomes, strict=True):
        interval = getattr(config.agents, name).interval.seconds
        if isinstance(outcome, BaseException):
            reason = "timed out" if isinstance(outcome, TimeoutError) else redact_text(repr(outcome))
            failed = Check(COLLECTOR_TARGET, "unknown", detail=f"collection failed: {reason}")
            events.append(failed.to_event(host, name, now))
            continue
        # the collection itself, so the table shows every agent that ran (rules skip this target)
        summary = f"collected {len(outcome.samples)} samples, {len(outcome.checks)} checks"
        events.append(Check(COLLECTOR_TARGET, "ok", detail=summary).to_event(host, name, now))
        if outcome.samples:
            events.append(
                MetricBatch(host=host, agent=name, ts=now, interval=interval, samples=outcome.samples)
            )
        events += [check.to_event(host, name, now) for check in outcome.checks]
    return events


def evaluate_once(
    config: EvaluatorConfig, events: Sequence[MetricBatch | HealthEvent], now: float
) -> OnceResult:
    """Evaluate one collection with every rule's `for` ignored: what is breached now fires now."""
    engine = Engine(ignore_for(config), now)
    for event in events:
        engine.observe(event, now)
    engine.tick(now)
    alerts = [a for a in engine.active(now) if a.state == "firing"]
    checks = [e for e in events if isinstance(e, HealthEvent)]
    metrics = [e for e in events if isinstance(e, MetricBatch)]
    return OnceResult(checks=checks, alerts=alerts, metrics=metrics)


async def run_once(config: Config) -> OnceResult:
    now = time.time()
    return evaluate_once(config.evaluator, await collect_once(config, now), now)


def headline_perfdata(batches: Sequence[MetricBatch]) -> list[str]:
    """Nagios performance data of the headline percentages: cpu=12.5% mem=40.2% 'disk_/'=71%."""
    out = []
    for batch in batches:
        for sample in batch.samples:
            if sample.name not in HEADLINE_METRICS:
                continue
            label = sample.name.split(".")[0]
            if "mount" in sample.labels:
                label = f"{label}_{sample.labels['mount']}"
            label = clean(label, 40).replace("'", "_").replace("=", "_")
            out.append(
                f"'{label}'={sample.value:g}%"
                if " " in label or "/" in label
                else f"{label}={sample.value:g}%"
            )
    return out


def render_once(result: OnceResult) -> str:
    """A Nagios status line with performance data, then the checks and the alerts."""
    counts = {s: sum(1 for a in result.alerts if a.severity == s) for s in ("critical", "warning", "info")}
    failing = {s: sum(1 for c in result.checks if c.status == s) for s in ("critical", "warning", "unknown")}
    problems = [f"{n} {s}" for s, n in counts.items() if n and s != "info"]
    summary = ", ".join(problems) or "no alerts"
    perf = " ".join(
        [
            *(f"alerts_{s}={n}" for s, n in counts.items()),
            *(f"checks_{s}={n}" for s, n in failing.items()),
            *headline_perfdata(result.metrics),
        ]
    )
    lines = [f"JARVIS {result.status.upper()} - {summary}; {len(result.checks)} checks | {perf}\n"]
    if result.checks:
        rows = [
            [
                c.agent,
                clean(c.target, 40),
                c.status,
                "" if c.latency is None else f"{c.latency * 1000:.0f}ms",
                clean(c.detail, 80),
            ]
            for c in sorted(result.checks, key=lambda c: (-BADNESS[c.status], c.agent, c.target))
        ]
        lines += ["\n", table(["AGENT", "CHECK", "STATUS", "LATENCY", "DETAIL"], rows)]
    if result.alerts:
        rows = [
            [
                a.severity,
                clean(a.rule, 30),
                clean(a.labels.get("host", ""), 30),
                "" if a.value is None else f"{a.value:g}",
                clean(a.summary, 80),
            ]
            for a in sorted(result.alerts, key=lambda a: (a.severity != "critical", a.severity, a.rule))
        ]
        lines += ["\n", table(["SEVERITY", "ALERT", "HOST", "VALUE", "SUMMARY"], rows)]
    return "".join(lines)


def cmd_once(args: argparse.Namespace, config: Config) -> int:
    try:
        result = asyncio.run(run_once(config))
    except KeyboardInterrupt:
        return EXIT_CODES["unknown"]
    sys.stdout.write(render_once(result))
    return result.exit_code


# --- KV-backed commands -------------------------------------------------------------------------


# How nats-server words a refusal (nats-py lowers its case); it arrives as an asynchronous error,
# while the refused request only times out.
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"', re.IGNORECASE)


def not_permitted(bus: Bus, user: str | None) -> str | None:
    """The server's last refusal of this connection as one line for a person, or None."""
    found = _VIOLATION.search(str(bus.nc.last_error or ""))
    if found is None:
        return None
    kind, subject = found[1].lower(), clean(found[2], 120)
    who = f"NATS user {clean(user)!r}" if user else "this NATS user"
    if kind == "subscription":
        return (
            f"not permitted: {who} may not receive replies on {subject!r}; set bus.inbox_prefix to "
            "the inbox its user may read (deploy/nats-server.conf names one per user)"
        )
    need = (
        "changing silences and acks needs the operator's user"
        if subject.lower().startswith("$kv.")
        else "reading alerts and silences needs the viewer's or the operator's user"
    )
    return f"not permitted: {who} may not publish to {subject!r}; {need} (docs/operations.md)"


@contextlib.asynccontextmanager
async def _stores(config: Config, name: str) -> AsyncIterator[tuple[StateStore, SilenceStore]]:
    bus = await connect(config.bus, f"jarvis-monitor {name}")
    try:
        yield await open_buckets(bus.nc.jetstream(), bus.subjects.prefix)
    except (TimeoutError, nats.errors.Error) as exc:
        # a refused request is only a timeout here: the refusal itself says what went wrong
        refusal = not_permitted(bus, config.bus.user or os.environ.get("JARVIS_NATS_USER"))
        if refusal is not None:
            raise BusConfigError(refusal) from None
        raise BusUnavailableError(
            f"JetStream did not answer ({type(exc).__name__}); whether a change was stored, "
            "`jarvis-monitor silence list` or `alerts` tells once it does"
        ) from None
    finally:
        await bus.close()


def _author(given: str | None) -> str:
    if given:
        return given
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "unknown"


def _parse_time(text: str, option: str) -> float:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not an ISO time such as 2026-11-27T08:00") from None
    return moment.timestamp()  # a naive time is local, as the user typed it


def build_silence(args: argparse.Namespace, now: float) -> Silence:
    """The silence `silence add` asked for; ValueError with one clear line for bad input."""
    matchers = [parse_matcher(text) for text in args.matchers]
    if (costly := too_costly(matchers)) is not None:
        raise ValueError(f"matchers: {costly}")
    if (broad := too_broad(matchers)) is not None:
        raise ValueError(f"matchers: {broad}; name a host, a rule or another label with a value")
    starts_at = _parse_time(args.start, "--start") if args.start else now
    if args.duration is not None:
        try:
            length = Duration.parse(args.duration).seconds
        except ValueError as exc:
            raise ValueError(f"--for: {exc}") from None
        if length <= 0:
            raise ValueError("--for: must be longer than 0s")
        ends_at = starts_at + length
    else:
        ends_at = _parse_time(args.until, "--until")
    if ends_at <= max(starts_at, now):
        raise ValueError("the silence would end before it starts or in the past")
    comment = args.comment.strip()
    if not comment:
        raise ValueError("--comment: say why (it is shown with the silence)")
    if len(comment) > MAX_COMMENT:
        raise ValueError(f"--comment: at most {MAX_COMMENT} characters (it is kept with the state)")
    return Silence(
        id=new_silence_id(),
        matchers=matchers,
        starts_at=starts_at,
        ends_at=ends_at,
        author=_author(args.author),
        comment=comment,
    )


def cmd_silence_add(args: argparse.Namespace, config: Config) -> int:
    try:
        silence = build_silence(args, time.time())
    except ValueError as exc:
        error(str(exc))
        return EXIT_CONFIG

    async def add() -> None:
        async with _stores(config, "silence") as (_, silences):
            await silences.add(silence)
        print(silence.id)

    return run_async(add())


def silence_state(silence: Silence, now: float) -> str:
    if silence.ends_at <= now:
        return "expired"
    return "active" if silence.starts_at <= now else "pending"


def format_matcher(matcher: Matcher) -> str:
    return f"{matcher.name}{matcher.op}{matcher.value}"


def _when(ts: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
    except (OverflowError, OSError, ValueError):
        return "?"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns; every cell is made printable by the caller."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines) + "\n"


def render_silences(silences: Sequence[Silence], now: float) -> str:
    rows = [
        [
            s.id,
            silence_state(s, now),
            clean(" ".join(format_matcher(m) for m in s.matchers), 60),
            _when(s.starts_at),
            _when(s.ends_at),
            clean(s.author, 20),
            clean(s.comment, 60),
        ]
        for s in silences
    ]
    return table(["ID", "STATE", "MATCHERS", "STARTS", "ENDS", "AUTHOR", "COMMENT"], rows)


def cmd_silence_list(args: argparse.Namespace, config: Config) -> int:
    async def listing() -> None:
        async with _stores(config, "silence") as (_, store):
            silences = await store.silences()
        now = time.time()
        shown = [s for s in silences if args.all or silence_state(s, now) != "expired"]
        if args.json:
            print(msgspec.json.encode(shown).decode())
        elif not shown:
            print("no silences" if args.all else "no active or pending silences")
        else:
            sys.stdout.write(render_silences(shown, now))

    return run_async(listing())


def cmd_silence_expire(args: argparse.Namespace, config: Config) -> int:
    async def expire() -> int:
        async with _stores(config, "silence") as (_, store):
            try:
                silence = await store.expire(args.id, time.time())
            except KeyError:
                error(f"no silence with id {clean(args.id)!r} (see jarvis-monitor silence list --all)")
                return EXIT_FAILURE
        print(f"expired {silence.id}")
        return EXIT_OK

    return run_async(expire())


# --- alerts and ack -----------------------------------------------------------------------------


def alert_state(alert: ActiveAlert) -> str:
    """`firing`, `pending`, plus what quiets it: silenced, inhibited, acked, flapping."""
    flags = [
        name
        for name, on in (
            ("silenced", alert.silenced_by),
            ("inhibited", alert.inhibited_by),
            ("acked", alert.acked),
            ("flapping", alert.flapping),
        )
        if on
    ]
    return ",".join([alert.state, *flags])


def render_alerts(active: ActiveAlerts) -> str:
    rows = [
        [
            alert_state(a),
            a.severity,
            clean(a.rule, 30),
            clean(a.labels.get("host", ""), 30),
            _when(a.since),
            "" if a.value is None else f"{a.value:g}",
            a.fingerprint,
            clean(a.summary, 70),
        ]
        for a in sorted(active.alerts, key=lambda a: (a.state != "firing", a.severity, a.since))
    ]
    header = ["STATE", "SEVERITY", "RULE", "HOST", "SINCE", "VALUE", "FINGERPRINT", "SUMMARY"]
    return table(header, rows)


async def _load_active(state: StateStore) -> ActiveAlerts | None:
    try:
        return await state.load_active()
    except StoreError as exc:
        error(f"the active alerts in KV are unreadable: {exc}")
        return None


def cmd_alerts(args: argparse.Namespace, config: Config) -> int:
    async def alerts() -> int:
        async with _stores(config, "alerts") as (state, _):
            active = await _load_active(state)
        if active is None:
            print("no active alerts known: the evaluator has not run against this NATS yet")
            return EXIT_OK
        if args.json:
            print(msgspec.json.encode(active).decode())
        elif not active.alerts:
            print("no active alerts")
        else:
            sys.stdout.write(render_alerts(active))
        age = time.time() - active.ts
        if age > STALE_AFTER:
            print(f"note: this list is {age:.0f}s old; is the evaluator running?", file=sys.stderr)
        return EXIT_OK

    return run_async(alerts())


def find_alert(alerts: Sequence[ActiveAlert], fingerprint: str) -> ActiveAlert | str:
    """The alert with this fingerprint or unique prefix, else why not."""
    exact = [a for a in alerts if a.fingerprint == fingerprint]
    if exact:
        return exact[0]
    matches = [a for a in alerts if a.fingerprint.startswith(fingerprint)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        return f"{len(matches)} active alerts start with {fingerprint!r}; give more of the fingerprint"
    return f"no active alert with fingerprint {fingerprint!r} (see jarvis-monitor alerts)"


def cmd_ack(args: argparse.Namespace, config: Config) -> int:
    fingerprint = args.fingerprint.strip()
    if not valid_key_token(fingerprint):
        error(f"{clean(fingerprint)!r} is not a fingerprint (letters, digits, '-' and '_')")
        return EXIT_CONFIG

    async def ack() -> int:
        async with _stores(config, "ack") as (state, silences):
            active = await _load_active(state)
            found = find_alert(active.alerts if active else [], fingerprint)
            if isinstance(found, str):
                error(found)
                return EXIT_FAILURE
            await silences.ack(
                AckRecord(fingerprint=found.fingerprint, author=_author(args.author), at=time.time())
            )
        print(f"acked {found.fingerprint} ({clean(found.rule)} on {clean(found.labels.get('host', '?'))})")
        return EXIT_OK

    return run_async(ack())
