"""`tail`'s printer: readable lines, raw JSON, and no payload that can stop it or harm a terminal."""

from __future__ import annotations

import io
import json

import msgspec
import pytest

from bus.events import HealthEvent, Heartbeat, MetricBatch, Sample
from jarvis_monitor.tail import TailPrinter, clean, describe


def printer(raw_json: bool = False) -> tuple[TailPrinter, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return TailPrinter(raw_json=raw_json, out=out, err=err), out, err


def test_a_metrics_line_shows_the_headline_samples_first() -> None:
    batch = MetricBatch(
        host="web01",
        agent="host",
        ts=0.0,
        interval=10.0,
        samples=[
            Sample("load.5", 0.5),
            Sample("cpu.percent", 12.5),
            Sample("disk.percent", 40, {"mount": "/"}),
        ],
    )
    line = describe(batch)
    assert "web01/host  3 samples  cpu.percent=12.5 disk.percent{/}=40" in line
    assert "load.5" not in line


def test_control_characters_from_the_outside_never_reach_the_terminal() -> None:
    event = HealthEvent(host="a\x1b[31mb", agent="probe", target="t\x9b2J", status="critical", ts=0.0)
    line = describe(event)
    assert "\x1b" not in line
    assert "\x9b" not in line
    assert "a?[31mb/probe/t?2J  CRITICAL" in line
    assert clean("x" * 100, limit=10) == "x" * 9 + "…"


def test_a_timestamp_no_calendar_holds_is_shown_not_fatal() -> None:
    tail, out, err = printer()
    tail.handle("s", msgspec.json.encode(Heartbeat(host="h", agent="a", version="1", interval=1, ts=1e300)))
    assert out.getvalue().startswith("??:??:?? heartbeat")
    assert tail.rejected == 0
    assert err.getvalue() == ""


def test_raw_json_escapes_c1_controls_and_stays_valid_json() -> None:
    tail, out, _ = printer(raw_json=True)
    data = json.dumps(
        {"kind": "health", "host": "a\x9bb", "agent": "x", "target": "t", "status": "ok", "ts": 1.0},
        ensure_ascii=False,
    ).encode()
    tail.handle("s", data)
    line = out.getvalue().rstrip("\n")
    assert "\x9b" not in line
    assert json.loads(line)["host"] == "a\x9bb"


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe",
        b"",
        b"null",
        b"[1]",
        b'{"kind": "metrics"}',
        b'{"kind": "nope"}',
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_every_undecodable_payload_is_counted_and_printing_goes_on(payload: bytes) -> None:
    tail, out, err = printer()
    tail.handle("jarvis.x", payload)
    tail.handle(
        "jarvis.x", msgspec.json.encode(Heartbeat(host="h", agent="a", version="1", interval=1, ts=1.0))
    )
    assert tail.received == 2
    assert tail.rejected == 1
    assert err.getvalue().startswith("rejected: undecodable payload on 'jarvis.x'")
    assert "heartbeat" in out.getvalue()


def test_an_event_from_a_newer_schema_is_shown_and_flagged() -> None:
    line = describe(Heartbeat(v=2, host="h", agent="a", version="9", interval=10, ts=0.0))
    assert line.endswith("[schema v2, newer than this tool]")
    assert "[schema" not in describe(Heartbeat(host="h", agent="a", version="9", interval=10, ts=0.0))
