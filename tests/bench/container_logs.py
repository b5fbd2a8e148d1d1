"""The log follower's CPU for 30 containers each writing ~100 lines/s: `python -m tests.bench container_logs`.

Starts 30 busybox containers (`--network none`, labelled, removed at the end) that each print ten
lines every 0.08 s, about 100 a second with the loop's own time (one ERROR, one WARNING, eight
INFO), then measures this process's CPU as a share of one core over the same window for: a bare
aiodocker loop that follows the same logs (timestamps on) and counts newlines, the baseline; and
the agent's `LogFollowers` with the default config, reporting every second (counts, checks, kept
lines cut into batches and encoded). Rounds alternate, so both see the same engine and machine load.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiodocker

from agents.container_follow import LogFollowers
from agents.container_logs import LogWatchConfig
from agents.runner import Collection
from bus.events import encode
from tests.integration.docker_env import Containers, docker, docker_available, ensure_image

CONTAINERS = 30
WINDOW = 10.0  # seconds measured per round
ROUNDS = 5
WRITER = (
    "while true; do echo 'ERROR psycopg2.OperationalError: could not connect to server'; "
    "echo 'WARNING slow query took 1204 ms'; "
    'for i in 1 2 3 4 5 6 7 8; do echo "INFO GET /api/v1/items/$i 200 12ms"; done; sleep 0.08; done'
)


@dataclass(frozen=True)
class Round:
    """One measured window: this process's CPU seconds, the wall time, and the lines read."""

    cpu: float
    wall: float
    lines: int

    @property
    def share(self) -> float:
        return self.cpu / self.wall

    @property
    def per_line_us(self) -> float:
        return self.cpu / max(self.lines, 1) * 1e6


async def _measure(follow: Callable[[], Awaitable[Callable[[], Awaitable[int]]]]) -> Round:
    """CPU, wall time and lines read from starting `follow`'s followers to stopping them WINDOW later."""
    cpu, wall = time.process_time(), time.perf_counter()
    stop = await follow()
    await asyncio.sleep(WINDOW)
    lines = await stop()
    return Round(time.process_time() - cpu, time.perf_counter() - wall, lines)


async def bare(ids: list[str]) -> Callable[[], Awaitable[int]]:
    """The baseline: aiodocker following each log and counting newlines, nothing else."""
    client = aiodocker.Docker()
    count = [0]

    async def read(container_id: str) -> None:
        stream = client.containers.container(container_id).log(
            stdout=True, stderr=True, follow=True, timestamps=True, since=f"{time.time():.6f}"
        )
        async for chunk in stream:
            count[0] += chunk.count("\n")

    tasks = [asyncio.create_task(read(container_id)) for container_id in ids]

    async def stop() -> int:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await client.close()
        return count[0]

    return stop


async def ours(ids: list[str]) -> Callable[[], Awaitable[int]]:
    """The agent's followers with the default log config, reported (and batches encoded) every second."""
    client = aiodocker.Docker()
    followers = LogFollowers(LogWatchConfig())
    for number, container_id in enumerate(ids):
        followers.follow(client, container_id, f"c{number}", {"container": f"c{number}"}, time.time())

    async def cycles() -> None:
        while True:
            await asyncio.sleep(1.0)
            collection = Collection()
            followers.report(collection, {f"c{n}" for n in range(len(ids))})
            for batch in collection.logs:
                encode(batch.to_event("bench", "container", time.time()))

    reporter = asyncio.create_task(cycles())

    async def stop() -> int:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        await followers.close()
        await client.close()
        return followers.lines_read

    return stop


def _summary(rounds: list[Round]) -> str:
    share = statistics.median(r.share for r in rounds)
    per_line = statistics.median(r.per_line_us for r in rounds)
    low, high = min(r.share for r in rounds), max(r.share for r in rounds)
    return f"{share * 100:.1f} % of a core ({low * 100:.1f}-{high * 100:.1f}), {per_line:.1f} us/line"


async def run() -> list[tuple[str, str, str]]:
    """Rows of (measure, result, target)."""
    if not docker_available():
        return [("log follower, 30 containers x 100 lines/s", "skipped: no Docker engine", "small")]
    await asyncio.to_thread(ensure_image)
    containers = Containers()
    try:
        ids = await asyncio.gather(
            *(containers.run(f"log{i}", "sh", "-c", WRITER) for i in range(CONTAINERS))
        )
        await asyncio.sleep(2)  # every writer up and printing
        base: list[Round] = []
        agent: list[Round] = []
        for _ in range(ROUNDS):
            base.append(await _measure(lambda: bare(list(ids))))
            agent.append(await _measure(lambda: ours(list(ids))))
        engine = await docker("version", "--format", "{{.Server.Version}}")
    finally:
        await containers.remove_all()
    rate = statistics.median(r.lines / r.wall for r in base) / CONTAINERS
    ratio = statistics.median(a.per_line_us / b.per_line_us for a, b in zip(agent, base, strict=True))
    return [
        (
            f"lines written, per container ({CONTAINERS} containers)",
            f"{rate:.0f} lines/s ({rate * CONTAINERS:.0f} in all)",
            "~100 lines/s each",
        ),
        ("bare aiodocker follow loop (baseline)", _summary(base), "-"),
        ("LogFollowers, default config, report every 1 s", _summary(agent), "a few % of a core"),
        ("  CPU per line, LogFollowers / baseline", f"{ratio:.2f} x", "-"),
        ("Docker engine", engine, "-"),
    ]
