"""When the console reads the evaluator's active alerts again: as a silence starts or ends, which no
event on the bus tells of (alert events, silences and acks are tested on a real server)."""

from __future__ import annotations

import asyncio
import time
from typing import cast

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError

from bus.connection import Bus
from bus.kvblob import BlobStore
from bus.records import PARTITIONS_KEY, ActiveAlerts, Matcher, Silence
from sinks.console import service as console_service
from sinks.console.config import ConsoleConfig
from sinks.console.service import ConsoleService
from tests.conftest import wait_until
from tests.console_events import listed_disk_alert


class EvaluatorBucket:
    """The state bucket as the console reads it: one evaluator's list, counted."""

    def __init__(self, active: ActiveAlerts) -> None:
        self.active = active
        self.kv = self
        self.reads = 0

    async def get(self, key: str) -> bytes:
        if key == PARTITIONS_KEY:
            raise KeyNotFoundError
        self.reads += 1
        return msgspec.json.encode(self.active)


async def test_the_list_is_read_again_as_a_silence_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_service, "ACTIVE_REFRESH", 3600.0)  # nothing else brings a read
    console = ConsoleService(ConsoleConfig(port=0, backfill=0), cast("Bus", object()), host="test")
    now = time.time()
    console._silences = {
        "s1": Silence(
            id="s1",
            matchers=[Matcher(name="host", value="db01")],
            starts_at=now - 3600,
            ends_at=now + 0.5,
            author="ops",
            comment="migration",
        )
    }
    bucket = EvaluatorBucket(listed_disk_alert(now, silenced_by=("s1",)))
    reader = asyncio.create_task(console._poll_active(cast("BlobStore", bucket)))
    try:
        await wait_until(lambda: bucket.reads == 1, 5)
        bucket.active = listed_disk_alert(now + 0.6)  # what the evaluator writes once the silence is over
        await wait_until(
            lambda: console.state.active is not None and not console.state.active.alerts[0].silenced_by, 5
        )
    finally:
        reader.cancel()
