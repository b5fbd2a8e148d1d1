"""The whole stack in one `up`: an agent's check becomes an alert, a notification, and a console message."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bus.events import Alert, Notification, any_event
from bus.server import free_port
from tests.conftest import nats_server_binary
from tests.integration.test_cli import CLI, cli_env, connect_when_up, write_config

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
