"""Docker events as health checks, without I/O: what each event means and which are deployments."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from agents.container_state import COMPOSE_PROJECT, COMPOSE_SERVICE
from agents.runner import Check
from bus.events import Status

# Container events published at once, with the status each one means. health_status and die
# depend on the event's attributes; create is published only as a deployment ("deployed").
EVENT_STATUS: dict[str, tuple[Status, str]] = {
    "start": ("ok", "started"),
    "restart": ("warning", "restarted"),
    "stop": ("critical", "stopped"),
    "oom": ("critical", "out of memory: the kernel killed a process"),
    "destroy": ("ok", "removed"),  # removal is deliberate: no alert stays open for it
}
HEALTH_STATUS: dict[str, Status] = {"healthy": "ok", "unhealthy": "critical", "starting": "warning"}


class Deployments:
    """Which container (id and image) last had each name; bounded, the oldest names go first."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def observe(self, name: str, container_id: str, image: str) -> str | None:
        """The previous image when `name` is now a new container made from a different image."""
        before = self._seen.pop(name, None)
        self._seen[name] = (container_id, image)
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        if before is not None and before[0] != container_id and before[1] != image:
            return before[1]
        return None


def deployed_check(name: str, container_id: str, image: str, previous: str) -> Check:
    """The info event of a container recreated from another image."""
    return Check(
        name,
        "ok",
        detail=f"deployed {image}",
        event="deployed",
        labels={"image": image, "previous_image": previous, "id": container_id[:12]},
    )


def _labels(actor_id: str, attributes: Mapping[str, Any]) -> dict[str, str]:
    labels = {"image": str(attributes.get("image", "")), "id": actor_id[:12]}
    for key, label in ((COMPOSE_SERVICE, "service"), (COMPOSE_PROJECT, "project")):
        if key in attributes:
            labels[label] = str(attributes[key])
    return labels


def event_check(event: Mapping[str, Any], deployments: Deployments) -> Check | None:
    """The health event a Docker container event stands for, or None for one that is not news."""
    if event.get("Type", "container") != "container":
        return None
    actor = event.get("Actor")
    actor = actor if isinstance(actor, dict) else {}
    attributes = actor.get("Attributes")
    attributes = attributes if isinstance(attributes, dict) else {}
    name = str(attributes.get("name") or "")
    actor_id = str(actor.get("ID") or event.get("id") or "")
    action = str(event.get("Action") or event.get("status") or "")
    if not name or not action:
        return None
    labels = _labels(actor_id, attributes)
    verb, _, argument = action.partition(":")
    if action == "create":
        previous = deployments.observe(name, actor_id, labels["image"])
        return deployed_check(name, actor_id, labels["image"], previous) if previous else None
    if verb == "health_status":
        health = argument.strip() or str(attributes.get("health_status", ""))
        status = HEALTH_STATUS.get(health, "unknown")
        return Check(name, status, detail=f"health check: {health or 'unknown'}", event=verb, labels=labels)
    if action == "die":
        code = str(attributes.get("exitCode", "?"))
        died: Status = "warning" if code == "0" else "critical"
        labels["exit_code"] = code
        return Check(name, died, detail=f"died with exit code {code}", event="die", labels=labels)
    if action in EVENT_STATUS:
        status, detail = EVENT_STATUS[action]
        return Check(name, status, detail=detail, event=action, labels=labels)
    return None
