"""The container agent (aiodocker): every container's state, health and resources, Docker events, logs."""

from __future__ import annotations

from agents.runner import AgentConfig


class ContainerAgentConfig(AgentConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass
