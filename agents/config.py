"""The agents' config table: the host name they report and each agent's own settings."""

from __future__ import annotations

import socket
from typing import Annotated

import msgspec
from msgspec import Meta

from agents.host import HostAgentConfig


class AgentsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    hostname: Annotated[
        str | None,
        Meta(
            description="host name every agent reports; unset: the machine's name",
            examples=["web01"],
        ),
    ] = None
    host: Annotated[HostAgentConfig, Meta(description="the host agent (psutil)")] = HostAgentConfig()

    def resolved_hostname(self) -> str:
        return self.hostname or socket.gethostname()
