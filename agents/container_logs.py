"""Log watching without I/O: which containers, which lines count, what is kept of them, within what bounds."""

from __future__ import annotations

import codecs
import fnmatch
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from bus.events import MAX_LOG_LINES, LogLevel, LogLine
from bus.limits import MAX_TEXT
from bus.redact import redact_text
from bus.units import Duration

Level = LogLevel

# `jarvis.logs=false` on a container (or its Compose service) keeps its log unread, whatever
# `containers` says.
OPT_OUT_LABEL = "jarvis.logs"
# Text of the kept lines in one LogLines message, counted in characters: at 4 bytes a character
# at worst and with the JSON around it, still under the server's default max_payload (1 MiB).
BATCH_CHARS = 128 * 1024
_LINE_OVERHEAD = 48  # {"ts":...,"level":"warning","text":""} around each line's text
# The engine cuts log entries at 16 KiB; a frame header announcing more than this is garbage.
MAX_FRAME = 1024 * 1024

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


class LogWatchConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Which container logs are followed, which lines count as errors and warnings, and the bounds."""

    containers: Annotated[
        list[str],
        Meta(
            description="container names (shell patterns) whose log is followed; every container by "
            "default (`jarvis.logs=false` on one leaves it out); [] follows only `labels`",
            examples=[["backend", "jarvis-*"]],
        ),
    ] = msgspec.field(default_factory=lambda: ["*"])
    labels: Annotated[
        list[str],
        Meta(
            description="also follow containers carrying any of these labels (`key` or `key=value`)",
            examples=[["jarvis.logs=true"]],
        ),
    ] = msgspec.field(default_factory=list)
    errors: Annotated[
        list[str],
        Meta(description="regular expressions; a line matching any is an error line (case matters)"),
    ] = msgspec.field(default_factory=lambda: ["ERROR", "CRITICAL", "FATAL", "Traceback"])
    warnings: Annotated[
        list[str],
        Meta(description="regular expressions; a line matching any (and no error pattern) is a warning line"),
    ] = msgspec.field(default_factory=lambda: ["WARN", "WARNING"])
    max_lines_per_second: Annotated[
        int,
        Meta(
            ge=1,
            le=1_000_000,
            description="lines read a second per container (a second's worth may come at once); a "
            "container writing more is sampled: the rest are skipped unread and counted",
        ),
    ] = 500
    burst_errors: Annotated[
        int,
        Meta(
            ge=1,
            le=100_000,
            description="this many error lines within burst_window make the container's log check "
            "(target log:<name>) warning, which the built-in rule container_log_errors alerts on",
        ),
    ] = 5
    burst_window: Annotated[Duration, Meta(description="the window burst_errors is counted in")] = Duration(
        60
    )
    keep_lines: Annotated[
        int,
        Meta(
            ge=0,
            le=100,
            description="last error lines (of the burst window; else warning lines) quoted in the log "
            "health event, and so in the alert",
        ),
    ] = 5
    line_length: Annotated[
        int, Meta(ge=20, le=10_000, description="quoted lines are cut to this many characters")
    ] = 200
    store_lines: Annotated[
        int,
        Meta(
            ge=0,
            le=MAX_LOG_LINES,
            description="error and warning lines per container and cycle kept in the logs stream "
            "(jarvis.logs.<host>.<container>, searched by `jarvis-monitor logs`); more are counted; "
            "0 keeps none",
        ),
    ] = 100
    store_line_length: Annotated[
        int, Meta(ge=20, le=MAX_TEXT, description="kept lines are cut to this many characters")
    ] = 1000

    def __post_init__(self) -> None:
        compile_patterns(self.errors, "errors")
        compile_patterns(self.warnings, "warnings")
        if self.burst_window.seconds <= 0:
            raise ValueError("burst_window must be more than 0s")


def selects(selectors: Iterable[str], labels: Mapping[str, str]) -> bool:
    """True when any `key` or `key=value` selector matches the labels."""
    for selector in selectors:
        key, eq, value = selector.partition("=")
        if key in labels and (not eq or labels[key] == value):
            return True
    return False


def is_watched(name: str, labels: Mapping[str, str], names: Iterable[str], selectors: Iterable[str]) -> bool:
    """Whether a container's log is followed: its name matches a shell pattern or a label selector,
    and it does not opt out with `jarvis.logs=false`."""
    if labels.get(OPT_OUT_LABEL) == "false":
        return False
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in names) or selects(selectors, labels)


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def clean_line(line: str, limit: int) -> str:
    """A log line fit for an event: no control characters, no URL credentials, at most `limit` chars."""
    return cut(redact_text(_CONTROL.sub(" ", _ANSI.sub("", line)).strip()), limit)


def split_stamp(line: str) -> tuple[str, str]:
    """The engine's RFC 3339 time stamp (`timestamps=1`) and the line after it; ("", line) without."""
    stamp, _, text = line.partition(" ")
    if len(stamp) >= 20 and stamp[10] == "T" and stamp[-1] == "Z":
        return stamp, text
    return "", line


def stamp_time(stamp: str, fallback: float) -> float:
    """Seconds since the epoch of an engine time stamp; `fallback` when it cannot be read."""
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return fallback


class FrameDecoder:
    """The engine's log stream as text: frames of an 8-byte header (stream, length) and a payload,
    or raw bytes for a container with a TTY. Many frames are parsed per read, not one at a time;
    a frame longer than `max_frame` (no engine sends one) is skipped, never buffered."""

    def __init__(self, raw: bool, max_frame: int = MAX_FRAME) -> None:
        self.raw = raw
        self.max_frame = max_frame
        self._buffer = b""
        self._skip = 0  # bytes of an oversized frame still to pass over
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        if self.raw:
            return self._text.decode(data)
        buffer = self._buffer + data if self._buffer else data
        pos, end, parts = 0, len(buffer), []
        while True:
            if self._skip:
                passed = min(self._skip, end - pos)
                pos += passed
                self._skip -= passed
                if self._skip:
                    break
            if end - pos < 8:
                break
            length = int.from_bytes(buffer[pos + 4 : pos + 8], "big")
            if length > self.max_frame:
                self._skip, pos = length, pos + 8
                parts.append(b"\n")  # the line it held ends here, unread
                continue
            if end - pos - 8 < length:
                break
            parts.append(buffer[pos + 8 : pos + 8 + length])
            pos += 8 + length
        self._buffer = buffer[pos:]
        return self._text.decode(b"".join(parts))


class LineSplitter:
    """Cuts a stream of text chunks into lines, holding at most `limit` characters of a line:
    a longer one is cut there and the rest of it skipped, so a log without newlines cannot grow
    the buffer."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._partial = ""
        self._skipping = False

    def feed(self, chunk: str) -> list[str]:
        if not self._partial and not self._skipping and chunk.endswith("\n") and "\r" not in chunk:
            # the usual chunk, whole lines: what the general case below makes of it, for less
            lines = chunk[:-1].split("\n")
            return lines if len(chunk) <= self.limit else [line[: self.limit] for line in lines]
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


class RateLimit:
    """A token bucket: `rate` lines a second on average, at most a second's worth at once."""

    __slots__ = ("_at", "_tokens", "rate")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self._tokens = rate
        self._at = now

    def take(self, now: float) -> bool:
        """Spend one line's token; False when none is left (the line is to be skipped)."""
        tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if tokens < 1:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1
        return True


@dataclass(frozen=True)
class LogSummary:
    """What one container's log said since the last cycle, and whether its errors make a burst."""

    errors: int
    warnings: int
    period: float  # seconds since the last cycle
    lines: list[LogLine]  # to keep in the logs stream
    quoted: list[str]
    burst: bool = False
    dropped: int = 0
    unkept: int = 0
    burst_rule: str = ""  # "5 or more error lines within 1m"
    rate: int = 0  # the per-container rate limit, lines a second

    def detail(self) -> str:
        parts = [f"{self.errors} error and {self.warnings} warning lines since the last cycle"]
        if self.burst:
            parts.insert(0, f"burst: {self.burst_rule}")
        if self.dropped:
            parts.append(f"{self.dropped} lines over {self.rate}/s skipped unread")
        return "\n".join(("; ".join(parts), *self.quoted))


class LogTally:
    """One container's log: counts, a burst detector, quoted and kept lines; memory is bounded.

    `now` is the collector's monotonic clock, passed in so that tests choose the time.
    """

    def __init__(
        self,
        config: LogWatchConfig,
        errors: re.Pattern[str] | None,
        warnings: re.Pattern[str] | None,
        now: float,
    ) -> None:
        self.config = config
        self._errors = errors
        self._warnings = warnings
        self._limit = RateLimit(config.max_lines_per_second, now)
        self._window = config.burst_window.seconds
        # times of the last burst_errors error lines: a burst when the oldest is inside the window
        self._burst: deque[float] = deque(maxlen=config.burst_errors)
        self._quoted_errors: deque[tuple[float, str]] = deque(maxlen=config.keep_lines)
        self._quoted_warnings: deque[str] = deque(maxlen=config.keep_lines)
        self._kept: list[tuple[str, Level, str]] = []
        self._drained_at = now
        self.error_count = self.warning_count = self.dropped = self.unkept = 0
        self.lines_read = 0  # every line since the start, skipped or not

    @classmethod
    def of(cls, config: LogWatchConfig, now: float) -> LogTally:
        """A tally with patterns of its own; followers compile them once for every container."""
        return cls(
            config,
            compile_patterns(config.errors, "errors"),
            compile_patterns(config.warnings, "warnings"),
            now,
        )

    def classify(self, text: str) -> Level | None:
        if self._errors is not None and self._errors.search(text):
            return "error"
        if self._warnings is not None and self._warnings.search(text):
            return "warning"
        return None

    def add(self, line: str, now: float) -> Level | None:
        """Count one line read at `now` (engine time stamp first, if any); its level, if it has one."""
        self.lines_read += 1
        if not self._limit.take(now):
            self.dropped += 1
            return None
        stamp, text = split_stamp(line)
        level = self.classify(text)
        if level is None:
            return None
        config = self.config
        cleaned = clean_line(text, config.store_line_length)
        if level == "error":
            self.error_count += 1
            self._burst.append(now)
            self._quoted_errors.append((now, cut(cleaned, config.line_length)))
        else:
            self.warning_count += 1
            self._quoted_warnings.append(cut(cleaned, config.line_length))
        if len(self._kept) < config.store_lines:
            self._kept.append((stamp, level, cleaned))
        else:
            self.unkept += 1
        return level

    def bursting(self, now: float) -> bool:
        """Whether burst_errors error lines came within the window before `now`."""
        burst = self._burst
        return len(burst) == burst.maxlen and burst[0] > now - self._window

    def drain(self, now: float, wall: float) -> LogSummary:
        """The counts and lines since the last drain, starting afresh; `wall` stamps lines without
        an engine time stamp."""
        since = now - self._window
        quoted = [text for at, text in self._quoted_errors if at > since] or list(self._quoted_warnings)
        config = self.config
        summary = LogSummary(
            errors=self.error_count,
            warnings=self.warning_count,
            period=max(now - self._drained_at, 0.0),
            lines=[LogLine(stamp_time(stamp, wall), level, text) for stamp, level, text in self._kept],
            quoted=quoted,
            burst=self.bursting(now),
            dropped=self.dropped,
            unkept=self.unkept,
            burst_rule=f"{config.burst_errors} or more error lines within {config.burst_window}",
            rate=config.max_lines_per_second,
        )
        self.error_count = self.warning_count = self.dropped = self.unkept = 0
        self._quoted_warnings.clear()
        self._kept = []
        self._drained_at = now
        return summary


def batches(lines: list[LogLine], chars: int = BATCH_CHARS, most: int = MAX_LOG_LINES) -> list[list[LogLine]]:
    """`lines` in order, cut into runs of at most `most` lines and about `chars` characters each."""
    out: list[list[LogLine]] = []
    run: list[LogLine] = []
    size = 0
    for line in lines:
        length = len(line.text) + _LINE_OVERHEAD
        if run and (len(run) >= most or size + length > chars):
            out.append(run)
            run, size = [], 0
        run.append(line)
        size += length
    if run:
        out.append(run)
    return out
