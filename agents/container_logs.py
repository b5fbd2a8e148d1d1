"""Log watching without I/O: which containers, which lines count, and what is kept of them."""

from __future__ import annotations

import fnmatch
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from bus.redact import redact_text

Level = Literal["error", "warning"]

# Control characters (terminal escapes included) would garble a terminal or a Slack message.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def compile_patterns(patterns: Iterable[str], key: str) -> re.Pattern[str] | None:
    """One regular expression matching any of `patterns`; ValueError naming the bad one."""
    parts = []
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{key}: {pattern!r} is not a regular expression: {exc}") from None
        parts.append(f"(?:{pattern})")
    return re.compile("|".join(parts)) if parts else None


def selects(selectors: Iterable[str], labels: Mapping[str, str]) -> bool:
    """True when any `key` or `key=value` selector matches the labels."""
    for selector in selectors:
        key, eq, value = selector.partition("=")
        if key in labels and (not eq or labels[key] == value):
            return True
    return False


def is_watched(name: str, labels: Mapping[str, str], names: Iterable[str], selectors: Iterable[str]) -> bool:
    """Whether a container's log is followed: its name matches a shell pattern or a label selector."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in names) or selects(selectors, labels)


def clean_line(line: str, limit: int) -> str:
    """A log line fit for an event: no control characters, no URL credentials, at most `limit` chars."""
    text = redact_text(_CONTROL.sub(" ", _ANSI.sub("", line)).strip())
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


class LineSplitter:
    """Cuts a stream of text chunks into lines, holding at most `limit` characters of a line:
    a longer one is cut there and the rest of it skipped, so a log without newlines cannot grow
    the buffer."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._partial = ""
        self._skipping = False

    def feed(self, chunk: str) -> list[str]:
        *complete, last = chunk.split("\n")
        lines = []
        for piece in complete:
            if not self._skipping:
                lines.append((self._partial + piece).rstrip("\r")[: self.limit])
            self._partial, self._skipping = "", False
        if not self._skipping:
            self._partial += last
            if len(self._partial) > self.limit:
                lines.append(self._partial[: self.limit])
                self._partial, self._skipping = "", True
        return lines

    def flush(self) -> list[str]:
        """The unfinished last line, if any, when the stream ends."""
        rest, self._partial, self._skipping = self._partial, "", False
        return [rest.rstrip("\r")] if rest else []


@dataclass(frozen=True)
class LogSummary:
    """What one container's log said since the last cycle."""

    errors: int
    warnings: int
    lines: list[str]

    def detail(self) -> str:
        counts = f"{self.errors} error and {self.warnings} warning lines since the last cycle"
        return "\n".join((counts, *self.lines)) if self.lines else counts


class LogTally:
    """Counts matching lines of one container and keeps the last few, cleaned; memory is bounded."""

    def __init__(
        self,
        errors: re.Pattern[str] | None,
        warnings: re.Pattern[str] | None,
        keep: int,
        line_length: int,
    ) -> None:
        self._errors = errors
        self._warnings = warnings
        self._line_length = line_length
        self._recent: deque[str] = deque(maxlen=keep)
        self.error_count = 0
        self.warning_count = 0

    def classify(self, line: str) -> Level | None:
        if self._errors is not None and self._errors.search(line):
            return "error"
        if self._warnings is not None and self._warnings.search(line):
            return "warning"
        return None

    def add(self, line: str) -> Level | None:
        level = self.classify(line)
        if level == "error":
            self.error_count += 1
        elif level == "warning":
            self.warning_count += 1
        if level is not None and self._recent.maxlen:
            self._recent.append(clean_line(line, self._line_length))
        return level

    def drain(self) -> LogSummary:
        """The counts and lines since the last drain, starting afresh."""
        summary = LogSummary(self.error_count, self.warning_count, list(self._recent))
        self.error_count = self.warning_count = 0
        self._recent.clear()
        return summary
