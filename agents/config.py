"""The agents' config table: the host name they report and each agent's own settings."""

from __future__ import annotations

import socket
from typing import Annotated

import msgspec
from msgspec import Meta

from agents.container_config import ContainerAgentConfig
from agents.host_config import HostAgentConfig
from agents.postgres_config import PostgresAgentConfig
from agents.probe_config import ProbeAgentConfig


class AgentsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    hostname: Annotated[
        str | None,
        Meta(
            description="host name every agent reports; unset: the machine's name",
            examples=["web01"],
        ),
    ] = None
    host: Annotated[HostAgentConfig, Meta(description="the host agent (psutil)")] = HostAgentConfig()
    container: Annotated[ContainerAgentConfig, Meta(description="the container agent (Docker engine)")] = (
        ContainerAgentConfig()
    )
    probe: Annotated[ProbeAgentConfig, Meta(description="the probe agent (HTTP, TCP, Prometheus)")] = (
        ProbeAgentConfig()
    )
    postgres: Annotated[
        PostgresAgentConfig, Meta(description="the database agent (PostgreSQL, through psycopg)")
    ] = PostgresAgentConfig()

    def resolved_hostname(self) -> str:
        return self.hostname or socket.gethostname()
