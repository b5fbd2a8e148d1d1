"""Rates, error ratios and quantiles between two scrapes, checked against hand-computed answers."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from agents.promscrape import Scrape, histogram_quantile, increase, interval_stats, parse_scrape

INF = math.inf
# cumulative: 10 requests <= 0.1s, 20 more <= 0.5s, 10 more <= 1s, none slower
BUCKETS = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 40.0)]


# histogram_quantile ----------------------------------------------------------------------------


def test_quantile_interpolates_linearly_inside_its_bucket() -> None:
    # rank 20 falls in (0.1, 0.5] holding 20, 10 of them below rank: 0.1 + 0.4 * 10/20
    assert histogram_quantile(0.5, BUCKETS) == pytest.approx(0.3)
    # rank 38 falls in (0.5, 1] holding 10, 8 of them below rank: 0.5 + 0.5 * 8/10
    assert histogram_quantile(0.95, BUCKETS) == pytest.approx(0.9)
    # rank 39.6: 0.5 + 0.5 * 9.6/10
    assert histogram_quantile(0.99, BUCKETS) == pytest.approx(0.98)


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 50.0)]
    assert histogram_quantile(0.99, buckets) == 1.0  # rank 49.5 lies beyond 1s: no upper bound to use


def test_quantile_in_the_first_bucket_interpolates_from_zero() -> None:
    assert histogram_quantile(0.5, [(0.2, 100.0), (INF, 100.0)]) == pytest.approx(0.1)


def test_quantile_in_a_first_bucket_bounded_at_or_below_zero_is_that_bound() -> None:
    assert histogram_quantile(0.25, [(0.0, 10.0), (1.0, 20.0), (INF, 20.0)]) == 0.0
    assert histogram_quantile(0.25, [(-1.0, 10.0), (1.0, 20.0), (INF, 20.0)]) == -1.0


def test_quantile_is_nan_without_observations_or_without_a_usable_histogram() -> None:
    assert math.isnan(histogram_quantile(0.5, [(0.1, 0.0), (INF, 0.0)]))  # no traffic
    assert math.isnan(histogram_quantile(0.5, [(INF, 5.0)]))  # a single bucket
    assert math.isnan(histogram_quantile(0.5, [(0.1, 5.0), (1.0, 5.0)]))  # no +Inf bucket
    assert math.isnan(histogram_quantile(0.5, []))
    assert math.isnan(histogram_quantile(math.nan, BUCKETS))


def test_quantile_outside_zero_to_one_is_infinite_as_in_promql() -> None:
    assert histogram_quantile(-0.1, BUCKETS) == -INF
    assert histogram_quantile(1.1, BUCKETS) == INF


def test_buckets_are_sorted_merged_and_made_monotonic() -> None:
    # given out of order, 0.1 twice (two series), and 0.5 lower than 0.1 (a scrape race)
    buckets = [(INF, 20.0), (1.0, 20.0), (0.1, 6.0), (0.5, 8.0), (0.1, 4.0)]
    # cumulative becomes 10, 10, 20, 20: rank 10 is reached in the first bucket, at its top
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    # rank 15 in (0.5, 1] which holds 10, 5 below rank: 0.5 + 0.5 * 5/10
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.75)


# counters --------------------------------------------------------------------------------------


def test_a_counter_that_went_down_was_reset_and_its_new_value_is_the_increase() -> None:
    assert increase(100.0, 130.0) == 30.0
    assert increase(100.0, 7.0) == 7.0
    assert increase(5.0, 5.0) == 0.0


# two scrapes -----------------------------------------------------------------------------------


class App:
    """A prometheus_client registry as the backend exposes it: a request counter and a histogram."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("jarvis_requests", "requests", ["method", "status"], registry=self.registry)
        self.duration = Histogram(
            "jarvis_request_duration_seconds",
            "duration",
            ["method"],
            buckets=(0.1, 0.5, 1.0),
            registry=self.registry,
        )

    def serve(self, count: int, status: str, seconds: float, method: str = "GET") -> None:
        for _ in range(count):
            self.requests.labels(method, status).inc()
            self.duration.labels(method).observe(seconds)

    def scrape(self) -> Scrape:
        text = generate_latest(self.registry).decode()
        return parse_scrape(text, "jarvis_requests_total", "jarvis_request_duration_seconds")


def test_rate_error_ratio_and_quantiles_cover_only_the_interval_between_scrapes() -> None:
    app = App()
    app.serve(100, "200", 2.0)  # before the first scrape: must not count
    first = app.scrape()
    app.serve(8, "200", 0.05)
    app.serve(6, "200", 0.3, method="POST")  # another series of the same histogram
    app.serve(4, "503", 0.8)
    app.serve(2, "500", 0.8, method="POST")  # a series that appears between the scrapes
    stats = interval_stats(first, app.scrape(), elapsed=10.0)

    assert stats.requests_per_second == pytest.approx(2.0)  # 20 requests in 10 s
    assert stats.error_ratio == pytest.approx(0.3)  # 6 of 20 were 5xx
    # cumulative over the interval: <=0.1: 8, <=0.5: 14, <=1: 20, +Inf: 20
    # p50: rank 10 in (0.1, 0.5] holding 6, 2 below rank: 0.1 + 0.4 * 2/6
    assert stats.latency[0.5] == pytest.approx(0.1 + 0.4 * 2 / 6)
    # p95: rank 19 in (0.5, 1] holding 6, 5 below rank: 0.5 + 0.5 * 5/6
    assert stats.latency[0.95] == pytest.approx(0.5 + 0.5 * 5 / 6)
    assert stats.latency[0.99] == pytest.approx(0.5 + 0.5 * 5.8 / 6)


def test_a_restarted_target_counts_from_zero_instead_of_going_negative() -> None:
    before = App()
    before.serve(50, "200", 0.05)
    first = before.scrape()
    restarted = App()  # the process restarted: every counter began again at 0
    restarted.serve(5, "200", 0.3)
    restarted.serve(5, "500", 0.3)
    stats = interval_stats(first, restarted.scrape(), elapsed=5.0)

    assert stats.requests_per_second == pytest.approx(2.0)
    assert stats.error_ratio == pytest.approx(0.5)
    # all 10 requests in (0.1, 0.5]: p50 is its middle
    assert stats.latency[0.5] == pytest.approx(0.3)


def test_no_traffic_gives_a_zero_rate_and_no_ratio_or_quantile() -> None:
    app = App()
    app.serve(3, "200", 0.05)
    first = app.scrape()
    stats = interval_stats(first, app.scrape(), elapsed=10.0)

    assert stats.requests_per_second == 0.0
    assert stats.error_ratio is None
    assert stats.latency == {}


def test_status_label_is_configurable_and_5xx_grouped_values_count_as_errors() -> None:
    page = """\
# TYPE api_calls_total counter
api_calls_total{code="2xx"} 10
api_calls_total{code="5xx"} 0
"""
    later = page.replace('code="2xx"} 10', 'code="2xx"} 13').replace('code="5xx"} 0', 'code="5xx"} 1')
    first, second = (parse_scrape(text, "api_calls", "none") for text in (page, later))

    by_code = interval_stats(first, second, 1.0, status_labels=["code"])
    by_missing_label = interval_stats(first, second, 1.0, status_labels=["status"])
    assert by_code.error_ratio == pytest.approx(0.25)
    assert by_missing_label.error_ratio is None  # no series says its status: no ratio at all
    assert by_missing_label.requests_per_second == pytest.approx(4.0)


def test_without_a_request_counter_the_histogram_count_gives_the_rate() -> None:
    registry = CollectorRegistry()
    duration = Histogram("jarvis_request_duration_seconds", "d", ["status"], registry=registry)
    duration.labels("200").observe(0.01)
    first = parse_scrape(
        generate_latest(registry).decode(), "jarvis_requests_total", "jarvis_request_duration_seconds"
    )
    duration.labels("500").observe(0.01)
    duration.labels("200").observe(0.01)
    second = parse_scrape(
        generate_latest(registry).decode(), "jarvis_requests_total", "jarvis_request_duration_seconds"
    )

    stats = interval_stats(first, second, 2.0)
    assert stats.requests_per_second == pytest.approx(1.0)
    assert stats.error_ratio == pytest.approx(0.5)


def test_metric_names_may_be_given_with_or_without_their_suffix() -> None:
    app = App()
    app.serve(2, "200", 0.05)
    text = generate_latest(app.registry).decode()

    assert parse_scrape(text, "jarvis_requests", "jarvis_request_duration_seconds_bucket") == app.scrape()


def test_a_malformed_page_raises_value_error() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the parser's own message varies by version
        parse_scrape('jarvis_requests_total{status="200" 5\n', "jarvis_requests_total", "d")


def test_buckets_without_a_numeric_le_are_ignored() -> None:
    page = 'd_bucket{le="abc"} 5\nd_bucket{le="0.5"} 1\nd_bucket{le="+Inf"} 2\n'
    assert set(parse_scrape(page, "r", "d").buckets) == {((), 0.5), ((), INF)}
