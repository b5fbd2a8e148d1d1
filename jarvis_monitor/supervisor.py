"""The supervisor of each part of `up`: a part that fails is logged with its traceback, reported on
the bus as a critical health event of its own, and restarted with backoff while the rest runs on."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bus import vocabulary as vocab
from bus.aio import Backoff
from bus.events import HealthEvent, Status
from bus.publisher import Publisher
from bus.redact import redact_text

log = logging.getLogger(__name__)

RESTART_FIRST = 1.0  # seconds before the first restart of a part that failed
RESTART_CAP = 60.0  # the longest wait between restarts of a part that keeps failing
HEALTHY_AFTER = 60.0  # a restarted part that has run this long is well again: "ok", backoff afresh
MAX_REASON = 1000  # characters of the exception shown on the bus; the log has all of it


class Service(Protocol):
    """A long-running part: an agent's run loop, the evaluator, a sink."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class RestartPolicy:
    """How a failed part is restarted: backoff from `first` doubling up to `cap`, with jitter."""

    first: float = RESTART_FIRST
    cap: float = RESTART_CAP
    jitter: float = 0.5
    healthy_after: float = HEALTHY_AFTER


DEFAULT_RESTART = RestartPolicy()


@dataclass(frozen=True)
class Part:
    """A part of the stack: its name on the bus, its name in logs, and how to make a fresh one."""

    name: str
    label: str
    make: Callable[[], Service]


@dataclass(frozen=True)
class Failure:
    """Why a part ended without being asked to: one line for the bus, the traceback for the log."""

    reason: str
    trace: str = ""

    @classmethod
    def of(cls, exc: BaseException, doing: str = "failed") -> Failure:
        # exception texts may quote URLs with credentials; neither the log nor the bus may carry them
        trace = redact_text("".join(traceback.format_exception(exc)))
        return cls(f"{doing}: {redact_text(repr(exc))}", "\n" + trace.rstrip())


class Supervisor:
    """Runs one part until stopped, making a fresh one after each failure, with capped backoff."""

    def __init__(
        self,
        part: Part,
        publisher: Publisher,
        host: str,
        *,
        first: Service | None = None,
        policy: RestartPolicy = DEFAULT_RESTART,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.part = part
        self.publisher = publisher
        self.host = host
        self.backoff = Backoff(policy.first, policy.cap, jitter=policy.jitter)
        self.healthy_after = policy.healthy_after
        self.restarts = 0
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._current = first  # the instance running (or made at start and about to run)
        self._stopping = asyncio.Event()
        self._failing = False  # failed, and not yet run for `healthy_after` since

    def stop(self) -> None:
        """Stop the part running now, and make no new one."""
        self._stopping.set()
        if self._current is not None:
            self._current.stop()

    async def run(self) -> None:
        """Run the part until `stop()`; its failures are reported and retried, never raised."""
        while not self._stopping.is_set():
            failure = await self._run_once()
            if failure is None:
                return
            await self._restart_later(failure)

    async def _run_once(self) -> Failure | None:
        """Make (unless made already) and run one instance; why it ended unasked, None if stopped."""
        try:
            part = self._current if self._current is not None else self.part.make()
        except Exception as exc:
            return Failure.of(exc, "could not be made")
        self._current = part
        if self._stopping.is_set():  # the stop came while it was being made
            return None
        healthy = asyncio.create_task(self._healthy_later()) if self._failing else None
        try:
            await part.run()
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            return Failure.of(exc)  # a cancel leaking out of the part's own tasks, not ours
        except Exception as exc:
            return Failure.of(exc)
        finally:
            self._current = None
            if healthy is not None:
                healthy.cancel()
        if self._stopping.is_set():
            return None
        return Failure("returned without being asked to stop")

    async def _restart_later(self, failure: Failure) -> None:
        delay = self.backoff.next()
        self.restarts += 1
        self._failing = True
        log.error(
            "%s %s; restart %d in %.1fs, the rest of the stack runs on%s",
            self.part.label,
            failure.reason,
            self.restarts,
            delay,
            failure.trace,
        )
        reason = failure.reason[:MAX_REASON]
        await self._report("critical", f"{reason}; restart {self.restarts} in {delay:.1f}s")
        sleeper = asyncio.ensure_future(self._sleep(delay))
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((sleeper, stopper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()

    async def _healthy_later(self) -> None:
        """After `healthy_after` of running since a restart: report the part well, backoff afresh."""
        await self._sleep(self.healthy_after)
        self._failing = False
        self.backoff.reset()
        log.info("%s has run for %gs since its restart: healthy again", self.part.label, self.healthy_after)
        await self._report(
            "ok", f"running again for {self.healthy_after:g}s after {self.restarts} restart(s)"
        )

    async def _report(self, status: Status, detail: str) -> None:
        target = vocab.SUPERVISOR_TARGET
        event = HealthEvent(
            host=self.host,
            agent=self.part.name,
            target=target,
            status=status,
            detail=detail,
            ts=self._wall_clock(),
        )
        await self.publisher.publish(self.publisher.subjects.health(self.host, self.part.name, target), event)
