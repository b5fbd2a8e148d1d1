"""Stopping the stack: a part that does not return after its stop is named, then cancelled."""

from __future__ import annotations

import asyncio
import logging

import pytest

from jarvis_monitor.stack import _finish


async def test_a_part_stuck_after_the_stop_is_named_with_where_it_waits_then_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def wait_forever() -> None:
        await asyncio.Event().wait()

    async def returns() -> None:
        return None

    stuck = asyncio.create_task(wait_forever(), name="EvaluatorService")
    fine = asyncio.create_task(returns(), name="host agent")
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(_finish([stuck, fine], grace=0.05), timeout=5)

    assert stuck.cancelled()
    assert fine.result() is None
    (record,) = caplog.records
    assert record.getMessage().startswith("EvaluatorService still running 0s after the stop, cancelling it")
    assert "wait_forever (test_stack.py:" in record.getMessage()
