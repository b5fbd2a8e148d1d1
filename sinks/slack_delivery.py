"""Delivery policy for Slack: one message per second per channel, Retry-After, backoff for a bounded time.

Pure except for the clock, which is passed in so that tests never wait for real seconds: an outage
of hours runs in milliseconds on a fake clock.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from bus.aio import Backoff

T = TypeVar("T")

# A 429 with `Retry-After: 0` must not turn into a tight loop against Slack.
MIN_RATE_LIMIT_WAIT = 1.0
DEADLINE_SLACK = 0.001


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

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        credentials: bool = False,
        too_long: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.too_long = too_long  # Slack refused the message's size or blocks: a short one may do
        # Slack refuses the token or webhook: tried again until someone fixes it, never given up on
        self.credentials = credentials
        self.attempts = 0  # set by the sender: requests made for this message before giving up
        self.failing_for = 0.0  # set by the sender: seconds of transient failures before giving up


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
    """How patiently one message is retried: for a time, not a number of attempts.

    A 429 is Slack alive and asking for patience: its Retry-After is honoured (capped at
    `max_backoff`) and never brings the message closer to the dead-letter subject. 5xx, network
    errors and timeouts back off (jitter, cap) for `max_retry_time` from the first of them. A token
    or webhook that Slack refuses backs off the same way for as long as it is refused.
    """

    max_retry_time: float = 6 * 3600.0
    initial_backoff: float = 1.0
    max_backoff: float = 300.0
    jitter: float = 0.5

    def backoff(self, rng: random.Random | None = None) -> Backoff:
        return Backoff(self.initial_backoff, self.max_backoff, jitter=self.jitter, rng=rng)

    def rate_limit_wait(self, retry_after: float) -> float:
        """The pause a 429 asks for, within reason."""
        return min(self.max_backoff, max(MIN_RATE_LIMIT_WAIT, retry_after))


# Told of every retry: the channel, the error, the wait before the next attempt.
RetryHook = Callable[[str, DeliveryError, float], None]


class Sender:
    """Makes one Slack call succeed: under the channel's rate limit, retried as the policy says."""

    def __init__(
        self,
        policy: RetryPolicy,
        limiter: ChannelRateLimiter,
        clock: Clock,
        *,
        on_retry: RetryHook | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self.limiter = limiter
        self.clock = clock
        self.on_retry = on_retry
        self._rng = rng
        # tasks waiting for a slot or a retry: nothing of theirs is with Slack, stopping loses nothing
        self._waiting: set[asyncio.Future[Any]] = set()

    async def send(self, channel: str, call: Callable[[], Awaitable[T]]) -> T:
        """The result of `call`; raises the DeliveryError it gave up on (permanent, or out of time)."""
        backoff = self.policy.backoff(self._rng)
        failing_since: float | None = None
        attempts = 0
        while True:
            await self._wait(self.limiter.acquire(channel))
            attempts += 1
            try:
                return await call()
            except DeliveryError as caught:
                error = caught
            error.attempts = attempts
            if not error.retryable:
                raise error
            now = self.clock.monotonic()
            if error.credentials:  # no notification of any channel gets through: none is given up
                failing_since = None
                wait = backoff.next()
                self._retrying(channel, error, wait)
                await self._wait(self.clock.sleep(wait))
                continue
            if error.retry_after is not None:
                # Slack answers again: an outage before this is over, and its clock with it
                failing_since = None
                backoff.reset()
                wait = self.policy.rate_limit_wait(error.retry_after)
                self.limiter.pause(channel, wait)
                self._retrying(channel, error, wait)
                continue
            if failing_since is None:
                failing_since = now
            error.failing_for = now - failing_since
            left = failing_since + self.policy.max_retry_time - now
            if left < DEADLINE_SLACK:  # the last attempt was at the deadline, give or take rounding
                raise error
            wait = min(backoff.next(), left)
            self._retrying(channel, error, wait)
            await self._wait(self.clock.sleep(wait))

    def waiting(self, task: asyncio.Future[Any]) -> bool:
        """Is `task` sending, and waiting for a slot or a retry rather than for Slack's answer?"""
        return task in self._waiting

    async def _wait(self, waiting: Awaitable[None]) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._waiting.add(task)
        try:
            await waiting
        finally:
            if task is not None:
                self._waiting.discard(task)

    def _retrying(self, channel: str, error: DeliveryError, wait: float) -> None:
        if self.on_retry is not None:
            self.on_retry(channel, error, wait)
