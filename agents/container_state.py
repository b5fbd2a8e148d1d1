"""A container's state from `docker inspect`, the health status it deserves, and the fleet's counts."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bus.events import Status

COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_PROJECT = "com.docker.compose.project"

# Docker reports nanoseconds; datetime takes at most microseconds.
_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_timestamp(text: object) -> float | None:
    """Seconds since the epoch from Docker's RFC 3339 time; None for its zero time or garbage."""
    if not isinstance(text, str) or text.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def container_name(raw: object) -> str:
    """Docker's `/name` without the slash."""
    return str(raw or "").lstrip("/")


def sample_labels(name: str, image: str, labels: Mapping[str, str]) -> dict[str, str]:
    """The labels every per-container sample carries; compose's are empty outside compose."""
    return {
        "container": name,
        "image": image,
        "service": labels.get(COMPOSE_SERVICE, ""),
        "project": labels.get(COMPOSE_PROJECT, ""),
    }


@dataclass(frozen=True)
class ContainerInfo:
    """What one `docker inspect` says about a container."""

    id: str
    name: str
    image: str
    state: str  # created, running, paused, restarting, removing, exited, dead
    health: str  # healthy, unhealthy, starting, none
    restart_count: int = 0
    exit_code: int = 0
    started_at: float | None = None
    oom_killed: bool = False
    restart_policy: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def running(self) -> bool:
        return self.state == "running"

    def sample_labels(self) -> dict[str, str]:
        return sample_labels(self.name, self.image, self.labels)

    def check_labels(self) -> dict[str, str]:
        labels = {"image": self.image, "id": self.short_id, "state": self.state, "health": self.health}
        for key, label in ((COMPOSE_SERVICE, "service"), (COMPOSE_PROJECT, "project")):
            if key in self.labels:
                labels[label] = self.labels[key]
        return labels


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def parse_inspect(data: Mapping[str, Any]) -> ContainerInfo:
    """A ContainerInfo from the engine's inspect JSON, tolerant of missing or odd fields."""
    state = data.get("State") or {}
    config = data.get("Config") or {}
    host_config = data.get("HostConfig") or {}
    health = (state.get("Health") or {}).get("Status") or "none"
    labels = config.get("Labels") or {}
    return ContainerInfo(
        id=str(data.get("Id", "")),
        name=container_name(data.get("Name")),
        image=str(config.get("Image") or data.get("Image") or ""),
        state=str(state.get("Status") or "unknown"),
        health=str(health),
        restart_count=_int(data.get("RestartCount")),
        exit_code=_int(state.get("ExitCode")),
        started_at=parse_timestamp(state.get("StartedAt")),
        oom_killed=state.get("OOMKilled") is True,
        restart_policy=str((host_config.get("RestartPolicy") or {}).get("Name") or "no"),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
    )


def _restarts(info: ContainerInfo) -> str:
    return f", restarted {info.restart_count} times" if info.restart_count else ""


def container_status(info: ContainerInfo) -> tuple[Status, str]:
    """The health status of a container and a one-line reason.

    ok: running and healthy (or no health check), or finished with exit code 0 under restart
    policy `no` (a one-shot job). warning: health check still starting, paused, created but
    never started, being removed. critical: unhealthy, restarting, dead, killed for lack of
    memory, or exited otherwise (a failure, or stopped while it was meant to keep running).
    """
    restarts = _restarts(info)
    if info.state == "running":
        if info.health == "unhealthy":
            return "critical", f"running but unhealthy{restarts}"
        if info.health == "starting":
            return "warning", f"running, health check starting{restarts}"
        health = ", healthy" if info.health == "healthy" else ""
        return "ok", f"running{health}{restarts}"
    if info.state == "restarting":
        return "critical", f"restarting after exit code {info.exit_code}{restarts}"
    if info.state == "exited":
        if info.oom_killed:
            return "critical", f"killed for lack of memory (exit code {info.exit_code}){restarts}"
        if info.exit_code == 0 and info.restart_policy in ("", "no"):
            return "ok", "completed (exit code 0)"
        return "critical", f"exited with code {info.exit_code}{restarts}"
    if info.state == "dead":
        return "critical", "dead: the engine failed to stop or remove it"
    if info.state == "paused":
        return "warning", "paused"
    if info.state == "created":
        return "warning", "created, never started"
    return "warning", info.state


def fleet_counts(infos: Iterable[ContainerInfo]) -> dict[str, float]:
    """How many containers are running, paused, restarting, stopped, and running but unhealthy."""
    counts = dict.fromkeys(("running", "paused", "restarting", "stopped", "unhealthy"), 0.0)
    for info in infos:
        key = info.state if info.state in ("running", "paused", "restarting") else "stopped"
        counts[key] += 1
        if info.running and info.health == "unhealthy":  # a stopped one keeps its last verdict
            counts["unhealthy"] += 1
    return {f"containers.{key}": value for key, value in counts.items()}
