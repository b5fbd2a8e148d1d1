"""What every agent's config table has: whether it runs, how often, how long a collection may take."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from bus.limits import MAX_INTERVAL
from bus.units import Duration


class AgentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What every agent's config has."""

    enabled: Annotated[bool, Meta(description="run this agent in `up`")] = True
    interval: Annotated[Duration, Meta(description="time between collections (100ms to 1d)")] = Duration(10)
    jitter: Annotated[
        Duration,
        Meta(
            description="random delay up to this before each collection, so hosts do not "
            "all publish at the same instant"
        ),
    ] = Duration(0)
    warmup: Annotated[
        Duration,
        Meta(
            description="during the first interval after start, collect this often, so a fresh "
            "start shows on the bus at once; 0s turns it off"
        ),
    ] = Duration(1)
    timeout: Annotated[
        Duration | None,
        Meta(
            description="a collection still running after this is abandoned and reported; "
            "unset: the interval",
            examples=["8s"],
        ),
    ] = None
    phase: Annotated[
        Duration | None,
        Meta(
            description="collect at this offset into each interval of the wall clock (0s with a 10s "
            "interval: at :00, :10, :20...), as Telegraf's round_interval and collection_offset do, "
            "so that hosts, or another scraper, sample at the same instants; unset: from the start",
            examples=["0s", "2.5s"],
        ),
    ] = None

    def __post_init__(self) -> None:
        if self.interval.seconds < 0.1:
            raise ValueError("interval must be at least 100ms")
        if self.interval.seconds > MAX_INTERVAL:
            raise ValueError("interval must be at most 1d (the evaluator refuses events of a longer one)")
        if self.jitter.seconds >= self.interval.seconds:
            raise ValueError("jitter must be shorter than interval")
        if self.phase is not None and self.phase.seconds >= self.interval.seconds:
            raise ValueError("phase must be shorter than interval")
