"""The Slack sink against a real nats-server and a fake Slack: what Slack receives, and when."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.aio.msg
import nats.errors
import pytest
from nats.js.errors import NotFoundError

from bus.config import StreamsConfig
from bus.connection import Bus
from bus.events import Alert, Notification, NotificationStatus, encode
from bus.jetstream import provision, stream_name
from bus.server import EmbeddedServer
from bus.units import Duration
from sinks import slack as slack_module
from sinks import slack_format
from sinks.slack import SlackSink, SlackSinkConfig
from tests.conftest import wait_until
from tests.fakeslack import (
    ACCEPT_THEN_HANG,
    HANG,
    OK,
    SERVER_ERROR,
    TOKEN,
    WEBHOOK_PATH,
    FakeClock,
    FakeSlack,
    Request,
    ratelimited,
    slack_error,
)

pytestmark = pytest.mark.integration

STARTS = 1764165720.0
HOSTILE = "<!channel> & <@U1>"


def alerts(status: str, host: str = "web01") -> list[Alert]:
    rules = [("disk_full", "critical"), ("mem_high", "warning"), ("container_down", "warning")]
    return [
        Alert(
            fingerprint=f"{rule}-{host}",
            rule=rule,
            severity=severity,  # type: ignore[arg-type]
            status=status,  # type: ignore[arg-type]
            labels={
                "host": host,
                "agent": "host",
                **({"container": HOSTILE} if rule == "container_down" else {}),
            },
            summary=f"{rule} on {host}",
            value=93.2,
            threshold=90.0,
            starts_at=STARTS,
            ends_at=STARTS + 60 if status == "resolved" else None,
        )
        for rule, severity in rules
    ]


def notification(
    status: NotificationStatus, number: int = 1, host: str = "web01", route: str = "default"
) -> Notification:
    return Notification(
        id=f"{route}:{host}:{number}",
        group_key=f"host={host}",
        route=route,
        status=status,
        alerts=alerts("resolved" if status == "resolved" else "firing", host),
        ts=STARTS + number,
        seq=number,
    )


async def publish(bus: Bus, item: Notification) -> None:
    js = bus.nc.jetstream()
    await js.publish(bus.subjects.notifications(item.route), encode(item), headers={"Nats-Msg-Id": item.id})


@pytest.fixture
async def streams(bus: Bus) -> Bus:
    """The bus with the contract's streams, as `up` provisions them."""
    await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
    return bus


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack()
    await fake.start()
    yield fake
    await fake.stop()


def bot_config(slack: FakeSlack, **overrides: Any) -> SlackSinkConfig:
    table: dict[str, Any] = {
        "api_url": slack.api_url,
        "channels": {"default": "#alerts", "critical": "#oncall"},
        "timeout": Duration(2),
        **overrides,
    }
    return SlackSinkConfig(**table)


BOT_ENV = {"SLACK_BOT_TOKEN": TOKEN}


@contextlib.asynccontextmanager
async def running(sink: SlackSink) -> AsyncIterator[SlackSink]:
    task = asyncio.create_task(sink.run())
    try:
        yield sink
    finally:
        sink.stop()
        await asyncio.wait_for(task, 10)


def all_texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in all_texts(item)]
    if isinstance(value, list):
        return [t for item in value for t in all_texts(item)]
    return []


def assert_nothing_unescaped(requests: list[Request]) -> None:
    for request in requests:
        for text in all_texts(request.json):
            assert not re.search(r"<[!@#]", text), f"unescaped mention in {text!r}"
        assert b"&lt;!channel&gt; &amp; &lt;@U1&gt;" in request.body


async def dead_letters(bus: Bus) -> list[tuple[str, dict[str, str], bytes]]:
    js = bus.nc.jetstream()
    try:
        info = await js.stream_info(stream_name(bus.subjects.prefix, "deadletter"))
    except NotFoundError:
        return []
    if not info.state.messages:
        return []
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream_name(bus.subjects.prefix, "deadletter"), seq)
        found.append((msg.subject or "", dict(msg.headers or {}), msg.data or b""))
    return found


async def wait_for_dead_letters(
    bus: Bus, count: int, timeout: float = 10
) -> list[tuple[str, dict[str, str], bytes]]:
    async def poll() -> list[tuple[str, dict[str, str], bytes]]:
        while len(found := await dead_letters(bus)) < count:
            await asyncio.sleep(0.05)
        return found

    return await asyncio.wait_for(poll(), timeout)


async def test_bot_mode_posts_one_message_then_updates_it_on_resolve(streams: Bus, slack: FakeSlack) -> None:
    """Firing then resolved for three alerts on one host: one message, then that message updated."""
    clock = FakeClock()
    async with running(SlackSink(bot_config(slack), streams, BOT_ENV, clock=clock)):
        await publish(streams, notification("firing", 1))
        await publish(streams, notification("resolved", 2))
        await wait_until(lambda: len(slack.accepted()) == 3)
    post, update, reply = slack.accepted()
    assert (post.method, update.method, reply.method) == (
        "chat.postMessage",
        "chat.update",
        "chat.postMessage",
    )
    assert post.headers["Authorization"] == f"Bearer {TOKEN}"
    assert post.json["channel"] == "#alerts"
    assert post.json["text"] == "🔴 [FIRING:3] web01"
    assert "thread_ts" not in post.json
    (message,) = slack.top_level()
    assert (update.json["channel"], update.json["ts"]) == (message.channel, message.ts)
    assert message.payload["text"] == "✅ [RESOLVED] web01", "the channel no longer shows stale red"
    assert message.payload["attachments"][0]["color"] == "#2eb67d"
    assert [r.payload["text"] for r in slack.replies(message.ts)] == ["✅ resolved: 3 alerts"]
    assert_nothing_unescaped([post, update])
    assert clock.sleeps == [1.0, 1.0], "one message per second per channel"


async def test_webhook_mode_sends_a_firing_then_a_resolved_message(streams: Bus, slack: FakeSlack) -> None:
    env = {"SLACK_WEBHOOK_URL": slack.webhook_url}
    async with running(SlackSink(bot_config(slack), streams, env, clock=FakeClock())):
        await publish(streams, notification("firing", 1))
        await publish(streams, notification("resolved", 2))
        await wait_until(lambda: len(slack.accepted()) == 2)
    firing, resolved = slack.accepted()
    assert (firing.method, resolved.method) == ("webhook", "webhook")
    assert firing.json["text"] == "🔴 [FIRING:3] web01"
    assert resolved.json["text"] == "✅ [RESOLVED] web01"
    assert_nothing_unescaped([firing, resolved])


async def test_reminders_continue_the_thread_after_a_restart(streams: Bus, slack: FakeSlack) -> None:
    """What was published while the sink was down arrives; the thread lives in KV, so the new
    instance replies in the thread the first one started."""
    async with running(SlackSink(bot_config(slack), streams, BOT_ENV, clock=FakeClock())):
        await publish(streams, notification("firing", 1))
        await wait_until(lambda: len(slack.accepted()) == 1)
    await publish(streams, notification("reminder", 2))  # while no sink runs
    await publish(streams, notification("firing", 3, host="db01", route="critical"))
    async with running(SlackSink(bot_config(slack), streams, BOT_ENV, clock=FakeClock())):
        await wait_until(lambda: len(slack.accepted()) == 3)
    first, second = slack.top_level()
    (reminder,) = slack.replies(first.ts)
    assert reminder.payload["text"] == "🔴 [FIRING:3] web01 · ⏰ reminder"
    assert (first.payload["channel"], second.payload["channel"]) == ("#alerts", "#oncall")


async def test_a_group_that_fires_again_after_resolving_gets_a_new_message(
    streams: Bus, slack: FakeSlack
) -> None:
    async with running(
        SlackSink(bot_config(slack, reply_on_resolve=False), streams, BOT_ENV, clock=FakeClock())
    ):
        for number, status in enumerate(("firing", "resolved", "firing"), 1):
            await publish(streams, notification(status, number))  # type: ignore[arg-type]
        await wait_until(lambda: len(slack.accepted()) == 3)
    assert [r.method for r in slack.accepted()] == ["chat.postMessage", "chat.update", "chat.postMessage"]
    assert [m.payload["text"] for m in slack.top_level()] == ["✅ [RESOLVED] web01", "🔴 [FIRING:3] web01"]


class FlakyThreads:
    """The state bucket, answering the calls numbered in `failing` with a NATS timeout (a server in
    election)."""

    def __init__(self, kv: Any, failing: set[int]) -> None:
        self.kv = kv
        self.failing = failing
        self.calls = 0

    def _call(self) -> None:
        self.calls += 1
        if self.calls in self.failing:
            raise nats.errors.TimeoutError

    async def get(self, key: str) -> Any:
        self._call()
        return await self.kv.get(key)

    async def put(self, key: str, value: bytes) -> int:
        self._call()
        return int(await self.kv.put(key, value))


async def test_thread_state_that_nats_cannot_give_for_a_while_is_waited_for_not_guessed(
    streams: Bus, slack: FakeSlack
) -> None:
    """A resolve whose thread record NATS cannot read (or a post whose record it cannot write) waits for
    NATS: posted as a new message instead, it would leave the group's FIRING message red forever."""
    sink = SlackSink(bot_config(slack, reply_on_resolve=False), streams, BOT_ENV, clock=FakeClock())
    async with running(sink):
        await wait_until(lambda: sink._kv is not None)
        # firing: its lookup (1), its record written at the third try (2, 3, 4); the resolve's
        # lookup at the fourth (5, 6, 7, 8), its record (9)
        threads = FlakyThreads(sink._kv, failing={2, 3, 5, 6, 7})
        sink._kv = threads  # type: ignore[assignment]
        await publish(streams, notification("firing", 1))
        await publish(streams, notification("resolved", 2))
        await wait_until(lambda: threads.calls == 9)
    assert [r.method for r in slack.accepted()] == ["chat.postMessage", "chat.update"]
    assert [m.payload["text"] for m in slack.top_level()] == ["✅ [RESOLVED] web01"]


async def test_a_deleted_message_is_posted_anew_on_resolve(streams: Bus, slack: FakeSlack) -> None:
    async with running(SlackSink(bot_config(slack), streams, BOT_ENV, clock=FakeClock())):
        await publish(streams, notification("firing", 1))
        await wait_until(lambda: len(slack.accepted()) == 1)
        slack.messages.clear()  # someone deleted it in Slack
        await publish(streams, notification("resolved", 2))
        await wait_until(lambda: len(slack.accepted()) == 2)
    assert [r.method for r in slack.requests] == ["chat.postMessage", "chat.update", "chat.postMessage"]
    assert [m.payload["text"] for m in slack.top_level()] == ["✅ [RESOLVED] web01"]


async def test_429_is_honoured_with_its_retry_after(streams: Bus, slack: FakeSlack) -> None:
    slack.script = [ratelimited(7), OK]
    clock = FakeClock()
    async with running(SlackSink(bot_config(slack), streams, BOT_ENV, clock=clock)):
        await publish(streams, notification("firing", 1))
        await wait_until(lambda: len(slack.accepted()) == 1)
    assert [r.answer for r in slack.requests] == ["ratelimited", "ok"]
    assert clock.sleeps == [7.0], "waited exactly Retry-After before the next request to that channel"


async def test_server_errors_back_off_then_deliver(streams: Bus, slack: FakeSlack) -> None:
    slack.script = [SERVER_ERROR, SERVER_ERROR, OK]
    clock = FakeClock()
    config = bot_config(slack, initial_backoff=Duration(2), min_interval=Duration(0))
    async with running(SlackSink(config, streams, BOT_ENV, clock=clock)):
        await publish(streams, notification("firing", 1))
        await wait_until(lambda: len(slack.accepted()) == 1)
    assert len(slack.requests) == 3
    first, second = clock.sleeps
    assert 1.0 <= first <= 2.0 <= second <= 4.0, "doubling from initial_backoff, with jitter"


async def test_a_hanging_slack_times_out_and_is_retried(streams: Bus, slack: FakeSlack) -> None:
    slack.script = [HANG]
    config = bot_config(slack, timeout=Duration(0.3))
    async with running(SlackSink(config, streams, BOT_ENV, clock=FakeClock())):
        await publish(streams, notification("firing", 1))
        await wait_until(lambda: len(slack.accepted()) == 1)
    assert [r.answer for r in slack.requests] == ["hang", "ok"]


async def test_after_max_retry_time_a_notification_is_dead_lettered_and_the_next_goes_out(
    streams: Bus, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    slack.clock = clock
    # 500s on the sink's clock for its ten seconds of retries, and past them by more than the
    # channel's 1 s pacing, which may put the last attempt up to a second after the deadline
    slack.timeline = [(clock.now + 12, SERVER_ERROR)]
    sink = SlackSink(bot_config(slack, max_retry_time=Duration(10)), streams, BOT_ENV, clock=clock)
    async with running(sink):
        await publish(streams, notification("firing", 1))
        await publish(streams, notification("firing", 2, host="db01"))
        await wait_until(lambda: len(slack.accepted()) == 1)
        await wait_for_dead_letters(streams, 1)
    failed = [r.at for r in slack.requests if r.answer == "server_error" and "web01" in r.json["text"]]
    assert failed[0] == 1000.0
    assert 1010.0 <= failed[-1] <= 1011.0, "retried for max_retry_time (and its last pacing), no longer"
    assert slack.accepted()[0].json["text"] == "🔴 [FIRING:3] db01"
    ((subject, headers, data),) = await dead_letters(streams)
    assert subject == f"{streams.subjects.prefix}.deadletter.notifications.default"
    assert data == encode(notification("firing", 1)), "the original payload, ready to replay"
    assert headers["Jarvis-Dead-Letter-Reason"] in (
        "HTTP 500 (failing for 10s)",
        "HTTP 500 (failing for 11s)",
    )
    assert headers["Jarvis-Dead-Letter-Attempts"] == str(len(failed))
    assert headers["Jarvis-Dead-Letter-By"] == "sink slack (slack)"
    assert headers["Jarvis-Original-Subject"] == f"{streams.subjects.prefix}.notifications.default"
    assert sink.stats.dead_lettered == 1
    assert "gave up on notification 'default:web01:1'" in caplog.text


async def test_slack_answering_429_for_5_minutes_then_500_for_10_loses_nothing(
    streams: Bus, slack: FakeSlack
) -> None:
    """On the sink's clock: every notification delivered once, in order per channel, ≤ 1 message/s
    per channel."""
    clock = FakeClock()  # starts at 1000
    slack.clock = clock
    slack.timeline = [(1000 + 300, ratelimited(5)), (1000 + 900, SERVER_ERROR)]
    items = [
        notification("firing", n, host=f"web{n:02}", route="critical" if n % 3 == 0 else "default")
        for n in range(1, 10)
    ]
    sink = SlackSink(bot_config(slack), streams, BOT_ENV, clock=clock)
    # the slots each channel's requests went out in: both channels' waits move the one fake clock,
    # so a request's arrival on it says nothing of the other channel's pace
    slots: dict[str, list[float]] = {"#alerts": [], "#oncall": []}
    reserve = sink.limiter.reserve

    def recorded(channel: str) -> float:
        wait = reserve(channel)
        slots[channel].append(clock.now + wait)
        return wait

    sink.limiter.reserve = recorded  # type: ignore[method-assign]
    async with running(sink):
        for item in items:
            await publish(streams, item)
        await wait_until(lambda: len(slack.accepted()) == len(items), timeout=30)
    for channel, route in (("#alerts", "default"), ("#oncall", "critical")):
        assert [r.json["text"] for r in slack.accepted() if r.json["channel"] == channel] == [
            f"🔴 [FIRING:3] {i.alerts[0].labels['host']}" for i in items if i.route == route
        ]
        assert len(slots[channel]) == sum(1 for r in slack.requests if r.json["channel"] == channel)
        assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(slots[channel])), channel
    assert {r.answer for r in slack.requests} == {"ratelimited", "server_error", "ok"}
    assert slack.accepted()[0].at >= 1000 + 900, "nothing was accepted before Slack was back"
    assert await dead_letters(streams) == []
    assert (sink.stats.delivered, sink.stats.dead_lettered) == (len(items), 0)
    assert sink.stats.rate_limited == sum(1 for r in slack.requests if r.answer == "ratelimited")


def warnings_only(number: int, host: str) -> Notification:
    item = notification("firing", number, host=host)
    return Notification(
        id=item.id,
        group_key=item.group_key,
        route=item.route,
        status=item.status,
        alerts=[a for a in item.alerts if a.severity == "warning"],
        ts=item.ts,
        seq=item.seq,
    )


async def test_a_channel_slack_keeps_rate_limiting_holds_back_only_its_own_notifications(
    streams: Bus, slack: FakeSlack
) -> None:
    """#alerts answers 429 for as long as the test runs; the critical for #oncall goes out at once."""
    slack.channel_answers = {"#alerts": ratelimited(30)}
    sink = SlackSink(bot_config(slack), streams, BOT_ENV)  # the real clock: 429s wait 30 s each
    async with running(sink):
        for number in range(1, 6):
            await publish(streams, warnings_only(number, host=f"web{number:02}"))
        await wait_until(lambda: sink.stats.rate_limited >= 1)
        await publish(streams, notification("firing", 6, host="db01", route="critical"))
        await wait_until(lambda: len(slack.accepted()) == 1 and sink.counters()["held.notifications"] == 5)
    (accepted,) = slack.accepted()
    assert (accepted.json["channel"], accepted.json["text"]) == ("#oncall", "🔴 [FIRING:3] db01")
    assert await dead_letters(streams) == [], "the rate-limited ones are handed back, not given up"
    async with running(SlackSink(bot_config(slack), streams, BOT_ENV, clock=FakeClock())):
        slack.channel_answers = {}
        await wait_until(lambda: len(slack.accepted()) == 6, timeout=20)  # handed back after 6 s
    assert [r.json["text"] for r in slack.accepted()[1:]] == [
        f"⚠️ [FIRING:2] web{n:02}" for n in range(1, 6)
    ], "all of them, in order, once the channel is free again"


async def test_a_group_handed_back_at_a_stop_reaches_slack_in_order_from_the_next_instance(
    streams: Bus, slack: FakeSlack
) -> None:
    """Webhook mode keeps no thread to tell old from new: the order alone says what is current."""
    env = {"SLACK_WEBHOOK_URL": slack.webhook_url}
    slack.script = [ratelimited(30)]
    sink = SlackSink(bot_config(slack), streams, env)  # the real clock: the 429 waits 30 s
    async with running(sink):
        await publish(streams, notification("firing", 1))
        await publish(streams, notification("resolved", 2))
        await wait_until(lambda: sink.stats.rate_limited == 1 and sink.counters()["held.notifications"] == 2)
    assert slack.accepted() == []
    async with running(SlackSink(bot_config(slack), streams, env, clock=FakeClock())):
        await publish(streams, notification("firing", 3, host="db01"))  # meanwhile, another group
        await wait_until(lambda: len(slack.accepted()) == 3, timeout=20)
    texts = [r.json["text"] for r in slack.accepted()]
    assert [t for t in texts if "web01" in t] == ["🔴 [FIRING:3] web01", "✅ [RESOLVED] web01"]


async def test_after_a_crash_a_group_waits_for_what_the_dead_instance_held(
    nats_server: EmbeddedServer, streams: Bus, slack: FakeSlack
) -> None:
    """The dead one's firing comes again only after ack_wait; the resolve published after the
    restart must not overtake it (webhook mode would end on FIRING)."""
    env = {"SLACK_WEBHOOK_URL": slack.webhook_url}
    config = bot_config(slack, ack_wait=Duration(2))
    sink = SlackSink(config, streams, env, clock=FakeClock())
    async with running(sink):  # makes the consumer
        await wait_until(lambda: sink.counters()["lag.notifications"] == 0 and sink._settled.is_set())
    await publish(streams, notification("firing", 1))
    dead = await nats.connect(nats_server.url)  # the instance about to die: takes the firing, no ack
    stream = stream_name(streams.subjects.prefix, "notifications")
    taken = await dead.jetstream().pull_subscribe_bind(durable="slack", stream=stream)
    assert len(await taken.fetch(1, timeout=5)) == 1
    await dead.close()
    async with running(SlackSink(config, streams, env, clock=FakeClock())):
        await publish(streams, notification("resolved", 2))
        await wait_until(lambda: len(slack.accepted()) == 2, timeout=15)
    assert [r.json["text"] for r in slack.accepted()] == ["🔴 [FIRING:3] web01", "✅ [RESOLVED] web01"]


async def test_a_critical_queued_behind_warnings_on_the_same_channel_is_sent_first(
    streams: Bus, slack: FakeSlack
) -> None:
    slack.script = [HANG]  # the first warning is with Slack while the rest queue up behind it
    clock = slack.clock = FakeClock()
    sink = SlackSink(bot_config(slack, reply_on_resolve=False), streams, BOT_ENV, clock=clock)
    async with running(sink):
        for number in range(1, 11):
            await publish(streams, warnings_only(number, host=f"web{number:02}"))
        await publish(streams, notification("firing", 11, host="db01"))  # critical, same route
        await publish(streams, notification("resolved", 12, host="web01"))  # of critical alerts too
        await wait_until(lambda: sink.counters()["held.notifications"] == 12)
        slack.release.set()  # Slack answers 503 and the sink tries web01 again
        await wait_until(lambda: len(slack.accepted()) == 12)
    texts = [r.json["text"] for r in slack.accepted()]
    assert texts[:2] == ["⚠️ [FIRING:2] web01", "🔴 [FIRING:3] db01"], (
        "the critical went next, not nine seconds later behind the warnings"
    )
    assert texts[2] == "✅ [RESOLVED] web01", "web01's resolve (of a critical) came after its firing"
    assert texts[3:] == [f"⚠️ [FIRING:2] web{n:02}" for n in range(2, 11)]
    times = [r.at for r in slack.requests]
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times)), "one message a second"


async def test_a_notification_the_sink_chokes_on_is_dead_lettered_after_a_few_tries_not_retried_forever(
    streams: Bus, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one message in flight at a time, a poison message retried forever would stop all alerts."""
    real_render = slack_format.render

    def choke_on_web01(item: Notification, options: Any) -> Any:
        if item.group_key == "host=web01":
            raise RuntimeError("a bug in formatting")
        return real_render(item, options)

    monkeypatch.setattr(slack_module, "render", choke_on_web01)
    monkeypatch.setattr(slack_module, "BUG_RETRY", Duration(0.1))
    monkeypatch.setattr(slack_module, "BUG_ATTEMPTS", 3)
    sink = SlackSink(bot_config(slack), streams, BOT_ENV, clock=FakeClock())
    async with running(sink):
        await publish(streams, notification("firing", 1))
        await publish(streams, notification("firing", 2, host="db01"))
        letters = await wait_for_dead_letters(streams, 1)
        await wait_until(lambda: len(slack.accepted()) == 1)
    ((_, headers, data),) = letters
    assert data == encode(notification("firing", 1))
    assert headers["Jarvis-Dead-Letter-Reason"] == "sink error: RuntimeError"
    assert headers["Jarvis-Dead-Letter-Attempts"] == "3"
    assert slack.accepted()[0].json["text"] == "🔴 [FIRING:3] db01"
    assert sink.stats.dead_lettered == 1


@pytest.mark.parametrize("error", ["channel_not_found", "not_in_channel", "invalid_arguments"])
async def test_a_permanent_slack_error_is_dead_lettered_at_once_and_the_next_goes_out(
    streams: Bus, slack: FakeSlack, error: str
) -> None:
    slack.script = [slack_error(error)]
    sink = SlackSink(bot_config(slack), streams, BOT_ENV, clock=FakeClock())
    async with running(sink):
        await publish(streams, notification("firing", 1))
        await publish(streams, notification("firing", 2, host="db01"))
        letters = await wait_for_dead_letters(streams, 1)
        await wait_until(lambda: len(slack.accepted()) == 1)
    ((_, headers, _),) = letters
    assert headers["Jarvis-Dead-Letter-Reason"] == error
    assert headers["Jarvis-Dead-Letter-Attempts"] == "1"
    assert [r.answer for r in slack.requests] == ["slack_error", "ok"]
    assert sink.stats.dead_lettered == 1


@pytest.mark.parametrize(("mode", "error"), [("bot", "token_revoked"), ("webhook", "no_service")])
async def test_a_refused_token_or_webhook_holds_the_notifications_until_slack_takes_it_again(
    streams: Bus, slack: FakeSlack, caplog: pytest.LogCaptureFixture, mode: str, error: str
) -> None:
    slack.script = [slack_error(error)] * 4
    env = BOT_ENV if mode == "bot" else {"SLACK_WEBHOOK_URL": slack.webhook_url}
    sink = SlackSink(bot_config(slack), streams, env, clock=FakeClock())
    async with running(sink):
        await publish(streams, notification("firing", 1))
        await publish(streams, notification("firing", 2, host="db01"))
        await wait_until(lambda: len(slack.accepted()) == 2)
    assert [r.answer for r in slack.requests] == ["slack_error"] * 4 + ["ok", "ok"]
    assert await dead_letters(streams) == [], "nothing set aside: the notifications waited"
    assert (sink.stats.refused_credentials, sink.stats.delivered) == (4, 2)
    assert "nothing is delivered until it is fixed" in caplog.text
    assert TOKEN not in caplog.text
    assert "secretwebhookpath" not in caplog.text


async def test_a_dead_letter_replayed_after_its_group_resolved_does_not_stand_as_firing_forever(
    streams: Bus, slack: FakeSlack
) -> None:
    slack.script = [slack_error("channel_not_found")]  # the firing is set aside...
    sink = SlackSink(bot_config(slack, reply_on_resolve=False), streams, BOT_ENV, clock=FakeClock())
    async with running(sink):
        await publish(streams, notification("firing", 1))
        ((_, _, data),) = await wait_for_dead_letters(streams, 1)
        await publish(streams, notification("resolved", 2))  # ...and the group resolves
        await wait_until(lambda: len(slack.accepted()) == 1)
        js = streams.nc.jetstream()  # the operator replays the dead letter
        await js.publish(streams.subjects.notifications("default"), data, headers={"Nats-Msg-Id": "replay"})
        await wait_until(lambda: sink.stats.stale_skipped == 1)
    assert [m.payload["text"] for m in slack.top_level()] == ["✅ [RESOLVED] web01"]


async def test_a_firing_whose_ack_was_lost_is_not_posted_again_after_its_resolve(
    streams: Bus, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Webhook mode keeps no thread to compare with: the redelivered firing must still be skipped,
    or the channel ends on FIRING for a group that resolved."""
    acks = 0
    real_ack = nats.aio.msg.Msg.ack_sync

    async def first_ack_lost(msg: nats.aio.msg.Msg, timeout: float = 1.0) -> nats.aio.msg.Msg:
        nonlocal acks
        acks += 1
        if acks == 1:
            raise nats.errors.TimeoutError  # a reconnect, or the consumer's leader changing
        return await real_ack(msg, timeout=timeout)

    monkeypatch.setattr(nats.aio.msg.Msg, "ack_sync", first_ack_lost)
    config = bot_config(slack, ack_wait=Duration(1), min_interval=Duration(0))
    sink = SlackSink(config, streams, {"SLACK_WEBHOOK_URL": slack.webhook_url})
    async with running(sink):
        await publish(streams, notification("firing", 1))
        await publish(streams, notification("resolved", 2))
        await wait_until(lambda: sink.stats.repeats_skipped == 1)  # the firing, redelivered
    assert [r.json["text"] for r in slack.accepted()] == ["🔴 [FIRING:3] web01", "✅ [RESOLVED] web01"]


async def test_a_consumer_deleted_while_the_sink_runs_is_made_again_where_it_stood(
    streams: Bus, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, every fetch failed at DEBUG level and nothing was delivered again, without a word."""
    sink = SlackSink(bot_config(slack, min_interval=Duration(0)), streams, BOT_ENV)
    async with running(sink):
        await publish(streams, notification("firing", 1))
        await wait_until(lambda: len(slack.accepted()) == 1)
        stream = stream_name(streams.subjects.prefix, "notifications")
        await streams.nc.jetstream().delete_consumer(stream, "slack")
        await publish(streams, notification("firing", 1, host="db01"))
        await wait_until(lambda: len(slack.accepted()) == 2, timeout=20)
    assert [r.json["text"] for r in slack.accepted()] == ["🔴 [FIRING:3] web01", "🔴 [FIRING:3] db01"]
    assert "looking for the consumer 'slack' again" in caplog.text
    assert "consumer 'slack' was gone, made again at 2" in caplog.text


async def test_a_notifications_stream_made_anew_is_read_from_its_start(
    streams: Bus, slack: FakeSlack
) -> None:
    """The new stream's sequences start at 1 again: its first notification is not taken for the
    old stream's first, already delivered."""
    sink = SlackSink(bot_config(slack, min_interval=Duration(0)), streams, BOT_ENV)
    async with running(sink):
        await publish(streams, notification("firing", 1))
        await wait_until(lambda: len(slack.accepted()) == 1)
        js = streams.nc.jetstream()
        await js.delete_stream(stream_name(streams.subjects.prefix, "notifications"))
        await provision(js, streams.subjects, StreamsConfig())
        await publish(streams, notification("firing", 1, host="db01"))
        await wait_until(lambda: len(slack.accepted()) == 2, timeout=20)
    assert [r.json["text"] for r in slack.accepted()] == ["🔴 [FIRING:3] web01", "🔴 [FIRING:3] db01"]


@pytest.mark.parametrize("mode", ["bot", "webhook"])
async def test_a_message_slack_finds_too_long_is_sent_again_in_short_not_dead_lettered(
    streams: Bus, slack: FakeSlack, mode: str
) -> None:
    slack.script = [slack_error("msg_blocks_too_long")]
    env = BOT_ENV if mode == "bot" else {"SLACK_WEBHOOK_URL": slack.webhook_url}
    sink = SlackSink(bot_config(slack), streams, env, clock=FakeClock())
    async with running(sink):
        await publish(streams, notification("firing", 1))
        await wait_until(lambda: len(slack.accepted()) == 1)
    (sent,) = slack.accepted()
    assert sent.json["text"] == "🔴 [FIRING:3] web01"
    assert "too long for Slack to show here" in str(sent.json["attachments"])
    assert sink.stats.dead_lettered == 0


async def test_a_webhook_that_refuses_the_payload_also_in_short_dead_letters_it(
    streams: Bus, slack: FakeSlack
) -> None:
    slack.script = [slack_error("invalid_blocks"), slack_error("invalid_blocks")]
    env = {"SLACK_WEBHOOK_URL": slack.webhook_url}
    async with running(SlackSink(bot_config(slack), streams, env, clock=FakeClock())):
        await publish(streams, notification("firing", 1))
        ((_, headers, _),) = await wait_for_dead_letters(streams, 1)
    assert headers["Jarvis-Dead-Letter-Reason"] == "webhook answered 400: invalid_blocks"
    assert len(slack.requests) == 2


async def test_garbage_on_the_subject_is_rejected_and_kept(streams: Bus, slack: FakeSlack) -> None:
    sink = SlackSink(bot_config(slack), streams, BOT_ENV, clock=FakeClock())
    async with running(sink):
        await streams.nc.jetstream().publish(streams.subjects.notifications("default"), b"{not json")
        await publish(streams, notification("firing", 1))
        await wait_until(lambda: len(slack.accepted()) == 1)
        await wait_for_dead_letters(streams, 1)
    assert sink.stats.rejected == 1
    ((_, headers, data),) = await dead_letters(streams)
    assert data == b"{not json"
    assert headers["Jarvis-Dead-Letter-Reason"].startswith("not a notification: ")


async def test_slack_down_for_a_while_then_back_delivers_everything_in_order(
    streams: Bus, slack: FakeSlack
) -> None:
    """Refused connections, then 500s, then Slack is back: every notification arrives, in order."""
    config = bot_config(
        slack,
        initial_backoff=Duration(0.05),
        max_backoff=Duration(0.2),
        min_interval=Duration(0),
    )
    env = {"SLACK_WEBHOOK_URL": slack.webhook_url}
    await slack.stop()
    sink = SlackSink(config, streams, env)
    async with running(sink):
        for number in range(1, 6):
            await publish(streams, notification("firing", number, host=f"web{number:02}"))
        await wait_until(lambda: sink.stats.retries >= 3)  # refused, again and again
        slack.default = SERVER_ERROR
        await slack.start()
        await wait_until(lambda: len(slack.requests) >= 3)
        slack.default = OK
        await wait_until(lambda: len(slack.accepted()) == 5, timeout=20)
    titles = [r.json["text"] for r in slack.accepted()]
    assert titles == [f"🔴 [FIRING:3] web{n:02}" for n in range(1, 6)]


async def test_secrets_never_reach_the_logs(
    streams: Bus, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    slack.script = [SERVER_ERROR, ratelimited(1), slack_error("invalid_payload")]
    env = {"SLACK_WEBHOOK_URL": slack.webhook_url}
    async with running(SlackSink(bot_config(slack), streams, env, clock=FakeClock())):
        await publish(streams, notification("firing", 1))
        await wait_until(lambda: len(slack.requests) == 3)
        await slack.stop()  # network errors too
        await publish(streams, notification("firing", 2))
        await wait_until(lambda: "network error" in caplog.text)
    assert WEBHOOK_PATH not in caplog.text
    assert "secretwebhookpath" not in caplog.text


async def test_without_slack_notifications_are_printed_to_the_console(streams: Bus) -> None:
    out = io.StringIO()
    async with running(SlackSink(SlackSinkConfig(), streams, {}, out=out)):
        await publish(streams, notification("firing", 1))
        await wait_until(lambda: "silence add" in out.getvalue())
    assert out.getvalue().splitlines()[0] == "🔴 [FIRING:3] web01  (route default)"


async def test_notify_test_sends_the_runbook_test_notification(
    slack: FakeSlack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from jarvis_monitor.slack_cli import notify_test

    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    assert await notify_test(bot_config(slack), "web01") == 0
    (request,) = slack.accepted()
    assert request.json["channel"] == "#alerts"
    assert "jarvis-monitor test notification" in request.json["attachments"][0]["blocks"][1]["text"]["text"]
    assert capsys.readouterr().out == "ok: test notification sent (bot)\n"

    slack.script = [slack_error("channel_not_found")]
    assert await notify_test(bot_config(slack), "web01") == 1
    assert "refused the test notification: channel_not_found" in capsys.readouterr().err


# --- a real `jarvis-monitor sink slack` process, killed while Slack holds its request ----------


def sink_config(
    tmp_path: Path, server: EmbeddedServer, prefix: str, slack: FakeSlack, more: str = ""
) -> Path:
    path = tmp_path / "sink.toml"
    path.write_text(
        f'[bus]\nservers = ["{server.url}"]\nprefix = "{prefix}"\n'
        f'[sinks.slack]\napi_url = "{slack.api_url}"\nack_wait = "1s"\nmin_interval = "0s"\n'
        f'channels = {{ default = "#alerts" }}\n{more}',
        encoding="utf-8",
    )
    return path


@contextlib.contextmanager
def sink_process(config: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JARVIS_", "NATS_", "SLACK_"))}
    env["SLACK_BOT_TOKEN"] = TOKEN
    process = subprocess.Popen(
        [sys.executable, "-m", "jarvis_monitor", "-c", str(config), "sink", "slack"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


async def test_a_sink_killed_mid_delivery_loses_nothing_and_repeats_at_most_one(
    tmp_path: Path, nats_server: EmbeddedServer, prefix: str, streams: Bus, slack: FakeSlack
) -> None:
    """SIGKILL while Slack holds a request it already accepted; on restart everything arrives."""
    slack.script = [OK, ACCEPT_THEN_HANG]
    config = sink_config(tmp_path, nats_server, prefix, slack)
    for number in range(1, 6):
        await publish(streams, notification("firing", number, host=f"web{number:02}"))
    with sink_process(config) as first:
        await asyncio.wait_for(slack.hanging.wait(), 30)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    slack.release.set()
    with sink_process(config) as second:
        await wait_until(lambda: {r.json["text"] for r in slack.accepted()} >= _titles(5), timeout=30)
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0, second.stderr.read().decode() if second.stderr else ""
    titles = [r.json["text"].split()[-1] for r in slack.accepted()]
    # web02 was in Slack when the sink died, before its ack: it may come once more, nothing else may
    assert titles in (
        ["web01", "web02", "web03", "web04", "web05"],
        ["web01", "web02", "web02", "web03", "web04", "web05"],
    ), titles


async def test_a_sink_killed_during_a_slack_outage_delivers_everything_once_in_order(
    tmp_path: Path, nats_server: EmbeddedServer, prefix: str, streams: Bus, slack: FakeSlack
) -> None:
    """429s, then 500s; SIGKILL while retrying; the outage goes on after the restart, then ends:
    each notification reaches Slack exactly once, in order, and nothing is dead-lettered."""
    slack.script = [OK, *[ratelimited(1)] * 3]
    slack.default = SERVER_ERROR
    config = sink_config(
        tmp_path, nats_server, prefix, slack, 'initial_backoff = "50ms"\nmax_backoff = "200ms"\n'
    )
    for number in range(1, 6):
        await publish(streams, notification("firing", number, host=f"web{number:02}"))
    with sink_process(config) as first:
        await wait_until(lambda: _answered(slack, "server_error") >= 3, timeout=30)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    killed_at = len(slack.requests)
    with sink_process(config) as second:
        await wait_until(lambda: len(slack.requests) >= killed_at + 3, timeout=30)  # still failing
        slack.default = OK
        await wait_until(lambda: len(slack.accepted()) >= 5, timeout=30)
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0, second.stderr.read().decode() if second.stderr else ""
    assert [r.json["text"] for r in slack.accepted()] == [f"🔴 [FIRING:3] web{n:02}" for n in range(1, 6)]
    assert await dead_letters(streams) == []


def _answered(slack: FakeSlack, kind: str) -> int:
    return sum(1 for r in slack.requests if r.answer == kind)


def _titles(count: int) -> set[str]:
    return {f"🔴 [FIRING:3] web{n:02}" for n in range(1, count + 1)}


def test_an_unreadable_token_file_is_a_config_error_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jarvis_monitor.cli import main

    config = tmp_path / "c.toml"
    config.write_text(f'[sinks.slack]\nbot_token_file = "{tmp_path / "missing"}"\n', encoding="utf-8")
    assert main(["-c", str(config), "sink", "slack"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"cannot read {tmp_path / 'missing'}: No such file or directory")
    )


def test_notify_test_without_slack_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from jarvis_monitor.cli import main

    for name in ("SLACK_WEBHOOK_URL", "SLACK_BOT_TOKEN", "JARVIS_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    assert main(["notify-test"]) == 1
    assert "no Slack configured: set SLACK_WEBHOOK_URL or SLACK_BOT_TOKEN" in capsys.readouterr().err
