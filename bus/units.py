"""Durations as written in config ("30s", "5m", "4h", "30d") and the msgspec hooks that parse them."""

from __future__ import annotations

import re
from typing import Any

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


class Duration:
    """A length of time, written as in Prometheus: "250ms", "10s", "5m", "1h30m", "30d"."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a duration cannot be negative")
        self.seconds = float(seconds)

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Parse "1h30m" style text; a bare number is refused so that units are never guessed."""
        text = text.strip()
        pos, total = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            total += float(match[1]) * _UNITS[match[2]]
            pos = match.end()
        if not text or pos != len(text):
            raise ValueError(
                f"invalid duration {text!r}: write a number and a unit (ms, s, m, h, d, w), "
                'as in "30s", "5m" or "1h30m"'
            )
        return cls(total)

    def __str__(self) -> str:
        remaining = round(self.seconds * 1000)
        if remaining == 0:
            return "0s"
        parts = []
        for unit in ("d", "h", "m", "s", "ms"):
            size = round(_UNITS[unit] * 1000)
            count, remaining = divmod(remaining, size)
            if count:
                parts.append(f"{count}{unit}")
        return "".join(parts)

    def __repr__(self) -> str:
        return f"Duration({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Duration) and other.seconds == self.seconds

    def __hash__(self) -> int:
        return hash(self.seconds)


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
        return {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d|w))+$"}
    raise NotImplementedError(f"no schema for {tp!r}")
