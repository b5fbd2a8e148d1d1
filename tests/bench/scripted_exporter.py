"""The service the versus bench watches: simulated traffic driven by a phase script, on 127.0.0.1.

`/metrics` (its own port, as an exporter sidecar would serve it) exposes a request counter by
status and a duration histogram under the names the probe's scrape targets read by default;
`/health` (another port) answers 200, or 503 while the check fails, and refuses connections
during an outage. Traffic is simulated at a fixed rate: no request is made, the counters are
advanced by wall time whenever the page is read, from a seeded generator, so every scraper reads
the same history whenever it scrapes.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REQUESTS_PER_SECOND = 20
# Fine around the latency rule's 2 s, so the interpolated P95 of the latency phase lands near 3 s.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0, 10.0)
REQUESTS_METRIC = "jarvis_requests"  # exposed as jarvis_requests_total, the scrape target's default
DURATION_METRIC = "jarvis_request_duration_seconds"
HEALTHY_ERROR_RATIO = 0.01
HEALTHY_LATENCY = (0.02, 0.2)  # uniform: P95 about 0.19 s
SLOW_LATENCY = (0.5, 3.16)  # uniform: P95 about 3.0 s

Health = Literal["up", "failing", "refused"]


@dataclass(frozen=True)
class Phase:
    """A stretch of the script; `incident` names the jarvis rule it should fire (None: a healthy gap)."""

    name: str
    seconds: float
    incident: str | None = None
    error_ratio: float = HEALTHY_ERROR_RATIO
    latency: tuple[float, float] = HEALTHY_LATENCY
    health: Health = "up"
    flap: tuple[float, float] | None = None  # (down, up) seconds, repeated from the phase's start
    traffic: bool = True  # False: the service is down and serves nothing

    @property
    def short(self) -> str:
        """The name without its parenthesis: `flapping`."""
        return self.name.split(" (")[0]

    def health_at(self, offset: float) -> Health:
        if self.flap is None:
            return self.health
        down, up = self.flap
        return "failing" if offset % (down + up) < down else "up"


WARMUP = Phase("warm-up", math.inf)  # before the script starts and after it ends


def script(quick: bool = False) -> list[Phase]:
    """Healthy gaps around four incidents; `quick` shortens the gaps and the errors and latency phases."""
    gap = 75.0 if quick else 90.0
    flapping = Phase(
        "flapping (health check down 20 s / up 20 s, 5 times)",
        4 * 40 + 20,  # ends with the fifth outage: the incident is over when the check is back for good
        incident="service_down",
        flap=(20, 20),
    )
    return [
        Phase("healthy", 30 if quick else 60),
        Phase("errors (10 % 5xx)", 90 if quick else 120, incident="http_error_rate_high", error_ratio=0.10),
        Phase("healthy", gap),
        Phase(
            "latency (P95 at 3 s)",
            45 if quick else 60,
            incident="http_latency_p95_high",
            latency=SLOW_LATENCY,
        ),
        Phase("healthy", gap),
        Phase("outage (service down 60 s)", 60, incident="service_down", health="refused", traffic=False),
        Phase("healthy", gap),
        flapping,
        Phase("healthy", 90 if quick else 120),
    ]


@dataclass(frozen=True)
class Span:
    """A phase placed on the script's clock: seconds from the script's start."""

    index: int
    phase: Phase
    start: float
    end: float


def timeline(phases: Sequence[Phase]) -> list[Span]:
    spans, at = [], 0.0
    for index, phase in enumerate(phases):
        spans.append(Span(index, phase, at, at + phase.seconds))
        at += phase.seconds
    return spans


class Script:
    """Which phase holds at a moment of the monotonic clock, once the script has begun."""

    def __init__(self, phases: Sequence[Phase], clock: Callable[[], float] = time.monotonic) -> None:
        self.spans = timeline(phases)
        self.clock = clock
        self.begun: float | None = None

    @property
    def seconds(self) -> float:
        return self.spans[-1].end

    def begin(self) -> float:
        self.begun = self.clock()
        return self.begun

    def at(self, moment: float) -> tuple[Phase, float]:
        """The phase holding at `moment` and the seconds into it; the warm-up outside the script."""
        if self.begun is None:
            return WARMUP, 0.0
        offset = moment - self.begun
        for span in self.spans:
            if span.start <= offset < span.end:
                return span.phase, offset - span.start
        return WARMUP, 0.0


class Traffic:
    """Simulated requests at a fixed rate, drawn from a seeded generator in order of arrival."""

    def __init__(self, script: Script, seed: int, rate: float = REQUESTS_PER_SECOND) -> None:
        self.script = script
        self.rate = rate
        self.random = random.Random(seed)
        self.origin = script.clock()
        self.arrived = 0  # requests whose arrival time has passed, served or not
        self.registry = CollectorRegistry()
        self.requests = Counter(REQUESTS_METRIC, "requests served", ["status"], registry=self.registry)
        self.duration = Histogram(
            DURATION_METRIC, "request duration", buckets=LATENCY_BUCKETS, registry=self.registry
        )

    def advance(self) -> None:
        """Serve every request that has arrived by now, each under the phase of its arrival time."""
        due = math.floor((self.script.clock() - self.origin) * self.rate)
        while self.arrived < due:
            arrival = self.origin + self.arrived / self.rate
            self.arrived += 1
            phase, _ = self.script.at(arrival)
            if not phase.traffic:
                continue
            failed = self.random.random() < phase.error_ratio
            self.requests.labels("500" if failed else "200").inc()
            self.duration.observe(self.random.uniform(*phase.latency))

    def page(self) -> bytes:
        self.advance()
        return generate_latest(self.registry)


class ScriptedExporter:
    """`/metrics` and `/health` of the scripted service, each on its own free loopback port."""

    def __init__(self, script: Script, seed: int) -> None:
        self.script = script
        self.traffic = Traffic(script, seed)
        self._metrics = web.AppRunner(self._app("/metrics", self._page), access_log=None)
        self._health = web.AppRunner(self._app("/health", self._check), access_log=None)
        self._health_site: web.TCPSite | None = None
        self.metrics_port = 0
        self.health_port = 0
        self.prometheus_scrapes: list[float] = []  # wall times of Prometheus's own /metrics scrapes

    @staticmethod
    def _app(path: str, handler: Callable[[web.Request], object]) -> web.Application:
        app = web.Application()
        app.router.add_get(path, handler)  # type: ignore[arg-type]
        return app

    async def _page(self, request: web.Request) -> web.Response:
        if request.headers.get("User-Agent", "").startswith("Prometheus/"):
            self.prometheus_scrapes.append(time.time())
        return web.Response(body=self.traffic.page(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _check(self, request: web.Request) -> web.Response:
        phase, offset = self.script.at(self.script.clock())
        if phase.health_at(offset) == "up":
            return web.Response(text="ok")
        return web.Response(status=503, text="unavailable")

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/health"

    async def start(self) -> None:
        await self._metrics.setup()
        site = web.TCPSite(self._metrics, "127.0.0.1", 0)
        await site.start()
        self.metrics_port = self._metrics.addresses[0][1]
        await self._health.setup()
        await self.listen(True)

    async def listen(self, on: bool) -> None:
        """Open or close the health port: closed, every check is refused, as for a dead service."""
        if on and self._health_site is None:
            self._health_site = web.TCPSite(self._health, "127.0.0.1", self.health_port)
            await self._health_site.start()
            self.health_port = self._health.addresses[0][1]
        elif not on and self._health_site is not None:
            await self._health_site.stop()
            self._health_site = None

    async def close(self) -> None:
        await self._health.cleanup()
        await self._metrics.cleanup()
