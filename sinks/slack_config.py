"""The Slack sink's config table and its secrets, apart from the sink: loading the config loads no
NATS consumer and no Slack client."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

from bus.units import Duration

DEFAULT_API_URL = "https://slack.com/api/"
_DURABLE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# each one held is kept alive with JetStream every ack_wait / 3, and kept in memory
MAX_PENDING = 10_000


class SlackSinkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: Annotated[bool, Meta(description="run the Slack sink in `up`")] = True
    webhook_url_file: Annotated[
        str | None,
        Meta(
            description="file holding an incoming webhook URL (or set SLACK_WEBHOOK_URL); "
            "with neither a webhook nor a bot token, notifications are printed to the console",
            examples=["/etc/jarvis-monitor/slack-webhook"],
        ),
    ] = None
    bot_token_file: Annotated[
        str | None,
        Meta(
            description="file holding a bot token (or set SLACK_BOT_TOKEN); bot mode posts one message "
            "per group, threads its reminders and updates it on resolve; it wins over a webhook",
            examples=["/etc/jarvis-monitor/slack-bot-token"],
        ),
    ] = None
    channels: Annotated[
        dict[str, str],
        Meta(
            description="bot mode: channel per notification route, before the route's own `receiver`; "
            "`default` takes notifications that name neither",
            examples=[{"default": "#alerts", "critical": "#oncall"}],
        ),
    ] = msgspec.field(default_factory=lambda: {"default": "#alerts"})
    api_url: Annotated[str, Meta(description="base URL of Slack's Web API")] = DEFAULT_API_URL
    runbook_url: Annotated[
        str | None,
        Meta(
            description="link shown with each alert; `{rule}` is replaced by the rule's name",
            examples=["https://wiki.example.com/runbook#{rule}"],
        ),
    ] = None
    silence_duration: Annotated[
        Duration, Meta(description="duration in the `jarvis-monitor silence add` command each message shows")
    ] = Duration(2 * 3600)
    min_interval: Annotated[
        Duration, Meta(description="at most one message per this interval per channel (Slack's limit)")
    ] = Duration(1)
    timeout: Annotated[Duration, Meta(description="time allowed for one request to Slack")] = Duration(10)
    max_retry_time: Annotated[
        Duration,
        Meta(
            description="how long a notification is retried while Slack fails (5xx, network, timeouts) "
            "before it goes to the dead-letter subject; waits a 429 asks for never count"
        ),
    ] = Duration(6 * 3600)
    initial_backoff: Annotated[
        Duration,
        Meta(
            description="wait after the first failed attempt (5xx, network); doubles each time, with jitter"
        ),
    ] = Duration(1)
    max_backoff: Annotated[
        Duration, Meta(description="cap of the wait between attempts, and of the wait a 429 asks for")
    ] = Duration(300)
    reply_on_resolve: Annotated[
        bool, Meta(description="bot mode: also post a short reply in the thread when a group resolves")
    ] = True
    durable: Annotated[
        str,
        Meta(
            description="name of the JetStream consumer; an instance on it takes over what a stopped "
            "or killed one held (run one at a time: two at once split a group between them)"
        ),
    ] = "slack"
    max_pending: Annotated[
        int,
        Meta(
            description="notifications taken from JetStream at a time and queued by channel, most "
            "severe first (the consumer's max_ack_pending)"
        ),
    ] = 1000
    ack_wait: Annotated[
        Duration, Meta(description="redelivery delay of a notification whose sink died while delivering it")
    ] = Duration(30)
    catch_up: Annotated[
        Duration,
        Meta(description="on the consumer's very first start, how far back notifications are delivered"),
    ] = Duration(3600)

    # Keys of earlier versions: check-config says what became of them instead of "unknown key".
    RETIRED_KEYS: ClassVar[Mapping[str, str]] = {
        "max_attempts": "no longer used: a notification is retried for `max_retry_time` (default 6h), "
        "not a number of attempts, and a 429 never counts; remove the key",
    }

    def __post_init__(self) -> None:
        if "default" not in self.channels:
            raise ValueError("channels needs a `default` channel for routes without their own")
        if any(not channel.strip() for channel in self.channels.values()):
            raise ValueError("channels: a channel name is empty")
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError(f"api_url: {self.api_url!r} is not an http(s) URL")
        if not _DURABLE.fullmatch(self.durable):
            raise ValueError("durable: use 1 to 64 letters, digits, '_' or '-'")
        if self.max_backoff.seconds < self.initial_backoff.seconds:
            raise ValueError("max_backoff is shorter than initial_backoff")
        if not 1 <= self.max_pending <= MAX_PENDING:
            raise ValueError(f"max_pending: use 1 to {MAX_PENDING}")
        if self.timeout.seconds <= 0 or self.ack_wait.seconds < 1:
            raise ValueError("timeout must be positive and ack_wait at least 1s")


class SlackConfigError(ValueError):
    """A Slack secret that cannot be used (unreadable file, not a URL); never shows the secret."""


@dataclasses.dataclass(frozen=True, repr=False)
class SlackSecrets:
    """The webhook URL or bot token, from files or the environment; repr never shows them."""

    webhook_url: str | None = None
    bot_token: str | None = None

    @property
    def mode(self) -> str:
        return "bot" if self.bot_token else "webhook" if self.webhook_url else "console"

    def __repr__(self) -> str:
        return f"SlackSecrets(mode={self.mode!r})"


def _read_secret(path: str, key: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SlackConfigError(f"sinks.slack.{key}: cannot read {path}: {reason}") from None
    if not value:
        raise SlackConfigError(f"sinks.slack.{key}: {path} is empty")
    return value


def resolve_secrets(config: SlackSinkConfig, environ: Mapping[str, str] = os.environ) -> SlackSecrets:
    """The webhook URL and bot token: a file named in the config wins over the environment."""
    url = environ.get("SLACK_WEBHOOK_URL", "").strip() or None
    if config.webhook_url_file:
        url = _read_secret(config.webhook_url_file, "webhook_url_file")
    token = environ.get("SLACK_BOT_TOKEN", "").strip() or None
    if config.bot_token_file:
        token = _read_secret(config.bot_token_file, "bot_token_file")
    if url and not url.startswith(("https://", "http://")):
        source = "webhook_url_file" if config.webhook_url_file else "SLACK_WEBHOOK_URL"
        raise SlackConfigError(f"{source}: not an http(s) URL")
    return SlackSecrets(webhook_url=url, bot_token=token)
