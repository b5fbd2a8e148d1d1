"""The bus's own config: where NATS is, how to authenticate, and what JetStream keeps."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from bus.redact import redact_url
from bus.subjects import validate_prefix
from bus.units import Duration

DEFAULT_URL = "nats://127.0.0.1:4222"
# JetStream's own bounds on a stream's replicas.
MIN_REPLICAS = 1
MAX_REPLICAS = 5
URL_SCHEMES = ("nats", "tls", "ws", "wss")


def validate_url(url: str) -> str:
    """Return `url` if it names a NATS server (`nats://host:4222`), else raise ValueError."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    try:
        parts.port  # noqa: B018 - a port that is not a number raises here
        host = parts.hostname
    except ValueError:
        host = None
    if parts.scheme not in URL_SCHEMES or not host or re.search(r"\s", url):
        raise ValueError(
            f"invalid NATS URL {redact_url(url)!r}: write it as nats://host:4222 "
            f"(schemes: {', '.join(URL_SCHEMES)})"
        )
    return url


class TLSConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    ca_file: Annotated[
        str | None,
        Meta(
            description="CA bundle that signed the server's certificate",
            examples=["/etc/jarvis/ca.pem"],
        ),
    ] = None
    cert_file: Annotated[
        str | None,
        Meta(
            description="client certificate, for servers that verify clients",
            examples=["/etc/jarvis/client.pem"],
        ),
    ] = None
    key_file: Annotated[
        str | None,
        Meta(
            description="private key of the client certificate",
            examples=["/etc/jarvis/client-key.pem"],
        ),
    ] = None

    @property
    def enabled(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file))

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file must be given together")


# Size caps keep a monitoring host from filling its own disk; alerts are never capped.
DEFAULT_MAX_BYTES = {
    "metrics": 2 * 1024**3,
    "health": 1024**3,
    "heartbeat": 256 * 1024**2,
    "alerts": -1,
    "notifications": -1,
    "logs": 1024**3,
}
LOG_RETENTION = 7 * 86400.0  # the runbook's log retention


class StreamConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Retention of a stream that is never size-capped: alerts may not be dropped for space."""

    max_age: Annotated[Duration, Meta(description="how long messages are kept")] = Duration(30 * 86400)


class CappedStreamConfig(StreamConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_bytes: Annotated[
        Annotated[int, Meta(ge=-1)] | None,
        Meta(
            description="size cap in bytes, oldest dropped first; -1 for none; "
            "unset: 2 GiB metrics, 1 GiB health, 256 MiB heartbeat, 1 GiB logs",
            examples=[4294967296],
        ),
    ] = None


class LogStreamConfig(CappedStreamConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_age: Annotated[Duration, Meta(description="how long log lines are kept")] = Duration(LOG_RETENTION)


class StreamsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    metrics: Annotated[CappedStreamConfig, Meta(description="jarvis.metrics.>")] = CappedStreamConfig()
    health: Annotated[CappedStreamConfig, Meta(description="jarvis.health.>")] = CappedStreamConfig()
    heartbeat: Annotated[CappedStreamConfig, Meta(description="jarvis.heartbeat.>")] = CappedStreamConfig()
    logs: Annotated[
        LogStreamConfig, Meta(description="jarvis.logs.>: the containers' error and warning lines")
    ] = LogStreamConfig()
    alerts: Annotated[StreamConfig, Meta(description="jarvis.alerts.>, never size-capped")] = StreamConfig()
    notifications: Annotated[StreamConfig, Meta(description="jarvis.notifications.>, never size-capped")] = (
        StreamConfig()
    )
    duplicate_window: Annotated[
        Duration,
        Meta(description="how long the alert streams remember a Nats-Msg-Id to drop a repeat"),
    ] = Duration(3600)

    def max_bytes(self, family: str) -> int:
        """The effective size cap of one family's stream."""
        configured: int | None = getattr(getattr(self, family), "max_bytes", -1)
        return DEFAULT_MAX_BYTES[family] if configured is None else configured


class BusConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    servers: Annotated[
        list[str],
        Meta(
            description="NATS URLs (several for a cluster); empty: `up` starts an embedded server, "
            "other commands use nats://127.0.0.1:4222. JARVIS_NATS_URL overrides (comma-separated)",
            examples=[["nats://10.0.0.5:4222", "nats://10.0.0.6:4222"]],
        ),
    ] = []
    prefix: Annotated[str, Meta(description="first token(s) of every subject")] = "jarvis"
    user: Annotated[str | None, Meta(description="user name for user/password auth", examples=["jarvis"])] = (
        None
    )
    password_file: Annotated[
        str | None,
        Meta(
            description="file holding the password (or set JARVIS_NATS_PASSWORD)",
            examples=["/etc/jarvis/nats-password"],
        ),
    ] = None
    token_file: Annotated[
        str | None,
        Meta(
            description="file holding an auth token (or set JARVIS_NATS_TOKEN)",
            examples=["/etc/jarvis/nats-token"],
        ),
    ] = None
    nkey_seed_file: Annotated[
        str | None,
        Meta(description="NKey seed file for nkey auth", examples=["/etc/jarvis/agent.nk"]),
    ] = None
    creds_file: Annotated[
        str | None,
        Meta(
            description="JWT credentials file (decentralised auth)",
            examples=["/etc/jarvis/agent.creds"],
        ),
    ] = None
    inbox_prefix: Annotated[
        str,
        Meta(
            description="first token(s) of this client's reply subjects: give each NATS user its own "
            "(deploy/nats-server.conf allows the agent user only _INBOX_agent.>), so that no user "
            "can read the replies meant for another",
            examples=["_INBOX_agent"],
        ),
    ] = "_INBOX"
    tls: Annotated[TLSConfig, Meta(description="TLS towards the server")] = TLSConfig()
    connect_timeout: Annotated[Duration, Meta(description="time allowed for one connection attempt")] = (
        Duration(5)
    )
    max_reconnect_delay: Annotated[
        Duration, Meta(description="cap of the exponential backoff between reconnect attempts")
    ] = Duration(5)
    reconnect_buffer: Annotated[
        int,
        Meta(
            ge=0,
            description="bytes of publishes kept while disconnected; beyond it publishes are "
            "dropped and counted in the next heartbeat",
        ),
    ] = 2 * 1024**2
    streams: Annotated[StreamsConfig, Meta(description="JetStream retention per subject family")] = (
        StreamsConfig()
    )
    replicas: Annotated[
        int,
        Meta(
            description="copies of every stream and KV bucket: 1 on a single server, 3 on a 3-node "
            "cluster (deploy/nats-cluster/); at most 5 and at most the cluster's JetStream servers",
            examples=[3],
        ),
    ] = 1

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)
        try:
            validate_prefix(self.inbox_prefix)
        except ValueError:
            raise ValueError(
                f"inbox_prefix: {self.inbox_prefix!r} is not a subject prefix: use letters, digits, "
                "'_' or '-', with '.' between tokens"
            ) from None
        for url in self.servers:
            try:
                validate_url(url)
            except ValueError as exc:
                raise ValueError(f"servers: {exc}") from None
        if self.password_file and not self.user:
            raise ValueError("password_file needs user")
        if not MIN_REPLICAS <= self.replicas <= MAX_REPLICAS:
            raise ValueError(
                f"replicas: {self.replicas} is not a replica count: JetStream keeps {MIN_REPLICAS} to "
                f"{MAX_REPLICAS} copies; set 1 for a single server, 3 for a 3-node cluster"
            )
