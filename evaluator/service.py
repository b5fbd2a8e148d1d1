"""The evaluator service: JetStream in, the pure engine in the middle, alerts and notifications out.

Each window of input messages goes: observe -> drain -> publish outputs with Nats-Msg-Id (PubAcks
awaited) -> save what the window changed in the engine to KV (a journal entry with its cursors) ->
ack the inputs. Now and then a new base (the whole state) is written by a task beside the loop,
encoded a part at a time, while the entries go on. Killed at any point, a restart restores the base
and its journal, gets the unacked inputs again, makes the same outputs with the same ids, and the
streams' duplicate window drops what was already published.

One evaluator evaluates per prefix: it holds a lease in KV, renewed every few seconds; others
stand by and take over when it stops, or when it stops renewing (at once if it was a process on
the same machine that died).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck, StreamInfo

from bus import deadletter, pull
from bus import vocabulary as vocab
from bus.aio import Backoff, cancel_and_wait
from bus.connection import Bus
from bus.events import (
    SUBJECT_MISMATCH,
    Alert,
    EventDecodeError,
    HealthEvent,
    Heartbeat,
    MetricBatch,
    encode,
    from_its_source,
    health_event,
    heartbeat,
    metric_batch,
    partly_refused,
    salvage_batch,
)
from bus.heartbeat import beat
from bus.jetstream import stream_name, watching
from bus.partitions import (
    ensure_partition_streams,
    host_partition,
    original_subject,
    partition_stream,
    partition_subject,
)
from bus.payload import payload_limit, split_notification
from bus.records import save_partitions
from evaluator.clock import ClockLead
from evaluator.config import EvaluatorConfig
from evaluator.engine import INSTANT, Engine, Output
from evaluator.rules import AGENT_DOWN_RULE
from evaluator.share import Share
from evaluator.silences import Silence
from evaluator.sound_inputs import SoundInputs
from evaluator.store import (
    ACK_PREFIX,
    SILENCE_PREFIX,
    SILENCE_RETENTION,
    AckRecord,
    ActiveAlerts,
    Journaled,
    JournalEntry,
    Lease,
    LeaseRecord,
    SavedState,
    StaleWriter,
    StateStore,
    StoreError,
    compress_parts,
    decode_ack,
    new_journal_id,
    open_buckets,
    silence_or_reason,
)
from evaluator.watchdog import WatchdogStats, start_watchdog

log = logging.getLogger(__name__)

DURABLE = "evaluator"
# A new evaluator starts this far back, so agents that are already running are known at once.
LOOKBACK = 300.0
FETCH_BATCH = 500
# Fetched but not yet evaluated messages per input stream, before its fetcher waits.
BUFFER_LIMIT = 4 * FETCH_BATCH
ACK_WAIT = 300.0
MAX_ACK_PENDING = 200_000
TICK_EVERY = 1.0
# Timers run this long after they are due, as messages stored before then may be in flight.
TICK_LAG = 0.5
# A timer due at the instant of the latest input runs once no input came for this long: an agent's
# batch, checks and heartbeat of one instant travel on three streams and arrive a little apart.
SETTLE = 0.05
# The partitioned stream hears from each family stream at least every second, messages or not.
SOURCE_SILENT = 3.0
# A stream that does not answer for its info this soon is taken for one without a leader.
STREAM_INFO_TIMEOUT = 2.0
# Between two looks at the input streams at least this long, when timers ask for one sooner.
LOOK_GAP = 0.05
# Mirrors behind their families this long (the timers held back) are worth a warning: more than
# copying an hour of a large fleet's inputs takes when partitions are first made.
MIRRORS_BEHIND = 30.0
# Inputs unsure this long are said to be so again.
UNSURE_RETOLD = 60.0
ACTIVE_EVERY = 1.0
ACTIVE_REFRESH = 30.0
HOUSEKEEPING_EVERY = 60.0
LEASE_RETRY = 1.0
# An ack whose alert is gone is kept this long (an evaluator catching up may not know it yet).
ACK_RETENTION = 3600.0
PUBLISH_TIMEOUT = 5.0
CONSUMER_CREATE_TIMEOUT = 30.0
# Beyond a pull's expiry (TICK_EVERY), how long to wait for the server's word: a feed whose
# consumer does not answer holds the timers soon (see _unanswered_until).
PULL_MARGIN = 0.25
PUBLISH_CONCURRENCY = 1000
ALERT_SUBJECTS_CACHED = 10_000
MAX_BACKOFF = 5.0
# A window of this many inputs means a busy bus: the next window waits batch_window to fill.
BUSY_WINDOW = 50
BUSY_RATE = 250
STUCK_AFTER = 60.0  # a loop that has not turned for this long is stuck: the watchdog stops pinging

Input = MetricBatch | HealthEvent | Heartbeat


@dataclass
class ServiceStats:
    """Counters of what the service did, for logs and tests."""

    received: int = 0
    evaluated: int = 0
    undecodable: int = 0  # inputs refused at decode, kept on jarvis.deadletter.input.<family>
    dead_lettered: int = 0  # inputs and outputs set aside for good, with their reason
    failed: int = 0  # the engine raised on an event or a timer: a bug, logged with its traceback
    redelivered: int = 0  # already in the saved state, skipped
    alerts: int = 0
    notifications: int = 0
    publish_retries: int = 0
    snapshots: int = 0  # commits of the state: journal entries and bases
    snapshot_bytes: int = 0  # the engine bytes the latest commit wrote
    bases: int = 0  # whole states written: at each start, beside the loop, in a commit
    inline_bases: int = 0  # of those, written in a commit (the journal's ring was full)
    base_bytes: int = 0  # the engine bytes of the latest base


@dataclass(slots=True)
class _Message:
    ts: float
    seq: int
    msg: Msg


@dataclass
class _Feed:
    """One input stream: a durable consumer pulled in the background into a buffer."""

    family: str
    decode: Callable[[bytes, str], Input]
    wake: asyncio.Event
    config: ConsumerConfig  # the consumer's, to make it again after a gap
    puller: pull.Feed | None = None
    buffer: deque[_Message] = field(default_factory=deque)
    # messages the server still holds after the last one pulled; None until the first pull answered
    pending: int | None = None
    last_ts: float = -math.inf
    last_seq: int = 0  # stream sequence of the latest message buffered
    space: asyncio.Event = field(default_factory=asyncio.Event)
    # the consumer did not answer since the service last looked: its stream may be electing a leader
    impaired: bool = False

    @classmethod
    async def open(
        cls,
        family: str,
        decode: Callable[[bytes, str], Input],
        bus: Bus,
        where: tuple[str, str],
        config: ConsumerConfig,
        wake: asyncio.Event,
    ) -> _Feed:
        stream, durable = where
        feed = cls(family=family, decode=decode, wake=wake, config=config)
        feed.puller = pull.Feed(bus.nc, stream, durable, feed._take)
        # In a cluster with a node down, a consumer made again takes its replicas' election, which
        # may outlast a request's usual timeout; a retry would delete it and start over, forever.
        await feed.puller.open(config, timeout=CONSUMER_CREATE_TIMEOUT)
        try:
            if (await feed.puller.consumer_info()).num_pending == 0:
                feed.pending = 0  # nothing to wait for: other streams need not wait for its first pull
        except BaseException:  # its subscription would stay on the connection, one per retry
            await feed.puller.close()
            raise
        return feed

    def _take(self, msg: Msg, seq: int, stored_ns: int) -> None:
        """A message as it arrives (the puller's callback): into the buffer, and the loop woken."""
        ts = stored_ns / 1e9
        self.buffer.append(_Message(ts, seq, msg))
        self.last_ts, self.last_seq = ts, seq
        assert self.puller is not None
        self.pending = self.puller.pending
        if len(self.buffer) >= BUFFER_LIMIT:
            self.space.clear()
        self.wake.set()

    async def run(self, connected: Callable[[], bool]) -> None:
        """Pull until cancelled; an outage is waited out, never raised."""
        puller = self.puller
        assert puller is not None
        self.space.set()
        backoff = Backoff(0.1, MAX_BACKOFF)
        while True:
            await self.space.wait()
            try:
                got = await puller.pull(FETCH_BATCH, TICK_EVERY, margin=PULL_MARGIN)
            except pull.Broken as exc:
                # a message lost on the way (a reconnect): acking a later one would ack it too
                self.pending = None
                self.impaired = True
                log.warning("evaluator: %s: %s; consuming again after %d", self.family, exc, self.last_seq)
                await asyncio.sleep(backoff.next())
                # after the latest buffered, or as first made if none came (from the recent past)
                again = pull.resume_after(self.config, self.last_seq) if self.last_seq else self.config
                with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):  # else at the next pull
                    await puller.open(again, CONSUMER_CREATE_TIMEOUT)
                continue
            except (nats.errors.Error, OSError) as exc:
                self.pending = None
                self.impaired = True
                if backoff.attempts == 0:
                    log.warning("evaluator: fetching %s failed, retrying: %s", self.family, exc)
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            if not got and puller.expired:
                self.pending = 0  # the consumer's leader answered: nothing more to deliver
                self.wake.set()
            elif not got:
                # nobody answered: during an outage, or in a cluster while the consumer has no
                # leader (its node died), the stream may still hold anything, and timers run at
                # wall time must not judge agents by what is not read yet
                self.pending = None
                if connected():
                    self.pending = await self._still_pending()
                    self.impaired = self.impaired or self.pending is None
                self.wake.set()

    async def _still_pending(self) -> int | None:
        """What the consumer holds for this feed, as its leader says; None when none answers."""
        assert self.puller is not None
        try:
            info = await self.puller.consumer_info()
        except (nats.errors.Error, TimeoutError, OSError):
            return None
        return info.num_pending or 0

    @property
    def behind(self) -> bool:
        return self.pending is None or self.pending > 0


class _Stopped(Exception):
    """A stop was requested while outputs could not be published: the window is abandoned."""


class EvaluatorService:
    """Runs the engine on the bus until `stop()`; never raises for a bad message or an outage."""

    def __init__(
        self,
        config: EvaluatorConfig,
        bus: Bus,
        *,
        clock: Callable[[], float] = time.time,
        batch_window: float = 0.2,
        max_batch: int = 5000,
        host: str | None = None,
        partition: int | None = None,
        share: Share | None = None,
    ) -> None:
        self.config = config
        # one of config.partitions, holding its lease as `share` (its process's) allows; None: all
        self.partition = partition
        self._share = share
        self._handing_over = False  # the process holds more than its share: give this one up
        self._inputs_unsure = False  # an input stream lost its leader, or a mirror its family
        # how far silence may be judged, where the streams may move (None: they cannot)
        self._sound: SoundInputs | None = None
        self._look_now = asyncio.Event()  # a timer waits for a look at the streams
        self._held: float | None = None  # the deadline of the fresh timer the last look held back
        self._mirrors_behind = False  # and said so
        self._unsure_told = -math.inf  # when the inputs were last said to be unsure
        self._previous_partitions = config.partitions  # the layout before the latest change
        self.bus = bus
        self.host = host or socket.gethostname()
        self.clock = clock
        self.batch_window = batch_window
        self.max_batch = max_batch
        self.stats = ServiceStats()
        self.ready = asyncio.Event()  # consumers made and state restored
        self._max_skew = config.max_clock_skew.seconds
        self._lead = ClockLead(below=TICK_LAG)
        self.rejections = deadletter.Rejections()
        self._letters: list[deadletter.Letter] = []  # dead letters to keep with the next outputs
        # the bus was out of reach since the last tick (from _blind_since, None: unknown): on
        # return, the silence meanwhile is not the agents'
        self._blind = False
        self._blind_since: float | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._js = bus.nc.jetstream()
        self._feeds: list[_Feed] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._cursors: dict[str, int] = {}
        self._engine: Engine | None = None
        self._engine_now = -math.inf
        self._settled_at = -math.inf  # when the latest input's instant may be taken as complete
        self._silences: dict[str, Silence] = {}
        self._silences_changed = False
        self._given_silences: list[Silence] = []  # what the engine has, saved with its state
        self._acks: dict[str, AckRecord] = {}
        self._acks_to_apply: list[AckRecord] = []
        self._active_written: bytes | None = None
        self._active_at = -math.inf  # last written
        self._active_looked_at = -math.inf  # last built, written or not
        self._housekeeping_at = -math.inf
        self._last_tick = -math.inf
        self._loop_at = -math.inf  # when the evaluation loop last turned (the watchdog's test)
        self._window_at = -math.inf  # loop time at which the latest window of inputs began
        self._window_count = 0  # inputs in it
        self._rate_at, self._rate_count, self._busy = -math.inf, 0, False  # see _busy_rate
        self.watchdog = WatchdogStats()
        self._alert_subjects: dict[tuple[str, str, str], str] = {}
        self._lease: Lease
        self._lease_lost = False
        self._base_task: asyncio.Task[None] | None = None  # a base being written beside the loop
        self._records_made = 0  # commit records made (each takes the engine's delta)
        self._records_saved = 0  # the latest of them written
        self._saved = asyncio.Event()  # set at each commit written
        self._commit_wanted = False  # a base waits for a commit, changes or not
        # the evaluator holding the lease while this one waits; None when this one evaluates
        self.standing_by: LeaseRecord | None = None

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "the engine exists once run() has started"
        return self._engine

    @property
    def silences(self) -> list[Silence]:
        """The silences the engine was given (expired ones too, until they are deleted)."""
        return list(self._silences.values())

    def stop(self) -> None:
        """Finish the window in progress (unless its outputs cannot be published) and return."""
        self._stopping.set()
        self._wake.set()

    def counters(self) -> dict[str, int]:
        """What the evaluator did since it started, for its heartbeat and `jarvis-monitor status`."""
        stats = self.stats
        out = {
            "received": stats.received,
            "evaluated": stats.evaluated,
            "rejected": stats.undecodable,
            "dead_lettered": stats.dead_lettered,
            "failed": stats.failed,
            "alerts": stats.alerts,
            "notifications": stats.notifications,
            "publish_retries": stats.publish_retries,
            "standing_by": int(self.standing_by is not None),
        }
        for feed in self._feeds:
            if feed.pending is not None:
                out[f"lag.{feed.family}"] = feed.pending + len(feed.buffer)
        return out

    def health_problem(self) -> str | None:
        """Why the pipeline is not healthy (the watchdog then stays quiet); None when it is."""
        if not self.ready.is_set() or self._engine is None:
            return "the evaluator is not evaluating yet"
        if self.standing_by is not None:
            return "this evaluator stands by"
        if not self.bus.nc.is_connected:
            return "no connection to NATS"
        if self.clock() - self._loop_at > STUCK_AFTER:
            return f"the evaluation loop has not turned for {self.clock() - self._loop_at:.0f}s"
        silent = sorted(
            f"{a.labels.get('agent')} on {a.labels.get('host')}"
            for a in self.engine.active(self.clock())
            if a.rule == AGENT_DOWN_RULE and a.state == "firing" and a.labels.get("agent") in vocab.PARTS
        )
        return f"silent: {', '.join(silent)}" if silent else None

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(
                beat(
                    self.bus,
                    self.host,
                    vocab.EVALUATOR_PART,
                    self.counters,
                    lambda: self.rejections.by_reason,
                    self._stopping,
                )
            )
        ]
        watchdog = start_watchdog(self.config.watchdog, self.health_problem, self._stopping, self.watchdog)
        tasks += [watchdog] if watchdog is not None else []
        try:
            await self.evaluate()
        finally:
            await cancel_and_wait(tasks)

    async def evaluate(self) -> None:
        """Evaluate until stopped, standing by while another evaluator holds the lease (run() with
        no heartbeat or watchdog: a partitioned evaluator's process runs one for all)."""
        try:
            await self._run()
        except Exception:
            # a bug: hand the lease over, so that the instance the supervisor starts next takes it
            # at once instead of standing by until it expires
            lease = getattr(self, "_lease", None)
            if lease is not None and not self._lease_lost:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(lease.release(), PUBLISH_TIMEOUT)
            raise
        finally:
            if self._share is not None and self.partition is not None:
                self._share.held.discard(self.partition)

    async def _run(self) -> None:
        while True:
            try:
                if not await self._start():
                    return
                await self._loop()
            finally:
                await cancel_and_wait([*self._tasks, *([self._base_task] if self._base_task else [])])
                self._tasks.clear()
                await self._close_feeds(self._feeds)
                self._feeds = []
            if self._share is not None and self.partition is not None:
                self._share.held.discard(self.partition)
            if not self._lease_lost:
                await self._lease.release()
                if not self._handing_over:
                    return
                log.info("evaluator: partition %s handed over to a process holding fewer", self.partition)
                self._handing_over = False
            self._lease_lost = False  # another evaluator took over: stand by until it stops
            self.ready.clear()

    # --- start-up -------------------------------------------------------------------------

    async def _start(self) -> bool:
        """Open the buckets and consumers and restore the state; False if stopped meanwhile."""
        backoff = Backoff(0.2, MAX_BACKOFF)
        lease: Lease | None = None  # one per start: a retry after a failure goes on with the lease it took
        while not self._stopping.is_set():
            try:
                prefix = self.bus.subjects.prefix
                partitions = self.config.partitions
                self._state, self._silence_store = await open_buckets(
                    self._js, prefix, self.partition, partitions
                )
                if lease is None:
                    lease = Lease(
                        self._state.blobs.kv,
                        clock=self.clock,
                        partition=self.partition,
                        partitions=self.config.partitions,
                    )
                layout = await save_partitions(self._state.blobs, partitions)
                self._previous_partitions = layout.previous if layout.partitions == partitions else partitions
                if self.partition is not None:
                    await ensure_partition_streams(self._js, prefix, partitions, replicas=self.bus.replicas)
                if not await self._take_lease(lease):
                    return False
                await self._restore()
                feeds = await self._subscribe_all()
                try:
                    await self._load_silences()
                except BaseException:
                    await self._close_feeds(feeds)
                    raise
            except (nats.errors.Error, TimeoutError, OSError, StaleWriter) as exc:
                log.warning("evaluator: cannot start yet (%s), retrying", exc)
                await self._sleep(backoff.next())
                continue
            self._feeds = feeds
            connected = lambda: self.bus.nc.is_connected  # noqa: E731
            self._tasks = [asyncio.create_task(feed.run(connected)) for feed in feeds]
            self._tasks.append(asyncio.create_task(self._watch_silences()))
            self._tasks.append(asyncio.create_task(self._renew_lease()))
            if self.partition is not None or self.bus.replicas > 1:  # the streams may move
                self._sound = SoundInputs()
                self._tasks.append(asyncio.create_task(self._watch_inputs(self._sound)))
            self.standing_by = None
            self.ready.set()
            return True
        return False

    async def _take_lease(self, lease: Lease) -> bool:
        """Wait until this evaluator holds `lease`; False if stopped first."""
        free_since: float | None = None
        while not self._stopping.is_set():
            holder = await lease.held_by() if self._share is not None else None
            if holder is None and self._share is not None:
                # free: taken at once by a process holding less than its share, by others only
                # once nobody took it for a while
                free_since = self.clock() if free_since is None else free_since
                if not self._share.may_take(self.clock() - free_since):
                    await self._sleep(LEASE_RETRY)
                    continue
            if holder is None:
                holder = await lease.acquire()
            if holder is None:
                self._lease = lease
                if self._share is not None and self.partition is not None:
                    self._share.held.add(self.partition)
                return True
            free_since = None
            if self.standing_by is None:
                log.info(
                    "evaluator%s: standing by while %s (pid %d) evaluates",
                    self._which(),
                    holder.host,
                    holder.pid,
                )
            self.standing_by = holder
            await self._sleep(LEASE_RETRY)
        return False

    def _which(self) -> str:
        return "" if self.partition is None else f" partition {self.partition}"

    async def _renew_lease(self) -> None:
        failures = 0
        while True:
            # after a failure (an outage), try again soon: the lease must be renewed before it
            # expires once the server is back, or a standby would take over for nothing
            await asyncio.sleep(LEASE_RETRY if failures else self._lease.ttl / 3)
            try:
                if await self._lease.renew():
                    failures = 0
                    continue
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                failures += 1
                if _worth_logging(failures):
                    log.warning("evaluator: renewing the lease failed (%s), retrying", exc)
                continue
            holder = self._lease.taken_by
            by = f" ({holder.host}, pid {holder.pid})" if holder is not None else ""
            log.error("evaluator: another evaluator%s took over (this one missed its lease); standing by", by)
            self._lease_lost = True
            self._wake.set()
            return

    async def _watch_inputs(self, sound: SoundInputs) -> None:
        """Follow the streams the inputs come through. While one has no leader, or a partition's
        mirror loses touch with its family stream, what agents send is not stored, or not here
        yet; and when a leader changed, what they sent meanwhile may be lost. Their silence then
        is not theirs (see _tick). Each sound look moves on how far their silence may be judged:
        to when it began, once the mirrors hold what the family streams held then."""
        prefix = self.bus.subjects.prefix
        families = [stream_name(prefix, family) for family in _INPUTS]
        partitioned = self.partition is not None
        mirrors = [partition_stream(prefix, family) for family in _INPUTS] if partitioned else []
        leaders: dict[str, str | None] = {}
        loop = asyncio.get_running_loop()
        while True:
            looked_at = loop.time()
            self._look_now.clear()
            try:
                await self._look(sound, families, mirrors, leaders)
            except Exception:  # a bug here must not hold every timer for good: logged, looked again
                log.exception("evaluator%s: looking at the input streams failed", self._which())
            gap = TICK_EVERY if self._inputs_unsure else LOOK_GAP  # asked or not, while unsure
            await asyncio.sleep(max(0.0, looked_at + gap - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._look_now.wait(), max(0.0, looked_at + TICK_EVERY - loop.time()))

    async def _look(
        self, sound: SoundInputs, families: list[str], mirrors: list[str], leaders: dict[str, str | None]
    ) -> None:
        """One look at the input streams: the family streams, then their mirrors (if partitioned)."""
        began = self.clock()
        # the mirrors after their families: what a family held, a caught-up mirror holds too
        family_infos = await self._stream_infos(families)
        mirror_infos = await self._stream_infos(mirrors)
        late = []
        for name, info in zip([*families, *mirrors], [*family_infos, *mirror_infos], strict=True):
            if info is None:
                late.append(name)
                continue
            leader = info.cluster.leader if info.cluster is not None else ""
            if leader is None or leaders.setdefault(name, leader) != leader:
                late.append(name)  # no leader, or a new one: some messages may be lost
            leaders[name] = leader
            mirror = info.mirror
            if mirror is not None and (mirror.error or (mirror.active or 0) > SOURCE_SILENT * 1e9):
                late.append(mirror.name)
        if late:
            if not self._inputs_unsure:
                self._unsure_told = began
                what = "may miss messages for now; agents are not judged"
                log.warning("evaluator%s: %s %s", self._which(), late, what)
            elif began - self._unsure_told >= UNSURE_RETOLD:  # timers wait meanwhile: say so again
                self._unsure_told = began
                log.warning("evaluator%s: %s still unsure; no timer runs meanwhile", self._which(), late)
            self._inputs_unsure = True
            self._go_blind()  # now: a tick may not come before it ends
            self._wake.set()
            return
        self._inputs_unsure = False
        if self._blind:  # before the inputs that came meanwhile run any timer
            self._bus_restored()
        before = sound.until
        stored = [info.state.last_seq for info in family_infos if info is not None]
        copied = [info.state.last_seq for info in mirror_infos if info is not None]
        if sound.passed(began, stored, copied):
            deadline = self.engine.next_deadline()
            if deadline is not None and before < deadline <= sound.until:
                self._wake.set()  # a timer held back may run now
        behind = sound.behind_since is not None and began - sound.behind_since > MIRRORS_BEHIND
        if behind != self._mirrors_behind:
            self._mirrors_behind = behind
            if behind:
                copies = dict(zip(mirrors, zip(copied, stored, strict=True), strict=True))
                what = "(last sequence, family's); timers wait for them"
                log.warning("evaluator%s: mirrors behind their families: %s %s", self._which(), copies, what)
            else:
                log.info("evaluator%s: the mirrors caught up with their families", self._which())

    async def _stream_infos(self, names: list[str]) -> list[StreamInfo | None]:
        """Each stream's info, None for one that does not answer soon (it may have no leader)."""

        async def info(name: str) -> StreamInfo | None:
            try:
                return await asyncio.wait_for(self._js.stream_info(name), STREAM_INFO_TIMEOUT)
            except (nats.errors.Error, TimeoutError, OSError):
                return None
            except Exception as exc:  # a reply nats-py cannot read (mid-election): no answer either
                log.warning("evaluator: the info of stream %s could not be read: %r", name, exc)
                return None

        return list(await asyncio.gather(*(info(name) for name in names)))

    async def _subscribe_all(self) -> list[_Feed]:
        """Every input's consumer, made side by side: in a cluster missing a node, each waits out
        its replicas' election, seconds that a take-over would otherwise pay three times."""
        made = await asyncio.gather(
            *(self._subscribe(family, decode) for family, decode in _INPUTS.items()), return_exceptions=True
        )
        feeds = [feed for feed in made if isinstance(feed, _Feed)]
        for failed in made:
            if isinstance(failed, BaseException):
                await self._close_feeds(feeds)
                raise failed
        return feeds

    @staticmethod
    async def _close_feeds(feeds: list[_Feed]) -> None:
        """Their subscriptions off the connection (else one per feed each time the lease is lost)."""
        for feed in feeds:
            if feed.puller is not None:
                await feed.puller.close()

    async def _subscribe(self, family: str, decode: Callable[[bytes, str], Input]) -> _Feed:
        """A durable consumer that resumes right after the last message the saved state includes.

        Made afresh at every start: the messages a killed evaluator had fetched but not acked
        would otherwise wait out ack_wait before their redelivery.
        """
        config = ConsumerConfig(ack_policy=AckPolicy.ALL, ack_wait=ACK_WAIT, max_ack_pending=MAX_ACK_PENDING)
        cursor = self._cursors.get(family)
        if cursor is None:  # never evaluated this stream: start with the recent past
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = datetime.datetime.fromtimestamp(self.clock() - LOOKBACK, datetime.UTC)
        else:
            pull.resume_after(config, cursor)
        prefix = self.bus.subjects.prefix
        where = (stream_name(prefix, family), DURABLE)
        if self.partition is not None:
            config.filter_subject = partition_subject(prefix, self.partition, family)
            where = (partition_stream(prefix, family), partition_durable(self.partition))
        feed = await _Feed.open(family, decode, self.bus, where, config, self._wake)
        feed.last_seq = cursor or 0
        return feed

    async def _restore(self) -> None:
        """Restore the saved state (or start afresh), then write it as the base of a new journal."""
        # an outage of an earlier term is not this one's: the inputs' own times judge from here
        self._blind, self._blind_since = False, None
        try:
            saved = await self._state.load_journaled()
        except StoreError as exc:  # better to start afresh than to stop evaluating
            log.error("evaluator: saved state unusable, starting with an empty state: %s", exc)
            saved = None
        before = await self._old_layout() if self._previous_partitions != self.config.partitions else []
        # the old layout's states, when they are newer than this one's (saved before the change)
        if before and max(_input_time(b) for b in before) > _input_time(saved):
            self._take_over_hosts(before)
        else:
            self._restore_engine(saved)
        # Only this process continues the new journal: entries a stale evaluator still writes in
        # the old one are void, and its late bases are refused (StateStore._put_base).
        self.engine.delta()  # the base holds everything so far
        base = self._whole_state(self._input_time())
        await self._state.save(base)
        self.stats.bases += 1
        self.stats.base_bytes = len(base.engine)

    def _restore_engine(self, saved: Journaled | None) -> None:
        now = self.clock()
        if self._state.broken:
            log.error("evaluator: the journal of the saved state ends early: %s", self._state.broken)
        # The engine's time is its inputs' time: restored or fresh, it starts where its inputs
        # start, never at the wall clock, or the backlog of heartbeats still to evaluate would
        # look missing and every agent would seem down.
        self._given_silences = []
        if saved is not None:
            start = saved.input_time if saved.input_time is not None else now - LOOKBACK
            try:
                self._engine = Engine.restore(self.config, saved.base, start, saved.deltas)
            except ValueError as exc:  # e.g. written by an incompatible version
                log.error("evaluator: saved state unusable, starting with an empty state: %s", exc)
            else:
                self._cursors = dict(saved.cursors)
                self._engine_now = saved.input_time if saved.input_time is not None else -math.inf
                self._given_silences = saved.silences
                log.info(
                    "evaluator: state restored (%d bytes and %d deltas of %d bytes)",
                    len(saved.base),
                    len(saved.deltas),
                    sum(map(len, saved.deltas)),
                )
                return
        self._engine = Engine(self.config, now - LOOKBACK)
        self._cursors = {}
        self._engine_now = -math.inf
        log.info("evaluator: no saved state, starting afresh")

    def _ours(self, host: str) -> bool:
        """Is `host` evaluated here (after a change of partitions, hosts move)?"""
        if self.partition is None:
            return True
        return host_partition(host, self.config.partitions) == self.partition

    async def _old_layout(self) -> list[Journaled]:
        """The states saved by the partitions before the latest change of `partitions`."""
        previous = self._previous_partitions
        kv = self._state.blobs.kv
        found = []
        for old in [None] if previous == 1 else range(previous):
            try:
                saved = await StateStore(kv, partition=old, partitions=previous).load_journaled()
            except StoreError as exc:
                log.error("evaluator: a state of the %d partitions before is unusable: %s", previous, exc)
                continue
            if saved is not None:
                found.append(saved)
        return found

    def _take_over_hosts(self, found: list[Journaled]) -> None:
        """After a change of `partitions`: start from the states of the old layout, with the hosts
        this partition (or the only evaluator) evaluates now."""
        previous = self._previous_partitions
        times = [saved.input_time for saved in found if saved.input_time is not None]
        start = min(times) if times else self.clock() - LOOKBACK
        try:
            self._engine = Engine.take_over(
                self.config,
                [(saved.base, saved.deltas) for saved in found],
                start,
                self._ours,
                complete=len(found) == previous,
            )
        except ValueError as exc:
            log.error("evaluator: the states of the partitions before are unusable, starting afresh: %s", exc)
            self._restore_engine(None)
            return
        # the mirrors keep the family streams' sequences: go on after the furthest any old partition
        # read (none is evaluated twice); what came between, for the others, and before the
        # mirrors began is nobody's silence but ours
        families = {family for saved in found for family in saved.cursors}
        self._cursors = {family: max(saved.cursors.get(family, 0) for saved in found) for family in families}
        self._blind, self._blind_since = True, None
        self._engine_now = start if times else -math.inf
        self._given_silences = found[0].silences
        log.info(
            "evaluator%s: took its hosts over from the %d partition(s) before (%d states)",
            self._which(),
            previous,
            len(found),
        )

    async def _load_silences(self) -> None:
        kv = self._silence_store.kv
        self._silences = {s.id: s for s in await self._silence_store.silences()}
        self._silences_changed = sorted(self._silences.values(), key=_by_id) != sorted(
            self._given_silences, key=_by_id
        )
        self._acks = {}
        for key in await self._silence_store.keys(ACK_PREFIX):
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                record = decode_ack((await kv.get(key)).value or b"")
                if record is not None:
                    self._acks[record.fingerprint] = record
        self._acks_to_apply = list(self._acks.values())

    # --- silences and acks from KV ----------------------------------------------------------

    async def _watch_silences(self) -> None:
        """Follow the silences bucket, so a silence or ack from any machine applies within a second."""
        kv = self._silence_store.kv
        while True:
            try:
                async with watching(kv) as watcher:
                    async for entry in watcher:
                        if entry is not None:
                            self._on_entry(entry.key, entry.value or b"", entry.operation)
            except asyncio.CancelledError:
                raise
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                log.warning("evaluator: watching silences failed, retrying: %s", exc)
                await asyncio.sleep(1.0)

    def _on_entry(self, key: str, value: bytes, operation: str | None) -> None:
        deleted = operation in ("DEL", "PURGE")
        if key.startswith(SILENCE_PREFIX):
            silence_id = key[len(SILENCE_PREFIX) :]
            read = None if deleted or not value else silence_or_reason(value)
            silence = read if isinstance(read, Silence) else None
            if isinstance(read, str):  # kept before RE2, or written by hand: it mutes nothing
                log.warning("evaluator: silence %s cannot be read and mutes nothing: %s", silence_id, read)
            if silence is None:
                changed = self._silences.pop(silence_id, None) is not None
            else:
                changed = self._silences.get(silence_id) != silence
                self._silences[silence_id] = silence
            if changed:
                self._silences_changed = True
                self._wake.set()
        elif key.startswith(ACK_PREFIX):
            fingerprint = key[len(ACK_PREFIX) :]
            record = None if deleted else decode_ack(value)
            if record is None:
                self._acks.pop(fingerprint, None)
            elif self._acks.get(fingerprint) != record:
                self._acks[fingerprint] = record
                self._acks_to_apply.append(record)
                self._wake.set()

    def _apply_external(self, now: float) -> bool:
        """Hand new silences and acks to the engine; True if anything changed."""
        changed = False
        # while catching up, the wall clock is ahead of the inputs: wait, as for timers
        if self._silences_changed and self._caught_up():
            self._silences_changed = False
            self._given_silences = list(self._silences.values())
            self.engine.set_silences(self._given_silences, now)
            changed = True
        if self._acks_to_apply:
            records, self._acks_to_apply = self._acks_to_apply, []
            since = {a.fingerprint: a.since for a in self.engine.active(now) if not a.acked}
            for record in records:
                # An ack made before this alert started belongs to an earlier alert of the series.
                if record.fingerprint in since and since[record.fingerprint] <= record.at:
                    changed |= self.engine.ack(record.fingerprint, now)
        return changed

    # --- the loop ---------------------------------------------------------------------------

    def _server_clock(self) -> float:
        """Our clock, less its lead over the stream leaders' (whose times the inputs carry)."""
        return self.clock() - self._lead.lead()

    def _now(self) -> float:
        """The wall clock less TICK_LAG, but never before the latest input (whose clock may lag)."""
        return max(self._server_clock() - TICK_LAG, self._engine_now)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _wait_for_wake(self, timeout: float) -> None:
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        else:
            await asyncio.sleep(0)  # the fetchers must run even when timers are due back to back
        self._wake.clear()

    def _timeout(self) -> float:
        """Seconds until the engine has a timer due, at most a tick interval."""
        wait = TICK_EVERY - (self.clock() - self._last_tick)
        deadline = self.engine.next_deadline()
        if deadline is not None and self._caught_up():  # else the next input moves time on
            due_in = deadline + TICK_LAG - self._server_clock()
            if deadline <= self._engine_now + INSTANT:  # due at the latest input's instant
                due_in = min(due_in, self._settled_at - self.clock())
            if due_in <= 0 and deadline > self._sound_until():
                self._look_now.set()  # and the watch wakes the loop once the streams are seen sound
            else:
                wait = min(wait, due_in)
        return max(0.0, wait)

    def _sound_until(self) -> float:
        """How far timers may judge by the inputs: until the streams were last seen sound."""
        return math.inf if self._sound is None else self._sound.until

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set() and not self._lease_lost and not self._handing_over:
            self._loop_at = self.clock()
            if self._share is not None and self.partition is not None:
                self._handing_over = self._share.hand_over(self.partition)
            await self._wait_for_wake(self._timeout())
            processed: dict[str, Msg] = {}
            changed = self._apply_external(self._now())
            prior = self.engine.next_deadline()
            count = self._observe_ready(processed)
            if count:
                # Busy (a window of many inputs began less than batch_window ago, or many came in
                # the last second, in bursts of a few): fill this one, so that commits stay few and
                # cheap. Otherwise go now: a breach is published at once.
                busy = self._window_count >= BUSY_WINDOW or self._busy_rate(loop.time(), count)
                window_end = self._window_at + self.batch_window if busy else loop.time()
                self._window_at = max(loop.time(), window_end)
                while count < self.max_batch and not self._stopping.is_set():
                    remaining = window_end - loop.time()
                    if remaining <= 0:
                        break
                    await self._wait_for_wake(remaining)
                    count += self._observe_ready(processed)
            if count:
                self._window_count = count
                self._settled_at = self.clock() + SETTLE
            changed |= self._tick(prior)
            try:
                changed |= await self._publish(self.engine.drain())
            except _Stopped:
                log.warning("evaluator: stopped before its outputs were published; a restart redoes them")
                return
            if count or changed or self._commit_wanted:
                if not await self._commit(processed):
                    return
                log.debug("evaluator: window of %d messages committed, cursors %s", count, self._cursors)
            await self._write_active()
            await self._housekeeping()

    def _busy_rate(self, now: float, count: int) -> bool:
        """Did at least BUSY_RATE inputs a second come over the last second?"""
        if now - self._rate_at >= 1.0:
            self._busy = self._rate_count >= BUSY_RATE * (now - self._rate_at)
            self._rate_at, self._rate_count = now, 0
        self._rate_count += count
        return self._busy

    def _observe_ready(self, processed: dict[str, Msg]) -> int:
        """Evaluate the fetched messages no other stream can still precede, in time order."""
        if any(feed.pending is None for feed in self._feeds):
            return 0
        horizon = min((feed.last_ts for feed in self._feeds if feed.behind), default=math.inf)
        ready: list[tuple[float, int, int, _Message]] = []
        for index, feed in enumerate(self._feeds):
            buffer = feed.buffer
            while buffer and buffer[0].ts <= horizon:
                message = buffer.popleft()
                ready.append((message.ts, index, message.seq, message))
            if len(buffer) < BUFFER_LIMIT:
                feed.space.set()
        if len(self._feeds) > 1:
            ready.sort(key=lambda item: item[:3])
        engine = self.engine
        for _, index, _, message in ready:
            feed = self._feeds[index]
            processed[feed.family] = message.msg
            self._evaluate(engine, feed, message)
        return len(ready)

    def _evaluate(self, engine: Engine, feed: _Feed, message: _Message) -> None:
        stats = self.stats
        stats.received += 1
        if message.seq <= self._cursors.get(feed.family, 0):
            stats.redelivered += 1
            return
        self._cursors[feed.family] = message.seq
        msg = message.msg
        partly = ""
        try:
            try:
                event: Input = feed.decode(msg.data, msg.subject)
            except EventDecodeError:
                # one bad sample must not take its batch's others with it: refused every cycle,
                # the host's alerts would go stale and resolve while the incident goes on
                salvaged = salvage_batch(msg.data) if feed.family == "metrics" else None
                if salvaged is None:
                    raise
                event, refused = salvaged
                partly = partly_refused(refused)
            self._check_subject(event, msg)
        except EventDecodeError as exc:
            self._set_input_aside(feed, message, exc.reason)
            return
        if partly:
            self._set_input_aside(feed, message, partly)
        # The event's own time, within max_clock_skew of the stream's: what an agent buffered
        # through an outage counts when it was sent, and a redelivery replays identically.
        skew = self._max_skew
        # nor the stored time itself past our clock by more: one input a stream leader stamped an
        # hour ahead (its clock stepped back since) would hold engine time there, and no timer
        # (a `for`, a dead man) would run until the wall clock caught up
        local = self.clock()
        self._lead.observe(local, message.ts)
        stored = min(message.ts, local + skew)
        now = max(min(max(event.ts, stored - skew), stored), self._engine_now)
        try:
            deadline = engine.next_deadline()
            # timers due at `now` run after the events stamped `now`: a flush then tells what the
            # check of that instant showed, a heartbeat on its deadline is not missed; and never
            # past a feed that does not answer (its heartbeats may be stored, unread)
            if deadline is not None and deadline <= now - INSTANT:
                until = min(now - INSTANT, self._unanswered_until(), self._sound_until())
                if deadline <= until:
                    engine.tick(until)
            engine.observe(event, now)
        except Exception:
            stats.failed += 1
            log.exception("evaluator: the engine failed on %s (seq %d)", self._published_on(msg), message.seq)
            return
        self._engine_now = now
        stats.evaluated += 1

    def _set_input_aside(self, feed: _Feed, message: _Message, reason: str) -> None:
        """An input refused (or partly refused): counted by reason and kept as a dead letter."""
        stats, msg = self.stats, message.msg
        subject = self._published_on(msg)
        stats.undecodable += 1
        self.rejections.count(reason)
        dead = self.bus.subjects.dead_letter("input", feed.family)
        letter = deadletter.input_letter(
            dead, msg, reason, by=DURABLE, stream_seq=message.seq, subject=subject
        )
        self._letters.append(letter)
        if _worth_logging(stats.undecodable):
            error = EventDecodeError(subject, reason, len(msg.data))
            log.warning("evaluator: %s (%d set aside on %s so far)", error, stats.undecodable, dead)

    def _check_subject(self, event: Input, msg: Msg) -> None:
        """An event names the host and agent of the subject it came on, or it is refused: the
        partitions go by the subject too, the engine by the event, so an agent could otherwise
        speak for another host or for the Slack sink (keeping its agent_down from ever firing)."""
        if not from_its_source(self.bus.subjects, event, self._published_on(msg)):
            raise EventDecodeError(msg.subject, SUBJECT_MISMATCH, len(msg.data))

    def _published_on(self, msg: Msg) -> str:
        """The subject an input was published on (a partitioned stream stores it renamed)."""
        if self.partition is None:
            return msg.subject
        return original_subject(self.bus.subjects.prefix, msg.subject)

    def _go_blind(self) -> None:
        """Timers may not judge by the inputs from the earliest time they were already held to."""
        if not self._blind:
            self._blind = True
            self._blind_since = min(self._now(), self._unanswered_until(), self._sound_until())

    def _bus_restored(self) -> None:
        """The bus answers again: agents are judged without the outage, not by what it could not carry."""
        if self._engine_now > -math.inf and self.bus.nc.is_connected and not self._inputs_unsure:
            self._blind = False
            self.engine.bus_restored(self._now(), self._blind_since)

    def _unanswered_until(self) -> float:
        """The time timers may run to: that of the latest input of a feed whose consumer does not
        answer (unbounded when all answer)."""
        return min((feed.last_ts for feed in self._feeds if feed.pending is None), default=math.inf)

    def _caught_up(self) -> bool:
        if self._inputs_unsure:
            return False
        return self.bus.nc.is_connected and not any(feed.behind or feed.buffer for feed in self._feeds)

    def _tick(self, prior: float | None = None) -> bool:
        """Run due timers; at wall-clock time only once every input is evaluated. True if due.

        The wall clock lags by TICK_LAG, so that a message stored just before a tick but fetched
        just after it is still evaluated before the timers of that moment run. Timers due at the
        latest input's instant run once it settled (SETTLE without input), so that they see all the
        instant showed; a timer this very input made (earlier than `prior`, the first due before
        it) runs at once: a breach with group_wait 0s is told as it comes.
        """
        impaired = [feed for feed in self._feeds if feed.impaired]
        for feed in impaired:
            feed.impaired = False
        if not self.bus.nc.is_connected or impaired or self._inputs_unsure:
            # out of reach, or (in a cluster) a stream without a leader for a while: what agents
            # sent meanwhile may come late, and must not make them look silent
            self._go_blind()
        elif self._blind:
            self._bus_restored()
        latest, caught_up = self._engine_now, self._caught_up()
        if latest == -math.inf and not caught_up:
            # nothing evaluated yet and the inputs not fetched: no time to tick at
            self._last_tick = self.clock()
            return False
        deadline = self.engine.next_deadline()
        now, flush_within = latest - INSTANT, 0.0
        if caught_up:
            fresh = deadline is not None and (prior is None or deadline < prior or deadline == self._held)
            if fresh or self.clock() >= self._settled_at:
                # the instant is complete: its timers, and group flushes due within INSTANT after it
                now, flush_within = latest, INSTANT
            now = max(self._server_clock() - TICK_LAG, now)
        sound = self._sound_until()
        if now > sound:
            # what agents sent since the streams were last seen sound may still be on its way: a
            # timer after that waits for the next look (asked for now), and a fresh one stays fresh
            if deadline is not None and sound < deadline <= now + flush_within:
                self._held = deadline
                self._look_now.set()
            now, flush_within = sound, 0.0
        due = deadline is not None and deadline <= now + flush_within
        if due or self.clock() - self._last_tick >= TICK_EVERY:
            self._last_tick = self.clock()
            try:
                self.engine.tick(now, flush_within)
            except Exception:  # a bug in the engine: logged, and the service goes on
                self.stats.failed += 1
                log.exception("evaluator: the engine failed running its timers")
        return due

    async def _publish(self, output: Output) -> bool:
        """Publish every output through JetStream, retrying until each PubAck arrives."""
        subjects = self.bus.subjects
        cache = self._alert_subjects
        if len(cache) > ALERT_SUBJECTS_CACHED:
            cache.clear()
        limit = payload_limit(self.bus.nc.max_payload)
        items: list[tuple[str, bytes, str]] = []
        for alert in output.alerts:
            token = (alert.severity, alert.labels.get("host", ""), alert.rule)
            subject = cache.get(token)
            if subject is None:  # sanitising three tokens per alert is costly when many change
                subject = cache[token] = subjects.alerts(*token)
            payload = encode(alert)
            if len(payload) > limit:
                self._set_aside(
                    subject, payload, alert_msg_id(alert), f"{len(payload)} bytes, over max_payload"
                )
                continue
            items.append((subject, payload, alert_msg_id(alert)))
        for notification in output.notifications:
            subject = subjects.notifications(notification.route)
            parts, too_big = split_notification(notification, limit)
            if len(parts) > 1:
                log.warning(
                    "evaluator: notification %s sent in %d parts (max_payload)", notification.id, len(parts)
                )
            items += [(subject, encode(part), part.id) for part in parts]
            for alert in too_big:
                reason = f"an alert of {len(encode(alert))} bytes does not fit in any part (max_payload)"
                self._set_aside(subject, encode(alert), f"{notification.id}:{alert.fingerprint}", reason)
        for start in range(0, len(items), PUBLISH_CONCURRENCY):
            failed = await self._publish_batch(items[start : start + PUBLISH_CONCURRENCY])
            for item in failed:  # in order, one by one, until each is stored
                await self._publish_one(*item)
        if self._blind:  # before the next inputs run any timer
            self._bus_restored()
        letters, self._letters = self._letters, []
        for letter in letters:
            if not await deadletter.publish(
                self._js, *letter, max_payload=self.bus.nc.max_payload, stopped=self._stopping
            ):
                raise _Stopped
        self.stats.dead_lettered += len(letters)
        self.stats.alerts += len(output.alerts)
        self.stats.notifications += len(output.notifications)
        return bool(items or letters)

    def _set_aside(self, subject: str, payload: bytes, msg_id: str, reason: str) -> None:
        """An output that can never be published: kept as a dead letter, and the stream moves on."""
        family, *tokens = self.bus.subjects.tokens_of(subject)
        dead = self.bus.subjects.dead_letter(family, *tokens)
        head = deadletter.headers(reason, original_subject=subject, by=DURABLE, attempts=1, msg_id=msg_id)
        self._letters.append(deadletter.Letter(dead, payload, head))
        log.error("evaluator: %s: %s; kept on %s", subject, reason, dead)

    async def _publish_batch(self, items: list[tuple[str, bytes, str]]) -> list[tuple[str, bytes, str]]:
        """Publish all at once, awaiting the PubAcks together; returns those that failed."""
        futures: list[asyncio.Future[PubAck] | None] = []
        for subject, payload, msg_id in items:
            try:
                future = await self._js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
                futures.append(future)
            except (nats.errors.Error, OSError):
                futures.append(None)
        waiting = [f for f in futures if f is not None]
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=PUBLISH_TIMEOUT)
            for future in late:
                future.cancel()  # frees its slot; the item is published again below
        return [
            item
            for item, future in zip(items, futures, strict=True)
            if future is None or future.cancelled() or future.exception() is not None
        ]

    async def _publish_one(self, subject: str, payload: bytes, msg_id: str) -> None:
        backoff = Backoff(0.1, MAX_BACKOFF)
        while True:
            try:
                await self._js.publish(
                    subject, payload, timeout=PUBLISH_TIMEOUT, headers={"Nats-Msg-Id": msg_id}
                )
                return
            except nats.errors.MaxPayloadError as exc:  # permanent: retrying cannot help
                self._set_aside(subject, payload, msg_id, f"refused by the server: {exc}")
                return
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                self.stats.publish_retries += 1
                self._go_blind()  # the stream did not answer: nor may it have taken the agents' events
                if _worth_logging(backoff.attempts + 1):
                    log.warning("evaluator: publishing to %s failed (%s), retrying", subject, exc)
            if self._stopping.is_set():
                raise _Stopped
            await self._sleep(backoff.next())

    def _commit_record(self) -> SavedState | JournalEntry:
        """What this commit writes: the engine's changes since the last one as a journal entry, or
        the whole state when the journal's ring is full (a base beside the loop was too slow)."""
        self._records_made += 1
        delta = self.engine.delta()
        input_time = self._input_time()
        if not self._state.needs_base():
            return self._state.entry(delta, self._cursors, input_time, self._given_silences)
        return self._whole_state(input_time)

    def _whole_state(self, input_time: float | None) -> SavedState:
        """The engine's whole state as the base of a new journal."""
        return SavedState(
            engine=self.engine.snapshot(),
            cursors=dict(self._cursors),
            input_time=input_time,
            silences=self._given_silences,
            journal=new_journal_id(),
            first_slot=self._state.journal_slot(),
        )

    def _input_time(self) -> float | None:
        return self._engine_now if self._engine_now > -math.inf else None

    async def _commit(self, processed: dict[str, Msg]) -> bool:
        """Save the state, then ack the window's inputs; False if stopped before it was saved."""
        if self._state.needs_base() and self._base_task is not None:
            await cancel_and_wait([self._base_task])  # this commit writes a base itself
        backoff = Backoff(0.1, MAX_BACKOFF)
        record = self._commit_record()  # made once: a retry writes the same
        number = self._records_made
        while True:
            if self._lease_lost:  # the state is another evaluator's to save now
                return False
            try:
                if isinstance(record, SavedState):
                    await self._state.save(record)
                else:
                    await self._state.append(record)
                break
            except StaleWriter as exc:
                self._lost_to_another(exc)
                return False
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                self._go_blind()  # held here, no tick notices the outage: it is not the agents' silence
                if _worth_logging(backoff.attempts + 1):
                    log.warning("evaluator: saving the state failed (%s), retrying", exc)
            if self._stopping.is_set():
                return False
            await self._sleep(backoff.next())
        self._records_saved = number
        self._commit_wanted = False
        self._saved.set()
        self.stats.snapshots += 1
        if isinstance(record, SavedState):
            self.stats.bases += 1
            self.stats.inline_bases += 1
            self.stats.snapshot_bytes = self.stats.base_bytes = len(record.engine)
            log.warning(
                "evaluator: the journal filled before a base beside the loop was written; one in the commit"
            )
        else:
            self.stats.snapshot_bytes = len(record.delta)
            if self._state.base_due():
                self._begin_base()
        for msg in processed.values():  # ack policy "all": the last one acks the window
            with contextlib.suppress(nats.errors.Error, OSError):  # redelivered, then skipped
                await msg.ack()
        return True

    def _begin_base(self) -> None:
        """Write the state of the commit just saved as a new base, beside the loop."""
        state = self._state.begin_base(self._cursors, self._input_time(), self._given_silences)
        parts = self.engine.snapshot_parts()  # takes the series and groups now, encodes them later
        self._base_task = asyncio.create_task(self._write_base(state, parts))

    async def _write_base(self, state: SavedState, parts: Iterator[bytes]) -> None:
        """Encode the base a part at a time, wait until a commit holds whatever changed meanwhile,
        then write it; the entries go on in the journal all along."""
        try:
            engine = await compress_parts(parts)
            # parts encoded after the commit of the base hold later changes: the next commit
            # (its delta taken after the last part) must be saved before the base names it
            wanted = self._records_made + 1
            while self._records_saved < wanted:
                self._commit_wanted = True
                self._wake.set()
                self._saved.clear()
                await self._saved.wait()
            state = msgspec.structs.replace(state, engine=engine)
            backoff = Backoff(0.1, MAX_BACKOFF)
            while not self._lease_lost:
                try:
                    await self._state.finish_base(state)
                except StaleWriter as exc:
                    self._lost_to_another(exc)
                    return
                except (nats.errors.Error, TimeoutError, OSError) as exc:
                    if _worth_logging(backoff.attempts + 1):
                        log.warning("evaluator: writing a new base failed (%s), retrying", exc)
                    await self._sleep(backoff.next())
                    continue
                self.stats.bases += 1
                self.stats.base_bytes = len(engine)
                return
        finally:
            self._state.abandon_base()  # no-op once written
            self._commit_wanted = False
            self._base_task = None

    def _lost_to_another(self, exc: StaleWriter) -> None:
        log.error("evaluator: %s; standing by", exc)
        self._lease_lost = True
        self._wake.set()

    async def _write_active(self) -> None:
        """The active alerts for `jarvis-monitor alerts`, at most once a second."""
        wall = self.clock()
        # building them costs a few ms per thousand alerts: once a second, even when unchanged
        if wall - self._active_looked_at < ACTIVE_EVERY:
            return
        self._active_looked_at = wall
        now = self._now()
        alerts = self.engine.active(now)
        encoded = msgspec.json.encode(alerts)
        if encoded == self._active_written and wall - self._active_at < ACTIVE_REFRESH:
            return
        try:
            await self._state.save_active(ActiveAlerts(ts=now, alerts=alerts))
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            log.warning("evaluator: writing the active alerts failed: %s", exc)
            return
        self._active_written = encoded
        self._active_at = wall

    async def _housekeeping(self) -> None:
        """Delete silences expired long ago and acks of alerts that are gone."""
        wall = self.clock()
        if wall - self._housekeeping_at < HOUSEKEEPING_EVERY:
            return
        self._housekeeping_at = wall
        active = {a.fingerprint for a in self.engine.active(self._now())}
        keys = [
            SILENCE_PREFIX + s.id for s in self._silences.values() if s.ends_at < wall - SILENCE_RETENTION
        ]
        keys += [
            ACK_PREFIX + r.fingerprint
            for r in self._acks.values()
            if r.fingerprint not in active and r.at < wall - ACK_RETENTION
        ]
        for key in keys:
            try:
                await self._silence_store.delete(key)
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                log.warning("evaluator: cannot delete %s: %s", key, exc)
                return


_INPUTS: dict[str, Callable[[bytes, str], Input]] = {
    "metrics": metric_batch.decode,
    "health": health_event.decode,
    "heartbeat": heartbeat.decode,
}


def alert_msg_id(alert: Alert) -> str:
    """The Nats-Msg-Id of an alert: one per (fingerprint, status, flapping, start or end)."""
    at = alert.ends_at if alert.ends_at is not None else alert.starts_at  # resolved, inactive: the end
    flapping = ":flapping" if alert.flapping else ""
    return f"{alert.fingerprint}:{alert.status}{flapping}:{at!r}"


def partition_durable(partition: int) -> str:
    """The consumer name of one partition's inputs on its family's mirror."""
    return f"{DURABLE}-p{partition}"


def _input_time(saved: Journaled | None) -> float:
    if saved is None or saved.input_time is None:
        return -math.inf
    return saved.input_time


def _by_id(silence: Silence) -> str:
    return silence.id


def _worth_logging(count: int) -> bool:
    """1, 2, ..., 10, 20, ..., 100, 200, ...: a repeating problem is logged, not flooded."""
    return count < 10 or count % 10 ** int(math.log10(count)) == 0
