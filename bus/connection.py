"""Connecting to NATS: credentials, TLS, reconnect with backoff, and counted publishing."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client, Server
from nats.errors import ConnectionClosedError, NoServersError, OutboundBufferLimitError

from bus.aio import Backoff
from bus.config import DEFAULT_URL, BusConfig, validate_url
from bus.events import Event, encode
from bus.redact import redact_url
from bus.subjects import Subjects, validate_prefix

log = logging.getLogger(__name__)


class BusConfigError(ValueError):
    """A bus setting that cannot be used (missing credentials file, bad TLS files)."""


class BusUnavailableError(ConnectionError):
    """No NATS server answered."""


def configured_urls(config: BusConfig, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The servers the user named: JARVIS_NATS_URL (comma-separated) first, then bus.servers."""
    override = environ.get("JARVIS_NATS_URL", "").strip()
    if override:
        urls = [u.strip() for u in override.split(",") if u.strip()]
        try:
            return [validate_url(url) for url in urls]
        except ValueError as exc:
            raise BusConfigError(f"JARVIS_NATS_URL: {exc}") from None
    return list(config.servers)


def server_urls(config: BusConfig, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The server list to connect to, falling back to the local default."""
    return configured_urls(config, environ) or [DEFAULT_URL]


def _read_secret(path: str, key: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise BusConfigError(f"bus.{key}: cannot read {path}: {exc.strerror}") from None


@dataclass(frozen=True, repr=False)
class Credentials:
    """The secrets resolved from files and the environment; repr never shows them."""

    user: str | None = None
    password: str | None = None
    token: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password=***, token=***)"


def resolve_credentials(config: BusConfig, environ: Mapping[str, str] = os.environ) -> Credentials:
    """Read password and token from their files or JARVIS_NATS_PASSWORD / JARVIS_NATS_TOKEN."""
    password = environ.get("JARVIS_NATS_PASSWORD") or None
    if config.password_file:
        password = _read_secret(config.password_file, "password_file")
    token = environ.get("JARVIS_NATS_TOKEN") or None
    if config.token_file:
        token = _read_secret(config.token_file, "token_file")
    user = config.user or environ.get("JARVIS_NATS_USER") or None
    if password and not user:
        raise BusConfigError("bus.user: a password is set but no user")
    for key in ("nkey_seed_file", "creds_file"):
        path = getattr(config, key)
        if path and not Path(path).is_file():
            raise BusConfigError(f"bus.{key}: no such file {path}")
    return Credentials(user=user, password=password, token=token)


def tls_context(config: BusConfig) -> ssl.SSLContext | None:
    """An SSL context from bus.tls, or None when TLS is not configured."""
    tls = config.tls
    if not tls.enabled:
        return None
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path and not Path(path).is_file():
            raise BusConfigError(f"bus.tls.{key}: no such file {path}")
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file and tls.key_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise BusConfigError(f"bus.tls: cannot use the certificate files: {exc}") from None
    return context


RECONNECT_FIRST = 0.1  # seconds before the first reconnect attempt


def reconnect_delay(attempt: int, cap: float, rng: random.Random | None = None) -> float:
    """The wait before attempt `attempt` (from 0): the shared Backoff from 0.1 s, capped at `cap`.

    nats-py counts the failed attempts of each server itself, so the wait is computed from its count.
    """
    if cap <= 0:
        return 0.0
    backoff = Backoff(min(RECONNECT_FIRST, cap), cap, rng=rng)
    backoff.attempts = attempt
    return backoff.next()


@dataclass
class PublishStats:
    """What went wrong with publishing, reported in heartbeats so a loss is never silent."""

    dropped: int = 0
    errors: int = 0


@dataclass
class Bus:
    """A NATS connection with the contract's subjects and counted, never-raising publishes."""

    nc: Client
    subjects: Subjects
    name: str
    stats: PublishStats = field(default_factory=PublishStats)
    # bus.replicas, for the parts that make a stream or bucket the evaluator has not made yet
    replicas: int = 1

    async def publish(self, subject: str, event: Event) -> bool:
        """Publish `event`; a full reconnect buffer or a closed connection is counted, not raised."""
        try:
            await self.nc.publish(subject, encode(event))
        except OutboundBufferLimitError:
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                log.warning("reconnect buffer full, %d publishes dropped so far", self.stats.dropped)
            return False
        except (ConnectionClosedError, nats.errors.Error, OSError) as exc:
            self.stats.errors += 1
            log.warning("publish to %s failed: %s", subject, exc)
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what is buffered (waiting up to `timeout` for a reconnect) and close.

        `timeout` 0 is for a server known to be gone: nothing is waited for, what is buffered is lost.
        """
        nc = self.nc
        if nc.is_closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while nc.is_reconnecting and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if nc.is_connected and timeout > 0:
            try:
                await nc.flush(timeout=max(1, round(deadline - loop.time())))
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("final flush failed: %s", exc)
        elif nc.pending_data_size:
            log.warning(
                "closing with no server to flush to: %d buffered bytes not delivered", nc.pending_data_size
            )
        limit = max(1.0, deadline - loop.time()) if timeout > 0 else 0.5
        try:
            await asyncio.wait_for(nc.close(), limit)
        except TimeoutError:  # a stop must end: what was flushed above is all that could be saved
            log.warning("closing the NATS connection timed out")
        except OSError as exc:  # nats-py drains a transport the outage already broke
            log.warning("closing the NATS connection: %s", exc)


async def connect(
    config: BusConfig,
    name: str,
    *,
    servers: Sequence[str] | None = None,
    wait: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> Bus:
    """Connect as component `name`; with `wait`, keep retrying until a server answers.

    Once connected the client reconnects forever with backoff, buffering publishes meanwhile.
    """
    urls = list(servers) if servers else server_urls(config, environ)
    creds = resolve_credentials(config, environ)
    # the environment names the inbox beside the user, so one file serves every part (deploy/compose.yaml)
    inbox = environ.get("JARVIS_NATS_INBOX_PREFIX", "").strip() or config.inbox_prefix
    try:
        validate_prefix(inbox)
    except ValueError:
        raise BusConfigError(f"JARVIS_NATS_INBOX_PREFIX: {inbox!r} is not a subject prefix") from None
    cap = config.max_reconnect_delay.seconds

    def pick_server(pool: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
        server = min(pool, key=lambda s: s.reconnects)
        return server, reconnect_delay(server.reconnects, cap)

    last_error: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        last_error[:] = [exc]
        log.debug("nats: %s", exc)

    async def on_disconnected() -> None:
        if nc.is_closed:  # our own close(), not an outage
            return
        log.warning("%s: disconnected from NATS, buffering publishes", name)

    async def on_reconnected() -> None:
        url = nc.connected_url
        log.warning("%s: reconnected to %s", name, redact_url(url.geturl()) if url else "NATS")

    options: dict[str, Any] = {
        "servers": urls,
        "name": name,
        "connect_timeout": config.connect_timeout.seconds,
        "allow_reconnect": True,
        # Bounded for the first connect so that it fails instead of hanging; unbounded after.
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.2,
        "reconnect_to_server_handler": pick_server,
        "pending_size": config.reconnect_buffer,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
        "tls": tls_context(config),
        "user": creds.user,
        "password": creds.password,
        "token": creds.token,
        "nkeys_seed": config.nkey_seed_file,
        "user_credentials": config.creds_file,
        "inbox_prefix": inbox,
    }
    shown = ", ".join(redact_url(u) for u in urls)
    # nats-py can hang in a failed TLS handshake (nats.py#718): bound the whole first connect.
    first_connect_limit = 2 * len(urls) * (config.connect_timeout.seconds + 1) + 1
    attempt = 0
    while True:
        nc = Client()
        try:
            await asyncio.wait_for(nc.connect(**options), first_connect_limit)
        except (TimeoutError, NoServersError, OSError, nats.errors.Error) as exc:
            reason = str(last_error[0] if last_error else exc) or type(exc).__name__
            if not wait:
                raise BusUnavailableError(f"cannot reach NATS at {shown}: {reason}") from None
            if attempt == 0:
                log.warning("%s: waiting for NATS at %s (%s)", name, shown, reason)
            await asyncio.sleep(reconnect_delay(attempt, cap))
            attempt += 1
            continue
        nc.options["max_reconnect_attempts"] = -1
        log.info("%s: connected to %s", name, shown)
        return Bus(nc=nc, subjects=Subjects(config.prefix), name=name, replicas=config.replicas)
