"""The report sink service: durable JetStream consumers into the rollup store, and the daily report."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bus import deadletter
from bus import vocabulary as vocab
from bus.aio import Backoff, cancel_and_wait, wait_unless
from bus.connection import Bus
from bus.heartbeat import beat
from bus.jetstream import stream_name
from sinks.report import intake
from sinks.report.config import WEEKDAYS, ReportSinkConfig
from sinks.report.model import METRICS_READ, PeriodKind, make_period
from sinks.report.render import REPORTS_DIR, produce, prune_reports
from sinks.report.rollups import STORE_FILE, RollupStore

log = logging.getLogger(__name__)

# What each stream's consumer accepts; anything else on it is counted as malformed.
FAMILIES = intake.EXPECTED
ReportEvent = intake.Input
FETCH_TIMEOUT = 1.0
ACK_WAIT = 60.0
STOP_GRACE = 5.0
RETRY_CAP = 30.0


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
        self._letters: list[deadletter.Letter] = []  # kept once their batch is in the store
        self.store: RollupStore | None = None
        self._stopped = asyncio.Event()
        # SQLite work runs in a thread, so `up`'s agents keep their timing; one at a time
        self._store_lock = asyncio.Lock()

    def stop(self) -> None:
        self._stopped.set()

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
        try:
            self.open()
        except (OSError, sqlite3.Error) as exc:  # the rest of `up` keeps running without reports
            log.error("report sink: cannot open %s, no reports: %s", self.store_path, exc)
            await self._stopped.wait()
            return
        assert self.store is not None
        log.info("report sink: rollups in %s, reports in %s", self.store_path, self.out_dir / "reports")
        consumers = [asyncio.create_task(self._consume(family)) for family in FAMILIES]
        schedule = asyncio.create_task(self._schedule())
        consumers.append(
            asyncio.create_task(
                beat(
                    self.bus,
                    self.host,
                    vocab.REPORT_PART,
                    self.counters,
                    lambda: self.rejections.by_reason,
                    self._stopped,
                )
            )
        )
        try:
            await self._stopped.wait()
            # a fetch in flight finishes and its batch is committed and acked: cancelling it would
            # leave messages delivered to nobody until ack_wait, holding up the next start
            await asyncio.wait(consumers, timeout=FETCH_TIMEOUT + STOP_GRACE)
        finally:
            await cancel_and_wait([*consumers, schedule])
            self.store.close()
            self.store = None

    # -- consuming -----------------------------------------------------------------------------

    async def _subscribe(self, family: str) -> JetStreamContext.PullSubscription:
        """A pull subscription on the family's stream, retried until the stream exists."""
        stream = stream_name(self.bus.subjects.prefix, family)
        subject = self.bus.subjects.family(family)
        consumer = ConsumerConfig(
            durable_name=self.config.durable,
            deliver_policy=DeliverPolicy.ALL,
            # One batch in flight, acknowledged by one ack once committed. With no more pending
            # than a batch, messages come in stream order even after a crash (the lost batch is
            # redelivered before anything newer), so the committed stream position is an exact
            # test for "already in the store".
            ack_policy=AckPolicy.ALL,
            ack_wait=ACK_WAIT,
            max_ack_pending=self.config.batch_size,
            filter_subject=subject,
        )
        js = self.bus.nc.jetstream()
        backoff = Backoff(0.2, RETRY_CAP)
        while True:
            try:
                return await js.pull_subscribe(
                    subject, durable=self.config.durable, stream=stream, config=consumer
                )
            except (NotFoundError, nats.errors.Error, TimeoutError) as exc:
                if backoff.attempts == 0:
                    log.warning("report sink: cannot consume %s yet (%s); retrying", stream, exc)
                await asyncio.sleep(backoff.next())

    async def _consume(self, family: str) -> None:
        stream = stream_name(self.bus.subjects.prefix, family)
        sub = await self._subscribe(family)
        backoff = Backoff(0.2, RETRY_CAP)
        while not self._stopped.is_set():
            try:
                messages = await sub.fetch(self.config.batch_size, timeout=FETCH_TIMEOUT)
            except TimeoutError:
                continue
            except nats.errors.Error as exc:  # an outage: the client reconnects, we wait
                if backoff.attempts == 0:
                    log.warning("report sink: fetching from %s failed: %s", stream, exc)
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            if messages:
                self.lag[family] = messages[-1].metadata.num_pending
            try:
                ingested = bool(messages) and await self._ingest(family, stream, messages)
            except Exception:  # a bug: the batch stays unacked and comes again, the consumer goes on
                log.exception("report sink: a batch from %s could not be ingested", stream)
                ingested = False
            if ingested:
                await self._keep_letters()
                try:
                    await messages[-1].ack()  # AckPolicy.ALL: acknowledges the whole batch
                except nats.errors.Error as exc:  # redelivered later and recognised as duplicates
                    log.warning("report sink: ack on %s failed: %s", stream, exc)

    def _decode(
        self, family: str, messages: list[Msg], done: int
    ) -> tuple[list[tuple[ReportEvent, int]], int]:
        """The batch's new events with their stream sequences, and the batch's last sequence;
        messages at or before `done` (in the store already) and bad payloads are counted and skipped."""
        events: list[tuple[ReportEvent, int]] = []
        last = done
        for msg in messages:
            seq = msg.metadata.sequence.stream
            if seq <= done:
                self.stats.duplicates += 1
                continue
            last = max(last, seq)
            try:
                events.append((intake.decode(family, msg.data, msg.subject), seq))
            except intake.Refused as exc:
                self._malformed(msg, seq, exc.reason)
        return events, last

    def _malformed(self, msg: Msg, seq: int, reason: str) -> None:
        """Counted by reason and kept as a dead letter (the evaluator keeps the same one, same id)."""
        self.stats.malformed += 1
        self.rejections.count(reason)
        dead = self.bus.subjects.dead_letter("input", msg.subject.split(".")[1])
        self._letters.append(deadletter.input_letter(dead, msg, reason, by="report", stream_seq=seq))
        if self.stats.malformed == 1 or self.stats.malformed % 1000 == 0:
            log.warning(
                "report sink: set aside %d malformed messages on %s, latest: %s",
                self.stats.malformed,
                dead,
                reason,
            )

    async def _keep_letters(self) -> None:
        letters, self._letters = self._letters, []
        js = self.bus.nc.jetstream()
        for letter in letters:
            await deadletter.publish(js, *letter, max_payload=self.bus.nc.max_payload, stopped=self._stopped)
        self.stats.dead_lettered += len(letters)

    async def _ingest(self, family: str, stream: str, messages: list[Msg]) -> bool:
        """Commit the batch; True once it is in the store (only then may it be acked)."""
        store = self.store
        assert store is not None
        backoff = Backoff(0.2, RETRY_CAP)
        decoded: tuple[list[tuple[ReportEvent, int]], int] | None = None
        async with self._store_lock:
            while True:  # at least once, even when stopping: a fetched batch is finished
                try:
                    if decoded is None:  # in the thread: the positions may wait on a locked database
                        done = (await asyncio.to_thread(store.positions)).get(stream, 0)
                        decoded = self._decode(family, messages, done)
                    events, last = decoded
                    await asyncio.to_thread(store.ingest, [event for event, _ in events], {stream: last})
                    return True
                except sqlite3.Error as exc:  # disk full, locked: keep the batch unacked and retry
                    self.stats.store_errors += 1
                    if backoff.attempts == 0:
                        log.error("report sink: cannot write %s: %s; retrying", self.store_path, exc)
                    if self._stopped.is_set():
                        return False
                    await wait_unless(self._stopped, backoff.next())
                except Exception:  # a bug on some event: find it, keep the rest
                    if decoded is None:
                        raise
                    log.exception(
                        "report sink: ingesting a batch from %s failed; retrying event by event", stream
                    )
                    try:
                        await asyncio.to_thread(self._ingest_one_by_one, *decoded, stream)
                    except sqlite3.Error as exc:  # unacked: redelivered, and what got in is known
                        self.stats.store_errors += 1
                        log.error("report sink: cannot write %s: %s", self.store_path, exc)
                        return False
                    return True

    def _ingest_one_by_one(self, events: list[tuple[ReportEvent, int]], last: int, stream: str) -> None:
        """Each event in a transaction of its own with its stream position, so that one the store
        refuses is skipped and, should the store fail meanwhile, none is counted twice."""
        assert self.store is not None
        for event, seq in events:
            try:
                self.store.ingest([event], {stream: seq})
            except sqlite3.Error:
                raise
            except Exception as exc:
                self.stats.rejected += 1
                log.error("report sink: rejected a %s from %s: %s", type(event).__name__, stream, exc)
                self.store.ingest([], {stream: seq})
        self.store.ingest([], {stream: last})

    # -- reports -------------------------------------------------------------------------------

    async def _schedule(self) -> None:
        try:
            await self.catch_up()
        except (OSError, sqlite3.Error) as exc:
            log.error("report sink: cannot look for missed reports: %s", exc)
        while not self._stopped.is_set():
            due = next_daily_run(self.clock(), self.config)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), max(0.0, due - self.clock()))
                return
            await self.daily(due)

    async def catch_up(self) -> None:
        """After a start past the last run time: write what that run would have, if missing.

        Only for periods the store has data from, so a fresh install writes no empty report.
        """
        store = self.store
        assert store is not None
        now = self.clock()
        last_run = next_daily_run(now - 86400, self.config)
        if last_run > now:
            return
        async with self._store_lock:
            first = await asyncio.to_thread(store.first_hour)
        for kind, day in reports_due(last_run, self.config):
            period = make_period(kind, day, self.config.timezone, self.config.zone)
            if first is None or first >= period.end:
                continue
            if not (self.out_dir / REPORTS_DIR / f"{period.label}.html").exists():
                await self.write(kind, day)

    async def daily(self, at: float) -> None:
        """The run at `at`: reports of the day (and week) that just ended, then retention."""
        for kind, day in reports_due(at, self.config):
            await self.write(kind, day)
        await self.retain(at)

    async def write(self, kind: PeriodKind, day: dt.date) -> list[Path]:
        """Write one report from a reader of its own, off the event loop; failures are logged."""

        def work() -> list[Path]:
            store = RollupStore(self.store_path, readonly=True)
            try:
                return produce(store, self.config, kind, day, self.out_dir, self.clock())[1]
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

    async def retain(self, now: float) -> None:
        """Prune rollups and delete old reports, as configured."""
        store = self.store
        assert store is not None
        today = dt.datetime.fromtimestamp(now, self.config.zone).date()
        try:
            async with self._store_lock:
                await asyncio.to_thread(store.prune, now - self.config.rollup_retention.seconds)
            keep_days = self.config.report_retention.seconds / 86400
            await asyncio.to_thread(prune_reports, self.out_dir, today, keep_days)
        except (OSError, sqlite3.Error) as exc:
            log.error("report sink: retention failed: %s", exc)
        except Exception:  # a bug: logged, and the schedule goes on
            log.exception("report sink: retention failed")
