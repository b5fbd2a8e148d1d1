"""The report sink service: JetStream consumers into the rollup store, and the daily report.

Messages are rolled up in memory as they arrive and written every `commit_every` with the stream
positions they reach; the consumers acknowledge nothing and are made afresh at every start right
after those positions, so what a crash took back is delivered again and nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import socket
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from bus import deadletter
from bus import vocabulary as vocab
from bus.aio import Backoff, cancel_and_wait, wait_unless
from bus.connection import Bus
from bus.heartbeat import beat
from bus.jetstream import stream_name
from bus.pull import Broken, Feed, Handler, resume_after
from sinks.report import intake
from sinks.report.config import WEEKDAYS, ReportSinkConfig
from sinks.report.layout import LayoutError
from sinks.report.model import METRICS_READ, PeriodKind, make_period
from sinks.report.render import REPORTS_DIR, produce, prune_reports
from sinks.report.rollups import STORE_FILE, RollupStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# What each stream's consumer accepts; anything else on it is counted as malformed.
FAMILIES = intake.EXPECTED
ReportEvent = intake.Input
# A pull request lasts this long at most; its messages are taken in as they come, so a long one
# delays nothing and, idle, asks the server less often.
FETCH_TIMEOUT = 5.0
PULL_BATCH = 2000  # messages asked for in one pull, at most
STOP_GRACE = 5.0
RETRY_CAP = 30.0
# After a start, the runs of this many days back are looked at for reports missing or cut short.
CATCH_UP_DAYS = 7
# A report waits at most this long for the streams to be read up to its run (after an outage of
# the sink, its backlog); then it is written from what is there, with a warning.
SETTLE_LIMIT = 900.0


def next_daily_run(now: float, config: ReportSinkConfig) -> float:
    """The first local `daily_at` strictly after `now`."""
    zone = config.zone
    hour, minute = config.daily_time
    today = dt.datetime.fromtimestamp(now, zone).date()
    for offset in (0, 1, 2):  # two days ahead covers any DST jump
        day = today + dt.timedelta(days=offset)
        at = dt.datetime.combine(day, dt.time(hour, minute), tzinfo=zone).timestamp()
        if at > now:
            return at
    raise AssertionError("unreachable: a daily time always comes within two days")


def runs_since(since: float, now: float, config: ReportSinkConfig) -> list[float]:
    """The local `daily_at` runs after `since` and at or before `now`, oldest first."""
    runs = []
    at = next_daily_run(since, config)
    while at <= now:
        runs.append(at)
        at = next_daily_run(at, config)
    return runs


def reports_due(at: float, config: ReportSinkConfig) -> list[tuple[PeriodKind, dt.date]]:
    """What the run at `at` writes: the day that just ended, and on `weekly_on` its week too."""
    local = dt.datetime.fromtimestamp(at, config.zone).date()
    yesterday = local - dt.timedelta(days=1)
    due: list[tuple[PeriodKind, dt.date]] = [("day", yesterday)]
    if WEEKDAYS[local.weekday()] == config.weekly_on:
        due.append(("week", yesterday))
    return due


def out_dir_of(config: ReportSinkConfig, data_dir: Path) -> Path:
    """Where reports/post-golive/ lives: `out_dir` if set, else the data dir."""
    return Path(config.out_dir).expanduser() if config.out_dir else data_dir


@dataclass
class SinkStats:
    messages: int = 0  # taken in: rolled up, set aside or refused
    malformed: int = 0  # undecodable, or an event of the wrong kind for its stream
    duplicates: int = 0  # redelivered messages already in the store
    rejected: int = 0  # decoded but refused by the store
    store_errors: int = 0
    reports: int = 0
    report_errors: int = 0
    dead_lettered: int = 0


class ReportSink:
    """Consumes metrics, health and alerts into hourly rollups and writes the reports on schedule."""

    def __init__(
        self,
        config: ReportSinkConfig,
        bus: Bus,
        data_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.host = host or socket.gethostname()
        self.lag: dict[str, int] = {}  # messages each consumer had still to fetch, at its last fetch
        self.store_path = data_dir / STORE_FILE
        self.out_dir = out_dir_of(config, data_dir)
        self.clock = clock
        self.stats = SinkStats()
        self.rejections = deadletter.Rejections()
        self._letters: list[deadletter.Letter] = []  # kept once their window is in the store
        self.store: RollupStore | None = None
        self._stopped = asyncio.Event()
        self._feeds: dict[str, Feed] = {}
        self._seen: dict[str, int] = {}  # per stream, the last message taken into the store or window
        self._taken = 0  # messages in the window
        self._full = asyncio.Event()  # the window holds batch_size messages (or the sink stops)
        self._writable = asyncio.Event()  # cleared while a write fails
        self._writable.set()
        self._store_work: asyncio.Future[Any] | None = None  # the latest work on the store, in its thread
        # per family, when a pull last found the consumer with nothing more to deliver
        self._caught_up: dict[str, float] = {}
        self._pulled = asyncio.Event()
        # SQLite work runs in a thread, so `up`'s agents keep their timing; one at a time
        self._store_lock = asyncio.Lock()

    def stop(self) -> None:
        self._stopped.set()
        self._full.set()

    def counters(self) -> dict[str, int]:
        """What the sink did since it started, for its heartbeat and `jarvis-monitor status`."""
        store = self.store.stats if self.store is not None else None
        out = {name: getattr(self.stats, name) for name in self.stats.__dataclass_fields__}
        if store is not None:
            out |= {"metric_batches": store.metric_batches, "health_events": store.health_events}
            out["alerts"] = store.alerts
        return out | {f"lag.{family}": pending for family, pending in self.lag.items()}

    def open(self) -> RollupStore:
        """Open (or create) the rollup store; `run` does this first."""
        if self.store is None:
            self.store = RollupStore(
                self.store_path,
                health_gap=self.config.health_gap.seconds,
                restart_events=self.config.restart_events,
                metrics=METRICS_READ,  # the rest of a batch is skipped: no report reads it
            )
        return self.store

    async def run(self) -> None:
        """Consume and report until `stop()`; outages and bad messages are logged, never raised."""
        try:  # in a thread: a store of an earlier layout is laid out anew first, once
            await asyncio.to_thread(self.open)
        except (OSError, sqlite3.Error, LayoutError) as exc:  # the rest of `up` keeps running without reports
            log.error("report sink: cannot open %s, no reports: %s", self.store_path, exc)
            await self._stopped.wait()
            return
        assert self.store is not None
        log.info("report sink: rollups in %s, reports in %s", self.store_path, self.out_dir / "reports")
        backoff = Backoff(0.2, RETRY_CAP)
        while True:  # where each stream stands: the consumers start right after it
            try:
                self._seen = await asyncio.to_thread(self.store.positions)
                break
            except sqlite3.Error as exc:  # locked, say: retried, as a failed write is
                self.stats.store_errors += 1
                if backoff.attempts == 0:
                    log.error("report sink: cannot read %s: %s; retrying", self.store_path, exc)
                if await wait_unless(self._stopped, backoff.next()):
                    self.store.close()
                    self.store = None
                    return
        consumers = [asyncio.create_task(self._consume(family)) for family in FAMILIES]
        commits = asyncio.create_task(self._commits())
        schedule = asyncio.create_task(self._schedule())
        heartbeat = asyncio.create_task(
            beat(
                self.bus,
                self.host,
                vocab.REPORT_PART,
                self.counters,
                lambda: self.rejections.by_reason,
                self._stopped,
            )
        )
        try:
            await self._stopped.wait()
            # Nothing is acknowledged: a pull cut short only leaves its messages to the next start.
            await cancel_and_wait(consumers)
            for feed in self._feeds.values():
                await feed.close()
            await asyncio.wait([commits], timeout=STOP_GRACE)  # a write under way finishes
            if commits.done():
                await self.commit()
        finally:
            await cancel_and_wait([*consumers, commits, schedule, heartbeat])
            for feed in self._feeds.values():
                await feed.close()
            async with self._store_lock:  # no write may still be running in its thread
                work = self._store_work
                if work is not None:  # what a cancelled commit or prune left running
                    await asyncio.wait([work])
                    if not work.cancelled():
                        work.exception()  # told by the commit's retry, or lost with the stop
                self.store.close()
            self.store = None

    # -- consuming -----------------------------------------------------------------------------

    async def _open_feed(self, family: str) -> Feed:
        """The family's feed from right after what the sink has taken in, retried until the stream
        exists (the evaluator makes the streams)."""
        stream = stream_name(self.bus.subjects.prefix, family)
        feed = self._feeds.get(family)
        if feed is None:
            handle: Handler = partial(self._take_in, family, stream)
            feed = self._feeds[family] = Feed(self.bus.nc, stream, self.config.durable, handle)
        subject = self.bus.subjects.family(family)
        backoff = Backoff(0.2, RETRY_CAP)
        while True:
            try:
                config = ConsumerConfig(ack_policy=AckPolicy.NONE, filter_subject=subject)
                await feed.open(resume_after(config, self._seen.get(stream, 0)))
                return feed
            except (NotFoundError, nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                if backoff.attempts == 0:
                    log.warning("report sink: cannot consume %s yet (%s); retrying", stream, exc)
                if await wait_unless(self._stopped, backoff.next()):
                    return feed

    async def _consume(self, family: str) -> None:
        feed = await self._open_feed(family)
        backoff = Backoff(0.2, RETRY_CAP)
        while not self._stopped.is_set():
            await self._writable.wait()  # while a write fails, the window grows no further
            try:
                got = await feed.pull(min(PULL_BATCH, self.config.batch_size), FETCH_TIMEOUT)
            except Broken as exc:
                log.warning("report sink: %s: %s; consuming afresh from where it stands", feed.stream, exc)
                await wait_unless(self._stopped, backoff.next())
                feed = await self._open_feed(family)
                continue
            except nats.errors.Error as exc:  # an outage: the client reconnects, we wait
                if backoff.attempts == 0:
                    log.warning("report sink: fetching from %s failed: %s", feed.stream, exc)
                await wait_unless(self._stopped, backoff.next())
                continue
            backoff.reset()
            self.lag[family] = feed.pending
            if feed.expired or (got and feed.pending == 0):
                self._caught_up[family] = self.clock()
            self._pulled.set()

    def _take_in(self, family: str, stream: str, msg: Msg, seq: int, _stored_ns: int) -> None:
        """One message into the window (the feed's callback): counted, set aside, or rolled up."""
        if seq <= self._seen.get(stream, 0):
            self.stats.duplicates += 1
            return
        self._seen[stream] = seq
        self._taken += 1
        self.stats.messages += 1
        partly = ""
        try:
            try:
                event = intake.decode(family, msg.data, msg.subject)
            except intake.PartlyRefused as exc:
                event, partly = exc.event, exc.reason
            intake.check_source(self.bus.subjects, family, event, msg.subject)
        except intake.Refused as exc:
            self._malformed(msg, seq, exc.reason)
        else:
            if partly:
                self._malformed(msg, seq, partly)
            assert self.store is not None
            try:
                self.store.add(event)
            except Exception as exc:  # a bug on this event, or a label set over the wire's bounds
                self.stats.rejected += 1
                log.error("report sink: rejected a %s from %s: %s", type(event).__name__, stream, exc)
        if self._taken >= self.config.batch_size:
            self._full.set()

    def _malformed(self, msg: Msg, seq: int, reason: str) -> None:
        """Counted by reason and kept as a dead letter (the evaluator keeps the same one, same id)."""
        self.stats.malformed += 1
        self.rejections.count(reason)
        dead = self.bus.subjects.dead_letter("input", self.bus.subjects.family_of(msg.subject))
        self._letters.append(deadletter.input_letter(dead, msg, reason, by="report", stream_seq=seq))
        if self.stats.malformed == 1 or self.stats.malformed % 1000 == 0:
            log.warning(
                "report sink: set aside %d malformed messages on %s, latest: %s",
                self.stats.malformed,
                dead,
                reason,
            )

    async def _keep_letters(self, letters: list[deadletter.Letter]) -> None:
        js = self.bus.nc.jetstream()
        for letter in letters:
            await deadletter.publish(js, *letter, max_payload=self.bus.nc.max_payload, stopped=self._stopped)
        self.stats.dead_lettered += len(letters)

    async def _commits(self) -> None:
        """Write the window every `commit_every` or when full, and once more when stopping."""
        every = self.config.commit_every.seconds
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), every)
            if self._stopped.is_set():  # `run` writes the last window once consuming has ended
                return
            await self.commit()

    async def commit(self) -> bool:
        """Write what came in so far with the stream positions it reaches; True once written.

        A failed write keeps the window and is retried (consuming paused meanwhile) until it
        succeeds or the sink stops: then nothing of it was written, and the consumers, made
        afresh at the next start where the store stands, deliver it again.
        """
        store = self.store
        assert store is not None
        self._full.clear()
        if self._taken == 0:
            async with self._store_lock:  # a write under way (or retried) ends first
                return True
        backoff = Backoff(0.2, RETRY_CAP)
        async with self._store_lock:
            # taken under the lock: a prune's `forget` must see this window's series still holding
            # their values, or it drops them and the write stores them under ids it deleted
            window, positions = store.take(), dict(self._seen)
            letters, self._letters, self._taken = self._letters, [], 0
            while True:  # at least once, even when stopping
                try:
                    await self._on_store(store.write, window, positions)
                    break
                except Exception as exc:  # disk full, locked (or a bug): keep the window, retry
                    self.stats.store_errors += 1
                    self._writable.clear()
                    if backoff.attempts == 0:
                        if isinstance(exc, sqlite3.Error):
                            log.error("report sink: cannot write %s: %s; retrying", self.store_path, exc)
                        else:
                            log.exception("report sink: writing %s failed; retrying", self.store_path)
                    if await wait_unless(self._stopped, backoff.next()):
                        log.error("report sink: stopped before the last write; redelivered at the next start")
                        return False
        self._writable.set()
        if letters:
            await self._keep_letters(letters)
        return True

    # -- reports -------------------------------------------------------------------------------

    async def _schedule(self) -> None:
        unread = await self._read_up_to(self.clock())
        await self._catch_up_logged(unread)
        while not self._stopped.is_set():
            due = next_daily_run(self.clock(), self.config)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), max(0.0, due - self.clock()))
                return
            unread = await self._read_up_to(due)
            await self._catch_up_logged(unread, before=due)  # what an earlier run wrote unread
            await self.daily(due, unread)

    async def _read_up_to(self, since: float) -> list[str]:
        """Wait until every stream was read up to what it held at `since` (`write` then writes the
        window first): a report written while the backlog still held part of its period would stand
        as the period's for good. At most SETTLE_LIMIT, then a warning; the streams still behind."""
        limit = asyncio.get_running_loop().time() + SETTLE_LIMIT
        behind: list[str] = []
        while not self._stopped.is_set():
            behind = [family for family in FAMILIES if self._caught_up.get(family, -math.inf) < since]
            if not behind:
                break
            if asyncio.get_running_loop().time() >= limit:
                log.warning(
                    "report sink: writing reports before %s was read up to its run, after %.0f s;"
                    " they are written again at the next run",
                    ", ".join(behind),
                    SETTLE_LIMIT,
                )
                break
            self._pulled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pulled.wait(), 1.0)
        return behind

    async def _catch_up_logged(self, unread: Sequence[str], before: float = math.inf) -> None:
        try:
            await self.catch_up(unread, before=before)
        except (OSError, sqlite3.Error) as exc:
            log.error("report sink: cannot look for missed reports: %s", exc)

    async def catch_up(self, unread: Sequence[str] = (), *, before: float = math.inf) -> None:
        """Write what the runs of the last CATCH_UP_DAYS (before `before`) would have, where it is
        missing, was written before its period ended (`jarvis-monitor report` during the day), or
        before the sink had read its streams up to the run (`unread` in it).

        Only for periods the store has data from, so a fresh install writes no empty report.
        """
        store = self.store
        assert store is not None
        now = self.clock()
        async with self._store_lock:
            first = await asyncio.to_thread(store.first_hour)
        if first is None:
            return
        for run in runs_since(now - CATCH_UP_DAYS * 86400, now, self.config):
            if run >= before:
                continue
            for kind, day in reports_due(run, self.config):
                period = make_period(kind, day, self.config.timezone, self.config.zone)
                if first < period.end and not self._written_whole(period.label, period.end):
                    await self.write(kind, day, unread)

    def _written_whole(self, label: str, end: float) -> bool:
        """Is the report `label` written, from after its period ended and its streams were read?"""
        try:
            written = msgspec.json.decode((self.out_dir / REPORTS_DIR / f"{label}.json").read_bytes())
        except (OSError, msgspec.DecodeError):
            return False
        if not isinstance(written, dict) or written.get("unread"):
            return False
        generated = written.get("generated_at")
        return isinstance(generated, int | float) and generated >= end

    async def daily(self, at: float, unread: Sequence[str] = ()) -> None:
        """The run at `at`: reports of the day (and week) that just ended, then retention."""
        for kind, day in reports_due(at, self.config):
            await self.write(kind, day, unread)
        await self.retain(at)

    async def write(self, kind: PeriodKind, day: dt.date, unread: Sequence[str] = ()) -> list[Path]:
        """Write one report from a reader of its own, off the event loop; failures are logged.
        What came in so far is written first, so the report has the period up to its end."""
        if self.store is not None:
            await self.commit()

        def work() -> list[Path]:
            store = RollupStore(self.store_path, readonly=True)
            try:
                return produce(store, self.config, kind, day, self.out_dir, self.clock(), unread)[1]
            finally:
                store.close()

        try:
            paths = await asyncio.to_thread(work)
        except (OSError, sqlite3.Error) as exc:
            self.stats.report_errors += 1
            log.error("report sink: cannot write the %s report of %s: %s", kind, day, exc)
            return []
        except Exception:  # a bug: logged, and the schedule goes on to the next report
            self.stats.report_errors += 1
            log.exception("report sink: the %s report of %s failed", kind, day)
            return []
        self.stats.reports += 1
        log.info("report sink: wrote %s", paths[-1])
        return paths

    async def _on_store(self, work: Callable[..., T], *args: Any) -> T:
        """`work` on the store in a thread, shielded: a stop that cancels the caller waits for it
        before closing the store (see run)."""
        self._store_work = future = asyncio.ensure_future(asyncio.to_thread(work, *args))
        result: T = await asyncio.shield(future)
        return result

    async def retain(self, now: float) -> None:
        """Prune rollups and delete old reports, as configured."""
        store = self.store
        assert store is not None
        today = dt.datetime.fromtimestamp(now, self.config.zone).date()
        try:
            before = now - self.config.rollup_retention.seconds
            async with self._store_lock:
                await self._on_store(store.prune_rows, before)
                store.forget(before)  # here: beside `add`, in the event loop
            keep_days = self.config.report_retention.seconds / 86400
            await asyncio.to_thread(prune_reports, self.out_dir, today, keep_days)
        except (OSError, sqlite3.Error) as exc:
            log.error("report sink: retention failed: %s", exc)
        except Exception:  # a bug: logged, and the schedule goes on
            log.exception("report sink: retention failed")
