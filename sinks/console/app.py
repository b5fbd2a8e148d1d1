"""The console's web app: the four pages, the live stream, /metrics, and what guards them (a token
for anything but loopback, a CSRF token on every POST, a strict Content-Security-Policy)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import nats.errors
from aiohttp import web
from multidict import MultiDictProxy

from bus.events import Alert, HealthEvent, Heartbeat, MetricBatch
from bus.records import (
    MAX_COMMENT,
    AckRecord,
    Silence,
    SilenceStore,
    new_silence_id,
    parse_matcher,
    silence_state,
    too_broad,
    too_costly,
    valid_key_token,
)
from bus.units import Duration
from sinks.console import render
from sinks.console.config import ConsoleConfig, ConsoleSecrets
from sinks.console.history import HistoryCache, Read, downsample
from sinks.console.live import Hub
from sinks.console.state import PERF_METRICS, ConsoleState

log = logging.getLogger(__name__)

SESSION_COOKIE = "jm_session"
SESSION_MAX_AGE = 30 * 86400  # then the token is asked for again
_DIGITS = re.compile(r"[0-9]{1,12}")
MAX_ENDED_SESSIONS = 10_000
CLIENT_COOKIE = "jm_client"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer a form POST carries `Origin: null`
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
PAGE_PATHS = {"/": "overview", "/performance": "performance", "/errors": "errors", "/alerts": "alerts"}
MAX_FORM = 64 * 1024
MAX_MATCHERS = 20
CHART_POINTS = 300


class Reader(Protocol):
    """Reads a range of the metrics stream (history.read_range bound to a connection)."""

    def __call__(self, agent: str, start: float, end: float) -> Awaitable[Read]: ...


class Exporter(Protocol):
    """The /metrics page (sinks/console/prom.py MetricsExporter)."""

    def observe(self, event: MetricBatch | HealthEvent | Heartbeat | Alert) -> None: ...

    async def handler(self, request: web.Request) -> web.Response: ...


@dataclass
class Context:
    """What the handlers share; the service fills `store` and `read` once NATS answers."""

    config: ConsoleConfig
    secrets: ConsoleSecrets
    state: ConsoleState
    renderer: render.Renderer
    hub: Hub
    store: SilenceStore | None = None
    exporter: Exporter | None = None
    read: Reader | None = None
    refresh: Callable[[], Awaitable[None]] | None = None  # reload silences after a change
    clock: Callable[[], float] = time.time
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    cache: HistoryCache = field(default_factory=HistoryCache)
    refused: dict[str, int] = field(default_factory=dict)
    ended: dict[str, int] = field(default_factory=dict)  # logged-out sessions: nonce -> issued

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def new_session(self) -> str:
        """A session cookie's value: a nonce and when it was issued, signed with the token (so a new
        token ends old sessions, and a restart keeps the others)."""
        nonce, issued = secrets.token_hex(16), int(self.clock())
        return f"{nonce}.{issued}.{self._sign(nonce, issued)}"

    def session_valid(self, value: str) -> bool:
        """Signed with this token, younger than SESSION_MAX_AGE, and not logged out."""
        if not value.isascii():  # ours are; an undecodable byte arrives as a surrogate
            return False
        nonce, _, rest = value.partition(".")
        issued_text, _, mac = rest.partition(".")
        if not _DIGITS.fullmatch(issued_text) or nonce in self.ended:
            return False
        issued = int(issued_text)
        if not same_secret(mac, self._sign(nonce, issued)):
            return False
        return 0 <= self.clock() - issued < SESSION_MAX_AGE

    def end_session(self, value: str) -> None:
        """Log a session out: its cookie is refused from now on (until the console restarts)."""
        if not self.session_valid(value):
            return
        nonce, issued = value.split(".")[:2]
        now = self.clock()
        self.ended = {n: t for n, t in self.ended.items() if now - t < SESSION_MAX_AGE}  # expired anyway
        if len(self.ended) >= MAX_ENDED_SESSIONS:
            del self.ended[next(iter(self.ended))]
        self.ended[nonce] = int(issued)

    def _sign(self, nonce: str, issued: int) -> str:
        assert self.secrets.token is not None
        message = f"jarvis-console-session.{nonce}.{issued}".encode()
        return hmac.new(self.secrets.token.encode(), message, hashlib.sha256).hexdigest()

    def csrf_for(self, client: str) -> str:
        return hmac.new(self.key, client.encode(), hashlib.sha256).hexdigest()[:40]


def same_secret(given: str, secret: str) -> bool:
    """A comparison in constant time that any text from outside may go through (non-ASCII, an
    undecodable byte that aiohttp kept as a surrogate): False, never an exception."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), secret.encode("utf-8", "surrogatepass")
    )


CONTEXT = web.AppKey("console", Context)
# per-request values: typed keys where aiohttp has them (3.13+), plain strings before
CLIENT: Any = web.RequestKey("client", str) if hasattr(web, "RequestKey") else "client"
FORM: Any = web.RequestKey("form", MultiDictProxy) if hasattr(web, "RequestKey") else "form"


def _client(request: web.Request) -> str:
    value = request.cookies.get(CLIENT_COOKIE, "")
    return value if len(value) == 32 and all(c in "0123456789abcdef" for c in value) else ""


def authed(request: web.Request, ctx: Context) -> bool:
    token = ctx.secrets.token
    if token is None:
        return True
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and same_secret(header[7:].strip(), token):
        return True
    return ctx.session_valid(request.cookies.get(SESSION_COOKIE, ""))


def text_response(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain")


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def safe_next(value: str) -> str:
    """Where to go after logging in: a path of this site only. Browsers drop tabs and newlines
    from a URL and read `\\` as `/`, so `/\t/evil.example` would lead off the site."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        return "/"
    path = value.replace("\\", "/")
    parts = urlsplit(path)
    if not path.startswith("/") or path.startswith("//") or parts.scheme or parts.netloc:
        return "/"
    return value


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _own_name(request: web.Request, allowed: Sequence[str]) -> bool:
    """Did the request come to a name of this console? Against DNS rebinding: without a token,
    an attacker's page whose own name points at 127.0.0.1 is a same-origin caller."""
    try:
        name = (request.url.host or "").lower().rstrip(".")
    except ValueError:  # a Host header that is no host
        return False
    return name in LOOPBACK_NAMES or name in {host.lower().rstrip(".") for host in allowed}


@web.middleware
async def guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Token first (pages redirect to /login), then the CSRF token on every POST."""
    ctx = request.app[CONTEXT]
    if ctx.secrets.token is None and not _own_name(request, ctx.config.allowed_hosts):
        ctx.refuse("host")
        return text_response(
            403,
            "403: without a token this console answers to localhost only; add the name this "
            "request came to to sinks.console.allowed_hosts, or set a token",
        )
    client = _client(request)
    request[CLIENT] = client or secrets.token_hex(16)
    path = request.path
    public = path.startswith("/static/") or path == "/login"
    if path == "/metrics" and ctx.config.metrics_public:
        public = True
    if not public and not authed(request, ctx):
        ctx.refuse("no_token")
        if request.method == "GET" and path in PAGE_PATHS:
            return _with_client(redirect(f"/login?next={quote(request.path_qs, safe='')}"), request, client)
        return web.Response(
            status=401,
            text="401: this console needs its token: log in at /login, or send a Bearer token\n",
            headers={"WWW-Authenticate": 'Bearer realm="jarvis-monitor console"'},
        )
    if request.method not in ("GET", "HEAD"):
        problem = await _csrf_problem(request, ctx, client)
        if problem is not None:
            ctx.refuse("csrf")
            return text_response(403, f"403: {problem}")
    response = await handler(request)
    return _with_client(response, request, client)


def _with_client(response: web.StreamResponse, request: web.Request, client: str) -> web.StreamResponse:
    if not client and not response.prepared:
        response.set_cookie(
            CLIENT_COOKIE,
            request[CLIENT],
            httponly=True,
            samesite="Strict",
            path="/",
            secure=request.secure,
        )
    return response


async def _csrf_problem(request: web.Request, ctx: Context, client: str) -> str | None:
    origin = request.headers.get("Origin")
    # host and port only: behind a proxy ending TLS the page is https while this request is http
    if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
        return "this request comes from another site"
    if request.content_length is not None and request.content_length > MAX_FORM:
        return "form too large"
    try:
        form = await request.post()
    except ValueError:
        return "unreadable form"
    request[FORM] = form
    given = form.get("csrf")
    if not client or not isinstance(given, str) or not same_secret(given, ctx.csrf_for(client)):
        return "missing or wrong CSRF token: reload the page and try again"
    return None


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, errors and static files included."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _base(request: web.Request, page: str) -> dict[str, Any]:
    ctx = request.app[CONTEXT]
    now = ctx.clock()
    context = render.base_context(
        ctx.state, now, page, ctx.csrf_for(request[CLIENT]), ctx.secrets.token is not None
    )
    context["range"] = ""
    context["range_note"] = ""
    return context


# -- pages ------------------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    rows = render.overview_context(ctx.state, ctx.clock(), ctx.renderer.when)
    context = _base(request, "overview") | rows
    return _html(ctx.renderer.page("overview", context))


def _range(request: web.Request) -> tuple[str, float]:
    name = request.query.get("range", "1h")
    return (name, render.RANGES[name]) if name in render.RANGES else ("1h", render.RANGES["1h"])


async def _perf_series(
    request: web.Request, start: float, end: float
) -> tuple[dict[tuple[str, str], list[tuple[float, float]]], str]:
    """Request metrics per (check, metric) over [start, end]: from memory when the range fits in it,
    else read back from the metrics stream (bounded)."""
    ctx = request.app[CONTEXT]
    if start >= end - ctx.state.limits.history or ctx.read is None:
        series = {
            (check, name): ring.since(start)
            for check, view in ctx.state.perf.items()
            for name, ring in view.history.items()
        }
        note = "" if ctx.read is not None or start >= end - ctx.state.limits.history else "from memory only"
        return series, note
    key = ("perf", "probe", int(end - start))
    read = ctx.cache.get(key, end)
    if read is None:
        read = await ctx.read("probe", start, end)
        ctx.cache.put(key, end, read)
    series = downsample(read.events, PERF_METRICS, "check", read.start, end, CHART_POINTS)
    note = ""
    if read.truncated:
        note = (
            f"the range holds more events than are read at once: showing from {ctx.renderer.when(read.start)}"
        )
    return series, note


async def performance(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    now = ctx.clock()
    name, span = _range(request)
    series, note = await _perf_series(request, now - span, now)
    charts = []
    for check in sorted({check for check, _ in series}):
        charts.append(_chart(f"rate-{check}", f"{check}: requests", "per second", series, check, ("rate",)))
        charts.append(
            _chart(f"errors-{check}", f"{check}: error ratio", "ratio", series, check, ("error_ratio",))
        )
        charts.append(
            _chart(f"latency-{check}", f"{check}: latency", "seconds", series, check, ("p50", "p95", "p99"))
        )
    context = _base(request, "performance") | {
        "range": name,
        "range_note": note,
        "perf": sorted(ctx.state.perf.values(), key=lambda p: p.check),
        "charts": render.script_json(charts),
    }
    return _html(ctx.renderer.page("performance", context))


def _chart(
    chart_id: str,
    title: str,
    unit: str,
    series: dict[tuple[str, str], list[tuple[float, float]]],
    check: str,
    metrics: tuple[str, ...],
) -> dict[str, Any]:
    spec = render.chart(
        chart_id, title, unit, [(m, series[(check, m)]) for m in metrics if (check, m) in series]
    )
    for entry, metric in zip(spec["series"], [m for m in metrics if (check, m) in series], strict=True):
        entry["key"] = f"{check}|{metric}"
    return spec


async def errors(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    state = ctx.state
    now = ctx.clock()
    name, span = _range(request)
    series, note = await _perf_series(request, now - span, now)
    checks = sorted({check for check, metric in series if metric == "error_ratio"})
    ratio = render.chart(
        "error-ratio",
        "HTTP error ratio per service",
        "ratio",
        [(c, series[(c, "error_ratio")]) for c in checks],
    )
    for entry, check in zip(ratio["series"], checks, strict=True):
        entry["key"] = f"{check}|error_ratio"
    noisy = sorted(
        (v for v in state.containers.values() if v.log_errors is not None),
        key=lambda v: -sum(p[1] for p in v.log_errors.points) if v.log_errors else 0,
    )[:8]
    logs = render.chart(
        "log-errors",
        "error lines in container logs per cycle",
        "lines",
        [(f"{v.host}/{v.name}", v.log_errors.since(now - span)) for v in noisy if v.log_errors is not None],
    )
    alerts = state.alerts()
    context = _base(request, "errors") | {
        "range": name,
        "range_note": note,
        "failing": state.failing_checks(),
        "endpoints": sorted(
            (p for p in state.perf.values() if p.latest.get("error_ratio", 0) > 0),
            key=lambda p: -p.latest.get("error_ratio", 0),
        ),
        "logs": [(v, state.alerts_on(alerts, v.host, v.container)) for v in state.log_views()],
        "charts": render.script_json([ratio, logs]),
    }
    return _html(ctx.renderer.page("errors", context))


@dataclass
class SilenceForm:
    matchers: str = ""
    duration: str = "2h"
    comment: str = ""
    author: str = "console"


def _prefill(ctx: Context, fingerprint: str) -> SilenceForm:
    """A silence form for one active alert: every label it has, so that it mutes that alert and
    not its siblings (the other containers, mounts or agents of its host)."""
    for alert in ctx.state.alerts():
        if alert.fingerprint == fingerprint:
            labels = {"rule": alert.rule, **alert.labels}
            lines = [_exact(name, value) for name, value in labels.items() if value and "\n" not in value]
            return SilenceForm(matchers="\n".join(lines))
    return SilenceForm()


def _exact(name: str, value: str) -> str:
    """`name=value`, quoted where a line's spaces or quotes would change the value read back."""
    plain = value == value.strip() and value[0] not in "\"'"
    return f"{name}={value}" if plain else f'{name}="{value}"'


NOTICES = {"added": "silence {} added", "expired": "silence {} expired", "acked": "alert {} acknowledged"}


async def alerts_page(
    request: web.Request, *, form: SilenceForm | None = None, problem: str = "", status: int = 200
) -> web.Response:
    ctx = request.app[CONTEXT]
    state = ctx.state
    now = ctx.clock()
    notice = ""
    for key, template in NOTICES.items():
        value = request.query.get(key, "")
        if value and valid_key_token(value):
            notice = template.format(value)
    stale = ""
    if state.active is not None and now - state.active.ts > 120:
        stale = f"the evaluator's list is {now - state.active.ts:.0f}s old: is the evaluator running?"
    if form is None:
        form = _prefill(ctx, request.query.get("silence", ""))
    context = _base(request, "alerts") | {
        "alerts": state.alerts(),
        "silences": [(s, silence_state(s, now)) for s in state.silences],
        "history": list(state.history),
        "notice": notice,
        "problem": problem,
        "stale": stale,
        "form": form,
    }
    return _html(ctx.renderer.page("alerts", context), status)


async def alerts_get(request: web.Request) -> web.Response:
    return await alerts_page(request)


def build_silence(form: MultiDictProxy[Any], now: float) -> tuple[Silence | None, SilenceForm, str]:
    """The silence the form asks for (as `silence add` builds it), or why not."""
    fields = SilenceForm(
        matchers=str(form.get("matchers", ""))[:4000],
        duration=str(form.get("duration", "")).strip()[:20],
        comment=str(form.get("comment", "")).strip()[:MAX_COMMENT],
        author=str(form.get("author", "")).strip()[:100] or "console",
    )
    lines = [line.strip() for line in fields.matchers.splitlines() if line.strip()]
    if not lines:
        return None, fields, "matchers: name at least one, such as host=web01"
    if len(lines) > MAX_MATCHERS:
        return None, fields, f"matchers: at most {MAX_MATCHERS}"
    try:
        matchers = [parse_matcher(line) for line in lines]
    except ValueError as exc:
        return None, fields, f"matchers: {exc}"
    if (costly := too_costly(matchers)) is not None:
        return None, fields, f"matchers: {costly}"
    if (broad := too_broad(matchers)) is not None:
        return None, fields, f"matchers: {broad}; name a host, a rule or another label with a value"
    try:
        length = Duration.parse(fields.duration).seconds
    except ValueError as exc:
        return None, fields, f"for: {exc}"
    if length <= 0:
        return None, fields, "for: must be longer than 0s"
    if not fields.comment:
        return None, fields, "comment: say why (it is shown with the silence)"
    silence = Silence(
        id=new_silence_id(),
        matchers=matchers,
        starts_at=now,
        ends_at=now + length,
        author=fields.author,
        comment=fields.comment,
    )
    return silence, fields, ""


# What the silences store raises when NATS or JetStream does not answer (TimeoutError is an OSError).
STORE_ERRORS = (nats.errors.Error, OSError)
NOT_STORED = "NATS did not answer: nothing was stored; try again in a moment"


async def _stored(
    request: web.Request, write: Awaitable[object], what: str, form: SilenceForm | None = None
) -> web.Response | None:
    """None once `write` is stored; else the alerts page saying nothing was (with the form kept)."""
    try:
        await write
    except STORE_ERRORS as exc:
        log.warning("console: %s not stored, NATS did not answer: %s", what, exc)
        return await alerts_page(request, form=form, problem=NOT_STORED, status=503)
    return None


def _unavailable() -> web.Response:
    return text_response(503, "503: the console has no connection to the silences store (JetStream KV) yet")


async def add_silence(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    silence, fields, problem = build_silence(request[FORM], ctx.clock())
    if silence is None:
        return await alerts_page(request, form=fields, problem=problem, status=400)
    if ctx.store is None:
        return _unavailable()
    if (refused := await _stored(request, ctx.store.add(silence), "silence", form=fields)) is not None:
        return refused
    log.info("console: silence %s added by %r", silence.id, silence.author)
    if ctx.refresh is not None:
        await ctx.refresh()
    return redirect(f"/alerts?added={silence.id}")


async def expire_silence(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    silence_id = request.match_info["id"]
    if ctx.store is None:
        return _unavailable()
    try:
        refused = await _stored(request, ctx.store.expire(silence_id, ctx.clock()), f"expiry of {silence_id}")
    except KeyError:
        return text_response(404, "404: no such silence")
    if refused is not None:
        return refused
    if ctx.refresh is not None:
        await ctx.refresh()
    return redirect(f"/alerts?expired={quote(silence_id)}")


async def ack_alert(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    fingerprint = request.match_info["fingerprint"]
    if not valid_key_token(fingerprint) or fingerprint not in {a.fingerprint for a in ctx.state.alerts()}:
        return text_response(404, "404: no active alert with this fingerprint")
    if ctx.store is None:
        return _unavailable()
    author = str(request[FORM].get("author", "")).strip()[:100] or "console"
    record = AckRecord(fingerprint=fingerprint, author=author, at=ctx.clock())
    if (refused := await _stored(request, ctx.store.ack(record), f"ack of {fingerprint}")) is not None:
        return refused
    return redirect(f"/alerts?acked={fingerprint}")


async def login_get(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    context = {
        "csrf": ctx.csrf_for(request[CLIENT]),
        "next": safe_next(request.query.get("next", "/")),
        "problem": "",
    }
    return _html(ctx.renderer.page("login", context))


async def login_post(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    form = request[FORM]
    target = safe_next(str(form.get("next", "/")))
    if ctx.secrets.token is None:
        return redirect(target)
    given = str(form.get("token", "")).strip()
    if not same_secret(given, ctx.secrets.token):
        ctx.refuse("wrong_token")
        context = {"csrf": ctx.csrf_for(request[CLIENT]), "next": target, "problem": "wrong token"}
        return _html(ctx.renderer.page("login", context), 403)
    response = redirect(target)
    response.set_cookie(
        SESSION_COOKIE,
        ctx.new_session(),
        max_age=SESSION_MAX_AGE,
        httponly=True,
        samesite="Strict",
        path="/",
        secure=request.secure,
    )
    return response


async def logout(request: web.Request) -> web.Response:
    request.app[CONTEXT].end_session(request.cookies.get(SESSION_COOKIE, ""))
    response = redirect("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def events(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    page = request.query.get("page", "overview")
    if page not in render.PAGES:
        return text_response(400, "400: unknown page")
    return await ctx.hub.stream(request, page, ctx.csrf_for(request[CLIENT]), lambda: authed(request, ctx))


async def metrics(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    if ctx.exporter is None:
        return text_response(503, "503: the Prometheus exporter is not available")
    return await ctx.exporter.handler(request)


def make_app(ctx: Context) -> web.Application:
    """The aiohttp application; the service runs it, tests drive it with aiohttp's test client."""
    app = web.Application(middlewares=[guard], client_max_size=MAX_FORM)
    app[CONTEXT] = ctx
    app.on_response_prepare.append(security_headers)
    app.router.add_get("/", overview)
    app.router.add_get("/performance", performance)
    app.router.add_get("/errors", errors)
    app.router.add_get("/alerts", alerts_get)
    app.router.add_post("/silences", add_silence)
    app.router.add_post("/silences/{id}/expire", expire_silence)
    app.router.add_post("/alerts/{fingerprint}/ack", ack_alert)
    app.router.add_get("/login", login_get)
    app.router.add_post("/login", login_post)
    app.router.add_post("/logout", logout)
    app.router.add_get("/events", events)
    app.router.add_get("/metrics", metrics)
    app.router.add_static("/static/", render.STATIC)
    return app
