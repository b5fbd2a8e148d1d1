"""bus/pull.py, the lean pull of the evaluator and the report sink, on a real nats-server."""

from __future__ import annotations

import json

import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from bus.connection import Bus
from bus.pull import Broken, Feed, resume_after

pytestmark = pytest.mark.integration


async def test_a_message_lost_on_the_way_breaks_the_feed_and_nothing_is_missed_after(
    bus: Bus, prefix: str
) -> None:
    """A delivery the feed never got (here taken by another inbox, as a reconnect loses one) is a
    gap in the delivery sequence: acking a later message would ack it too, so the feed is broken
    and, made again after the last message handled, brings it."""
    js = bus.nc.jetstream()
    stream, subject = f"{prefix}_PULL", f"{prefix}.pull.x"
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    for n in range(1, 7):
        await js.publish(subject, str(n).encode())
    handled: list[tuple[int, bytes]] = []

    def handle(msg: Msg, seq: int, stored_ns: int) -> None:
        assert stored_ns > 0
        handled.append((seq, msg.data))

    feed = Feed(bus.nc, stream, "reader", handle)
    config = ConsumerConfig(ack_policy=AckPolicy.ALL, ack_wait=300)
    await feed.open(resume_after(config, 0))
    assert await feed.pull(2, expires=1.0) == 2
    # the consumer's next delivery goes to an inbox the feed does not read
    elsewhere = await bus.nc.subscribe(bus.nc.new_inbox())
    request = json.dumps({"batch": 1}).encode()
    await bus.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.reader", request, reply=elsewhere.subject)
    assert (await elsewhere.next_msg(5)).data == b"3"
    with pytest.raises(Broken, match="delivery 3 never reached this client"):
        await feed.pull(2, expires=1.0)
    assert [seq for seq, _ in handled] == [1, 2]

    await feed.open(resume_after(config, handled[-1][0]))
    while await feed.pull(10, expires=0.5):
        pass
    assert [data for _, data in handled] == [b"1", b"2", b"3", b"4", b"5", b"6"]
    assert feed.pending == 0
    await feed.close()
