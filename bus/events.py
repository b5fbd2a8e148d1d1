"""The events on the wire: msgspec Structs, each tagged by `kind` and versioned by `v`.

Other tools decode these from JSON, so a change here is a change of the public interface.
"""

from __future__ import annotations

import math
from typing import Annotated, Generic, Literal, TypeVar

import msgspec

from bus.limits import MAX_LABELS, MAX_SAMPLES, Interval, Labels, Name, Text
from bus.subjects import Subjects

SCHEMA_VERSION = 1

Status = Literal["ok", "warning", "critical", "unknown"]
Severity = Literal["critical", "warning", "info"]
# inactive: a pending alert whose condition stopped before it fired (never an incident)
AlertStatus = Literal["pending", "firing", "resolved", "inactive"]
NotificationStatus = Literal["firing", "resolved", "reminder"]
LogLevel = Literal["error", "warning"]
MAX_LOG_LINES = 1000  # lines in one LogLines message


# Events are plain data, never in a reference cycle: the garbage collector need not track them
# (consumers decode thousands a second, and the evaluator keeps every series' latest alert).
class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", gc=False):
    v: int = SCHEMA_VERSION


class Sample(msgspec.Struct, frozen=True, gc=False):
    """One measurement: a dotted lower-case metric name, its value and its labels.

    JSON has no NaN or infinity, so a non-finite value is refused here; agents skip such values.
    """

    name: Name
    value: float
    labels: Labels = {}

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError(f"sample {self.name} has a non-finite value ({self.value})")


class MetricBatch(_Event, frozen=True, kw_only=True, tag="metrics"):
    """All samples an agent collected in one cycle."""

    host: Name
    agent: Name
    ts: float
    interval: Interval
    samples: Annotated[list[Sample], msgspec.Meta(max_length=MAX_SAMPLES)]


class HealthEvent(_Event, frozen=True, kw_only=True, tag="health"):
    """The outcome of one check of one target."""

    host: Name
    agent: Name
    target: Name
    status: Status
    latency: float | None = None
    detail: Text = ""
    ts: float
    # what happened, for an event rather than a periodic check: die, oom, start, deployed, ...
    event: Name | None = None
    # context of the target (image, container id, URL, ...) for rules and messages
    labels: Labels = {}


class Heartbeat(_Event, frozen=True, kw_only=True, tag="heartbeat"):
    """An agent, or a part of the pipeline, saying it is alive; `dropped` counts publishes lost to a
    full reconnect buffer."""

    host: Name
    agent: Name
    version: Name
    interval: Interval
    ts: float
    dropped: int = 0
    publish_errors: int = 0
    collect_errors: int = 0
    # the evaluator's and the sinks' own counters since they started (processed, dead_lettered,
    # lag of each input, ...), and their rejected inputs by reason
    counters: Annotated[dict[Name, int], msgspec.Meta(max_length=MAX_LABELS)] = {}
    rejected: Annotated[dict[Name, int], msgspec.Meta(max_length=MAX_LABELS)] = {}


class Alert(_Event, frozen=True, kw_only=True, tag="alert"):
    """One state change of one alert series."""

    fingerprint: Name
    rule: Name
    severity: Severity
    status: AlertStatus
    labels: Labels
    summary: Text
    value: float | None = None
    starts_at: float
    ends_at: float | None = None
    description: Text = ""
    threshold: float | None = None
    # the series changes state too often: notified once as flapping, then quiet until stable
    flapping: bool = False
    # while flapping, and in the alert that says it is stable again: the firing episodes since
    # the flapping began and the seconds spent firing in them
    episodes: int = 0
    downtime: float = 0.0


class Notification(_Event, frozen=True, kw_only=True, tag="notification"):
    """A consolidated message for one group of alerts on one route."""

    id: Name
    group_key: Text
    route: Name
    status: NotificationStatus
    alerts: list[Alert]
    ts: float
    # where the route sends it (a Slack channel); sinks may map routes to channels of their own
    receiver: Name = ""
    # a notification too big for the server's max_payload is sent in parts: this is part `part`
    # of `parts` (1 of 1 when whole)
    part: int = 1
    parts: int = 1
    # the group's notification number, rising with each one (0: not known): a consumer that showed
    # a higher one already holds something older (a replay, a redelivery after a crash)
    seq: int = 0


class LogLine(msgspec.Struct, frozen=True, gc=False):
    """One kept log line: the engine's time stamp, its level, and its text cleaned and cut."""

    ts: float
    level: LogLevel
    text: Text


class LogLines(_Event, frozen=True, kw_only=True, tag="logs"):
    """The error and warning lines of one container's log from one cycle, oldest first."""

    host: Name
    agent: Name
    container: Name
    ts: float
    lines: Annotated[list[LogLine], msgspec.Meta(max_length=MAX_LOG_LINES)]
    # image, service, project: what the container's samples carry
    labels: Labels = {}
    # since the last batch: lines not read (over the per-container rate) and matching lines not
    # kept (over the per-cycle cap); counted, never silent
    dropped: int = 0
    unkept: int = 0


Event = MetricBatch | HealthEvent | Heartbeat | Alert | Notification | LogLines
EVENT_TYPES: tuple[type[Event], ...] = (MetricBatch, HealthEvent, Heartbeat, Alert, Notification, LogLines)

E = TypeVar("E", MetricBatch, HealthEvent, Heartbeat, Alert, Notification, LogLines, Event)


class EventDecodeError(ValueError):
    """A payload on the bus that is not the expected event; consumers count and skip it."""

    def __init__(self, subject: str, reason: str, size: int) -> None:
        super().__init__(f"undecodable payload on {subject!r} ({size} bytes): {reason}")
        self.subject = subject
        self.reason = reason
        self.size = size


# The server's permissions go by the subject, consumers by the body: an agent could otherwise speak
# for another host, or for a part of the pipeline (a forged evaluator heartbeat hides a dead one).
SUBJECT_MISMATCH = "the subject names another host, agent or target than the event"


def from_its_source(subjects: Subjects, event: Event, subject: str) -> bool:
    """Does an input name the host, agent (and target) of the subject it came on? Other events
    (published by the pipeline's parts alone) pass."""
    if isinstance(event, HealthEvent):
        return subjects.source("health", event.host, event.agent, event.target) == subject
    if isinstance(event, MetricBatch):
        return subjects.source("metrics", event.host, event.agent) == subject
    if isinstance(event, Heartbeat):
        return subjects.source("heartbeat", event.host, event.agent) == subject
    return True


class Codec(Generic[E]):
    """Encoder and decoder for one event type (or `Event`, for any of them)."""

    def __init__(self, tp: type[E]) -> None:
        self._decoder: msgspec.json.Decoder[E] = msgspec.json.Decoder(tp)

    def decode(self, data: bytes, subject: str = "") -> E:
        """Decode `data`, raising `EventDecodeError` for garbage or a payload of the wrong shape."""
        try:
            return self._decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EventDecodeError(subject, str(exc), len(data)) from None
        except RecursionError:  # absurdly deep nesting: hostile, never a crash
            raise EventDecodeError(subject, "payload nested too deeply", len(data)) from None


class _LooseBatch(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="metrics"):
    """A MetricBatch whose samples are read one by one (salvage_batch)."""

    v: int = SCHEMA_VERSION
    host: Name
    agent: Name
    ts: float
    interval: Interval
    samples: Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_SAMPLES)]


_loose_batch = msgspec.json.Decoder(_LooseBatch)
_sample = msgspec.json.Decoder(Sample)


def partly_refused(refused: list[str]) -> str:
    """The reason a salvaged batch's dead letter gives (the same from every consumer: one letter)."""
    return f"samples refused, the others taken in: {refused[0]}"


def salvage_batch(data: bytes) -> tuple[MetricBatch, list[str]] | None:
    """A batch refused for some of its samples: the batch of the others, and why each was refused.
    None when what is wrong is the batch itself (its host, its times, its shape)."""
    try:
        loose = _loose_batch.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    samples, refused = [], []
    for raw in loose.samples:
        try:
            samples.append(_sample.decode(raw))
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            refused.append(str(exc))
    if not refused:
        return None
    batch = MetricBatch(
        v=loose.v, host=loose.host, agent=loose.agent, ts=loose.ts, interval=loose.interval, samples=samples
    )
    return batch, refused


_encoder = msgspec.json.Encoder()


def encode(event: Event) -> bytes:
    """JSON bytes of an event, readable with the NATS CLI."""
    return _encoder.encode(event)


any_event: Codec[Event] = Codec(Event)  # type: ignore[arg-type]
metric_batch = Codec(MetricBatch)
health_event = Codec(HealthEvent)
heartbeat = Codec(Heartbeat)
alert = Codec(Alert)
notification = Codec(Notification)
log_lines = Codec(LogLines)


def json_schema() -> dict[str, object]:
    """JSON Schema of every event type, as printed by `jarvis-monitor schema`."""
    return msgspec.json.schema(Event)
