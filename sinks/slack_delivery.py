"""Delivery policy for Slack: one message per second per channel, Retry-After, backoff, bounded attempts.

Pure except for the clock, which is passed in so that tests never wait for real seconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    """Monotonic time and sleeping; tests pass a fake that records sleeps and advances at once."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class DeliveryError(Exception):
    """Slack did not accept a message; `reason` is safe to log (no URL, no token)."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.attempts = 0  # set by the sender: how many attempts were made before giving up


class ChannelRateLimiter:
    """At most one message per `interval` per channel, and a channel paused by a 429 stays paused."""

    def __init__(self, interval: float, clock: Clock) -> None:
        self.interval = interval
        self.clock = clock
        self._next_free: dict[str, float] = {}

    def reserve(self, channel: str) -> float:
        """Take the channel's next free slot; returns how long to wait for it (0 when free now)."""
        now = self.clock.monotonic()
        slot = max(now, self._next_free.get(channel, now))
        self._next_free[channel] = slot + self.interval
        return slot - now

    def pause(self, channel: str, seconds: float) -> None:
        """Slack said 429: nothing goes to the channel for `seconds` from now."""
        until = self.clock.monotonic() + seconds
        self._next_free[channel] = max(self._next_free.get(channel, until), until)

    async def acquire(self, channel: str) -> None:
        """Wait for the channel's next slot."""
        wait = self.reserve(channel)
        if wait > 0:
            await self.clock.sleep(wait)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one message is retried before it is dead-lettered."""

    max_attempts: int = 8
    initial_backoff: float = 1.0
    max_backoff: float = 300.0

    def backoff(self, attempt: int) -> float:
        """Delay after failed attempt number `attempt` (1-based): doubling from the initial delay."""
        return min(self.max_backoff, self.initial_backoff * 2.0 ** min(attempt - 1, 40))

    def delay_after(self, attempt: int, error: DeliveryError) -> float | None:
        """How long to wait before the next attempt, or None when the message must be dead-lettered."""
        if not error.retryable or attempt >= self.max_attempts:
            return None
        if error.retry_after is not None:
            return float(error.retry_after)
        return self.backoff(attempt)
