"""Scraping a Prometheus metrics page every cycle, and publishing its rates over the target's window."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp

from agents.probe_checks import Outcome, display_url, failure_reason, fetch_text, short_detail
from agents.probe_config import ScrapeTarget
from agents.promscrape import IntervalStats, RateWindow, parse_scrape
from agents.runner import Check
from bus import vocabulary as vocab
from bus.events import Sample, Status
from bus.units import Duration

MAX_PAGE = 10 * 1024 * 1024  # a larger metrics page is refused whole, never read in part
QUANTILE_METRICS = {0.5: vocab.HTTP_LATENCY_P50, 0.95: vocab.HTTP_LATENCY_P95, 0.99: vocab.HTTP_LATENCY_P99}


class ScrapeTracker:
    """Keeps each target's recent scrapes, so that rates and quantiles cover its `rate_window`."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._windows: dict[str, RateWindow] = {}

    async def check(
        self, session: aiohttp.ClientSession, target: ScrapeTarget, headers: dict[str, str], timeout: float
    ) -> Outcome:
        """Read the metrics page; from the second scrape on, publish the rates over the target's window."""
        labels = {"url": display_url(target.url)}
        begun = time.perf_counter()

        def outcome(status: Status, detail: str, samples: list[Sample] | None = None) -> Outcome:
            latency = time.perf_counter() - begun
            return Outcome(Check(target.name, status, latency, detail, labels=labels), samples or [])

        try:
            async with asyncio.timeout(timeout):
                status, text = await fetch_text(session, target.url, headers, target.verify_tls, MAX_PAGE)
        except Exception as exc:
            return outcome("critical", failure_reason(exc, timeout))
        now = self.clock()
        if status != 200:
            return outcome("critical", f"status {status} from the metrics page")
        if text is None:
            return outcome("critical", f"the metrics page is larger than {MAX_PAGE:,} bytes; not read")
        try:
            # off the event loop: a large page takes a quarter of a second a megabyte to parse
            scrape = await asyncio.to_thread(
                parse_scrape, text, target.requests_metric, target.duration_metric
            )
        except ValueError as exc:
            return outcome(
                "critical", f"the metrics page is not in Prometheus text format: {short_detail(str(exc))}"
            )
        if not scrape.requests and not scrape.buckets:
            return outcome(
                "warning",
                f"neither {target.requests_metric} nor {target.duration_metric} is on the metrics page",
            )
        window = self._window_of(target)
        first = len(window) == 0
        window.add(scrape, now)
        stats = window.stats(target.status_labels, tuple(QUANTILE_METRICS))
        if stats is None:
            if first:
                return outcome("ok", "first scrape: rates from the next one")
            return outcome("ok", f"no other scrape in the last {target.rate_window}: rates from the next one")
        samples = _samples(target, stats)
        return outcome("ok", _summary(target, samples, stats.covered, window.full), samples)

    def _window_of(self, target: ScrapeTarget) -> RateWindow:
        window = self._windows.get(target.name)
        if window is None:
            window = self._windows[target.name] = RateWindow(target.rate_window.seconds, self.interval)
        return window


def _samples(target: ScrapeTarget, stats: IntervalStats) -> list[Sample]:
    labels = {"check": target.check or target.name}
    samples = []
    if stats.requests_per_second is not None:
        samples.append(Sample(vocab.HTTP_REQUEST_RATE, round(stats.requests_per_second, 6), labels))
    if stats.error_ratio is not None:
        samples.append(Sample(vocab.HTTP_ERROR_RATIO, round(stats.error_ratio, 6), labels))
    for quantile, seconds in stats.latency.items():
        samples.append(Sample(QUANTILE_METRICS[quantile], round(seconds, 6), labels))
    if samples:
        # until the window is full, the rates cover less of it: say how much, beside them
        samples.append(Sample(vocab.HTTP_RATE_WINDOW, round(stats.covered, 3), labels))
    return samples


def _summary(target: ScrapeTarget, samples: list[Sample], covered: float, full: bool) -> str:
    rates = [
        f"{s.name.removeprefix('http.')} {s.value:g}" for s in samples if s.name != vocab.HTTP_RATE_WINDOW
    ]
    span = Duration(round(covered, 1))
    if not full:
        return f"{', '.join(rates) or 'no traffic'} over {span} of the {target.rate_window} window"
    return f"{', '.join(rates) or 'no traffic'} over {span}"
