"""The Slack transports against odd answers from a real local HTTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from sinks.slack_delivery import DeliveryError
from sinks.slack_format import SlackMessage
from sinks.slack_transport import BotTransport

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
