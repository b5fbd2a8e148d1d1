"""Pure-engine evaluation rate: `python -m tests.bench.evaluator_engine`.

50 rules over 10,000 series (500 hosts x 20 series, 10 metric names with mount labels), about
3% of the series breaching (some steadily, some on and off), timers and drains included. The
baseline is a bare loop comparing every sample of the same batches with one threshold, in the
same run; rates are CPU time, so per core.
"""

from __future__ import annotations

import asyncio
import random
import time

from bus.events import MetricBatch, Sample
from bus.units import Duration
from evaluator.config import EvaluatorConfig, Matcher, Rule
from evaluator.engine import Engine

HOSTS = 500
METRICS = 10
MOUNTS = ("/", "/var/lib/docker")
ROUNDS = 30
RULES_PER_METRIC = 5
INTERVAL = 10.0


def rules() -> list[Rule]:
    """5 rules per metric: plain, hysteresis with `for`, two label-matched, one info `for`."""
    out = []
    for m in range(METRICS):
        metric = f"bench.m{m}"
        out += [
            Rule(name=f"m{m}_critical", metric=metric, threshold=95, severity="critical"),
            Rule(
                name=f"m{m}_warning",
                metric=metric,
                threshold=85,
                clear_threshold=80,
                for_=Duration(60),
                summary="{host} {mount} at {value:.0f}",
            ),
            Rule(
                name=f"m{m}_root",
                metric=metric,
                threshold=90,
                matchers=[Matcher(name="mount", value="/")],
            ),
            Rule(
                name=f"m{m}_docker",
                metric=metric,
                threshold=90,
                matchers=[Matcher(name="mount", op="=~", value="/var/lib/.*")],
            ),
            Rule(name=f"m{m}_low", metric=metric, op="<", threshold=1, for_=Duration(300), severity="info"),
        ]
    return out


def batches(rounds: int, seed: int = 1) -> list[list[MetricBatch]]:
    """`rounds` cycles of one batch per host; 2% of series breach steadily, 1% on and off."""
    rng = random.Random(seed)
    kinds = [
        rng.choices(("normal", "high", "flappy"), weights=(97, 2, 1))[0] for _ in range(HOSTS * METRICS * 2)
    ]
    out = []
    for r in range(rounds):
        cycle = []
        index = 0
        for h in range(HOSTS):
            samples = []
            for m in range(METRICS):
                for mount in MOUNTS:
                    kind = kinds[index]
                    index += 1
                    if kind == "high":
                        value = 97.0
                    elif kind == "flappy":
                        value = 97.0 if (r // 3) % 2 == 0 else 40.0
                    else:
                        value = rng.uniform(5, 75)
                    samples.append(Sample(f"bench.m{m}", value, {"mount": mount}))
            cycle.append(
                MetricBatch(host=f"host{h:04d}", agent="host", ts=0.0, interval=INTERVAL, samples=samples)
            )
        out.append(cycle)
    return out


CONFIG = EvaluatorConfig(default_rules=False, default_inhibit_rules=False, rules=rules())


def engine_rate(cycles: list[list[MetricBatch]]) -> tuple[float, int, int, Engine]:
    """(samples per CPU second, alerts, notifications, the engine), timers and drains included."""
    engine = Engine(CONFIG, 0.0)
    alerts = notifications = samples = 0
    start = time.process_time()
    for r, cycle in enumerate(cycles):
        now = r * INTERVAL
        engine.tick(now)
        for batch in cycle:
            engine.observe(batch, now)
            samples += len(batch.samples)
        output = engine.drain()
        alerts += len(output.alerts)
        notifications += len(output.notifications)
    elapsed = time.process_time() - start
    return samples / elapsed, alerts, notifications, engine


def snapshot_cost(engine: Engine) -> tuple[int, int, float, float]:
    """(bytes, active alerts, ms to snapshot, ms to restore) of the engine's state."""
    start = time.process_time()
    data = engine.snapshot()
    taken = time.process_time()
    Engine.restore(CONFIG, data, 1e6)
    restored = time.process_time()
    return len(data), len(engine.active(0)), (taken - start) * 1000, (restored - taken) * 1000


def baseline_rate(cycles: list[list[MetricBatch]]) -> float:
    """A bare loop touching every sample once: the floor any evaluation in Python has to pay."""
    breaches = 0
    samples = 0
    start = time.process_time()
    for cycle in cycles:
        for batch in cycle:
            for sample in batch.samples:
                if sample.value > 90.0:
                    breaches += 1
            samples += len(batch.samples)
    elapsed = time.process_time() - start
    assert breaches
    return samples / elapsed


async def run() -> list[tuple[str, str, str]]:
    cycles = batches(ROUNDS)
    engine_rate(batches(3, seed=2))  # warm-up: imports, caches
    rate, alerts, notifications, engine = engine_rate(cycles)
    base = baseline_rate(cycles)
    size, active, snap_ms, restore_ms = snapshot_cost(engine)
    series = HOSTS * METRICS * len(MOUNTS)
    return [
        (
            f"engine: samples evaluated per CPU second ({len(rules())} rules, {series} series)",
            f"{rate:,.0f} ({alerts} alerts, {notifications} notifications)",
            ">= 100,000",
        ),
        (
            "engine rate / bare loop over the same samples",
            f"{rate / base:.3f} (bare loop {base:,.0f}/s)",
            "-",
        ),
        (
            f"engine state snapshot, {active} active alerts",
            f"{size:,} bytes; {snap_ms:.1f} ms to take, {restore_ms:.1f} ms to restore",
            "< 1 MB (NATS max_payload)",
        ),
    ]


def main() -> None:
    for measure, result, target in asyncio.run(run()):
        print(f"{measure}: {result}   (target {target})")


if __name__ == "__main__":
    main()
