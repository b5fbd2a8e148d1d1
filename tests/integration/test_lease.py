"""The evaluator's lease on a real nats-server KV: its holder keeps it through lost replies and
expiry, and loses it only to another evaluator."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from bus.config import BusConfig
from bus.connection import Bus, connect
from bus.server import EmbeddedServer
from evaluator.store import LEASE_KEY, LEASE_TTL, Lease, LeaseRecord, open_buckets
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

START = 1000.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


async def lease_bucket(bus: Bus, timeout: float = 5.0) -> KeyValue:
    state, _ = await open_buckets(bus.nc.jetstream(timeout=timeout), bus.subjects.prefix)
    return state.blobs.kv


async def stored(kv: KeyValue) -> LeaseRecord | None:
    try:
        entry = await kv.get(LEASE_KEY)
    except KeyNotFoundError:
        return None
    return msgspec.json.decode(entry.value or b"", type=LeaseRecord)


async def renewal_stored_behind_its_back(kv: KeyValue, lease: Lease, expires_at: float) -> None:
    """What a renewal whose reply was lost leaves: the lease's own record at a newer revision."""
    await kv.put(LEASE_KEY, msgspec.json.encode(msgspec.structs.replace(lease.mine, expires_at=expires_at)))


async def test_a_renewal_stored_but_unanswered_does_not_lose_the_lease(bus: Bus) -> None:
    """The only evaluator keeps evaluating when a renewal's reply was lost but the renewal stored."""
    kv = await lease_bucket(bus)
    clock = Clock()
    lease = Lease(kv, clock=clock)
    assert await lease.acquire() is None
    clock.now += 5
    await renewal_stored_behind_its_back(kv, lease, clock.now + LEASE_TTL)
    clock.now += 5

    assert await lease.renew()
    assert await stored(kv) == msgspec.structs.replace(lease.mine, expires_at=clock.now + LEASE_TTL)
    clock.now += 5
    assert await lease.renew()  # and from the revision it adopted on
    assert lease.taken_by is None
    other = Lease(kv, clock=clock)
    assert await other.acquire() == msgspec.structs.replace(lease.mine, expires_at=clock.now + LEASE_TTL)


async def test_several_renewals_stored_unanswered_do_not_lose_the_lease(bus: Bus) -> None:
    """Every renewal of a long outage stored at once on reconnect: the lease is still its holder's."""
    kv = await lease_bucket(bus)
    clock = Clock()
    lease = Lease(kv, clock=clock)
    assert await lease.acquire() is None
    for _ in range(3):
        clock.now += 5
        await renewal_stored_behind_its_back(kv, lease, clock.now + LEASE_TTL)

    assert await lease.renew()
    record = await stored(kv)
    assert record is not None
    assert (record.token, record.expires_at) == (lease.mine.token, clock.now + LEASE_TTL)


async def test_a_lease_that_expired_while_nobody_took_it_is_renewed_by_its_holder(bus: Bus) -> None:
    """An outage longer than the TTL with no other evaluator: the holder renews and goes on."""
    kv = await lease_bucket(bus)
    clock = Clock()
    lease = Lease(kv, clock=clock)
    assert await lease.acquire() is None
    clock.now += 5
    await renewal_stored_behind_its_back(kv, lease, clock.now + LEASE_TTL)
    clock.now += 3 * LEASE_TTL

    assert await lease.renew()
    record = await stored(kv)
    assert record is not None
    assert (record.token, record.expires_at) == (lease.mine.token, clock.now + LEASE_TTL)
    assert await Lease(kv, clock=clock).acquire() == record


async def test_a_lease_another_evaluator_took_is_lost_and_names_it(bus: Bus) -> None:
    """After an outage longer than the TTL another evaluator took over: the old holder stands by."""
    kv = await lease_bucket(bus)
    clock = Clock()
    lease = Lease(kv, clock=clock)
    assert await lease.acquire() is None
    clock.now += 5
    await renewal_stored_behind_its_back(kv, lease, clock.now + LEASE_TTL)
    clock.now += 2 * LEASE_TTL
    other = Lease(kv, clock=clock)
    assert await other.acquire() is None

    assert not await lease.renew()
    assert lease.taken_by is not None
    assert lease.taken_by.token == other.mine.token
    assert await other.renew()
    record = await stored(kv)
    assert record is not None
    assert record.token == other.mine.token


async def test_a_lease_deleted_behind_its_back_is_given_up(bus: Bus) -> None:
    """Deleted: another evaluator held it and released it, so the state is no longer this one's."""
    kv = await lease_bucket(bus)
    lease = Lease(kv, clock=Clock())
    assert await lease.acquire() is None
    await kv.delete(LEASE_KEY)

    assert not await lease.renew()
    assert lease.taken_by is None


async def test_release_after_a_stored_but_unanswered_renewal_frees_the_lease_at_once(bus: Bus) -> None:
    """A stop after an outage still hands over at once, not after the TTL."""
    kv = await lease_bucket(bus)
    clock = Clock()
    lease = Lease(kv, clock=clock)
    assert await lease.acquire() is None
    await renewal_stored_behind_its_back(kv, lease, clock.now + LEASE_TTL)
    standby = Lease(kv, clock=clock)
    assert await standby.acquire() is not None  # held, by a live process of this machine

    await lease.release()
    assert await stored(kv) is None
    assert await standby.acquire() is None


async def test_a_renewal_that_timed_out_in_a_real_outage_does_not_lose_the_lease(
    own_nats_server: EmbeddedServer, prefix: str
) -> None:
    """The server stops mid-renewal: the reply never comes, the renewal is stored on reconnect,
    and the next renewal still holds the lease."""
    bus = await connect(BusConfig(prefix=prefix), "evaluator", servers=[own_nats_server.url])
    try:
        kv = await lease_bucket(bus, timeout=1.0)
        clock = Clock()
        lease = Lease(kv, clock=clock)
        assert await lease.acquire() is None
        await own_nats_server.stop()
        clock.now += 5
        with pytest.raises(TimeoutError):
            await lease.renew()
        await own_nats_server.start()
        await wait_until(lambda: bus.nc.is_connected, 15)

        async def buffered_renewal_stored() -> None:
            deadline = time.monotonic() + 10
            while (record := await stored(kv)) is None or record.expires_at != START + 5 + LEASE_TTL:
                assert time.monotonic() < deadline, f"the timed-out renewal was never stored: {record}"
                await asyncio.sleep(0.05)

        await buffered_renewal_stored()  # else this test would not test a lost reply
        clock.now += 5
        assert await lease.renew()
        record = await stored(kv)
        assert record is not None
        assert (record.token, record.expires_at) == (lease.mine.token, clock.now + LEASE_TTL)
    finally:
        await bus.close()


async def test_an_evaluator_that_fails_hands_its_lease_over_for_the_next_instance(bus: Bus) -> None:
    """The supervisor restarts a failed evaluator in the same process: the new one evaluates at
    once rather than standing by until the failed one's lease expires."""
    from bus.jetstream import provision
    from evaluator.config import EvaluatorConfig
    from evaluator.service import EvaluatorService

    await provision(bus.nc.jetstream(), bus.subjects, BusConfig().streams)
    failing = EvaluatorService(EvaluatorConfig(), bus)

    async def broken_loop() -> None:
        raise RuntimeError("a bug in the loop")

    failing._loop = broken_loop  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="a bug in the loop"):
        await asyncio.wait_for(failing.run(), 30)
    started = time.monotonic()
    restarted = EvaluatorService(EvaluatorConfig(), bus)
    task = asyncio.create_task(restarted.run())
    try:
        await asyncio.wait_for(restarted.ready.wait(), LEASE_TTL / 2)
        assert time.monotonic() - started < LEASE_TTL / 2
        assert restarted.standing_by is None
    finally:
        restarted.stop()
        await asyncio.wait_for(task, 30)
