"""One probe check each: an HTTP request, a TCP connect, a metrics page, a PromQL query.

A failed check is data: every function here returns an `Outcome` whose health check says what
went wrong, and raises only for bugs. Timeouts are the caller's (`asyncio.timeout`), so that
one clock covers connecting, sending and reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec

from agents.probe_config import HttpCheck, HttpSettings, PromQLQuery, TcpCheck
from agents.probe_tls import served_cert_expiry
from agents.runner import Check
from bus import vocabulary as vocab
from bus.events import Sample, Status
from bus.redact import redact_text, redact_url

MAX_BODY = 1024 * 1024  # enough for any health page; a runaway body must not eat the agent's memory
MAX_DETAIL = 300


@dataclass
class Outcome:
    """A check's health event and the samples it measured."""

    check: Check
    samples: list[Sample] = field(default_factory=list)


class HeaderError(ValueError):
    """A header's value was to come from an environment variable that is not set."""


def display_url(url: str) -> str:
    """A URL fit for labels and logs: no credentials, no query string (tokens travel there too)."""
    parts = urlsplit(redact_url(url))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def resolve_headers(settings: HttpSettings, environ: Mapping[str, str]) -> dict[str, str]:
    """The request headers, with those of `headers_from_env` read from the environment."""
    headers = dict(settings.headers)
    for header, variable in settings.headers_from_env.items():
        value = environ.get(variable)
        if value is None:
            raise HeaderError(f"environment variable {variable} (for header {header}) is not set")
        headers[header] = value
    return headers


_URL_QUERY = re.compile(r"""(\w+://[^\s?#'"]*)[?#][^\s'"]*""")


def short_detail(text: str, limit: int = MAX_DETAIL) -> str:
    """Outside text fit for a detail: no URL credentials or query strings, at most `limit` long."""
    text = _URL_QUERY.sub(r"\1", redact_text(text.strip()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failure_reason(exc: BaseException, timeout: float) -> str:
    """What an operator needs to read about a failed request or connection."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {short_detail(str(exc))}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, aiohttp.ClientConnectorError | OSError):
        return f"cannot connect: {short_detail(str(exc))}"
    return f"request failed: {short_detail(str(exc) or type(exc).__name__)}"


def _expected(check: HttpCheck) -> str:
    return ", ".join(map(str, check.expected_status)) if check.expected_status else "2xx or 3xx"


async def _read_upto(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body, at most `limit` bytes of it, and whether there was more."""
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


async def _read_bytes(response: aiohttp.ClientResponse) -> bytes:
    """The body, cut at MAX_BODY."""
    return (await _read_upto(response, MAX_BODY))[0]


def _text(data: bytes, charset: str | None) -> str:
    """The body as text in its declared charset; one Python does not know is read as UTF-8."""
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


async def _read_body(response: aiohttp.ClientResponse) -> str:
    return _text(await _read_bytes(response), response.charset)


def judge_response(check: HttpCheck, status: int, body: str, latency: float) -> tuple[Status, str]:
    """Status and detail of a response: wrong status or body is critical, slow is a warning."""
    if not check.accepts(status):
        return "critical", f"status {status}, expected {_expected(check)}"
    if check.body_contains is not None and check.body_contains not in body:
        return (
            "critical",
            f"status {status} but the body does not contain {short_detail(check.body_contains, 80)!r}",
        )
    if check.body_regex is not None and not re.search(check.body_regex, body):
        return (
            "critical",
            f"status {status} but the body does not match {short_detail(check.body_regex, 80)!r}",
        )
    if check.warn_latency is not None and latency > check.warn_latency.seconds:
        return "warning", f"status {status} but slow: {latency:.3f}s (warning above {check.warn_latency})"
    return "ok", f"status {status} in {latency:.3f}s"


async def http_check(
    session: aiohttp.ClientSession, check: HttpCheck, headers: dict[str, str], timeout: float
) -> Outcome:
    """Request the URL, read the body, and judge status, body and latency."""
    url = display_url(check.url)
    labels = {"check": check.name, "url": url}
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            async with session.request(
                check.method,
                check.url,
                headers=headers,
                allow_redirects=check.follow_redirects,
                ssl=check.verify_tls,
            ) as response:
                body = await _read_body(response)
                status = response.status
    except Exception as exc:
        latency = time.perf_counter() - started
        reason = failure_reason(exc, timeout)
        return Outcome(Check(check.name, "critical", latency, reason, labels={"url": url}))
    latency = time.perf_counter() - started
    verdict, detail = judge_response(check, status, body, latency)
    samples = [Sample(vocab.HTTP_LATENCY, round(latency, 6), labels)]
    not_after = await served_cert_expiry(check.url, timeout - latency)
    if not_after is not None:
        samples.append(cert_expiry_sample(check.name, not_after, time.time()))
    return Outcome(Check(check.name, verdict, latency, detail, labels={"url": url}), samples)


def cert_expiry_sample(check: str, not_after: float, now: float) -> Sample:
    """Seconds until the served certificate expires (negative once it has), and the day it does."""
    expires = time.strftime("%Y-%m-%d", time.gmtime(not_after))
    return Sample(vocab.TLS_CERT_EXPIRY, round(not_after - now), {"check": check, "expires": expires})


async def tcp_check(check: TcpCheck, timeout: float) -> Outcome:
    """Open a TCP connection to host:port and close it again."""
    address = f"{check.host}:{check.port}"
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(check.host, check.port)
    except Exception as exc:
        latency = time.perf_counter() - started
        return Outcome(
            Check(check.name, "critical", latency, failure_reason(exc, timeout), labels={"address": address})
        )
    latency = time.perf_counter() - started
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    status: Status = "ok"
    detail = f"connected in {latency:.3f}s"
    if check.warn_latency is not None and latency > check.warn_latency.seconds:
        status, detail = "warning", f"connected but slow: {latency:.3f}s (warning above {check.warn_latency})"
    return Outcome(
        Check(check.name, status, latency, detail, labels={"address": address}),
        [Sample(vocab.TCP_CONNECT, round(latency, 6), {"check": check.name, "address": address})],
    )


async def fetch_text(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], verify_tls: bool, limit: int
) -> tuple[int, str | None]:
    """GET a page: its status and text; None for a page larger than `limit` bytes, since any
    part of it would be read wrong (a number cut short is another number)."""
    async with session.get(url, headers=headers, ssl=verify_tls) as response:
        data, cut = await _read_upto(response, limit)
        return response.status, None if cut else _text(data, response.charset)


# PromQL --------------------------------------------------------------------------------------


class PromQLError(Exception):
    """The query did not give a usable result; the text is what Prometheus said."""

    def __init__(self, detail: str, status: Status = "critical") -> None:
        super().__init__(detail)
        self.status = status


class _Data(msgspec.Struct, rename="camel"):
    result_type: str
    result: Any


class _Response(msgspec.Struct, rename="camel"):
    status: str
    data: _Data | None = None
    error_type: str = ""
    error: str = ""


class _VectorElement(msgspec.Struct):
    value: tuple[float, str]
    metric: dict[str, str] = {}


def parse_promql_response(http_status: int, body: bytes) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of each series an instant query returned; PromQLError with the API's text.

    `__name__` is left out of the labels (the sample has its own name); NaN and infinite
    values are skipped, as JSON cannot carry them.
    """
    try:
        response = msgspec.json.decode(body, type=_Response)
    except msgspec.DecodeError:
        raise PromQLError(
            f"HTTP {http_status}, not a Prometheus API response: "
            f"{short_detail(body.decode(errors='replace'), 120)!r}"
        ) from None
    except msgspec.ValidationError as exc:
        raise PromQLError(f"HTTP {http_status}, unexpected Prometheus API response: {exc}") from None
    if response.status != "success" or response.data is None:
        kind = f"{response.error_type}: " if response.error_type else ""
        raise PromQLError(
            f"Prometheus refused the query (HTTP {http_status}): {kind}{short_detail(response.error)}"
        )
    data = response.data
    try:
        series: list[tuple[dict[str, str], float]]
        if data.result_type == "scalar":
            series = [({}, float(msgspec.convert(data.result, tuple[float, str])[1]))]
        elif data.result_type == "vector":
            elements = msgspec.convert(data.result, list[_VectorElement])
            series = [
                ({k: v for k, v in e.metric.items() if k != "__name__"}, float(e.value[1])) for e in elements
            ]
        else:
            raise PromQLError(
                f"the query returns a {data.result_type}; "
                "use an expression that gives an instant vector or a scalar",
                "unknown",
            )
    except (msgspec.ValidationError, ValueError) as exc:
        raise PromQLError(f"unexpected {data.result_type} result: {exc}") from None
    return [(labels, value) for labels, value in series if math.isfinite(value)]


async def promql_query(
    session: aiohttp.ClientSession, query: PromQLQuery, headers: dict[str, str], timeout: float
) -> Outcome:
    """Run one instant query; each series of the result becomes a sample of the query's metric."""
    server = display_url(query.server)
    endpoint = query.server.rstrip("/") + "/api/v1/query"
    # Prometheus stops evaluating at its own timeout too, and says so, instead of being cut off.
    # (Prometheus durations are whole numbers with a unit: "4800ms", not "4.8s".)
    params = {"query": query.query, "timeout": f"{max(round((timeout - 0.2) * 1000), 100)}ms"}
    labels = {"server": server}
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            async with session.get(
                endpoint, params=params, headers=headers, ssl=query.verify_tls
            ) as response:
                http_status, body = response.status, await _read_bytes(response)
    except Exception as exc:
        detail = f"cannot query Prometheus at {server}: {failure_reason(exc, timeout)}"
        return Outcome(Check(query.name, "critical", time.perf_counter() - started, detail, labels=labels))
    latency = time.perf_counter() - started
    try:
        series = parse_promql_response(http_status, body)
    except PromQLError as exc:
        return Outcome(Check(query.name, exc.status, latency, str(exc), labels=labels))
    samples = [Sample(query.metric_name, value, series_labels) for series_labels, value in series]
    detail = f"{len(samples)} series" if samples else "no series: the query matched nothing"
    return Outcome(Check(query.name, "ok", latency, detail, labels=labels), samples)
