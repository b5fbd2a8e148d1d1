"""Values of any size in a JetStream KV bucket: compressed, chunked, replaced atomically."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import zlib
from typing import Annotated, NamedTuple

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

# Below the server's default 1 MB max payload, with room for the headers.
CHUNK_SIZE = 512 * 1024
# Each writer of a value writes its chunks only in two slots of its own, `<n>a` and `<n>b`, n a
# number it claims from a counter beside the value (`<name>.writer`): the late chunks of a writer
# that lost its lease (paused, cut off) land where the next WRITERS - 1 writers never write, not
# over its successor's value. Once its first manifest is stored, a writer purges the chunks of the
# others (the bucket keeps a few revisions of each key: ten writers' slots would keep ten bases).
WRITERS = 10
_SLOT = re.compile(r"[0-9]*[ab]")
PURGE_TIMEOUT = 10.0
# A purge is tried after this many writes at most (a server whose permissions predate it refuses
# it each time: space, not safety, is what is lost).
PURGE_TRIES = 3


class StoreError(RuntimeError):
    """A stored value that cannot be read back (torn write, corrupt data)."""


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """Where a chunked value lives: its slot (chunks `<name>.<slot>.<i>`), chunk count, size and
    checksum."""

    slot: Annotated[str, msgspec.Meta(pattern="^[0-9]*[ab]$")]
    chunks: int
    size: int
    sha256: str
    written_at: float


class Claim(NamedTuple):
    """A writer's number, and the revision of the bucket at which it claimed it."""

    writer: int
    revision: int


async def claim_writer(kv: KeyValue, name: str) -> Claim:
    """A writer number for the value `name`, the next of its counter: no other writer, a stale one
    among them, holds it until WRITERS later claims."""
    key = f"{name}.writer"
    while True:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:  # never claimed (or deleted by hand)
            try:
                return Claim(0, await kv.create(key, b"0"))
            except KeyWrongLastSequenceError:  # another writer claimed it first
                continue
        text = (entry.value or b"").decode(errors="replace")
        number = (int(text) + 1) % WRITERS if text.isascii() and text.isdigit() else 0
        try:
            return Claim(number, await kv.update(key, str(number).encode(), last=entry.revision))
        except KeyWrongLastSequenceError:
            continue


async def purge_others(kv: KeyValue, name: str, claim: Claim) -> bool:
    """Purge the chunks of `name` outside the claiming writer's slots that were written before its
    claim: every writer after it claims later and writes later, so nothing it wrote is touched,
    whatever a lagging replica answers (a stale writer's purge leaves its successor's chunks).
    True once done; best effort, what is left is only space."""
    mine = {f"{claim.writer}a", f"{claim.writer}b"}
    # nats-py has no purge up to a revision on its KeyValue: its stream and subject prefix are
    # private, but JetStream's purge request with a filter and a sequence is the exact tool
    js: JetStreamContext = kv._js
    stream: str = kv._stream
    prefix: str = kv._pre
    listed: list[tuple[str, int]] = []
    try:
        async with asyncio.timeout(PURGE_TIMEOUT):
            watcher = await kv.watch(f"{name}.*.*", ignore_deletes=True, meta_only=True)
            try:
                async for entry in watcher:
                    if entry is None:  # the values stored when the watch began: all of them seen
                        break
                    slot, _, index = entry.key[len(name) + 1 :].partition(".")
                    revision = entry.revision or 0
                    if (
                        slot not in mine
                        and _SLOT.fullmatch(slot)
                        and index.isdigit()
                        and revision < claim.revision
                    ):
                        listed.append((entry.key, revision))
            finally:
                await watcher.stop()  # type: ignore[no-untyped-call]
            # and while it is still the latest writer, its value the one stored: a stale one
            # purges nothing (its successor purges for it)
            claimed = await kv.get(f"{name}.writer")
            stored = decode_manifest(name, (await kv.get(name)).value)
            if claimed.revision != claim.revision or stored is None or stored.slot not in mine:
                return False
            for key, revision in listed:
                await js.purge_stream(stream, subject=prefix + key, seq=revision + 1)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError, StoreError):
        return False
    return True


async def stored_value(kv: KeyValue, key: str) -> tuple[bytes | None, int]:
    """The value stored under `key` (None: none) and the revision a write must go over (that of
    a delete marker too; 0: never written)."""
    try:
        entry = await kv.get(key)
    except KeyDeletedError as exc:  # the next write goes over the delete marker
        return None, (exc.entry.revision if exc.entry is not None else 0) or 0
    except KeyNotFoundError:
        return None, 0
    return entry.value or None, entry.revision or 0


def next_slot(writer: int, manifest: Manifest | None) -> str:
    """The slot of `writer`'s that `manifest` (the value stored now) does not name."""
    first = f"{writer}a"
    return f"{writer}b" if manifest is not None and manifest.slot == first else first


def decode_manifest(name: str, value: bytes | None) -> Manifest | None:
    """The manifest stored under `name` (None for no value); StoreError if it is unreadable."""
    if not value:
        return None
    try:
        return msgspec.json.decode(value, type=Manifest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StoreError(f"KV key {name}: unreadable manifest: {exc}") from None


async def read_chunks(kv: KeyValue, name: str, manifest: Manifest) -> bytes:
    """The value `manifest` describes under `name`, whole and checked; StoreError if it is damaged."""
    parts = []
    for index in range(manifest.chunks):
        key = f"{name}.{manifest.slot}.{index}"
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            raise StoreError(f"KV key {key} is missing") from None
        parts.append(entry.value or b"")
    try:
        data = zlib.decompress(b"".join(parts))
    except zlib.error as exc:
        raise StoreError(f"KV key {name}: corrupt data: {exc}") from None
    if len(data) != manifest.size or hashlib.sha256(data).hexdigest() != manifest.sha256:
        raise StoreError(f"KV key {name}: checksum mismatch")
    return data


class BlobStore:
    """Values of any size in a KV bucket: compressed, split into chunks, published atomically.

    Chunks go to a slot of this writer's that the manifest does not point at (see WRITERS); the
    manifest is written last, so a crash at any moment leaves the previous value whole.
    """

    def __init__(self, kv: KeyValue, *, chunk_size: int = CHUNK_SIZE) -> None:
        self.kv = kv
        self.chunk_size = chunk_size
        self._manifests: dict[str, Manifest] = {}
        # what this writer stored of each value: its manifest and revision (None: read it again)
        self._written: dict[str, tuple[Manifest | None, int]] = {}
        self._claims: dict[str, Claim] = {}  # this writer's number, per value
        self._purges_left: dict[str, int] = {}  # tries left to purge the other writers' chunks

    async def _manifest(self, name: str) -> Manifest | None:
        return (await self._stored(name))[0]

    async def _stored(self, name: str) -> tuple[Manifest | None, int]:
        """The manifest stored under `name` and its revision (0: never written)."""
        value, revision = await stored_value(self.kv, name)
        return decode_manifest(name, value), revision

    async def put(self, name: str, data: bytes) -> None:
        """Store `data` under `name`, replacing the previous value only once all of it is written;
        a nats error if another writer stored it meanwhile (the next put goes over that)."""
        previous, revision = self._written.get(name) or await self._stored(name)
        claim = self._claims.get(name)
        if claim is None:
            claim = self._claims[name] = await claim_writer(self.kv, name)
        slot = next_slot(claim.writer, previous)
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
        encoded = msgspec.json.encode(manifest)
        try:  # over the revision it knows: a stale writer's late manifest cannot land
            if revision:
                revision = await self.kv.update(name, encoded, last=revision)
            else:
                revision = await self.kv.create(name, encoded)
        except BaseException:  # it may have landed, or another's did: the next put reads it
            self._written.pop(name, None)
            raise
        self._written[name] = (manifest, revision)
        self._manifests[name] = manifest
        left = self._purges_left.get(name, PURGE_TRIES)
        if left:
            self._purges_left[name] = 0 if await purge_others(self.kv, name, claim) else left - 1

    async def get(self, name: str) -> bytes | None:
        """The value stored under `name`, None if there is none; StoreError if it is damaged."""
        manifest = await self._manifest(name)
        if manifest is None:
            return None
        data = await read_chunks(self.kv, name, manifest)
        self._manifests[name] = manifest
        return data
