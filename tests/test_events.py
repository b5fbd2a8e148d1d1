"""The event types on the wire: encoding, decoding, and refusing what is not an event."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import events
from bus.events import (
    SCHEMA_VERSION,
    Alert,
    Codec,
    Event,
    EventDecodeError,
    HealthEvent,
    Heartbeat,
    LogLine,
    LogLines,
    MetricBatch,
    Notification,
    Sample,
    any_event,
    encode,
)

TS = 1_700_000_000.25

ALERT = Alert(
    fingerprint="3f2a9c",
    rule="HostCpuHigh",
    severity="critical",
    status="firing",
    labels={"host": "web.01", "mount": "/"},
    summary="cpu above 90% for 5m",
    value=97.5,
    starts_at=TS,
)

SAMPLE_EVENTS: dict[str, Event] = {
    "metrics": MetricBatch(
        host="web.01",
        agent="host",
        ts=TS,
        interval=10.0,
        samples=[
            Sample("cpu.percent", 12.5),
            Sample("disk.percent", 81.0, {"mount": "/var/lib/docker"}),
        ],
    ),
    "health": HealthEvent(
        host="web.01",
        agent="probe",
        target="backend api",
        status="critical",
        latency=None,
        detail="timed out after 5s",
        ts=TS,
    ),
    "heartbeat": Heartbeat(host="web.01", agent="host", version="0.1.0", interval=10.0, ts=TS, dropped=3),
    "alert": ALERT,
    "notification": Notification(
        id="n-1",
        group_key="{}:{alertname=HostCpuHigh}",
        route="slack",
        status="firing",
        alerts=[ALERT, msgspec.structs.replace(ALERT, status="resolved", ends_at=TS + 60)],
        ts=TS,
    ),
    "logs": LogLines(
        host="web.01",
        agent="container",
        container="jarvis-backend",
        ts=TS,
        lines=[LogLine(TS - 3, "error", "ERROR psycopg2.OperationalError: connection refused")],
        labels={"service": "backend"},
        dropped=2,
    ),
}

CODECS: dict[str, Codec[Any]] = {
    "metrics": events.metric_batch,
    "health": events.health_event,
    "heartbeat": events.heartbeat,
    "alert": events.alert,
    "notification": events.notification,
    "logs": events.log_lines,
}

KINDS = sorted(SAMPLE_EVENTS)


def test_every_event_type_has_a_sample() -> None:
    """Each event type is exercised by the round-trip tests below."""
    assert {type(e) for e in SAMPLE_EVENTS.values()} == set(events.EVENT_TYPES)


@pytest.mark.parametrize("kind", KINDS)
def test_event_round_trips_through_its_own_codec(kind: str) -> None:
    event = SAMPLE_EVENTS[kind]
    assert CODECS[kind].decode(encode(event)) == event


@pytest.mark.parametrize("kind", KINDS)
def test_any_event_decodes_each_kind_to_its_type(kind: str) -> None:
    event = SAMPLE_EVENTS[kind]
    decoded = any_event.decode(encode(event))
    assert type(decoded) is type(event)
    assert decoded == event


@pytest.mark.parametrize("kind", KINDS)
def test_payload_is_plain_json_with_version_and_kind(kind: str) -> None:
    """What `nats sub` shows is ordinary JSON carrying `v` and `kind`."""
    payload = json.loads(encode(SAMPLE_EVENTS[kind]))
    assert payload["v"] == SCHEMA_VERSION
    assert payload["kind"] == kind


def test_payload_keeps_the_original_host_name() -> None:
    """Only subjects are sanitised: the payload carries the host exactly as it was."""
    payload = json.loads(encode(SAMPLE_EVENTS["metrics"]))
    assert payload["host"] == "web.01"


def test_sample_without_labels_decodes_with_empty_labels() -> None:
    """Readers may leave `labels` out of a sample; it decodes to an empty mapping."""
    data = (
        b'{"kind":"metrics","v":1,"host":"h","agent":"host","ts":1.0,"interval":10.0,'
        b'"samples":[{"name":"cpu.percent","value":3}]}'
    )
    batch = events.metric_batch.decode(data)
    assert batch.samples == [Sample("cpu.percent", 3.0, {})]


def test_specific_codec_refuses_another_kind() -> None:
    data = encode(SAMPLE_EVENTS["metrics"])
    with pytest.raises(EventDecodeError, match="health"):
        events.health_event.decode(data, "jarvis.health.h.a.t")


VALID = encode(SAMPLE_EVENTS["health"])


def _health_with(**changes: object) -> bytes:
    payload = json.loads(VALID)
    payload.update(changes)
    return json.dumps(payload).encode()


def _health_without(field: str) -> bytes:
    payload = json.loads(VALID)
    del payload[field]
    return json.dumps(payload).encode()


BAD_PAYLOADS = {
    "empty": b"",
    "garbage bytes": b"\xff\xfe\x00garbage",
    "not json": b"cpu=12",
    "truncated json": VALID[: len(VALID) // 2],
    "array": b"[1, 2, 3]",
    "empty array": b"[]",
    "null": b"null",
    "number": b"42",
    "string": b'"health"',
    "object without kind": b'{"host": "h"}',
    "unknown kind": _health_with(kind="log"),
    "missing field": _health_without("status"),
    "wrong field type": _health_with(ts="yesterday"),
    "status outside the enum": _health_with(status="broken"),
    "wrong nested type": encode(SAMPLE_EVENTS["metrics"]).replace(b'"mount"', b'"mount":1,"x"'),
}


@pytest.mark.parametrize("data", BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_bad_payload_raises_event_decode_error_with_subject_and_size(data: bytes) -> None:
    subject = "jarvis.health.web_01.probe.api"
    with pytest.raises(EventDecodeError) as info:
        any_event.decode(data, subject)
    exc = info.value
    assert isinstance(exc, ValueError)
    assert exc.subject == subject
    assert exc.size == len(data)
    assert subject in str(exc)
    assert f"({len(data)} bytes)" in str(exc)


def _with_interval(kind: str, interval: object) -> bytes:
    """The sample event of `kind` as JSON text, with `interval` written as given (1e999 too)."""
    data = encode(SAMPLE_EVENTS[kind])
    stated = json.dumps(json.loads(data)["interval"])
    return data.replace(f'"interval":{stated}'.encode(), f'"interval":{interval}'.encode())


@pytest.mark.parametrize("interval", [0, -10, 86400.5, 1e9, "1e999"])
def test_an_interval_past_a_day_or_not_positive_is_refused(interval: object) -> None:
    """A heartbeat claiming a year between beats would keep a dead agent's agent_down from firing."""
    for kind in ("heartbeat", "metrics"):
        with pytest.raises(EventDecodeError, match=r"\$\.interval"):
            any_event.decode(_with_interval(kind, interval), "")
        assert any_event.decode(_with_interval(kind, 86400), "").interval == 86400  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", KINDS)
def test_every_strict_prefix_of_a_payload_is_refused(kind: str) -> None:
    """A payload cut anywhere (a truncated message) is an EventDecodeError, never a partial event."""
    data = encode(SAMPLE_EVENTS[kind])
    for end in range(len(data)):
        with pytest.raises(EventDecodeError):
            CODECS[kind].decode(data[:end], "s")


def test_deeply_nested_payload_is_an_event_decode_error() -> None:
    """A hostile payload (a few kB of nesting) is refused as undecodable, not a RecursionError."""
    depth = 5000
    data = b'{"a":' * depth + b"1" + b"}" * depth
    with pytest.raises(EventDecodeError):
        any_event.decode(data, "jarvis.metrics.h.a")


@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_raise_event_decode_error(data: bytes) -> None:
    """Whatever arrives on the bus, decoding gives an event or EventDecodeError, never another error."""
    try:
        decoded = any_event.decode(data, "s")
    except EventDecodeError:
        return
    assert isinstance(decoded, events.EVENT_TYPES)


_json = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["kind", "v", "host", "ts", "samples", "x"]), children)
    ),
    max_leaves=20,
)


@given(_json, st.sampled_from(KINDS))
def test_arbitrary_json_objects_decode_or_raise_event_decode_error(value: Any, kind: str) -> None:
    """Valid JSON of any shape, even one with a known `kind`, never raises anything else."""
    if isinstance(value, dict) and "kind" not in value:
        value["kind"] = kind
    data = json.dumps(value).encode()
    with contextlib.suppress(EventDecodeError):
        any_event.decode(data, "s")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_encode_never_produces_a_payload_its_codec_refuses(value: float) -> None:
    """A non-finite sample is refused when built or encoded, or decodes again; never a lost batch."""
    try:
        sample = Sample("http.latency", value)
        batch = MetricBatch(host="h", agent="probe", ts=TS, interval=10.0, samples=[sample])
        data = encode(batch)
    except (ValueError, TypeError, msgspec.EncodeError):
        return
    events.metric_batch.decode(data, "jarvis.metrics.h.probe")


def test_json_schema_defines_every_event_type() -> None:
    schema = events.json_schema()
    definitions = schema["$defs"]
    assert isinstance(definitions, dict)
    for tp in events.EVENT_TYPES:
        definition = definitions[tp.__name__]
        properties = definition["properties"]
        assert "v" in properties
        assert "kind" in properties
    refs = {ref["$ref"] for ref in schema["anyOf"]}  # type: ignore[attr-defined]
    assert refs == {f"#/$defs/{tp.__name__}" for tp in events.EVENT_TYPES}


def test_json_schema_pins_each_kind_to_its_tag() -> None:
    definitions = events.json_schema()["$defs"]
    assert isinstance(definitions, dict)
    tags = {
        name: definitions[name]["properties"]["kind"]["enum"]
        for name in (tp.__name__ for tp in events.EVENT_TYPES)
    }
    assert tags == {
        "MetricBatch": ["metrics"],
        "HealthEvent": ["health"],
        "Heartbeat": ["heartbeat"],
        "Alert": ["alert"],
        "Notification": ["notification"],
        "LogLines": ["logs"],
    }


def test_a_batch_refused_for_some_samples_gives_back_the_others_and_why() -> None:
    batch = {
        "v": 1,
        "kind": "metrics",
        "host": "web01",
        "agent": "host",
        "ts": 1.0,
        "interval": 10.0,
        "samples": [
            {"name": "disk.percent", "value": 95.0, "labels": {"mount": "/"}},
            {"name": "mem.percent", "value": 1e999},  # infinity: JSON has none, an agent's bug
            {"name": "net.recv_bytes", "value": 1.0, "labels": {"nic": "x" * 5000}},
        ],
    }
    data = json.dumps(batch).replace("Infinity", "1e999").encode()  # valid JSON, read as inf
    with pytest.raises(EventDecodeError):
        events.metric_batch.decode(data)
    salvaged = events.salvage_batch(data)
    assert salvaged is not None
    kept, refused = salvaged
    assert [(s.name, s.value, s.labels) for s in kept.samples] == [("disk.percent", 95.0, {"mount": "/"})]
    assert (kept.host, kept.agent, kept.ts, kept.interval) == ("web01", "host", 1.0, 10.0)
    assert len(refused) == 2
    assert refused[0] == "Number out of range - at `$.value`"
    assert events.salvage_batch(json.dumps({**batch, "host": 7}).encode()) is None, "the batch is wrong"
    assert events.salvage_batch(b"garbage") is None
