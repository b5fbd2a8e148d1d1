"""Heartbeats of the pipeline's own parts (evaluator, sinks), with their counters, every interval."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from bus.aio import wait_unless
from bus.connection import Bus
from bus.events import Heartbeat
from bus.limits import MAX_LABELS

PART_INTERVAL = 10.0  # seconds between a part's heartbeats
VERSION = "jarvis-monitor"


def _bounded(values: Mapping[str, int]) -> dict[str, int]:
    """At most MAX_LABELS entries, the largest kept: a heartbeat must always decode."""
    if len(values) <= MAX_LABELS:
        return dict(values)
    return dict(sorted(values.items(), key=lambda item: -item[1])[:MAX_LABELS])


async def beat(
    bus: Bus,
    host: str,
    part: str,
    counters: Callable[[], Mapping[str, int]],
    rejected: Callable[[], Mapping[str, int]],
    stopped: asyncio.Event,
    *,
    interval: float = PART_INTERVAL,
    clock: Callable[[], float] = time.time,
) -> None:
    """Publish `part`'s heartbeat every `interval` until `stopped`; a failed publish is counted by Bus."""
    subject = bus.subjects.heartbeat(host, part)
    while not stopped.is_set():
        heartbeat = Heartbeat(
            host=host,
            agent=part,
            version=VERSION,
            interval=interval,
            ts=clock(),
            dropped=bus.stats.dropped,
            publish_errors=bus.stats.errors,
            counters=_bounded(counters()),
            rejected=_bounded(rejected()),
        )
        await bus.publish(subject, heartbeat)
        if await wait_unless(stopped, interval):
            return
