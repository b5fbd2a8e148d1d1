"""Blocking calls off the event loop: each in a daemon thread, one at a time per key, a few in all.

A call into the kernel can hang for good (statvfs of a hard NFS mount whose server is gone). Such a
call is abandoned by its caller, never joined: its thread runs on until the kernel answers, its key
is refused meanwhile so hung calls never pile up, and, being a daemon, it cannot hold up the exit
of the process as a thread of an executor would (those are joined at exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

MAX_BLOCKED = 16  # calls that may be in flight at once, hung ones included


class StillBlocked(RuntimeError):
    """The previous call of this key has not returned yet (or too many calls are in flight)."""


class BlockingCalls:
    """Runs blocking functions in daemon threads; at most one call per key and `limit` in all."""

    def __init__(self, limit: int = MAX_BLOCKED, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self._since: dict[str, float] = {}  # key -> when its call started; touched on the loop only

    def blocked_since(self, key: str) -> float | None:
        """When the call of `key` still in flight started (by `clock`); None when none is."""
        return self._since.get(key)

    @property
    def in_flight(self) -> int:
        return len(self._since)

    async def call(self, key: str, function: Callable[[], T], timeout: float | None = None) -> T:
        """`function()` in a thread of its own; TimeoutError after `timeout` (the call runs on).

        Raises StillBlocked at once when the last call of `key` has not returned, or `limit` calls
        are in flight.
        """
        since = self._since.get(key)
        if since is not None:
            raise StillBlocked(f"{key}: the previous call has not returned for {self.clock() - since:.0f}s")
        if len(self._since) >= self.limit:
            raise StillBlocked(f"{key}: {len(self._since)} blocking calls have not returned")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._since[key] = self.clock()

        def finish(outcome: tuple[bool, Any]) -> None:
            del self._since[key]
            if future.done():  # abandoned by its caller: the answer came too late
                return
            ok, value = outcome
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        def work() -> None:
            outcome: tuple[bool, Any] = (False, StillBlocked(f"{key}: the call ended abnormally"))
            try:
                outcome = (True, function())
            except Exception as exc:  # the caller's to handle, as if it had made the call itself
                outcome = (False, exc)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed while the call hung
                    loop.call_soon_threadsafe(finish, outcome)

        try:
            threading.Thread(target=work, name=f"blocking {key}", daemon=True).start()
        except RuntimeError as exc:  # the system refuses another thread
            del self._since[key]
            raise StillBlocked(f"{key}: cannot start a thread: {exc}") from None
        try:
            done, _ = await asyncio.wait((future,), timeout=timeout)
        finally:
            if not future.done():  # abandoned (timeout or cancelled); the thread's answer is dropped
                future.cancel()
        if not done:
            raise TimeoutError(f"{key}: no answer within {timeout:g}s")
        return future.result()
