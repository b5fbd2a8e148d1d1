"""Chunked KV values on a real nats-server: a writer that lost its lease cannot damage the value
the next writer stored, whatever its late writes do."""

from __future__ import annotations

import asyncio
import os
from typing import Any, cast

import pytest
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from bus.connection import Bus
from bus.jetstream import ensure_bucket
from bus.kvblob import BlobStore

pytestmark = pytest.mark.integration


class _Stalled:
    """A bucket whose chunk writes wait for `resume` once `stalled` (a process paused past its
    lease): what it writes late is all the harm it can try."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.resume = asyncio.Event()
        self.stalling = asyncio.Event()
        self.stalled = False

    async def put(self, key: str, value: bytes) -> int:
        if self.stalled:
            self.stalling.set()
            await self.resume.wait()
        return await self.kv.put(key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)


@pytest.fixture
async def kv(bus: Bus) -> KeyValue:
    js = bus.nc.jetstream()
    name = f"{bus.subjects.prefix}_blobs"
    await ensure_bucket(js, name, "kvblob test")
    return await js.key_value(name)


async def test_a_stale_writers_late_chunks_leave_its_successors_value_whole(kv: KeyValue) -> None:
    """Its chunks land late in slots of its own; its manifest, written over the revision it knew,
    is refused."""
    stalled = _Stalled(kv)
    stale = BlobStore(cast("KeyValue", stalled), chunk_size=1024)
    await stale.put("active", b"first")
    stalled.stalled = True
    late = asyncio.create_task(stale.put("active", os.urandom(6000)))
    await asyncio.wait_for(stalled.stalling.wait(), 10)
    successor = BlobStore(kv, chunk_size=1024)
    value = os.urandom(6000)
    await successor.put("active", value)
    stalled.resume.set()
    with pytest.raises(KeyWrongLastSequenceError):
        await late
    assert await BlobStore(kv).get("active") == value
    await successor.put("active", b"next")  # the successor goes on over its own revision
    assert await BlobStore(kv).get("active") == b"next"


class _SlowToPurge:
    """A bucket whose writer stalls as it lists the chunks to purge (paused past its lease)."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.resume = asyncio.Event()
        self.listing = asyncio.Event()

    async def watch(self, *args: Any, **kwargs: Any) -> Any:
        self.listing.set()
        await self.resume.wait()
        return await self.kv.watch(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)


async def test_a_stale_writers_late_purge_leaves_its_successors_chunks(kv: KeyValue) -> None:
    slow = _SlowToPurge(kv)
    stale = BlobStore(cast("KeyValue", slow), chunk_size=1024)
    first = asyncio.create_task(stale.put("active", os.urandom(3000)))  # stored, then it stalls
    await asyncio.wait_for(slow.listing.wait(), 10)
    value = os.urandom(6000)
    await BlobStore(kv, chunk_size=1024).put("active", value)  # the successor purges the stale one's
    slow.resume.set()
    await first  # its purge comes late: it is no longer the latest writer, and purges nothing
    assert await BlobStore(kv).get("active") == value
