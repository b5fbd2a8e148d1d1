"""The shared agent run loop: drift-free schedule, jitter, heartbeats, failures reported as data."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.runner import (
    COLLECTOR_TARGET,
    AgentConfig,
    AgentRunner,
    Check,
    Collection,
    Emit,
    Schedule,
)
from bus.events import HealthEvent, Heartbeat, MetricBatch, Sample
from bus.subjects import Subjects
from bus.testing import RecordingPublisher
from bus.units import Duration, dec_hook

PREFIX = "jt"
HOST = "web01"
T0 = 1000.0  # monotonic reading when the runner starts
EPOCH = 1_700_000_000.0  # wall clock = EPOCH + monotonic, so timestamps can be predicted
INTERVAL = 10.0
NO_WARMUP = Duration(0)  # the regular schedule; the warm-up has tests of its own


class FakeClock:
    """A monotonic clock that only moves when something sleeps or advances it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def now_fn(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


# What one scripted collection does: take this many (fake) seconds, or raise this.
Step = float | Exception


class ScriptedCollector:
    """Plays one step per collection, records when each started, stops the runner after the last."""

    name = "fake"

    def __init__(self, clock: FakeClock, steps: list[Step], checks: list[Check] | None = None) -> None:
        self.clock = clock
        self.steps = steps
        self.checks = checks or []
        self.starts: list[float] = []
        self.runner: AgentRunner | None = None

    async def collect(self) -> Collection:
        self.starts.append(self.clock.now)
        step = self.steps[len(self.starts) - 1]
        if len(self.starts) == len(self.steps) and self.runner is not None:
            self.runner.stop()  # finish this cycle, then return from run()
        await asyncio.sleep(0)
        if isinstance(step, Exception):
            raise step
        self.clock.now += step
        return Collection(samples=[Sample("fake.cycle", float(len(self.starts)))], checks=list(self.checks))


def make_runner(
    collector: ScriptedCollector,
    *,
    config: AgentConfig | None = None,
    publisher: RecordingPublisher | None = None,
    host: str = HOST,
    rng: random.Random | None = None,
) -> tuple[AgentRunner, RecordingPublisher]:
    publisher = publisher or RecordingPublisher(subjects=Subjects(PREFIX))
    runner = AgentRunner(
        collector,
        publisher,
        config or AgentConfig(warmup=NO_WARMUP, interval=Duration(INTERVAL)),
        host,
        clock=collector.clock.now_fn,
        wall_clock=collector.clock.wall,
        sleep=collector.clock.sleep,
        rng=rng,
    )
    collector.runner = runner
    return runner, publisher


async def run_scripted(
    steps: list[Step],
    *,
    config: AgentConfig | None = None,
    host: str = HOST,
    rng: random.Random | None = None,
    checks: list[Check] | None = None,
) -> tuple[AgentRunner, RecordingPublisher, ScriptedCollector]:
    """Run the loop on a fake clock until every step has been collected once."""
    collector = ScriptedCollector(FakeClock(), steps, checks)
    runner, publisher = make_runner(collector, config=config, host=host, rng=rng)
    await asyncio.wait_for(runner.run(), timeout=5)
    return runner, publisher, collector


# Schedule ------------------------------------------------------------------------------------


def test_schedule_is_the_following_tick_when_the_cycle_fits() -> None:
    assert Schedule(100.0, 10.0).after(0, 103.0) == (1, 0)
    assert Schedule(100.0, 10.0).after(4, 149.999) == (5, 0)


def test_schedule_does_not_drift_however_long_each_cycle_takes() -> None:
    """After 1000 cycles of 9.99s on a 10s interval the schedule is still at start + 1000*10."""
    start, interval, tick = 50.0, 10.0, 0
    for _ in range(1000):
        tick, skipped = Schedule(start, interval).after(tick, start + tick * interval + 9.99)
        assert skipped == 0
    assert tick == 1000
    assert start + tick * interval == 10050.0


def test_schedule_after_overrunning_two_ticks_returns_the_next_due_tick() -> None:
    assert Schedule(0.0, 10.0).after(0, 25.0) == (3, 2)
    assert Schedule(0.0, 10.0).after(5, 78.0) == (8, 2)


def test_schedule_at_exact_boundaries() -> None:
    """A cycle ending on or before the next tick keeps it; one ending after it skips it."""
    assert Schedule(0.0, 10.0).after(0, 9.999) == (1, 0)
    assert Schedule(0.0, 10.0).after(0, 10.0) == (1, 0)
    assert Schedule(0.0, 10.0).after(0, 10.001) == (2, 1)
    assert Schedule(0.0, 10.0).after(0, 30.0) == (3, 2)


@given(
    start=st.integers(0, 10**6),
    interval=st.integers(1, 3600),
    tick=st.integers(0, 1000),
    elapsed=st.integers(0, 10**6),
)
def test_schedule_is_always_the_first_tick_not_in_the_past(
    start: int, interval: int, tick: int, elapsed: int
) -> None:
    """The returned tick is the first not before `now`, and the ticks skipped for it are counted."""
    now = start + tick * interval + elapsed
    due, skipped = Schedule(start, interval).after(tick, now)
    assert due > tick
    assert start + due * interval >= now
    assert due == tick + 1 or start + (due - 1) * interval < now
    assert skipped == due - tick - 1


# AgentRunner: publishing -----------------------------------------------------------------------


async def test_each_cycle_publishes_one_batch_then_one_heartbeat_on_the_contract_subjects() -> None:
    runner, publisher, _ = await run_scripted([0.5, 0.5, 0.5])

    metrics = f"{PREFIX}.metrics.{HOST}.fake"
    heartbeat = f"{PREFIX}.heartbeat.{HOST}.fake"
    assert [subject for subject, _ in publisher.published] == [metrics, heartbeat] * 3
    batches = publisher.assert_published(metrics, MetricBatch, count=3)
    beats = publisher.assert_published(heartbeat, Heartbeat, count=3)
    assert runner.cycles == 3
    for k, (batch, beat) in enumerate(zip(batches, beats, strict=True)):
        assert isinstance(batch, MetricBatch)
        assert isinstance(beat, Heartbeat)
        assert (batch.host, batch.agent, batch.interval) == (HOST, "fake", INTERVAL)
        assert batch.samples == [Sample("fake.cycle", float(k + 1))]
        assert batch.ts == pytest.approx(EPOCH + T0 + k * INTERVAL)
        assert (beat.host, beat.agent, beat.interval) == (HOST, "fake", INTERVAL)
        assert beat.ts == batch.ts
        assert (beat.dropped, beat.publish_errors, beat.collect_errors) == (0, 0, 0)


async def test_a_cycle_without_samples_publishes_only_its_heartbeat() -> None:
    class Empty(ScriptedCollector):
        async def collect(self) -> Collection:
            await super().collect()
            return Collection()

    collector = Empty(FakeClock(), [0.1, 0.1])
    runner, publisher = make_runner(collector)
    await asyncio.wait_for(runner.run(), timeout=5)

    assert publisher.events(f"{PREFIX}.metrics.*") == []
    publisher.assert_published(f"{PREFIX}.heartbeat.{HOST}.fake", Heartbeat, count=2)


async def test_checks_of_a_collection_are_published_as_health_events() -> None:
    check = Check("postgres", "warning", latency=0.25, detail="slow handshake")
    _, publisher, _ = await run_scripted([0.1], checks=[check])

    (event,) = publisher.assert_published(f"{PREFIX}.health.{HOST}.fake.postgres", count=1)
    assert event == HealthEvent(
        host=HOST,
        agent="fake",
        target="postgres",
        status="warning",
        latency=0.25,
        detail="slow handshake",
        ts=EPOCH + T0,
    )


async def test_hostile_host_name_is_sanitised_in_subjects_and_kept_in_payloads() -> None:
    host = "web.01 *>"
    _, publisher, _ = await run_scripted([0.1], host=host, checks=[Check("db primary", "ok")])

    assert sorted(subject for subject, _ in publisher.published) == [
        f"{PREFIX}.health.web_01___.fake.db_primary",
        f"{PREFIX}.heartbeat.web_01___.fake",
        f"{PREFIX}.metrics.web_01___.fake",
    ]
    for _, event in publisher.published:
        assert isinstance(event, MetricBatch | Heartbeat | HealthEvent)
        assert event.host == host
    (health,) = publisher.events(f"{PREFIX}.health.*", HealthEvent)
    assert isinstance(health, HealthEvent)
    assert health.target == "db primary"


# AgentRunner: schedule -------------------------------------------------------------------------


async def test_cycles_start_on_the_interval_grid_even_when_collection_takes_time() -> None:
    runner, _, collector = await run_scripted([3.0, 7.5, 0.2, 9.9])

    assert collector.starts == pytest.approx([T0, T0 + 10, T0 + 20, T0 + 30])
    assert runner.skipped == 0


async def test_a_collection_overrunning_two_ticks_skips_them_instead_of_piling_up() -> None:
    runner, _, collector = await run_scripted([25.0, 1.0, 1.0])

    # Ticks at T0+10 and T0+20 were missed; the next cycle waits for T0+30 rather than
    # running the missed ones back to back as soon as the slow one returns at T0+25.
    assert collector.starts == pytest.approx([T0, T0 + 30, T0 + 40])
    assert runner.skipped == 2
    assert runner.cycles == 3


async def test_jitter_delays_each_cycle_within_the_jitter_window() -> None:
    config = AgentConfig(warmup=NO_WARMUP, interval=Duration(INTERVAL), jitter=Duration(3))
    _, _, collector = await run_scripted([0.1] * 20, config=config, rng=random.Random(7))

    delays = [start - (T0 + k * INTERVAL) for k, start in enumerate(collector.starts)]
    assert len(delays) == 20
    assert all(0 <= d < 3 for d in delays), delays
    assert len({round(d, 6) for d in delays}) > 10, "jitter should vary from cycle to cycle"


async def test_without_jitter_cycles_start_exactly_on_their_ticks() -> None:
    _, _, collector = await run_scripted([0.1] * 5, rng=random.Random(7))

    assert collector.starts == pytest.approx([T0 + k * INTERVAL for k in range(5)])


async def test_jitter_never_costs_a_tick_when_the_collection_itself_fits() -> None:
    """A 6 s collection on a 10 s interval with 5 s jitter: every tick runs, none is skipped."""
    config = AgentConfig(warmup=NO_WARMUP, interval=Duration(INTERVAL), jitter=Duration(5))
    runner, _, collector = await run_scripted([6.0] * 20, config=config, rng=random.Random(3))

    assert runner.skipped == 0
    assert [int((start - T0) // INTERVAL) for start in collector.starts] == list(range(20))


def test_warmup_ticks_fill_the_first_interval_then_the_regular_grid_takes_over() -> None:
    schedule = Schedule(start=100.0, interval=10.0, warmup=2.0)
    assert [schedule.at(k) for k in range(8)] == [100, 102, 104, 106, 108, 110, 120, 130]
    assert schedule.after(2, now=107.5) == (4, 1)  # a warm-up tick missed is skipped too
    assert schedule.after(3, now=125.0) == (7, 3)


def test_an_aligned_schedule_ticks_where_the_wall_clock_modulo_the_interval_is_the_phase() -> None:
    """Started at wall 1003.5 with phase 2 s on a 5 s interval: ticks at wall 1007, 1012, 1017..."""
    schedule = Schedule.aligned(start=50.0, wall=1003.5, interval=5.0, warmup=0.0, phase=2.0)
    walls = [schedule.at(k) - 50.0 + 1003.5 for k in range(4)]
    assert walls == pytest.approx([1003.5, 1007.0, 1012.0, 1017.0])
    assert schedule.after(1, now=50.0 + 3.5 + 5.2) == (3, 1)  # an overrun stays on the grid


def test_an_aligned_schedule_warms_up_only_until_its_first_regular_tick() -> None:
    schedule = Schedule.aligned(start=0.0, wall=100.0, interval=10.0, warmup=1.0, phase=3.5)
    assert [schedule.at(k) for k in range(6)] == pytest.approx([0, 1, 2, 3.5, 13.5, 23.5])
    on_the_phase = Schedule.aligned(start=0.0, wall=100.0, interval=10.0, warmup=0.0, phase=0.0)
    assert [on_the_phase.at(k) for k in range(3)] == [0.0, 10.0, 20.0]


async def test_a_phase_puts_every_collection_on_the_wall_clock_grid() -> None:
    config = AgentConfig(warmup=NO_WARMUP, interval=Duration(INTERVAL), phase=Duration(4))
    _, _, collector = await run_scripted([0.5, 9.9, 0.1], config=config)

    walls = [EPOCH + start for start in collector.starts[1:]]
    assert [wall % INTERVAL for wall in walls] == pytest.approx([4.0, 4.0])
    assert collector.starts[0] == T0  # the first collection does not wait for the grid


def test_a_phase_as_long_as_the_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="phase must be shorter than interval"):
        AgentConfig(interval=Duration(5), phase=Duration(5))


def test_warmup_longer_than_the_interval_is_no_warmup() -> None:
    assert Schedule(0.0, 10.0, warmup=10.0).warmup_ticks == 1
    assert Schedule(0.0, 10.0, warmup=0.0).at(3) == 30.0


@given(
    interval=st.integers(1, 600),
    warmup=st.integers(0, 700),
    tick=st.integers(0, 50),
    elapsed=st.integers(0, 10**5),
)
def test_schedule_after_is_the_first_tick_not_in_the_past_with_any_warmup(
    interval: int, warmup: int, tick: int, elapsed: int
) -> None:
    schedule = Schedule(0.0, float(interval), float(warmup))
    now = schedule.at(tick) + elapsed
    due, skipped = schedule.after(tick, now)
    assert schedule.at(due) >= now
    assert due == tick + 1 or schedule.at(due - 1) < now
    assert skipped == due - tick - 1
    assert all(schedule.at(k) < schedule.at(k + 1) for k in range(tick, due))


async def test_a_fresh_agent_publishes_every_warmup_during_its_first_interval() -> None:
    """With the default 1 s warm-up a new agent is on the bus at once, then settles to 10 s."""
    config = AgentConfig(interval=Duration(INTERVAL), jitter=Duration(3))
    _, publisher, collector = await run_scripted([0.1] * 13, config=config, rng=random.Random(1))

    offsets = [round(start - T0, 6) for start in collector.starts]
    assert offsets[:10] == [float(k) for k in range(10)]  # no jitter during the warm-up
    assert all(10 * k <= offset < 10 * k + 3 for k, offset in zip((1, 2, 3), offsets[10:], strict=True))
    beats = publisher.assert_published(f"{PREFIX}.heartbeat.*", Heartbeat, count=13)
    assert {b.interval for b in beats if isinstance(b, Heartbeat)} == {INTERVAL}


# AgentRunner: failures -------------------------------------------------------------------------


async def test_a_failing_collector_is_reported_critical_and_the_loop_keeps_running() -> None:
    runner, publisher, collector = await run_scripted(
        [RuntimeError("disk on fire"), RuntimeError("still on fire"), 0.1, 0.1]
    )

    assert runner.cycles == 4
    assert collector.starts == pytest.approx([T0 + k * INTERVAL for k in range(4)])
    health = publisher.assert_published(
        f"{PREFIX}.health.{HOST}.fake.{COLLECTOR_TARGET}", HealthEvent, count=3
    )
    assert [(e.status, e.target) for e in health if isinstance(e, HealthEvent)] == [
        ("critical", COLLECTOR_TARGET),
        ("critical", COLLECTOR_TARGET),
        ("ok", COLLECTOR_TARGET),  # once, on recovery, not on every later good cycle
    ]
    assert isinstance(health[0], HealthEvent)
    assert "disk on fire" in health[0].detail
    beats = publisher.assert_published(f"{PREFIX}.heartbeat.*", Heartbeat, count=4)
    assert [b.collect_errors for b in beats if isinstance(b, Heartbeat)] == [1, 2, 2, 2]
    publisher.assert_published(f"{PREFIX}.metrics.*", MetricBatch, count=2)


async def test_a_hanging_collector_is_abandoned_after_timeout_and_reported_timed_out() -> None:
    cancelled = asyncio.Event()

    class Hanging:
        name = "hang"

        async def collect(self) -> Collection:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise AssertionError("unreachable")

    publisher = RecordingPublisher(subjects=Subjects(PREFIX))
    config = AgentConfig(interval=Duration(10), timeout=Duration(0.05))
    runner = AgentRunner(Hanging(), publisher, config, HOST)

    await asyncio.wait_for(runner.run_cycle(), timeout=1)

    assert cancelled.is_set()
    (event,) = publisher.assert_published(
        f"{PREFIX}.health.{HOST}.hang.{COLLECTOR_TARGET}", HealthEvent, count=1
    )
    assert isinstance(event, HealthEvent)
    assert event.status == "critical"
    assert "timed out after 0.05s" in event.detail
    (beat,) = publisher.assert_published(f"{PREFIX}.heartbeat.{HOST}.hang", Heartbeat, count=1)
    assert isinstance(beat, Heartbeat)
    assert beat.collect_errors == 1


async def test_a_collector_raising_its_own_timeout_is_reported_as_such() -> None:
    """An aiohttp-style TimeoutError from inside the collector is not blamed on the runner's timeout."""
    _, publisher, _ = await run_scripted([TimeoutError("upstream took 30s")])

    (event,) = publisher.assert_published(f"{PREFIX}.health.{HOST}.fake.{COLLECTOR_TARGET}", HealthEvent)
    assert isinstance(event, HealthEvent)
    assert "upstream took 30s" in event.detail
    assert "timed out after" not in event.detail


async def test_stop_abandons_a_collection_in_progress() -> None:
    """A stop during a long collection returns at once instead of waiting out the timeout."""
    started = asyncio.Event()

    class Slow:
        name = "slow"

        async def collect(self) -> Collection:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    publisher = RecordingPublisher(subjects=Subjects(PREFIX))
    runner = AgentRunner(Slow(), publisher, AgentConfig(interval=Duration(300)), HOST)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), timeout=1)
    runner.stop()

    await asyncio.wait_for(task, timeout=1)
    assert not publisher.events(f"{PREFIX}.metrics.*")
    assert runner.collect_errors == 0


async def test_publishes_dropped_while_the_bus_is_down_are_reported_in_the_heartbeat() -> None:
    collector = ScriptedCollector(FakeClock(), [0.1, 0.1, 0.1])
    runner, publisher = make_runner(collector)
    publisher.fail = True
    await runner.run_cycle()  # batch and heartbeat dropped
    await runner.run_cycle()  # again
    publisher.fail = False
    await runner.run_cycle()

    (beat,) = publisher.assert_published(f"{PREFIX}.heartbeat.*", Heartbeat, count=1)
    assert isinstance(beat, Heartbeat)
    assert beat.dropped == 4


# AgentRunner: stopping -------------------------------------------------------------------------


async def test_stop_during_the_sleep_between_cycles_makes_run_return_promptly() -> None:
    asleep = asyncio.Event()
    sleeper_cancelled = asyncio.Event()

    async def sleep_forever(seconds: float) -> None:
        asleep.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            sleeper_cancelled.set()
            raise

    collector = ScriptedCollector(FakeClock(), [0.1] * 10)
    publisher = RecordingPublisher(subjects=Subjects(PREFIX))
    runner = AgentRunner(
        collector,
        publisher,
        AgentConfig(interval=Duration(3600)),
        HOST,
        clock=collector.clock.now_fn,
        wall_clock=collector.clock.wall,
        sleep=sleep_forever,
    )
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(asleep.wait(), timeout=1)

    runner.stop()
    await asyncio.wait_for(task, timeout=1)

    assert runner.cycles == 1
    await asyncio.wait_for(sleeper_cancelled.wait(), timeout=1)


async def test_stop_before_run_returns_without_collecting() -> None:
    collector = ScriptedCollector(FakeClock(), [0.1])
    runner, publisher = make_runner(collector)
    runner.stop()

    await asyncio.wait_for(runner.run(), timeout=1)

    assert collector.starts == []
    assert publisher.published == []


class WatchingCollector(ScriptedCollector):
    """Also follows a stream: emits one check at once, then waits; records that it was closed."""

    def __init__(self, clock: FakeClock, steps: list[Step]) -> None:
        super().__init__(clock, steps)
        self.emitted = asyncio.Event()
        self.closed = 0

    async def watch(self, emit: Emit) -> None:
        await emit(Check("db", "critical", event="die", labels={"image": "postgres:16"}))
        self.emitted.set()
        await asyncio.Event().wait()

    async def close(self) -> None:
        self.closed += 1


async def test_a_watcher_publishes_at_once_and_the_collector_is_closed_when_run_returns() -> None:
    collector = WatchingCollector(FakeClock(), [0.1, 0.1])
    runner, publisher = make_runner(collector)

    await asyncio.wait_for(runner.run(), timeout=5)

    assert collector.emitted.is_set()
    events = [event for _, event in publisher.published if isinstance(event, HealthEvent)]
    assert [(e.target, e.status, e.event, e.labels) for e in events] == [
        ("db", "critical", "die", {"image": "postgres:16"})
    ]
    assert collector.closed == 1


# AgentConfig -----------------------------------------------------------------------------------


def convert(raw: dict[str, object]) -> AgentConfig:
    return msgspec.convert(raw, AgentConfig, dec_hook=dec_hook)


def test_config_accepts_durations_as_written_in_toml() -> None:
    config = convert({"interval": "30s", "jitter": "5s", "timeout": "8s"})
    assert config.interval == Duration(30)
    assert config.jitter == Duration(5)
    assert config.timeout == Duration(8)


def test_config_accepts_the_smallest_interval_and_a_jitter_just_under_it() -> None:
    config = convert({"interval": "100ms", "jitter": "99ms"})
    assert config.interval.seconds == pytest.approx(0.1)


def test_config_refuses_jitter_not_shorter_than_interval() -> None:
    with pytest.raises(msgspec.ValidationError, match="jitter must be shorter than interval"):
        convert({"interval": "10s", "jitter": "10s"})
    with pytest.raises(msgspec.ValidationError, match="jitter must be shorter than interval"):
        convert({"interval": "10s", "jitter": "1m"})


def test_config_refuses_an_interval_under_100ms() -> None:
    with pytest.raises(msgspec.ValidationError, match="interval must be at least 100ms"):
        convert({"interval": "50ms"})


def test_config_refuses_an_interval_over_a_day() -> None:
    with pytest.raises(msgspec.ValidationError, match="interval must be at most 1d"):
        convert({"interval": "25h"})
    convert({"interval": "1d"})


def test_config_refuses_unknown_keys() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field `intervall`"):
        convert({"intervall": "10s"})


async def test_credentials_in_a_collector_error_reach_neither_the_bus_nor_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception quoting a URL with a password is reported with the user info masked."""
    _, publisher, _ = await run_scripted([ConnectionError("GET https://admin:hunter2@db.local/ failed")])

    (event,) = publisher.assert_published(f"{PREFIX}.health.{HOST}.fake.{COLLECTOR_TARGET}", HealthEvent)
    assert isinstance(event, HealthEvent)
    assert "https://***@db.local/" in event.detail
    assert "hunter2" not in event.detail
    assert "hunter2" not in caplog.text
    assert "https://***@db.local/" in caplog.text


async def test_a_batch_says_the_period_it_stands_for_during_and_after_the_warmup() -> None:
    config = AgentConfig(interval=Duration(INTERVAL), warmup=Duration(2))
    _, publisher, _ = await run_scripted([0.1] * 7, config=config)

    batches = publisher.assert_published(f"{PREFIX}.metrics.*", MetricBatch, count=7)
    assert [b.interval for b in batches if isinstance(b, MetricBatch)] == [2, 2, 2, 2, 2, 10, 10]
