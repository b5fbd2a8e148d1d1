"""Nagios's flap detection: weighted percent of state changes over the last 21 results."""

from __future__ import annotations

WINDOW = 21  # results kept; 20 transitions between them
TRANSITIONS = WINDOW - 1
MASK = (1 << WINDOW) - 1
# Transition j (0 = the newest) weighs from 1.2 down to 0.8 for the oldest; the weights sum to 20.
WEIGHTS = tuple(1.2 - 0.4 * j / (TRANSITIONS - 1) for j in range(TRANSITIONS))


def record(history: int, length: int, result: bool) -> tuple[int, int]:
    """The history bits (newest in bit 0) and their count after one more result."""
    return ((history << 1) | result) & MASK, min(length + 1, WINDOW)


def percent_change(history: int, length: int) -> float:
    """Weighted percent of state changes, out of a full window (fewer results count less)."""
    total = 0.0
    changes = history ^ (history >> 1)
    for j in range(length - 1):
        if (changes >> j) & 1:
            total += WEIGHTS[j]
    return total * 100.0 / TRANSITIONS


def next_flapping(flapping: bool, percent: float, low: float, high: float) -> bool:
    """Starts above `high`, stops below `low`: the gap keeps the flag itself from flapping."""
    if flapping:
        return percent >= low
    return percent > high
