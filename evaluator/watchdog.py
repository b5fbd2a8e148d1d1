"""The watchdog: pings an external dead-man URL while the pipeline is healthy, so that a dead
machine, a dead evaluator or a dead sink is noticed by something that is not on this machine."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import aiohttp
import msgspec
from msgspec import Meta

from bus.aio import wait_unless
from bus.units import Duration

log = logging.getLogger(__name__)

WATCHDOG_ENV = "JARVIS_WATCHDOG_URL"


class WatchdogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An external dead-man switch (healthchecks.io, Uptime Kuma push, Cronitor, ...)."""

    url_file: Annotated[
        str | None,
        Meta(
            description="file holding the URL to ping (or set JARVIS_WATCHDOG_URL); neither: no "
            "watchdog. The URL is a secret: never logged",
            examples=["/etc/jarvis-monitor/watchdog-url"],
        ),
    ] = None
    interval: Annotated[Duration, Meta(description="time between pings while healthy")] = Duration(60)
    timeout: Annotated[Duration, Meta(description="time allowed for one ping")] = Duration(10)

    def __post_init__(self) -> None:
        if self.interval.seconds <= 0 or self.timeout.seconds <= 0:
            raise ValueError("watchdog: interval and timeout must be > 0s")


@dataclass
class WatchdogStats:
    pings: int = 0  # answered with a status below 400
    failed: int = 0
    held: int = 0  # intervals without a ping because the pipeline was unhealthy


class WatchdogError(ValueError):
    """The watchdog URL cannot be had: the message names where it was looked for, never its value."""


def watchdog_url(config: WatchdogConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """The URL to ping: the file named in the config wins over the environment; None: no watchdog."""
    url = environ.get(WATCHDOG_ENV, "").strip() or None
    source = WATCHDOG_ENV
    if config.url_file:
        source = "evaluator.watchdog.url_file"
        try:
            url = Path(config.url_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise WatchdogError(f"{source}: cannot read {config.url_file}: {reason}") from None
    if url is not None and not url.startswith(("https://", "http://")):
        raise WatchdogError(f"{source}: not an http(s) URL")
    return url


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
