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
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version

import aiohttp

from agents.probe_checks import HeaderError, Outcome, http_check, promql_query, resolve_headers, tcp_check
from agents.probe_config import AnyCheck, HttpCheck, ProbeAgentConfig, PromQLQuery, TcpCheck
from agents.probe_discovery import Discovery
from agents.probe_scrape import ScrapeTracker
from agents.runner import Check, Collection
from bus import vocabulary as vocab
from bus.redact import redact_text

__all__ = ["METRICS", "ProbeAgentConfig", "ProbeCollector"]

log = logging.getLogger(__name__)

METRICS = vocab.PROBE_METRICS  # what this agent publishes, declared where the wire lives

try:
    USER_AGENT = f"jarvis-monitor-probe/{version('jarvis-monitor')}"
except PackageNotFoundError:  # a source tree that was never installed
    USER_AGENT = "jarvis-monitor-probe"


class ProbeCollector:
    """Runs every configured check concurrently each cycle; call `close()` when done with it."""

    name = vocab.PROBE_AGENT

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
        self._scrapes = ScrapeTracker(config.interval.seconds, clock)
        self.discovery = Discovery(config.discovery) if config.discovery.enabled else None

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
        """Close the HTTP session and the engine connection; a later `collect()` opens new ones."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.discovery is not None:
            await self.discovery.close()

    async def collect(self) -> Collection:
        session = self._session_in_loop()
        slots = asyncio.Semaphore(self.config.concurrency)
        started: set[str] = set()
        checks: list[AnyCheck] = [check for _, check in self.config.all_checks()]
        collection = Collection()
        if self.discovery is not None:
            discovered = await self.discovery.refresh(self.config)
            checks += [check for _, check in discovered.run]
            collection.checks += discovered.decided
        tasks = {asyncio.create_task(self._run(check, session, slots, started)): check for check in checks}
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
            found = self.discovery.labels_of(check.name) if self.discovery is not None else {}
            # a discovered check says which container it came from
            collection.checks.append(replace(outcome.check, labels={**outcome.check.labels, **found}))
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
        return await self._scrapes.check(session, check, headers, timeout)
