"""Following container logs: one stream per selected container, tallied within bounds, reported each cycle.

Each cycle a followed container gets its counts and rates as samples, a health check on target
`log:<name>` (warning while its error lines make a burst, quoting the last of them) and its error
and warning lines as `LogBatch`es for the logs stream, where `jarvis-monitor logs` finds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from collections.abc import Collection as Names
from dataclasses import dataclass

import aiodocker
import aiohttp

from agents.container_logs import (
    FrameDecoder,
    LineSplitter,
    LogTally,
    LogWatchConfig,
    batches,
    compile_patterns,
    is_watched,
)
from agents.container_streams import STREAM_ERRORS
from agents.runner import Check, Collection, LogBatch
from bus import vocabulary as vocab
from bus.events import Sample, Status
from bus.redact import redact_text

log = logging.getLogger(__name__)

LOG_TARGET = vocab.LOG_TARGET
SPLIT_LIMIT = 64 * 1024  # longest log line held in memory; the rest of it is skipped
# A stream holds one of the log client's connections (aiohttp pools 100) while its container
# runs; containers beyond this many are reported as not followed rather than left waiting.
MAX_FOLLOWED = 90
# After each read, a log's socket is left alone this long (lines are reported once a cycle).
COALESCE = 0.25
GATHER_BELOW = 64 * 1024
# no read timeout: a log may be quiet for days
FOLLOW_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=30)


@dataclass
class _Watched:
    """One container whose log is followed: its tally survives restarts and recreation."""

    tally: LogTally
    labels: dict[str, str]
    # wall time its last stream ended: following again after an engine outage starts there,
    # so lines read before the outage are not counted twice
    resume_at: float = 0.0


async def _gather_more(transport: asyncio.BaseTransport, seconds: float) -> None:
    """Leave the socket unread a moment: a busy log then arrives many lines a read, not one.

    Each wake-up of the loop for one line costs more than all the work done with it.
    """
    if not isinstance(transport, asyncio.ReadTransport) or transport.is_closing():
        return
    transport.pause_reading()
    try:
        await asyncio.sleep(seconds)
    finally:
        if not transport.is_closing():
            transport.resume_reading()


class LogFollowers:
    """The log streams of the selected containers, by container id, and their tallies, by name."""

    def __init__(
        self,
        config: LogWatchConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        limit: int = MAX_FOLLOWED,
        coalesce: float = COALESCE,
    ) -> None:
        self.config = config
        self.coalesce = coalesce
        self.clock = clock
        self.wall_clock = wall_clock
        self.limit = limit
        self._errors = compile_patterns(config.errors, "errors")
        self._warnings = compile_patterns(config.warnings, "warnings")
        self._watched: dict[str, _Watched] = {}  # by container name
        self._tasks: dict[str, asyncio.Task[None]] = {}  # by container id
        self._refused: set[str] = set()  # names selected but over the limit, since the last report
        self._refused_before: set[str] = set()  # and in the report before: warned of already

    @property
    def following(self) -> int:
        """Log streams open now."""
        return len(self._tasks)

    @property
    def lines_read(self) -> int:
        """Lines read from the logs of the containers tallied now, since they were first followed."""
        return sum(watched.tally.lines_read for watched in self._watched.values())

    def selects(self, name: str, labels: dict[str, str]) -> bool:
        return is_watched(name, labels, self.config.containers, self.config.labels)

    def follow(
        self, docker: aiodocker.Docker, container_id: str, name: str, labels: dict[str, str], since: float
    ) -> None:
        """Follow a container's log from `since` (wall time), unless it is followed already."""
        if container_id in self._tasks:
            return
        if len(self._tasks) >= self.limit:
            if name not in self._refused and name not in self._refused_before:
                log.warning("container agent: log of %s not followed: %d are already", name, self.limit)
            self._refused.add(name)
            return
        watched = self._watched.get(name)
        if watched is None:
            tally = LogTally(self.config, self._errors, self._warnings, self.clock())
            watched = self._watched[name] = _Watched(tally, labels)
        watched.labels = labels
        since = max(since, watched.resume_at)
        task = asyncio.create_task(self._read(docker, container_id, watched, since))
        self._tasks[container_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(container_id, None))

    async def _read(
        self, docker: aiodocker.Docker, container_id: str, watched: _Watched, since: float
    ) -> None:
        """Tally lines until the container stops (the engine then ends the stream)."""
        splitter = LineSplitter(SPLIT_LIMIT)
        tally, clock = watched.tally, self.clock
        # the engine's own time stamps: a kept line says when it was written, not when read
        params = {"stdout": "1", "stderr": "1", "follow": "1", "timestamps": "1", "since": f"{since:.6f}"}
        try:
            shown = await docker.containers.container(container_id).show()
            frames = FrameDecoder(raw=bool((shown.get("Config") or {}).get("Tty")))
            # read as it comes, many frames a read: aiodocker's log() awaits twice a frame, which
            # costs more than everything done with the line after
            path = f"containers/{container_id}/logs"
            async with docker._query(path, params=params, timeout=FOLLOW_TIMEOUT) as response:
                try:
                    connection = response.connection
                    transport = connection.transport if connection is not None else None
                    async for data in response.content.iter_any():
                        now = clock()
                        for line in splitter.feed(frames.feed(data)):
                            tally.add(line, now)
                        # a big read says more is waiting: read on, so a busy log never falls behind
                        if transport is not None and self.coalesce > 0 and len(data) < GATHER_BELOW:
                            await _gather_more(transport, self.coalesce)
                finally:
                    response.close()  # aiodocker's _query leaves a cancelled response open
            for line in splitter.flush():
                tally.add(line, clock())
        except STREAM_ERRORS as exc:
            reason = redact_text(str(exc) or type(exc).__name__)
            log.info("container agent: log of %s no longer followed: %s", container_id[:12], reason)
        finally:
            watched.resume_at = self.wall_clock()

    def report(self, collection: Collection, present: Names[str]) -> None:
        """Each followed container's counts, rates, log check and kept lines since the last report."""
        now, wall = self.clock(), self.wall_clock()
        for name, watched in list(self._watched.items()):
            summary = watched.tally.drain(now, wall)
            labels = watched.labels
            per_second = 1 / summary.period if summary.period > 0 else 0.0
            values = {
                vocab.CONTAINER_LOG_ERRORS: summary.errors,
                vocab.CONTAINER_LOG_WARNINGS: summary.warnings,
                vocab.CONTAINER_LOG_ERROR_RATE: round(summary.errors * per_second, 3),
                vocab.CONTAINER_LOG_WARNING_RATE: round(summary.warnings * per_second, 3),
                vocab.CONTAINER_LOG_DROPPED: summary.dropped,
            }
            collection.samples += [Sample(metric, float(value), labels) for metric, value in values.items()]
            status: Status = "warning" if summary.burst else "ok"
            collection.checks.append(
                Check(
                    LOG_TARGET.format(name=name),
                    status,
                    detail=summary.detail(),
                    event="log" if summary.errors or summary.warnings else None,
                    labels={**labels, "container": name},
                )
            )
            for number, run in enumerate(batches(summary.lines)):
                # the counts of what was not kept ride on the first message only
                dropped, unkept = (summary.dropped, summary.unkept) if number == 0 else (0, 0)
                collection.logs.append(LogBatch(name, run, dict(labels), dropped, unkept))
            if name not in present:  # removed: its last counts are out, stop tallying
                del self._watched[name]
        for name in sorted(self._refused & set(present)):
            detail = f"log not followed: this agent follows {self.limit} logs at most"
            collection.checks.append(Check(LOG_TARGET.format(name=name), "unknown", detail=detail))
        self._refused_before, self._refused = self._refused, set()

    async def close(self) -> None:
        """Stop following every log."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
