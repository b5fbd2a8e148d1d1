"""Durations as written in config ("30s", "5m", "4h", "30d") and the msgspec hooks that parse them."""

from __future__ import annotations

import re
from typing import Any

# Microseconds per unit: durations are whole microseconds, so equal text means equal values.
_UNITS = {
    "us": 1,
    "ms": 1000,
    "s": 10**6,
    "m": 60 * 10**6,
    "h": 3600 * 10**6,
    "d": 86400 * 10**6,
    "w": 604800 * 10**6,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d|w)")


MAX_DAYS = 3650  # ten years: beyond any retention, and far inside what NATS can represent
MAX_SECONDS = MAX_DAYS * 86400


class Duration:
    """A length of time, written as in Prometheus: "250ms", "10s", "5m", "1h30m", "30d"."""

    __slots__ = ("_us",)

    def __init__(self, seconds: float) -> None:
        if not 0 <= seconds <= MAX_SECONDS:
            raise ValueError(f"a duration must lie between 0s and {MAX_DAYS}d")
        self._us = round(seconds * 10**6)

    @property
    def seconds(self) -> float:
        return self._us / 10**6

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Parse "1h30m" style text; a bare number is refused so that units are never guessed."""
        text = text.strip()
        pos, total = 0, 0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            total += round(float(match[1]) * _UNITS[match[2]])
            pos = match.end()
        if not text or pos != len(text):
            raise ValueError(
                f"invalid duration {text!r}: write a number and a unit (us, ms, s, m, h, d, w), "
                'as in "30s", "5m" or "1h30m"'
            )
        return cls(total / 10**6)

    def __str__(self) -> str:
        if self._us == 0:
            return "0s"
        parts, remaining = [], self._us
        for unit in ("d", "h", "m", "s", "ms", "us"):
            count, remaining = divmod(remaining, _UNITS[unit])
            if count:
                parts.append(f"{count}{unit}")
        return "".join(parts)

    def __repr__(self) -> str:
        return f"Duration({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Duration) and other._us == self._us

    def __hash__(self) -> int:
        return hash(self._us)


def dec_hook(tp: type, obj: Any) -> Any:
    """msgspec decode hook for the custom config types."""
    if tp is Duration:
        if isinstance(obj, str):
            return Duration.parse(obj)
        raise ValueError(f'invalid duration {obj!r}: write it as a string with a unit, as in "30s"')
    raise NotImplementedError(f"no decoder for {tp!r}")


def enc_hook(obj: Any) -> Any:
    """msgspec encode hook for the custom config types."""
    if isinstance(obj, Duration):
        return str(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def schema_hook(tp: type) -> dict[str, Any]:
    """msgspec JSON Schema hook for the custom config types."""
    if tp is Duration:
        return {"type": "string", "pattern": r"^(\d+(\.\d+)?(us|ms|s|m|h|d|w))+$"}
    raise NotImplementedError(f"no schema for {tp!r}")
