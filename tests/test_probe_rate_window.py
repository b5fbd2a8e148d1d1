"""The probe's scrape targets publish rates over their window, and say how much of it they cover."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from agents.probe import ProbeAgentConfig, ProbeCollector
from agents.runner import Collection
from bus.units import dec_hook
from tests.probe_targets import Targets, running_targets


class ManualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def targets() -> AsyncIterator[Targets]:
    async with running_targets() as running:
        yield running


def probe(targets: Targets, **scrape: Any) -> ProbeAgentConfig:
    table = {"interval": "5s", "scrape": [{"name": "backend", "url": targets.url("/metrics"), **scrape}]}
    return msgspec.convert(table, ProbeAgentConfig, dec_hook=dec_hook)


def values(collection: Collection) -> dict[str, float]:
    return {sample.name: sample.value for sample in collection.samples}


async def scrape_every_5s(
    targets: Targets, config: ProbeAgentConfig, error_shares: list[float]
) -> list[Collection]:
    """One collection now, then one after each 5 s of 20 req/s with the given share of 500s."""
    clock = ManualClock()
    collector = ProbeCollector(config, clock=clock)
    try:
        collections = [await collector.collect()]
        for share in error_shares:
            errors = round(100 * share)
            targets.metrics.serve(100 - errors, "200", 0.07)
            targets.metrics.serve(errors, "500", 0.07)
            clock.now += 5
            collections.append(await collector.collect())
    finally:
        await collector.close()
    return collections


async def test_the_first_rates_say_how_much_of_the_window_they_cover(targets: Targets) -> None:
    collections = await scrape_every_5s(targets, probe(targets, rate_window="30s"), [0.1] * 8)

    assert collections[0].samples == []
    assert collections[0].checks[0].detail == "first scrape: rates from the next one"
    covered = [values(c)["http.rate_window_seconds"] for c in collections[1:]]
    assert covered == [5, 10, 15, 20, 25, 25, 25, 25]  # a 30s window holds 25 s of 5 s scrapes
    assert all(values(c)["http.requests_per_second"] == pytest.approx(20) for c in collections[1:])
    second = collections[1]
    assert {sample.name: sample.labels for sample in second.samples}["http.rate_window_seconds"] == {
        "check": "backend"
    }
    assert second.checks[0].detail.endswith("over 5s of the 30s window")
    assert collections[-1].checks[0].detail.endswith(", latency_p99_seconds 0.0995 over 25s")


async def test_one_quiet_scrape_interval_does_not_bring_the_published_error_ratio_to_5_percent(
    targets: Targets,
) -> None:
    shares = [0.10] * 20 + [0.05] + [0.10] * 10
    collections = await scrape_every_5s(targets, probe(targets), shares)

    ratios = [values(c)["http.error_ratio"] for c in collections[1:]]
    assert min(ratios) == pytest.approx(105 / 1100, abs=1e-6)  # the 55 s holding the quiet 5 s
    assert all(ratio > 0.05 for ratio in ratios)
