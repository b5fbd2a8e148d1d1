"""The evaluator's state in KV as a base and a journal: restored whole after a crash at any write."""

from __future__ import annotations

import msgspec
import pytest

from bus.config import BusConfig
from bus.connection import Bus
from bus.jetstream import provision
from bus.units import Duration
from evaluator.config import Rule
from evaluator.engine import Engine
from evaluator.silences import Silence, parse_matcher
from evaluator.store import (
    JOURNAL_SLOTS,
    SNAPSHOT_KEY,
    SavedState,
    StateStore,
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


def _base(engine: bytes, seq: int, silences: list[Silence] | None = None) -> SavedState:
    return SavedState(
        engine=engine,
        cursors={"metrics": seq},
        input_time=float(seq),
        silences=silences or [],
        journal=new_journal_id(),
    )


async def test_a_base_and_its_journal_restore_the_latest_commit(bus: Bus) -> None:
    """Deltas in order, the cursors and input time of the last, silences carried from the last
    entry that changed them; the first commit after a load is a new base."""
    store = await _store(bus)
    assert store.wants_base(10)  # nothing saved yet
    await store.save(_base(b"base", 1))
    assert not store.wants_base(10)
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
    assert reader.wants_base(1)


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
    assert store.wants_base(1)


async def test_a_full_journal_or_one_outgrowing_its_base_asks_for_a_new_base(bus: Bus) -> None:
    store = await _store(bus)
    await store.save(_base(bytes(1_000_000), 1))
    assert not store.wants_base(900_000)
    assert store.wants_base(1_000_001)
    await store.append(store.entry(bytes(600_000), {"metrics": 2}, 2.0, []))
    assert store.wants_base(500_000)  # 1.1 MB of journal after a 1 MB base
    await store.save(_base(b"tiny", 3))
    for seq in range(JOURNAL_SLOTS):
        assert not store.wants_base(1)
        await store.append(store.entry(b"d", {"metrics": seq}, float(seq), []))
    assert store.wants_base(1)
