"""The evaluator's commands: silence add|list|expire, ack, alerts against a real nats-server, and once."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest

from agents.runner import Collection
from bus.connection import Bus
from bus.events import HealthEvent, MetricBatch, Sample
from bus.server import EmbeddedServer
from evaluator.config import EvaluatorConfig
from jarvis_monitor import evaluator_cli, stack
from jarvis_monitor.cli import main
from tests.conftest import wait_until
from tests.integration.test_evaluator_service import (
    DISK_RULE,
    TIMEOUT,
    Agent,
    Recorder,
    provisioned,
    service_in_process,
    write_config,
)


@pytest.fixture
def config_file(nats_server: EmbeddedServer, prefix: str, tmp_path: Path) -> Path:
    return write_config(tmp_path / "jarvis.toml", nats_server.url, prefix)


async def run(config_file: Path, *args: str) -> int:
    """`jarvis-monitor -c FILE ARGS...` in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(main, ["-c", str(config_file), *args])


async def test_silence_add_list_expire(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        await run(
            config_file,
            "silence",
            "add",
            "host=web01",
            "rule=~disk.*",
            "--for",
            "2h",
            "--comment",
            "disk swap",
        )
        == 0
    )
    silence_id = capsys.readouterr().out.strip()
    assert re.fullmatch(r"[0-9a-f]{12}", silence_id)

    assert await run(config_file, "silence", "list") == 0
    listing = capsys.readouterr().out
    assert silence_id in listing
    assert "active" in listing
    assert "host=web01 rule=~disk.*" in listing
    assert "disk swap" in listing

    assert await run(config_file, "silence", "list", "--json") == 0
    [stored] = json.loads(capsys.readouterr().out)
    assert stored["id"] == silence_id
    assert stored["ends_at"] - stored["starts_at"] == pytest.approx(7200)
    assert stored["author"]

    assert await run(config_file, "silence", "expire", silence_id) == 0
    assert f"expired {silence_id}" in capsys.readouterr().out
    assert await run(config_file, "silence", "list") == 0
    assert silence_id not in capsys.readouterr().out
    assert await run(config_file, "silence", "list", "--all") == 0
    assert re.search(rf"{silence_id}\s+expired", capsys.readouterr().out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["host", "--for", "1h"], "invalid matcher 'host'"),
        (["rule=~disk[", "--for", "1h"], "invalid regex"),
        (["host=web01", "--for", "2x"], "--for:"),
        (["host=web01", "--for", "0s"], "--for: must be longer than 0s"),
        (["host=web01", "--until", "yesterday"], "--until: 'yesterday' is not an ISO time"),
        (["host=web01", "--until", "2001-01-01T00:00"], "would end before it starts or in the past"),
        (["host=~.*", "--for", "30d"], "would mute nearly every alert"),
        (["host=~[ab]*a[ab]{400}c", "--for", "1h"], "split it into several silences"),
        (["rule!=disk", "--for", "1h"], "would mute nearly every alert"),
    ],
)
def test_silence_add_refuses_bad_input_in_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before any connection: exit 2 and one line naming the problem."""
    config = tmp_path / "jarvis.toml"
    config.write_text('[bus]\nservers = ["nats://127.0.0.1:1"]\n')
    assert main(["-c", str(config), "silence", "add", *args, "--comment", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert message in err


def test_silence_add_refuses_a_comment_too_long_for_the_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "jarvis.toml"
    config.write_text('[bus]\nservers = ["nats://127.0.0.1:1"]\n')
    assert (
        main(["-c", str(config), "silence", "add", "host=web01", "--for", "1h", "--comment", "x" * 1001]) == 2
    )
    assert "--comment: at most 1000 characters" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["silence", "list"], ["alerts"], ["ack", "0123abcd"]])
def test_without_nats_commands_fail_in_one_line(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "jarvis.toml"
    config.write_text('[bus]\nservers = ["nats://127.0.0.1:1"]\nconnect_timeout = "1s"\n')
    assert main(["-c", str(config), *args]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "cannot reach NATS" in err


async def test_expire_and_ack_of_unknown_ids_say_so(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(config_file, "silence", "expire", "0123456789ab") == 1
    assert "no silence with id '0123456789ab'" in capsys.readouterr().err
    assert await run(config_file, "ack", "0123456789abcdef") == 1
    assert "no active alert with fingerprint '0123456789abcdef'" in capsys.readouterr().err
    assert await run(config_file, "ack", "../etc") == 2
    assert "is not a fingerprint" in capsys.readouterr().err


async def test_alerts_lists_and_ack_quiets_a_firing_alert(
    bus: Bus, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await provisioned(bus)
    async with Recorder.on(bus) as recorder, service_in_process(bus) as service:
        agent = Agent(bus, "web07", disk=95.0)
        agent.start()
        try:
            await recorder.wait_for(lambda: recorder.notified("web07", "firing"), "the firing notification")
            assert await run(config_file, "alerts", "--json") == 0
            listed = json.loads(capsys.readouterr().out)["alerts"]
            # the list is written at most once a second: wait until it shows the firing alert
            while not any(a["state"] == "firing" for a in listed):
                await asyncio.sleep(0.2)
                assert await run(config_file, "alerts", "--json") == 0
                listed = json.loads(capsys.readouterr().out)["alerts"]
            [disk] = [a for a in listed if a["rule"] == DISK_RULE]
            assert disk["labels"]["host"] == "web07"

            assert await run(config_file, "alerts") == 0
            table = capsys.readouterr().out
            assert re.search(rf"firing\s+critical\s+{DISK_RULE}\s+web07", table), table

            assert await run(config_file, "ack", disk["fingerprint"][:8]) == 0
            assert f"acked {disk['fingerprint']}" in capsys.readouterr().out
            await wait_until(
                lambda: any(a.acked for a in service.engine.active(time.time()) if a.rule == DISK_RULE),
                TIMEOUT,
            )
            await wait_until(lambda: b'"acked":true' in (service._active_written or b""), TIMEOUT)
            assert await run(config_file, "alerts") == 0
            assert "firing,acked" in capsys.readouterr().out
        finally:
            await agent.stop()


# --- once -------------------------------------------------------------------------------------------


def test_once_fires_what_is_breached_now_ignoring_for() -> None:
    now = time.time()
    batch = MetricBatch(
        host="web01",
        agent="host",
        ts=now,
        interval=10,
        samples=[Sample("disk.percent", 95.0, {"mount": "/"})],
    )
    ok = HealthEvent(host="web01", agent="probe", target="api", status="ok", ts=now)
    result = evaluator_cli.evaluate_once(EvaluatorConfig(), [batch, ok], now)
    assert [a.rule for a in result.alerts] == [DISK_RULE]
    assert result.exit_code == 2
    first = evaluator_cli.render_once(result).splitlines()[0]
    assert first.startswith("JARVIS CRITICAL - 1 critical; 1 checks | alerts_critical=1")


def test_once_is_ok_when_nothing_is_wrong() -> None:
    now = time.time()
    batch = MetricBatch(
        host="web01", agent="host", ts=now, interval=10, samples=[Sample("disk.percent", 40.0)]
    )
    result = evaluator_cli.evaluate_once(EvaluatorConfig(), [batch], now)
    assert result.exit_code == 0
    assert evaluator_cli.render_once(result).startswith("JARVIS OK - no alerts")


class BrokenCollector:
    name = "host"

    async def collect(self) -> Collection:
        raise RuntimeError("no access to http://user:secret@example/")


def test_once_reports_a_failing_collector_as_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stack, "make_collector", lambda name, config: BrokenCollector())
    config = tmp_path / "jarvis.toml"
    config.write_text("")
    assert main(["-c", str(config), "once"]) == 3
    out = capsys.readouterr().out
    assert out.startswith("JARVIS UNKNOWN")
    assert re.search(r"host\s+_collector\s+unknown", out)
    assert "secret" not in out


def test_once_runs_the_real_host_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever this machine's state, the exit code is the state the first line names."""
    config = tmp_path / "jarvis.toml"
    config.write_text("")
    code = main(["-c", str(config), "once"])
    out = capsys.readouterr().out
    status = out.split()[1]
    assert code == {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}[status], out
    assert re.search(r"host\s+_collector\s+ok\s+collected \d+ samples", out), out
