"""Live pages: the model's changed rows, rendered once, sent to every open page over SSE."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web
from markupsafe import Markup

from bus.records import silence_state
from sinks.console.render import PAGES, Renderer
from sinks.console.state import ConsoleState

log = logging.getLogger(__name__)

# Each page's own token replaces it as a fragment is sent. It goes into the fragment unescaped,
# and escaped text from the bus can never hold a bare `<`: an alert summary cannot carry it.
CSRF_PLACEHOLDER = Markup("<csrf-token>")
COALESCE = 0.05  # seconds: changes arriving together go out in one message
QUEUE = 64  # messages waiting for a slow page; beyond, it is told to reload
PING = 15.0  # seconds between keep-alive comments, so proxies keep the stream open

Message = dict[str, Any]


@dataclass(eq=False)
class Subscriber:
    page: str
    csrf: str
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(QUEUE))
    overflowed: bool = False


class Hub:
    """Turns `state.take_dirty()` into messages per page and fans them out."""

    def __init__(
        self,
        state: ConsoleState,
        renderer: Renderer,
        *,
        coalesce: float = COALESCE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.renderer = renderer
        self.coalesce = coalesce
        self.clock = clock
        self.subscribers: set[Subscriber] = set()
        self.sent = 0
        self.overflows = 0
        self._wake = asyncio.Event()

    def changed(self) -> None:
        """Something was observed: a flush follows within `coalesce` seconds."""
        self._wake.set()

    async def run(self, stopped: asyncio.Event) -> None:
        """Flush changes until `stopped`."""
        while not stopped.is_set():
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stopped.wait())
            try:
                await asyncio.wait((waiter, stopper), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
            if stopped.is_set():
                return
            await asyncio.sleep(self.coalesce)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # a bug in one fragment must not end live updates for everyone
                log.exception("console: live update failed")

    def flush(self) -> dict[str, list[Message]]:
        """Render what changed and queue it for every subscriber; the messages by page."""
        dirty = self.state.take_dirty()
        if not dirty or not self.subscribers:  # a page opened later renders from the model itself
            return {}
        by_page = self.messages(dirty, self.clock())
        for subscriber in list(self.subscribers):
            messages = by_page.get(subscriber.page)
            if messages:
                self._send(subscriber, messages)
        return by_page

    def _send(self, subscriber: Subscriber, messages: list[Message]) -> None:
        payload = msgspec.json.encode(messages).decode().replace(CSRF_PLACEHOLDER, subscriber.csrf)
        try:
            subscriber.queue.put_nowait(f"data: {payload}\n\n".encode())
            self.sent += 1
        except asyncio.QueueFull:  # a page that cannot keep up reloads instead of drifting
            self.overflows += 1
            subscriber.overflowed = True

    # -- what each page receives ------------------------------------------------------------

    def messages(self, dirty: dict[tuple[str, str], tuple[str, ...]], now: float) -> dict[str, list[Message]]:
        state, frag = self.state, self.renderer.fragment
        out: dict[str, list[Message]] = {page: [] for page in PAGES}
        alerts = state.alerts()
        start = now - state.limits.history
        for (table, rid), key in dirty.items():
            if table == "host":
                view = state.hosts.get(key[0])
                html = None
                if view is not None:
                    status = state.host_status(view, now, state.alerts_on(alerts, view.host))
                    html = frag("host_row", view, status, start, now)
                out["overview"].append(_row(rid, html, "host-rows"))
            elif table == "container":
                # containers in trouble in the table, the healthy ones folded away below it
                cview = state.containers.get((key[0], key[1]))
                status = state.container_status(cview, now) if cview else "ok"
                html = frag("container_row", cview, status) if cview else None
                here, away = (
                    ("container-ok-rows", "container-rows")
                    if status == "ok"
                    else ("container-rows", "container-ok-rows")
                )
                out["overview"] += [_row(rid, html, here), _row(rid, None, away)]
            elif table == "check":
                check = state.checks.get((key[0], key[1], key[2]))
                html = frag("check_row", check) if check else None
                out["overview"].append(_row(rid, html, "check-rows"))
                failing = html if check is not None and check.status != "ok" else None
                out["errors"].append(_row(rid, failing, "failing-rows"))
            elif table == "part":
                part = state.parts.get((key[0], key[1]))
                out["overview"].append(_row(rid, frag("part_row", part, now) if part else None, "part-rows"))
            elif table == "log":
                logs = state.logs.get((key[0], key[1]))
                html = frag("log_row", logs, state.alerts_on(alerts, key[0], key[1])) if logs else None
                out["errors"].append(_row(rid, html, "log-rows"))
            elif table == "perf":
                self._perf(out, rid, key[0])
            elif table == "alerts":
                self._alerts(out, alerts, now)
        summary = {"op": "html", "target": "summary", "html": frag("summary", state.summary(now))}
        for messages in out.values():
            messages.append(summary)
        return out

    def _perf(self, out: dict[str, list[Message]], rid: str, check: str) -> None:
        view = self.state.perf.get(check)
        html = self.renderer.fragment("perf_row", view) if view else None
        out["performance"].append(_row(rid, html, "perf-rows"))
        erring = html if view is not None and view.latest.get("error_ratio", 0) > 0 else None
        out["errors"].append(_row(rid, erring, "endpoint-rows"))
        if view is not None:
            values = {f"{check}|{name}": value for name, value in view.latest.items()}
            point = {"op": "point", "t": view.ts, "values": values}
            out["performance"].append(point)
            out["errors"].append(point)

    def _alerts(self, out: dict[str, list[Message]], alerts: list[Any], now: float) -> None:
        frag = self.renderer.fragment
        body = {
            "op": "html",
            "target": "alerts-rows",
            "html": frag("alerts_body", alerts, CSRF_PLACEHOLDER, True),
        }
        out["overview"].append(body)
        out["alerts"].append(body)
        silences = "".join(
            frag("silence_row", s, silence_state(s, now), CSRF_PLACEHOLDER) for s in self.state.silences
        )
        out["alerts"].append(
            {"op": "html", "target": "silence-rows", "html": f'<tbody id="silence-rows">{silences}</tbody>'}
        )
        history = "".join(frag("history_row", a) for a in self.state.history)
        out["alerts"].append(
            {"op": "html", "target": "history-rows", "html": f'<tbody id="history-rows">{history}</tbody>'}
        )

    # -- the stream --------------------------------------------------------------------------

    async def stream(
        self, request: web.Request, page: str, csrf: str, allowed: Callable[[], bool] = lambda: True
    ) -> web.StreamResponse:
        """GET /events: an SSE stream of changes for `page`, until the page goes away or is no
        longer `allowed` (its session logged out or too old: looked at every PING at most)."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        subscriber = Subscriber(page=page, csrf=csrf)
        self.subscribers.add(subscriber)
        try:
            await response.write(b"retry: 2000\n: connected\n\n")
            while True:
                if subscriber.overflowed:
                    reload = msgspec.json.encode([{"op": "reload"}])
                    await response.write(b"data: " + reload + b"\n\n")
                    return response
                try:
                    chunk = await asyncio.wait_for(subscriber.queue.get(), PING)
                except TimeoutError:
                    chunk = b": ping\n\n"
                if not allowed():
                    return response
                await response.write(chunk)
        except ConnectionResetError:  # the page was closed
            return response
        finally:
            self.subscribers.discard(subscriber)


def _row(rid: str, html: str | None, body: str) -> Message:
    return {"op": "row", "id": rid, "html": html, "bodies": [body]}
