"""Log errors as alerts, end to end: a real container printing ERROR lines, the container agent and the
evaluator on a real nats-server, the log alert with those lines, and `jarvis-monitor logs` finding them
in the logs stream, and nothing older than asked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js.api import DeliverPolicy

from agents.container import ContainerAgentConfig, ContainerCollector, LogWatchConfig
from agents.runner import AgentRunner, Check, Collection
from bus.config import BusConfig
from bus.connection import Bus
from bus.events import Alert, LogLine, LogLines, alert, encode
from bus.jetstream import provision, stream_name
from bus.server import EmbeddedServer
from bus.units import Duration
from evaluator.config import EvaluatorConfig, RuleTuning
from evaluator.service import EvaluatorService
from tests.conftest import wait_until

from .docker_env import Containers, containers

pytestmark = pytest.mark.integration
__all__ = ["containers"]  # the fixture, imported for pytest

CLI = [sys.executable, "-m", "jarvis_monitor"]
RULE = "container_log_errors"
TIMEOUT = 60.0


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JARVIS_", "NATS_"))}
    return subprocess.run(
        [*CLI, "-c", str(config), *args], capture_output=True, text=True, timeout=60, env=env
    )


def cli_config(tmp_path: Path, url: str, prefix: str) -> Path:
    path = tmp_path / "jarvis.toml"
    path.write_text(f'[bus]\nservers = ["{url}"]\nprefix = "{prefix}"\n', encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def alerts_on(bus: Bus) -> AsyncIterator[list[Alert]]:
    """Every alert the alerts stream keeps, as it arrives."""
    seen: list[Alert] = []

    async def on_alert(msg: object) -> None:
        seen.append(alert.decode(msg.data))  # type: ignore[attr-defined]

    sub = await bus.nc.jetstream().subscribe(
        bus.subjects.family("alerts"), cb=on_alert, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    try:
        yield seen
    finally:
        await sub.unsubscribe()


@contextlib.asynccontextmanager
async def running(*runs: tuple[asyncio.Task[None], object]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for _, part in runs:
            part.stop()  # type: ignore[attr-defined]
        for task, _ in runs:
            await asyncio.wait_for(task, TIMEOUT)


async def test_a_container_printing_error_lines_raises_the_log_alert_and_logs_finds_the_lines(
    containers: Containers, bus: Bus, nats_server: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    """The issue's case with the default log settings: ERROR lines for minutes, no config."""
    await provision(bus.nc.jetstream(), bus.subjects, BusConfig().streams)
    token = containers.run_id
    name = containers.name("backend")
    await containers.run(
        "backend",
        "sh",
        "-c",
        f'i=0; while true; do i=$((i+1)); echo "INFO connecting"; '
        f'echo "ERROR psycopg2.OperationalError: could not connect to server ({token} $i)"; sleep 0.2; done',
    )
    agent_config = ContainerAgentConfig(
        filter_labels=[containers.label], interval=Duration(1), warmup=Duration(0)
    )
    agent = AgentRunner(ContainerCollector(agent_config), bus, agent_config, "web01")
    # the built-in rule as it ships, but for 2 s instead of 2 minutes (the engine tests cover 2 m)
    service = EvaluatorService(EvaluatorConfig(tune={RULE: RuleTuning(for_=Duration(2))}), bus)
    async with alerts_on(bus) as seen:
        agent_task, service_task = asyncio.create_task(agent.run()), asyncio.create_task(service.run())
        async with running((agent_task, agent), (service_task, service)):
            await asyncio.wait_for(service.ready.wait(), TIMEOUT)
            await wait_until(
                lambda: bool([a for a in seen if a.rule == RULE and a.status == "firing"]), TIMEOUT
            )
            firing = [a for a in seen if a.rule == RULE and a.status == "firing"]
            config = cli_config(tmp_path, nats_server.url, prefix)
            found = await asyncio.to_thread(
                run_cli, config, "logs", name, "--grep", r"psycopg2\.OperationalError", "--since", "10m"
            )
            nothing = await asyncio.to_thread(
                run_cli, config, "logs", "--grep", "no such line", "--level", "error"
            )

    (first, *_) = firing
    assert first.labels["container"] == name
    assert first.summary == f"{name} on web01 keeps logging errors"
    assert first.description.startswith("burst: 5 or more error lines within 1m")
    assert f"ERROR psycopg2.OperationalError: could not connect to server ({token} " in first.description
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines
    assert all(f"  web01  {name}  ERROR    ERROR psycopg2.OperationalError" in line for line in lines)
    numbers = [int(line.rsplit(" ", 1)[1].rstrip(")")) for line in lines]
    assert numbers == sorted(numbers)  # oldest first
    assert len(numbers) == len(set(numbers))  # each line kept once
    assert "INFO connecting" not in found.stdout  # only error and warning lines are kept
    assert nothing.returncode == 0
    assert nothing.stdout == ""
    assert "no matching lines since" in nothing.stderr


async def test_logs_shows_nothing_older_than_asked_from_a_stream_kept_seven_days(
    bus: Bus, nats_server: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    js = bus.nc.jetstream()
    await provision(js, bus.subjects, BusConfig().streams)
    now = time.time()
    lines = [
        LogLine(now - 9 * 86400, "error", "ERROR nine days ago"),
        LogLine(now - 2 * 86400, "warning", "WARNING two days ago"),
        LogLine(now - 60, "error", "ERROR a minute ago"),
    ]
    for container, kept in (("backend", lines), ("frontend", [LogLine(now - 30, "error", "ERROR other")])):
        batch = LogLines(host="web01", agent="container", container=container, ts=now, lines=kept)
        await js.publish(bus.subjects.logs("web01", container), encode(batch))
    config = cli_config(tmp_path, nats_server.url, prefix)

    week = await asyncio.to_thread(run_cli, config, "logs", "backend", "--since", "8d")
    hour = await asyncio.to_thread(run_cli, config, "logs", "--since", "1h", "--json")
    errors = await asyncio.to_thread(run_cli, config, "logs", "back*", "--since", "8d", "--level", "error")
    info = await js.stream_info(stream_name(prefix, "logs"))

    assert info.config.max_age == pytest.approx(7 * 86400)  # what is older is gone from the stream
    assert [line.split("  ")[-1] for line in week.stdout.splitlines()] == [
        "WARNING two days ago",
        "ERROR a minute ago",
    ]
    assert [json.loads(line)["text"] for line in hour.stdout.splitlines()] == [
        "ERROR a minute ago",
        "ERROR other",
    ]
    assert [line.split("  ")[-1] for line in errors.stdout.splitlines()] == ["ERROR a minute ago"]


async def test_a_bad_search_is_one_line_and_exit_2_and_no_stream_is_exit_1(
    bus: Bus, nats_server: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    config = cli_config(tmp_path, nats_server.url, prefix)
    regex = await asyncio.to_thread(run_cli, config, "logs", "--grep", "ERROR(")
    since = await asyncio.to_thread(run_cli, config, "logs", "--since", "yesterday")
    missing = await asyncio.to_thread(run_cli, config, "logs")  # nothing provisioned under this prefix

    assert (regex.returncode, since.returncode, missing.returncode) == (2, 2, 1)
    assert regex.stderr.strip().startswith(
        "jarvis-monitor: error: --grep: 'ERROR(' is not a regular expression"
    )
    assert "--since: invalid duration 'yesterday'" in since.stderr
    assert f"no logs kept yet: there is no stream {stream_name(prefix, 'logs')}" in missing.stderr
    assert "Traceback" not in regex.stderr + since.stderr + missing.stderr


async def test_a_flooding_container_is_sampled_and_its_check_says_how_many_lines_were_skipped(
    containers: Containers,
) -> None:
    name = containers.name("flood")
    flood = (
        "while true; do i=0; while [ $i -lt 100 ]; do echo ERROR flood; i=$((i+1)); done; sleep 0.05; done"
    )
    await containers.run("flood", "sh", "-c", flood)
    logs = LogWatchConfig(max_lines_per_second=50)
    collector = ContainerCollector(ContainerAgentConfig(filter_labels=[containers.label], logs=logs))

    async def ignore(_: Check) -> None:
        return None

    watcher = asyncio.create_task(collector.watch(ignore))
    try:
        await collector.collect()  # starts following
        started = time.monotonic()
        totals = {"errors": 0.0, "dropped": 0.0}
        detail = ""

        def count(collection: Collection) -> None:
            nonlocal detail
            for s in collection.samples:
                if s.labels.get("container") == name and s.name == "container.log.errors":
                    totals["errors"] += s.value
                elif s.labels.get("container") == name and s.name == "container.log.dropped":
                    totals["dropped"] += s.value
            detail = next((c.detail for c in collection.checks if c.target == f"log:{name}"), detail)

        while totals["dropped"] < 500:
            assert time.monotonic() - started < TIMEOUT, totals
            count(await collector.collect())
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    assert totals["errors"] <= 50 * (elapsed + 2)  # a second's worth at once, then 50 a second
    assert totals["errors"] > 0  # sampled, not silenced
    assert re.search(r"\d+ lines over 50/s skipped unread", detail)
