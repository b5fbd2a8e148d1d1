"""Our histogram_quantile gives exactly Prometheus's answers: checked by Prometheus's own `promtool`."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest

from agents.promscrape import histogram_quantile
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
