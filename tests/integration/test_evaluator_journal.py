"""The evaluator's state in KV as a base and a journal: restored whole after a crash at any write,
a base written beside the journal included."""

from __future__ import annotations

import asyncio
import os
import zlib
from typing import Any, cast

import msgspec
import pytest
from nats.js.kv import KeyValue

from bus.config import BusConfig
from bus.connection import Bus
from bus.jetstream import ensure_bucket, provision
from bus.kvblob import WRITERS, decode_manifest
from bus.units import Duration
from evaluator.config import Rule
from evaluator.engine import Engine, _Snapshot
from evaluator.silences import Silence, parse_matcher
from evaluator.store import (
    BASE_EVERY_SLOTS,
    JOURNAL_SLOTS,
    SNAPSHOT_KEY,
    SavedState,
    StaleWriter,
    StateStore,
    compress_parts,
    new_journal_id,
    open_buckets,
)
from evaluator.testing import metrics, only_rules

pytestmark = pytest.mark.integration

SILENCE = Silence(
    id="s1", matchers=[parse_matcher("host=web02")], starts_at=0, ends_at=900, author="ops", comment="deploy"
)


async def _store(bus: Bus, chunk_size: int = 64 * 1024) -> StateStore:
    await provision(bus.nc.jetstream(), bus.subjects, BusConfig().streams)
    state, _ = await open_buckets(bus.nc.jetstream(), bus.subjects.prefix)
    return StateStore(state.blobs.kv, chunk_size=chunk_size)


def _base(engine: bytes, seq: int, silences: list[Silence] | None = None, first_slot: int = 0) -> SavedState:
    return SavedState(
        engine=engine,
        cursors={"metrics": seq},
        input_time=float(seq),
        silences=silences or [],
        journal=new_journal_id(),
        first_slot=first_slot,
    )


async def test_a_base_and_its_journal_restore_the_latest_commit(bus: Bus) -> None:
    """Deltas in order, the cursors and input time of the last, silences carried from the last
    entry that changed them; the first commit after a load is a new base."""
    store = await _store(bus)
    assert store.needs_base()  # nothing saved yet
    await store.save(_base(b"base", 1))
    assert not store.needs_base()
    await store.append(store.entry(b"d1", {"metrics": 2}, 2.0, [SILENCE]))
    entry = store.entry(b"d2", {"metrics": 3}, 3.0, [SILENCE])
    assert entry.silences is None  # unchanged: not written again
    await store.append(entry)
    loaded = await StateStore(store.blobs.kv).load_journaled()
    assert loaded is not None
    assert (loaded.base, loaded.deltas) == (b"base", [b"d1", b"d2"])
    assert (loaded.cursors, loaded.input_time, loaded.silences) == ({"metrics": 3}, 3.0, [SILENCE])
    reader = StateStore(store.blobs.kv)
    await reader.load_journaled()
    assert reader.needs_base()


async def test_silences_too_many_for_one_kv_value_go_in_chunks_and_restore(bus: Bus) -> None:
    """A deploy bot's thousands of silences (expired ones are kept for days) made an entry the server
    refused: never written, every commit after it retried forever, and no alert went out."""
    store = await _store(bus)
    await store.save(_base(b"base", 1))
    many = [
        Silence(
            id=f"s{n}",
            matchers=[parse_matcher(f"host=web{n}")],
            starts_at=0,
            ends_at=900,
            author="bot",
            comment="deploy " * 40,
        )
        for n in range(4000)
    ]
    assert len(msgspec.msgpack.encode(many)) > (bus.nc.max_payload or 1 << 20), "over the server's limit"
    await store.append(store.entry(b"d1", {"metrics": 2}, 2.0, many))
    await store.append(store.entry(b"d2", {"metrics": 3}, 3.0, many))  # unchanged: not written again
    await store.append(store.entry(b"d3", {"metrics": 4}, 4.0, [SILENCE]))
    loaded = await StateStore(store.blobs.kv).load_journaled()
    assert loaded is not None
    assert loaded.deltas == [b"d1", b"d2", b"d3"]
    assert loaded.silences == [SILENCE]
    await store.save(_base(b"base2", 5))
    await store.append(store.entry(b"e1", {"metrics": 6}, 6.0, many))
    loaded = await StateStore(store.blobs.kv).load_journaled()
    assert loaded is not None
    assert (loaded.deltas, loaded.silences) == ([b"e1"], many)


async def test_a_new_base_voids_the_old_journal_without_deleting_it(bus: Bus) -> None:
    store = await _store(bus)
    await store.save(_base(b"first", 1))
    for seq in (2, 3, 4):
        await store.append(store.entry(f"d{seq}".encode(), {"metrics": seq}, float(seq), []))
    await store.save(_base(b"second", 5))  # journal.0..2 of the first base are still in the bucket
    loaded = await StateStore(store.blobs.kv).load_journaled()
    assert loaded is not None
    assert (loaded.base, loaded.deltas, loaded.cursors) == (b"second", [], {"metrics": 5})
    await store.append(store.entry(b"d6", {"metrics": 6}, 6.0, []))
    loaded = await StateStore(store.blobs.kv).load_journaled()
    assert loaded is not None
    assert (loaded.base, loaded.deltas, loaded.cursors) == (b"second", [b"d6"], {"metrics": 6})


async def test_a_crash_between_any_two_writes_restores_a_consistent_commit(bus: Bus) -> None:
    """A large delta's chunks written but not its entry; a new base's chunks but not its manifest:
    each time the previous commit restores, whole."""
    store = await _store(bus, chunk_size=1024)
    await store.save(_base(b"base", 1))
    await store.append(store.entry(b"small", {"metrics": 2}, 2.0, []))
    big = bytes(range(256)) * 20  # 5 chunks
    torn = store.entry(big, {"metrics": 3}, 3.0, [])
    for index in range(3):  # the crash: some chunks, and no entry
        await store.blobs.kv.put(f"journal.{torn.slot}.{index}", big[index * 1024 : (index + 1) * 1024])
    loaded = await StateStore(store.blobs.kv).load_journaled()
    assert loaded is not None
    assert (loaded.deltas, loaded.cursors) == ([b"small"], {"metrics": 2})
    await store.append(torn)  # the retry after the restart writes it whole
    loaded = await StateStore(store.blobs.kv).load_journaled()
    assert loaded is not None
    assert (loaded.deltas, loaded.cursors) == ([b"small", big], {"metrics": 3})
    # a new base half written (its chunks land in the other slot, its manifest not yet)
    for index in range(3):
        await store.blobs.kv.put(f"{SNAPSHOT_KEY}.b.{index}", b"torn")
    loaded = await StateStore(store.blobs.kv).load_journaled()
    assert loaded is not None
    assert (loaded.base, loaded.deltas, loaded.cursors) == (b"base", [b"small", big], {"metrics": 3})


async def test_a_damaged_entry_ends_the_journal_with_the_reason(bus: Bus) -> None:
    store = await _store(bus, chunk_size=1024)
    await store.save(_base(b"base", 1))
    await store.append(store.entry(b"d2", {"metrics": 2}, 2.0, []))
    await store.append(store.entry(bytes(3000), {"metrics": 3}, 3.0, []))
    await store.append(store.entry(b"d4", {"metrics": 4}, 4.0, []))
    await store.blobs.kv.put("journal.1.1", b"corrupted")
    reader = StateStore(store.blobs.kv)
    loaded = await reader.load_journaled()
    assert loaded is not None
    assert (loaded.deltas, loaded.cursors) == ([b"d2"], {"metrics": 2})
    assert reader.broken == "KV key journal.1: checksum mismatch"
    await store.blobs.kv.put("journal.0", b"\xc1 not msgpack")
    reader = StateStore(store.blobs.kv)
    loaded = await reader.load_journaled()
    assert loaded is not None
    assert (loaded.deltas, loaded.cursors) == ([], {"metrics": 1})
    assert reader.broken is not None
    assert reader.broken.startswith("KV key journal.0:")


async def test_a_state_saved_before_journals_existed_restores_and_takes_no_journal(bus: Bus) -> None:
    """The upgrade path: a base without a journal id (the previous format) loads as it is, and the
    first commit writes a base with one."""

    class OldSavedState(msgspec.Struct, frozen=True, kw_only=True):
        engine: bytes
        cursors: dict[str, int]
        input_time: float | None = None
        silences: list[Silence] = []

    store = await _store(bus)
    engine = Engine(only_rules(Rule(name="cpu", metric="cpu.percent", threshold=90, for_=Duration(60))), 0)
    engine.observe(metrics("web01", {"cpu.percent": 95}), 0)
    old = OldSavedState(engine=engine.snapshot(), cursors={"metrics": 9}, input_time=5.0, silences=[SILENCE])
    await store.blobs.put(SNAPSHOT_KEY, msgspec.msgpack.encode(old))
    await store.blobs.kv.put("journal.0", b"")  # whatever a slot holds, a base without an id takes none
    loaded = await store.load_journaled()
    assert loaded is not None
    assert (loaded.deltas, loaded.cursors, loaded.input_time, loaded.silences) == (
        [],
        {"metrics": 9},
        5.0,
        [SILENCE],
    )
    restored = Engine.restore(engine.config, loaded.base, 5.0, loaded.deltas)
    assert [a.state for a in restored.active(5.0)] == ["pending"]
    assert store.needs_base()


async def test_a_journal_outgrowing_its_base_or_half_its_ring_asks_for_a_base_beside_it(bus: Bus) -> None:
    store = await _store(bus)
    await store.save(_base(bytes(1_000_000), 1))
    await store.append(store.entry(bytes(900_000), {"metrics": 2}, 2.0, []))
    assert not store.base_due()
    await store.append(store.entry(bytes(200_000), {"metrics": 3}, 3.0, []))
    assert store.base_due()  # 1.1 MB of journal after a 1 MB base
    await store.save(_base(b"tiny", 3))
    for seq in range(BASE_EVERY_SLOTS):
        assert not store.base_due()
        await store.append(store.entry(b"d", {"metrics": seq}, float(seq), []))
    assert store.base_due()
    store.begin_base({"metrics": 9}, 9.0, [])
    assert not store.base_due()  # one at a time


async def test_the_ring_never_overwrites_an_entry_the_newest_complete_base_needs(bus: Bus) -> None:
    """A base being written does not free the ring: the entries of the base before it are still
    needed, so a full ring asks for a base in the commit; once written, the ring comes round."""
    store = await _store(bus)
    await store.save(_base(b"first", 0))
    deltas = [f"d{slot}".encode() for slot in range(JOURNAL_SLOTS + BASE_EVERY_SLOTS)]
    for slot in range(BASE_EVERY_SLOTS):
        await store.append(store.entry(deltas[slot], {"metrics": slot}, float(slot), []))
    pending = store.begin_base({"metrics": BASE_EVERY_SLOTS - 1}, float(BASE_EVERY_SLOTS - 1), [])
    assert pending.first_slot == BASE_EVERY_SLOTS
    for slot in range(BASE_EVERY_SLOTS, JOURNAL_SLOTS):
        assert not store.needs_base()
        await store.append(store.entry(deltas[slot], {"metrics": slot}, float(slot), []))
    assert store.needs_base()  # the next entry would overwrite slot 0, which "first" needs
    loaded = await StateStore(store.blobs.kv).load_journaled()
    assert loaded is not None
    assert (loaded.base, loaded.deltas) == (b"first", deltas[:JOURNAL_SLOTS])
    await store.finish_base(msgspec.structs.replace(pending, engine=b"second"))
    for slot in range(JOURNAL_SLOTS, JOURNAL_SLOTS + BASE_EVERY_SLOTS):  # over slots 0..255
        assert not store.needs_base()
        await store.append(store.entry(deltas[slot], {"metrics": slot}, float(slot), []))
    assert store.needs_base()
    loaded = await StateStore(store.blobs.kv).load_journaled()
    assert loaded is not None
    assert (loaded.base, loaded.deltas) == (b"second", deltas[BASE_EVERY_SLOTS:])
    assert loaded.cursors == {"metrics": JOURNAL_SLOTS + BASE_EVERY_SLOTS - 1}


async def test_a_stale_evaluators_late_base_is_refused_and_its_late_entries_are_void(bus: Bus) -> None:
    """The evaluator that took over wrote a base over the one it read: the one it took over from
    can neither replace that base (at once or beside its loop) nor extend the new journal."""
    stale = await _store(bus)
    await stale.save(_base(b"old", 1))
    await stale.append(stale.entry(b"d2", {"metrics": 2}, 2.0, []))
    pending = stale.begin_base({"metrics": 2}, 2.0, [])
    successor = StateStore(stale.blobs.kv)
    await successor.load_journaled()
    await successor.save(_base(b"new", 2, first_slot=successor.journal_slot()))
    with pytest.raises(StaleWriter):
        await stale.finish_base(msgspec.structs.replace(pending, engine=b"late"))
    stale.abandon_base()
    with pytest.raises(StaleWriter):
        await stale.save(_base(b"late", 3))
    await stale.append(stale.entry(b"late", {"metrics": 3}, 3.0, []))
    await successor.append(successor.entry(b"d3", {"metrics": 3}, 3.0, []))
    loaded = await StateStore(stale.blobs.kv).load_journaled()
    assert loaded is not None
    assert (loaded.base, loaded.deltas, loaded.cursors) == (b"new", [b"d3"], {"metrics": 3})


class _Paused:
    """A KV bucket whose chunk writes wait until `resume` is set, as those of a process paused
    (or cut off from the server) after it checked the base's revision."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.resume = asyncio.Event()
        self.resume.set()
        self.waiting = asyncio.Event()

    async def put(self, key: str, value: bytes) -> int:
        if key.startswith(f"{SNAPSHOT_KEY}."):
            self.waiting.set()
            await self.resume.wait()
        return await self.kv.put(key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)


async def _chunk_slots(kv: KeyValue) -> set[str]:
    """The slots that hold chunks of the base now."""
    watcher = await kv.watch(f"{SNAPSHOT_KEY}.*.*", ignore_deletes=True, meta_only=True)
    slots = set()
    async for entry in watcher:
        if entry is None:
            break
        slot = entry.key.split(".")[1]
        if slot != "writer":
            slots.add(slot)
    await watcher.stop()  # type: ignore[no-untyped-call]
    return slots


@pytest.mark.parametrize("first_base", [False, True], ids=["after-a-base-of-its-own", "in-its-first-base"])
async def test_a_stale_evaluators_late_chunks_leave_the_base_that_replaced_its_own_whole(
    bus: Bus, first_base: bool
) -> None:
    """A stale evaluator checked the revision, then stalled before its chunks (in its first base
    after a load too, the restore's); the one that took over wrote its bases meanwhile. The stale
    one's chunks land late and its base is refused; the successor's base restores whole, and so
    do the bases of the writers after it, each purging the chunks of those before."""
    kv = (await _store(bus)).blobs.kv
    paused = _Paused(kv)
    stale = StateStore(cast("KeyValue", paused), chunk_size=1024)
    if first_base:
        await StateStore(kv, chunk_size=1024).save(_base(b"old", 1))
        await stale.load_journaled()
    else:
        await stale.save(_base(b"old", 1))
    paused.resume.clear()
    paused.waiting.clear()
    late = asyncio.create_task(stale.save(_base(os.urandom(8_000), 2)))  # 8 chunks
    await asyncio.wait_for(paused.waiting.wait(), 10)
    successor = StateStore(kv, chunk_size=1024)
    await successor.load_journaled()
    new = _base(os.urandom(8_000), 3, first_slot=successor.journal_slot())
    await successor.save(new)
    paused.resume.set()
    with pytest.raises(StaleWriter):
        await late
    loaded = await StateStore(kv).load()
    assert loaded == new
    for seq in range(4, 4 + WRITERS):  # each writer after it in turn: bases whole, over each other
        writer = StateStore(kv, chunk_size=1024)
        await writer.load_journaled()
        state = _base(os.urandom(3_000), seq)
        await writer.save(state)
        assert await StateStore(kv).load() == state
        # only the newest writer's chunks are kept: a base's worth, not one per writer
        manifest = decode_manifest(SNAPSHOT_KEY, (await kv.get(SNAPSHOT_KEY)).value)
        assert manifest is not None
        assert await _chunk_slots(kv) == {manifest.slot}


class _ReplyLost:
    """A bucket whose next manifest update is stored, but its reply never comes."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.lose = False

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        revision = await self.kv.update(key, value, last=last)
        if self.lose and key == SNAPSHOT_KEY:
            self.lose = False
            raise TimeoutError("the reply was lost")
        return revision

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)


async def test_a_base_whose_reply_was_lost_is_known_as_its_own_at_the_retry(bus: Bus) -> None:
    """Taken for another evaluator's, it stopped this one until its lease ran out."""
    kv = (await _store(bus)).blobs.kv
    lossy = _ReplyLost(kv)
    store = StateStore(cast("KeyValue", lossy), chunk_size=1024)
    await store.save(_base(b"first", 1))
    lossy.lose = True
    second = _base(b"second", 2)
    with pytest.raises(TimeoutError):
        await store.save(second)
    third = _base(b"third", 3)
    await store.save(third)  # no StaleWriter: the stored base is the one it sent
    assert await StateStore(kv).load() == third


# --- a crash at any write while a base is written beside the journal -------------------------------


class _Died(Exception):
    """The process died at this write: it never reaches the server."""


class _Mortal:
    """A KV bucket whose process dies at its `budget`-th write; reads pass through."""

    def __init__(self, kv: KeyValue, budget: int) -> None:
        self.kv = kv
        self.budget = budget
        self.writes = 0

    def _write(self) -> None:
        if self.writes == self.budget:
            raise _Died
        self.writes += 1

    async def put(self, key: str, value: bytes) -> int:
        self._write()
        return await self.kv.put(key, value)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        self._write()
        return await self.kv.update(key, value, last=last)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)


CPU = only_rules(Rule(name="cpu", metric="cpu.percent", threshold=90, for_=Duration(20)))


def _decoded(snapshot: bytes) -> _Snapshot:
    return msgspec.msgpack.decode(zlib.decompress(snapshot), type=_Snapshot)


class _Commits:
    """An engine committing to a store as the service does; `acked` is the state of each commit
    the store acknowledged, with its cursors."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.engine = Engine(CPU, 0)
        self.acked: list[tuple[bytes, dict[str, int]]] = []

    def change(self, t: int, hosts: int = 6) -> None:
        for host in range(hosts):  # a varying share breaching: series begin, fire, resolve
            value = 95.0 if (host + t) % 4 else 50.0
            self.engine.observe(metrics(f"web{host}", {"cpu.percent": value}), float(t))
        self.engine.tick(float(t))
        self.engine.drain()

    async def base(self, t: int) -> None:
        self.engine.delta()
        await self.store.save(
            SavedState(engine=self.engine.snapshot(), cursors={"metrics": t}, journal=new_journal_id())
        )
        self.acked.append((self.engine.snapshot(), {"metrics": t}))

    async def commit(self, t: int) -> None:
        entry = self.store.entry(self.engine.delta(), {"metrics": t}, float(t), [])
        await self.store.append(entry)
        self.acked.append((self.engine.snapshot(), {"metrics": t}))


async def _run_beside(commits: _Commits) -> None:
    """A base of commit 4 encoded a part at a time while commits 5..9 change the engine; commit 9
    follows its last part, then the base is written and commits go on."""
    await commits.base(0)
    for t in range(1, 5):
        commits.change(t)
        await commits.commit(t)
    pending = commits.store.begin_base({"metrics": 4}, 4.0, [])
    parts = commits.engine.snapshot_parts(1)  # a series a part
    pieces = []
    for t in range(5, 9):  # each part made after a change (of two hosts) and before its commit
        commits.change(t, hosts=2)
        pieces += [next(parts)]
        await commits.commit(t)
    commits.change(9)
    pieces += list(parts)  # hosts 3..5 as changed at 9 alone: the base waits for commit 9
    await commits.commit(9)
    engine = await compress_parts(iter(pieces))
    await commits.store.finish_base(msgspec.structs.replace(pending, engine=engine))
    for t in range(10, 13):
        commits.change(t)
        await commits.commit(t)


async def test_a_crash_at_any_write_while_a_base_is_written_beside_the_journal(bus: Bus) -> None:
    """Killed before each write in turn (a base's chunks, its manifest, every entry before, during
    and after it), a restart restores exactly the last acknowledged commit."""
    js = bus.nc.jetstream()
    budget = 0
    while True:
        name = f"{bus.subjects.prefix}_crash{budget}"
        await ensure_bucket(js, name, "crash test")
        kv = await js.key_value(name)
        mortal = _Mortal(kv, budget)
        commits = _Commits(StateStore(cast("KeyValue", mortal), chunk_size=256))
        try:
            await _run_beside(commits)
        except _Died:
            died = True
        else:
            died = False
        loaded = await StateStore(kv).load_journaled()
        if not commits.acked:
            assert loaded is None, f"killed at write {budget}"
        else:
            assert loaded is not None, f"killed at write {budget}"
            snapshot, cursors = commits.acked[-1]
            restored = Engine.restore(CPU, loaded.base, 12.0, loaded.deltas)
            assert _decoded(restored.snapshot()) == _decoded(snapshot), f"killed at write {budget}"
            assert loaded.cursors == cursors, f"killed at write {budget}"
        await js.delete_key_value(name)
        if not died:
            break
        budget += 1
    # the run wrote bases and deltas in several chunks each: the kills fell inside them
    assert budget > 40
