"""Scraping a Prometheus metrics page every cycle, and publishing what happened since the last one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp

from agents.probe_checks import Outcome, display_url, failure_reason, fetch_text, short_detail
from agents.probe_config import ScrapeTarget
from agents.promscrape import Scrape, interval_stats, parse_scrape
from agents.runner import Check
from bus.events import Sample, Status

MAX_PAGE = 10 * 1024 * 1024  # a larger metrics page is refused whole, never read in part
QUANTILE_METRICS = {
    0.5: "http.latency_p50_seconds",
    0.95: "http.latency_p95_seconds",
    0.99: "http.latency_p99_seconds",
}


class ScrapeTracker:
    """Keeps each target's previous scrape, so that rates and quantiles cover one interval."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._previous: dict[str, tuple[Scrape, float]] = {}

    async def check(
        self, session: aiohttp.ClientSession, target: ScrapeTarget, headers: dict[str, str], timeout: float
    ) -> Outcome:
        """Read the metrics page; from the second scrape on, publish what happened in between."""
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
        previous = self._previous.get(target.name)
        self._previous[target.name] = (scrape, now)
        if previous is None:
            return outcome("ok", "first scrape: rates from the next one")
        samples = self._samples(target, previous, scrape, now)
        summary = ", ".join(f"{s.name.removeprefix('http.')} {s.value:g}" for s in samples) or "no traffic"
        return outcome("ok", summary, samples)

    @staticmethod
    def _samples(
        target: ScrapeTarget, previous: tuple[Scrape, float], scrape: Scrape, now: float
    ) -> list[Sample]:
        last, at = previous
        stats = interval_stats(last, scrape, now - at, target.status_labels, tuple(QUANTILE_METRICS))
        labels = {"check": target.check or target.name}
        samples = []
        if stats.requests_per_second is not None:
            samples.append(Sample("http.requests_per_second", round(stats.requests_per_second, 6), labels))
        if stats.error_ratio is not None:
            samples.append(Sample("http.error_ratio", round(stats.error_ratio, 6), labels))
        for quantile, seconds in stats.latency.items():
            samples.append(Sample(QUANTILE_METRICS[quantile], round(seconds, 6), labels))
        return samples
