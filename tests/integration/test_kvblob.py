"""Chunked KV values on a real nats-server: a writer that lost its lease cannot damage the value
the next writer stored, whatever its late writes do."""

from __future__ import annotations

import asyncio
import os
from typing import Any, cast

import pytest
from nats.js.kv import KeyValue

from bus.connection import Bus
from bus.jetstream import ensure_bucket
from bus.kvblob import BlobStore

pytestmark = pytest.mark.integration


class _Stalled:
    """A bucket whose chunk writes wait for `resume`, and whose writer dies before its manifest
    (a process paused, then killed): what it wrote late is all the harm it does."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.resume = asyncio.Event()
        self.stalled = asyncio.Event()
        self.dead = False

    async def put(self, key: str, value: bytes) -> int:
        if self.dead and "." in key:
            self.stalled.set()
            await self.resume.wait()
        elif self.dead:
            raise ConnectionError("killed before its manifest")
        return await self.kv.put(key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)


async def test_a_stale_writers_late_chunks_leave_its_successors_value_whole(bus: Bus) -> None:
    js = bus.nc.jetstream()
    name = f"{bus.subjects.prefix}_blobs"
    await ensure_bucket(js, name, "kvblob test")
    kv = await js.key_value(name)
    stalled = _Stalled(kv)
    stale = BlobStore(cast("KeyValue", stalled), chunk_size=1024)
    await stale.put("active", b"first")
    stalled.dead = True
    late = asyncio.create_task(stale.put("active", os.urandom(6000)))
    await asyncio.wait_for(stalled.stalled.wait(), 10)
    successor = BlobStore(kv, chunk_size=1024)
    value = os.urandom(6000)
    await successor.put("active", value)
    stalled.resume.set()
    with pytest.raises(ConnectionError):
        await late
    assert await BlobStore(kv).get("active") == value
