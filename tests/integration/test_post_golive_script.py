"""deploy/post-golive-monitor.sh: the runbook's --once, --report and --continuous, on top of the command."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus.events import Heartbeat, Notification, any_event
from bus.server import free_port
from tests.conftest import nats_server_binary, require, wait_until
from tests.fakeslack import FakeSlack
from tests.integration.test_cli import cli_env, connect_when_up, write_config

SCRIPT = Path(__file__).parents[2] / "deploy" / "post-golive-monitor.sh"
COMMAND = Path(sys.executable).parent / "jarvis-monitor"


def run(tmp_path: Path, *args: str, config: str = "") -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n{config}', encoding="utf-8")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("JARVIS_")},
        "JARVIS_CONFIG": str(path),
        "JARVIS_MONITOR": str(COMMAND),
    }
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(autouse=True)
def _installed() -> None:
    require(COMMAND.exists(), f"jarvis-monitor is not installed beside {sys.executable}")
    require(shutil.which("bash") is not None, "bash is not installed")


def test_once_is_a_nagios_check_that_exits_critical_for_a_database_down(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "--once",
        config=f"""
[agents.container]
enabled = false
[[agents.probe.tcp]]
name = "postgresql"
host = "127.0.0.1"
port = {closed_port()}
timeout = "500ms"
""",
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout.startswith("JARVIS CRITICAL")
    assert "database_unreachable" in result.stdout


def test_report_writes_the_three_files_for_the_day_asked(tmp_path: Path) -> None:
    result = run(tmp_path, "--report", "2026-11-20")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "data" / "reports" / "post-golive"
    assert sorted(p.name for p in folder.iterdir()) == [
        "2026-11-20.html",
        "2026-11-20.json",
        "2026-11-20.md",
    ]


@pytest.mark.parametrize("seconds", ["x", "0", "-5"])
def test_continuous_refuses_what_is_not_a_number_of_seconds(tmp_path: Path, seconds: str) -> None:
    result = run(tmp_path, "--continuous", seconds)
    assert result.returncode == 2
    assert "--continuous" in result.stderr


def test_an_unknown_option_shows_the_usage(tmp_path: Path) -> None:
    result = run(tmp_path, "--daily")
    assert result.returncode == 2
    assert "--once" in result.stdout


async def test_continuous_runs_the_stack_at_its_interval_notifies_slack_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    """The runbook's continuous mode: agents at the interval asked, a breach alerted in Slack, and a
    clean exit 0 on systemd's SIGTERM."""
    slack = FakeSlack()
    await slack.start()
    port = free_port()
    config = tmp_path / "config.toml"
    write_config(
        config,
        f"""
data_dir = "{tmp_path / "data"}"
[server]
port = {port}
[agents]
hostname = "web01"
[agents.container]
enabled = false
[agents.probe.discovery]
enabled = false
[[agents.probe.tcp]]
name = "postgresql"
host = "127.0.0.1"
port = {closed_port()}
timeout = "300ms"
[evaluator.default_route]
group_wait = "0s"
[evaluator.tune.database_unreachable]
for = "0s"
""",
    )
    env = cli_env(
        JARVIS_CONFIG=str(config),
        JARVIS_MONITOR=str(COMMAND),
        SLACK_WEBHOOK_URL=slack.webhook_url,
        NATS_SERVER_BIN=nats_server_binary(),
    )
    process = await asyncio.create_subprocess_exec(
        "bash", str(SCRIPT), "--continuous", "1", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        nc = await connect_when_up(port, time.monotonic() + 20)
        try:
            beats = await nc.subscribe("jarvis.heartbeat.web01.probe")
            beat = any_event.decode((await beats.next_msg(timeout=20)).data)
            notes = await nc.jetstream().subscribe("jarvis.notifications.>", ordered_consumer=True)
            note = any_event.decode((await notes.next_msg(timeout=30)).data)
        finally:
            await nc.close()
        await wait_until(lambda: bool(slack.accepted("webhook")), timeout=20)
        assert isinstance(beat, Heartbeat)
        assert beat.interval == 1.0  # --continuous 1, not the config's 10s
        assert isinstance(note, Notification)
        assert [a.labels["rule"] for a in note.alerts] == ["database_unreachable"]
        assert "postgresql" in json.dumps(slack.accepted("webhook")[0].json)

        process.send_signal(signal.SIGTERM)  # what systemd sends; exec makes it reach `up` itself
        _, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err.decode()[-3000:]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await slack.stop()
