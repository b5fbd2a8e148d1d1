"""The probe agent (aiohttp, asyncio): HTTP and TCP checks, Prometheus scrapes and PromQL queries."""

from __future__ import annotations

from agents.runner import AgentConfig


class ProbeAgentConfig(AgentConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass
