"""The console's config table: where it listens, the token that guards it, how much it remembers."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from bus.units import Duration

DEFAULT_PORT = 10201  # the runbook's "Access dashboards at http://localhost:10201"
TOKEN_ENV = "JARVIS_CONSOLE_TOKEN"
MIN_TOKEN = 16  # characters: a token shorter than this is guessable


class ConsoleConfigError(ValueError):
    """A console setting that cannot be used; the message starts with its key path."""


class ConsoleConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: Annotated[bool, Meta(description="run the web console (and /metrics) in `up`")] = True
    bind: Annotated[
        str,
        Meta(
            description="address to listen on; anything but loopback needs a token "
            "(token_file or JARVIS_CONSOLE_TOKEN)",
            examples=["0.0.0.0"],
        ),
    ] = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535, description="TCP port (0: any free port)")] = DEFAULT_PORT
    token_file: Annotated[
        str | None,
        Meta(
            description="file holding the access token (or set JARVIS_CONSOLE_TOKEN); with a token, "
            "every page asks for it once and keeps a session cookie",
            examples=["/etc/jarvis/console-token"],
        ),
    ] = None
    allowed_hosts: Annotated[
        list[str],
        Meta(
            description="without a token, the names the console answers to besides localhost, "
            "127.0.0.1 and ::1 (a page of another site that points its own name at 127.0.0.1 "
            "would otherwise read the console and add silences)",
            examples=[["monitor.internal"]],
        ),
    ] = []
    metrics_public: Annotated[
        bool, Meta(description="serve /metrics without the token even when one is configured")
    ] = False
    history: Annotated[
        Duration, Meta(description="how far back the pages' live charts and sparklines reach from memory")
    ] = Duration(6 * 3600)
    history_points: Annotated[
        int, Meta(ge=10, le=5000, description="points kept per series over `history` (bounds memory)")
    ] = 360
    max_series: Annotated[
        int,
        Meta(ge=10, description="hosts, containers and checks kept at most; more are counted and dropped"),
    ] = 20_000
    backfill: Annotated[
        int,
        Meta(ge=0, description="stored events read back at start to fill the charts (newest first)"),
    ] = 50_000
    log_lines: Annotated[int, Meta(ge=1, le=1000, description="latest error lines kept per container")] = 20


def is_loopback(bind: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`."""
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, repr=False)
class ConsoleSecrets:
    """The access token, if any; repr never shows it."""

    token: str | None = None

    def __repr__(self) -> str:
        return "ConsoleSecrets(token=***)"


def resolve_token(config: ConsoleConfig, environ: Mapping[str, str] = os.environ) -> ConsoleSecrets:
    """The token from token_file or JARVIS_CONSOLE_TOKEN; refuses a public bind without one."""
    token = environ.get(TOKEN_ENV, "").strip() or None
    source = TOKEN_ENV
    if config.token_file:
        source = "sinks.console.token_file"
        try:
            token = Path(config.token_file).read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ConsoleConfigError(f"{source}: cannot read {config.token_file}: {reason}") from None
        if token is None:
            raise ConsoleConfigError(f"{source}: {config.token_file} is empty")
    if token is not None and len(token) < MIN_TOKEN:
        raise ConsoleConfigError(f"{source}: the token must be at least {MIN_TOKEN} characters")
    if token is None and not is_loopback(config.bind):
        raise ConsoleConfigError(
            f"sinks.console.bind: {config.bind!r} is not loopback; set sinks.console.token_file or "
            f"{TOKEN_ENV} so that the console asks for a token"
        )
    return ConsoleSecrets(token=token)
