"""The probe agent's config: HTTP and TCP checks, Prometheus scrape targets and PromQL queries."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from agents.runner import AgentConfig
from bus import vocabulary as vocab
from bus.limits import MAX_NAME
from bus.redact import redact_url
from bus.subjects import sanitize_token
from bus.units import Duration

HTTP_SCHEMES = ("http", "https")
DEFAULT_CHECK_TIMEOUT = 5.0
_METHOD = re.compile(r"[A-Z]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_METRIC_TOKEN = re.compile(r"[a-z][a-z0-9_]*")
_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")


def validate_http_url(url: str) -> str:
    """Return `url` if it is an absolute http(s) URL with a host, else raise ValueError."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - a port that is not a number raises here
        host = parts.hostname
    except ValueError:
        host = None
    if parts.scheme not in HTTP_SCHEMES or not host or re.search(r"\s", url):
        raise ValueError(f"invalid URL {redact_url(url)!r}: write it as http://host:port/path or https://...")
    return url


class HttpSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What every HTTP request of the probe can set: headers, timeout, TLS verification."""

    headers: Annotated[
        dict[str, str],
        Meta(
            description="request headers; never put secrets here", examples=[{"Accept": "application/json"}]
        ),
    ] = msgspec.field(default_factory=dict)
    headers_from_env: Annotated[
        dict[str, str],
        Meta(
            description="headers whose value is read from an environment variable (header = "
            "VARIABLE), for tokens; the value is never logged",
            examples=[{"Authorization": "JARVIS_BACKEND_AUTH"}],
        ),
    ] = msgspec.field(default_factory=dict)
    timeout: Annotated[
        Duration | None,
        Meta(description="time allowed for the request; unset: the probe's check_timeout", examples=["3s"]),
    ] = None
    verify_tls: Annotated[bool, Meta(description="verify the server's TLS certificate")] = True

    def __post_init__(self) -> None:
        for header in [*self.headers, *self.headers_from_env]:
            if not _HEADER_NAME.fullmatch(header):
                raise ValueError(f"invalid header name {header!r}")
        overlap = sorted(set(self.headers) & set(self.headers_from_env))
        if overlap:
            raise ValueError(f"header {overlap[0]!r} is set in both headers and headers_from_env")
        for variable in self.headers_from_env.values():
            if not _ENV_NAME.fullmatch(variable):
                raise ValueError(f"headers_from_env: {variable!r} is not an environment variable name")


class HttpCheck(HttpSettings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, description="check name: the health event's target")]
    url: Annotated[str, Meta(description="URL to request", examples=["http://127.0.0.1:8000/health"])]
    method: Annotated[str, Meta(description="HTTP method")] = "GET"
    expected_status: Annotated[
        list[Annotated[int, Meta(ge=100, le=599)]],
        Meta(description="status codes that mean up; empty: any 2xx or 3xx", examples=[[200, 204]]),
    ] = msgspec.field(default_factory=list)
    follow_redirects: Annotated[bool, Meta(description="follow redirects and judge the final response")] = (
        True
    )
    body_contains: Annotated[
        str | None,
        Meta(description="text the response body must contain", examples=['"status":"ok"']),
    ] = None
    body_regex: Annotated[
        str | None,
        Meta(description="regular expression the response body must match (search)", examples=["ok|healthy"]),
    ] = None
    warn_latency: Annotated[
        Duration | None,
        Meta(description="a response slower than this is a warning", examples=["1s"]),
    ] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_http_url(self.url)
        if not _METHOD.fullmatch(self.method):
            raise ValueError(f"invalid method {self.method!r}: write it in capitals, as GET or HEAD")
        if self.body_regex is not None:
            try:
                re.compile(self.body_regex)
            except re.error as exc:
                raise ValueError(
                    f"body_regex {self.body_regex!r} is not a valid regular expression: {exc}"
                ) from None

    def accepts(self, status: int) -> bool:
        return status in self.expected_status if self.expected_status else 200 <= status < 400


class TcpCheck(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, description="check name: the health event's target")]
    host: Annotated[str, Meta(min_length=1, description="host name or address", examples=["127.0.0.1"])]
    port: Annotated[int, Meta(ge=1, le=65535, description="TCP port", examples=[5432])]
    timeout: Annotated[
        Duration | None,
        Meta(description="time allowed to connect; unset: the probe's check_timeout", examples=["3s"]),
    ] = None
    warn_latency: Annotated[
        Duration | None,
        Meta(description="a connection slower than this is a warning", examples=["500ms"]),
    ] = None


class ScrapeTarget(HttpSettings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, description="target name: health target and `check` label")]
    url: Annotated[
        str, Meta(description="the target's metrics page", examples=["http://127.0.0.1:8000/metrics"])
    ]
    check: Annotated[
        str | None,
        Meta(
            description="the HTTP check of the same service: the metrics carry its name as `check`, so "
            "that service down mutes its own latency and error-rate alerts; unset: `name`",
            examples=["backend-api"],
        ),
    ] = None
    requests_metric: Annotated[
        str,
        Meta(description="request counter; without it on the page, the duration histogram's _count is used"),
    ] = "jarvis_requests_total"
    duration_metric: Annotated[str, Meta(description="request duration histogram (seconds)")] = (
        "jarvis_request_duration_seconds"
    )
    status_labels: Annotated[
        list[str],
        Meta(description="labels holding the HTTP status, first one present wins; 5xx counts as an error"),
    ] = msgspec.field(default_factory=lambda: ["status", "code"])
    rate_window: Annotated[
        Duration,
        Meta(
            description="request rate, error ratio and latency cover the scrapes less than this old, as "
            "PromQL's rate(...[1m]) just after a scrape; at least the probe's interval",
            examples=["5m"],
        ),
    ] = Duration(60)

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_http_url(self.url)
        if self.rate_window.seconds <= 0:
            raise ValueError("rate_window must be longer than 0s: rates need two scrapes")


class PromQLQuery(HttpSettings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[
        str, Meta(description="query name: health target, and the metric promql.<name>", examples=["p95"])
    ]
    query: Annotated[
        str,
        Meta(min_length=1, description="PromQL instant query", examples=["rate(jarvis_requests_total[1h])"]),
    ]
    server: Annotated[str, Meta(description="Prometheus server URL")] = "http://127.0.0.1:9090"
    metric: Annotated[
        str | None,
        Meta(description="metric name to publish; unset: promql.<name>", examples=["jarvis.request_rate"]),
    ] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _METRIC_TOKEN.fullmatch(self.name):
            raise ValueError(
                f"invalid query name {self.name!r}: it becomes a metric name, use lower-case letters, "
                "digits and '_'"
            )
        if self.metric is not None and not _METRIC_NAME.fullmatch(self.metric):
            raise ValueError(
                f"invalid metric {self.metric!r}: use dotted lower case, as in jarvis.request_rate"
            )
        validate_http_url(self.server)

    @property
    def metric_name(self) -> str:
        return self.metric or f"{vocab.PROMQL_PREFIX}{self.name}"


AnyCheck = HttpCheck | TcpCheck | ScrapeTarget | PromQLQuery


class DiscoveryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """HTTP checks found on the containers the Docker engine shows, by their `jarvis.check.*` labels."""

    enabled: Annotated[
        bool,
        Meta(
            description="list the engine's containers each cycle and probe those labelled for it; an "
            "unreachable engine is one info line, not an error"
        ),
    ] = True
    docker_host: Annotated[
        str | None,
        Meta(
            description="Docker engine address; unset: DOCKER_HOST, else the local unix socket",
            examples=["unix:///var/run/docker.sock"],
        ),
    ] = None
    filter_labels: Annotated[
        list[str],
        Meta(
            description="look only at containers carrying all of these labels (`key` or `key=value`)",
            examples=[["com.docker.compose.project=jarvis"]],
        ),
    ] = msgspec.field(default_factory=list)
    published_host: Annotated[
        str,
        Meta(
            description="address of a port a container publishes (or of one on the host's network) when "
            "the engine binds it to every address",
            examples=["127.0.0.1"],
        ),
    ] = "127.0.0.1"
    max_checks: Annotated[
        int, Meta(ge=1, le=10_000, description="discovered checks at most; containers beyond are refused")
    ] = 256
    request_timeout: Annotated[
        Duration, Meta(description="time allowed to list the containers, taken from the cycle's budget")
    ] = Duration(2)


class ProbeAgentConfig(AgentConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
    concurrency: Annotated[int, Meta(ge=1, description="checks in flight at once")] = 32
    check_timeout: Annotated[
        Duration | None,
        Meta(
            description="time allowed for a check that sets none; unset: 5s, or less when the "
            "interval leaves less",
            examples=["3s"],
        ),
    ] = None
    http: Annotated[
        list[HttpCheck],
        Meta(
            description="HTTP checks",
            examples=[[{"name": "backend", "url": "http://127.0.0.1:8000/health", "warn_latency": "1s"}]],
        ),
    ] = msgspec.field(default_factory=list)
    tcp: Annotated[
        list[TcpCheck],
        Meta(
            description="TCP connect checks",
            examples=[[{"name": "postgres", "host": "127.0.0.1", "port": 5432}]],
        ),
    ] = msgspec.field(default_factory=list)
    scrape: Annotated[
        list[ScrapeTarget],
        Meta(
            description="Prometheus /metrics pages to read request rate, error ratio and latency from",
            examples=[[{"name": "backend", "url": "http://127.0.0.1:8000/metrics", "rate_window": "1m"}]],
        ),
    ] = msgspec.field(default_factory=list)
    discovery: Annotated[
        DiscoveryConfig, Meta(description="HTTP checks discovered from container labels (jarvis.check.*)")
    ] = DiscoveryConfig()
    promql: Annotated[
        list[PromQLQuery],
        Meta(
            description="PromQL instant queries; each result series becomes a sample",
            examples=[[{"name": "request_rate", "query": "sum(rate(jarvis_requests_total[5m]))"}]],
        ),
    ] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_names()
        http_names = {check.name for check in self.http}
        for index, target in enumerate(self.scrape):
            if target.check is not None and target.check not in http_names:
                raise ValueError(
                    f"scrape[{index}] ({target.name}): check {target.check!r} is not the name of an "
                    "http check"
                )
            if target.rate_window.seconds < self.interval.seconds:
                raise ValueError(
                    f"scrape[{index}] ({target.name}): rate_window {target.rate_window} is shorter than "
                    f"the probe's {self.interval} interval, so it could never hold two scrapes; use at "
                    f"least {self.interval}"
                )
        deadline = self.deadline
        for where, check in self.all_checks():
            timeout = self.timeout_of(check)
            if timeout > deadline:
                limit = "timeout" if self.timeout else "interval"
                raise ValueError(
                    f"{where} ({check.name}): timeout {Duration(timeout)} leaves no time to publish "
                    f"within the probe's {Duration(self.budget)} {limit}; use at most {Duration(deadline)}"
                )
            warn = getattr(check, "warn_latency", None)
            if warn is not None and warn.seconds >= timeout:
                raise ValueError(
                    f"{where} ({check.name}): warn_latency {warn} must be shorter than its timeout"
                )

    def _check_names(self) -> None:
        """Names are unique, and stay unique as subject tokens ('a.b' and 'a_b' would share one)."""
        names = Counter(check.name for _, check in self.all_checks())
        for name, count in names.items():
            if len(name) > MAX_NAME:  # consumers would refuse its events as too long
                raise ValueError(f"check name {name[:40]!r}... is longer than {MAX_NAME} characters")
            if count > 1:
                raise ValueError(f"check name {name!r} is used {count} times; names must be unique")
        tokens: dict[str, str] = {}
        for name in names:
            other = tokens.setdefault(sanitize_token(name), name)
            if other != name:
                raise ValueError(
                    f"check names {other!r} and {name!r} would share the subject token "
                    f"{sanitize_token(name)!r}; rename one"
                )

    def all_checks(self) -> list[tuple[str, AnyCheck]]:
        """(key path, check) of every configured check, in config order: ("http[0]", HttpCheck(...))."""
        tables: dict[str, Sequence[AnyCheck]] = {
            "http": self.http,
            "tcp": self.tcp,
            "scrape": self.scrape,
            "promql": self.promql,
        }
        return [
            (f"{table}[{i}]", check) for table, checks in tables.items() for i, check in enumerate(checks)
        ]

    @property
    def budget(self) -> float:
        """Seconds the run loop gives one collection."""
        return (self.timeout or self.interval).seconds

    @property
    def deadline(self) -> float:
        """Seconds into a collection by which every check must be done, leaving time to publish."""
        return self.budget - min(1.0, 0.1 * self.budget)

    def timeout_of(self, check: AnyCheck) -> float:
        """A check's own timeout, else the probe's check_timeout, else 5s capped by the deadline."""
        if check.timeout is not None:
            return check.timeout.seconds
        if self.check_timeout is not None:
            return self.check_timeout.seconds
        return min(DEFAULT_CHECK_TIMEOUT, self.deadline)
