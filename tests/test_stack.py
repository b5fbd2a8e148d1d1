"""Stopping the stack: a part that does not return after its stop is named, then cancelled (only noted
when the server it waits on is gone)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bus.jetstream import ProvisioningError
from bus.subjects import Subjects
from jarvis_monitor import stack
from jarvis_monitor.config import Config
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


class _Bus:
    """What provision_streams reads of a Bus."""

    class nc:
        @staticmethod
        def jetstream() -> object:
            return object()

    subjects = Subjects("jarvis")


async def test_provisioning_waits_for_a_cluster_node_still_joining(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[Exception | None] = [
        ProvisioningError(["stream JARVIS_ALERTS: no suitable peers for placement, peer offline"]),
        ProvisioningError(["KV bucket JARVIS_state: nats: timeout"]),
        None,
    ]

    async def provision(*_: object, **__: object) -> dict[str, str]:
        answer = answers.pop(0)
        if answer is not None:
            raise answer
        return {"JARVIS_ALERTS": "created"}

    monkeypatch.setattr(stack, "provision", provision)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    await stack.provision_streams(_Bus(), Config(), sleep=sleep)  # type: ignore[arg-type]
    assert answers == []
    assert len(slept) == 2


async def test_provisioning_refused_for_good_is_not_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def provision(*_: object, **__: object) -> dict[str, str]:
        nonlocal calls
        calls += 1
        raise ProvisioningError(["stream JARVIS_ALERTS: permissions violation"])

    monkeypatch.setattr(stack, "provision", provision)
    with caplog.at_level(logging.ERROR):
        await stack.provision_streams(_Bus(), Config())  # type: ignore[arg-type]
    assert calls == 1
    assert "events will not be persisted" in caplog.text
