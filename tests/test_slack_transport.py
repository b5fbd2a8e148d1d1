"""The Slack transports against odd answers from a real local HTTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from sinks.slack_delivery import DeliveryError
from sinks.slack_format import SlackMessage
from sinks.slack_transport import BotTransport, WebhookTransport

TOKEN = "xoxb-transport-test-token"


@pytest.fixture
async def proxy_error_page() -> AsyncIterator[str]:
    """A Web API that answers 502 with an HTML page labelled as JSON, as a broken proxy may."""

    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>bad gateway</html>", content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/chat.postMessage", bad_gateway)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/api/"
    finally:
        await runner.cleanup()


async def test_a_json_labelled_error_page_is_a_retryable_delivery_error(proxy_error_page: str) -> None:
    """slack-sdk raises that one with aiohttp's response; it must become a DeliveryError, not a crash."""
    transport = BotTransport(TOKEN, {"default": "#alerts"}, proxy_error_page, 2)
    try:
        with pytest.raises(DeliveryError) as caught:
            await transport.post("#alerts", SlackMessage("hello"))
    finally:
        await transport.close()
    assert caught.value.retryable
    assert caught.value.reason == "HTTP 502"
    assert TOKEN not in caught.value.reason


@pytest.fixture
async def webhook_answering() -> AsyncIterator[tuple[str, list[tuple[int, str]]]]:
    """A webhook that answers each request with the next (status, body) of the list it yields."""
    answers: list[tuple[int, str]] = []

    async def hook(request: web.Request) -> web.Response:
        status, body = answers.pop(0)
        return web.Response(status=status, text=body)

    app = web.Application()
    app.router.add_post("/services/T/B/secret", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/services/T/B/secret", answers
    finally:
        await runner.cleanup()


async def webhook_refusal(url: str) -> DeliveryError:
    """What posting to the webhook at `url` raises."""
    transport = WebhookTransport(url, 2)
    try:
        with pytest.raises(DeliveryError) as caught:
            await transport.post("webhook", SlackMessage("hello"))
    finally:
        await transport.close()
    return caught.value


@pytest.mark.parametrize(
    ("status", "body", "retryable"),
    [
        (400, "invalid_blocks", False),
        (400, "invalid_payload", False),
        (404, "channel_not_found", False),
        (410, "channel_is_archived", False),
        (413, "too large", False),
        (408, "request timeout", True),
        (500, "internal error", True),
        (503, "unavailable", True),
    ],
)
async def test_a_webhook_refusal_is_permanent_unless_it_can_heal(
    webhook_answering: tuple[str, list[tuple[int, str]]], status: int, body: str, retryable: bool
) -> None:
    """What Slack will never take goes to the dead letters at once; only what heals is retried."""
    url, answers = webhook_answering
    answers.append((status, body))
    refusal = await webhook_refusal(url)
    assert refusal.retryable is retryable
    assert refusal.reason == f"webhook answered {status}: {body}"
    assert "secret" not in refusal.reason


async def test_a_refusal_quoting_the_webhook_near_its_cut_keeps_no_part_of_it(
    webhook_answering: tuple[str, list[tuple[int, str]]],
) -> None:
    """A proxy's page that quotes the URL where the reason is cut: the URL is removed before the cut."""
    url, answers = webhook_answering
    answers.append((403, "x" * 146 + f" denied for POST {url} (ref 12345)"))  # cut in the path
    refusal = await webhook_refusal(url)
    assert "/services/T" not in refusal.reason
    assert refusal.reason.startswith("webhook answered 403: xxx")
