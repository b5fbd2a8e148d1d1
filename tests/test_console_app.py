"""The console's web app through aiohttp's test client: pages, escaping, the token, CSRF, CSP, actions."""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.js.errors import KeyNotFoundError, NoKeysError

from bus.events import Alert
from bus.records import ACK_PREFIX, SILENCE_PREFIX, SilenceStore, decode_ack, decode_silence
from sinks.console import live
from sinks.console.app import CONTEXT, CSP, SESSION_COOKIE, SESSION_MAX_AGE, Context, make_app, safe_next
from sinks.console.config import ConsoleConfig, ConsoleConfigError, ConsoleSecrets, resolve_token
from sinks.console.live import Hub
from sinks.console.render import Renderer, script_json
from sinks.console.state import ConsoleState, row_id
from tests.test_console_state import alert, container_batch, health, host_batch

TOKEN = "s3cret-token-for-tests-0123456789"
HOSTILE = "</script><script>alert(1)</script>"
BIDI = "api\u202egnp.exe"


class MemoryKV:
    """The part of nats-py's KeyValue that SilenceStore uses, in memory."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def put(self, key: str, value: bytes) -> int:
        self.data[key] = value
        return len(self.data)

    async def get(self, key: str) -> Any:
        if key not in self.data:
            raise KeyNotFoundError

        class Entry:
            value = self.data[key]

        return Entry()

    async def keys(self) -> list[str]:
        if not self.data:
            raise NoKeysError
        return list(self.data)

    async def purge(self, key: str) -> None:
        self.data.pop(key, None)


def populated(now: float) -> ConsoleState:
    state = ConsoleState()
    state.observe(host_batch(HOSTILE, now, 95.0))
    state.observe(host_batch("web01", now, 10.0))
    state.observe(container_batch("web01", BIDI, now))
    state.observe(container_batch("web01", "x" * 200, now))
    state.observe(health("backend", "critical", now, detail=HOSTILE))
    state.observe(health(f"log:{BIDI}", "warning", now, agent="container", detail=f"1 error\n{HOSTILE}"))
    state.observe(alert("fp1", "firing", now))
    return state


def context(state: ConsoleState, token: str | None = None, **settings: Any) -> Context:
    renderer = Renderer()
    return Context(
        config=ConsoleConfig(**settings),
        secrets=ConsoleSecrets(token=token),
        state=state,
        renderer=renderer,
        hub=Hub(state, renderer),
        store=SilenceStore(MemoryKV()),  # type: ignore[arg-type]
    )


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    ctx = context(populated(time.time()))
    async with TestClient(TestServer(make_app(ctx))) as test_client:
        yield test_client


async def csrf_of(client: TestClient[Any, Any], path: str = "/alerts") -> str:
    page = await (await client.get(path)).text()
    found = re.search(r'name="csrf" content="([0-9a-f]+)"', page) or re.search(
        r'name="csrf" value="([0-9a-f]+)"', page
    )
    assert found is not None
    return found[1]


@pytest.mark.parametrize("path", ["/", "/performance", "/errors", "/alerts", "/login"])
async def test_every_page_loads_with_a_strict_content_security_policy(
    client: TestClient[Any, Any], path: str
) -> None:
    response = await client.get(path)
    assert response.status == 200
    assert response.headers["Content-Security-Policy"] == CSP
    assert "script-src 'self'" in CSP
    assert "unsafe-inline" not in CSP
    assert response.headers["X-Frame-Options"] == "DENY"
    page = await response.text()
    assert "<script>" not in page  # scripts only from files: the CSP forbids inline ones
    assert " style=" not in page


async def test_hostile_names_are_escaped_and_bidi_overrides_neutralised(client: TestClient[Any, Any]) -> None:
    overview = await (await client.get("/")).text()
    errors = await (await client.get("/errors")).text()
    for page in (overview, errors):
        assert HOSTILE not in page
        assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "\u202e" not in page
    assert "api\ufffdgnp.exe" in overview


def test_json_in_a_page_cannot_close_its_script_block() -> None:
    text = str(script_json([{"label": HOSTILE, "x": "a&b\u2028"}]))
    assert "</script" not in text
    assert "<" not in text
    assert "&" not in text
    assert "\\u003c/script\\u003e" in text


async def test_what_is_wrong_comes_first_on_the_overview(client: TestClient[Any, Any]) -> None:
    page = await (await client.get("/")).text()
    assert page.index('id="alerts"') < page.index('id="checks"') < page.index('id="hosts"')
    hosts = re.findall(r'<tr id="(host-[0-9a-f]+)"', page)
    assert hosts[0] == row_id("host", "web01")  # the firing alert is on web01


async def test_a_post_without_the_csrf_token_is_refused(client: TestClient[Any, Any]) -> None:
    await client.get("/alerts")
    form = {"matchers": "host=web01", "duration": "1h", "comment": "maintenance"}
    response = await client.post("/silences", data=form, allow_redirects=False)
    assert response.status == 403
    assert "CSRF" in await response.text()
    response = await client.post("/silences", data=form | {"csrf": "0" * 40}, allow_redirects=False)
    assert response.status == 403


async def test_a_post_from_another_site_is_refused_even_with_the_token(client: TestClient[Any, Any]) -> None:
    csrf = await csrf_of(client)
    form = {"matchers": "host=web01", "duration": "1h", "comment": "x", "csrf": csrf}
    response = await client.post(
        "/silences", data=form, headers={"Origin": "http://evil.example"}, allow_redirects=False
    )
    assert response.status == 403


async def test_behind_a_proxy_ending_tls_the_pages_own_https_origin_may_post() -> None:
    ctx = context(populated(time.time()), token=TOKEN, allowed_hosts=["console.example.com"])
    async with TestClient(TestServer(make_app(ctx))) as client:
        proxied = {"Host": "console.example.com", "Authorization": f"Bearer {TOKEN}"}
        page = await (await client.get("/alerts", headers=proxied)).text()
        (csrf,) = re.findall(r'name="csrf" value="([^"]+)"', page)[:1]
        form = {"matchers": "host=web01", "duration": "1h", "comment": "x", "csrf": csrf}
        own = {**proxied, "Origin": "https://console.example.com"}
        response = await client.post("/silences", data=form, headers=own, allow_redirects=False)
        assert response.status == 303
        other = {**proxied, "Origin": "https://evil.example"}
        response = await client.post("/silences", data=form, headers=other, allow_redirects=False)
        assert response.status == 403


async def test_a_silence_made_on_the_page_is_stored_as_the_cli_does(
    client: TestClient[Any, Any],
) -> None:
    ctx = client.app[CONTEXT]
    csrf = await csrf_of(client)
    form = {"matchers": "host=web01\nrule=~high_.*", "duration": "2h", "comment": "deploy", "csrf": csrf}
    response = await client.post("/silences", data=form, allow_redirects=False)
    assert response.status == 303
    assert ctx.store is not None
    kv: MemoryKV = ctx.store.kv
    [key] = [k for k in kv.data if k.startswith(SILENCE_PREFIX)]
    silence = decode_silence(kv.data[key])
    assert silence is not None
    assert [str(m) for m in silence.matchers] == ["host=web01", "rule=~high_.*"]
    assert round(silence.ends_at - silence.starts_at) == 7200
    assert silence.comment == "deploy"
    page = await (await client.get(response.headers["Location"])).text()
    assert f"silence {silence.id} added" in page

    response = await client.post(f"/silences/{silence.id}/expire", data={"csrf": csrf}, allow_redirects=False)
    assert response.status == 303
    expired = decode_silence(kv.data[key])
    assert expired is not None
    assert expired.ends_at <= time.time()


@pytest.mark.parametrize(
    ("matchers", "duration", "comment", "problem"),
    [
        ("", "1h", "x", "name at least one"),
        ("host", "1h", "x", "invalid matcher"),
        ("host=~(", "1h", "x", "invalid regex"),
        ("host=a", "soon", "x", "for:"),
        ("host=a", "1h", "", "comment"),
        ("host=~.*", "1h", "x", "would mute nearly every alert"),
        ("host=~[ab]*a[ab]{400}c", "1h", "x", "too complex (RE2 program size 407, at most 300)"),
        ("nosuchlabel=", "1h", "x", "would mute nearly every alert"),
        ("rule!=disk\nhost=~web.*|", "1h", "x", "would mute nearly every alert"),
    ],
)
async def test_a_bad_silence_form_says_what_is_wrong(
    client: TestClient[Any, Any], matchers: str, duration: str, comment: str, problem: str
) -> None:
    csrf = await csrf_of(client)
    form = {"matchers": matchers, "duration": duration, "comment": comment, "csrf": csrf}
    response = await client.post("/silences", data=form, allow_redirects=False)
    assert response.status == 400
    assert problem in await response.text()


async def test_the_silence_button_prefills_every_label_so_it_mutes_that_alert_and_not_its_siblings() -> None:
    now = time.time()
    state = populated(now)
    labels = {"host": "web01", "agent": "container", "target": " payments ", "rule": "container_unhealthy"}
    for fingerprint, target in (("fp-pay", " payments "), ("fp-web", "web")):
        state.observe(
            Alert(
                fingerprint=fingerprint,
                rule="container_unhealthy",
                severity="warning",
                status="firing",
                labels={**labels, "target": target},
                summary="unhealthy",
                starts_at=now,
            )
        )
    async with TestClient(TestServer(make_app(context(state)))) as client:
        page = await (await client.get("/alerts?silence=fp-pay")).text()
        (prefilled,) = re.findall(r'<textarea[^>]*name="matchers"[^>]*>([^<]*)</textarea>', page)
        csrf = await csrf_of(client)
        form = {"matchers": html.unescape(prefilled), "duration": "1h", "comment": "x", "csrf": csrf}
        response = await client.post("/silences", data=form, allow_redirects=False)
        assert response.status == 303
        ctx = client.app[CONTEXT]
        assert ctx.store is not None
        kv: Any = ctx.store.kv
        (silence,) = [decode_silence(v) for k, v in kv.data.items() if k.startswith(SILENCE_PREFIX)]
    assert silence is not None
    assert silence.matches(labels)
    assert not silence.matches({**labels, "target": "web"}), "the host's other container stays loud"


async def test_a_hostile_fingerprint_cannot_aim_its_ack_button_at_another_alert() -> None:
    now = time.time()
    state = populated(now)
    state.observe(alert("zz/../../alerts/fp1", "firing", now))
    async with TestClient(TestServer(make_app(context(state)))) as client:
        page = await (await client.get("/alerts")).text()
    actions = re.findall(r'action="(/alerts/[^"]*/ack)"', page)
    assert "/alerts/fp1/ack" in actions  # the real fp1's own button
    assert "/alerts/zz%2F%2E%2E%2F%2E%2E%2Falerts%2Ffp1/ack" in actions
    assert not [a for a in actions if "/.." in a]


async def test_ack_from_the_page_stores_the_cli_ack_record(client: TestClient[Any, Any]) -> None:
    csrf = await csrf_of(client)
    response = await client.post("/alerts/fp1/ack", data={"csrf": csrf}, allow_redirects=False)
    assert response.status == 303
    ctx = client.app[CONTEXT]
    assert ctx.store is not None
    record = decode_ack(ctx.store.kv.data[ACK_PREFIX + "fp1"])
    assert record is not None
    assert record.fingerprint == "fp1"
    response = await client.post("/alerts/nope/ack", data={"csrf": csrf}, allow_redirects=False)
    assert response.status == 404


async def test_with_a_token_nothing_is_shown_before_logging_in_and_the_token_is_never_on_a_page() -> None:
    ctx = context(populated(time.time()), token=TOKEN)
    async with TestClient(TestServer(make_app(ctx))) as client:
        response = await client.get("/", allow_redirects=False)
        assert response.status == 303
        assert response.headers["Location"].startswith("/login")
        for path in ("/events?page=overview", "/metrics"):
            assert (await client.get(path)).status == 401
        assert (await client.post("/silences", data={}, allow_redirects=False)).status == 401
        csrf = await csrf_of(client, "/login")
        wrong = await client.post("/login", data={"token": "guess", "csrf": csrf}, allow_redirects=False)
        assert wrong.status == 403
        right = await client.post("/login", data={"token": TOKEN, "csrf": csrf, "next": "/alerts"})
        assert right.status == 200
        assert right.url.path == "/alerts"
        for path in ("/", "/performance", "/errors", "/alerts"):
            response = await client.get(path)
            assert response.status == 200
            assert TOKEN not in await response.text()
            assert all(TOKEN not in value for value in response.headers.values())
        assert all(TOKEN not in cookie.value for cookie in client.session.cookie_jar)


async def test_a_session_ends_at_logout_and_after_its_age_and_cannot_be_forged() -> None:
    now = [time.time()]
    ctx = context(populated(now[0]), token=TOKEN)
    ctx.clock = lambda: now[0]
    async with TestClient(TestServer(make_app(ctx))) as client:
        csrf = await csrf_of(client, "/login")
        await client.post("/login", data={"token": TOKEN, "csrf": csrf})
        [cookie] = [c for c in client.session.cookie_jar if c.key == SESSION_COOKIE]
        session = cookie.value

        async def opens(value: str) -> bool:
            response = await client.get("/", cookies={SESSION_COOKIE: value}, allow_redirects=False)
            return response.status == 200

        assert await opens(session)
        nonce, issued, mac = session.split(".")
        assert not await opens(f"{nonce}.{int(issued) + 86400}.{mac}")  # made younger: not signed so
        now[0] += SESSION_MAX_AGE
        assert not await opens(session)  # too old: the token is asked for again
        now[0] -= SESSION_MAX_AGE
        other = ctx.new_session()
        assert (await client.post("/logout", data={"csrf": csrf}, allow_redirects=False)).status == 303
        assert not await opens(session)  # logged out: a copy of the cookie opens nothing
        assert await opens(other)  # another browser's session goes on


@pytest.mark.parametrize(
    "header",
    [
        b"Cookie: jm_session=a.\xc2\xb2.x",  # a digit to str.isdigit, not to int()
        b"Cookie: jm_session=\xff.1.x",  # not UTF-8: aiohttp keeps the byte as a surrogate
        b"Cookie: jm_session=a.1.\xff",
        b"Authorization: Bearer \xff",
    ],
)
async def test_a_malformed_session_or_token_is_refused_not_an_error(header: bytes) -> None:
    ctx = context(populated(time.time()), token=TOKEN)
    async with TestClient(TestServer(make_app(ctx))) as client:
        for path in (b"/", b"/events?page=overview"):
            reader, writer = await asyncio.open_connection(client.host, client.port)
            writer.write(
                b"GET "
                + path
                + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + header
                + b"\r\nConnection: close\r\n\r\n"
            )
            status = (await reader.readline()).split()[1]
            writer.close()
            assert status == (b"303" if path == b"/" else b"401")  # to the login page: no 500, no traceback


async def test_logging_out_ends_the_live_stream_of_that_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "PING", 0.05)
    ctx = context(populated(time.time()), token=TOKEN)
    async with TestClient(TestServer(make_app(ctx))) as client:
        csrf = await csrf_of(client, "/login")
        await client.post("/login", data={"token": TOKEN, "csrf": csrf})
        [session] = [c.value for c in client.session.cookie_jar if c.key == SESSION_COOKIE]
        stream = await client.get("/events?page=overview")
        assert stream.status == 200
        assert await stream.content.readline() == b"retry: 2000\n"
        ctx.end_session(session)  # logged out, from this browser or another
        async with asyncio.timeout(10):  # the stream ends: the pings stop at once
            while await stream.content.readline():
                pass


async def test_a_csrf_token_that_is_not_ascii_is_refused_not_an_error() -> None:
    ctx = context(populated(time.time()), token=TOKEN)
    async with TestClient(TestServer(make_app(ctx))) as client:
        response = await client.post("/login", data={"token": TOKEN, "csrf": "\u00e9"}, allow_redirects=False)
        assert response.status == 403


async def test_a_bearer_token_opens_the_api_and_metrics_can_be_public() -> None:
    ctx = context(ConsoleState(), token=TOKEN, metrics_public=True)
    async with TestClient(TestServer(make_app(ctx))) as client:
        assert (await client.get("/metrics")).status == 503  # public, and no exporter in this test
        ok = await client.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status == 200


async def test_login_never_redirects_to_another_site() -> None:
    ctx = context(ConsoleState(), token=TOKEN)
    async with TestClient(TestServer(make_app(ctx))) as client:
        csrf = await csrf_of(client, "/login")
        response = await client.post(
            "/login", data={"token": TOKEN, "csrf": csrf, "next": "//evil.example/"}, allow_redirects=False
        )
        assert response.headers["Location"] == "/"


def test_a_public_bind_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConsoleConfigError, match=r"^sinks.console.bind: '0.0.0.0' is not loopback"):
        resolve_token(ConsoleConfig(bind="0.0.0.0"), {})
    assert resolve_token(ConsoleConfig(bind="0.0.0.0"), {"JARVIS_CONSOLE_TOKEN": TOKEN}).token == TOKEN
    assert resolve_token(ConsoleConfig(), {}).token is None  # loopback: no token needed
    with pytest.raises(ConsoleConfigError, match="at least 16"):
        resolve_token(ConsoleConfig(), {"JARVIS_CONSOLE_TOKEN": "short"})
    missing = tmp_path / "missing"
    with pytest.raises(ConsoleConfigError, match=r"^sinks.console.token_file: cannot read"):
        resolve_token(ConsoleConfig(token_file=str(missing)), {})
    assert "s3cret" not in repr(resolve_token(ConsoleConfig(), {"JARVIS_CONSOLE_TOKEN": TOKEN}))


def test_a_changed_row_goes_to_every_open_overview_with_its_own_csrf_token() -> None:
    now = time.time()
    state = populated(now)
    state.take_dirty()
    hub = Hub(state, Renderer(), clock=lambda: now)
    state.observe(health(BIDI, "critical", now, agent="container", detail="health check: unhealthy"))
    state.observe(alert("fp2", "firing", now, "warning"))
    messages = hub.messages(state.take_dirty(), now)
    rows = [m for m in messages["overview"] if m["op"] == "row"]
    assert rows[0]["id"] == row_id("container", "web01", BIDI)
    assert "unhealthy" in rows[0]["html"]
    assert "\u202e" not in rows[0]["html"]
    alerts = [m for m in messages["overview"] if m.get("target") == "alerts-rows"]
    assert "<csrf-token>" in alerts[0]["html"]


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("/alerts?x=1", "/alerts?x=1"),
        ("/", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example/x", "/"),
        ("/\t/evil.example/x", "/"),  # browsers drop the tab: //evil.example/x
        ("/\n/evil.example", "/"),
        ("https://evil.example/", "/"),
        ("alerts", "/"),
    ],
)
def test_after_logging_in_the_console_leads_only_to_its_own_pages(given: str, kept: str) -> None:
    assert safe_next(given) == kept


async def test_without_a_token_a_page_of_another_site_rebinding_its_name_to_loopback_is_refused() -> None:
    """DNS rebinding: evil.example resolves to 127.0.0.1, so its page is same-origin with itself;
    only the Host it names gives it away."""
    ctx = context(populated(time.time()))
    async with TestClient(TestServer(make_app(ctx))) as client:
        csrf = await csrf_of(client)
        rebound = {"Host": "evil.example:10201", "Origin": "http://evil.example:10201"}
        form = {"matchers": "host=web01", "duration": "30d", "comment": "x", "csrf": csrf}
        response = await client.post("/silences", data=form, headers=rebound, allow_redirects=False)
        assert response.status == 403
        assert "allowed_hosts" in await response.text()
        assert (await client.get("/metrics", headers=rebound)).status == 403
        assert not [k for k in ctx.store.kv.data if k.startswith(SILENCE_PREFIX)]  # type: ignore[union-attr]
        for host in ("localhost:10201", "[::1]:10201", "127.0.0.1"):
            assert (await client.get("/alerts", headers={"Host": host})).status == 200, host
    named = context(populated(time.time()), allowed_hosts=["Monitor.Internal"])
    async with TestClient(TestServer(make_app(named))) as client:
        assert (await client.get("/alerts", headers={"Host": "monitor.internal:10201"})).status == 200


class SilentKV(MemoryKV):
    """NATS gone while the user clicks: every call times out."""

    async def put(self, key: str, value: bytes) -> int:
        raise nats.errors.TimeoutError

    async def get(self, key: str) -> Any:
        raise nats.errors.ConnectionClosedError


async def test_with_nats_gone_a_click_says_nothing_was_stored_and_keeps_the_form() -> None:
    ctx = context(populated(time.time()))
    ctx.store = SilenceStore(SilentKV())  # type: ignore[arg-type]
    async with TestClient(TestServer(make_app(ctx))) as client:
        csrf = await csrf_of(client)
        form = {"matchers": "host=web01", "duration": "1h", "comment": "disk swap on web01", "csrf": csrf}
        response = await client.post("/silences", data=form, allow_redirects=False)
        assert response.status == 503
        page = await response.text()
        assert "nothing was stored" in page
        assert "disk swap on web01" in page, "what the user typed is still in the form"
        for action in ("/alerts/fp1/ack", "/silences/s1/expire"):
            response = await client.post(action, data={"csrf": csrf}, allow_redirects=False)
            assert response.status == 503, action
            assert "nothing was stored" in await response.text()
