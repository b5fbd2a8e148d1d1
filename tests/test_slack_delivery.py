"""Slack delivery policy and setup: per-channel rate limit, Retry-After, backoff, secrets, config."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from bus.subjects import Subjects
from bus.units import dec_hook
from sinks.slack import SlackConfigError, SlackSinkConfig, resolve_secrets, thread_key
from sinks.slack_delivery import ChannelRateLimiter, DeliveryError, RetryPolicy
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


def test_backoff_doubles_up_to_its_cap_and_gives_up_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=8, initial_backoff=1, max_backoff=20)
    server_error = DeliveryError("HTTP 500", retryable=True)
    delays = [policy.delay_after(attempt, server_error) for attempt in range(1, 9)]
    assert delays == [1, 2, 4, 8, 16, 20, 20, None]


def test_retry_after_wins_over_backoff_and_permanent_errors_are_not_retried() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.delay_after(1, DeliveryError("429", retryable=True, retry_after=42)) == 42
    assert policy.delay_after(1, DeliveryError("channel_not_found", retryable=False)) is None


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
        ({"max_attempts": 0}, "Expected `int` >= 1"),
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
