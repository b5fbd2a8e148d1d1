"""Rates, error ratios and quantiles between scrapes and over a window, against hand-computed answers."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from agents.promscrape import (
    MAX_SCRAPES,
    RateWindow,
    Scrape,
    histogram_quantile,
    increase,
    interval_stats,
    parse_scrape,
)

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


# a window of scrapes ---------------------------------------------------------------------------


def serve_second(app: App, seconds: int, error_share: float = 0.1, latency: float = 0.05) -> None:
    """`seconds` of 20 req/s with `error_share` of them 500s."""
    errors = round(20 * seconds * error_share)
    app.serve(20 * seconds - errors, "200", latency)
    app.serve(errors, "500", latency)


def test_one_quiet_interval_in_an_incident_never_brings_the_windowed_ratio_down_to_5_percent() -> None:
    """The issue's incident: 20 req/s, 10 % errors, scraped every 5 s; one 5 s held 5 errors in 100."""
    app, window = App(), RateWindow(window=60, interval=5)
    shares = [0.10] * 20 + [0.05] + [0.10] * 12  # the 10 after it, and 2 more to see it leave
    window.add(app.scrape(), 0.0)
    ratios, pairwise = [], []
    for step, share in enumerate(shares, start=1):
        before = app.scrape()
        serve_second(app, 5, share)
        window.add(app.scrape(), 5.0 * step)
        stats = window.stats()
        assert stats is not None
        assert stats.error_ratio is not None
        ratios.append(stats.error_ratio)
        pairwise.append(interval_stats(before, app.scrape(), 5.0).error_ratio)

    assert pairwise[20] == pytest.approx(0.05)  # what the two-scrape ratio said: a resolve
    # as `rate(...[1m])` just after each scrape: the 11 intervals of the last 55 s
    assert min(ratios) > 0.095  # 105 errors in the 1100 requests of the worst window
    assert ratios[20:31] == pytest.approx([105 / 1100] * 11)  # the quiet 5 s inside the window
    assert ratios[31] == pytest.approx(0.1)  # and out of it


def test_until_the_window_is_full_the_stats_cover_what_the_scrapes_span() -> None:
    app, window = App(), RateWindow(window=60, interval=5)
    window.add(app.scrape(), 100.0)
    assert window.stats() is None  # one scrape: no rate yet
    covered = []
    for step in range(1, 20):
        serve_second(app, 5)
        window.add(app.scrape(), 100.0 + 5 * step)
        stats = window.stats()
        assert stats is not None
        assert stats.requests_per_second == pytest.approx(20.0)
        covered.append(stats.covered)
        assert len(window) <= 60 / 5

    # the scrape a whole window old is out, as in `rate(...[1m])` evaluated a moment after a scrape
    assert covered[:11] == [5.0 * n for n in range(1, 12)]
    assert set(covered[11:]) == {55.0}


def test_a_counter_reset_inside_the_window_counts_its_new_value_as_the_increase() -> None:
    app, window = App(), RateWindow(window=60, interval=5)
    serve_second(app, 100)  # history before the window: never counted
    for step in range(6):
        window.add(app.scrape(), 5.0 * step)
        serve_second(app, 5)
    app = App()  # the target restarted: its counters start again from zero
    serve_second(app, 3, error_share=0.5)  # 30 errors among the 60 since the restart
    for step in range(6, 13):
        window.add(app.scrape(), 5.0 * step)
        serve_second(app, 5)

    stats = window.stats()
    assert stats is not None
    assert stats.covered == 55.0
    # 4 intervals of 100 before it, 60 across it, 6 intervals of 100 after it; 40 + 30 + 60 errors
    assert stats.requests_per_second == pytest.approx(1060 / 55)
    assert stats.error_ratio == pytest.approx(130 / 1060)


def test_warm_up_scrapes_are_thinned_without_losing_a_reset_among_them() -> None:
    """A 1 s warm-up, then every 5 s: never more than window/interval scrapes kept, rates exact."""
    app, window = App(), RateWindow(window=30, interval=5)
    times = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, *(5.0 + 5 * n for n in range(1, 10))]
    served: list[tuple[float, int]] = []  # (time, requests served since the previous scrape)
    for at in times:
        if at == 3.0:
            app = App()  # a restart between two thinned scrapes
        requests = 20 * (round(at - served[-1][0]) if served else 0)
        serve_second(app, round(at - served[-1][0]) if served else 0)
        served.append((at, requests))
        window.add(app.scrape(), at)
        assert len(window) <= 30 / 5
        stats = window.stats()
        if stats is None:
            continue
        start = at - stats.covered
        expected = sum(count for when, count in served if start < when <= at)
        assert stats.requests_per_second == pytest.approx(expected / stats.covered), at


def test_a_long_window_keeps_at_most_the_hard_cap_of_scrapes() -> None:
    app, window = App(), RateWindow(window=3600, interval=1)
    for second in range(2 * MAX_SCRAPES):
        serve_second(app, 1)
        window.add(app.scrape(), float(second))
        assert len(window) <= MAX_SCRAPES
    stats = window.stats()
    assert stats is not None
    assert stats.covered == 2 * MAX_SCRAPES - 1  # the oldest scrape is kept: the span is exact
    assert stats.requests_per_second == pytest.approx(20.0)


def test_a_slow_burst_shows_in_the_quantiles_until_it_leaves_the_window() -> None:
    app, window = App(), RateWindow(window=60, interval=5)
    window.add(app.scrape(), 0.0)
    serve_second(app, 5, latency=0.8)  # 5 s of slow answers, then fast ones
    p99 = []
    for step in range(1, 16):
        if step > 1:
            serve_second(app, 5, latency=0.05)
        window.add(app.scrape(), 5.0 * step)
        stats = window.stats()
        assert stats is not None
        p99.append(stats.latency[0.99])
    assert all(value > 0.5 for value in p99[:11])  # the burst lies inside the window's 55 s
    assert all(value <= 0.1 for value in p99[11:])


def test_a_series_gone_from_the_page_counts_while_it_was_seen_and_from_zero_when_it_returns() -> None:
    def page(ok: int, errors: int | None) -> Scrape:
        text = f'r_total{{status="200"}} {ok}\n'
        if errors is not None:
            text += f'r_total{{status="500"}} {errors}\n'
        return parse_scrape(text, "r_total", "d")

    window = RateWindow(window=20, interval=5)
    window.add(page(100, 40), 0.0)
    window.add(page(110, 50), 5.0)  # 10 errors, then the 500 series vanishes
    window.add(page(120, None), 10.0)
    stats = window.stats()
    assert stats is not None
    assert stats.error_ratio == pytest.approx(10 / 30)
    for at in (15.0, 20.0, 25.0, 30.0):
        window.add(page(120 + 2 * round(at), None), at)
    window.add(page(200, 3), 35.0)  # back, counting from zero after a restart
    stats = window.stats()
    assert stats is not None
    assert stats.covered == 15.0
    assert stats.error_ratio == pytest.approx(3 / (200 - 160 + 3))


def test_a_counter_that_once_reads_nan_or_inf_does_not_spoil_its_window() -> None:
    window = RateWindow(window=60, interval=5)
    for at, ok in ((0.0, "100"), (5.0, "NaN"), (10.0, "+Inf"), (15.0, "130")):
        window.add(parse_scrape(f'r_total{{status="200"}} {ok}\nr_total{{status="500"}} 0\n', "r", "d"), at)
    stats = window.stats()
    assert stats is not None
    assert stats.requests_per_second == pytest.approx(2.0)  # 30 requests in 15 s
    assert stats.error_ratio == 0.0


def test_after_a_gap_longer_than_the_window_the_next_scrape_starts_again() -> None:
    app, window = App(), RateWindow(window=60, interval=5)
    window.add(app.scrape(), 0.0)
    serve_second(app, 5)
    window.add(app.scrape(), 5.0)
    serve_second(app, 300)
    window.add(app.scrape(), 305.0)  # the target was unreachable for five minutes
    assert window.stats() is None
    serve_second(app, 5)
    window.add(app.scrape(), 310.0)
    stats = window.stats()
    assert stats is not None
    assert stats.covered == 5.0
    assert stats.requests_per_second == pytest.approx(20.0)


def test_a_window_of_zero_or_no_interval_is_a_bug_not_a_silent_default() -> None:
    with pytest.raises(ValueError, match="must be above zero"):
        RateWindow(window=0, interval=5)
    with pytest.raises(ValueError, match="must be above zero"):
        RateWindow(window=60, interval=0)


def test_a_window_of_one_interval_still_rates_each_scrape_against_the_one_before() -> None:
    app, window = App(), RateWindow(window=5, interval=5)
    window.add(app.scrape(), 0.0)
    for step in range(1, 4):
        serve_second(app, 5, error_share=0.2 * step)
        window.add(app.scrape(), 5.0 * step)
        stats = window.stats()
        assert stats is not None
        assert stats.covered == 5.0
        assert stats.error_ratio == pytest.approx(0.2 * step)
