"""The whole stack in one `up`: an agent's check becomes an alert, a notification, and a console message;
a part that fails is restarted while the rest runs on; a dead embedded server ends `up` at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bus import vocabulary as vocab
from bus.connection import Bus
from bus.events import Alert, HealthEvent, Notification, any_event
from bus.server import free_port
from jarvis_monitor.config import parse_config
from jarvis_monitor.stack import ServiceSpec, Shutdown, run_until_stopped
from jarvis_monitor.supervisor import RestartPolicy
from tests.conftest import nats_server_binary
from tests.integration.test_cli import (
    CLI,
    _embedded_server_pid,
    cli_env,
    connect_when_up,
    wait_until_running,
    write_config,
)

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`up` with a probe of a closed port, a rule without `for`, and no group wait."""
    port = free_port()
    config = write_config(
        tmp_path / "up.toml",
        f"""
data_dir = "{tmp_path / "data"}"
[server]
port = {port}
[agents]
hostname = "web01"
[agents.container]
enabled = false
[agents.probe]
interval = "1s"
tcp = [{{ name = "postgres <!channel>", host = "127.0.0.1", port = {closed_port()}, timeout = "200ms" }}]
[evaluator.default_route]
group_wait = "0s"
[[evaluator.rules]]
name = "database_unreachable"
kind = "health"
matchers = [{{ name = "agent", op = "=", value = "probe" }}]
severity = "critical"
summary = "{{target}} is unreachable"
""",
    )
    process = subprocess.Popen(
        [*CLI, "-c", str(config), "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(NATS_SERVER_BIN=nats_server_binary()),
    )
    yield process, port
    if process.poll() is None:
        leftovers = psutil.Process(process.pid).children(recursive=True)
        process.kill()
        process.wait(10)
        for child in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


async def test_a_database_down_reaches_the_alert_stream_a_notification_and_the_console(
    stack: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = stack
    nc = await connect_when_up(port, time.monotonic() + 20)
    try:
        js = nc.jetstream()
        # read the streams, not live subjects: what was published before we looked is kept there
        alerts = await js.subscribe("jarvis.alerts.>", ordered_consumer=True)
        notes = await js.subscribe("jarvis.notifications.>", ordered_consumer=True)

        async def next_firing_alert() -> tuple[str, Alert]:
            while True:
                msg = await alerts.next_msg(timeout=30)
                event = any_event.decode(msg.data)
                if isinstance(event, Alert) and event.status == "firing":
                    return msg.subject, event

        subject, alert = await next_firing_alert()
        note = any_event.decode((await notes.next_msg(timeout=30)).data)
    except TimeoutError:
        process.kill()
        pytest.fail(f"no alert or notification; up said:\n{process.communicate(timeout=10)[1][-3000:]}")
    finally:
        await nc.close()

    assert subject == "jarvis.alerts.critical.web01.database_unreachable"
    assert alert.labels["target"] == "postgres <!channel>"
    assert alert.summary == "postgres <!channel> is unreachable"
    assert isinstance(note, Notification)
    assert (note.route, note.status) == ("default", "firing")
    assert [a.fingerprint for a in note.alerts] == [alert.fingerprint]

    process.terminate()
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err[-3000:]
    assert "postgres <!channel> is unreachable" in out  # the console sink, with no Slack configured


async def test_up_exits_1_within_seconds_saying_so_when_its_embedded_server_dies(
    stack: tuple[subprocess.Popen[str], int],
) -> None:
    """No wait for a reconnect to a server known dead: `up` ends at once for systemd to restart it."""
    process, port = stack
    await wait_until_running(port, time.monotonic() + 20)
    os.kill(_embedded_server_pid(process), signal.SIGKILL)
    try:
        _, err = await asyncio.to_thread(process.communicate, None, 5)  # it used to take 12 s or more
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(
            f"up still running 5 s after its server died; it said:\n{process.communicate()[1][-4000:]}"
        )
    assert process.returncode == 1, err[-4000:]
    assert "CRITICAL jarvis_monitor.stack: the embedded nats-server died (killed by SIGKILL)" in err
    assert "jarvis-monitor: error: the embedded nats-server exited unexpectedly (killed by SIGKILL)" in err
    assert "still running" not in err  # parts waiting on the dead server are cancelled, not reported stuck


class FailsTwice:
    """A part of the stack whose first two instances raise; the third runs until stopped."""

    made = 0

    def __init__(self) -> None:
        FailsTwice.made += 1
        self.number = FailsTwice.made
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        if self.number <= 2:
            raise RuntimeError(f"part {self.number} broke")
        await self.stopped.wait()

    def stop(self) -> None:
        self.stopped.set()


async def test_a_part_that_fails_is_reported_on_the_bus_and_restarted_while_the_agents_run_on(
    bus: Bus, prefix: str
) -> None:
    config = parse_config({"agents": {"hostname": "web01", "host": {"interval": "1s"}}})
    FailsTwice.made = 0
    flaky = ServiceSpec("flaky", "flaky part", lambda bus: FailsTwice())
    health = await bus.nc.subscribe(f"{prefix}.health.web01.flaky.{vocab.SUPERVISOR_TARGET}")
    metrics = await bus.nc.subscribe(f"{prefix}.metrics.web01.host")
    shutdown = Shutdown()
    quick = RestartPolicy(first=0.05, cap=0.1, healthy_after=0.5)
    running = asyncio.create_task(
        run_until_stopped(config, ["host"], bus, shutdown, services=[flaky], restart=quick)
    )
    try:
        reports = [any_event.decode((await health.next_msg(timeout=10)).data) for _ in range(3)]
        await metrics.next_msg(timeout=10)  # the host agent still publishes after the failures
    finally:
        shutdown.request()
        await asyncio.wait_for(running, timeout=15)

    assert all(isinstance(r, HealthEvent) for r in reports)
    assert [(r.status, r.host, r.agent) for r in reports if isinstance(r, HealthEvent)] == [
        ("critical", "web01", "flaky"),
        ("critical", "web01", "flaky"),
        ("ok", "web01", "flaky"),
    ]
    details = [r.detail for r in reports if isinstance(r, HealthEvent)]
    assert details[0].startswith("failed: RuntimeError('part 1 broke'); restart 1 in")
    assert details[2] == "running again for 0.5s after 2 restart(s)"
    assert FailsTwice.made == 3
