"""How far the evaluator's clock runs ahead of the stream leaders' (pure: times passed in).

Inputs are judged by the time the server stored them, timers run on the evaluator's clock: with
that clock ahead of the server's by more than a couple of intervals, every live agent's heartbeat
reads as late and agent_down fires and resolves at every beat. The least (local - stored) of the
inputs of the last two windows is that lead plus the quickest delivery; under TICK_LAG it is none.
"""

from __future__ import annotations

import math


class ClockLead:
    """The lead of our clock over the servers', from inputs as they arrive."""

    def __init__(self, window: float = 60.0, below: float = 0.5) -> None:
        self.window = window
        self.below = below  # a lead this small is delivery time, and none
        self._started = -math.inf
        self._current = math.inf
        self._previous = math.inf

    def observe(self, local: float, stored: float) -> None:
        if local - self._started >= self.window:
            fresh = local - self._started < 2 * self.window
            self._previous, self._current = (self._current if fresh else math.inf), math.inf
            self._started = local
        self._current = min(self._current, local - stored)

    def lead(self) -> float:
        least = min(self._current, self._previous)
        return least if self.below < least < math.inf else 0.0
