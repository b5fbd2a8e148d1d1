"""Streaming stats, one request per running container, keeping only each one's latest reading.

Older engines (20.10) answer a one-shot stats request only at their collector's next
one-second tick, so reading 50 containers one-shot costs a second a cycle; a stream that is
already open has a reading ready at any moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiodocker
import aiohttp

log = logging.getLogger(__name__)

# aiohttp pools at most 100 connections per client; the streams have a client of their own,
# and containers beyond this many are read one-shot instead.
MAX_STREAMS = 90
STREAM_ERRORS = (aiodocker.DockerError, aiohttp.ClientError, OSError, asyncio.TimeoutError)


class StatsStreams:
    """Keeps a stats stream open for each container it is told to follow."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, limit: int = MAX_STREAMS) -> None:
        self.clock = clock
        self.limit = limit
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._latest: dict[str, tuple[float, dict[str, Any]]] = {}

    def latest(self, container_id: str, max_age: float) -> dict[str, Any] | None:
        """The container's last reading, if one arrived within `max_age` seconds."""
        entry = self._latest.get(container_id)
        if entry is None or self.clock() - entry[0] > max_age:
            return None
        return entry[1]

    def follow(self, docker: aiodocker.Docker, container_ids: Iterable[str]) -> None:
        """Stream exactly these containers (up to the limit): open new streams, close the rest."""
        wanted = list(dict.fromkeys(container_ids))[: self.limit]
        for gone in self._tasks.keys() - set(wanted):
            self._tasks.pop(gone).cancel()
            self._latest.pop(gone, None)
        for container_id in wanted:
            if container_id not in self._tasks:
                self._tasks[container_id] = asyncio.create_task(self._read(docker, container_id))

    async def _read(self, docker: aiodocker.Docker, container_id: str) -> None:
        try:
            async for stats in docker.containers.container(container_id).stats(stream=True):
                if isinstance(stats, dict):
                    self._latest[container_id] = (self.clock(), stats)
        except STREAM_ERRORS as exc:
            log.debug("container agent: stats stream of %s ended: %r", container_id[:12], exc)
        finally:
            # a stream that ends (container stopped, engine gone) is opened again by the next follow()
            if self._tasks.get(container_id) is asyncio.current_task():
                del self._tasks[container_id]

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._latest.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, *STREAM_ERRORS):
                await task
