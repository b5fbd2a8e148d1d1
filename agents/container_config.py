"""The container agent's config table, apart from its collector: loading the config loads no Docker client."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from agents.container_logs import LogWatchConfig
from agents.runner_config import AgentConfig
from bus.units import Duration

RETRY_FIRST = 0.5  # first wait before reconnecting to the engine


class ContainerAgentConfig(AgentConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    docker_url: Annotated[
        str | None,
        Meta(
            description="Docker engine address; unset: DOCKER_HOST, else the local unix socket",
            examples=["unix:///var/run/docker.sock"],
        ),
    ] = None
    filter_labels: Annotated[
        list[str],
        Meta(
            description="watch only containers carrying all of these labels (`key` or `key=value`); "
            "empty: every container",
            examples=[["com.docker.compose.project=jarvis"]],
        ),
    ] = msgspec.field(default_factory=list)
    concurrency: Annotated[
        int, Meta(ge=1, le=256, description="Docker API requests (inspect, stats) in flight at once")
    ] = 64
    request_timeout: Annotated[
        Duration, Meta(description="a Docker API request still unanswered after this has failed")
    ] = Duration(5)
    retry_max: Annotated[
        Duration,
        Meta(description="longest wait between attempts to reach an unreachable Docker engine"),
    ] = Duration(30)
    logs: Annotated[LogWatchConfig, Meta(description="log watching")] = LogWatchConfig()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.request_timeout.seconds <= 0:
            raise ValueError("request_timeout must be more than 0s")
        if self.retry_max.seconds < RETRY_FIRST:
            raise ValueError(f"retry_max must be at least {RETRY_FIRST:g}s")
