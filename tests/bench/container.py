"""Container agent cycle wall time over 50 running containers: `python -m tests.bench.container`.

Starts 50 tiny `sleep` containers (`--network none`, labelled, removed at the end) on the real
engine and times `collect()` as the agent runs it (watcher on, stats streams open), and the
one-shot path used when nothing watches (e.g. `once`), whose cost depends on the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time

from agents.container import ContainerAgentConfig, ContainerCollector
from agents.runner import Check
from tests.integration.docker_env import Containers, docker_available, ensure_image

CONTAINERS = 50
CYCLES = 10


async def _ignore(_: Check) -> None:
    return None


async def _timed_cycles(collector: ContainerCollector, cycles: int, gap: float) -> list[float]:
    times = []
    for _ in range(cycles):
        await asyncio.sleep(gap)
        start = time.perf_counter()
        collection = await collector.collect()
        times.append(time.perf_counter() - start)
        running = [s.value for s in collection.samples if s.name == "containers.running"]
        if running != [CONTAINERS]:
            raise RuntimeError(f"expected {CONTAINERS} running containers, saw {running}")
    return times


async def run() -> list[tuple[str, str, str]]:
    """Rows of (measure, result, target)."""
    if not docker_available():
        return [("container cycle, 50 containers", "skipped: no Docker engine", "< 1 s")]
    await asyncio.to_thread(ensure_image)
    containers = Containers()
    try:
        await asyncio.gather(*(containers.run(f"s{i}", "sleep", "3600") for i in range(CONTAINERS)))
        config = ContainerAgentConfig(filter_labels=[containers.label])

        watched = ContainerCollector(config)
        watcher = asyncio.create_task(watched.watch(_ignore))
        await watched.collect()  # opens the stats streams
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        steady = await _timed_cycles(watched, CYCLES, gap=1.0)
        cpu_share = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

        unwatched = ContainerCollector(config)
        await unwatched.collect()  # the first cycle also primes CPU and rates
        one_shot = await _timed_cycles(unwatched, 3, gap=0.0)
        await unwatched.close()
    finally:
        await containers.remove_all()
    return [
        (
            f"container cycle, {CONTAINERS} running, agent running (streams)",
            f"median {statistics.median(steady) * 1000:.0f} ms, max {max(steady) * 1000:.0f} ms",
            "well under 1 s",
        ),
        (
            f"agent CPU while watching {CONTAINERS} (streams, cycle every 1 s)",
            f"{cpu_share * 100:.1f} % of one core",
            "small",
        ),
        (
            f"container cycle, {CONTAINERS} running, one-shot stats (no watcher)",
            f"median {statistics.median(one_shot) * 1000:.0f} ms, max {max(one_shot) * 1000:.0f} ms",
            "< interval (10 s)",
        ),
    ]


def main() -> None:
    for measure, result, target in asyncio.run(run()):
        print(f"{measure:<58} {result:<30} (target {target})")


if __name__ == "__main__":
    main()
