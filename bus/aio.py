"""asyncio helpers the parts share."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


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
