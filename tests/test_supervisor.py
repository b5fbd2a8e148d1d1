"""The supervisor of `up`'s parts: a failure is logged, reported on the bus and restarted with capped
backoff; a part that runs well again is reported ok; a stop ends it at once, even mid-backoff."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bus import vocabulary as vocab
from bus.events import HealthEvent
from bus.subjects import Subjects
from bus.testing import RecordingPublisher
from jarvis_monitor.supervisor import Part, RestartPolicy, Service, Supervisor
from tests.conftest import wait_until

HOST = "web01"
HEALTHY_AFTER = 60.0
POLICY = RestartPolicy(first=1.0, cap=4.0, jitter=0, healthy_after=HEALTHY_AFTER)
SUBJECT = f"jt.health.{HOST}.evaluator.{vocab.SUPERVISOR_TARGET}"


class Timers:
    """The supervisor's sleep, driven by the test: restart waits pass at once, the healthy timer
    when `elapse` is set."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.elapse = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        if seconds == HEALTHY_AFTER:
            await self.elapse.wait()
        else:
            await asyncio.sleep(0)


class FlakyPart:
    """Raises at once if told to, else runs until stopped."""

    def __init__(self, number: int, fails: bool) -> None:
        self.number = number
        self.fails = fails
        self.running = asyncio.Event()
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        await asyncio.sleep(0)
        if self.fails:
            raise RuntimeError(f"boom {self.number}")
        self.running.set()
        await self.stopped.wait()

    def stop(self) -> None:
        self.stopped.set()


class Maker:
    """Makes FlakyParts: the first `failing` fail, the later ones run."""

    def __init__(self, failing: float) -> None:
        self.failing = failing
        self.made: list[FlakyPart] = []

    def __call__(self) -> Service:
        part = FlakyPart(len(self.made) + 1, fails=len(self.made) < self.failing)
        self.made.append(part)
        return part


def supervise(
    make: Maker | Part, timers: Timers | None = None, policy: RestartPolicy = POLICY
) -> tuple[Supervisor, RecordingPublisher]:
    publisher = RecordingPublisher(subjects=Subjects("jt"))
    part = make if isinstance(make, Part) else Part(vocab.EVALUATOR_PART, "evaluator", make)
    sleep = timers.sleep if timers is not None else asyncio.sleep
    return Supervisor(part, publisher, HOST, policy=policy, sleep=sleep, wall_clock=lambda: 1000.0), publisher


def reports(publisher: RecordingPublisher) -> list[HealthEvent]:
    return [e for e in publisher.events(SUBJECT) if isinstance(e, HealthEvent)]


async def test_a_part_that_fails_twice_is_reported_and_restarted_then_reported_ok_once_well(
    caplog: pytest.LogCaptureFixture,
) -> None:
    maker, timers = Maker(failing=2), Timers()
    supervisor, publisher = supervise(maker, timers)
    with caplog.at_level(logging.ERROR, logger="jarvis_monitor.supervisor"):
        task = asyncio.create_task(supervisor.run())
        await wait_until(lambda: len(maker.made) == 3)
        await asyncio.wait_for(maker.made[2].running.wait(), timeout=5)

    critical = reports(publisher)
    assert [(e.status, e.agent, e.target, e.host) for e in critical] == [
        ("critical", "evaluator", "_supervisor", HOST)
    ] * 2
    assert critical[0].detail == "failed: RuntimeError('boom 1'); restart 1 in 1.0s"
    assert critical[1].detail == "failed: RuntimeError('boom 2'); restart 2 in 2.0s"
    # each run after a failure starts a healthy timer; only the third lives to see it elapse
    assert timers.waits == [1.0, HEALTHY_AFTER, 2.0, HEALTHY_AFTER]
    first, _ = (r.getMessage() for r in caplog.records)
    assert first.startswith("evaluator failed: RuntimeError('boom 1'); restart 1 in 1.0s")
    assert "Traceback (most recent call last)" in first
    assert 'raise RuntimeError(f"boom {self.number}")' in first

    timers.elapse.set()
    await wait_until(lambda: len(reports(publisher)) == 3)
    ok = reports(publisher)[2]
    assert (ok.status, ok.detail) == ("ok", "running again for 60s after 2 restart(s)")
    assert supervisor.backoff.attempts == 0  # a later failure starts again from the first wait

    supervisor.stop()
    await asyncio.wait_for(task, timeout=5)
    assert maker.made[2].stopped.is_set()
    assert len(maker.made) == 3


async def test_a_part_that_keeps_failing_is_retried_with_capped_backoff_and_never_raises() -> None:
    maker, timers = Maker(failing=float("inf")), Timers()

    def make() -> Service:
        part = maker()
        if len(maker.made) == 7:
            supervisor.stop()  # while the seventh is being made: it never runs
        return part

    supervisor, publisher = supervise(Part(vocab.EVALUATOR_PART, "evaluator", make), timers)
    await asyncio.wait_for(supervisor.run(), timeout=5)

    assert [wait for wait in timers.waits if wait != HEALTHY_AFTER] == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert [e.status for e in reports(publisher)] == ["critical"] * 6
    assert supervisor.restarts == 6


async def test_a_part_that_returns_unasked_or_cannot_be_made_is_restarted_too() -> None:
    outcomes: list[str] = []

    class Returns:
        async def run(self) -> None:
            outcomes.append("returned")

        def stop(self) -> None:
            pass

    def make() -> Service:
        outcomes.append("made")
        if len(outcomes) == 1:
            raise OSError("cannot open rollups.sqlite3")
        if len(outcomes) > 3:
            supervisor.stop()
        return Returns()

    supervisor, publisher = supervise(Part(vocab.EVALUATOR_PART, "evaluator", make), Timers())
    await asyncio.wait_for(supervisor.run(), timeout=5)

    details = [e.detail for e in reports(publisher)]
    assert details[0] == "could not be made: OSError('cannot open rollups.sqlite3'); restart 1 in 1.0s"
    assert details[1] == "returned without being asked to stop; restart 2 in 2.0s"
    assert outcomes[:3] == ["made", "made", "returned"]


async def test_a_stop_during_the_backoff_wait_ends_the_supervisor_at_once() -> None:
    maker = Maker(failing=1)
    hour = RestartPolicy(first=3600, cap=3600)
    supervisor, publisher = supervise(maker, policy=hour)  # the real asyncio.sleep
    task = asyncio.create_task(supervisor.run())
    await wait_until(lambda: len(reports(publisher)) == 1)
    supervisor.stop()
    await asyncio.wait_for(task, timeout=5)  # not the hour's wait

    assert len(maker.made) == 1  # no fresh part made after the stop


async def test_a_cancel_leaking_out_of_the_part_is_a_failure_but_cancelling_the_supervisor_is_not() -> None:
    class LeaksCancel:
        async def run(self) -> None:
            inner = asyncio.create_task(asyncio.sleep(3600))
            inner.cancel()
            await inner  # a bug: its own task's cancel reaches the caller

        def stop(self) -> None:
            pass

    made: list[Service] = []

    def make() -> Service:
        made.append(part := LeaksCancel() if not made else FlakyPart(2, fails=False))
        return part

    supervisor, publisher = supervise(Part(vocab.EVALUATOR_PART, "evaluator", make), Timers())
    task = asyncio.create_task(supervisor.run())
    await wait_until(lambda: len(made) == 2)
    assert reports(publisher)[0].detail.startswith("failed: CancelledError()")

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
