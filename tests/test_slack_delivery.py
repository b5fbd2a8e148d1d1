"""Slack delivery policy and setup: per-channel rate limit, Retry-After, backoff, secrets, config."""

from __future__ import annotations

import collections
import itertools
import math
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
import pytest

from bus.subjects import Subjects
from bus.units import dec_hook
from sinks.slack import SlackConfigError, SlackSinkConfig, resolve_secrets, thread_key
from sinks.slack_delivery import ChannelRateLimiter, DeliveryError, RetryPolicy, Sender
from sinks.slack_transport import BotTransport, retry_after
from tests.fakeslack import FakeClock


async def test_one_message_per_second_per_channel() -> None:
    clock = FakeClock()
    limiter = ChannelRateLimiter(1.0, clock)
    sent: list[tuple[str, float]] = []
    for channel in ("#alerts", "#alerts", "#oncall", "#alerts"):
        await limiter.acquire(channel)
        sent.append((channel, clock.now))
    assert sent == [("#alerts", 1000.0), ("#alerts", 1001.0), ("#oncall", 1001.0), ("#alerts", 1002.0)]


async def test_a_quiet_channel_sends_at_once() -> None:
    clock = FakeClock()
    limiter = ChannelRateLimiter(1.0, clock)
    await limiter.acquire("#alerts")
    clock.now += 5
    await limiter.acquire("#alerts")
    assert clock.sleeps == []


async def test_a_429_pauses_the_channel_for_its_retry_after() -> None:
    clock = FakeClock()
    limiter = ChannelRateLimiter(1.0, clock)
    await limiter.acquire("#alerts")
    limiter.pause("#alerts", 30)
    await limiter.acquire("#alerts")
    await limiter.acquire("#oncall")
    assert clock.sleeps == [30.0]
    assert clock.now == 1030.0


class ScriptedSlack:
    """Slack answering by the fake clock: each phase (until, error) answers `error` before `until`,
    then every request is accepted. Records every attempt as (channel, time, what it got)."""

    def __init__(self, clock: FakeClock, phases: Sequence[tuple[float, DeliveryError]] = ()) -> None:
        self.clock = clock
        self.phases = list(phases)
        self.attempts: list[tuple[str, float, str]] = []
        self.delivered: list[str] = []

    def post(self, channel: str, text: str) -> Callable[[], Awaitable[str]]:
        async def call() -> str:
            now = self.clock.monotonic()
            error = next((error for until, error in self.phases if now < until), None)
            self.attempts.append((channel, now, error.reason if error else "ok"))
            if error is not None:
                raise DeliveryError(
                    error.reason,
                    retryable=error.retryable,
                    retry_after=error.retry_after,
                    credentials=error.credentials,
                )
            self.delivered.append(text)
            return text

        return call


def rate_limited(retry_after: float = 5) -> DeliveryError:
    return DeliveryError("rate limited (429)", retryable=True, retry_after=retry_after)


SERVER_ERROR = DeliveryError("HTTP 500", retryable=True)


def sender(clock: FakeClock, policy: RetryPolicy | None = None, min_interval: float = 1.0) -> Sender:
    return Sender(
        policy or RetryPolicy(), ChannelRateLimiter(min_interval, clock), clock, rng=random.Random(7)
    )


def closest_attempts(attempts: Sequence[tuple[str, float, str]]) -> dict[str, float]:
    """Per channel, the shortest time between two requests to it."""
    times: dict[str, list[float]] = {}
    for channel, at, _ in attempts:
        times.setdefault(channel, []).append(at)
    return {c: min((b - a for a, b in itertools.pairwise(ts)), default=math.inf) for c, ts in times.items()}


async def test_429_for_five_minutes_then_500_for_ten_costs_time_never_a_notification() -> None:
    """Every notification is delivered once, in order, at most one request per second per channel."""
    clock = FakeClock()
    start = clock.now
    slack = ScriptedSlack(clock, [(start + 300, rate_limited(5)), (start + 900, SERVER_ERROR)])
    delivery = sender(clock)
    queue = [(f"#{'oncall' if n % 3 == 0 else 'alerts'}", f"notification {n}") for n in range(1, 13)]
    for channel, text in queue:  # one at a time, as the sink's consumer hands them out
        assert await delivery.send(channel, slack.post(channel, text)) == text
    assert slack.delivered == [text for _, text in queue]
    assert min(closest_attempts(slack.attempts).values()) >= 1.0 - 1e-9
    outcomes = collections.Counter(outcome for _, _, outcome in slack.attempts)
    assert outcomes["rate limited (429)"] == 60, "Retry-After: 5 honoured for five minutes, no more"
    assert outcomes["ok"] == 12
    first_ok = next(at for _, at, outcome in slack.attempts if outcome == "ok")
    assert start + 900 <= first_ok <= start + 900 + RetryPolicy().max_backoff, "back within one backoff"


async def test_429_never_counts_towards_giving_up() -> None:
    clock = FakeClock()
    policy = RetryPolicy(max_retry_time=60, max_backoff=30)
    slack = ScriptedSlack(clock, [(clock.now + 3600, rate_limited(30))])
    assert await sender(clock, policy).send("#alerts", slack.post("#alerts", "hello")) == "hello"
    assert len(slack.attempts) == 121, "an hour of 429s at 30 s each, then delivered"


async def test_retry_after_is_honoured_up_to_max_backoff_and_never_below_a_second() -> None:
    clock = FakeClock()
    slack = ScriptedSlack(clock, [(clock.now + 0.5, rate_limited(0)), (clock.now + 100, rate_limited(3600))])
    await sender(clock, RetryPolicy(max_backoff=40), min_interval=0).send("#a", slack.post("#a", "x"))
    assert [at - 1000 for _, at, _ in slack.attempts] == [0, 1, 41, 81, 121]


async def test_server_errors_back_off_with_jitter_up_to_the_cap() -> None:
    clock = FakeClock()
    slack = ScriptedSlack(clock, [(clock.now + 200, SERVER_ERROR)])
    policy = RetryPolicy(initial_backoff=2, max_backoff=20)
    await sender(clock, policy, min_interval=0).send("#alerts", slack.post("#alerts", "x"))
    waits = [b[1] - a[1] for a, b in itertools.pairwise(slack.attempts)]
    ceilings = [2, 4, 8, 16] + [20] * (len(waits) - 4)
    assert all(c / 2 <= w <= c for w, c in zip(waits, ceilings, strict=True)), waits
    assert len(set(waits[4:])) > 1, "capped waits are still spread by jitter"


async def test_server_errors_past_max_retry_time_give_up_with_how_long_it_failed() -> None:
    clock = FakeClock()
    slack = ScriptedSlack(clock, [(math.inf, SERVER_ERROR)])
    policy = RetryPolicy(max_retry_time=3600, max_backoff=300)
    with pytest.raises(DeliveryError) as caught:
        await sender(clock, policy).send("#alerts", slack.post("#alerts", "x"))
    assert caught.value.reason == "HTTP 500"
    assert caught.value.failing_for == pytest.approx(3600)
    assert caught.value.attempts == len(slack.attempts)
    assert slack.attempts[-1][1] == pytest.approx(1000 + 3600), "a last attempt at the deadline"


async def test_a_permanent_error_gives_up_at_once() -> None:
    clock = FakeClock()
    slack = ScriptedSlack(clock, [(math.inf, DeliveryError("invalid_blocks", retryable=False))])
    with pytest.raises(DeliveryError) as caught:
        await sender(clock).send("#alerts", slack.post("#alerts", "x"))
    assert (caught.value.reason, caught.value.attempts) == ("invalid_blocks", 1)
    assert clock.sleeps == []


async def test_a_refused_token_is_tried_again_past_max_retry_time_until_slack_takes_it() -> None:
    """A revoked token refuses every notification: dead-lettering each at once would empty the queue
    into the dead letters; they wait instead, backing off, however long it lasts."""
    clock = FakeClock()
    refused = DeliveryError("token_revoked", retryable=True, credentials=True)
    slack = ScriptedSlack(clock, [(clock.now + 7200, refused)])
    policy = RetryPolicy(max_retry_time=3600, max_backoff=300)
    assert await sender(clock, policy).send("#alerts", slack.post("#alerts", "x")) == "x"
    assert clock.now >= 1000 + 7200, "still tried after twice max_retry_time"
    assert max(clock.sleeps) <= 300, "backing off no further than max_backoff"


async def test_a_429_ends_an_outage_and_its_clock() -> None:
    """Slack answering again, if only to say wait, starts the time allowed for 5xx afresh."""
    clock = FakeClock()
    start = clock.now
    phases = [(start + 50, SERVER_ERROR), (start + 60, rate_limited(1)), (start + 100, SERVER_ERROR)]
    slack = ScriptedSlack(clock, phases)
    policy = RetryPolicy(max_retry_time=60, max_backoff=10)
    assert await sender(clock, policy).send("#alerts", slack.post("#alerts", "x")) == "x"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), ("0", 0.0), ("soon", 1.0), ("-3", 1.0), ("nan", 1.0), ("999999", 3600.0), (None, 1.0)],
)
def test_retry_after_header_is_read_safely(header: str | None, seconds: float) -> None:
    headers = {} if header is None else {"Retry-After": header}
    assert retry_after(headers) == seconds


def test_mode_comes_from_the_environment_as_the_runbook_documents() -> None:
    config = SlackSinkConfig()
    assert resolve_secrets(config, {}).mode == "console"
    webhook = resolve_secrets(config, {"SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x"})
    assert webhook.mode == "webhook"
    both = {"SLACK_WEBHOOK_URL": "https://hooks.slack.com/x", "SLACK_BOT_TOKEN": "xoxb-1"}
    assert resolve_secrets(config, both).mode == "bot"


def test_secret_files_win_over_the_environment(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("xoxb-from-file\n")
    config = SlackSinkConfig(bot_token_file=str(token))
    secrets = resolve_secrets(config, {"SLACK_BOT_TOKEN": "xoxb-from-env"})
    assert secrets.bot_token == "xoxb-from-file"
    assert "xoxb" not in repr(secrets)


def test_unreadable_or_bad_secrets_are_one_clear_line_without_the_secret(tmp_path: Path) -> None:
    with pytest.raises(SlackConfigError, match=r"sinks.slack.bot_token_file: cannot read .*/missing"):
        resolve_secrets(SlackSinkConfig(bot_token_file=str(tmp_path / "missing")), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SlackConfigError, match="is empty"):
        resolve_secrets(SlackSinkConfig(webhook_url_file=str(tmp_path / "empty")), {})
    with pytest.raises(SlackConfigError) as caught:
        resolve_secrets(SlackSinkConfig(), {"SLACK_WEBHOOK_URL": "hooks.slack.com/secret-path"})
    assert str(caught.value) == "SLACK_WEBHOOK_URL: not an http(s) URL"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"channels": {"critical": "#oncall"}}, "channels needs a `default` channel"),
        ({"api_url": "slack.com/api"}, "is not an http(s) URL"),
        ({"durable": "my sink"}, "durable: use 1 to 64 letters"),
        ({"max_retry_time": 6}, "invalid duration 6"),
        ({"initial_backoff": "10m", "max_backoff": "1m"}, "max_backoff is shorter than initial_backoff"),
    ],
)
def test_bad_config_is_refused_with_a_clear_message(table: dict[str, object], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(table, SlackSinkConfig, dec_hook=dec_hook)


def test_config_reads_channels_and_durations() -> None:
    table = {"channels": {"default": "#alerts", "critical": "#oncall"}, "min_interval": "2s"}
    config = msgspec.convert(table, SlackSinkConfig, dec_hook=dec_hook)
    assert config.channels["critical"] == "#oncall"
    assert config.min_interval.seconds == 2


@pytest.mark.parametrize("group_key", ["host=web01", "host=<!channel> *.>", "ü\x00" * 300, ""])
def test_thread_keys_are_valid_kv_keys_and_distinct_per_route(group_key: str) -> None:
    key = thread_key("default", group_key)
    assert re.fullmatch(r"slack\.thread\.[0-9a-f]{32}", key)
    assert key != thread_key("critical", group_key)
    assert key == thread_key("default", group_key)


def test_dead_letter_subject_keeps_the_route_as_one_token() -> None:
    subjects = Subjects("jarvis")
    assert subjects.deadletter("critical") == "jarvis.deadletter.notifications.critical"
    assert subjects.deadletter("a.b *>") == "jarvis.deadletter.notifications.a_b___"


async def test_a_channel_mapped_by_the_sink_wins_then_the_routes_receiver_then_the_default() -> None:
    channels = {"default": "#alerts", "db": "#dba"}
    transport = BotTransport("xoxb-test", channels, "http://127.0.0.1:9/api/", 1.0)
    try:
        assert transport.channel_for("db", "#oncall") == "#dba"
        assert transport.channel_for("oncall", "#oncall") == "#oncall"
        assert transport.channel_for("oncall") == "#alerts"
    finally:
        await transport.close()


def test_a_config_with_the_retired_max_attempts_says_what_replaced_it() -> None:
    from jarvis_monitor.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as caught:
        parse_config({"sinks": {"slack": {"max_attempts": 8}}})
    (problem,) = caught.value.problems
    assert problem.startswith("sinks.slack.max_attempts: no longer used")
    assert "max_retry_time" in problem
