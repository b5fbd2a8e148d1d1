"""Evaluator commit cost: `python -m tests.bench commit_cost` (or `python -m tests.bench.commit_cost`).

A fleet of hosts x 100 series (10 metrics x 10 mounts), a share of them breaching, evaluated as
the service does when busy: one cycle of every host every 10 s, split into 50 windows of 0.2 s,
each window followed by a commit to a real nats-server's KV. Per commit: bytes written and wall
time (encoding and the KV writes), for the full snapshot of every commit (the baseline, as the
service did before journals) and for the incremental commit (a journal entry of the delta, a new
base now and then), in the same run on the same server.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bus.config import BusConfig
from bus.connection import Bus, connect
from bus.events import MetricBatch, Sample
from bus.jetstream import provision
from bus.server import EmbeddedServer, ServerConfig
from bus.units import Duration
from evaluator.config import EvaluatorConfig, Rule
from evaluator.engine import Engine
from evaluator.store import SavedState, StateStore, new_journal_id, open_buckets

METRICS = 10
MOUNTS = 10
INTERVAL = 10.0
WINDOWS = 50  # commits per cycle: a busy service commits every batch_window (0.2 s)
WARMUP_CYCLES = 4  # past `for` and group_wait: alerts firing, groups notified
BASELINE_COMMITS = 5
INCREMENTAL_CYCLES = 3
LOADS: tuple[tuple[int, float], ...] = ((10_000, 0.03), (10_000, 1.0), (100_000, 0.03), (100_000, 1.0))

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


async def incremental_commits(store: StateStore, engine: Engine, fleet: Fleet, first: int) -> Commits:
    """As EvaluatorService._commit: a journal entry of the delta, or a new base when it is due."""
    out = Commits([], [])
    for cycle in range(first, first + INCREMENTAL_CYCLES):
        for index in range(WINDOWS):
            now = evaluate(engine, fleet, cycle, index)
            start = time.perf_counter()
            delta = engine.delta()
            cursors = {"metrics": cycle * WINDOWS + index}
            if store.wants_base(len(delta)):
                snapshot = engine.snapshot()
                base = SavedState(engine=snapshot, cursors=cursors, input_time=now, journal=new_journal_id())
                await store.save(base)
                out.bases += 1
                size = len(snapshot)
            else:
                await store.append(store.entry(delta, cursors, now, []))
                size = len(delta)
                out.entries = [*(out.entries or []), size]
            out.times.append((time.perf_counter() - start) * 1000)
            out.sizes.append(size)
    return out


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


async def measure(server: EmbeddedServer, series: int, share: float) -> list[tuple[str, str, str]]:
    name = f"commit{series}x{int(share * 100)}"
    fleet = Fleet(series, share)
    engine = Engine(CONFIG, 0)
    for cycle in range(WARMUP_CYCLES):
        for index in range(WINDOWS):
            evaluate(engine, fleet, cycle, index)
    full_bus, full_store = await _stores(server, f"{name}full")
    inc_bus, inc_store = await _stores(server, f"{name}inc")
    try:
        # the journal starts from a base, as after a restart
        engine.delta()
        await inc_store.save(
            SavedState(engine=engine.snapshot(), cursors={}, input_time=None, journal=new_journal_id())
        )
        rtt = await kv_round_trip(full_store)
        full = await full_commits(full_store, engine, fleet, WARMUP_CYCLES)
        engine.delta()  # what the baseline's windows changed is in the journal's base below
        await inc_store.save(
            SavedState(engine=engine.snapshot(), cursors={}, input_time=None, journal=new_journal_id())
        )
        incremental = await incremental_commits(inc_store, engine, fleet, WARMUP_CYCLES + 1)
    finally:
        await full_bus.close()
        await inc_bus.close()
    state = len(engine._by_fp)
    label = f"{series:,} series, {share:.0%} breaching ({state:,} in the state)"
    full_ms, inc_ms = statistics.mean(full.times), statistics.mean(incremental.times)
    full_b, inc_b = statistics.mean(full.sizes), statistics.mean(incremental.sizes)
    commits = len(incremental.times)
    return [
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


async def run() -> list[tuple[str, str, str]]:
    loads = LOADS
    if "--quick" in sys.argv:
        loads = tuple(load for load in LOADS if load[0] == 10_000)
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
