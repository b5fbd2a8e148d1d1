"""The console service: the bus into the live model and the Prometheus exporter, the web app out."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import socket
import time
from collections.abc import Callable, Mapping

import nats.errors
from aiohttp import web
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from bus import deadletter
from bus import vocabulary as vocab
from bus.aio import cancel_and_wait, wait_unless
from bus.connection import Bus
from bus.events import (
    SUBJECT_MISMATCH,
    Alert,
    EventDecodeError,
    HealthEvent,
    Heartbeat,
    MetricBatch,
    any_event,
    from_its_source,
)
from bus.heartbeat import beat
from bus.jetstream import KV_BUCKETS, bucket_name, ensure_bucket, watching
from bus.kvblob import BlobStore, StoreError
from bus.records import SILENCE_PREFIX, Silence, SilenceStore, decode_silence, load_active
from sinks.console.app import Context, make_app
from sinks.console.config import ConsoleConfig, ConsoleSecrets, resolve_token
from sinks.console.history import Read, read_range
from sinks.console.live import Hub
from sinks.console.prom import MetricsExporter
from sinks.console.render import Renderer
from sinks.console.state import ConsoleState, Limits
from sinks.report.config import ReportSinkConfig

log = logging.getLogger(__name__)

CONSOLE_PART = vocab.CONSOLE_PART  # its name on the bus, in heartbeats and in `up`'s supervisor
FAMILIES = ("metrics", "health", "heartbeat", "alerts")
# The evaluator's active alerts are read every ACTIVE_POLL seconds for ACTIVE_SETTLE seconds after an
# alert event, a silence or an ack, or a silence starting or ending (the evaluator writes them
# within a second of a change), and every ACTIVE_REFRESH seconds otherwise: an idle console costs
# the bus next to nothing.
ACTIVE_POLL = 1.0
ACTIVE_SETTLE = 5.0
ACTIVE_REFRESH = 15.0
PRUNE_EVERY = 60.0
HISTORY_READ = 20_000  # stored batches one chart range reads at most
KV_RETRY = 2.0
# whose health events are service checks, read back from the start of the day at start
CHECK_AGENTS = (vocab.PROBE_AGENT, vocab.POSTGRES_AGENT)
ConsoleEvent = MetricBatch | HealthEvent | Heartbeat | Alert


class ConsoleService:
    """Subscribes to every event family, keeps the model, and serves the console until stopped."""

    def __init__(
        self,
        config: ConsoleConfig,
        bus: Bus,
        *,
        sla: Mapping[str, float] | None = None,
        zone: dt.tzinfo = dt.UTC,
        secrets: ConsoleSecrets | None = None,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.host = host or socket.gethostname()
        self.clock = clock
        self.secrets = secrets if secrets is not None else resolve_token(config)
        limits = Limits(
            history=config.history.seconds,
            points=config.history_points,
            max_series=config.max_series,
            log_lines=config.log_lines,
        )
        self.state = ConsoleState(limits, sla=dict(sla or {}), zone=zone)
        self.renderer = Renderer(zone)
        self.hub = Hub(self.state, self.renderer, clock=clock)
        self.exporter = MetricsExporter()
        self.context = Context(
            config=config,
            secrets=self.secrets,
            state=self.state,
            renderer=self.renderer,
            hub=self.hub,
            exporter=self.exporter,
            read=self._read,
            refresh=self._refresh_silences,
            clock=clock,
        )
        self.rejections = deadletter.Rejections()
        self.port: int | None = None  # the port it listens on, once it does
        self.ready = asyncio.Event()
        self._silences: dict[str, Silence] = {}
        self._stopped = asyncio.Event()
        self._active_moved = asyncio.Event()  # an alert event, a silence or an ack since the last read
        self._subs: list[Subscription] = []
        self._held: list[ConsoleEvent] | None = [] if config.backfill > 0 else None

    def stop(self) -> None:
        self._stopped.set()

    def counters(self) -> dict[str, int]:
        return {
            "events": self.state.counters.events,
            "dropped_series": self.state.counters.dropped_series,
            "pages_open": len(self.hub.subscribers),
            "live_messages": self.hub.sent,
            "live_overflows": self.hub.overflows,
            **{f"refused.{reason}": n for reason, n in self.context.refused.items()},
        }

    @property
    def url(self) -> str:
        host = self.config.bind if ":" not in self.config.bind else f"[{self.config.bind}]"
        return f"http://{host}:{self.port}"

    async def run(self) -> None:
        """Serve until `stop()`; NATS outages and bad messages are logged, never raised."""
        runner = web.AppRunner(make_app(self.context), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.config.bind, self.config.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                f"console: cannot listen on {self.config.bind}:{self.config.port}: {exc.strerror or exc}"
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        log.info("console: serving %s", self.url)
        tasks = [
            asyncio.create_task(self.hub.run(self._stopped)),
            asyncio.create_task(self._kv()),
            asyncio.create_task(self._prune()),
            asyncio.create_task(
                beat(
                    self.bus,
                    self.host,
                    CONSOLE_PART,
                    self.counters,
                    lambda: self.rejections.by_reason,
                    self._stopped,
                )
            ),
        ]
        try:
            await self._subscribe()
            self.ready.set()
            await self._backfill()
            await self._stopped.wait()
        finally:
            for sub in self._subs:
                with contextlib.suppress(nats.errors.Error, OSError):
                    await sub.unsubscribe()
            await cancel_and_wait(tasks)
            await runner.cleanup()

    # -- the bus -------------------------------------------------------------------------------

    async def _subscribe(self) -> None:
        for family in FAMILIES:
            self._subs.append(await self.bus.nc.subscribe(self.bus.subjects.family(family), cb=self._on_msg))

    async def _on_msg(self, msg: Msg) -> None:
        try:
            event = any_event.decode(msg.data, msg.subject)
        except EventDecodeError as exc:
            self.rejections.count(exc.reason)
            return
        if not from_its_source(self.bus.subjects, event, msg.subject):
            self.rejections.count(SUBJECT_MISMATCH)
            return
        if not isinstance(event, ConsoleEvent):
            return
        if self._held is not None and len(self._held) < self.config.backfill:
            self._held.append(event)  # applied after the stored ones, so that history stays in order
            return
        self.observe(event)

    def observe(self, event: ConsoleEvent) -> None:
        """One event into the model and the exporter; the pages hear of it within `coalesce`."""
        self.state.observe(event)
        if isinstance(event, Alert):
            self._active_moved.set()
        try:
            self.exporter.observe(event)
        except Exception:  # the exporter's bug must not stop the pages
            log.exception("console: the /metrics exporter failed on an event")
        self.hub.changed()

    async def _backfill(self) -> None:
        """What the streams kept, so a restarted console is not blank: the last `history` of metrics
        for the charts, today's checks for availability so far today, the last day's alert changes.

        Live events arriving meanwhile are held and applied after, so that every row stays in order.
        """
        if self._held is None:
            return
        now = self.clock()
        midnight = dt.datetime.fromtimestamp(now, self.state.zone).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        prefix, limit = self.bus.subjects.prefix, self.config.backfill
        reads = [
            ("metrics", f"{prefix}.metrics.>", now - self.config.history.seconds),
            *(("health", f"{prefix}.health.*.{agent}.>", midnight.timestamp()) for agent in CHECK_AGENTS),
            ("alerts", f"{prefix}.alerts.>", now - 86400.0),
        ]
        stored = 0
        try:
            for family, subject, start in reads:
                read = await read_range(
                    self.bus.nc.jetstream(), self.bus.subjects, family, subject, start, now, limit
                )
                for event in read.events:
                    if isinstance(event, ConsoleEvent):
                        self.state.observe(event)
                stored += len(read.events)
        finally:
            held, self._held = self._held, None
            for event in held:
                self.observe(event)
            self.hub.changed()
        if stored:
            log.info("console: %d stored events read back", stored)

    async def _read(self, agent: str, start: float, end: float) -> Read:
        """A range of one agent's metric batches (`agent` is ours, never outside text)."""
        subjects = self.bus.subjects
        subject = f"{subjects.prefix}.metrics.*.{agent}"
        return await read_range(
            self.bus.nc.jetstream(), subjects, "metrics", subject, start, end, HISTORY_READ
        )

    # -- KV: silences, acks, the evaluator's active alerts ------------------------------------

    async def _open(self, bucket: str) -> KeyValue:
        js = self.bus.nc.jetstream()
        name = bucket_name(self.bus.subjects.prefix, bucket)
        await ensure_bucket(js, name, KV_BUCKETS[bucket], replicas=self.bus.replicas)
        return await js.key_value(name)

    async def _kv(self) -> None:
        while not self._stopped.is_set():
            try:
                silences = await self._open("silences")
                state = await self._open("state")
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                log.warning("console: no JetStream KV yet (%s): silences and acks wait for it", exc)
                if await wait_unless(self._stopped, KV_RETRY * 5):
                    return
                continue
            self.context.store = SilenceStore(silences)
            await self._refresh_silences()
            tasks = [
                asyncio.create_task(self._watch_silences(silences)),
                asyncio.create_task(self._poll_active(BlobStore(state))),
            ]
            try:
                await self._stopped.wait()
            finally:
                await cancel_and_wait(tasks)
            return

    async def _refresh_silences(self) -> None:
        store = self.context.store
        if store is None:
            return
        try:
            found = await store.silences()
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("console: cannot read the silences: %s", exc)
            return
        self._silences = {s.id: s for s in found}
        self.state.set_silences(list(self._silences.values()))
        self.hub.changed()

    async def _watch_silences(self, kv: KeyValue) -> None:
        """Follow the bucket, so a silence from the command line shows on open pages at once."""
        while True:
            try:
                async with watching(kv) as watcher:
                    async for entry in watcher:
                        if entry is not None:  # a silence or an ack: the evaluator's list follows
                            self._active_moved.set()
                        if entry is None or not entry.key.startswith(SILENCE_PREFIX):
                            continue
                        silence_id = entry.key[len(SILENCE_PREFIX) :]
                        silence = None
                        if entry.operation not in ("DEL", "PURGE"):
                            silence = decode_silence(entry.value or b"")
                        if silence is None:
                            self._silences.pop(silence_id, None)
                        else:
                            self._silences[silence_id] = silence
                        self.state.set_silences(list(self._silences.values()))
                        self.hub.changed()
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                log.warning("console: watching silences failed, retrying: %s", exc)
                await asyncio.sleep(KV_RETRY)

    async def _poll_active(self, blobs: BlobStore) -> None:
        warned = False
        loop = asyncio.get_running_loop()
        moving_until = -math.inf
        while True:
            try:
                active = await load_active(blobs)
            except (StoreError, nats.errors.Error, TimeoutError) as exc:
                if not warned:
                    log.warning("console: cannot read the evaluator's active alerts: %s", exc)
                    warned = True
                active = None
            if active is not None:
                before = self.state.active
                self.state.set_active(active)
                self.exporter.set_active(active)  # ALERTS of what fired before the console started
                if self.state.active is not before:
                    self.hub.changed()
            if loop.time() < moving_until:
                await asyncio.sleep(ACTIVE_POLL)
            else:
                wait = self._until_silences_turn(ACTIVE_REFRESH)
                if not await wait_unless(self._active_moved, wait) and wait < ACTIVE_REFRESH:
                    self._active_moved.set()  # a silence started or ended: its alerts change state
            if self._active_moved.is_set():
                self._active_moved.clear()
                moving_until = loop.time() + ACTIVE_SETTLE

    def _until_silences_turn(self, longest: float) -> float:
        """Seconds until a silence starts or ends (the evaluator's list changes then, with no event
        to tell of it), at most `longest`."""
        now = self.clock()
        turns = [at for s in self._silences.values() for at in (s.starts_at, s.ends_at) if at > now]
        return min([longest, *(at - now for at in turns)])

    async def _prune(self) -> None:
        while not await wait_unless(self._stopped, PRUNE_EVERY):
            if self.state.prune(self.clock()):
                self.hub.changed()


def console_service(config: ConsoleConfig, report: ReportSinkConfig, bus: Bus) -> ConsoleService:
    """The console with the report's SLA targets per check and its time zone for "today"."""
    sla = {check: service.availability_percent for service in report.services for check in service.checks}
    return ConsoleService(config, bus, sla=sla, zone=report.zone)
