"""The Slack sink (slack-sdk): notifications from the bus, delivered once each, in order per group.

A durable JetStream pull consumer hands out up to `max_pending` notifications, which wait in one
queue per Slack channel (`slack_queue`): each channel sends one message at a time, the most severe
group first and each group in order, so a channel paused by 429s or failing holds back only its own
notifications, and a critical never waits behind the warnings held before it (past `max_pending`,
the rest wait in the stream's order). A message is acked only after Slack accepted it, so a crash
repeats at most the one message each channel had in flight; the rest is redelivered. In bot mode
the message of each group lives in JetStream KV (`slack.thread.<hash>` in the state bucket), so any
instance continues the same thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import TextIO, TypeVar

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyDeletedError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from bus import deadletter
from bus import vocabulary as vocab
from bus.aio import Backoff, cancel_and_wait
from bus.connection import Bus
from bus.events import Alert, EventDecodeError, Notification, notification
from bus.heartbeat import beat
from bus.jetstream import bucket_name, deadletter_stream_config, ensure_bucket, ensure_stream, stream_name
from bus.units import Duration
from sinks.slack_config import SlackConfigError as SlackConfigError  # re-exported with the config
from sinks.slack_config import SlackSecrets
from sinks.slack_config import SlackSinkConfig as SlackSinkConfig
from sinks.slack_config import resolve_secrets as resolve_secrets
from sinks.slack_delivery import ChannelRateLimiter, Clock, DeliveryError, RetryPolicy, Sender, SystemClock
from sinks.slack_format import (
    SEVERITY_ORDER,
    FormatOptions,
    SlackMessage,
    console_text,
    render,
    resolved_reply,
    worst_severity,
)
from sinks.slack_queue import ChannelQueue
from sinks.slack_transport import MESSAGE_GONE, BotTransport, Posted, Transport, WebhookTransport

log = logging.getLogger(__name__)

BUG_RETRY = Duration(60)
# Deliveries of a notification the sink itself fails on (a bug, not Slack) before it is dead-lettered.
BUG_ATTEMPTS = 5
# How long a pull request waits for a message. One cancelled at stop stays open at the server until
# it expires and would take what is handed back meanwhile, away from the next instance: what a
# stopped sink hands back comes again once that request is over.
FETCH_WAIT = 5.0
HAND_BACK_DELAY = FETCH_WAIT + 1.0
# Fetches failing in a row (a second apart) before the consumer is looked for and made again: it may
# have been deleted, or JetStream lost it, and then every fetch fails until it is.
FETCH_FAILURES = 3
# The latest notifications delivered (or dead-lettered), remembered so that one that comes again (its
# ack lost, or its consumer made again) is acked and not posted again, after what came next in its
# group.
DONE_REMEMBERED = 10_000
CONSOLE = "console"  # the one queue of console mode
REJECTS = ""  # the queue of payloads that are no notification: dead-lettered at once
T = TypeVar("T")


def make_transport(config: SlackSinkConfig, secrets: SlackSecrets) -> Transport | None:
    """The transport for the configured mode; None means print to the console."""
    api_url = config.api_url if config.api_url.endswith("/") else f"{config.api_url}/"
    if secrets.bot_token:
        return BotTransport(secrets.bot_token, dict(config.channels), api_url, config.timeout.seconds)
    if secrets.webhook_url:
        return WebhookTransport(secrets.webhook_url, config.timeout.seconds)
    return None


def format_options(config: SlackSinkConfig) -> FormatOptions:
    return FormatOptions(runbook_url=config.runbook_url, silence_duration=str(config.silence_duration))


def runbook_test_notification(host: str, now: float) -> Notification:
    """The runbook's test notification: one info alert, sent by `jarvis-monitor notify-test`."""
    alert = Alert(
        fingerprint="notify-test",
        rule="notify_test",
        severity="info",
        status="firing",
        labels={"host": host},
        summary="jarvis-monitor test notification",
        starts_at=now,
    )
    return Notification(
        id=f"notify-test-{now:.0f}",
        group_key="notify-test",
        route="default",
        status="firing",
        alerts=[alert],
        ts=now,
    )


class ThreadRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Bot mode: where a group's message is, and the id of the last notification delivered into it."""

    channel: str
    ts: str
    resolved: bool = False
    last_id: str = ""
    last_seq: int = 0  # the group's number of that notification (0: not known)


def thread_key(route: str, group_key: str) -> str:
    """The KV key of a group's thread; hashed because group keys hold any characters."""
    digest = hashlib.sha256(f"{route}\x00{group_key}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"slack.thread.{digest[:32]}"


@dataclasses.dataclass(eq=False)
class _Held:
    """A notification taken from JetStream and not yet acked, with what its payload decoded to."""

    msg: Msg
    item: Notification | None
    error: EventDecodeError | None
    group: str  # its Slack thread: its place in the channel's order
    rank: int
    failures: int = 0  # the sink's own errors on it in this process

    @property
    def seq(self) -> int:
        return self.msg.metadata.sequence.stream


@dataclasses.dataclass(eq=False)
class _Channel:
    """One channel's queue, and the task sending it (gone once the queue is empty)."""

    queue: ChannelQueue[_Held] = dataclasses.field(default_factory=ChannelQueue)
    arrived: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None


@dataclasses.dataclass
class SinkStats:
    delivered: int = 0
    dead_lettered: int = 0
    rejected: int = 0  # payloads that are no notification
    repeats_skipped: int = 0  # redelivered after a crash, already in Slack (bot mode)
    stale_skipped: int = 0  # older than what the group's message shows (bot mode)
    retries: int = 0  # attempts after a 5xx, a network error or a timeout
    rate_limited: int = 0  # 429s waited out
    refused_credentials: int = 0  # attempts Slack refused the token or webhook on


class _Stopped(Exception):
    """stop() was called while waiting."""


class SlackSink:
    """Delivers `<prefix>.notifications.>` to Slack (or the console) until stop()."""

    def __init__(
        self,
        config: SlackSinkConfig,
        bus: Bus,
        environ: Mapping[str, str] = os.environ,
        *,
        clock: Clock | None = None,
        out: TextIO | None = None,
        host: str | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.secrets = resolve_secrets(config, environ)
        self.clock: Clock = clock or SystemClock()
        self.out = out
        self.options = format_options(config)
        self.limiter = ChannelRateLimiter(config.min_interval.seconds, self.clock)
        self.policy = RetryPolicy(
            max_retry_time=config.max_retry_time.seconds,
            initial_backoff=config.initial_backoff.seconds,
            max_backoff=config.max_backoff.seconds,
        )
        self.sender = Sender(self.policy, self.limiter, self.clock, on_retry=self._retrying)
        self.stats = SinkStats()
        self.rejections = deadletter.Rejections()
        self.lag = 0  # notifications still to fetch, at the last fetch
        self.host = host or socket.gethostname()
        self._stopping = asyncio.Event()
        self._transport: Transport | None = None
        self._kv: KeyValue | None = None
        self._held: dict[int, _Held] = {}  # by stream sequence
        self._channels: dict[str, _Channel] = {}
        self._room = asyncio.Event()  # set when a held notification is let go
        # Notifications another instance held (handed back, or its process died) come again later
        # than new ones: nothing is sent until they are here (or ack_wait is over), so that each
        # group still goes out in the stream's order.
        self._owed = 0
        self._settled = asyncio.Event()
        self._done: dict[int, None] = {}  # by stream sequence, oldest first
        self._fetch_failures = 0
        self._last_seq = 0  # the highest stream sequence taken
        self._stream_created: object = None  # the stream's creation time: made anew if it changes

    @property
    def mode(self) -> str:
        return self.secrets.mode

    def stop(self) -> None:
        """Stop soon: a request to Slack in flight may finish (within `timeout`), a wait for a retry
        does not; an undelivered notification is handed back to JetStream for the next instance."""
        self._stopping.set()

    async def _until_stopped(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable`, or cancel it and raise _Stopped as soon as stop() is called (or
        cancel it with this wait, when that is cancelled: a timeout around it)."""
        task = asyncio.ensure_future(awaitable)
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise _Stopped
        return task.result()

    def counters(self) -> dict[str, int]:
        """What the sink did since it started, for its heartbeat and `jarvis-monitor status`."""
        stats = {f.name: getattr(self.stats, f.name) for f in dataclasses.fields(self.stats)}
        return stats | {"lag.notifications": self.lag, "held.notifications": len(self._held)}

    async def run(self) -> None:
        """Consume and deliver until stop(); outages of NATS or Slack are waited out, never raised."""
        beating = asyncio.create_task(
            beat(
                self.bus,
                self.host,
                vocab.SLACK_PART,
                self.counters,
                lambda: self.rejections.by_reason,
                self._stopping,
            )
        )
        try:
            await self._run()
        finally:
            await cancel_and_wait([beating])

    async def _run(self) -> None:
        self._transport = make_transport(self.config, self.secrets)
        log.info("slack sink: delivering notifications in %s mode", self.mode)
        subscription: JetStreamContext.PullSubscription | None = None
        keeping_alive: asyncio.Task[None] | None = None
        try:
            js = self.bus.nc.jetstream()
            subscription = await self._until_stopped(self._prepare(js))
            if self._owed:
                log.info(
                    "slack sink: waiting up to %s for the %d notifications another instance held",
                    Duration(round(self._settle_time())),
                    self._owed,
                )
            else:
                self._settled.set()
            keeping_alive = asyncio.create_task(self._keep_alive())
            while not self._stopping.is_set():
                if len(self._held) >= self.config.max_pending:
                    self._room.clear()
                    await self._until_stopped(self._room.wait())
                    continue
                for msg in await self._until_stopped(self._fetch(subscription)):
                    self._take(js, msg)
                if self._fetch_failures >= FETCH_FAILURES:
                    with contextlib.suppress(nats.errors.Error):
                        await subscription.unsubscribe()
                    subscription = await self._until_stopped(self._prepare(js))
                    self._fetch_failures = 0
        except _Stopped:
            pass
        finally:
            self._stopping.set()  # the channels hand back what they hold
            if subscription is not None:  # else its open pull request would take the next message
                with contextlib.suppress(nats.errors.Error):
                    await subscription.unsubscribe()
            workers = [channel.worker for channel in self._channels.values() if channel.worker]
            await asyncio.gather(*workers, return_exceptions=True)
            await self._hand_back()
            if keeping_alive is not None:
                await cancel_and_wait([keeping_alive])
            if self._transport is not None:
                await self._transport.close()
            log.info(
                "slack sink stopped: %d delivered, %d dead-lettered, %d rejected",
                self.stats.delivered,
                self.stats.dead_lettered,
                self.stats.rejected,
            )

    # --- the channels' queues ------------------------------------------------------------------

    def _take(self, js: JetStreamContext, msg: Msg) -> None:
        """Queue a fetched message on its channel, starting the channel's sender if it has none."""
        seq = msg.metadata.sequence.stream
        self._last_seq = max(self._last_seq, seq)
        if (again := self._held.get(seq)) is not None:  # redelivered while held (keep-alives lost)
            again.msg = msg  # acked as its latest delivery
            return
        if not self._settled.is_set() and (msg.metadata.num_delivered or 1) > 1:
            self._owed -= 1
            if self._owed <= 0:
                self._settled.set()
        item: Notification | None = None
        error: EventDecodeError | None = None
        try:
            item = notification.decode(msg.data, msg.subject)
        except EventDecodeError as exc:
            error = exc
        if item is None:
            held = _Held(msg, None, error, group=f"seq:{seq}", rank=len(SEVERITY_ORDER))
            name = REJECTS
        else:
            rank = SEVERITY_ORDER.index(worst_severity(item.alerts))
            held = _Held(msg, item, None, group=thread_key(item.route, item.group_key), rank=rank)
            transport = self._transport
            name = CONSOLE if transport is None else transport.channel_for(item.route, item.receiver)
        self._held[seq] = held
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel()
            channel.worker = asyncio.create_task(self._send_channel(js, name, channel))
        channel.queue.push(held.group, held.rank, seq, held)
        channel.arrived.set()

    def _let_go(self, held: _Held) -> None:
        self._held.pop(held.seq, None)
        self._room.set()

    async def _send_channel(self, js: JetStreamContext, name: str, channel: _Channel) -> None:
        """Deliver a channel's queue one at a time until it is empty or stop() (what it holds then is
        handed back by `_run`)."""
        loop = asyncio.get_running_loop()
        held: _Held | None = None
        try:
            if not self._settled.is_set():
                await self._until_settled()
            while not self._stopping.is_set():
                held = channel.queue.pop(loop.time())
                if held is not None:
                    await self._handle(js, channel, held)
                    held = None
                    continue
                ready = channel.queue.next_ready()
                if ready is None:
                    return
                channel.arrived.clear()
                with contextlib.suppress(TimeoutError):  # a group's retry is due
                    await asyncio.wait_for(
                        self._until_stopped(channel.arrived.wait()), max(0.0, ready - loop.time())
                    )
        except _Stopped:
            pass
        except Exception:  # a bug here must not leave the channel's notifications held forever
            log.exception("slack sink: the queue of %s failed; what it held is handed back", name)
            await self._give_back([*([held] if held is not None else []), *channel.queue.drain()])
        finally:
            if self._channels.get(name) is channel:
                del self._channels[name]

    def _settle_time(self) -> float:
        return self.config.ack_wait.seconds + HAND_BACK_DELAY + 1.0

    async def _until_settled(self) -> None:
        """Wait for what another instance held, at most as long as the server takes to resend it."""
        with contextlib.suppress(TimeoutError, _Stopped):
            await asyncio.wait_for(self._until_stopped(self._settled.wait()), self._settle_time())
        if not self._settled.is_set() and not self._stopping.is_set():
            log.warning(
                "slack sink: %d notifications another instance held did not come again; "
                "delivering without them",
                self._owed,
            )
            self._settled.set()

    async def _hand_back(self) -> None:
        """Give what is still held to the next instance, in the stream's order."""
        await self._give_back([self._held[seq] for seq in sorted(self._held)])

    async def _give_back(self, helds: list[_Held]) -> None:
        """Hand `helds` back to JetStream, soon rather than after ack_wait."""
        for held in helds:
            with contextlib.suppress(nats.errors.Error):
                await held.msg.nak(delay=HAND_BACK_DELAY)
            self._let_go(held)

    # --- the bus -------------------------------------------------------------------------------

    async def _prepare(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        """Dead-letter stream, KV bucket and consumer; retried until NATS has them (or stop())."""
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                await ensure_stream(
                    js, deadletter_stream_config(self.bus.subjects, replicas=self.bus.replicas)
                )
                if self.mode == "bot":
                    bucket = bucket_name(self.bus.subjects.prefix, "state")
                    await ensure_bucket(
                        js,
                        bucket,
                        "evaluator state, and the sinks' Slack threads",
                        replicas=self.bus.replicas,
                    )
                    self._kv = await js.key_value(bucket)
                stream = stream_name(self.bus.subjects.prefix, "notifications")
                await self._ensure_consumer(js, stream, await self._resume_at(js, stream))
                info = await js.consumer_info(stream, self.config.durable)
                self._owed = info.num_ack_pending or 0
                return await js.pull_subscribe_bind(durable=self.config.durable, stream=stream)
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                if backoff.attempts == 0:
                    log.warning("slack sink: waiting for JetStream (%s)", exc or type(exc).__name__)
                await asyncio.sleep(backoff.next())

    async def _resume_at(self, js: JetStreamContext, stream: str) -> int | None:
        """Where a consumer lost while running (deleted, or JetStream lost it) starts again: at
        the first notification still held, else after the last one taken. None on a first start,
        or once the stream was made anew: its sequences are not those of the one read so far."""
        info = await js.stream_info(stream)
        created, self._stream_created = self._stream_created, info.created
        if created != info.created and self._last_seq:
            log.warning("slack sink: the notifications stream was made anew; reading it from its start")
            await self._until_stopped(self._no_longer_held())
            self._done.clear()
            self._last_seq = 0
        if self._last_seq == 0:
            return None
        return min(self._held, default=self._last_seq + 1)

    async def _no_longer_held(self) -> None:
        """Until what the former stream handed out is delivered: its sequences are the new one's too."""
        while self._held:
            self._room.clear()
            await self._room.wait()

    async def _ensure_consumer(self, js: JetStreamContext, stream: str, resume_at: int | None) -> None:
        ack_wait = self.config.ack_wait.seconds
        try:
            info = await js.consumer_info(stream, self.config.durable)
        except NotFoundError:
            desired = ConsumerConfig(
                durable_name=self.config.durable,
                filter_subject=self.bus.subjects.family("notifications"),
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ack_wait,
                max_ack_pending=self.config.max_pending,
                max_deliver=-1,  # the sink bounds its retries itself, then dead-letters
            )
            if resume_at is None:
                desired.deliver_policy = DeliverPolicy.BY_START_TIME
                desired.opt_start_time = datetime.datetime.now(datetime.UTC) - datetime.timedelta(
                    seconds=self.config.catch_up.seconds
                )
            else:
                desired.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
                desired.opt_start_seq = resume_at
                log.warning(
                    "slack sink: consumer %r was gone, made again at %d", self.config.durable, resume_at
                )
            await js.add_consumer(stream, desired)
            return
        current = info.config
        pending = self.config.max_pending
        if round(current.ack_wait or 0) != round(ack_wait) or current.max_ack_pending != pending:
            await js.add_consumer(
                stream, dataclasses.replace(current, ack_wait=ack_wait, max_ack_pending=pending)
            )

    async def _fetch(self, subscription: JetStreamContext.PullSubscription) -> list[Msg]:
        """The next message, as soon as there is one: nats-py's fetch of more than one waits for
        all of them or for the request to expire (5 s), however many are there."""
        try:
            messages = await subscription.fetch(1, timeout=FETCH_WAIT)
        except TimeoutError:
            return []
        except nats.errors.Error as exc:  # disconnected (the client reconnects), or the consumer gone
            self._fetch_failures += 1
            if self._fetch_failures < FETCH_FAILURES:
                log.debug("slack sink: fetch failed: %s", exc)
            else:
                log.warning(
                    "slack sink: fetching notifications failed %d times in a row (%s); "
                    "looking for the consumer %r again",
                    self._fetch_failures,
                    str(exc) or type(exc).__name__,
                    self.config.durable,
                )
            await asyncio.sleep(1)
            return []
        self._fetch_failures = 0
        if messages:
            self.lag = messages[-1].metadata.num_pending
        return messages

    async def _keep_alive(self) -> None:
        """Tell JetStream every held notification is still being worked on, so none is redelivered."""
        while True:
            await asyncio.sleep(max(0.5, self.config.ack_wait.seconds / 3))
            for held in list(self._held.values()):
                with contextlib.suppress(nats.errors.Error):
                    await held.msg.in_progress()

    async def _handle(self, js: JetStreamContext, channel: _Channel, held: _Held) -> None:
        """Process one notification; on stop(), a request in flight may finish, then it is handed back."""
        task = asyncio.ensure_future(self._process_safely(js, held))
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done() and not self.sender.waiting(task):  # a request with Slack, or its ack
            await asyncio.wait({task}, timeout=self.config.timeout.seconds + 1)
        if not task.done():  # still held: handed back when the sink stops
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise _Stopped
        retry_in = task.result()
        if retry_in is None:
            self._let_go(held)
        else:  # its group waits; the channel's other groups go first meanwhile
            at = asyncio.get_running_loop().time() + retry_in
            channel.queue.retry_later(held.group, held.rank, held.seq, held, at)

    async def _process_safely(self, js: JetStreamContext, held: _Held) -> float | None:
        """Deliver (or dead-letter) and ack; None when done, else the seconds until it is tried again.

        A bug met by one notification is logged and retried, never a dead sink; after BUG_ATTEMPTS
        tries (deliveries before this process included) it is dead-lettered, so it cannot hold up
        its group forever."""
        try:
            await self._deliver_or_dead_letter(js, held)
            await self._ack(held)
            return None
        except _Stopped:
            raise
        except Exception as exc:
            held.failures += 1
            attempts = (held.msg.metadata.num_delivered or 1) - 1 + held.failures
            if attempts < BUG_ATTEMPTS:
                log.exception("slack sink: unexpected error, the notification is retried in %s", BUG_RETRY)
                return BUG_RETRY.seconds
            log.exception("slack sink: unexpected error on attempt %d, dead-lettering", attempts)
            route = held.msg.subject.rsplit(".", 1)[-1]
            await self._dead_letter(js, held.msg, route, f"sink error: {type(exc).__name__}", attempts)
            await self._ack(held)
            return None

    async def _deliver_or_dead_letter(self, js: JetStreamContext, held: _Held) -> None:
        """Put the message into Slack or keep it as a dead letter: then it may be acked."""
        msg, item = held.msg, held.item
        if held.seq in self._done:
            self.stats.repeats_skipped += 1  # done already: its ack was lost, or its consumer made again
            return
        if item is None:
            reason = held.error.reason if held.error else "undecodable"
            self.stats.rejected += 1
            self.rejections.count(reason)
            log.warning("slack sink: rejected %s", held.error)
            route = msg.subject.rsplit(".", 1)[-1]
            await self._dead_letter(js, msg, route, f"not a notification: {reason}", attempts=0)
            return
        try:
            await self._deliver(item)
        except DeliveryError as error:
            reason = error.reason
            if error.retryable:  # out of time rather than refused
                reason = f"{reason} (failing for {Duration(round(error.failing_for))})"
            log.error(
                "slack sink: gave up on notification %r (route %r, group %r) after %d attempts: %s; "
                "kept on %s",
                item.id,
                item.route,
                item.group_key,
                error.attempts,
                reason,
                self.bus.subjects.deadletter(item.route),
            )
            await self._dead_letter(js, msg, item.route, reason, error.attempts)
            return
        self.stats.delivered += 1

    async def _ack(self, held: _Held) -> None:
        """Ack a notification done with; should it come again all the same, it is only acked then."""
        self._done[held.seq] = None
        if len(self._done) > DONE_REMEMBERED:
            del self._done[next(iter(self._done))]
        try:
            await held.msg.ack_sync(timeout=5)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("slack sink: ack failed, the notification comes again and is skipped then: %s", exc)

    async def _dead_letter(
        self, js: JetStreamContext, msg: Msg, route: str, reason: str, attempts: int
    ) -> None:
        """Keep the original payload on the dead-letter subject, waiting for NATS rather than lose it;
        _Stopped if stop() came first."""
        seq = msg.metadata.sequence.stream
        head = deadletter.headers(
            reason,
            original_subject=msg.subject,
            by=f"sink slack ({self.config.durable})",
            attempts=attempts,
            msg_id=f"slack-deadletter-{self.config.durable}-{seq}",
        )
        subject = self.bus.subjects.deadletter(route)
        max_payload = self.bus.nc.max_payload or 1024 * 1024
        kept = await deadletter.publish(
            js, subject, msg.data, head, max_payload=max_payload, stopped=self._stopping
        )
        if not kept:
            raise _Stopped  # still held: handed back when the sink stops
        self.stats.dead_lettered += 1

    async def _load(self, key: str) -> ThreadRecord | None:
        assert self._kv is not None
        kv = self._kv
        try:
            entry = await self._thread_state(lambda: kv.get(key))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        try:
            return msgspec.json.decode(entry.value or b"", type=ThreadRecord)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    async def _save(self, key: str, record: ThreadRecord) -> None:
        assert self._kv is not None
        kv = self._kv
        await self._thread_state(lambda: kv.put(key, msgspec.json.encode(record)))

    async def _thread_state(self, call: Callable[[], Awaitable[T]]) -> T:
        """A KV call, waited for until NATS answers (or stop()): guessing "no thread" would post a
        resolve as a new message and leave the group's FIRING one as it is, forever."""
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                return await call()
            except (KeyNotFoundError, KeyDeletedError):
                raise
            except (nats.errors.Error, TimeoutError) as exc:
                if backoff.attempts == 0:
                    log.warning("slack sink: thread state unavailable, waiting for NATS: %s", exc)
                await self._until_stopped(asyncio.sleep(backoff.next()))

    # --- Slack ---------------------------------------------------------------------------------

    async def _send(self, channel: str, call: Callable[[], Awaitable[T]]) -> T:
        """One Slack call under the channel's rate limit, retried by the policy; raises when it gives up."""
        return await self.sender.send(channel, call)

    async def _send_rendered(
        self, channel: str, item: Notification, call: Callable[[SlackMessage], Awaitable[T]]
    ) -> T:
        """`call` with the notification's message; if Slack refuses it as too long, with its short
        form (header and count): a big incident must still reach the channel."""
        message = render(item, self.options)
        try:
            return await self._send(channel, lambda: call(message))
        except DeliveryError as error:
            if not error.too_long:
                raise
            log.warning(
                "slack sink: Slack refused notification %r (%s); sending its header and count only",
                item.id,
                error.reason,
            )
        short = render(item, self.options, short=True)
        return await self._send(channel, lambda: call(short))

    def _retrying(self, channel: str, error: DeliveryError, wait: float) -> None:
        if error.credentials:
            self.stats.refused_credentials += 1
            log.error(
                "slack sink: Slack refuses the %s (%s): nothing is delivered until it is fixed (a new "
                "one needs a restart of the sink); the notifications wait in JetStream, next attempt "
                "on %s in %.0fs",
                "bot token" if self.mode == "bot" else "webhook",
                error.reason,
                channel,
                wait,
            )
            return
        if error.retry_after is not None:
            self.stats.rate_limited += 1
            log.warning("slack sink: %s on %s, next attempt in %.1fs", error.reason, channel, wait)
            return
        self.stats.retries += 1
        left = self.policy.max_retry_time - error.failing_for
        log.warning(
            "slack sink: %s (attempt %d, failing for %s), next in %.1fs; dead-lettered if still failing "
            "in %s",
            error.reason,
            error.attempts,
            Duration(round(error.failing_for)),
            wait,
            Duration(max(0, round(left))),
        )

    async def _deliver(self, item: Notification) -> None:
        transport = self._transport
        if transport is None:
            out = self.out or sys.stdout
            out.write(console_text(item, self.options) + "\n")
            out.flush()
            return
        channel = transport.channel_for(item.route, item.receiver)
        if transport.mode != "bot":
            await self._post_anew(transport, channel, item)
            return
        key = thread_key(item.route, item.group_key)
        record = await self._load(key)
        if record is not None and record.last_id == item.id:
            self.stats.repeats_skipped += 1  # Slack has it; only the ack was lost
            return
        if record is not None and 0 < item.seq < record.last_seq:
            # older than what the group's message shows (a dead letter replayed after the group
            # moved on): posted, it would stand as a FIRING message that nothing ever resolves
            self.stats.stale_skipped += 1
            log.warning(
                "slack sink: notification %r (group %r) is older than the group's message in Slack, "
                "which already shows what came after it; not posted",
                item.id,
                item.group_key,
            )
            return
        if record is None or record.resolved:
            posted = await self._post_anew(transport, channel, item)
            record = self._record(posted, item, resolved=item.status == "resolved")
        elif item.status == "resolved":
            record = await self._resolve(transport, channel, record, item)
        else:
            record = await self._reply(transport, channel, record, item)
        if record is not None:
            await self._save(key, record)

    async def _post_anew(self, transport: Transport, channel: str, item: Notification) -> Posted:
        return await self._send_rendered(channel, item, lambda message: transport.post(channel, message))

    @staticmethod
    def _record(posted: Posted, item: Notification, *, resolved: bool) -> ThreadRecord | None:
        if posted.ts is None:
            return None
        return ThreadRecord(
            channel=posted.channel, ts=posted.ts, resolved=resolved, last_id=item.id, last_seq=item.seq
        )

    async def _reply(
        self, transport: Transport, channel: str, record: ThreadRecord, item: Notification
    ) -> ThreadRecord | None:
        """A reminder or a change of a firing group: into the group's thread."""
        try:
            await self._send_rendered(
                channel, item, lambda message: transport.post(record.channel, message, thread_ts=record.ts)
            )
        except DeliveryError as error:
            if error.reason not in MESSAGE_GONE:
                raise
            posted = await self._post_anew(transport, channel, item)  # the thread was deleted
            return self._record(posted, item, resolved=False)
        return msgspec.structs.replace(record, last_id=item.id, last_seq=item.seq)

    async def _resolve(
        self, transport: Transport, channel: str, record: ThreadRecord, item: Notification
    ) -> ThreadRecord | None:
        """Resolved: the group's message is updated to show it, plus a short reply in its thread."""
        try:
            await self._send_rendered(
                channel, item, lambda message: transport.update(record.channel, record.ts, message)
            )
        except DeliveryError as error:
            if error.reason not in MESSAGE_GONE:
                raise
            posted = await self._post_anew(transport, channel, item)
            return self._record(posted, item, resolved=True)
        if self.config.reply_on_resolve:
            reply = resolved_reply(item)
            try:
                await self._send(channel, lambda: transport.post(record.channel, reply, thread_ts=record.ts))
            except DeliveryError as error:  # the message itself shows the resolve already
                log.warning("slack sink: resolved reply not posted: %s", error.reason)
        return msgspec.structs.replace(record, resolved=True, last_id=item.id, last_seq=item.seq)
