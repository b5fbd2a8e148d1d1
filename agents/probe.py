"""The probe agent (aiohttp, asyncio): HTTP and TCP checks, Prometheus scrapes and PromQL queries.

Every check runs concurrently (at most `concurrency` at once) under its own timeout, so one
hung target costs only its own result: the cycle ends by the config's deadline whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import traceback
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version

import aiohttp

from agents.metrics import MetricSpec, catalog
from agents.probe_checks import (
    HeaderError,
    Outcome,
    display_url,
    failure_reason,
    fetch_text,
    http_check,
    promql_query,
    resolve_headers,
    tcp_check,
)
from agents.probe_config import (
    AnyCheck,
    HttpCheck,
    ProbeAgentConfig,
    PromQLQuery,
    ScrapeTarget,
    TcpCheck,
)
from agents.promscrape import Scrape, interval_stats, parse_scrape
from agents.runner import Check, Collection
from bus.events import Sample
from bus.redact import redact_text

__all__ = ["METRICS", "ProbeAgentConfig", "ProbeCollector"]

log = logging.getLogger(__name__)

METRICS = catalog(
    MetricSpec(
        "http.latency_seconds",
        "seconds",
        "time until an HTTP check's response was read, only when a response came",
        ("check", "url"),
    ),
    MetricSpec("tcp.connect_seconds", "seconds", "time to open a TCP connection", ("check", "address")),
    MetricSpec(
        "http.requests_per_second",
        "requests/s",
        "requests a scraped target served since the previous scrape (its request counter)",
        ("check",),
    ),
    MetricSpec(
        "http.error_ratio",
        "ratio",
        "share of those requests answered 5xx (0 to 1); absent without requests or status label",
        ("check",),
    ),
    MetricSpec(
        "http.latency_p50_seconds",
        "seconds",
        "median request duration since the previous scrape, from the histogram's buckets",
        ("check",),
    ),
    MetricSpec(
        "http.latency_p95_seconds",
        "seconds",
        "95th percentile request duration since the previous scrape (histogram_quantile)",
        ("check",),
    ),
    MetricSpec(
        "http.latency_p99_seconds",
        "seconds",
        "99th percentile request duration since the previous scrape (histogram_quantile)",
        ("check",),
    ),
    MetricSpec(
        "promql.<name>",
        "as queried",
        "one sample per series a configured PromQL query returns (or the query's `metric` name), "
        "with the series' labels",
    ),
)

QUANTILE_METRICS = {
    0.5: "http.latency_p50_seconds",
    0.95: "http.latency_p95_seconds",
    0.99: "http.latency_p99_seconds",
}

try:
    USER_AGENT = f"jarvis-monitor-probe/{version('jarvis-monitor')}"
except PackageNotFoundError:  # a source tree that was never installed
    USER_AGENT = "jarvis-monitor-probe"


class ProbeCollector:
    """Runs every configured check concurrently each cycle; call `close()` when done with it."""

    name = "probe"

    def __init__(
        self,
        config: ProbeAgentConfig,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self._environ = environ
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._scrapes: dict[str, tuple[Scrape, float]] = {}  # the previous scrape of each target

    def _session_in_loop(self) -> aiohttp.ClientSession:
        """The one session, made on first use inside the running loop (aiohttp binds it there)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session_loop = loop  # a session of a finished loop cannot be used, nor closed
            self._session = aiohttp.ClientSession(
                # A fresh connection per check: what a new visitor would get, and no stale
                # keep-alive connection closed by the server between cycles to report as down.
                connector=aiohttp.TCPConnector(limit=self.config.concurrency, force_close=True),
                cookie_jar=aiohttp.DummyCookieJar(),  # no check may depend on an earlier one
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session; a later `collect()` opens a new one."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def collect(self) -> Collection:
        session = self._session_in_loop()
        slots = asyncio.Semaphore(self.config.concurrency)
        started: set[str] = set()
        tasks = {
            asyncio.create_task(self._run(check, session, slots, started)): check
            for _, check in self.config.all_checks()
        }
        collection = Collection()
        if not tasks:
            return collection
        try:
            done, _ = await asyncio.wait(tasks, timeout=self.config.deadline)
        finally:  # also when the run loop abandons this collection: no check may outlive it
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task, check in tasks.items():
            cut_off = task not in done
            outcome = Outcome(self._cut_off(check, check.name in started)) if cut_off else task.result()
            collection.checks.append(outcome.check)
            collection.samples += outcome.samples
        return collection

    def _cut_off(self, check: AnyCheck, started: bool) -> Check:
        """A check the cycle's deadline ended: started late for want of a free slot, or never started."""
        deadline = f"{self.config.deadline:g}s"
        if started:
            return Check(check.name, "critical", detail=f"timed out: the cycle's {deadline} deadline passed")
        return Check(
            check.name,
            "unknown",
            detail=f"not checked: all {self.config.concurrency} slots stayed busy until the cycle's "
            f"{deadline} deadline; raise concurrency",
        )

    async def _run(
        self, check: AnyCheck, session: aiohttp.ClientSession, slots: asyncio.Semaphore, started: set[str]
    ) -> Outcome:
        async with slots:
            started.add(check.name)
            timeout = self.config.timeout_of(check)
            try:
                return await self._dispatch(check, session, timeout)
            except HeaderError as exc:
                return Outcome(Check(check.name, "unknown", detail=str(exc)))
            except Exception as exc:  # a bug in one check must not cost the others their results
                log.error("probe check %r failed: %s", check.name, redact_text(traceback.format_exc()))
                return Outcome(Check(check.name, "unknown", detail=f"check failed: {redact_text(repr(exc))}"))

    async def _dispatch(self, check: AnyCheck, session: aiohttp.ClientSession, timeout: float) -> Outcome:
        if isinstance(check, TcpCheck):
            return await tcp_check(check, timeout)
        headers = resolve_headers(check, self._environ)
        if isinstance(check, HttpCheck):
            return await http_check(session, check, headers, timeout)
        if isinstance(check, PromQLQuery):
            return await promql_query(session, check, headers, timeout)
        return await self._scrape(check, session, headers, timeout)

    async def _scrape(
        self, target: ScrapeTarget, session: aiohttp.ClientSession, headers: dict[str, str], timeout: float
    ) -> Outcome:
        """Read the metrics page; from the second scrape on, publish what happened in between."""
        labels = {"url": display_url(target.url)}
        begun = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                status, text = await fetch_text(session, target.url, headers, target.verify_tls)
        except Exception as exc:
            reason = failure_reason(exc, timeout)
            return Outcome(Check(target.name, "critical", time.perf_counter() - begun, reason, labels=labels))
        latency = time.perf_counter() - begun
        now = self.clock()
        if status != 200:
            return Outcome(
                Check(
                    target.name, "critical", latency, f"status {status} from the metrics page", labels=labels
                )
            )
        try:
            scrape = parse_scrape(text, target.requests_metric, target.duration_metric)
        except ValueError as exc:
            detail = f"the metrics page is not in Prometheus text format: {redact_text(str(exc))[:200]}"
            return Outcome(Check(target.name, "critical", latency, detail, labels=labels))
        if not scrape.requests and not scrape.buckets:
            detail = f"neither {target.requests_metric} nor {target.duration_metric} is on the metrics page"
            return Outcome(Check(target.name, "warning", latency, detail, labels=labels))
        previous = self._scrapes.get(target.name)
        self._scrapes[target.name] = (scrape, now)
        if previous is None:
            return Outcome(
                Check(target.name, "ok", latency, "first scrape: rates from the next one", labels=labels)
            )
        samples = self._interval_samples(target, previous, scrape, now)
        summary = ", ".join(f"{s.name.removeprefix('http.')} {s.value:g}" for s in samples) or "no traffic"
        return Outcome(Check(target.name, "ok", latency, summary, labels=labels), samples)

    def _interval_samples(
        self, target: ScrapeTarget, previous: tuple[Scrape, float], scrape: Scrape, now: float
    ) -> list[Sample]:
        stats = interval_stats(
            previous[0], scrape, now - previous[1], target.status_labels, tuple(QUANTILE_METRICS)
        )
        labels = {"check": target.name}
        samples = []
        if stats.requests_per_second is not None:
            samples.append(Sample("http.requests_per_second", round(stats.requests_per_second, 6), labels))
        if stats.error_ratio is not None:
            samples.append(Sample("http.error_ratio", round(stats.error_ratio, 6), labels))
        for quantile, seconds in stats.latency.items():
            samples.append(Sample(QUANTILE_METRICS[quantile], round(seconds, 6), labels))
        return samples
