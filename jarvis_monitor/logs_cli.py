"""`jarvis-monitor logs [CONTAINER] --grep REGEX --since 1h`: the kept error and warning lines, searched.

What the runbook asks of Loki (`{container_name="backend"} |= "ERROR"`), over the logs stream
(`<prefix>.logs.<host>.<container>`, kept 7 days): read by time from `--since` on, the host and
container chosen in the subject filter, then level and regular expression here; oldest first.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fnmatch
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bus.connection import connect
from bus.events import EventDecodeError, LogLevel, LogLines, log_lines
from bus.jetstream import stream_name
from bus.subjects import Subjects, sanitize_token
from bus.units import Duration
from jarvis_monitor.commands import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, error, run_async
from jarvis_monitor.tail import clean

if TYPE_CHECKING:
    from jarvis_monitor.commands import Subparsers
    from jarvis_monitor.config import Config

LOGS_FAMILY = "logs"
DEFAULT_SINCE = "1h"
DEFAULT_LIMIT = 200
FETCH_BATCH = 256
FETCH_TIMEOUT = 5.0
# A batch is published after its lines were written (up to an interval), and the agent's clock
# may run ahead of the server's: reading starts this much earlier, each line is judged by its own time.
CLOCK_SLACK = 300.0
TEXT_LIMIT = 20_000  # kept lines are at most 16384 characters: only a control character changes
_GLOB = re.compile(r"[*?\[]")


def register(commands: Subparsers) -> None:
    """Add `logs` to `commands`."""
    parser = commands.add_parser(
        "logs", help="search the containers' kept error and warning lines (7 days), as with Loki"
    )
    parser.add_argument(
        "container", nargs="?", help="container name, or a shell pattern such as 'jarvis-*' (default: all)"
    )
    parser.add_argument(
        "--grep",
        metavar="REGEX",
        help="only lines matching this regular expression (Python syntax, case matters; (?i) to ignore it)",
    )
    parser.add_argument(
        "--since",
        default=DEFAULT_SINCE,
        metavar="DURATION",
        help=f"how far back: 30m, 1h, 7d (default {DEFAULT_SINCE})",
    )
    parser.add_argument("--host", help="only lines of this host (default: every host)")
    parser.add_argument("--level", choices=("error", "warning"), help="only lines of this level")
    parser.add_argument(
        "-n",
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show the newest N matching lines (default {DEFAULT_LIMIT}; 0 for all)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    parser.set_defaults(handler=cmd_logs)


class QueryError(ValueError):
    """A search that cannot be run as given; the message says why."""


@dataclass(frozen=True)
class Query:
    """What to look for: since when, where, and which lines."""

    since: float
    container: str | None = None  # a name or a shell pattern
    host: str | None = None
    level: LogLevel | None = None
    grep: re.Pattern[str] | None = None
    limit: int = DEFAULT_LIMIT

    def subject(self, subjects: Subjects) -> str:
        """The subject filter: a host or container named exactly is a token, a pattern is `*`."""
        host = sanitize_token(self.host) if self.host is not None else "*"
        container = self.container
        exact = container is not None and not _GLOB.search(container)
        token = sanitize_token(container) if exact and container is not None else "*"
        return f"{subjects.prefix}.{LOGS_FAMILY}.{host}.{token}"

    def takes(self, event: LogLines) -> bool:
        """Whether the batch is of the host and container asked for (sanitised tokens may collide)."""
        if self.host is not None and event.host != self.host:
            return False
        return self.container is None or fnmatch.fnmatchcase(event.container, self.container)


def parse_query(
    *,
    since: str,
    container: str | None = None,
    host: str | None = None,
    level: str | None = None,
    grep: str | None = None,
    limit: int = DEFAULT_LIMIT,
    now: float | None = None,
) -> Query:
    """The query the command line asks for; QueryError naming the bad option."""
    try:
        back = Duration.parse(since).seconds
    except ValueError as exc:
        raise QueryError(f"--since: {exc}") from None
    pattern = None
    if grep is not None:
        try:
            pattern = re.compile(grep)
        except re.error as exc:
            raise QueryError(f"--grep: {grep!r} is not a regular expression: {exc}") from None
    if limit < 0:
        raise QueryError("--limit: give a number of lines, or 0 for all")
    if level not in (None, "error", "warning"):
        raise QueryError(f"--level: {level!r} is not error or warning")
    return Query(
        since=(time.time() if now is None else now) - back,
        container=container or None,
        host=host or None,
        level=level,  # type: ignore[arg-type]  # checked just above
        grep=pattern,
        limit=limit,
    )


class Found(msgspec.Struct, frozen=True):
    """One matching line, with where it came from."""

    ts: float
    host: str
    container: str
    level: LogLevel
    text: str


@dataclass
class Result:
    """The newest matching lines (oldest first), and what the search went through."""

    lines: list[Found]
    matched: int = 0
    read: int = 0  # messages
    rejected: int = 0  # messages that were no LogLines


def matching(query: Query, event: LogLines) -> Iterator[Found]:
    """The lines of one batch the query asks for: from its time on, of its level and pattern."""
    if not query.takes(event):
        return
    for line in event.lines:
        if line.ts < query.since or (query.level is not None and line.level != query.level):
            continue
        if query.grep is not None and not query.grep.search(line.text):
            continue
        yield Found(line.ts, event.host, event.container, line.level, line.text)


async def search(js: JetStreamContext, subjects: Subjects, query: Query) -> Result | None:
    """Read the logs stream from the query's time on; None when there is no logs stream."""
    stream = stream_name(subjects.prefix, LOGS_FAMILY)
    try:
        await js.stream_info(stream)
    except NotFoundError:
        return None
    start = datetime.fromtimestamp(max(query.since - CLOCK_SLACK, 0), UTC)
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=start,
        # reading must change nothing a later reader sees; the server drops the consumer when idle
        ack_policy=AckPolicy.NONE,
        inactive_threshold=10.0,
        mem_storage=True,
    )
    kept: collections.deque[Found] = collections.deque(maxlen=query.limit or None)
    result = Result(lines=[])
    subscription = await js.pull_subscribe(query.subject(subjects), stream=stream, config=config)
    try:
        pending = (await subscription.consumer_info()).num_pending or 0
        while pending > 0:
            try:
                messages = await subscription.fetch(min(FETCH_BATCH, pending), timeout=FETCH_TIMEOUT)
            except TimeoutError:  # aged out since the count was taken
                break
            for msg in messages:
                result.read += 1
                try:
                    event = log_lines.decode(msg.data, msg.subject)
                except EventDecodeError:
                    result.rejected += 1
                    continue
                for found in matching(query, event):
                    result.matched += 1
                    kept.append(found)
            pending = messages[-1].metadata.num_pending if messages else 0
    finally:
        with contextlib.suppress(nats.errors.Error):
            await subscription.unsubscribe()
    result.lines = sorted(kept, key=lambda found: found.ts)
    return result


def _when(ts: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError):
        return "????-??-?? ??:??:??"


def render(found: Found) -> str:
    """One terminal line: local time, host, container, level, text; nothing a terminal would obey."""
    return (
        f"{_when(found.ts)}  {clean(found.host, 64)}  {clean(found.container, 64)}  "
        f"{found.level.upper():<7}  {clean(found.text, TEXT_LIMIT)}"
    )


async def run(config: Config, query: Query, as_json: bool) -> int:
    bus = await connect(config.bus, "jarvis-monitor logs")
    try:
        result = await search(bus.nc.jetstream(), bus.subjects, query)
    finally:
        await bus.close()
    if result is None:
        name = stream_name(bus.subjects.prefix, LOGS_FAMILY)
        error(f"no logs kept yet: there is no stream {name} (`up` or the evaluator makes it)")
        return EXIT_FAILURE
    for found in result.lines:
        print(msgspec.json.encode(found).decode() if as_json else render(found))
    if result.rejected:
        print(f"{result.rejected} message(s) on the logs stream could not be read", file=sys.stderr)
    if not result.matched:
        print(f"no matching lines since {_when(query.since)}", file=sys.stderr)
    elif len(result.lines) < result.matched:
        print(
            f"the newest {len(result.lines)} of {result.matched} matching lines; --limit 0 shows all",
            file=sys.stderr,
        )
    return EXIT_OK


async def _guarded(config: Config, query: Query, as_json: bool) -> int:
    """The search, with NATS refusing or not answering as one line and exit 1 rather than a traceback."""
    try:
        return await run(config, query, as_json)
    except (nats.errors.Error, TimeoutError) as exc:
        error(f"NATS: {exc or type(exc).__name__}")
        return EXIT_FAILURE


def cmd_logs(args: argparse.Namespace, config: Config) -> int:
    try:
        query = parse_query(
            since=args.since,
            container=args.container,
            host=args.host,
            level=args.level,
            grep=args.grep,
            limit=args.limit,
        )
    except QueryError as exc:
        error(str(exc))
        return EXIT_CONFIG
    return run_async(_guarded(config, query, args.json))
