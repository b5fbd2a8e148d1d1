"""Real probe targets on 127.0.0.1 for tests and benchmarks: aiohttp servers, a closed port, an app
exposing Prometheus metrics from prometheus_client under known traffic."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class MetricsApp:
    """What the JARVIS backend exposes: a request counter by status and a duration histogram."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("jarvis_requests", "requests served", ["status"], registry=self.registry)
        self.duration = Histogram(
            "jarvis_request_duration_seconds",
            "request duration",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def serve(self, count: int, status: str, seconds: float) -> None:
        """Record `count` requests as if they had been served."""
        for _ in range(count):
            self.requests.labels(status).inc()
            self.duration.observe(seconds)

    def page(self) -> bytes:
        return generate_latest(self.registry)


class Targets:
    """One aiohttp server with a route per kind of target; `base` is its http://127.0.0.1:PORT."""

    def __init__(self) -> None:
        self.metrics = MetricsApp()
        self.release = asyncio.Event()  # the hung route answers only once this is set
        self.hung_requests = 0
        self.hung_abandoned = 0  # hung requests whose client went away
        self.seen_headers: list[dict[str, str]] = []
        self.padded_total = 123456  # the request counter of /padded-metrics
        self.base = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._healthy)
        app.router.add_get("/fail", self._fail)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/hang", self._hang)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/echo-headers", self._echo_headers)
        app.router.add_get("/page/{n}", self._healthy)
        app.router.add_get("/padded-metrics", self._padded_metrics)
        app.router.add_get("/odd-charset", self._odd_charset)
        return app

    async def _healthy(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _fail(self, request: web.Request) -> web.Response:
        return web.Response(status=500, text="internal error")

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("seconds", "0.3")))
        return web.json_response({"status": "ok"})

    async def _hang(self, request: web.Request) -> web.Response:
        self.hung_requests += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:  # aiohttp cancels the handler when the client disconnects
            self.hung_abandoned += 1
            raise
        return web.Response(text="too late")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.page(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _padded_metrics(self, request: web.Request) -> web.Response:
        """A metrics page whose 1 MiB mark falls inside the digits of its request counter."""
        tail = (
            f'# TYPE jarvis_requests counter\njarvis_requests_total{{status="200"}} {self.padded_total}.0\n'
        )
        cut_after = tail.index("} ") + 5  # three digits of the value before 1 MiB
        padding = 1024 * 1024 - cut_after - 3  # the comment line's "# " and newline
        page = f"# {'x' * padding}\n{tail}"
        return web.Response(text=page, content_type="text/plain")

    async def _odd_charset(self, request: web.Request) -> web.Response:
        return web.Response(
            body=b'{"status":"ok"}', headers={"Content-Type": "application/json; charset=x-no-such-charset"}
        )

    async def _echo_headers(self, request: web.Request) -> web.Response:
        self.seen_headers.append(dict(request.headers))
        return web.Response(text="ok")

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@contextlib.asynccontextmanager
async def running_targets(tls: ssl.SSLContext | None = None) -> AsyncIterator[Targets]:
    """The targets served on a free loopback port until the block ends; over HTTPS with `tls`."""
    targets = Targets()
    runner = web.AppRunner(targets.app(), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    targets.base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        yield targets
    finally:
        targets.release.set()
        await runner.cleanup()
