"""Which notification a Slack channel sends next: the most severe group first, each group in order.

Pure: no I/O, the time is passed in. The sink keeps one queue per channel, so a channel that Slack
rate-limits or refuses holds back only its own notifications, and a critical never waits behind
the warnings queued before it on the same channel. A group's notifications always leave in the
order of the stream (firing before its resolve), and a group put back for a later retry lets the
other groups of its channel go first meanwhile.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Group(Generic[T]):
    items: deque[tuple[int, int, T]] = field(default_factory=deque)  # (rank, seq, item)
    not_before: float = 0.0


class ChannelQueue(Generic[T]):
    """The notifications waiting for one channel, grouped by the Slack thread they belong to."""

    def __init__(self) -> None:
        self._groups: dict[str, _Group[T]] = {}

    def push(self, group: str, rank: int, seq: int, item: T) -> None:
        """Queue `item` in its group by `seq` (one redelivered may come after a later one); among
        the groups' heads, lower ranks go first, then lower `seq`."""
        items = self._groups.setdefault(group, _Group()).items
        at = len(items)
        while at and items[at - 1][1] > seq:
            at -= 1
        items.insert(at, (rank, seq, item))

    def pop(self, now: float) -> T | None:
        """The next item to send at `now`: the head of the group whose head ranks first, then the
        oldest; None while every group waits for its retry (or nothing is queued)."""
        ready = [
            (group.items[0][0], group.items[0][1], key)
            for key, group in self._groups.items()
            if group.not_before <= now
        ]
        if not ready:
            return None
        _, _, key = min(ready)
        group = self._groups[key]
        _, _, item = group.items.popleft()
        if not group.items:
            del self._groups[key]
        return item

    def retry_later(self, group: str, rank: int, seq: int, item: T, at: float) -> None:
        """Put `item` back at the head of its group; nothing of that group leaves before `at`."""
        queued = self._groups.setdefault(group, _Group())
        queued.items.appendleft((rank, seq, item))
        queued.not_before = at

    def next_ready(self) -> float | None:
        """When the earliest waiting group may go again; None if nothing is queued."""
        return min((group.not_before for group in self._groups.values()), default=None)

    def drain(self) -> list[T]:
        """Everything queued, the queue emptied."""
        items = [item for group in self._groups.values() for _, _, item in group.items]
        self._groups.clear()
        return items
