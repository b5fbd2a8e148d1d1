"""Talking to Slack through slack-sdk: an incoming webhook, or the Web API with a bot token.

slack-sdk's own retry handlers are switched off so the sink's policy (rate limit, Retry-After,
backoff for a bounded time, dead letter) is the only one that runs, and its logger is kept quiet
because at debug level it would log the webhook URL, which is a secret.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bus.redact import redact_text
from sinks.slack_delivery import DeliveryError
from sinks.slack_format import SlackMessage

_sdk_log = logging.getLogger("sinks.slack.sdk")
_sdk_log.setLevel(logging.WARNING)  # slack-sdk tests `logger.level`, not the effective level

MAX_RETRY_AFTER = 3600.0
# Web API errors worth another attempt; any other `ok: false` is permanent (bad channel, bad token).
RETRYABLE_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
# Refusals of the token or the webhook itself (Web API error codes, webhook bodies): nothing can be
# delivered until someone fixes it, so the sink waits with its notifications rather than dead-letter
# every one of them.
CREDENTIAL_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "token_expired",
        "account_inactive",
        "missing_scope",
        "not_allowed_token_type",
        "invalid_token",
        "no_service",
        "no_team",
        "team_disabled",
        "no_active_hooks",
    }
)
# HTTP answers below 500 that are worth another attempt (request timeout, too early).
TRANSIENT_STATUS = frozenset({408, 425})
# chat.update or a thread reply whose message is gone: post a fresh message instead.
MESSAGE_GONE = frozenset({"message_not_found", "cant_update_message", "thread_not_found"})
# The message is too long, or its blocks are refused: sent again in short, not dead-lettered.
TOO_LONG = frozenset({"msg_blocks_too_long", "msg_too_long", "invalid_blocks", "invalid_attachments"})


@dataclass(frozen=True)
class Posted:
    """Where a message landed: the channel id and its ts (None for a webhook, which does not say)."""

    channel: str
    ts: str | None


class Transport(Protocol):
    """One way of reaching Slack."""

    mode: str

    def channel_for(self, route: str, receiver: str = "") -> str:
        """The channel of a notification: the sink's own mapping of its route, else the route's receiver."""
        ...

    async def post(self, channel: str, message: SlackMessage, thread_ts: str | None = None) -> Posted: ...

    async def update(self, channel: str, ts: str, message: SlackMessage) -> None: ...

    async def close(self) -> None: ...


def retry_after(headers: Any) -> float:
    """Seconds from a Retry-After header; 1 s when it is missing or unreadable, capped at an hour."""
    try:
        seconds = float(headers.get("Retry-After", "1"))
    except (TypeError, ValueError):
        return 1.0
    return min(MAX_RETRY_AFTER, seconds) if math.isfinite(seconds) and seconds >= 0 else 1.0


def _session(timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))


class _Scrubber:
    """Removes the secrets from error texts before they are logged."""

    def __init__(self, *secrets: str) -> None:
        self.secrets = [s for s in secrets if s]

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return redact_text(text)

    def network(self, exc: BaseException) -> DeliveryError:
        if isinstance(exc, TimeoutError):
            return DeliveryError("no answer from Slack in time", retryable=True)
        return DeliveryError(f"network error: {self(str(exc)) or type(exc).__name__}", retryable=True)


class WebhookTransport:
    """An incoming webhook: every notification is a new message in the webhook's channel."""

    mode = "webhook"

    def __init__(self, url: str, timeout: float) -> None:
        self._session = _session(timeout)
        self._client = AsyncWebhookClient(
            url, timeout=math.ceil(timeout), session=self._session, logger=_sdk_log, retry_handlers=[]
        )
        path = urlsplit(url).path  # the secret part, should an error quote it without the host
        self._scrub = _Scrubber(url, path if len(path) > 8 else "")

    def channel_for(self, route: str, receiver: str = "") -> str:
        return "webhook"

    async def post(self, channel: str, message: SlackMessage, thread_ts: str | None = None) -> Posted:
        try:
            response = await self._client.send_dict(message.payload())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._scrub.network(exc) from None
        status, body = response.status_code, self._scrub(str(response.body or ""))[:200]
        if status == 200:
            return Posted(channel, None)
        if status == 429:
            raise DeliveryError(
                "rate limited (429)", retryable=True, retry_after=retry_after(response.headers)
            )
        reason = f"webhook answered {status}: {body}"
        if body.strip() in CREDENTIAL_ERRORS:  # a revoked or disabled webhook
            raise DeliveryError(reason, retryable=True, credentials=True)
        # other 4xx (invalid_payload, invalid_blocks, channel_not_found) never heal
        retryable = status >= 500 or status in TRANSIENT_STATUS
        raise DeliveryError(reason, retryable=retryable, too_long=body.strip() in TOO_LONG)

    async def update(self, channel: str, ts: str, message: SlackMessage) -> None:
        raise DeliveryError("a webhook cannot update a message", retryable=False)

    async def close(self) -> None:
        await self._session.close()


class BotTransport:
    """The Web API with a bot token: chat.postMessage into a channel per route, chat.update."""

    mode = "bot"

    def __init__(self, token: str, channels: dict[str, str], api_url: str, timeout: float) -> None:
        self._session = _session(timeout)
        self._client = AsyncWebClient(
            token=token,
            base_url=api_url,
            timeout=math.ceil(timeout),
            session=self._session,
            logger=_sdk_log,
            retry_handlers=[],
        )
        self._channels = channels
        self._scrub = _Scrubber(token)

    def channel_for(self, route: str, receiver: str = "") -> str:
        return self._channels.get(route) or receiver or self._channels["default"]

    def _error(self, exc: SlackApiError) -> DeliveryError:
        response = exc.response
        # slack-sdk raises some errors (a JSON content type whose body is not JSON, as a proxy's
        # error page may be) with aiohttp's response, which has `status` and no parsed data
        status = int(getattr(response, "status_code", None) or getattr(response, "status", 0) or 0)
        data = getattr(response, "data", None)
        data = data if isinstance(data, dict) else {}
        code = str(data.get("error") or f"HTTP {status}")
        if status == 429 or code == "ratelimited":
            return DeliveryError(
                "rate limited (429)", retryable=True, retry_after=retry_after(response.headers)
            )
        if code in CREDENTIAL_ERRORS:
            return DeliveryError(self._scrub(code), retryable=True, credentials=True)
        retryable = status >= 500 or status in TRANSIENT_STATUS or code in RETRYABLE_ERRORS
        return DeliveryError(self._scrub(code), retryable=retryable, too_long=code in TOO_LONG)

    async def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._client.api_call(method, json=kwargs)
        except SlackApiError as exc:
            raise self._error(exc) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._scrub.network(exc) from None
        data = response.data
        return data if isinstance(data, dict) else {}

    async def post(self, channel: str, message: SlackMessage, thread_ts: str | None = None) -> Posted:
        kwargs: dict[str, Any] = {"channel": channel, **message.payload()}
        if thread_ts is not None:
            kwargs["thread_ts"] = thread_ts
        data = await self._call("chat.postMessage", **kwargs)
        return Posted(str(data.get("channel") or channel), str(data["ts"]) if data.get("ts") else None)

    async def update(self, channel: str, ts: str, message: SlackMessage) -> None:
        await self._call("chat.update", channel=channel, ts=ts, **message.payload())

    async def close(self) -> None:
        await self._session.close()
