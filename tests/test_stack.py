"""Stopping the stack: a part that does not return after its stop is named, then cancelled (only noted
when the server it waits on is gone)."""

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


async def test_a_part_waiting_on_a_dead_server_is_cancelled_with_a_note_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def wait_on_the_dead_server() -> None:
        await asyncio.Event().wait()

    stuck = asyncio.create_task(wait_on_the_dead_server(), name="evaluator")
    with caplog.at_level(logging.INFO):
        await asyncio.wait_for(_finish([stuck], grace=0.05, server_gone=True), timeout=5)

    assert stuck.cancelled()
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith("evaluator cancelled: it was waiting in")
    assert record.getMessage().endswith("on the server that is gone")
