"""The evaluator's JetStream KV stores: its saved state, the active alerts, silences and acks."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable

import msgspec
import nats.errors
import psutil
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from bus.jetstream import KV_BUCKETS, bucket_name, ensure_bucket

# The records shared with the command line and the console live in bus/ (re-exported here).
from bus.kvblob import CHUNK_SIZE as CHUNK_SIZE
from bus.kvblob import BlobStore as BlobStore
from bus.kvblob import Manifest as Manifest
from bus.kvblob import StoreError as StoreError
from bus.records import ACK_PREFIX as ACK_PREFIX
from bus.records import ACTIVE_KEY as ACTIVE_KEY
from bus.records import SILENCE_PREFIX as SILENCE_PREFIX
from bus.records import SILENCE_RETENTION as SILENCE_RETENTION
from bus.records import AckRecord as AckRecord
from bus.records import ActiveAlerts as ActiveAlerts
from bus.records import SilenceStore as SilenceStore
from bus.records import decode_ack as decode_ack
from bus.records import decode_silence as decode_silence
from bus.records import load_active, save_active
from bus.records import new_silence_id as new_silence_id
from bus.records import valid_key_token as valid_key_token
from evaluator.silences import Silence

SNAPSHOT_KEY = "snapshot"
LEASE_KEY = "lease"
# An evaluator that stops renewing its lease loses it after this long.
LEASE_TTL = 15.0
# Renewals over a revision that own writes whose replies were lost keep moving on.
RENEW_ATTEMPTS = 5
# The server's codes for a write conditional on a revision that is not the latest (delete raises
# the bare API error with them; update turns them into KeyWrongLastSequenceError).
_WRONG_LAST_SEQUENCE = (10071, 10164)


class SavedState(msgspec.Struct, frozen=True, kw_only=True):
    """The engine snapshot, the last stream sequence it includes per input stream, the time of
    its latest input, and the silences it was given."""

    engine: bytes
    cursors: dict[str, int]
    input_time: float | None = None
    silences: list[Silence] = []


_state = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(SavedState)


class StateStore:
    """The evaluator's bucket: its saved state and the list of active alerts."""

    def __init__(self, kv: KeyValue, *, chunk_size: int = CHUNK_SIZE) -> None:
        self.blobs = BlobStore(kv, chunk_size=chunk_size)

    async def save(self, state: SavedState) -> None:
        await self.blobs.put(SNAPSHOT_KEY, _state.encode(state))

    async def load(self) -> SavedState | None:
        data = await self.blobs.get(SNAPSHOT_KEY)
        if data is None:
            return None
        try:
            return _state_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StoreError(f"KV key {SNAPSHOT_KEY}: {exc}") from None

    async def save_active(self, active: ActiveAlerts) -> None:
        await save_active(self.blobs, active)

    async def load_active(self) -> ActiveAlerts | None:
        return await load_active(self.blobs)


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Who evaluates: a process on a host, until `expires_at` unless it renews."""

    host: str
    pid: int
    started: float  # the process's start time: tells a reused pid from the holder
    token: str
    expires_at: float


def _process_started(pid: int) -> float:
    """When process `pid` of this machine started; 0.0 if there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return 0.0


def _still_running(pid: int, started: float) -> bool:
    """Is the process that held a lease still running (and not a later one with its pid)?"""
    try:
        return psutil.Process(pid).create_time() == started
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.Error:  # alive, but not ours to inspect: assume it is the holder
        return True


class Lease:
    """One evaluator per prefix: a KV record the holder renews; the others stand by.

    A lease is free when it expired, or when its holder was a process of this machine that is
    gone (a restart after SIGKILL takes over at once instead of waiting out the TTL).
    """

    def __init__(
        self, kv: KeyValue, *, clock: Callable[[], float] = time.time, ttl: float = LEASE_TTL
    ) -> None:
        self.kv = kv
        self.clock = clock
        self.ttl = ttl
        pid = os.getpid()
        self.mine = LeaseRecord(
            host=socket.gethostname(),
            pid=pid,
            started=_process_started(pid),
            token=uuid.uuid4().hex,
            expires_at=0.0,
        )
        self._revision = 0
        # who took the lease from this one (None: nobody, or a record that names no one)
        self.taken_by: LeaseRecord | None = None

    def _free(self, holder: LeaseRecord) -> bool:
        if holder.token == self.mine.token or holder.expires_at < self.clock():
            return True
        return holder.host == self.mine.host and not _still_running(holder.pid, holder.started)

    def _record(self) -> bytes:
        record = msgspec.structs.replace(self.mine, expires_at=self.clock() + self.ttl)
        return msgspec.json.encode(record)

    async def _stored(self) -> tuple[int, LeaseRecord | None] | None:
        """The lease's revision and record as stored now; None if it is deleted or was never made."""
        try:
            entry = await self.kv.get(LEASE_KEY)
        except KeyNotFoundError:  # a delete marker too
            return None
        holder = None
        if entry.value:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                holder = msgspec.json.decode(entry.value, type=LeaseRecord)
        return entry.revision or 0, holder

    async def _own_revision(self) -> int | None:
        """The stored revision if the stored record is this lease's own, else None.

        Only this lease writes its token, and only over a revision it knows, so a record with
        its token means nobody else wrote since: a write whose reply was lost in an outage.
        """
        stored = await self._stored()
        if stored is None:
            self.taken_by = None
            return None
        revision, holder = stored
        if holder is not None and holder.token == self.mine.token:
            return revision
        self.taken_by = holder
        return None

    async def acquire(self) -> LeaseRecord | None:
        """Take the lease if it is free; else return who holds it."""
        stored = await self._stored()
        holder = stored[1] if stored is not None else None
        if holder is not None and not self._free(holder):
            return holder
        try:
            if stored is None:
                self._revision = await self.kv.create(LEASE_KEY, self._record())
            else:
                self._revision = await self.kv.update(LEASE_KEY, self._record(), last=stored[0])
        except KeyWrongLastSequenceError:  # another evaluator was quicker
            return holder or self.mine
        self.taken_by = None
        return None

    async def renew(self) -> bool:
        """Extend the lease, expired or not, unless another evaluator has taken it (then False).

        A renewal that timed out in an outage may have been stored all the same: the revision
        moved on, but the record is still this lease's, so it renews over that revision.
        """
        for _ in range(RENEW_ATTEMPTS):
            try:
                self._revision = await self.kv.update(LEASE_KEY, self._record(), last=self._revision)
            except KeyWrongLastSequenceError:
                revision = await self._own_revision()
                if revision is None:
                    return False
                self._revision = revision
                continue
            return True
        # each attempt found a later write of its own (several lost renewals stored one by one):
        # the stored record is still this lease's, renewed by one of them
        return True

    async def release(self) -> None:
        """Hand the lease over at once (a standby takes it within a second)."""
        with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
            try:
                await self.kv.delete(LEASE_KEY, last=self._revision)
            except APIError as exc:
                if exc.err_code not in _WRONG_LAST_SEQUENCE:
                    raise
                # a renewal whose reply was lost moved the revision on
                revision = await self._own_revision()
                if revision is not None:
                    await self.kv.delete(LEASE_KEY, last=revision)


async def open_buckets(js: JetStreamContext, prefix: str) -> tuple[StateStore, SilenceStore]:
    """The two buckets, created when the evaluator has never run against this server."""
    stores = []
    for bucket in ("state", "silences"):
        name = bucket_name(prefix, bucket)
        await ensure_bucket(js, name, KV_BUCKETS[bucket])
        stores.append(await js.key_value(name))
    return StateStore(stores[0]), SilenceStore(stores[1])
