"""What the report sink decodes of each event: only the fields the rollups read, with the wire's bounds.

A metric batch's label sets stay raw JSON until a sample of a metric the report reads needs
them, so the thousands of labels an agent sends each cycle cost a scan, not a dict each. None of
these types can hold a reference cycle, so the garbage collector need not track the thousands a
second the sink decodes (gc=False).
"""

from __future__ import annotations

import sys
from typing import Annotated, cast

import msgspec

from bus.events import (
    SUBJECT_MISMATCH,
    Alert,
    AlertStatus,
    EventDecodeError,
    HealthEvent,
    MetricBatch,
    Status,
    any_event,
    partly_refused,
    salvage_batch,
)
from bus.limits import MAX_LABELS, MAX_SAMPLES, MAX_TEXT, LabelValue, Name
from bus.subjects import Subjects

# JSON has no NaN, but 1e999 decodes as infinity: refused here, as bus.events.Sample does.
Finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
NO_LABELS = msgspec.Raw(b"{}")


class Point(msgspec.Struct, frozen=True, gc=False):
    """One sample: labels undecoded (`labels_of` decodes and checks them)."""

    name: Name
    value: Finite
    labels: msgspec.Raw = NO_LABELS


class Batch(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="kind", tag="metrics"):
    host: Name
    agent: Name
    ts: float
    samples: Annotated[list[Point], msgspec.Meta(max_length=MAX_SAMPLES)]


class Check(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="kind", tag="health"):
    host: Name
    agent: Name
    target: Name
    status: Status
    latency: float | None = None
    ts: float
    event: Name | None = None


class Change(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="kind", tag="alert"):
    fingerprint: Name
    rule: Name
    severity: Name
    status: AlertStatus
    labels: Annotated[dict[Name, LabelValue], msgspec.Meta(max_length=MAX_LABELS)]
    summary: Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
    starts_at: float
    ends_at: float | None = None


Input = Batch | Check | Change
_DECODERS: dict[str, msgspec.json.Decoder[Input]] = {
    "metrics": msgspec.json.Decoder(Batch),
    "health": msgspec.json.Decoder(Check),
    "alerts": msgspec.json.Decoder(Change),
}
EXPECTED: dict[str, type[MetricBatch] | type[HealthEvent] | type[Alert]] = {
    "metrics": MetricBatch,
    "health": HealthEvent,
    "alerts": Alert,
}
_encode = msgspec.json.Encoder().encode
_labels = msgspec.json.Decoder(Annotated[dict[Name, LabelValue], msgspec.Meta(max_length=MAX_LABELS)])


class Refused(Exception):
    """A payload the sink sets aside, with the reason it is counted under."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PartlyRefused(Refused):
    """A metric batch refused for some of its samples: `event` holds the others, to take in."""

    def __init__(self, reason: str, event: Batch) -> None:
        super().__init__(reason)
        self.event = event


def decode(family: str, data: bytes, subject: str = "") -> Input:
    """The fields the rollups read of an event of `family`; `Refused` with the full decoder's reason
    (the evaluator's, so both count it alike) for anything the wire's types would refuse."""
    try:
        return _DECODERS[family].decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        pass
    # rare: decode it whole for the exact reason, or accept what only the narrow types refused
    try:
        event = any_event.decode(data, subject)
    except EventDecodeError as exc:
        # one bad sample must not take its batch's others out of the report
        salvaged = salvage_batch(data) if family == "metrics" else None
        if salvaged is None:
            raise Refused(exc.reason) from None
        batch, refused = salvaged
        raise PartlyRefused(partly_refused(refused), cast("Batch", narrow(batch))) from None
    expected = EXPECTED[family]
    if not isinstance(event, expected):
        raise Refused(f"a {type(event).__name__} on this stream, expected {expected.__name__}")
    return narrow(event)


def check_source(subjects: Subjects, family: str, event: Input, subject: str) -> None:
    """`Refused` if a metric batch or check names another host, agent or target than the subject
    it came on (as the evaluator refuses it: the server's permissions go by the subject)."""
    if isinstance(event, Change):
        return
    target = event.target if isinstance(event, Check) else ""
    if subjects.source(family, event.host, event.agent, target) != subject:
        raise Refused(SUBJECT_MISMATCH)


def narrow(event: MetricBatch | HealthEvent | Alert) -> Input:
    """The narrow form of a whole event (for callers holding decoded events, as tests do)."""
    if isinstance(event, MetricBatch):
        samples = [
            Point(s.name, s.value, msgspec.Raw(_encode(s.labels)) if s.labels else NO_LABELS)
            for s in event.samples
        ]
        return Batch(host=event.host, agent=event.agent, ts=event.ts, samples=samples)
    if isinstance(event, HealthEvent):
        return Check(
            host=event.host,
            agent=event.agent,
            target=event.target,
            status=event.status,
            latency=event.latency,
            ts=event.ts,
            event=event.event,
        )
    return Change(
        fingerprint=event.fingerprint,
        rule=event.rule,
        severity=event.severity,
        status=event.status,
        labels=event.labels,
        summary=event.summary,
        starts_at=event.starts_at,
        ends_at=event.ends_at,
    )


def labels_of(raw: msgspec.Raw) -> dict[str, str]:
    """A sample's labels, checked against the wire's bounds (ValueError if over them)."""
    try:
        return _labels.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"labels: {exc}") from None
