"""The watchdog's config table and its URL, apart from the pinging: the config loads no HTTP client."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from bus.units import Duration

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
