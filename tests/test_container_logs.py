"""Log errors as alerts, without I/O: the bounded tally, the burst, kept lines, their batches on the bus,
the built-in rule on an injected clock, the Slack text, and the search's time and filters."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from agents.container_logs import (
    BATCH_CHARS,
    FrameDecoder,
    LineSplitter,
    LogTally,
    LogWatchConfig,
    RateLimit,
    batches,
    is_watched,
    split_stamp,
)
from agents.runner import AgentConfig, AgentRunner, Collection, LogBatch
from bus import events
from bus import vocabulary as vocab
from bus.config import StreamsConfig
from bus.events import MAX_LOG_LINES, LogLine, LogLines, Notification, Status, encode
from bus.jetstream import FAMILIES, stream_config
from bus.subjects import Subjects
from bus.testing import RecordingPublisher
from bus.units import Duration, dec_hook
from evaluator.config import EvaluatorConfig
from evaluator.rules import DEFAULT_RULES
from evaluator.testing import Driver, health
from jarvis_monitor.logs_cli import Query, QueryError, matching, parse_query, render
from jarvis_monitor.tail import describe
from sinks.slack_format import FormatOptions
from sinks.slack_format import render as render_slack

T0 = 1_700_000_000.0
PSYCOPG = "ERROR psycopg2.OperationalError: could not connect to server: Connection refused"


def tally(**settings: Any) -> LogTally:
    config = LogWatchConfig(**settings)
    return LogTally.of(config, now=0.0)


def stamped(at: float, text: str) -> str:
    """A line as the engine sends it with timestamps=1."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z ") + text


# following: which containers, within what bounds -----------------------------------------------


def test_every_container_is_followed_by_default_unless_it_opts_out() -> None:
    config = LogWatchConfig()
    assert is_watched("jarvis-backend", {}, config.containers, config.labels)
    assert is_watched("postgres", {"com.docker.compose.service": "db"}, config.containers, config.labels)
    assert not is_watched("noisy", {"jarvis.logs": "false"}, config.containers, config.labels)
    off = LogWatchConfig(containers=[])
    assert not is_watched("jarvis-backend", {}, off.containers, off.labels)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"burst_window": "0s"}, "burst_window must be more than 0s"),
        ({"max_lines_per_second": 0}, "Expected `int` >= 1"),
        ({"store_lines": MAX_LOG_LINES + 1}, f"Expected `int` <= {MAX_LOG_LINES}"),
        ({"burst_errors": "five"}, "Expected `int`, got `str`"),
    ],
)
def test_bad_log_settings_are_refused_with_what_is_wrong(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(raw, LogWatchConfig, dec_hook=dec_hook)


def frame(text: str | bytes, stream: int = 1) -> bytes:
    """One frame of the engine's multiplexed log stream."""
    payload = text.encode() if isinstance(text, str) else text
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_frames_become_text_whatever_the_reads_cut() -> None:
    stream = frame("ERROR one\n") + frame("WARNING two\n", stream=2) + frame("caf\u00e9\n")
    for cut_at in range(len(stream)):
        decoder, splitter = FrameDecoder(raw=False), LineSplitter(100)
        lines = splitter.feed(decoder.feed(stream[:cut_at])) + splitter.feed(decoder.feed(stream[cut_at:]))
        assert lines == ["ERROR one", "WARNING two", "café"], cut_at


def test_a_tty_containers_stream_is_raw_text_and_a_huge_frame_is_skipped_not_held() -> None:
    assert FrameDecoder(raw=True).feed(b"ERROR tty\r\n") == "ERROR tty\r\n"
    decoder = FrameDecoder(raw=False, max_frame=64)
    text = decoder.feed(
        frame("ERROR before\n") + bytes([1, 0, 0, 0]) + (10**6).to_bytes(4, "big") + b"x" * 1000
    )
    assert text == "ERROR before\n\n"
    assert decoder._buffer == b""  # nothing of the oversized frame is kept
    rest = decoder.feed(b"x" * (10**6 - 1000) + frame("ERROR after\n"))
    assert rest == "ERROR after\n"


def test_whole_lines_split_as_the_general_case_does() -> None:
    splitter = LineSplitter(limit=5)
    assert splitter.feed("ERROR one\nok\n") == ["ERROR", "ok"]
    assert splitter.feed("a\r\nb\n") == ["a", "b"]
    assert splitter.feed("x\n") == ["x"]


def test_rate_limit_lets_a_seconds_worth_through_then_its_rate() -> None:
    limit = RateLimit(10, now=0.0)
    assert sum(limit.take(0.0) for _ in range(100)) == 10
    assert sum(limit.take(0.5) for _ in range(100)) == 5
    assert sum(limit.take(100.0) for _ in range(100)) == 10  # an idle hour saves no more than a second


def test_a_flooding_container_is_sampled_and_says_how_many_lines_it_skipped() -> None:
    counter = tally(max_lines_per_second=100)
    for _ in range(1000):
        counter.add("ERROR flood", now=1.0)
    for _ in range(1000):
        counter.add("ERROR flood", now=2.0)

    summary = counter.drain(now=2.0, wall=T0)
    assert (summary.errors, summary.dropped) == (200, 1800)
    assert "1800 lines over 100/s skipped unread" in summary.detail()


def test_a_burst_is_burst_errors_error_lines_within_the_window() -> None:
    counter = tally(burst_errors=5, burst_window=Duration(60))
    for at in (20, 30, 40, 60):
        counter.add(PSYCOPG, now=at)
    assert not counter.bursting(61)  # four are not five
    counter.add(PSYCOPG, now=70)
    assert counter.bursting(70)
    assert not counter.bursting(80)  # the fifth newest (20 s) has left the window
    warnings = tally(burst_errors=1)
    warnings.add("WARNING slow", now=1)
    assert not warnings.bursting(1)  # only error lines make a burst


def test_the_log_check_quotes_the_bursts_error_lines_while_it_lasts() -> None:
    counter = tally(burst_errors=2, keep_lines=2, line_length=40)
    counter.add("INFO fine", now=1)
    counter.add("ERROR one", now=1)
    counter.add(PSYCOPG, now=2)
    first = counter.drain(now=3, wall=T0)
    assert first.burst
    assert first.detail().splitlines() == [
        "burst: 2 or more error lines within 1m; 2 error and 0 warning lines since the last cycle",
        "ERROR one",
        PSYCOPG[:39] + "…",
    ]
    quiet = counter.drain(now=13, wall=T0 + 10)
    assert quiet.burst
    assert quiet.errors == 0
    assert quiet.quoted == first.quoted  # the alert still says what the burst was
    later = counter.drain(now=100, wall=T0 + 97)
    assert not later.burst
    assert later.quoted == []


def test_kept_lines_carry_the_engines_time_their_level_and_clean_text() -> None:
    counter = tally(store_lines=2, store_line_length=60)
    counter.add(stamped(T0 - 5, "\x1b[31mERROR\x1b[0m db at postgres://app:s3cret@db/x " + "y" * 100), now=1)
    counter.add("WARNING no stamp", now=1)
    counter.add(stamped(T0, "ERROR third"), now=1)

    summary = counter.drain(now=2, wall=T0 + 1)
    first, second = summary.lines
    assert first.ts == pytest.approx(T0 - 5)
    assert first.level == "error"
    assert first.text.startswith("ERROR db at postgres://***@db/x y")
    assert len(first.text) == 60
    assert "s3cret" not in first.text
    assert "\x1b" not in first.text
    assert (second.ts, second.level, second.text) == (T0 + 1, "warning", "WARNING no stamp")
    assert summary.unkept == 1  # over store_lines: counted, not kept


def test_a_time_stamp_is_split_off_only_when_it_looks_like_one() -> None:
    assert split_stamp("2026-05-09T10:00:00.5Z ERROR x") == ("2026-05-09T10:00:00.5Z", "ERROR x")
    assert split_stamp("ERROR 2026-05-09T10:00:00Z") == ("", "ERROR 2026-05-09T10:00:00Z")


def test_kept_lines_are_cut_into_messages_that_fit_the_server() -> None:
    lines = [LogLine(T0 + i, "error", "x" * 1000) for i in range(300)]
    runs = batches(lines)
    assert [line for run in runs for line in run] == lines
    assert all(sum(len(line.text) for line in run) <= BATCH_CHARS for run in runs)
    assert len(runs) == 3
    many = [LogLine(T0, "warning", "w")] * (MAX_LOG_LINES + 1)
    assert [len(run) for run in batches(many)] == [MAX_LOG_LINES, 1]
    payload = LogLines(host="h", agent="container", container="c", ts=T0, lines=runs[0])
    assert len(encode(payload)) < 1024**2


def test_a_batch_over_its_bound_is_refused_at_decode() -> None:
    too_many = LogLines(
        host="h", agent="container", container="c", ts=T0, lines=[LogLine(T0, "error", "x")] * 1001
    )
    with pytest.raises(events.EventDecodeError, match="lines"):
        events.log_lines.decode(encode(too_many), "jarvis.logs.h.c")


# on the bus --------------------------------------------------------------------------------------


class _Lines:
    name = vocab.CONTAINER_AGENT

    async def collect(self) -> Collection:
        line = LogLine(T0, "error", PSYCOPG)
        return Collection(logs=[LogBatch("jarvis.backend", [line], {"service": "backend"}, dropped=3)])


async def test_kept_lines_are_published_per_container_on_the_logs_subject() -> None:
    publisher = RecordingPublisher()
    runner = AgentRunner(_Lines(), publisher, AgentConfig(), "web.01", wall_clock=lambda: T0 + 1)
    await runner.run_cycle()

    (event,) = publisher.assert_published("jarvis.logs.web_01.jarvis_backend", LogLines, count=1)
    assert isinstance(event, LogLines)
    assert (event.host, event.container, event.ts, event.dropped) == ("web.01", "jarvis.backend", T0 + 1, 3)
    assert event.lines[0].text == PSYCOPG
    assert event.labels == {"service": "backend"}


def test_the_logs_family_is_a_stream_of_its_own_kept_seven_days() -> None:
    assert "logs" in FAMILIES
    config = stream_config(Subjects("jarvis"), StreamsConfig(), "logs")
    assert config.subjects == ["jarvis.logs.>"]
    assert config.max_age == 7 * 86400
    assert config.max_bytes == 1024**3  # capped: a chatty fleet never fills the disk


# the built-in rule, on an injected clock -----------------------------------------------------------


def _log_check(status: Status, detail: str) -> events.HealthEvent:
    return health("web01", "container", "log:backend", status, labels={"container": "backend"}, detail=detail)


def test_nine_minutes_of_error_lines_raise_the_log_alert_with_those_lines() -> None:
    """The issue's case with default config: the agent's check is warning while the burst lasts."""
    (rule,) = [r for r in DEFAULT_RULES if r.name == "container_log_errors"]
    assert rule.for_ == Duration(120)
    counter = tally()
    driver = Driver(EvaluatorConfig(), start=0.0)
    fired_at = None
    for second in range(0, 9 * 60, 10):  # an error every 5 s, a cycle every 10 s
        counter.add(PSYCOPG, now=second)
        counter.add(PSYCOPG, now=second + 5)
        summary = counter.drain(now=second + 10, wall=T0 + second + 10)
        driver.at(second + 10, _log_check("warning" if summary.burst else "ok", summary.detail()))
        firing = [a for a in driver.alerts if a.rule == "container_log_errors" and a.status == "firing"]
        if firing and fired_at is None:
            fired_at = second + 10
            alert = firing[0]
    assert fired_at is not None
    assert fired_at <= 4 * 60
    assert alert.severity == "warning"
    assert alert.summary == "backend on web01 keeps logging errors"
    assert PSYCOPG in alert.description
    assert alert.description.startswith("burst: 5 or more error lines within 1m")


def test_one_short_burst_of_errors_is_no_alert() -> None:
    counter = tally()
    driver = Driver(EvaluatorConfig(), start=0.0)
    for _ in range(50):
        counter.add(PSYCOPG, now=1.0)
    for cycle in range(1, 30):
        summary = counter.drain(now=cycle * 10.0, wall=T0 + cycle * 10)
        driver.at(cycle * 10.0, _log_check("warning" if summary.burst else "ok", summary.detail()))
    assert not [a for a in driver.alerts if a.rule == "container_log_errors" and a.status == "firing"]


def test_the_slack_message_shows_the_quoted_lines_escaped() -> None:
    counter = tally(burst_errors=1)
    counter.add("ERROR <!channel> *bold* & <http://evil|click>", now=1)
    detail = counter.drain(now=2, wall=T0).detail()
    driver = Driver(EvaluatorConfig(), start=0.0)
    for t in range(0, 200, 10):
        driver.at(float(t), _log_check("warning", detail))
    (alert,) = [a for a in driver.alerts if a.rule == "container_log_errors" and a.status == "firing"]
    note = Notification(id="n", group_key="g", route="default", status="firing", alerts=[alert], ts=T0)
    text = str(render_slack(note, FormatOptions()).payload())
    assert "ERROR &lt;!channel&gt; *bold* &amp; &lt;http://evil|click&gt;" in text.replace("\\u200b", "")
    assert "<!channel>" not in text


# the search ----------------------------------------------------------------------------------------


def _batch(container: str, *lines: tuple[float, str, str], host: str = "web01") -> LogLines:
    kept = [LogLine(ts, level, text) for ts, level, text in lines]  # type: ignore[arg-type]
    return LogLines(host=host, agent="container", container=container, ts=T0, lines=kept)


def test_the_search_keeps_lines_from_since_on_of_the_level_and_pattern_asked() -> None:
    query = parse_query(since="8d", level="error", grep=r"psycopg2\.\w+Error", now=T0)
    batch = _batch(
        "backend",
        (T0 - 9 * 86400, "error", PSYCOPG),  # older than --since 8d: never shown
        (T0 - 3600, "warning", "WARNING psycopg2.OperationalError retry"),
        (T0 - 60, "error", PSYCOPG),
        (T0 - 30, "error", "ERROR something else"),
    )
    assert [(f.ts, f.text) for f in matching(query, batch)] == [(T0 - 60, PSYCOPG)]


def test_the_search_filters_container_and_host_in_the_subject_and_again_in_the_payload() -> None:
    subjects = Subjects("jarvis")
    assert parse_query(since="1h").subject(subjects) == "jarvis.logs.*.*"
    exact = parse_query(since="1h", container="jarvis.backend", host="web01")
    assert exact.subject(subjects) == "jarvis.logs.web01.jarvis_backend"
    pattern = parse_query(since="1h", container="jarvis-*", now=T0)
    assert pattern.subject(subjects) == "jarvis.logs.*.*"
    line = (T0, "error", "ERROR x")
    assert list(matching(pattern, _batch("jarvis-api", line)))
    assert not list(matching(pattern, _batch("other", line)))
    assert not list(matching(parse_query(since="1h", host="web02", now=T0), _batch("a", line)))
    # sanitised tokens collide (jarvis_backend, jarvis.backend): the payload's own name decides
    assert not list(
        matching(parse_query(since="1h", container="jarvis.backend", now=T0), _batch("jarvis_backend", line))
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"since": "1 hour"}, "--since: invalid duration '1 hour'"),
        ({"since": "1h", "grep": "ERROR("}, "--grep: 'ERROR(' is not a regular expression"),
        ({"since": "1h", "limit": -1}, "--limit: give a number of lines"),
    ],
)
def test_a_bad_search_is_a_clear_message(options: dict[str, Any], message: str) -> None:
    with pytest.raises(QueryError, match=re.escape(message)):
        parse_query(**options)


def test_a_found_line_prints_with_nothing_a_terminal_would_obey() -> None:
    query = Query(since=0)
    (found,) = matching(query, _batch("api\x1b[2J", (T0, "error", "ERROR \x1b]0;pwned\x07 x")))
    line = render(found)
    assert "\x1b" not in line
    assert "\x07" not in line
    assert "ERROR" in line
    assert "api?[2J" in line


def test_tail_shows_a_batch_of_kept_lines_on_one_safe_line() -> None:
    batch = _batch("backend", (T0, "error", "ERROR \x1b[2Jgone"))
    line = describe(batch)
    assert "logs" in line
    assert "web01/backend  1 line(s)  ERROR ?[2Jgone" in line
