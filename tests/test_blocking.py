"""Blocking calls off the loop: results and errors reach the caller, a hung call is abandoned and its
key refused until it returns, and the number of calls in flight is bounded."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agents.blocking import BlockingCalls, StillBlocked
from tests.conftest import wait_until


async def test_the_result_and_the_error_of_a_call_reach_the_caller() -> None:
    calls = BlockingCalls()

    def fails() -> int:
        raise PermissionError("/proc/1/io")

    assert await calls.call("a", lambda: threading.current_thread().name) == "blocking a"
    with pytest.raises(PermissionError, match="/proc/1/io"):
        await calls.call("b", fails)
    assert calls.in_flight == 0


async def test_a_hung_call_is_abandoned_and_its_key_refused_until_it_returns() -> None:
    calls, release = BlockingCalls(), threading.Event()
    with pytest.raises(TimeoutError, match=r"statvfs /nfs: no answer within 0\.05s"):
        await calls.call("statvfs /nfs", lambda: release.wait(10), timeout=0.05)

    with pytest.raises(StillBlocked, match="statvfs /nfs: the previous call has not returned"):
        await calls.call("statvfs /nfs", lambda: True)
    assert await calls.call("statvfs /", lambda: True)  # other keys are not held up

    release.set()
    await wait_until(lambda: calls.blocked_since("statvfs /nfs") is None, timeout=5)
    assert await calls.call("statvfs /nfs", lambda: "back") == "back"


async def test_no_more_than_the_limit_of_calls_are_in_flight() -> None:
    calls, release = BlockingCalls(limit=2), threading.Event()
    for key in ("one", "two"):
        with pytest.raises(TimeoutError):
            await calls.call(key, lambda: release.wait(10), timeout=0.01)

    with pytest.raises(StillBlocked, match="three: 2 blocking calls have not returned"):
        await calls.call("three", lambda: True)
    release.set()
    await wait_until(lambda: calls.in_flight == 0, timeout=5)


async def test_a_cancelled_caller_leaves_the_call_running_and_its_late_answer_is_dropped() -> None:
    calls, release = BlockingCalls(), threading.Event()

    def fails_late() -> None:
        release.wait(10)
        raise OSError("too late for anyone")

    caller = asyncio.create_task(calls.call("late", fails_late))
    await wait_until(lambda: calls.blocked_since("late") is not None)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    release.set()
    await wait_until(lambda: calls.in_flight == 0, timeout=5)  # and no "exception never retrieved"
