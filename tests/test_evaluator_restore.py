"""snapshot()/restore(): a restarted engine continues exactly where the old one stopped."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import msgspec
import pytest

from bus.events import HealthEvent, Heartbeat, MetricBatch
from bus.units import Duration
from evaluator.config import EvaluatorConfig, MaintenanceWindow, Rule
from evaluator.engine import Engine, _Snapshot
from evaluator.silences import Silence, parse_matcher
from evaluator.testing import Driver, health, heartbeat, metrics, only_rules

HOUR = 3600.0
CONFIG = EvaluatorConfig(
    maintenance_windows=[
        MaintenanceWindow(name="nightly", start="02:00", end="02:30", timezone="Europe/Berlin")
    ],
)
SILENCE = Silence(
    id="s1", matchers=[parse_matcher("host=web02")], starts_at=0, ends_at=2000, author="ops", comment="deploy"
)

Step = Callable[[Driver], None]


def scenario() -> list[Step]:
    """Every timer kind: for, group_wait, group_interval, repeat, dead-man, silence end, window, ack."""
    steps: list[Step] = [lambda d: d.engine.set_silences([SILENCE], 0)]
    for t in range(0, 8 * 3600, 60):
        dead = t >= 3000  # web03's agent dies at 3000 s
        events: list[MetricBatch | HealthEvent | Heartbeat] = [
            heartbeat("web01", interval=60),
            heartbeat("web02", interval=60),
        ]
        events.append(
            metrics("web01", [("disk.percent", 95 if t < 2 * HOUR else 50, {"mount": "/"})], interval=60)
        )
        events.append(metrics("web02", {"cpu.percent": 97, "mem.percent": 10}, interval=60))
        if not dead:
            events += [heartbeat("web03", interval=60), metrics("web03", {"mem.percent": 99}, interval=60)]
        events.append(health("probe", "probe", "api", "critical" if (t // 60) % 3 == 0 else "ok"))
        steps.append(lambda d, t=t, events=events: d.at(t, *events))  # type: ignore[misc]
        if t == 1200:
            steps.append(_ack_disk)
    return steps


def _ack_disk(driver: Driver) -> None:
    for alert in driver.engine.active(driver.now):
        if alert.rule == "disk_usage_high":
            driver.engine.ack(alert.fingerprint, driver.now)


def run(restart_every: int | None) -> Driver:
    driver = Driver(CONFIG, start=0)
    for index, step in enumerate(scenario()):
        step(driver)
        if restart_every and index % restart_every == 0:
            driver.restart()
    return driver


def test_the_scenario_exercises_every_kind_of_output() -> None:
    driver = run(None)
    statuses = {n.status for n in driver.notifications}
    rules = {a.rule for a in driver.alerts}
    assert statuses == {"firing", "resolved", "reminder"}
    assert {"disk_usage_high", "cpu_usage_high", "memory_usage_high", "agent_down", "maintenance"} <= rules
    assert any(a.status == "pending" for a in driver.alerts)


@pytest.mark.parametrize("restart_every", [1, 2, 7, 31])
def test_restarts_at_any_point_give_exactly_the_same_outputs(restart_every: int) -> None:
    reference = run(None)
    restarted = run(restart_every)
    assert restarted.alerts == reference.alerts
    assert restarted.notifications == reference.notifications
    assert restarted.engine.active(restarted.now) == reference.engine.active(reference.now)


def test_restore_continues_a_half_way_for_and_a_half_way_group_wait() -> None:
    rule = Rule(name="cpu", metric="cpu.percent", threshold=90, for_=Duration(60))
    first = Engine(only_rules(rule), 0)
    first.observe(metrics("web01", {"cpu.percent": 95}), 0)
    first.drain()
    halfway_for = Engine.restore(only_rules(rule), first.snapshot(), 30)
    assert halfway_for.next_deadline() == 60
    halfway_for.tick(70)
    assert [(a.status, a.starts_at) for a in halfway_for.drain().alerts] == [("firing", 60)]
    halfway_wait = Engine.restore(only_rules(rule), halfway_for.snapshot(), 75)
    assert halfway_wait.next_deadline() == 90
    halfway_wait.tick(100)
    (note,) = halfway_wait.drain().notifications
    assert note.ts == 90
    assert note.status == "firing"


def test_undrained_outputs_survive_a_snapshot() -> None:
    engine = Engine(only_rules(Rule(name="cpu", metric="cpu.percent", threshold=90)), 0)
    engine.observe(metrics("web01", {"cpu.percent": 95}), 0)
    restored = Engine.restore(engine.config, engine.snapshot(), 0)
    assert restored.drain() == engine.drain()


def test_a_rule_removed_from_the_config_resolves_its_alerts_on_restore() -> None:
    rule = Rule(name="cpu", metric="cpu.percent", threshold=90, summary="CPU {value}")
    engine = Engine(only_rules(rule), 0)
    engine.observe(metrics("web01", {"cpu.percent": 95}), 0)
    engine.tick(100)
    engine.drain()
    restored = Engine.restore(only_rules(), engine.snapshot(), 200)
    alerts = restored.drain().alerts
    assert [(a.rule, a.status, a.ends_at) for a in alerts] == [("cpu", "resolved", 200)]
    assert restored.active(200) == []
    restored.tick(1000)
    assert [n.status for n in restored.drain().notifications] == ["resolved"]


def test_a_snapshot_of_another_version_or_garbage_is_refused_clearly() -> None:
    engine = Engine(EvaluatorConfig(), 0)
    data = msgspec.msgpack.decode(zlib.decompress(engine.snapshot()), type=_Snapshot)
    data.version = 99
    with pytest.raises(ValueError, match="snapshot version 99"):
        Engine.restore(EvaluatorConfig(), zlib.compress(msgspec.msgpack.encode(data)), 0)
    with pytest.raises(ValueError, match="unreadable evaluator snapshot"):
        Engine.restore(EvaluatorConfig(), b"garbage", 0)
    with pytest.raises(ValueError, match="unreadable evaluator snapshot"):
        Engine.restore(EvaluatorConfig(), zlib.compress(b"\x93\x01"), 0)


def test_a_late_restart_catching_up_gives_the_same_alerts_and_notifications() -> None:
    """Down from 20 s to 350 s: the timers run at their own deadlines, so ids and times match."""
    config = only_rules(Rule(name="cpu", metric="cpu.percent", threshold=90, for_=Duration(60)))
    punctual = Engine(config, 0)
    punctual.observe(metrics("web01", {"cpu.percent": 95}, interval=600), 0)
    for t in range(0, 401, 5):
        punctual.tick(t)
    late = Engine(config, 0)
    late.observe(metrics("web01", {"cpu.percent": 95}, interval=600), 0)
    late.tick(20)
    restarted = Engine.restore(config, late.snapshot(), 350)
    restarted.tick(400)
    expected, got = punctual.drain(), restarted.drain()
    assert [(a.status, a.starts_at) for a in got.alerts] == [("pending", 0), ("firing", 60)]
    assert got == expected
    assert [(n.id, n.ts) for n in got.notifications] == [(expected.notifications[0].id, 90)]


def test_a_window_removed_from_the_config_ends_on_restore() -> None:
    window = MaintenanceWindow(name="always", start="00:00", end="23:59")
    engine = Engine(only_rules(maintenance_windows=[window]), 60)
    assert [(a.rule, a.status) for a in engine.drain().alerts] == [("maintenance", "firing")]
    restored = Engine.restore(only_rules(), engine.snapshot(), 120)
    assert [(a.rule, a.status, a.ends_at) for a in restored.drain().alerts] == [
        ("maintenance", "resolved", 120)
    ]
    assert restored.active(120) == []
