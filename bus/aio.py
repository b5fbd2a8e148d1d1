"""asyncio helpers the parts share: backoff, waiting unless stopped, cancelling and waiting."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterable
from typing import Any


class Backoff:
    """Exponential backoff with jitter and a cap: the one retry schedule of the whole code.

    The n-th wait (from 0) is `first * 2**n`, capped at `cap`, then drawn from the upper
    `jitter` share of it, so that many clients retrying together spread out. `reset()` after a
    success starts afresh.
    """

    __slots__ = ("_rng", "attempts", "cap", "first", "jitter")

    def __init__(
        self, first: float, cap: float, *, jitter: float = 0.5, rng: random.Random | None = None
    ) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"backoff needs 0 < first <= cap, got first {first}, cap {cap}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"backoff jitter must lie in [0, 1], got {jitter}")
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self.attempts = 0
        self._rng = rng or random.Random()

    def ceiling(self, attempt: int) -> float:
        """The wait before jitter after `attempt` failures (0: the first retry)."""
        return min(self.cap, self.first * 2.0 ** min(attempt, 60))

    def next(self) -> float:
        """The wait before the next attempt; counts one more failure."""
        ceiling = self.ceiling(self.attempts)
        self.attempts += 1
        return self._rng.uniform(ceiling * (1 - self.jitter), ceiling)

    def reset(self) -> None:
        self.attempts = 0


async def wait_unless(stopped: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`, or less if `stopped` is set first; True if it was."""
    if stopped.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopped.wait(), seconds)
    return stopped.is_set()


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], retry: float = 1.0) -> None:
    """Cancel `tasks` and wait until every one has ended.

    A cancellation can be lost (asyncio.wait_for in Python 3.11 drops it when the awaited call
    finishes at the same moment, and nats-py's fetch waits that way), leaving a loop running
    forever; so a task still running after `retry` seconds is cancelled again.
    """
    every = list(tasks)
    pending = {task for task in every if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry)
    for task in every:  # their errors were theirs to log; asyncio must not warn about them again
        if not task.cancelled():
            task.exception()
