"""Our histogram_quantile and windowed rates give Prometheus's answers: checked by its own `promtool`."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.promscrape import QUANTILES, IntervalStats, RateWindow, histogram_quantile, parse_scrape
from tests.conftest import require

pytestmark = pytest.mark.integration

INF = math.inf
CASES: list[tuple[float, list[tuple[float, float]]]] = [
    (0.5, [(0.1, 10), (0.5, 30), (1.0, 40), (INF, 40)]),  # inside a bucket
    (0.95, [(0.1, 10), (0.5, 30), (1.0, 40), (INF, 40)]),
    (0.99, [(0.1, 10), (0.5, 30), (1.0, 40), (INF, 50)]),  # in the +Inf bucket
    (0.5, [(0.2, 100), (INF, 100)]),  # in the first bucket, from 0
    (0.25, [(0.0, 10), (1.0, 20), (INF, 20)]),  # first bucket bounded at 0
    (0.75, [(0.1, 10), (0.5, 8), (1.0, 20), (INF, 20)]),  # non-monotonic counts
    (0.9, [(0.005, 3), (0.01, 7), (0.025, 7), (0.05, 19), (0.1, 40), (0.25, 41), (INF, 44)]),
    (0.0, [(0.1, 5), (0.5, 10), (INF, 10)]),
    (1.0, [(0.1, 5), (0.5, 10), (INF, 10)]),
]


def _label(bound: float) -> str:
    return "+Inf" if bound == INF else repr(bound)


def test_histogram_quantile_matches_promtool_on_every_case(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed (apt install prometheus)")
    assert promtool is not None
    lines = ["tests:", "  - interval: 1m", "    input_series:"]
    for case, (_, buckets) in enumerate(CASES):
        for bound, count in buckets:
            lines += [
                f'      - series: \'h_bucket{{case="{case}",le="{_label(bound)}"}}\'',
                f"        values: '{count:g}'",
            ]
    lines.append("    promql_expr_test:")
    for case, (q, buckets) in enumerate(CASES):
        ours = histogram_quantile(q, buckets)
        lines += [
            f'      - expr: histogram_quantile({q}, h_bucket{{case="{case}"}})',
            "        eval_time: 0m",
            "        exp_samples:",
            f"          - labels: '{{case=\"{case}\"}}'",
            f"            value: {ours!r}",
        ]
    tests = tmp_path / "quantiles.yml"
    tests.write_text("\n".join(lines) + "\n")

    result = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr


# rate() and histogram_quantile() over a window, with a counter reset ---------------------------

STEP = 5  # seconds between scrapes
BOUNDS = (0.1, 0.5, 1.0, INF)
RESET_AT = 18  # the target restarts just before this scrape: every counter starts again from zero
AFTER = 4  # seconds after a scrape that the rule is evaluated: its range no longer reaches the scrape 1m back
# (and starts 1 s before the oldest it takes, too close for the extrapolation to zero to differ by series)
NEAREST = 1e-9  # the two sides sum in different orders; rounded, they must agree


def scripted_pages() -> list[dict[str, float]]:
    """Each scrape's series (`req_total{status}`, `dur_bucket{le}`) of a service whose traffic varies."""
    pages: list[dict[str, float]] = []
    totals: dict[str, float] = {}
    for step in range(37):
        if step == RESET_AT:
            totals = {}
        served = {"200": 80 + 7 * (step % 5), "503": 2 * (step % 7), "500": 1 + step % 3}
        slow = 3 + step % 4
        # observations this step at or below each bound (cumulative across bounds, as `le` is)
        per_bound = {
            0.1: 20 + step,
            0.5: 50 + 3 * step,
            1.0: 60 + 3 * step + slow,
            INF: 62 + 3 * step + 2 * slow,
        }
        if step == 0:
            served = dict.fromkeys(served, 1000)  # the history before the first scrape
            per_bound = {bound: 500 + 100 * i for i, bound in enumerate(BOUNDS)}
        for status, count in served.items():
            key = f'req_total{{status="{status}"}}'
            totals[key] = totals.get(key, 0) + count
        for bound, count in per_bound.items():
            key = f'dur_bucket{{le="{_label(bound)}"}}'
            totals[key] = totals.get(key, 0) + count
        pages.append(dict(totals))
    return pages


def quantile(q: float) -> Callable[[IntervalStats], float | None]:
    return lambda stats: stats.latency.get(q)


def promql_round(value: float | None) -> float:
    """PromQL's `round(v, NEAREST)`, the same float operations: the last bits of a sum do not compare."""
    assert value is not None
    inverse = 1.0 / NEAREST
    return math.floor(value * inverse + 0.5) / inverse


def test_windowed_rate_ratio_and_quantiles_match_promtool_across_a_counter_reset(tmp_path: Path) -> None:
    """At every scrape after the first minute, ours equals PromQL's over `[1m]` a moment after it (a
    rule evaluation after the scrape), the reset inside or not."""
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed (apt install prometheus)")
    assert promtool is not None
    pages = scripted_pages()
    window = RateWindow(window=60, interval=STEP)
    ours: dict[int, IntervalStats] = {}
    for step, page in enumerate(pages):
        text = "".join(f"{series} {value:.17g}\n" for series, value in page.items())
        window.add(
            parse_scrape(f"# TYPE req_total counter\n# TYPE dur histogram\n{text}", "req", "dur"), step * STEP
        )
        stats = window.stats()
        if step * STEP >= 60:
            assert stats is not None
            assert stats.covered == 55.0
            ours[step] = stats
    assert any(step - 11 < RESET_AT <= step for step in ours)  # windows that hold the reset are compared

    lines = [f"tests:\n  - interval: {STEP}s\n    input_series:"]
    for series in pages[0]:
        values = " ".join(f"{page[series]:.17g}" for page in pages)
        lines.append(f"      - series: '{series}'\n        values: '{values}'")
    lines.append("    promql_expr_test:")
    expressions: dict[str, Callable[[IntervalStats], float | None]] = {
        "sum(rate(req_total[1m]))": lambda s: s.requests_per_second,
        'sum(rate(req_total{status=~"5.."}[1m])) / sum(rate(req_total[1m]))': lambda s: s.error_ratio,
    }
    for q in QUANTILES:
        expressions[f"histogram_quantile({q}, sum by (le) (rate(dur_bucket[1m])))"] = quantile(q)
    for step, stats in ours.items():
        for expression, value in expressions.items():
            lines.append(
                f"      - expr: 'round({expression}, {NEAREST})'\n        eval_time: {step * STEP + AFTER}s\n"
                f"        exp_samples:\n          - labels: '{{}}'\n"
                f"            value: {promql_round(value(stats))!r}"
            )
    tests = tmp_path / "window.yml"
    tests.write_text("\n".join(lines) + "\n")

    result = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
