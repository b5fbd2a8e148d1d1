"""The watchdog: pings an external dead-man URL while the pipeline is healthy, so that a dead
machine, a dead evaluator or a dead sink is noticed by something that is not on this machine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from bus.aio import wait_unless
from evaluator.watchdog_config import WATCHDOG_ENV as WATCHDOG_ENV  # re-exported with the config
from evaluator.watchdog_config import WatchdogConfig as WatchdogConfig
from evaluator.watchdog_config import WatchdogError as WatchdogError
from evaluator.watchdog_config import watchdog_url as watchdog_url

log = logging.getLogger(__name__)


@dataclass
class WatchdogStats:
    pings: int = 0  # answered with a status below 400
    failed: int = 0
    held: int = 0  # intervals without a ping because the pipeline was unhealthy


async def run_watchdog(
    url: str,
    config: WatchdogConfig,
    healthy: Callable[[], str | None],
    stopped: asyncio.Event,
    stats: WatchdogStats | None = None,
) -> None:
    """Ping `url` every interval while `healthy()` returns None (else it says why not) until stopped."""
    stats = stats if stats is not None else WatchdogStats()
    timeout = aiohttp.ClientTimeout(total=config.timeout.seconds)
    failing = False
    quiet_reason: str | None = None
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            reason = healthy()
            if reason is None:
                quiet_reason = None
                try:
                    async with session.get(url) as response:
                        ok = response.status < 400
                        problem = f"HTTP {response.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    ok, problem = False, type(exc).__name__  # the exception text may hold the URL
                if ok and failing:
                    log.info("watchdog: pinging again")
                elif not ok and not failing:
                    log.warning("watchdog: the ping failed (%s); retrying every %s", problem, config.interval)
                failing = not ok
                if ok:
                    stats.pings += 1
                else:
                    stats.failed += 1
            else:
                stats.held += 1
                if reason != quiet_reason:
                    quiet_reason = reason
                    log.warning("watchdog: not pinging while the pipeline is unhealthy: %s", reason)
            if await wait_unless(stopped, config.interval.seconds):
                return


def start_watchdog(
    config: WatchdogConfig,
    health_problem: Callable[[], str | None],
    stopping: asyncio.Event,
    stats: WatchdogStats,
) -> asyncio.Task[None] | None:
    """The watchdog as a task when one is configured; None (and why, logged) when not."""
    try:
        url = watchdog_url(config)
    except WatchdogError as exc:
        log.error("evaluator: no watchdog: %s", exc)
        return None
    if url is None:
        return None
    return asyncio.create_task(run_watchdog(url, config, health_problem, stopping, stats))
