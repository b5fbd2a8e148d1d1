"""`jarvis-monitor status` against a real nats-server: the evaluator and both sinks beat with their
counters beside the agents, and a silent part makes status exit 1."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
from pathlib import Path

import pytest

from bus.config import BusConfig, StreamsConfig
from bus.connection import Bus
from bus.events import Heartbeat
from bus.jetstream import provision
from bus.server import EmbeddedServer
from evaluator.config import EvaluatorConfig
from evaluator.service import EvaluatorService
from jarvis_monitor.config import Config
from jarvis_monitor.status_cli import cmd_status, judge, render
from sinks.report.config import ReportSinkConfig
from sinks.report.service import ReportSink
from sinks.slack import SlackSink, SlackSinkConfig
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def status(config: Config, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, object]]]:
    code = cmd_status(argparse.Namespace(json=True), config)
    return code, json.loads(capsys.readouterr().out)


async def test_the_evaluator_and_the_sinks_beat_with_their_counters(
    bus: Bus, nats_server: EmbeddedServer, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
    service = EvaluatorService(EvaluatorConfig(), bus, host="mon01")
    report = ReportSink(ReportSinkConfig(), bus, tmp_path, host="mon01")
    slack = SlackSink(SlackSinkConfig(), bus, environ={}, out=io.StringIO(), host="mon01")
    tasks = [asyncio.create_task(part.run()) for part in (service, report, slack)]
    old = Heartbeat(host="web09", agent="host", version="1", interval=10, ts=time.time() - 3600)
    await bus.publish(bus.subjects.heartbeat("web09", "host"), old)
    await bus.nc.publish(bus.subjects.metrics("web09", "host"), b"garbage")
    try:
        await asyncio.wait_for(service.ready.wait(), 30)
        await wait_until(lambda: service.stats.undecodable == 1, 30)
        config = Config(bus=BusConfig(servers=[nats_server.url], prefix=prefix))

        def seen() -> dict[str, dict[str, object]]:
            _, parts = status(config, capsys)
            return {str(p["agent"]): p for p in parts}

        # heartbeats every 10 s: wait for the evaluator's to carry the reject
        loop = asyncio.get_running_loop()
        parts: dict[str, dict[str, object]] = {}
        deadline = loop.time() + 40
        while loop.time() < deadline:
            parts = await asyncio.to_thread(seen)
            beat = parts.get("evaluator", {}).get("heartbeat", {})
            if isinstance(beat, dict) and beat.get("counters", {}).get("rejected") == 1:
                break
            await asyncio.sleep(0.5)
    finally:
        for part in (service, report, slack):
            part.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert set(parts) >= {"evaluator", "report", "slack", "host"}
    slack_beat = parts["slack"]["heartbeat"]
    assert isinstance(slack_beat, dict)
    assert slack_beat["counters"]["lag.notifications"] == 0
    evaluator = parts["evaluator"]["heartbeat"]
    assert isinstance(evaluator, dict)
    assert evaluator["counters"]["rejected"] == 1
    assert evaluator["counters"]["dead_lettered"] == 1
    assert list(evaluator["rejected"]) == ["JSON is malformed: invalid character (byte N)"]
    assert parts["host"]["state"] == "silent"
    assert parts["evaluator"]["state"] == "ok"
    code, _ = await asyncio.to_thread(status, config, capsys)
    assert code == 1, "a silent agent makes status exit 1"


def test_status_lists_silent_parts_first_with_their_rejects() -> None:
    now = 10_000.0
    beats = [
        Heartbeat(
            host="a", agent="evaluator", version="1", interval=10, ts=now - 5, counters={"evaluated": 7}
        ),
        Heartbeat(host="b", agent="slack", version="1", interval=10, ts=now - 20),
        Heartbeat(host="c", agent="host", version="1", interval=10, ts=now - 31, rejected={"bad\x1b[2J": 3}),
    ]
    statuses = judge(beats, now)
    assert [(s.host, s.state) for s in statuses] == [("c", "silent"), ("b", "late"), ("a", "ok")]
    text = render(statuses)
    assert "evaluated=7" in text
    assert "rejected 3x: bad?[2J" in text, "terminal escapes from outside are neutralised"
