"""What agents and services publish through: the real `Bus` or the recording double."""

from __future__ import annotations

from typing import Protocol

from bus.connection import PublishStats
from bus.events import Event
from bus.subjects import Subjects


class Publisher(Protocol):
    """Publishes events; failures are counted in `stats`, never raised."""

    subjects: Subjects
    stats: PublishStats

    async def publish(self, subject: str, event: Event) -> bool: ...
