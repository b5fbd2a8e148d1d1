"""How far the wall clock may judge an agent's silence: up to the latest moment every input stream
was seen sound, and each partition mirror had copied what its family stream held at that moment."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

# passes whose mirrors have not caught up yet: older ones only hold `until` further back
CHECKPOINTS = 30


class SoundInputs:
    """The wall time `until` which nothing the agents sent can still be on its way to the evaluator."""

    def __init__(self) -> None:
        self.until = -math.inf
        self.behind_since: float | None = None  # the first look since `until` last moved on
        self._checkpoints: deque[tuple[float, tuple[int, ...]]] = deque(maxlen=CHECKPOINTS)

    def passed(self, began: float, families: Sequence[int], mirrors: Sequence[int]) -> bool:
        """A sound look at the streams, begun at `began`: the family streams' last sequences, then
        their mirrors' (none when unpartitioned; a mirror keeps its family's sequences). True if
        `until` moved on."""
        self._checkpoints.append((began, tuple(families)))
        moved = False
        # a family's last sequence goes back when a new leader lacks what the old one had not
        # replicated (the leader change itself makes the agents be judged afresh): what is gone
        # cannot be waited for
        while self._checkpoints and all(
            copied >= min(stored, now)
            for copied, stored, now in zip(mirrors, self._checkpoints[0][1], families, strict=False)
        ):
            at, _ = self._checkpoints.popleft()
            if at > self.until:
                self.until, moved = at, True
        if moved:
            self.behind_since = None
        elif self.behind_since is None:
            self.behind_since = began
        return moved
