"""The run loop every agent shares: a drift-free schedule with jitter, a heartbeat per cycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol, TypeVar

from agents.blocking import StillBlocked
from agents.runner_config import AgentConfig as AgentConfig  # re-exported: the agents' configs extend it
from bus import vocabulary as vocab
from bus.events import HealthEvent, Heartbeat, LogLine, LogLines, MetricBatch, Sample, Status
from bus.publisher import Publisher
from bus.redact import redact_text

log = logging.getLogger(__name__)
T = TypeVar("T")

COLLECTOR_TARGET = vocab.COLLECTOR_TARGET  # health target of the agent's own collection

try:
    VERSION = version("jarvis-monitor")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0+unknown"


class _Overran(Exception):
    """The collection ran past its timeout."""


class _Stopped(Exception):
    """A stop was requested while collecting."""


@dataclass(frozen=True)
class Check:
    """The outcome of one check, before the run loop stamps host, agent and time on it."""

    target: str
    status: Status
    latency: float | None = None
    detail: str = ""
    event: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def to_event(self, host: str, agent: str, ts: float) -> HealthEvent:
        return HealthEvent(
            host=host,
            agent=agent,
            target=self.target,
            status=self.status,
            latency=self.latency,
            detail=self.detail,
            ts=ts,
            event=self.event,
            labels=self.labels,
        )


@dataclass(frozen=True)
class LogBatch:
    """Kept log lines of one container, before the run loop stamps host, agent and time on them."""

    container: str
    lines: list[LogLine]
    labels: dict[str, str] = field(default_factory=dict)
    dropped: int = 0
    unkept: int = 0

    def to_event(self, host: str, agent: str, ts: float) -> LogLines:
        return LogLines(
            host=host,
            agent=agent,
            container=self.container,
            ts=ts,
            lines=self.lines,
            labels=self.labels,
            dropped=self.dropped,
            unkept=self.unkept,
        )


@dataclass
class Collection:
    """What one collection produced."""

    samples: list[Sample] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    logs: list[LogBatch] = field(default_factory=list)


class Collector(Protocol):
    """One agent's collection step; `name` is its subject token (`host`, `container`, `probe`)."""

    name: str

    async def collect(self) -> Collection: ...


Emit = Callable[[Check], Awaitable[None]]


class Watcher(Protocol):
    """A collector that also follows a stream (Docker events, logs) and reports what happens at once."""

    async def watch(self, emit: Emit) -> None:
        """Run until cancelled, calling `emit` for each thing that must not wait for the next cycle."""
        ...


@dataclass(frozen=True)
class Schedule:
    """When each cycle is due: every `warmup` during the first interval, then every `interval`.

    Ticks sit at fixed offsets from `start` (or from `first`, the first regular tick, when the
    schedule is aligned to the wall clock), so the schedule never drifts. The warm-up makes a
    fresh start visible on the bus within a second, and gives CPU and I/O rates a real window
    at once, instead of leaving a new deployment silent for a whole interval.
    """

    start: float
    interval: float
    warmup: float = 0.0
    first: float | None = None  # the first regular tick; None: start + interval

    @classmethod
    def aligned(cls, start: float, wall: float, interval: float, warmup: float, phase: float) -> Schedule:
        """A schedule whose regular ticks fall where the wall clock modulo `interval` is `phase`."""
        ahead = (phase - wall) % interval or interval
        return cls(start, interval, warmup, first=start + ahead)

    @property
    def _first(self) -> float:
        return self.start + self.interval if self.first is None else self.first

    @property
    def warmup_ticks(self) -> int:
        """Ticks before the first regular one (including tick 0)."""
        if 0 < self.warmup < self.interval:
            # whole warm-up steps that fit, so the last one is never closer than a step to the
            # first regular tick
            return max(1, math.floor((self._first - self.start) / self.warmup + 1e-9))
        return 1

    def at(self, tick: int) -> float:
        warm = self.warmup_ticks
        if tick < warm:
            return self.start + tick * self.warmup
        return self._first + (tick - warm) * self.interval

    def after(self, tick: int, now: float) -> tuple[int, int]:
        """The tick to run after `tick` finished at `now`, and how many ticks it skips.

        A cycle that ran past later ticks skips them instead of running them back to back.
        """
        warm = self.warmup_ticks
        due = tick + 1
        while due < warm and self.at(due) < now:
            due += 1
        if due >= warm and self.at(due) < now:
            due = warm + math.ceil((now - self._first) / self.interval)
        return due, due - tick - 1


class AgentRunner:
    """Runs one collector on its schedule and publishes batches, checks and heartbeats."""

    def __init__(
        self,
        collector: Collector,
        publisher: Publisher,
        config: AgentConfig,
        host: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.collector = collector
        self.publisher = publisher
        self.config = config
        self.host = host
        self.clock = clock
        self.wall_clock = wall_clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._stopping = asyncio.Event()
        self.cycles = 0
        self.skipped = 0
        self.collect_errors = 0
        self._collector_failing = False

    @property
    def agent(self) -> str:
        return self.collector.name

    def stop(self) -> None:
        """Return from `run()` at once: between cycles, or abandoning a collection in progress."""
        self._stopping.set()

    async def _wait(self, seconds: float) -> bool:
        """Sleep `seconds` unless stopped first; True when stopped."""
        if self._stopping.is_set():
            return True
        if seconds <= 0:
            return False
        await self._unless_stopped(self._sleep(seconds))
        return self._stopping.is_set()

    async def _unless_stopped(
        self, work: Awaitable[T], timeout: float | None = None
    ) -> asyncio.Future[T] | None:
        """Run `work` until it is done (its finished future), or until `timeout` passes or a stop
        is requested (None: `work` was cancelled)."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait(
                (task, stopper), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopper.cancel()
        if task in done:
            return task
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return None

    async def run(self) -> None:
        """Collect every interval until `stop()`; never raises for a failing collector or bus."""
        watcher = asyncio.create_task(self._watch()) if hasattr(self.collector, "watch") else None
        try:
            await self._run_cycles()
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            close = getattr(self.collector, "close", None)  # sessions, engine connections
            if close is not None:
                try:
                    await close()
                except Exception as exc:
                    log.warning("%s agent: closing: %s", self.agent, redact_text(repr(exc)))

    async def _watch(self) -> None:
        """The collector's own stream; a watcher that fails is logged, and the cycles go on."""
        watch = getattr(self.collector, "watch")  # noqa: B009 - the Watcher protocol is optional
        try:
            await watch(self.emit)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("%s agent: watcher failed: %s", self.agent, redact_text(repr(exc)))

    async def emit(self, check: Check) -> None:
        """Publish one check now, outside the cycle."""
        await self._publish_check(check, self.wall_clock())

    async def _run_cycles(self) -> None:
        interval = self.config.interval.seconds
        warmup, phase = self.config.warmup.seconds, self.config.phase
        if phase is None:
            schedule = Schedule(self.clock(), interval, warmup)
        else:
            schedule = Schedule.aligned(self.clock(), self.wall_clock(), interval, warmup, phase.seconds)
        tick = 0
        while True:
            jittered = self.config.jitter.seconds and tick >= schedule.warmup_ticks
            delay = self._rng.uniform(0, self.config.jitter.seconds) if jittered else 0.0
            if await self._wait(schedule.at(tick) + delay - self.clock()):
                return
            await self.run_cycle(period=schedule.at(tick + 1) - schedule.at(tick))
            # Judge overrun by the collection alone: a jittered start must not cost a tick.
            tick, skipped = schedule.after(tick, self.clock() - delay)
            if skipped:
                self.skipped += skipped
                log.warning(
                    "%s agent: a cycle overran its %.1fs interval, skipped %d tick(s)",
                    self.agent,
                    interval,
                    skipped,
                )

    async def run_cycle(self, period: float | None = None) -> None:
        """One collection: publish its batch and checks, then the heartbeat.

        `period` is the time until the next cycle (shorter during the warm-up); the batch says it.
        """
        interval = self.config.interval.seconds
        timeout = self.config.timeout.seconds if self.config.timeout else interval
        ts = self.wall_clock()
        subjects = self.publisher.subjects
        try:
            collection = await self._collect(timeout)
        except _Stopped:
            log.info("%s agent: stop requested, collection in progress abandoned", self.agent)
            return
        except Exception as exc:  # one broken collector must not take the agent down
            self.collect_errors += 1
            # exception texts may quote URLs with credentials; the bus must never carry them
            reason, trace = f"timed out after {timeout:g}s", ""
            if isinstance(exc, StillBlocked):  # a hang already reported: no traceback every cycle
                reason = f"blocked: {redact_text(str(exc))}"
            elif not isinstance(exc, _Overran):
                reason = redact_text(repr(exc))
                trace = "\n" + redact_text("".join(traceback.format_exception(exc)))
            log.error("%s agent: collection failed: %s%s", self.agent, reason, trace)
            self._collector_failing = True
            await self._publish_check(Check(COLLECTOR_TARGET, "critical", detail=f"collection {reason}"), ts)
        else:
            if self._collector_failing:
                self._collector_failing = False
                await self._publish_check(Check(COLLECTOR_TARGET, "ok", detail="collection recovered"), ts)
            if collection.samples:
                batch = MetricBatch(
                    host=self.host,
                    agent=self.agent,
                    ts=ts,
                    interval=min(period or interval, interval),  # 86400.0000000005 is past the wire's bound
                    samples=collection.samples,
                )
                await self.publisher.publish(subjects.metrics(self.host, self.agent), batch)
            for lines in collection.logs:
                event = lines.to_event(self.host, self.agent, ts)
                await self.publisher.publish(subjects.logs(self.host, lines.container), event)
            for check in collection.checks:
                await self._publish_check(check, ts)
        self.cycles += 1
        await self.publisher.publish(subjects.heartbeat(self.host, self.agent), self.heartbeat(ts))

    async def _collect(self, timeout: float) -> Collection:
        """The collector's result, unless it overruns `timeout` or a stop is requested first."""
        finished = await self._unless_stopped(self.collector.collect(), timeout)
        if finished is not None:
            return finished.result()
        raise _Stopped if self._stopping.is_set() else _Overran

    def heartbeat(self, ts: float) -> Heartbeat:
        """A heartbeat carrying the counts of everything lost since the agent started."""
        stats = self.publisher.stats
        return Heartbeat(
            host=self.host,
            agent=self.agent,
            version=VERSION,
            interval=self.config.interval.seconds,
            ts=ts,
            dropped=stats.dropped,
            publish_errors=stats.errors,
            collect_errors=self.collect_errors,
        )

    async def _publish_check(self, check: Check, ts: float) -> None:
        event = check.to_event(self.host, self.agent, ts)
        await self.publisher.publish(
            self.publisher.subjects.health(self.host, self.agent, check.target), event
        )
