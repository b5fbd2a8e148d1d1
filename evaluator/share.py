"""How many partitions one evaluator process should hold: the partitions over the live processes.

Each process keeps itself in one KV record of the state bucket, renewed as leases are; a process
holding more than its share hands one partition over, and one holding less takes a free one at
once. So evaluators started one after the other end with the work split evenly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable

import msgspec
import nats.errors
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from evaluator.store import LEASE_TTL, LeaseRecord, lease_free, this_process

log = logging.getLogger(__name__)

PRESENCE_KEY = "evaluators"
PRESENCE_ATTEMPTS = 5
_presence = msgspec.json.Decoder(dict[str, LeaseRecord])


class Share:
    """The partitions this process holds, and the live evaluator processes it shares them with."""

    def __init__(
        self, partitions: int, *, clock: Callable[[], float] = time.time, ttl: float = LEASE_TTL
    ) -> None:
        self.partitions = partitions
        self.clock = clock
        self.ttl = ttl
        self.held: set[int] = set()
        self.peers = 1  # live evaluator processes, this one included, as last counted
        self.mine = this_process()

    def fair(self) -> int:
        return math.ceil(self.partitions / max(1, self.peers))

    def may_take(self, free_for: float) -> bool:
        """May this process take a partition that has been free this long?"""
        return len(self.held) < self.fair() or free_for >= self.ttl

    def hand_over(self, partition: int) -> bool:
        """Should this process give `partition` up (it holds more than its share, this the last)?"""
        return len(self.held) > self.fair() and partition == max(self.held)

    async def announce(self, kv: KeyValue) -> None:
        """Say this process is alive for another ttl, and count the live ones."""

        def renewed(present: dict[str, LeaseRecord]) -> dict[str, LeaseRecord]:
            now = self.clock()
            # this process's own record is written anew below
            live = {t: r for t, r in present.items() if not lease_free(r, self.mine, now)}
            live[self.mine.token] = msgspec.structs.replace(self.mine, expires_at=now + self.ttl)
            return live

        live = await _rewrite(kv, renewed)
        if live is None:
            return
        if len(live) != self.peers:
            log.info("evaluator: %d evaluator processes share %d partitions", len(live), self.partitions)
        self.peers = len(live)

    async def withdraw(self, kv: KeyValue) -> None:
        """Leave the record (at a stop), so that the others take the partitions at once."""

        def without_me(present: dict[str, LeaseRecord]) -> dict[str, LeaseRecord]:
            return {token: record for token, record in present.items() if token != self.mine.token}

        with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
            await _rewrite(kv, without_me)


async def _rewrite(
    kv: KeyValue, change: Callable[[dict[str, LeaseRecord]], dict[str, LeaseRecord]]
) -> dict[str, LeaseRecord] | None:
    """Write the presence record as `change` makes it from the stored one, over its revision (a
    record that does not decode counts as empty); what was written, None if others kept writing."""
    for _ in range(PRESENCE_ATTEMPTS):
        revision = 0
        present: dict[str, LeaseRecord] = {}
        try:
            entry = await kv.get(PRESENCE_KEY)
        except KeyDeletedError as exc:  # the next write goes over the delete marker
            revision = (exc.entry.revision if exc.entry is not None else 0) or 0
        except KeyNotFoundError:
            pass
        else:
            revision = entry.revision or 0
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                present = _presence.decode(entry.value or b"{}")
        written = change(present)
        try:
            await kv.update(PRESENCE_KEY, msgspec.json.encode(written), last=revision)
        except KeyWrongLastSequenceError:  # another process wrote meanwhile
            continue
        return written
    return None
