"""The evaluator's JetStream KV stores: its saved state, the active alerts, silences and acks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Literal

import msgspec
import nats.errors
import psutil
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from bus.jetstream import KV_BUCKETS, bucket_name, ensure_bucket
from evaluator.engine import ActiveAlert
from evaluator.silences import Silence

# Below the server's default 1 MB max payload, with room for the headers.
CHUNK_SIZE = 512 * 1024
SNAPSHOT_KEY = "snapshot"
ACTIVE_KEY = "active"
LEASE_KEY = "lease"
# An evaluator that stops renewing its lease loses it after this long.
LEASE_TTL = 15.0
# Renewals over a revision that own writes whose replies were lost keep moving on.
RENEW_ATTEMPTS = 5
# The server's codes for a write conditional on a revision that is not the latest (delete raises
# the bare API error with them; update turns them into KeyWrongLastSequenceError).
_WRONG_LAST_SEQUENCE = (10071, 10164)
SILENCE_PREFIX = "silence."
ACK_PREFIX = "ack."
# Expired silences stay listed (`silence list --all`) this long, as in Alertmanager.
SILENCE_RETENTION = 5 * 86400.0
_KEY_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")


class StoreError(RuntimeError):
    """A stored value that cannot be read back (torn write, corrupt data)."""


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """Where a chunked value lives: its slot, chunk count, size and checksum."""

    slot: Literal["a", "b"]
    chunks: int
    size: int
    sha256: str
    written_at: float


class BlobStore:
    """Values of any size in a KV bucket: compressed, split into chunks, published atomically.

    Chunks go to the slot the manifest does not point at; the manifest is written last, so a
    crash at any moment leaves the previous value whole.
    """

    def __init__(self, kv: KeyValue, *, chunk_size: int = CHUNK_SIZE) -> None:
        self.kv = kv
        self.chunk_size = chunk_size
        self._manifests: dict[str, Manifest] = {}

    async def _manifest(self, name: str) -> Manifest | None:
        try:
            entry = await self.kv.get(name)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            return msgspec.json.decode(entry.value, type=Manifest)
        except msgspec.DecodeError as exc:
            raise StoreError(f"KV key {name}: unreadable manifest: {exc}") from None

    async def put(self, name: str, data: bytes) -> None:
        """Store `data` under `name`, replacing the previous value only once all of it is written."""
        previous = self._manifests.get(name) or await self._manifest(name)
        slot: Literal["a", "b"] = "b" if previous is not None and previous.slot == "a" else "a"
        packed = zlib.compress(data, 1)
        chunks = [packed[i : i + self.chunk_size] for i in range(0, len(packed), self.chunk_size)] or [b""]
        for index, chunk in enumerate(chunks):
            await self.kv.put(f"{name}.{slot}.{index}", chunk)
        manifest = Manifest(
            slot=slot,
            chunks=len(chunks),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            written_at=time.time(),
        )
        await self.kv.put(name, msgspec.json.encode(manifest))
        self._manifests[name] = manifest

    async def get(self, name: str) -> bytes | None:
        """The value stored under `name`, None if there is none; StoreError if it is damaged."""
        manifest = await self._manifest(name)
        if manifest is None:
            return None
        parts = []
        for index in range(manifest.chunks):
            key = f"{name}.{manifest.slot}.{index}"
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                raise StoreError(f"KV key {key} is missing") from None
            parts.append(entry.value or b"")
        try:
            data = zlib.decompress(b"".join(parts))
        except zlib.error as exc:
            raise StoreError(f"KV key {name}: corrupt data: {exc}") from None
        if len(data) != manifest.size or hashlib.sha256(data).hexdigest() != manifest.sha256:
            raise StoreError(f"KV key {name}: checksum mismatch")
        self._manifests[name] = manifest
        return data


class SavedState(msgspec.Struct, frozen=True, kw_only=True):
    """The engine snapshot, the last stream sequence it includes per input stream, the time of
    its latest input, and the silences it was given."""

    engine: bytes
    cursors: dict[str, int]
    input_time: float | None = None
    silences: list[Silence] = []


class ActiveAlerts(msgspec.Struct, frozen=True, kw_only=True):
    """What `jarvis-monitor alerts` shows: the evaluator's active alerts at `ts`."""

    ts: float
    alerts: list[ActiveAlert]


_state = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(SavedState)
_active_decoder = msgspec.json.Decoder(ActiveAlerts)


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
        await self.blobs.put(ACTIVE_KEY, msgspec.json.encode(active))

    async def load_active(self) -> ActiveAlerts | None:
        data = await self.blobs.get(ACTIVE_KEY)
        if data is None:
            return None
        try:
            return _active_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StoreError(f"KV key {ACTIVE_KEY}: {exc}") from None


class AckRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Someone acknowledged an alert: no reminders until it resolves."""

    fingerprint: str
    author: str
    at: float


def valid_key_token(value: str) -> bool:
    """True for an id or fingerprint usable as one KV key token."""
    return _KEY_TOKEN.fullmatch(value) is not None


def new_silence_id() -> str:
    return uuid.uuid4().hex[:12]


_silence_decoder = msgspec.json.Decoder(Silence)
_ack_decoder = msgspec.json.Decoder(AckRecord)


def decode_silence(data: bytes) -> Silence | None:
    """A stored silence, or None for a value that is not one (written by hand, or deleted)."""
    try:
        return _silence_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def decode_ack(data: bytes) -> AckRecord | None:
    try:
        return _ack_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class SilenceStore:
    """Silences and acks, shared by every evaluator and the command line."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def add(self, silence: Silence) -> None:
        await self.kv.put(SILENCE_PREFIX + silence.id, msgspec.json.encode(silence))

    async def silences(self) -> list[Silence]:
        """Every stored silence, expired ones included."""
        found = []
        for key in await self.keys(SILENCE_PREFIX):
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:  # deleted meanwhile
                continue
            silence = decode_silence(entry.value or b"")
            if silence is not None:
                found.append(silence)
        return sorted(found, key=lambda s: (s.starts_at, s.id))

    async def expire(self, silence_id: str, now: float) -> Silence:
        """End the silence now; KeyError if there is no such silence."""
        if not valid_key_token(silence_id):
            raise KeyError(silence_id)
        try:
            entry = await self.kv.get(SILENCE_PREFIX + silence_id)
        except KeyNotFoundError:
            raise KeyError(silence_id) from None
        silence = decode_silence(entry.value or b"")
        if silence is None:
            raise KeyError(silence_id)
        ended = msgspec.structs.replace(
            silence, ends_at=min(silence.ends_at, now), starts_at=min(silence.starts_at, now)
        )
        await self.add(ended)
        return ended

    async def ack(self, record: AckRecord) -> None:
        await self.kv.put(ACK_PREFIX + record.fingerprint, msgspec.json.encode(record))

    async def delete(self, key: str) -> None:
        await self.kv.purge(key)

    async def keys(self, prefix: str) -> list[str]:
        """The stored keys starting with `prefix`."""
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            return []
        return [key for key in keys if key.startswith(prefix)]


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
