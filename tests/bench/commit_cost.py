"""Evaluator commit cost: `python -m tests.bench commit_cost` (or `python -m tests.bench.commit_cost`).

A fleet of hosts x 100 series (10 metrics x 10 mounts), a share of them breaching, evaluated as
the service does when busy: one cycle of every host every 10 s, split into 50 windows of 0.2 s,
each window followed by a commit to a real nats-server's KV. Per commit: bytes written and wall
time (encoding and the KV writes), for the full snapshot of every commit (the baseline, as the
service did before journals) and for the incremental commit (a journal entry of the delta, a new
base now and then), in the same run on the same server. At 100,000 series all breaching, the
incremental commits run twice, paced as the service runs them (a window every 0.2 s): with each new
base written inside its commit (before: the whole snapshot encoded and written through bus/kvblob.py,
as a40c591 did) and beside the loop (after: StateStore.begin_base / finish_base, as the service
does now); for each, the longest commit and the longest the event loop was blocked outside the
bench's own evaluation. `--only=100000x100` runs one load.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from bus.config import BusConfig
from bus.connection import Bus, connect
from bus.events import MetricBatch, Sample
from bus.jetstream import provision
from bus.server import EmbeddedServer, ServerConfig
from bus.units import Duration
from evaluator.config import EvaluatorConfig, Rule
from evaluator.engine import Engine
from evaluator.store import (
    SavedState,
    StateStore,
    compress_parts,
    new_journal_id,
    open_buckets,
)

METRICS = 10
MOUNTS = 10
INTERVAL = 10.0
WINDOWS = 50  # commits per cycle: a busy service commits every batch_window (0.2 s)
WARMUP_CYCLES = 4  # past `for` and group_wait: alerts firing, groups notified
BASELINE_COMMITS = 5
INCREMENTAL_CYCLES = 3
LOADS: tuple[tuple[int, float], ...] = ((10_000, 0.03), (10_000, 1.0), (100_000, 0.03), (100_000, 1.0))
WINDOW_PERIOD = INTERVAL / WINDOWS

CONFIG = EvaluatorConfig(
    default_rules=False,
    rules=[
        Rule(name=f"m{m}_high", metric=f"bench.m{m}", threshold=90, for_=Duration(20)) for m in range(METRICS)
    ],
)


@dataclass
class Commits:
    """Bytes and wall milliseconds of each commit."""

    sizes: list[int]
    times: list[float]
    bases: int = 0
    entries: list[int] | None = None  # sizes of the journal entries alone
    stall: float = 0.0  # ms: the longest the loop was blocked outside evaluation

    def row(self) -> str:
        times = sorted(self.times)
        return (
            f"{statistics.mean(self.sizes):,.0f} B, {statistics.mean(times):.1f} ms mean, "
            f"p50 {statistics.median(times):.1f}, max {times[-1]:.1f} ms"
        )


class Fleet:
    """hosts x 100 series; `share` of them breach (values 91-99), the others sit at 20-80."""

    def __init__(self, series: int, share: float, seed: int = 1) -> None:
        self.hosts = series // (METRICS * MOUNTS)
        rng = random.Random(seed)
        keys = [(h, m, d) for h in range(self.hosts) for m in range(METRICS) for d in range(MOUNTS)]
        self.breaching = set(rng.sample(keys, int(len(keys) * share)))
        self.rng = rng

    def window(self, cycle: int, index: int) -> list[MetricBatch]:
        """The batches of the hosts whose turn falls in window `index` of the cycle."""
        rng, now = self.rng, cycle * INTERVAL + index * INTERVAL / WINDOWS
        out = []
        for host in range(index, self.hosts, WINDOWS):
            samples = [
                Sample(
                    f"bench.m{m}",
                    rng.uniform(91, 99) if (host, m, d) in self.breaching else rng.uniform(20, 80),
                    {"mount": f"/m{d}"},
                )
                for m in range(METRICS)
                for d in range(MOUNTS)
            ]
            out.append(MetricBatch(host=f"h{host}", agent="host", ts=now, interval=INTERVAL, samples=samples))
        return out


def evaluate(engine: Engine, fleet: Fleet, cycle: int, index: int) -> float:
    now = cycle * INTERVAL + index * INTERVAL / WINDOWS
    engine.tick(now)
    for batch in fleet.window(cycle, index):
        engine.observe(batch, now)
    engine.drain()  # the service publishes before it commits
    return now


async def full_commits(store: StateStore, engine: Engine, fleet: Fleet, cycle: int) -> Commits:
    """The baseline: the whole snapshot at every commit."""
    out = Commits([], [])
    for index in range(BASELINE_COMMITS):
        now = evaluate(engine, fleet, cycle, index)
        start = time.perf_counter()
        snapshot = engine.snapshot()
        await store.save(SavedState(engine=snapshot, cursors={"metrics": index}, input_time=now))
        out.times.append((time.perf_counter() - start) * 1000)
        out.sizes.append(len(snapshot))
    return out


class StallMeter:
    """The longest the event loop went without turning, gaps spanning an evaluation left out."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.evaluations = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start, seen = time.perf_counter(), self.evaluations
            await asyncio.sleep(0.001)
            if self.evaluations == seen:
                self.longest = max(self.longest, time.perf_counter() - start - 0.001)

    def __enter__(self) -> StallMeter:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


class Beside:
    """A base written beside the loop, as EvaluatorService._write_base does."""

    def __init__(self) -> None:
        self.made = 0
        self.saved = 0
        self.event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def committed(self) -> None:
        self.saved = self.made
        self.event.set()

    def begin(self, store: StateStore, engine: Engine, cursors: dict[str, int], now: float) -> None:
        state = store.begin_base(cursors, now, [])
        self.task = asyncio.create_task(self._write(store, state, engine.snapshot_parts()))

    async def _write(self, store: StateStore, state: SavedState, parts: Iterator[bytes]) -> None:
        engine = await compress_parts(parts)
        wanted = self.made + 1
        while self.saved < wanted:
            self.event.clear()
            await self.event.wait()
        await store.finish_base(msgspec.structs.replace(state, engine=engine))
        self.task = None


async def incremental_commits(
    store: StateStore, engine: Engine, fleet: Fleet, first: int, mode: str = "beside", paced: bool = False
) -> Commits:
    """As EvaluatorService._commit: a journal entry of the delta; a new base when one is due, in
    the commit ("inline", the service before) or beside the loop ("beside", the service now)."""
    out = Commits([], [])
    beside = Beside()
    with StallMeter() as meter:
        clock = time.perf_counter()
        for cycle in range(first, first + INCREMENTAL_CYCLES):
            for index in range(WINDOWS):
                meter.evaluations += 1
                now = evaluate(engine, fleet, cycle, index)
                meter.evaluations += 1
                await asyncio.sleep(0.002)  # the meter's next gap begins after the evaluation
                start = time.perf_counter()
                beside.made += 1
                delta = engine.delta()
                cursors = {"metrics": cycle * WINDOWS + index}
                if store.needs_base() or (mode == "inline" and store.base_due()):
                    size = await _inline_base(store, engine, cursors, now)
                    out.bases += 1
                else:
                    await store.append(store.entry(delta, cursors, now, []))
                    size = len(delta)
                    out.entries = [*(out.entries or []), size]
                    if mode == "beside" and store.base_due():
                        beside.begin(store, engine, cursors, now)
                        out.bases += 1
                beside.committed()
                out.times.append((time.perf_counter() - start) * 1000)
                out.sizes.append(size)
                clock += WINDOW_PERIOD
                await asyncio.sleep(max(0.0, clock - time.perf_counter()) if paced else 0)
        while beside.task is not None:  # the last base, if one is still being written
            await asyncio.sleep(0.01)
    out.stall = meter.longest * 1000
    return out


async def _inline_base(store: StateStore, engine: Engine, cursors: dict[str, int], now: float) -> int:
    """A base in the commit, as before: the whole snapshot, bus/kvblob.py's zlib level 1 over it
    in the loop (the cost that put added), then the chunks and manifest."""
    snapshot = engine.snapshot()
    base = SavedState(engine=snapshot, cursors=cursors, input_time=now, journal=new_journal_id())
    zlib.compress(msgspec.msgpack.encode(base), 1)
    await store.save(base)
    return len(snapshot)


async def kv_round_trip(store: StateStore) -> float:
    """Wall milliseconds of one 1 KB KV put: the floor of any commit (median of 200)."""
    times = []
    for _ in range(200):
        start = time.perf_counter()
        await store.blobs.kv.put("bench.rtt", bytes(1024))
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def _stores(server: EmbeddedServer, name: str) -> tuple[Bus, StateStore]:
    bus = await connect(BusConfig(prefix=name), "bench", servers=[server.url])
    await provision(bus.nc.jetstream(), bus.subjects, BusConfig().streams)
    store, _ = await open_buckets(bus.nc.jetstream(), bus.subjects.prefix)
    return bus, store


async def _fresh_journal(store: StateStore, engine: Engine) -> None:
    """The journal starts from a base, as after a restart."""
    engine.delta()
    await store.save(
        SavedState(engine=engine.snapshot(), cursors={}, input_time=None, journal=new_journal_id())
    )


async def measure(server: EmbeddedServer, series: int, share: float) -> list[tuple[str, str, str]]:
    name = f"commit{series}x{int(share * 100)}"
    fleet = Fleet(series, share)
    engine = Engine(CONFIG, 0)
    for cycle in range(WARMUP_CYCLES):
        for index in range(WINDOWS):
            evaluate(engine, fleet, cycle, index)
    full_bus, full_store = await _stores(server, f"{name}full")
    inc_bus, inc_store = await _stores(server, f"{name}inc")
    paced = series == 100_000 and share == 1.0
    before: Commits | None = None
    try:
        await _fresh_journal(inc_store, engine)
        rtt = await kv_round_trip(full_store)
        full = await full_commits(full_store, engine, fleet, WARMUP_CYCLES)
        first = WARMUP_CYCLES + 1
        if paced:  # before: each base in its commit, on the same load just before
            await _fresh_journal(inc_store, engine)
            before = await incremental_commits(inc_store, engine, fleet, first, "inline", paced=True)
            first += INCREMENTAL_CYCLES
        await _fresh_journal(inc_store, engine)
        incremental = await incremental_commits(inc_store, engine, fleet, first, "beside", paced=paced)
    finally:
        await full_bus.close()
        await inc_bus.close()
    state = len(engine._by_fp)
    label = f"{series:,} series, {share:.0%} breaching ({state:,} in the state)"
    full_ms, inc_ms = statistics.mean(full.times), statistics.mean(incremental.times)
    full_b, inc_b = statistics.mean(full.sizes), statistics.mean(incremental.sizes)
    commits = len(incremental.times)
    rows = [
        (f"{label}: full snapshot per commit", full.row(), "baseline"),
        (
            f"{label}: incremental per commit",
            f"{incremental.row()}; {incremental.bases} bases in {commits} commits, "
            f"entries {statistics.mean(incremental.entries or [0]):,.0f} B",
            "bounded by the change",
        ),
        (
            f"{label}: full / incremental",
            f"{full_b / inc_b:.1f}x fewer bytes, {full_ms / inc_ms:.1f}x less time "
            f"(a 1 KB KV put: {rtt:.2f} ms)",
            "-",
        ),
    ]
    if before is not None:
        rows += [
            (
                f"{label}: paced, bases in the commit (before)",
                f"{before.row()}; loop blocked at most {before.stall:.1f} ms; {before.bases} bases",
                "baseline",
            ),
            (
                f"{label}: paced, bases beside the loop (after)",
                f"{incremental.row()}; loop blocked at most {incremental.stall:.1f} ms; "
                f"{incremental.bases} bases",
                "max commit and loop stall bounded by the change",
            ),
            (
                f"{label}: before / after",
                f"max commit {max(before.times) / max(incremental.times):.1f}x, "
                f"loop stall {before.stall / max(incremental.stall, 1e-3):.1f}x",
                "-",
            ),
        ]
    return rows


async def run() -> list[tuple[str, str, str]]:
    loads = LOADS
    if "--quick" in sys.argv:
        loads = tuple(load for load in LOADS if load[0] == 10_000)
    for arg in sys.argv:
        if arg.startswith("--only="):
            loads = tuple(load for load in LOADS if f"--only={load[0]}x{int(load[1] * 100)}" == arg)
    with tempfile.TemporaryDirectory() as data:
        server = EmbeddedServer(ServerConfig(port=0), Path(data))
        await server.start()
        rows: list[tuple[str, str, str]] = []
        try:
            for series, share in loads:
                rows += await measure(server, series, share)
        finally:
            await server.stop()
    return rows


def main() -> None:
    for measure_, result, target in asyncio.run(run()):
        print(f"{measure_}: {result}   (target {target})", flush=True)


if __name__ == "__main__":
    main()
