"""Test doubles shipped with the code: a publisher that records instead of sending."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from bus.connection import PublishStats
from bus.events import Event, encode
from bus.subjects import Subjects


@dataclass
class RecordingPublisher:
    """Records every publish; `fail` makes publishes count as dropped, as a full buffer would."""

    subjects: Subjects = field(default_factory=Subjects)
    stats: PublishStats = field(default_factory=PublishStats)
    published: list[tuple[str, Event]] = field(default_factory=list)
    fail: bool = False

    async def publish(self, subject: str, event: Event) -> bool:
        encode(event)  # what cannot be encoded would fail on the real bus too
        if self.fail:
            self.stats.dropped += 1
            return False
        self.published.append((subject, event))
        return True

    def events(self, pattern: str = "*", kind: type[Event] | None = None) -> list[Event]:
        """Events whose subject matches the shell-style `pattern`, optionally of one type."""
        return [
            event
            for subject, event in self.published
            if fnmatch.fnmatchcase(subject, pattern) and (kind is None or isinstance(event, kind))
        ]

    def assert_published(
        self, pattern: str, kind: type[Event] | None = None, count: int | None = None
    ) -> list[Event]:
        """Assert that events matching `pattern` (and `kind`) were published, `count` times if given."""
        found = self.events(pattern, kind)
        subjects = sorted({s for s, _ in self.published})
        if count is None:
            assert found, f"nothing published on {pattern!r}; subjects seen: {subjects}"
        else:
            assert len(found) == count, (
                f"{len(found)} events on {pattern!r}, expected {count}; seen: {subjects}"
            )
        return found

    def clear(self) -> None:
        self.published.clear()
