"""delta(): a snapshot and the deltas taken after it restore exactly what a full snapshot does.

The danger of incremental state is a change the engine forgets to record. A seeded random run
through every path (metrics, checks, deploy events, heartbeats that stop, silences, acks, windows,
flapping, staleness, restarts) compares, after every step, base + journal against a full snapshot;
the same run again with each new base encoded a part at a time (snapshot_parts) while the engine
goes on changing and committing, as the service writes one beside its loop.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator

import msgspec
import pytest

from bus.events import HealthEvent, Heartbeat, MetricBatch, Status
from bus.units import Duration
from evaluator.config import EvaluatorConfig, FlappingConfig, MaintenanceWindow, Route, Rule
from evaluator.engine import Engine, _Delta, _Snapshot
from evaluator.silences import Silence, parse_matcher
from evaluator.testing import health, heartbeat, metrics, only_rules

HOSTS = [f"web{n:02d}" for n in range(6)]
CONFIG = EvaluatorConfig(
    rules=[
        Rule(name="load_high", metric="load.1m", threshold=4, severity="critical"),
        Rule(name="deployed", kind="health", status=[], events=["deployed"], keep_firing_for=Duration(120)),
    ],
    routes=[Route(name="oncall", receiver="#oncall", severity=["critical"], repeat_interval=Duration(1800))],
    maintenance_windows=[MaintenanceWindow(name="nightly", start="01:00", end="01:40")],
    flapping=FlappingConfig(within=Duration(900), stable_for=Duration(240)),
    forget_agents_after=Duration(3 * 3600),
)

STEPS = 1000
Event = MetricBatch | HealthEvent | Heartbeat


class Fleet:
    """Hosts whose load, checks and agents change regime now and then, seeded."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.regime = {host: "calm" for host in HOSTS}
        self.silent: dict[str, float] = {}  # host -> until when its agent sends nothing

    def events(self, now: float) -> list[Event]:
        rng = self.rng
        out: list[Event] = []
        for host in HOSTS:
            if rng.random() < 0.03:
                self.regime[host] = rng.choice(["calm", "hot", "flappy", "full"])
            if rng.random() < 0.005:
                self.silent[host] = now + rng.choice([200, 900, 4 * 3600])
            if self.silent.get(host, 0) > now or rng.random() < 0.2:
                continue
            if rng.random() < 0.9:  # else its metrics alone prove the agent alive
                out.append(heartbeat(host, interval=30))
            out.append(metrics(host, self._samples(host, now), interval=30))
            if rng.random() < 0.3:
                status: Status = "critical" if self.regime[host] in ("hot", "flappy") else "ok"
                out.append(health(host, "probe", rng.choice(["api", "db"]), status))
            if rng.random() < 0.02:
                out.append(health(host, "container", "app", "ok", event="deployed"))
        rng.shuffle(out)
        return out

    def _samples(self, host: str, now: float) -> list[tuple[str, float, dict[str, str]]]:
        regime, rng = self.regime[host], self.rng
        hot = regime == "hot" or (regime == "flappy" and rng.random() < 0.5)
        cpu = rng.uniform(91, 99) if hot else rng.uniform(5, 80)
        disk = rng.uniform(86, 99) if regime == "full" else rng.uniform(20, 70)
        return [
            ("cpu.percent", cpu, {}),
            ("mem.percent", rng.uniform(86, 95) if hot else rng.uniform(10, 60), {}),
            ("disk.percent", disk, {"mount": "/"}),
            ("disk.percent", rng.uniform(20, 90), {"mount": "/data"}),
            ("load.1m", rng.uniform(3, 6), {}),
        ]


class Journal:
    """A base snapshot and the deltas after it, compacted now and then, as the store keeps them."""

    def __init__(self, engine: Engine) -> None:
        self.base = engine.snapshot()
        engine.delta()  # the base holds everything so far
        self.deltas: list[bytes] = []

    def commit(self, engine: Engine, compact: bool) -> None:
        delta = engine.delta()
        if compact:
            self.base, self.deltas = engine.snapshot(), []
        else:
            self.deltas.append(delta)

    def restore(self, config: EvaluatorConfig, now: float) -> Engine:
        return Engine.restore(config, self.base, now, self.deltas)

    def between(self, engine: Engine) -> None:
        """Called between events (a base beside the loop would encode a part then)."""


class BesideJournal(Journal):
    """As the service keeps it: a compaction takes the series and groups at a commit and encodes
    them a part at a time between later events; the new base replaces the old one only once a
    commit follows its last part, and takes the deltas from its own commit on."""

    def __init__(self, engine: Engine, rng: random.Random) -> None:
        super().__init__(engine)
        self.rng = rng
        self.parts: Iterator[bytes] | None = None
        self.pieces: list[bytes] = []
        self.first = 0  # the first delta after the base being encoded
        self.encoded = False
        self.commits = 0
        self.bases = 0

    def commit(self, engine: Engine, compact: bool) -> None:
        self.deltas.append(engine.delta())
        self.commits += 1
        if self.parts is not None and self.encoded:  # a commit after its last part: it is whole
            self.base = zlib.compress(b"".join(self.pieces))
            self.deltas = self.deltas[self.first :]
            self.parts, self.bases = None, self.bases + 1
        if compact and self.parts is None:
            self.parts = engine.snapshot_parts(self.rng.choice([1, 300, 1 << 20]))
            self.pieces, self.first, self.encoded = [], len(self.deltas), False

    def between(self, engine: Engine) -> None:
        if self.parts is None or self.encoded or self.rng.random() < 0.5:
            return
        piece = next(self.parts, None)
        if piece is None:
            self.encoded = True
        else:
            self.pieces.append(piece)


def _state(engine: Engine) -> _Snapshot:
    return msgspec.msgpack.decode(zlib.decompress(engine.snapshot()), type=_Snapshot)


def _external(engine: Engine, rng: random.Random, now: float) -> None:
    """What operators do: silences come and go, alerts are acknowledged, the bus comes back."""
    roll = rng.random()
    if roll < 0.02:
        silences = [
            Silence(
                id=f"s{int(now)}",
                matchers=[parse_matcher(f"host={rng.choice(HOSTS)}")],
                starts_at=now + rng.choice([0, 60]),
                ends_at=now + rng.choice([120, 1200]),
                author="ops",
                comment="test",
            )
        ]
        engine.set_silences(silences if rng.random() < 0.8 else [], now)
    elif roll < 0.05:
        active = engine.active(now)
        if active:
            engine.ack(rng.choice(active).fingerprint, now)
    elif roll < 0.06:
        engine.bus_restored(now)


@pytest.mark.parametrize("beside", [False, True], ids=["inline", "beside"])
@pytest.mark.parametrize("seed", [1, 2])
def test_base_and_deltas_restore_exactly_the_full_snapshot_at_every_step(seed: int, beside: bool) -> None:
    rng = random.Random(seed)
    fleet = Fleet(rng)
    now = 0.0
    engine = Engine(CONFIG, now)
    journal = BesideJournal(engine, random.Random(seed)) if beside else Journal(engine)
    kinds: set[str] = set()
    for step in range(STEPS):
        now += rng.choice([1, 5, 15, 30, 30, 30, 60, 240])
        engine.tick(now)
        _external(engine, rng, now)
        for event in fleet.events(now):
            if rng.random() < 0.1:
                engine.tick(now)  # timers between events, as the service runs them
            engine.observe(event, now)
            journal.between(engine)
        if rng.random() < 0.7:  # some outputs stay undrained through the commit
            output = engine.drain()
            kinds |= {a.status for a in output.alerts} | {n.status for n in output.notifications}
        journal.commit(engine, compact=rng.random() < (0.2 if beside else 0.05))
        full = Engine.restore(CONFIG, engine.snapshot(), now)
        incremental = journal.restore(CONFIG, now)
        assert _state(incremental) == _state(full) == _state(engine), f"step {step}"
        assert incremental.snapshot() == full.snapshot(), f"step {step}"
        if rng.random() < 0.05:  # a restart: the restored engine carries on with the same journal
            engine = incremental
    if isinstance(journal, BesideJournal):
        assert journal.bases > 20
    # the run went through what a delta must carry
    assert {"pending", "firing", "resolved", "reminder"} <= kinds
    assert any(s.flapping for s in _state(engine).series) or any(
        n.status == "firing" for n in engine.drain().notifications
    )


def test_a_delta_holds_only_what_changed() -> None:
    """A thousand quiet series, one breaching: the delta after a sample of it is small."""
    config = only_rules(Rule(name="cpu", metric="cpu.percent", threshold=90, for_=Duration(60)))
    engine = Engine(config, 0)
    for n in range(1000):
        engine.observe(metrics(f"host{n}", {"cpu.percent": 95}), 0)
    engine.drain()
    snapshot = engine.snapshot()
    engine.delta()
    engine.observe(metrics("host7", {"cpu.percent": 96}), 10)
    delta = engine.delta()
    assert len(delta) * 50 < len(snapshot)
    restored = Engine.restore(config, snapshot, 10, [delta])
    assert _state(restored) == _state(engine)
    assert [a.value for a in restored.active(10) if a.labels["host"] == "host7"] == [96]


def test_a_series_forgotten_and_seen_again_restores_in_the_engines_order() -> None:
    """Dropped then made again between two deltas: it comes after the others, as in the engine."""
    config = only_rules(Rule(name="cpu", metric="cpu.percent", threshold=90))
    engine = Engine(config, 0)
    for host in ("a", "b", "c"):
        engine.observe(metrics(host, {"cpu.percent": 95}), 0)
    base = engine.snapshot()
    engine.delta()
    engine.observe(metrics("a", {"cpu.percent": 10}), 10)  # resolves; quiet without flapping history
    engine.tick(10_000)  # a goes stale and is forgotten, b and c too
    engine.observe(metrics("b", {"cpu.percent": 95}), 10_001)
    engine.observe(metrics("a", {"cpu.percent": 95}), 10_002)
    restored = Engine.restore(config, base, 10_002, [engine.delta()])
    assert [a.labels["host"] for a in restored.active(10_002)] == ["b", "a"]
    assert _state(restored) == _state(engine)


def test_an_unreadable_or_foreign_delta_is_refused_clearly() -> None:
    engine = Engine(CONFIG, 0)
    base = engine.snapshot()
    with pytest.raises(ValueError, match="unreadable evaluator delta 1"):
        Engine.restore(CONFIG, base, 0, [engine.delta(), b"garbage"])
    foreign = msgspec.msgpack.decode(zlib.decompress(engine.delta()), type=_Delta)
    foreign.version = 99
    with pytest.raises(ValueError, match="delta version 99 is not 1"):
        Engine.restore(CONFIG, base, 0, [zlib.compress(msgspec.msgpack.encode(foreign))])


def test_snapshot_parts_join_into_the_snapshot() -> None:
    """Encoded a part at a time with nothing changing meanwhile, the parts are the snapshot."""
    config = only_rules(Rule(name="cpu", metric="cpu.percent", threshold=90, for_=Duration(60)))
    engine = Engine(config, 0)
    assert zlib.compress(b"".join(engine.snapshot_parts()), 1) == engine.snapshot()
    for n in range(70_000):  # past 65,535 series: the longest form of a msgpack array's header
        engine.observe(metrics(f"h{n}", {"cpu.percent": 95}), 0)
    parts = list(engine.snapshot_parts(64 * 1024))
    assert len(parts) > 10
    assert b"".join(parts) == zlib.decompress(engine.snapshot())
