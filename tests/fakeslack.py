"""A local server that speaks Slack's HTTP API (incoming webhook, chat.postMessage, chat.update).

It records every request byte for byte and answers from a script: ok, 429 with Retry-After, 500,
a Slack error (`{"ok": false, "error": ...}`), or a hang until released; or from a timeline on
the sink's fake clock ("429 for 5 minutes, then 500 for 10"). It can be taken down (connections
refused) and brought back on the same port.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from bus.server import free_port

WEBHOOK_PATH = "/services/T000/B000/secretwebhookpath"
TOKEN = "xoxb-fake-secret-token"

# `hang`: the request is held and never accepted; `accept_then_hang`: Slack posts the message,
# then holds the answer (the worst moment for a sink to die).
AnswerKind = Literal["ok", "ratelimited", "server_error", "slack_error", "hang", "accept_then_hang"]


@dataclass(frozen=True)
class Answer:
    kind: AnswerKind = "ok"
    retry_after: int = 1
    error: str = "channel_not_found"


OK = Answer()
SERVER_ERROR = Answer("server_error")
HANG = Answer("hang")
ACCEPT_THEN_HANG = Answer("accept_then_hang")


def ratelimited(retry_after: int) -> Answer:
    return Answer("ratelimited", retry_after=retry_after)


def slack_error(error: str) -> Answer:
    return Answer("slack_error", error=error)


@dataclass
class Request:
    """One request as Slack would have received it."""

    path: str
    body: bytes
    headers: dict[str, str]
    at: float  # on arrival: the fake clock's time if the server has one, else time.monotonic()
    answer: AnswerKind = "ok"

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    @property
    def method(self) -> str:
        """`webhook`, `chat.postMessage` or `chat.update`."""
        return "webhook" if self.path == WEBHOOK_PATH else self.path.removeprefix("/api/")


@dataclass
class Message:
    """A message as it stands in the fake channel (after any chat.update)."""

    channel: str
    ts: str
    payload: dict[str, Any]
    thread_ts: str | None = None
    updates: int = 0


@dataclass
class FakeSlack:
    port: int = field(default_factory=free_port)
    requests: list[Request] = field(default_factory=list)
    messages: dict[str, Message] = field(default_factory=dict)
    webhook_posts: list[dict[str, Any]] = field(default_factory=list)
    script: list[Answer] = field(default_factory=list)
    # (until, answer): before `until` on `clock`, requests get `answer`; first match wins
    timeline: list[tuple[float, Answer]] = field(default_factory=list)
    clock: FakeClock | None = None
    # the answer to every request for a channel (by the name the sink posts to), before all else
    channel_answers: dict[str, Answer] = field(default_factory=dict)
    default: Answer = OK
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hanging: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    _ts: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base}/api/"

    @property
    def webhook_url(self) -> str:
        return f"{self.base}{WEBHOOK_PATH}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(WEBHOOK_PATH, self._webhook)
        app.router.add_post("/api/chat.postMessage", self._post_message)
        app.router.add_post("/api/chat.update", self._update)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Take Slack down: connections are refused until start()."""
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def accepted(self, method: str | None = None) -> list[Request]:
        """Requests Slack accepted, oldest first, optionally of one method."""
        return [
            r
            for r in self.requests
            if r.answer in ("ok", "accept_then_hang") and (method is None or r.method == method)
        ]

    async def _hold_if_asked(self, record: Request, response: web.Response) -> web.Response:
        if record.answer == "accept_then_hang":
            self.hanging.set()
            await self.release.wait()
        return response

    async def _answer(self, request: web.Request) -> tuple[Request, web.Response | None]:
        now = self.clock.now if self.clock is not None else time.monotonic()
        record = Request(request.path, await request.read(), dict(request.headers), now)
        self.requests.append(record)
        answer = self._channel_answer(record) or self._next_answer(now)
        record.answer = answer.kind
        if answer.kind == "hang":
            self.hanging.set()
            await self.release.wait()
            return record, web.json_response({"ok": False, "error": "released"}, status=503)
        if answer.kind == "ratelimited":
            headers = {"Retry-After": str(answer.retry_after)}
            return record, web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers=headers
            )
        if answer.kind == "server_error":
            return record, web.Response(status=500, text="internal error", content_type="text/html")
        if answer.kind == "slack_error":
            return record, web.json_response({"ok": False, "error": answer.error})
        return record, None

    def _channel_answer(self, record: Request) -> Answer | None:
        if not self.channel_answers or record.method == "webhook":
            return None
        return self.channel_answers.get(record.json.get("channel", ""))

    def _next_answer(self, now: float) -> Answer:
        for until, answer in self.timeline:
            if now < until:
                return answer
        return self.script.pop(0) if self.script else self.default

    async def _webhook(self, request: web.Request) -> web.Response:
        record, refusal = await self._answer(request)
        if refusal is not None:
            if record.answer == "slack_error":  # webhooks say it with a status and a plain body
                error = json.loads(refusal.text or "{}").get("error", "invalid_payload")
                return web.Response(status=404 if error == "channel_not_found" else 400, text=error)
            return refusal
        self.webhook_posts.append(record.json)
        return await self._hold_if_asked(record, web.Response(text="ok"))

    def _authorised(self, record: Request) -> bool:
        return record.headers.get("Authorization") == f"Bearer {TOKEN}"

    async def _post_message(self, request: web.Request) -> web.Response:
        record, refusal = await self._answer(request)
        if refusal is not None:
            return refusal
        if not self._authorised(record):
            record.answer = "slack_error"
            return web.json_response({"ok": False, "error": "invalid_auth"})
        body = record.json
        self._ts += 1
        ts = f"1700000000.{self._ts:06d}"
        channel = channel_id(body["channel"])
        self.messages[ts] = Message(channel, ts, body, thread_ts=body.get("thread_ts"))
        return await self._hold_if_asked(
            record, web.json_response({"ok": True, "channel": channel, "ts": ts})
        )

    async def _update(self, request: web.Request) -> web.Response:
        record, refusal = await self._answer(request)
        if refusal is not None:
            return refusal
        body = record.json
        message = self.messages.get(body.get("ts", ""))
        if message is None or message.channel != body.get("channel"):
            record.answer = "slack_error"
            return web.json_response({"ok": False, "error": "message_not_found"})
        message.payload = body
        message.updates += 1
        response = web.json_response({"ok": True, "channel": message.channel, "ts": message.ts})
        return await self._hold_if_asked(record, response)

    def top_level(self) -> list[Message]:
        """Messages posted into the channel itself (not thread replies), oldest first."""
        return [m for m in self.messages.values() if m.thread_ts is None]

    def replies(self, ts: str) -> list[Message]:
        return [m for m in self.messages.values() if m.thread_ts == ts]


@dataclass
class FakeClock:
    """The sink's clock in tests: time moves only when someone sleeps, and every sleep is recorded."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def channel_id(name: str) -> str:
    """The id Slack answers with for a channel name, as real Slack does (C...)."""
    return name if name.startswith("C") else "C" + name.lstrip("#").upper().replace("-", "")
