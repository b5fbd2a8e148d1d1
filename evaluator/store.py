"""The evaluator's JetStream KV stores: its saved state, the active alerts, silences and acks.

The saved state is a base (a whole engine snapshot under `snapshot`, chunked as bus/kvblob.py lays
values out) and a journal of the deltas committed after it: entry n (counted from the journal's
start) in `journal.<n % JOURNAL_SLOTS>`, a ring. Each entry carries the input cursors of its
commit, so a delta and its cursors are written in one KV put (its chunks, if any, first). A base
names its journal and the slot of the first entry after it; an entry counts only if it names
that journal and its own slot, and the journal is read up to the first that does not.

A new base is written in the background while entries continue: the base of commit n names slot
n + 1 of the same journal, and until its manifest is written the previous base and the whole
journal after it restore the same state. The ring never overwrites an entry the newest complete
base needs. A restart writes a base with a new journal (so a stale evaluator's late entries are
void), and a base's manifest is only written over the revision its writer last saw, so a stale
evaluator's late base is refused. Nor can its late chunks damage the base that replaced its own:
each writer (a load, or a first save) claims a number of its own and writes only its own two slots
(bus/kvblob.py WRITERS).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec
import nats.errors
import psutil
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from bus.jetstream import KV_BUCKETS, bucket_name, ensure_bucket

# The records shared with the command line and the console live in bus/ (re-exported here).
from bus.kvblob import CHUNK_SIZE as CHUNK_SIZE
from bus.kvblob import (
    PURGE_TRIES,
    Claim,
    claim_writer,
    decode_manifest,
    next_slot,
    purge_others,
    read_chunks,
    stored_value,
)
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
from bus.records import load_active, save_active
from bus.records import new_silence_id as new_silence_id
from bus.records import silence_or_reason as silence_or_reason
from bus.records import valid_key_token as valid_key_token
from evaluator.silences import Silence

log = logging.getLogger(__name__)

SNAPSHOT_KEY = "snapshot"
JOURNAL_PREFIX = "journal"
# The journal's ring: a base takes at most this many entries after it.
JOURNAL_SLOTS = 512
# A new base is begun once the journal since the newest base holds this many entries, so that it
# is complete long before the ring comes round to the entries the newest base still needs.
BASE_EVERY_SLOTS = JOURNAL_SLOTS // 2
# ... or once the journal would hold more bytes than the base (so a restore reads at most about
# twice the state), or this much for a small base.
JOURNAL_MIN_BYTES = 256 * 1024
# Journal entries read at once at a restore.
READ_AHEAD = 32
LEASE_KEY = "lease"
# An evaluator that stops renewing its lease loses it after this long.
LEASE_TTL = 15.0
# Renewals over a revision that own writes whose replies were lost keep moving on.
RENEW_ATTEMPTS = 5
# The server's codes for a write conditional on a revision that is not the latest (delete raises
# the bare API error with them; update turns them into KeyWrongLastSequenceError).
_WRONG_LAST_SEQUENCE = (10071, 10164)


class StaleWriter(StoreError):
    """Another evaluator wrote a base since this one read or wrote its own: this one must stop."""


class SavedState(msgspec.Struct, frozen=True, kw_only=True):
    """The engine snapshot, the last stream sequence it includes per input stream, the time of
    its latest input, and the silences it was given.

    `journal` names the journal that may follow this base and `first_slot` its first entry after
    it; a state saved without a journal (as before journals existed) takes none: a base follows.
    """

    engine: bytes
    cursors: dict[str, int]
    input_time: float | None = None
    silences: list[Silence] = []
    journal: str = ""
    first_slot: int = 0


class JournalEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One commit after the base: the engine's delta and the cursors and input time it includes.

    `slot` counts from the journal's start (the KV key is that modulo JOURNAL_SLOTS). A delta too
    large for one KV value is in chunks `journal.<key slot>.<i>` (written first); then `delta` is
    empty and `size` and `sha256` check the chunks.
    """

    journal: str
    slot: int
    delta: bytes = b""
    chunks: int = 0
    size: int = 0
    sha256: str = ""
    cursors: dict[str, int]
    input_time: float | None = None
    silences: list[Silence] | None = None  # None: those of the entry (or base) before
    # the chunks hold a _Chunked (delta and silences), not the delta alone: the silences did not
    # fit in one KV value beside the rest
    silences_chunked: bool = False


class _Chunked(msgspec.Struct, frozen=True, kw_only=True):
    delta: bytes
    silences: list[Silence]


class Journaled(msgspec.Struct, frozen=True, kw_only=True):
    """A saved state as a restore reads it: the base, the deltas after it in order, and the
    cursors, input time and silences of the latest commit."""

    base: bytes
    deltas: list[bytes]
    cursors: dict[str, int]
    input_time: float | None
    silences: list[Silence]
    next_slot: int = 0  # the slot after the last entry read


_state = msgspec.msgpack.Encoder()
Stored = TypeVar("Stored", SavedState, JournalEntry, _Chunked)
_decoders: dict[type, msgspec.msgpack.Decoder[Any]] = {
    kind: msgspec.msgpack.Decoder(kind) for kind in (SavedState, JournalEntry, _Chunked)
}


def _decode(kind: type[Stored], data: bytes, key: str) -> Stored:
    """A stored record; a silence in it that no longer validates (a regex RE2 refuses, kept from
    before) is dropped with a warning: the state around it is not thrown away for it."""
    try:
        decoded: Stored = _decoders[kind].decode(data)
        return decoded
    except msgspec.ValidationError as exc:
        refused = exc
    raw = msgspec.msgpack.decode(data)
    silences = raw.get("silences") if isinstance(raw, dict) else None
    if not isinstance(silences, list):
        raise refused
    kept = []
    for silence in silences:
        try:
            msgspec.convert(silence, Silence)
        except msgspec.ValidationError as why:
            log.warning(
                "evaluator: a silence kept in KV key %s cannot be read and mutes nothing: %s", key, why
            )
        else:
            kept.append(silence)
    if len(kept) == len(silences):
        raise refused
    return msgspec.convert({**raw, "silences": kept}, kind)


def new_journal_id() -> str:
    return uuid.uuid4().hex


def partition_namespace(partition: int | None, partitions: int) -> str:
    """The prefix of one partition's keys in the state bucket (none when unpartitioned). It names
    the number of partitions too: after a change, the states of the old layout stay as they were
    for the new partitions to take their hosts from."""
    return "" if partition is None else f"p{partition}of{partitions}."


async def compress_parts(parts: Iterator[bytes]) -> bytes:
    """zlib (level 1, as Engine.snapshot) of the parts joined: each part is made on the event loop
    (Engine.snapshot_parts encodes it then) and compressed in a thread, the loop free meanwhile."""
    compressor = zlib.compressobj(1)
    out = [await asyncio.to_thread(compressor.compress, part) for part in parts]
    out.append(compressor.flush())
    return b"".join(out)


class StateStore:
    """The evaluator's bucket: its saved state and the list of active alerts."""

    def __init__(
        self, kv: KeyValue, *, chunk_size: int = CHUNK_SIZE, partition: int | None = None, partitions: int = 1
    ) -> None:
        self.blobs = BlobStore(kv, chunk_size=chunk_size)
        self.chunk_size = chunk_size
        self.partition = partition
        namespace = partition_namespace(partition, partitions)
        self.snapshot_key = namespace + SNAPSHOT_KEY
        self._journal_prefix = namespace + JOURNAL_PREFIX
        # where the next journal entry goes: None until a base with a journal id is known
        self._journal: str | None = None
        self._slot = 0
        self._needed_from = 0  # the first entry the newest complete base needs
        self._base_bytes = 0
        self._journal_bytes = 0  # of the entries from _needed_from
        self._pending_from: int | None = None  # the first slot of the base being written
        self._pending_bytes = 0  # of the entries from _pending_from
        self._silences: list[Silence] | None = None  # the latest silences written
        # the base's manifest and its revision as this store last read or wrote them
        self._manifest: Manifest | None = None
        self._revision = 0
        self._claim: Claim | None = None  # this writer's number, claimed at its first base
        self._writing: Manifest | None = None  # the manifest last sent (its reply may be lost)
        self._purges_left = PURGE_TRIES  # to purge the chunks of the writers before this one
        self.broken: str | None = None  # why the journal last loaded ended early, if it did

    # --- bases --------------------------------------------------------------------------------

    async def save(self, state: SavedState) -> None:
        """Write a new base at once; the journal of the previous one is void from then on
        (unless `state` continues it). StaleWriter if another evaluator wrote one meanwhile."""
        assert self._pending_from is None, "a base being written is abandoned first"
        await self._put_base(state)
        self._journal = state.journal or None
        self._slot = self._needed_from = state.first_slot
        self._journal_bytes, self._base_bytes = 0, len(state.engine)
        self._silences = state.silences

    def needs_base(self) -> bool:
        """Must this commit write a whole base (none with a journal yet, or the ring is full)?"""
        return self._journal is None or self._slot >= self._needed_from + JOURNAL_SLOTS

    def base_due(self) -> bool:
        """Should a base be begun in the background now (see begin_base)?"""
        if self._journal is None or self._pending_from is not None:
            return False
        if self._slot - self._needed_from >= BASE_EVERY_SLOTS:
            return True
        return self._journal_bytes > max(self._base_bytes, JOURNAL_MIN_BYTES)

    def begin_base(
        self, cursors: dict[str, int], input_time: float | None, silences: list[Silence]
    ) -> SavedState:
        """The base of the latest commit, engine still to fill in, continuing the journal at the
        next slot; finish_base writes it (abandon_base if it never will)."""
        assert self._journal is not None
        assert self._pending_from is None
        self._pending_from, self._pending_bytes = self._slot, 0
        return SavedState(
            engine=b"",
            cursors=dict(cursors),
            input_time=input_time,
            silences=list(silences),
            journal=self._journal,
            first_slot=self._slot,
        )

    async def finish_base(self, state: SavedState) -> None:
        """Write the base begun by begin_base (again if a write failed). Call it only once every
        change encoded into `state.engine` is in an entry already written."""
        assert self._pending_from == state.first_slot
        assert state.journal == self._journal
        await self._put_base(state)
        self._needed_from, self._pending_from = state.first_slot, None
        self._journal_bytes, self._base_bytes = self._pending_bytes, len(state.engine)

    def abandon_base(self) -> None:
        self._pending_from = None

    async def _put_base(self, state: SavedState) -> None:
        """Chunks in the slot the manifest does not name, then the manifest over its revision."""
        data = _state.encode(state)
        # the engine is compressed already: the layout's zlib only frames it (level 0)
        packed = await asyncio.to_thread(zlib.compress, data, 0)
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        value, revision = await self._stored_manifest()
        if self._manifest is None and not self._revision:  # never loaded: go over what is there
            self._revision = revision
            with contextlib.suppress(StoreError):
                self._manifest = decode_manifest(self.snapshot_key, value)
        elif revision != self._revision:
            # checked before the chunks too: they would go over those of the other's base
            try:
                stored = decode_manifest(self.snapshot_key, value)
            except StoreError:
                stored = None
            if stored is not None and stored == self._writing:  # the last write landed, its reply lost
                self._manifest = stored
            if stored is None or stored != self._manifest:
                raise StaleWriter("another evaluator wrote the saved state meanwhile")
            self._revision = revision  # a write of ours whose reply was lost
        if self._claim is None:
            self._claim = await claim_writer(self.blobs.kv, self.snapshot_key)
        slot = next_slot(self._claim.writer, self._manifest)
        size = self.chunk_size
        chunks = range(0, len(packed), size)
        for index, at in enumerate(chunks):
            await self.blobs.kv.put(f"{self.snapshot_key}.{slot}.{index}", packed[at : at + size])
        manifest = Manifest(
            slot=slot, chunks=len(chunks), size=len(data), sha256=digest, written_at=time.time()
        )
        encoded = msgspec.json.encode(manifest)
        self._writing = manifest
        try:
            self._revision = await self.blobs.kv.update(self.snapshot_key, encoded, last=self._revision)
        except KeyWrongLastSequenceError:
            value, revision = await self._stored_manifest()
            if value != encoded:  # not a write of ours whose reply was lost
                raise StaleWriter("another evaluator wrote the saved state meanwhile") from None
            self._revision = revision
        self._manifest = manifest
        if self._purges_left:  # the bases of the writers before are no one's now
            done = await purge_others(self.blobs.kv, self.snapshot_key, self._claim)
            self._purges_left = 0 if done else self._purges_left - 1

    async def _stored_manifest(self) -> tuple[bytes | None, int]:
        """The base's manifest as stored (None: there is none) and its revision."""
        return await stored_value(self.blobs.kv, self.snapshot_key)

    async def load(self) -> SavedState | None:
        """The base alone (without the journal after it)."""
        value, self._revision = await self._stored_manifest()
        self._manifest = manifest = decode_manifest(self.snapshot_key, value)
        self._claim, self._purges_left = None, PURGE_TRIES  # whoever loads writes next, a number of its own
        if manifest is None:
            return None
        data = await read_chunks(self.blobs.kv, self.snapshot_key, manifest)
        try:
            return _decode(SavedState, data, self.snapshot_key)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StoreError(f"KV key {self.snapshot_key}: {exc}") from None

    def _journal_key(self, slot: int) -> str:
        return f"{self._journal_prefix}.{slot % JOURNAL_SLOTS}"

    def journal_slot(self) -> int:
        """The first slot of a new journal: half a ring on from where this one stands, so that the
        late entries of an evaluator still writing the old one land where the new one comes last."""
        return self._slot + JOURNAL_SLOTS // 2

    # --- the journal --------------------------------------------------------------------------

    def entry(
        self, delta: bytes, cursors: dict[str, int], input_time: float | None, silences: list[Silence]
    ) -> JournalEntry:
        """The next journal entry (to pass to append, again if a write failed)."""
        assert not self.needs_base(), "a journal entry follows a base, in a ring with room"
        return JournalEntry(
            journal=self._journal or "",
            slot=self._slot,
            delta=delta,
            cursors=dict(cursors),
            input_time=input_time,
            silences=None if silences == self._silences else list(silences),
        )

    async def append(self, entry: JournalEntry) -> None:
        """Write a journal entry made by entry(); its chunks, if any, before the entry itself."""
        key = self._journal_key(entry.slot)
        record = entry
        # many silences, or long comments, would make the entry too big for the server: never
        # written, every commit after it retried forever and the evaluator stuck
        silences = len(_state.encode(entry.silences)) if entry.silences is not None else 0
        silences_chunked = silences > 0 and len(entry.delta) + silences > self.chunk_size
        if len(entry.delta) > self.chunk_size or silences_chunked:
            data = entry.delta
            if silences_chunked:
                assert entry.silences is not None
                data = _state.encode(_Chunked(delta=entry.delta, silences=entry.silences))
            chunks = [data[i : i + self.chunk_size] for i in range(0, len(data), self.chunk_size)]
            for index, chunk in enumerate(chunks):
                await self.blobs.kv.put(f"{key}.{index}", chunk)
            record = msgspec.structs.replace(
                entry,
                delta=b"",
                chunks=len(chunks),
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                silences=None if silences_chunked else entry.silences,
                silences_chunked=silences_chunked,
            )
        await self.blobs.kv.put(key, _state.encode(record))
        if entry.slot == self._slot and entry.journal == self._journal:
            self._slot += 1
            self._journal_bytes += len(entry.delta)
            self._pending_bytes += len(entry.delta)
            if entry.silences is not None:
                self._silences = entry.silences

    async def load_journaled(self) -> Journaled | None:
        """The base and the journal after it, up to its first entry missing or of another base.

        StoreError if the base is unreadable; an unreadable entry ends the journal there (`broken`
        says why). The first commit after a load writes a new base: a journal is only ever continued
        by the process that began it, so no entry written after the ones read here (an evaluator
        that lost its lease, a journal cut short) can ever follow them.
        """
        self.broken = None
        self._pending_from = None
        base = await self.load()
        self._journal = (base.journal or None) if base is not None else None
        if base is None:
            return None
        self._slot = self._needed_from = base.first_slot
        self._journal_bytes, self._base_bytes = 0, len(base.engine)
        cursors, input_time, silences = base.cursors, base.input_time, base.silences
        deltas: list[bytes] = []
        end = base.first_slot + JOURNAL_SLOTS
        while self._journal is not None and self._slot < end:
            first = self._slot
            slots = range(first, min(first + READ_AHEAD, end))
            entries = await asyncio.gather(*(self._read_entry(slot) for slot in slots))
            for entry in entries:
                if isinstance(entry, str):
                    self.broken = entry
                if not isinstance(entry, JournalEntry):
                    break
                try:
                    delta, given = await self._delta_of(entry)
                except StoreError as exc:
                    self.broken = str(exc)
                    break
                deltas.append(delta)
                cursors, input_time = entry.cursors, entry.input_time
                silences = given if given is not None else silences
                self._slot += 1
                self._journal_bytes += len(delta)
            if self._slot < first + len(slots) or self.broken:
                break
        self._journal = None  # the next commit writes a base
        return Journaled(
            base=base.engine,
            deltas=deltas,
            cursors=cursors,
            input_time=input_time,
            silences=silences,
            next_slot=self._slot,
        )

    async def _read_entry(self, slot: int) -> JournalEntry | str | None:
        """The entry in `slot` if it belongs to the current base's journal, None if it does not,
        why not if it cannot be read."""
        key = self._journal_key(slot)
        try:
            value = (await self.blobs.kv.get(key)).value
        except KeyNotFoundError:
            return None
        try:
            entry = _decode(JournalEntry, value or b"", key)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return f"KV key {key}: {exc}"
        return entry if entry.journal == self._journal and entry.slot == slot else None

    async def _delta_of(self, entry: JournalEntry) -> tuple[bytes, list[Silence] | None]:
        """The entry's delta and silences (None: those before), from its chunks if it has them."""
        if not entry.chunks:
            return entry.delta, entry.silences
        key = self._journal_key(entry.slot)
        parts = []
        for index in range(entry.chunks):
            try:
                parts.append((await self.blobs.kv.get(f"{key}.{index}")).value or b"")
            except KeyNotFoundError:
                raise StoreError(f"KV key {key}.{index} is missing") from None
        data = b"".join(parts)
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise StoreError(f"KV key {key}: checksum mismatch")
        if not entry.silences_chunked:
            return data, entry.silences
        try:
            chunked = _decode(_Chunked, data, key)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StoreError(f"KV key {key}: {exc}") from None
        return chunked.delta, chunked.silences

    async def save_active(self, active: ActiveAlerts) -> None:
        await save_active(self.blobs, active, self.partition)

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


def still_running(pid: int, started: float) -> bool:
    """Is the process that held a lease still running (and not a later one with its pid)?"""
    try:
        return psutil.Process(pid).create_time() == started
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.Error:  # alive, but not ours to inspect: assume it is the holder
        return True


def this_process() -> LeaseRecord:
    """A record naming this process (with a token of its own), expired until renewed."""
    pid = os.getpid()
    return LeaseRecord(
        host=socket.gethostname(),
        pid=pid,
        started=_process_started(pid),
        token=uuid.uuid4().hex,
        expires_at=0.0,
    )


def lease_free(holder: LeaseRecord, mine: LeaseRecord, now: float) -> bool:
    """Is `holder`'s claim void for `mine`: its own, expired, or of a process of this machine that
    is gone (a restart after SIGKILL goes on at once instead of waiting out the TTL)?"""
    if holder.token == mine.token or holder.expires_at < now:
        return True
    return holder.host == mine.host and not still_running(holder.pid, holder.started)


class Lease:
    """One evaluator per prefix: a KV record the holder renews; the others stand by.

    A lease is free when it expired, or when its holder was a process of this machine that is
    gone (a restart after SIGKILL takes over at once instead of waiting out the TTL).
    """

    def __init__(
        self,
        kv: KeyValue,
        *,
        clock: Callable[[], float] = time.time,
        ttl: float = LEASE_TTL,
        partition: int | None = None,
        partitions: int = 1,
    ) -> None:
        self.kv = kv
        self.key = partition_namespace(partition, partitions) + LEASE_KEY
        self.clock = clock
        self.ttl = ttl
        self.mine = this_process()
        self._revision = 0
        # who took the lease from this one (None: nobody, or a record that names no one)
        self.taken_by: LeaseRecord | None = None

    def _free(self, holder: LeaseRecord) -> bool:
        return lease_free(holder, self.mine, self.clock())

    def _record(self) -> bytes:
        record = msgspec.structs.replace(self.mine, expires_at=self.clock() + self.ttl)
        return msgspec.json.encode(record)

    async def _stored(self) -> tuple[int, LeaseRecord | None] | None:
        """The lease's revision and record as stored now; None if it is deleted or was never made."""
        try:
            entry = await self.kv.get(self.key)
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

    async def held_by(self) -> LeaseRecord | None:
        """Who holds the lease now; None when it could be taken (nobody, or its holder is gone)."""
        stored = await self._stored()
        holder = stored[1] if stored is not None else None
        return None if holder is None or self._free(holder) else holder

    async def acquire(self) -> LeaseRecord | None:
        """Take the lease if it is free; else return who holds it."""
        stored = await self._stored()
        holder = stored[1] if stored is not None else None
        if holder is not None and not self._free(holder):
            return holder
        try:
            if stored is None:
                self._revision = await self.kv.create(self.key, self._record())
            else:
                self._revision = await self.kv.update(self.key, self._record(), last=stored[0])
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
                self._revision = await self.kv.update(self.key, self._record(), last=self._revision)
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
                await self.kv.delete(self.key, last=self._revision)
            except APIError as exc:
                if exc.err_code not in _WRONG_LAST_SEQUENCE:
                    raise
                # a renewal whose reply was lost moved the revision on
                revision = await self._own_revision()
                if revision is not None:
                    await self.kv.delete(self.key, last=revision)


async def open_buckets(
    js: JetStreamContext, prefix: str, partition: int | None = None, partitions: int = 1
) -> tuple[StateStore, SilenceStore]:
    """The two buckets, created when the evaluator has never run against this server; the state
    store keeps one partition's keys when `partition` is given."""
    stores = []
    for bucket in ("state", "silences"):
        name = bucket_name(prefix, bucket)
        await ensure_bucket(js, name, KV_BUCKETS[bucket])
        stores.append(await js.key_value(name))
    return StateStore(stores[0], partition=partition, partitions=partitions), SilenceStore(stores[1])
