"""jarvis-monitor side by side with Prometheus + Alertmanager on one scripted service (issue 9).

`python -m tests.bench versus [--quick] [--seed=N] [--keep] [--unaligned]` (about 15 minutes,
12 with --quick). Both sides sample the service at the same instants (jarvis's probe `phase` is
set to where Prometheus's scrapes fall), so the table compares the pipelines, not where two
independent 5 s grids happen to fall against an incident; --unaligned leaves the grids apart.
Needs Debian's prometheus, prometheus-alertmanager and prometheus-blackbox-exporter;
it installs nothing and exits non-zero naming what is missing. Progress goes to stderr, the
Markdown report to stdout. Every process it starts is stopped at the end, on Ctrl-C or SIGTERM too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from nats.aio.msg import Msg

from bus.config import BusConfig
from bus.connection import Bus, connect
from bus.events import Alert, EventDecodeError, HealthEvent, MetricBatch, Notification, any_event
from jarvis_monitor import __version__
from tests.bench import versus_measure as measure
from tests.bench import versus_stack as stack
from tests.bench.scripted_exporter import (
    HEALTHY_ERROR_RATIO,
    HEALTHY_LATENCY,
    REQUESTS_PER_SECOND,
    SLOW_LATENCY,
    Script,
    ScriptedExporter,
    script,
)

READY_TIMEOUT = 120.0
PROMETHEUS_READY = {  # query: what it means when it has no result yet
    'up{job="app"} == 1': "Prometheus has not scraped /metrics",
    'probe_success{job="blackbox"} == 1': "the blackbox exporter's probe of /health has not succeeded",
    "sum(rate(jarvis_requests_total[1m])) > 0": "Prometheus has no request rate yet",
}


@dataclass(frozen=True)
class Options:
    quick: bool
    seed: int
    keep: bool
    unaligned: bool = False


def options(argv: Sequence[str]) -> Options:
    """The bench's own flags; anything else (the part names of `python -m tests.bench`) is left alone."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench versus", add_help=False)
    parser.add_argument(
        "--quick", action="store_true", help="shorter healthy gaps, errors and latency phases"
    )
    parser.add_argument("--seed", type=int, default=9, help="seed of the simulated traffic")
    parser.add_argument("--keep", action="store_true", help="keep the configs, data and logs in the temp dir")
    parser.add_argument(
        "--unaligned", action="store_true", help="start jarvis's probe on its own grid, not on Prometheus's"
    )
    known, _ = parser.parse_known_args(list(argv))
    return Options(known.quick, known.seed, known.keep, known.unaligned)


def progress(text: str) -> None:
    print(f"versus: {text}", file=sys.stderr, flush=True)


class Watch:
    """What the bench reads off the jarvis bus: notifications, and whether the probe is seen working."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.notifications: list[tuple[float, Notification]] = []
        self.alerts: list[tuple[float, Alert]] = []  # state changes, to tell a late fire from a late message
        self.rejected = 0
        self.probe_ok = False  # the health check answered ok
        self.rates = False  # a metric batch with the scraped request rate

    async def on_message(self, msg: Msg) -> None:
        try:
            event = any_event.decode(msg.data, msg.subject)
        except EventDecodeError:
            self.rejected += 1
            return
        if isinstance(event, Notification):
            self.notifications.append((self.clock(), event))
        elif isinstance(event, Alert):
            self.alerts.append((self.clock(), event))
        elif isinstance(event, HealthEvent) and event.target == stack.CHECK and event.status == "ok":
            self.probe_ok = True
        elif isinstance(event, MetricBatch) and any(
            s.name == "http.requests_per_second" for s in event.samples
        ):
            self.rates = True


def alive_or_fail(children: Sequence[stack.Child]) -> None:
    for child in children:
        if not child.alive:
            raise stack.SetupError(child.failure())


async def until(
    what: Callable[[], Awaitable[str | None]], children: Sequence[stack.Child], timeout: float = READY_TIMEOUT
) -> None:
    """Poll `what` (None when ready, else what is missing) until ready; SetupError on timeout or a death."""
    deadline = time.monotonic() + timeout
    missing: str | None = "not checked yet"
    while time.monotonic() < deadline:
        alive_or_fail(children)
        missing = await what()
        if missing is None:
            return
        await asyncio.sleep(0.5)
    raise stack.SetupError(f"not ready after {timeout:.0f}s: {missing}")


async def prometheus_phase(
    exporter: ScriptedExporter, children: Sequence[stack.Child], interval: float
) -> float:
    """Where in each interval of the wall clock Prometheus scrapes `/metrics` (seen twice)."""

    async def scraped_twice() -> str | None:
        return None if len(exporter.prometheus_scrapes) >= 2 else "Prometheus has not scraped /metrics twice"

    await until(scraped_twice, children)
    phase = exporter.prometheus_scrapes[-1] % interval
    progress(f"Prometheus scrapes at {phase:.3f} s into each {interval:g} s; so will jarvis's probe")
    return phase


async def connect_bus(port: int, children: Sequence[stack.Child]) -> Bus:
    """The embedded nats-server of `jarvis-monitor up`, once it listens."""
    attempt = asyncio.create_task(
        connect(BusConfig(), "versus-bench", servers=[f"nats://127.0.0.1:{port}"], wait=True, environ={})
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not attempt.done():
            if time.monotonic() > deadline:
                raise stack.SetupError(f"jarvis-monitor's embedded nats-server on port {port} never answered")
            alive_or_fail(children)
            await asyncio.wait([attempt], timeout=0.5)
        return attempt.result()
    finally:
        if not attempt.done():
            attempt.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await attempt


async def prometheus_missing(session: aiohttp.ClientSession, ports: stack.Ports) -> str | None:
    base = f"http://127.0.0.1:{ports.prometheus}"
    try:
        async with session.get(f"http://127.0.0.1:{ports.alertmanager}/-/ready") as response:
            if response.status != 200:
                return "Alertmanager is not ready"
        async with session.get(f"{base}/api/v1/alertmanagers") as response:
            if not (await response.json())["data"]["activeAlertmanagers"]:
                return "Prometheus has not found Alertmanager"
        for query, meaning in PROMETHEUS_READY.items():
            async with session.get(f"{base}/api/v1/query", params={"query": query}) as response:
                if not (await response.json())["data"]["result"]:
                    return meaning
    except (aiohttp.ClientError, KeyError, ValueError) as exc:
        return f"Prometheus or Alertmanager does not answer yet ({type(exc).__name__})"
    return None


async def drive(run: Script, exporter: ScriptedExporter, children: Sequence[stack.Child]) -> None:
    """Play the script on the wall clock: open or close the health port at each phase, watch the children."""
    assert run.begun is not None
    for span in run.spans:
        progress(f"t = {span.start:4.0f} s  {span.phase.name}, {span.end - span.start:.0f} s")
        await exporter.listen(span.phase.health != "refused")
        end = run.begun + span.end
        while (left := end - time.monotonic()) > 0:
            alive_or_fail(children)
            await asyncio.sleep(min(left, 1.0))


def describe_alert(alert: Alert) -> str:
    value = "" if alert.value is None else f" value {alert.value:g}"
    return f"{alert.rule} {alert.status}{value}{' (flapping)' if alert.flapping else ''}"


@dataclass
class Outcome:
    versions: dict[str, str]
    alertmanager: list[measure.Message]
    slack: list[measure.Message]
    bus: list[measure.Message]
    alert_changes: list[tuple[float, str, str]]  # (t, source, what) of each jarvis alert event
    rejected: int
    seconds: float


async def side_by_side(work: Path, tools: dict[str, str], run: Script, opts: Options) -> Outcome:
    timers = stack.Timers()
    versions = {role: stack.tool_version(path) for role, path in tools.items()}
    progress(", ".join(f"{stack.TOOLS[role]} {version}" for role, version in versions.items()))
    async with contextlib.AsyncExitStack() as cleanup:
        exporter = ScriptedExporter(run, opts.seed)
        await exporter.start()
        cleanup.push_async_callback(exporter.close)
        receiver = stack.WebhookReceiver()
        await receiver.start()
        cleanup.push_async_callback(receiver.close)

        ports = stack.Ports()
        stack.write_json(work / "blackbox.yml", stack.blackbox_config(timers))
        stack.write_json(
            work / "alertmanager.yml", stack.alertmanager_config(receiver.alertmanager_url, timers)
        )
        stack.write_json(
            work / "prometheus.yml",
            stack.prometheus_config(ports, exporter.health_url, exporter.metrics_port, timers),
        )
        stack.write_json(work / "rules.yml", stack.prometheus_rules(timers))
        children = stack.children(tools, work, ports, receiver.slack_url)
        *theirs, jarvis = children
        for child in theirs:
            await child.start()
            cleanup.push_async_callback(child.stop)  # stopped in reverse: jarvis first
        phase = None if opts.unaligned else await prometheus_phase(exporter, theirs, timers.interval.seconds)
        config = stack.jarvis_config(
            work / "jarvis", ports, exporter.health_url, exporter.metrics_url, timers, phase
        )
        (work / "jarvis.toml").write_text(config)
        await jarvis.start()
        cleanup.push_async_callback(jarvis.stop)
        progress(f"started {', '.join(c.name for c in children)}; configs and logs in {work}")

        bus = await connect_bus(ports.nats, children)
        cleanup.push_async_callback(bus.close)
        watch = Watch()
        for family in ("notifications", "alerts", "health", "metrics"):
            await bus.nc.subscribe(bus.subjects.family(family), cb=watch.on_message)
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        cleanup.push_async_callback(session.close)

        async def jarvis_missing() -> str | None:
            if not watch.probe_ok:
                return "jarvis's probe has not reported /health ok"
            return None if watch.rates else "jarvis's probe has not published a request rate"

        await until(lambda: prometheus_missing(session, ports), children)
        await until(jarvis_missing, children)
        begun = run.begin()
        progress(f"both sides ready; the script takes {run.seconds:.0f} s")
        await drive(run, exporter, children)

        def since(at: float) -> float:
            return at - begun

        return Outcome(
            versions=versions,
            alertmanager=[
                measure.from_alertmanager(r.body, since(r.at))
                for r in receiver.received
                if r.source == "alertmanager"
            ],
            slack=[measure.from_slack(r.body, since(r.at)) for r in receiver.received if r.source == "slack"],
            bus=[measure.from_notification(n, since(at)) for at, n in watch.notifications],
            alert_changes=[(since(at), "jarvis alert (bus)", describe_alert(a)) for at, a in watch.alerts],
            rejected=receiver.rejected + watch.rejected,
            seconds=run.seconds,
        )


def report(outcome: Outcome, run: Script, opts: Options, took: float) -> str:
    timers, v = stack.Timers(), outcome.versions
    reference = measure.measure("Prometheus + Alertmanager", outcome.alertmanager, run.spans)
    slack = measure.measure("jarvis-monitor (Slack)", outcome.slack, run.spans)
    bus = measure.measure("jarvis-monitor (bus)", outcome.bus, run.spans)
    sides = [reference, slack, bus]
    unparsed = sum(1 for m in outcome.slack if not m.alerts)
    thresholds = ", ".join(f"{name} {stack.threshold_text(name)}" for name in stack.RULES[:2])
    lines = [
        f"Prometheus {v['prometheus']}, Alertmanager {v['alertmanager']}, blackbox_exporter {v['blackbox']} "
        f"(Debian) against jarvis-monitor {__version__} at {stack.git_revision()}; "
        f"{'--quick, ' if opts.quick else ''}seed {opts.seed}; the script took {outcome.seconds:.0f} s, "
        f"the whole run {took:.0f} s.",
        "",
        f"- Both sides: {timers.describe()}.",
        "- jarvis's probe collects on Prometheus's scrape grid (the same instants)."
        if not opts.unaligned
        else "- jarvis's probe collects on its own grid (--unaligned).",
        f"- jarvis: the built-ins {', '.join(stack.RULES)} restated by name with that `for`, everything else "
        f"as built in ({thresholds}, service_down on a critical check). Prometheus: the same thresholds "
        "on `rate(...[1m])`, `histogram_quantile(0.95, sum by (le) (rate(..._bucket[1m])))` and "
        "`probe_success == 0`, no keep_firing_for; Alertmanager with jarvis's default inhibition "
        "(service_down mutes the service's error-rate and latency alerts).",
        f"- The service: {REQUESTS_PER_SECOND} req/s simulated, {HEALTHY_ERROR_RATIO:.0%} 5xx and latency "
        f"uniform in {HEALTHY_LATENCY} s when healthy, {SLOW_LATENCY} s in the latency phase; /metrics on a "
        "port of its own, /health answering 503 while the check fails and refusing connections during "
        "the outage, which serves no traffic.",
        "- jarvis is measured from the requests its Slack sink made to a local webhook (what a user "
        "sees) and again from `jarvis.notifications.>` (the bus row); Prometheus + Alertmanager from "
        f"Alertmanager's webhook requests. {len(outcome.slack)} Slack messages, {len(outcome.bus)} "
        f"notifications on the bus, {len(outcome.alertmanager)} Alertmanager webhooks"
        f"{f'; {unparsed} Slack messages had no alert the bench could read' if unparsed else ''}"
        f"{f'; {outcome.rejected} requests or messages were not readable' if outcome.rejected else ''}.",
        "- First notification: the first message announcing the incident's alert firing, after the "
        "phase began. Resolve delay: the resolve after its last firing message, counted from the end "
        'of the incident ("never": no resolve came; "none after the end": the resolve came while the '
        "incident still went on). Notifications: messages about the incident's alert, late resolves "
        "included (a resolved alert Alertmanager lists again in a later message is not counted). False "
        "resolve: a message resolving it while the incident still went on. Other: messages during the "
        "phase about anything else.",
        "",
    ]
    for span in run.spans:
        if span.phase.incident:
            lines += measure.incident_table(span, sides)
    lines += measure.gap_table(run.spans, sides)
    lines += measure.targets_table(measure.targets(reference, slack))
    lines += measure.timeline_table(run.spans, [reference, slack], outcome.alert_changes)
    return "\n".join(lines)


async def run() -> list[tuple[str, str, str]]:
    """The part's entry for `python -m tests.bench versus`: prints its Markdown report, returns no rows."""
    opts = options(sys.argv[1:])
    try:
        tools = stack.find_tools()
    except stack.SetupError as exc:
        raise SystemExit(f"versus: {exc}") from None
    run_script = Script(script(opts.quick))
    work = Path(tempfile.mkdtemp(prefix="jarvis-versus-"))
    loop, main = asyncio.get_running_loop(), asyncio.current_task()
    terminated: list[bool] = []

    def terminate() -> None:  # SIGTERM stops the run as Ctrl-C does: through the cleanup
        terminated.append(True)
        if main is not None:
            main.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    started, keep = time.monotonic(), opts.keep
    try:
        outcome = await side_by_side(work, tools, run_script, opts)
    except stack.SetupError as exc:
        keep = True
        raise SystemExit(f"versus: {exc}") from None
    except asyncio.CancelledError:
        if terminated:
            raise SystemExit(
                "versus: stopped by SIGTERM; every process it started has been stopped"
            ) from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        if keep:
            progress(f"configs, data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(report(outcome, run_script, opts, time.monotonic() - started), flush=True)
    return []


if __name__ == "__main__":
    asyncio.run(run())
