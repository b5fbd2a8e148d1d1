"""A lean JetStream pull: one request at a time, each message handed over as it arrives.

nats-py's `fetch` waits on each message with a timer and a task of its own and parses its metadata
into objects; at thousands of messages a second that costs more than everything the report sink or
the evaluator does with them. Here a request asks for up to `batch` messages (and bytes), and the
subscription's callback gives each to `handle` with what its reply subject says (stream sequence,
stored time), as it arrives.

The consumer is made afresh where its reader stands, at every start (the position is committed
with the reader's own state: the report sink's rollups, the evaluator's engine), so what was
delivered but not committed comes again after a crash. A message the client never got (a
reconnect) shows as a gap in the consumer's delivery sequence: `pull` then reports the feed
broken, to be made afresh after the last message handled. Acking one later (AckPolicy.ALL) would
otherwise ack the lost one with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError

from bus.jetstream import ack_reply

# The server answers a pull that expired, or stopped early, with a status message (no reply).
EXPIRED = "408"
# Beyond the request's own expiry, how long to wait for the server's word before asking again.
MARGIN = 2.0
# What a pull may bring at most, beyond the message count: bounded so the client never buffers
# more than one request, and never less than one message can be, or a large one would never come.
MIN_BYTES = 4 * 1024 * 1024

# (message, stream sequence, stored time in ns since the epoch)
Handler = Callable[[Msg, int, int], None]


class Broken(Exception):
    """The feed lost messages or its consumer: make it afresh where its reader stands."""


def resume_after(config: ConsumerConfig, after: int) -> ConsumerConfig:
    """`config` delivering from the message after stream sequence `after` (from the first if 0)."""
    if after > 0:
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = after + 1
        config.opt_start_time = None
    else:
        config.deliver_policy = DeliverPolicy.ALL
    return config


class Feed:
    """A stream's messages through its reader's own durable consumer, pulled into `handle`."""

    def __init__(self, nc: Client, stream: str, durable: str, handle: Handler) -> None:
        self.nc = nc
        self.stream = stream
        self.durable = durable
        self.handle = handle
        self.pending = 0  # messages the consumer had still to deliver, at the latest one
        self._sub: Subscription | None = None
        self._next = "$JS.API.CONSUMER.MSG.NEXT." + stream + "." + durable
        self._delivered = 0  # the consumer's delivery sequence handled last
        self._want = 0
        self._got = 0
        self._status: str | None = None
        self._broken = False
        self._done = asyncio.Event()

    async def open(self, config: ConsumerConfig, timeout: float | None = None) -> None:
        """(Re)make the consumer as `config` says (its durable name is this feed's); `timeout`
        for the server's answer (a replicated consumer's election may outlast the usual one)."""
        await self.close()
        js = self.nc.jetstream()
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(self.stream, self.durable)
        config.durable_name = self.durable
        await js.add_consumer(self.stream, config, timeout=timeout)
        self._delivered, self._broken = 0, False
        # a fresh inbox per consumer: nothing late from a former one can land in this one's sequence
        self._sub = await self.nc.subscribe(
            self.nc.new_inbox(), cb=self._on_msg, pending_msgs_limit=0, pending_bytes_limit=0
        )

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):  # closing connection: nothing left to unsubscribe
                await sub.unsubscribe()

    @property
    def expired(self) -> bool:
        """The last request ran out with the server's word (408): it had nothing more to deliver."""
        return self._status is not None and self._status.startswith(EXPIRED)

    async def consumer_info(self) -> ConsumerInfo:
        info: ConsumerInfo = await self.nc.jetstream().consumer_info(self.stream, self.durable)
        return info

    async def pull(self, batch: int, expires: float, margin: float = MARGIN) -> int:
        """Ask for up to `batch` messages, handle them as they come; how many came (0 also when
        the server did not answer within `expires` + `margin`). `Broken` if the feed lost a message
        or its consumer (it must be opened again)."""
        sub = self._sub
        if sub is None or self._broken:
            raise Broken("not open")
        self._want, self._got, self._status = batch, 0, None
        self._done.clear()
        request = {
            "batch": batch,
            "max_bytes": max(MIN_BYTES, 2 * self.nc.max_payload),
            "expires": int(expires * 1e9),
        }
        await self.nc.publish(self._next, json.dumps(request).encode(), reply=sub.subject)
        with contextlib.suppress(TimeoutError):  # the server's answer got lost: ask again
            await asyncio.wait_for(self._done.wait(), expires + margin)
        if self._broken:
            raise Broken(self._status or "a message was lost on the way")
        if self._status is not None and self._status[:3] not in (EXPIRED, "409", "404", "100"):
            raise Broken(self._status)  # e.g. 503: JetStream or the consumer is gone
        return self._got

    async def _on_msg(self, msg: Msg) -> None:
        if self._broken:  # nothing after the gap counts, nor what the server says of the request
            return
        if not msg.reply:  # a status: this request is over (or, 100, an idle heartbeat)
            headers = msg.headers or {}
            status = headers.get("Status", "")
            self._status = f"{status} {headers.get('Description', '')}".strip()
            if status == "409" and "Deleted" in self._status:
                self._broken = True
            if status != "100":
                self._done.set()
            return
        sequence, delivered, stored_ns, self.pending = ack_reply(msg.reply)
        if delivered != self._delivered + 1:  # one never reached us: it must come again
            self._broken = True
            self._status = f"delivery {self._delivered + 1} never reached this client"
            self._done.set()
            return
        self._delivered = delivered
        self.handle(msg, sequence, stored_ns)
        self._got += 1
        if self._got >= self._want:
            self._done.set()
