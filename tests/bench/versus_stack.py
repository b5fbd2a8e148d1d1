"""The two monitoring stacks of the versus bench: their configs, their processes, the webhook receiver.

Debian's Prometheus, Alertmanager and blackbox exporter run from configs and data dirs of our own
in a temp dir, on free loopback ports, never as the Debian services; jarvis-monitor runs as
`jarvis-monitor -c FILE up`, its Slack sink posting to the receiver here. Configs for the Go
programs are written as JSON, which is YAML too, so no value needs YAML quoting.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from bus.server import free_port
from bus.units import Duration
from evaluator.config import Rule
from evaluator.rules import DEFAULT_RULES
from jarvis_monitor.template import toml_value
from tests.bench.scripted_exporter import DURATION_METRIC, REQUESTS_METRIC

REPO = Path(__file__).resolve().parents[2]
HOST = "bench"  # the host label of every alert on both sides, so each side groups them all together
CHECK = "app"  # the HTTP check's name, and the `check` label the default inhibition meets on
RULES = ("http_error_rate_high", "http_latency_p95_high", "service_down")
TOOLS = {
    "prometheus": "prometheus",
    "alertmanager": "prometheus-alertmanager",
    "blackbox": "prometheus-blackbox-exporter",
}
INSTALL = "apt-get install -y prometheus prometheus-alertmanager prometheus-blackbox-exporter"
SLACK_PATH = "/slack/services/T000/B000/versus"


class SetupError(RuntimeError):
    """The bench cannot run or a part of it did not come up; the message says which and why."""


class Timers(msgspec.Struct, frozen=True):
    """What both sides share: the rules' `for`, the route's timers, the scrape and probe interval.

    `for` 10s is shorter than the flapping phase's 20 s outages, so each of them can fire on both sides.
    """

    for_: Duration = Duration(10)
    group_wait: Duration = Duration(10)
    group_interval: Duration = Duration(30)
    repeat_interval: Duration = Duration(3600)
    interval: Duration = Duration(5)  # scrape, probe and (Prometheus) evaluation
    timeout: Duration = Duration(4)  # of one scrape or probe

    def describe(self) -> str:
        return (
            f"`for` {self.for_} on the three rules, group_by [host], group_wait {self.group_wait}, "
            f"group_interval {self.group_interval}, repeat_interval {self.repeat_interval}, send_resolved; "
            f"/metrics scraped and /health probed every {self.interval} (timeout {self.timeout}), "
            f"Prometheus rules evaluated every {self.interval}"
        )


def find_tools(which: Callable[[str], str | None] = shutil.which) -> dict[str, str]:
    """The Debian binaries by role; SetupError naming every missing one and how to install it."""
    found = {role: which(name) for role, name in TOOLS.items()}
    missing = [TOOLS[role] for role, path in found.items() if path is None]
    if missing:
        raise SetupError(
            f"missing on PATH: {', '.join(missing)}. The versus bench compares against Debian's "
            f"Prometheus stack and does not install it; as root: apt-get update && {INSTALL}"
        )
    return {role: path for role, path in found.items() if path is not None}


def tool_version(binary: str) -> str:
    """`2.42.0+ds` from the first line of `binary --version`, or that whole line."""
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
    first = (result.stdout or result.stderr).strip().splitlines()[:1]
    line = first[0] if first else "unknown"
    match = re.search(r"version (\S+)", line)
    return match[1] if match else line


def git_revision() -> str:
    """The commit the jarvis side runs, with `-dirty` when the work tree has uncommitted changes."""
    try:
        result = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return result.stdout.strip() or "unknown"


@dataclass(frozen=True)
class Ports:
    prometheus: int = field(default_factory=free_port)
    alertmanager: int = field(default_factory=free_port)
    blackbox: int = field(default_factory=free_port)
    nats: int = field(default_factory=free_port)


def builtin(name: str) -> Rule:
    return next(rule for rule in DEFAULT_RULES if rule.name == name)


def jarvis_rules(timers: Timers) -> list[Rule]:
    """The built-ins the bench needs, restated whole with the bench's `for` (nothing else changed)."""
    return [msgspec.structs.replace(builtin(name), for_=timers.for_) for name in RULES]


def jarvis_config(
    data_dir: Path,
    ports: Ports,
    health_url: str,
    metrics_url: str,
    timers: Timers,
    phase: float | None = None,
) -> str:
    """The jarvis-monitor TOML: embedded NATS, the probe agent alone, the bench's rules and timers;
    the probe collects at `phase` into each interval of the wall clock when it is given."""
    route = {
        "group_by": ["host"],
        "group_wait": timers.group_wait,
        "group_interval": timers.group_interval,
        "repeat_interval": timers.repeat_interval,
    }
    http = {"name": CHECK, "url": health_url, "timeout": timers.timeout}
    scrape = {"name": f"{CHECK}-metrics", "url": metrics_url, "check": CHECK, "timeout": timers.timeout}
    lines = [
        f"data_dir = {toml_value(str(data_dir))}",
        "[server]",
        "host = '127.0.0.1'",
        f"port = {ports.nats}",
        "[agents]",
        f"hostname = {toml_value(HOST)}",
        "[agents.host]",
        "enabled = false",
        "[agents.container]",
        "enabled = false",
        "[agents.probe]",
        f"interval = {toml_value(timers.interval)}",
        "warmup = '0s'",  # Prometheus and blackbox have no warm-up either
        *([f"phase = '{phase:.3f}s'"] if phase is not None else []),
        f"http = [{toml_value(http)}]",
        f"scrape = [{toml_value(scrape)}]",
        "[evaluator]",
        f"rules = [{', '.join(toml_value(rule) for rule in jarvis_rules(timers))}]",
        "[evaluator.default_route]",
        *(f"{key} = {toml_value(value)}" for key, value in route.items()),
        "[sinks.report]",
        "enabled = false",
    ]
    return "\n".join(lines) + "\n"


def threshold_text(name: str) -> str:
    """`> 0.05`: a built-in metrics rule's condition."""
    rule = builtin(name)
    return f"{rule.op} {rule.threshold:g}"


def prometheus_rules(timers: Timers) -> dict[str, Any]:
    """Rules equivalent to jarvis's built-ins: the same thresholds and `for`, PromQL over [1m]."""
    requests, buckets = f"{REQUESTS_METRIC}_total", f"{DURATION_METRIC}_bucket"
    expressions = {
        "http_error_rate_high": f'sum(rate({requests}{{status=~"5.."}}[1m])) / sum(rate({requests}[1m])) '
        f"{threshold_text('http_error_rate_high')}",
        "http_latency_p95_high": f"histogram_quantile(0.95, sum by (le) (rate({buckets}[1m]))) "
        f"{threshold_text('http_latency_p95_high')}",
        "service_down": 'probe_success{job="blackbox"} == 0',
    }
    rules = [
        {
            "alert": name,
            "expr": expression,
            "for": str(timers.for_),
            "labels": {"severity": builtin(name).severity, "host": HOST, "check": CHECK},
        }
        for name, expression in expressions.items()
    ]
    return {"groups": [{"name": "jarvis-equivalent", "interval": str(timers.interval), "rules": rules}]}


def prometheus_config(ports: Ports, health_url: str, metrics_port: int, timers: Timers) -> dict[str, Any]:
    interval = str(timers.interval)
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": str(timers.timeout),
            "evaluation_interval": interval,
        },
        "rule_files": ["rules.yml"],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{ports.alertmanager}"]}]}]
        },
        "scrape_configs": [
            {"job_name": "app", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]},
            {
                "job_name": "blackbox",
                "metrics_path": "/probe",
                "params": {"module": ["http_2xx"]},
                "static_configs": [{"targets": [health_url]}],
                "relabel_configs": [  # the blackbox exporter's documented pattern
                    {"source_labels": ["__address__"], "target_label": "__param_target"},
                    {"source_labels": ["__param_target"], "target_label": "instance"},
                    {"target_label": "__address__", "replacement": f"127.0.0.1:{ports.blackbox}"},
                ],
            },
        ],
    }


def alertmanager_config(receiver_url: str, timers: Timers) -> dict[str, Any]:
    """One route to the bench's webhook, with jarvis's default inhibition of a service's own alerts."""
    return {
        "route": {
            "receiver": "bench",
            "group_by": ["host"],
            "group_wait": str(timers.group_wait),
            "group_interval": str(timers.group_interval),
            "repeat_interval": str(timers.repeat_interval),
        },
        "receivers": [{"name": "bench", "webhook_configs": [{"url": receiver_url, "send_resolved": True}]}],
        "inhibit_rules": [
            {
                "source_matchers": ['alertname="service_down"'],
                "target_matchers": ['alertname=~"http_error_rate_high|http_latency_p95_high"'],
                "equal": ["host", "check"],
            }
        ],
    }


def blackbox_config(timers: Timers) -> dict[str, Any]:
    return {
        "modules": {
            "http_2xx": {
                "prober": "http",
                "timeout": str(timers.timeout),
                "http": {"preferred_ip_protocol": "ip4"},
            }
        }
    }


def write_json(path: Path, document: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


_prctl: Callable[..., int] | None
try:  # resolved before fork: the child may only make the call
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: its own process group, and SIGTERM from Linux should the bench die first."""
    os.setpgid(0, 0)
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """A child process with its output in a log file; stopped with its whole process group."""

    def __init__(self, name: str, argv: list[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.env = dict(env) if env is not None else None
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
                preexec_fn=_die_with_parent,
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in text.splitlines()[-lines:])

    def failure(self) -> str:
        code = self.process.returncode if self.process is not None else None
        return f"{self.name} exited with code {code}; the end of {self.log}:\n{self.tail()}"

    async def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to its group, SIGKILL after `grace` seconds; never raises."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                print(
                    f"{self.name} did not stop within {grace:.0f}s after SIGTERM, killing it", file=sys.stderr
                )
                with contextlib.suppress(ProcessLookupError):  # not yet reaped: the group is still its own
                    os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


def children(
    tools: Mapping[str, str],
    work: Path,
    ports: Ports,
    slack_url: str,
    environ: Mapping[str, str] = os.environ,
) -> list[Child]:
    """The four processes, in start order, from the config files already written in `work`."""
    jarvis_env = {key: value for key, value in environ.items() if not key.startswith(("JARVIS_", "SLACK_"))}
    jarvis_env["SLACK_WEBHOOK_URL"] = slack_url
    return [
        Child(
            "blackbox exporter",
            [
                tools["blackbox"],
                f"--config.file={work / 'blackbox.yml'}",
                f"--web.listen-address=127.0.0.1:{ports.blackbox}",
            ],
            work / "blackbox.log",
        ),
        Child(
            "alertmanager",
            [
                tools["alertmanager"],
                f"--config.file={work / 'alertmanager.yml'}",
                f"--storage.path={work / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{ports.alertmanager}",
                "--cluster.listen-address=",  # no gossip: a single instance, nothing on 0.0.0.0:9094
            ],
            work / "alertmanager.log",
        ),
        Child(
            "prometheus",
            [
                tools["prometheus"],
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'prometheus'}",
                f"--web.listen-address=127.0.0.1:{ports.prometheus}",
            ],
            work / "prometheus.log",
        ),
        Child(
            "jarvis-monitor up",
            [sys.executable, "-m", "jarvis_monitor", "-c", str(work / "jarvis.toml"), "up"],
            work / "jarvis.log",
            env=jarvis_env,
        ),
    ]


@dataclass(frozen=True)
class Received:
    """One webhook request: which side sent it, when (monotonic clock) and its JSON body."""

    source: str  # "alertmanager" or "slack"
    at: float
    body: dict[str, Any]


class WebhookReceiver:
    """Alertmanager's webhook and Slack's incoming webhook, on one free loopback port."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.received: list[Received] = []
        self.rejected = 0  # bodies that were not JSON objects
        app = web.Application()
        app.router.add_post("/alertmanager", self._alertmanager)
        app.router.add_post(SLACK_PATH, self._slack)
        self._runner = web.AppRunner(app, access_log=None)
        self.port = 0

    async def _record(self, source: str, request: web.Request) -> bool:
        at = self.clock()
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self.rejected += 1
            return False
        self.received.append(Received(source, at, body))
        return True

    async def _alertmanager(self, request: web.Request) -> web.Response:
        ok = await self._record("alertmanager", request)
        return web.Response(text="ok") if ok else web.Response(status=400, text="not a JSON object")

    async def _slack(self, request: web.Request) -> web.Response:
        ok = await self._record("slack", request)
        return web.Response(text="ok") if ok else web.Response(status=400, text="invalid_payload")

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alertmanager"

    @property
    def slack_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{SLACK_PATH}"

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        await self._runner.cleanup()
