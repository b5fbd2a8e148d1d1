"""Reading back what the streams keep (the last hour, day or week), bounded in messages and points."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bus.events import Event, EventDecodeError, MetricBatch, any_event, from_its_source
from bus.jetstream import stream_name
from bus.subjects import Subjects

log = logging.getLogger(__name__)

READ_TIMEOUT = 2.0  # seconds without a message before a read gives up


@dataclass
class Read:
    """What one read found: the events in stream order, and whether the range was cut."""

    events: list[Event] = field(default_factory=list)
    start: float = 0.0  # where the events begin: later than asked when the range held too many
    truncated: bool = False
    malformed: int = 0


async def _subscribe(js: JetStreamContext, subject: str, stream: str, start: float) -> tuple[Any, int]:
    """An ordered consumer of `subject` from `start`, and how many messages it has to deliver."""
    sub = await js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=dt.datetime.fromtimestamp(start, dt.UTC),
        ),
    )
    info = await sub.consumer_info()
    # a push consumer may have sent some already: they count as much as those still to come
    delivered = info.delivered.consumer_seq if info.delivered is not None else 0
    return sub, int(info.num_pending or 0) + int(delivered or 0)


async def read_range(
    js: JetStreamContext,
    subjects: Subjects,
    family: str,
    subject: str,
    start: float,
    end: float,
    limit: int,
) -> Read:
    """Events on `subject` (within `family`'s stream) stored from `start` to `end`, `limit` at most.

    A range holding more than `limit` starts later, so that the newest part is what is shown.
    """
    stream = stream_name(subjects.prefix, family)
    read = Read(start=start)
    if limit <= 0:
        return read
    try:
        sub, total = await _subscribe(js, subject, stream, start)
        if total > limit:
            await sub.unsubscribe()
            read.truncated = True
            read.start = end - (end - start) * limit / total
            sub, total = await _subscribe(js, subject, stream, read.start)
        try:
            for _ in range(min(total, limit)):
                msg = await sub.next_msg(timeout=READ_TIMEOUT)
                stamp = msg.metadata.timestamp
                if stamp is not None and stamp.timestamp() > end:
                    break
                try:
                    event = any_event.decode(msg.data, msg.subject)
                except EventDecodeError:
                    read.malformed += 1
                    continue
                if from_its_source(subjects, event, msg.subject):
                    read.events.append(event)
                else:
                    read.malformed += 1
        finally:
            await sub.unsubscribe()
    except (NotFoundError, nats.errors.Error, TimeoutError) as exc:  # no stream yet, or an outage
        log.warning("console: cannot read %s history: %s", family, exc)
    return read


Key = tuple[str, str]  # (series name, metric)


def downsample(
    batches: list[Event],
    metrics: dict[str, str],
    label: str,
    start: float,
    end: float,
    points: int,
    pick: Callable[[MetricBatch], bool] = lambda _: True,
) -> dict[Key, list[tuple[float, float]]]:
    """Series by (`label`'s value, short metric name) with one point (the largest) per step."""
    step = max((end - start) / max(points, 1), 1.0)
    out: dict[Key, dict[float, float]] = {}
    for batch in batches:
        if not isinstance(batch, MetricBatch) or not pick(batch):
            continue
        slot = batch.ts - batch.ts % step
        for sample in batch.samples:
            short = metrics.get(sample.name)
            name = sample.labels.get(label) if label else batch.host
            if short is None or name is None:
                continue
            series = out.setdefault((name, short), {})
            series[slot] = max(series.get(slot, sample.value), sample.value)
    return {key: sorted(values.items()) for key, values in out.items()}


class HistoryCache:
    """Reads kept for a short while, so that reloading a page does not read the stream again."""

    def __init__(self, keep: float = 30.0) -> None:
        self.keep = keep
        self._entries: dict[tuple[str, str, int], tuple[float, Read]] = {}

    def get(self, key: tuple[str, str, int], now: float) -> Read | None:
        found = self._entries.get(key)
        if found is not None and now - found[0] < self.keep:
            return found[1]
        return None

    def put(self, key: tuple[str, str, int], now: float, read: Read) -> None:
        if len(self._entries) > 64:
            self._entries.clear()
        self._entries[key] = (now, read)
