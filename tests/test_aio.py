"""The shared asyncio helpers: Backoff, wait_unless, and cancel_and_wait (even through a lost cancel)."""

from __future__ import annotations

import asyncio
import random

import pytest

from bus.aio import Backoff, cancel_and_wait, wait_unless


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # as a lost cancellation looks to the loop around it

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task], retry=0.01), timeout=5)
    assert task.cancelled()
    assert swallowed == 1


async def test_finished_tasks_are_left_as_they_are() -> None:
    async def done() -> int:
        return 1

    task = asyncio.create_task(done())
    await task
    await cancel_and_wait([task])
    assert task.result() == 1


def test_backoff_doubles_from_first_up_to_the_cap_with_jitter_below_each_ceiling() -> None:
    backoff = Backoff(0.5, 4.0, rng=random.Random(7))
    waits = [backoff.next() for _ in range(6)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= w <= c for w, c in zip(waits, ceilings, strict=True))
    assert backoff.attempts == 6
    backoff.reset()
    assert backoff.next() <= 0.5


def test_backoff_without_jitter_is_exact_and_bad_settings_are_refused() -> None:
    backoff = Backoff(1, 8, jitter=0)
    assert [backoff.next() for _ in range(5)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError, match="0 < first <= cap"):
        Backoff(0, 1)
    with pytest.raises(ValueError, match="jitter"):
        Backoff(1, 2, jitter=2)


async def test_wait_unless_returns_early_when_stopped() -> None:
    stopped = asyncio.Event()
    asyncio.get_running_loop().call_soon(stopped.set)
    assert await asyncio.wait_for(wait_unless(stopped, 3600), timeout=5)
    assert not await wait_unless(asyncio.Event(), 0)
