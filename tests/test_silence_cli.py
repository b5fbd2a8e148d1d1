"""`silence add` when NATS takes the connection but JetStream does not answer: one line, no traceback."""

from __future__ import annotations

import argparse
import types
from typing import Any

import nats.errors
import nats.js.errors
import pytest

from bus.records import SilenceStore
from jarvis_monitor import evaluator_cli
from jarvis_monitor.commands import EXIT_FAILURE
from tests.test_console_app import MemoryKV


class UnansweredKV(MemoryKV):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def put(self, key: str, value: bytes) -> int:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        nats.js.errors.ServiceUnavailableError(),
        nats.errors.NoRespondersError(),
        nats.errors.ConnectionClosedError(),
    ],
)
def test_silence_add_with_jetstream_unanswered_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: Exception
) -> None:
    class Connected:
        nc = types.SimpleNamespace(last_error=None, jetstream=lambda: None)
        subjects = types.SimpleNamespace(prefix="jarvis")

        async def close(self) -> None:
            pass

    async def connect(*args: Any, **kwargs: Any) -> Connected:
        return Connected()

    async def open_buckets(js: Any, prefix: str) -> tuple[None, SilenceStore]:
        return None, SilenceStore(UnansweredKV(error))  # type: ignore[arg-type]

    monkeypatch.setattr(evaluator_cli, "connect", connect)
    monkeypatch.setattr(evaluator_cli, "open_buckets", open_buckets)
    args = argparse.Namespace(
        matchers=["host=web01"], start=None, duration="1h", until=None, comment="disk swap", author="ops"
    )
    config = types.SimpleNamespace(bus=types.SimpleNamespace(user=None))
    assert evaluator_cli.cmd_silence_add(args, config) == EXIT_FAILURE  # type: ignore[arg-type]
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"JetStream did not answer ({type(error).__name__})" in err
