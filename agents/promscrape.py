"""Request rate, error ratio and latency quantiles over a window of scrapes of a Prometheus `/metrics` page.

Pure logic, no I/O: parsing is prometheus_client's, the arithmetic follows PromQL's `increase()`
(counter resets) and `histogram_quantile()` (linear interpolation inside a bucket).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from prometheus_client.parser import text_string_to_metric_families

# A series by its labels, sorted, so that two scrapes of the same series compare equal.
SeriesKey = tuple[tuple[str, str], ...]
# A histogram bucket series: its labels other than `le`, and its upper bound.
BucketKey = tuple[SeriesKey, float]
K = TypeVar("K")

QUANTILES = (0.5, 0.95, 0.99)
# Scrapes one target's window keeps, whatever window/interval asks: a longer window is thinned evenly.
MAX_SCRAPES = 256


@dataclass(frozen=True)
class Scrape:
    """The series one scrape found: the request counter's and the duration histogram's buckets."""

    requests: dict[SeriesKey, float] = field(default_factory=dict)
    buckets: dict[BucketKey, float] = field(default_factory=dict)


@dataclass(frozen=True)
class IntervalStats:
    """What happened over `covered` seconds of scrapes; None where there was nothing to compute it from."""

    requests_per_second: float | None
    error_ratio: float | None
    latency: dict[float, float]  # quantile -> seconds, only the quantiles that have a value
    covered: float = 0.0


def _key(labels: Mapping[str, str]) -> SeriesKey:
    return tuple(sorted(labels.items()))


def _base_name(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if name.endswith(suffix) else name


def parse_scrape(text: str, requests_metric: str, duration_metric: str) -> Scrape:
    """The request counter and duration buckets in a text exposition; ValueError if it is malformed.

    Names may be given with or without their `_total` / `_bucket` suffix. Without a request
    counter on the page, the histogram's `_count` series stand in for it (one per request too).
    """
    counter = _base_name(requests_metric, "_total")
    histogram = _base_name(duration_metric, "_bucket")
    counter_names = {counter, f"{counter}_total"}
    requests: dict[SeriesKey, float] = {}
    counts: dict[SeriesKey, float] = {}
    buckets: dict[BucketKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in counter_names:
                requests[_key(sample.labels)] = sample.value
            elif sample.name == f"{histogram}_count":
                counts[_key(sample.labels)] = sample.value
            elif sample.name == f"{histogram}_bucket":
                bound = _bound(sample.labels)
                if bound is not None:  # PromQL ignores buckets without a usable `le` too
                    others = {name: value for name, value in sample.labels.items() if name != "le"}
                    buckets[_key(others), bound] = sample.value
    return Scrape(requests=requests or counts, buckets=buckets)


def _bound(labels: Mapping[str, str]) -> float | None:
    """A bucket's upper bound (`le`); None when it is missing or not a number."""
    try:
        return float(labels["le"])
    except (KeyError, ValueError):
        return None


def increase(previous: float, current: float) -> float:
    """A counter's increase between two readings; one that went down was reset, so all of it is new."""
    return current - previous if current >= previous else current


def increases(previous: Mapping[K, float], current: Mapping[K, float]) -> dict[K, float]:
    """The increase of every series in `current`.

    A series absent from `previous` appeared between the two scrapes (prometheus_client
    creates a labelled series at its first increment), so it counts from zero: the first 5xx
    of a process is an error, not a baseline.
    """
    return {key: increase(previous.get(key, 0.0), value) for key, value in current.items()}


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """The q-quantile of cumulative (upper bound, count) buckets, as PromQL's `histogram_quantile`.

    NaN when there is nothing to compute from: fewer than two buckets, no +Inf bucket, no
    observations. A quantile in the +Inf bucket is the highest finite upper bound; inside a
    bucket it is interpolated linearly, from 0 for the first bucket when its bound is above 0.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for bound, count in buckets:  # the same bound twice (from two series) is one bucket
        merged[bound] = merged.get(bound, 0.0) + count
    ordered = sorted(merged.items())
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]) or ordered[-1][0] < 0:
        return math.nan
    bounds = [bound for bound, _ in ordered]
    counts = []
    highest = 0.0
    for _, count in ordered:  # cumulative counts never fall; scraping races can make them seem to
        highest = max(highest, count)
        counts.append(highest)
    observations = counts[-1]
    if observations == 0 or math.isnan(observations):
        return math.nan
    rank = q * observations
    b = next(i for i, count in enumerate(counts) if count >= rank)
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count)


def _is_error(key: SeriesKey, status_labels: Sequence[str]) -> bool | None:
    """Whether a series counts 5xx responses, by the first status label it has; None without one."""
    labels = dict(key)
    for name in status_labels:
        if name in labels:
            return labels[name].startswith("5")
    return None


def interval_stats(
    previous: Scrape,
    current: Scrape,
    elapsed: float,
    status_labels: Sequence[str] = ("status", "code"),
    quantiles: Sequence[float] = QUANTILES,
) -> IntervalStats:
    """Rate, 5xx share and latency quantiles over the `elapsed` seconds between two scrapes."""
    requests = increases(previous.requests, current.requests)
    buckets = increases(previous.buckets, current.buckets)
    return _stats(requests, buckets, elapsed, status_labels, quantiles)


def _stats(
    requests: Mapping[SeriesKey, float],
    buckets: Mapping[BucketKey, float],
    elapsed: float,
    status_labels: Sequence[str],
    quantiles: Sequence[float],
) -> IntervalStats:
    """Rate, 5xx share and quantiles from each series' increase over `elapsed` seconds."""
    if elapsed <= 0:
        return IntervalStats(None, None, {})
    total = sum(requests.values())
    rate = total / elapsed if requests else None
    kinds = {key: _is_error(key, status_labels) for key in requests}
    errors = sum(value for key, value in requests.items() if kinds[key])
    has_status = any(kind is not None for kind in kinds.values())
    error_ratio = errors / total if total > 0 and has_status else None

    per_bound: dict[float, float] = {}
    for (_, bound), value in buckets.items():
        per_bound[bound] = per_bound.get(bound, 0.0) + value  # sum by (le)
    latency = {}
    for q in quantiles:
        value = histogram_quantile(q, per_bound.items())
        if math.isfinite(value):
            latency[q] = value
    return IntervalStats(rate, error_ratio, latency, elapsed)


class _Totals(Generic[K]):
    """Each counter series' increase since it was first seen, summed across resets as `increase()` does.

    Two totals taken at different scrapes subtract to the increase between them, so the scrapes
    in between can be forgotten without losing a reset among them.
    """

    def __init__(self) -> None:
        self._raw: dict[K, float] = {}  # the latest scrape's values, to tell a reset
        self._totals: dict[K, float] = {}
        self._seen: dict[K, float] = {}

    def advance(self, raw: Mapping[K, float], at: float) -> dict[K, float]:
        """The totals after a scrape at `at`, also of the series it no longer shows."""
        # a series gone from the page (a restarted process) keeps its total: it still counts in
        # the windows it was seen in
        totals = dict(self._totals)
        latest = {}
        for key, value in raw.items():
            if not math.isfinite(value):  # a broken reading would stay in the total for good: skip it
                if key in self._raw:
                    latest[key] = self._raw[key]
                continue
            totals[key] = totals.get(key, 0.0) + increase(self._raw.get(key, 0.0), value)
            latest[key] = value
            self._seen[key] = at
        self._raw = latest
        self._totals = totals
        return totals

    def forget(self, before: float) -> list[K]:
        """Drop the series not seen since `before`; their totals no longer change in any window after it."""
        gone = [key for key, seen in self._seen.items() if seen < before]
        for key in gone:
            del self._seen[key]
            del self._totals[key]
        return gone


@dataclass(frozen=True)
class _Point:
    at: float
    requests: dict[SeriesKey, float]
    buckets: dict[BucketKey, float]


def _delta(first: Mapping[K, float], last: Mapping[K, float]) -> dict[K, float]:
    # a series missing from `first` appeared after it: all of its total is new
    return {key: total - first.get(key, 0.0) for key, total in last.items()}


class RateWindow:
    """One target's scrapes over the last `window` seconds: rates, ratio and quantiles across all of them.

    As PromQL's `rate(x[window])` evaluated just after the newest scrape: the increase from the
    oldest scrape less than `window` old to the newest, counter resets included, over the seconds
    between the two (the scrape a whole window old is out, as in Prometheus's range, which a rule
    evaluation a moment after it no longer reaches). Until the scrapes span the window, the stats
    cover what they span (`IntervalStats.covered`). Memory is bounded: window/interval scrapes, at
    most `max_scrapes`, thinned evenly when more come (the warm-up's fast scrapes, a jittered
    schedule).
    """

    def __init__(self, window: float, interval: float, max_scrapes: int = MAX_SCRAPES) -> None:
        if not window > 0 or not interval > 0:
            raise ValueError(f"window ({window}) and interval ({interval}) must be above zero")
        self.window = window
        self.interval = interval
        # a scrape due a whole interval less than a window ago, a little early, still belongs in it
        self.slack = min(0.1 * interval, 0.1 * window)
        # a window of one interval still holds the scrape before the newest
        self.reach = max(window - self.slack, interval + self.slack)
        self.limit = max(2, min(max_scrapes, math.ceil(window / interval - 1e-9)))
        self._points: list[_Point] = []
        self._requests: _Totals[SeriesKey] = _Totals()
        self._buckets: _Totals[BucketKey] = _Totals()

    def __len__(self) -> int:
        return len(self._points)

    @property
    def covered(self) -> float:
        """Seconds between the oldest and the newest scrape kept."""
        return self._points[-1].at - self._points[0].at if self._points else 0.0

    @property
    def full(self) -> bool:
        """True once the scrapes span the window less one interval, all that a steady schedule keeps."""
        return self.covered >= self.window - self.interval - self.slack

    def add(self, scrape: Scrape, at: float) -> None:
        """Take a scrape made at `at` (seconds on a monotonic clock)."""
        if self._points:
            at = max(at, self._points[-1].at)  # a clock that ran back must not make a negative span
        horizon = at - self.reach
        while self._points and self._points[0].at < horizon:
            del self._points[0]
        # A series unseen since the oldest scrape kept has one total in all of them: dropped from
        # each, it counts from zero if it comes back, and memory stays bounded under label churn.
        oldest = self._points[0].at if self._points else at
        for key in self._requests.forget(oldest):
            for point in self._points:
                point.requests.pop(key, None)
        for bucket in self._buckets.forget(oldest):
            for point in self._points:
                point.buckets.pop(bucket, None)
        self._points.append(
            _Point(at, self._requests.advance(scrape.requests, at), self._buckets.advance(scrape.buckets, at))
        )
        while len(self._points) > self.limit:
            # forget the inner scrape whose neighbours lie closest: start and end stay exact
            inner = range(1, len(self._points) - 1)
            del self._points[min(inner, key=lambda i: self._points[i + 1].at - self._points[i - 1].at)]

    def stats(
        self, status_labels: Sequence[str] = ("status", "code"), quantiles: Sequence[float] = QUANTILES
    ) -> IntervalStats | None:
        """Rate, 5xx share and quantiles across the window's scrapes; None before there are two."""
        if len(self._points) < 2:
            return None
        first, last = self._points[0], self._points[-1]
        requests = _delta(first.requests, last.requests)
        buckets = _delta(first.buckets, last.buckets)
        return _stats(requests, buckets, last.at - first.at, status_labels, quantiles)
