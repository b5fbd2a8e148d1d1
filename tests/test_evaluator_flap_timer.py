"""A flapping series that goes quiet while still changing too often settles by staleness, not a hang."""

from __future__ import annotations

import pytest

from bus.units import Duration
from evaluator.config import FlappingConfig, Rule
from evaluator.engine import Engine
from evaluator.testing import metrics, only_rules


@pytest.mark.timeout(10)
def test_a_flapping_series_whose_agent_goes_quiet_is_forgotten_and_tick_returns() -> None:
    """stable_for (240 s) passes before the series is stale (300 s): its stability timer runs once,
    finds it still flapping, and waits for staleness (it used to re-arm itself at the same instant
    and tick never returned)."""
    config = only_rules(
        Rule(name="cpu", metric="cpu.percent", threshold=90),
        flapping=FlappingConfig(episodes=3, within=Duration(900), stable_for=Duration(240)),
    )
    engine = Engine(config, 0)
    for t in range(0, 300, 30):  # breaches every other sample: three firings make it flap
        engine.observe(metrics("web01", {"cpu.percent": 95 if t % 60 == 0 else 10}, interval=30), t)
    (series,) = engine._by_fp.values()
    assert series.flapping
    last = 270.0
    engine.tick(last + 240)  # stability due, changes still too frequent: no settling, no spin
    assert engine.next_deadline() == last + 300
    engine.tick(last + 300)
    assert engine._by_fp == {}
    assert [a.status for a in engine.drain().alerts][-1] == "resolved"
