"""The report sink against a real nats-server: durable consumers into rollups, then `report`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bus.config import StreamsConfig
from bus.connection import Bus
from bus.events import Alert, Heartbeat, MetricBatch, encode
from bus.jetstream import provision, stream_name
from bus.server import EmbeddedServer
from bus.units import Duration
from jarvis_monitor import report_cli
from jarvis_monitor.config import Config
from sinks.report.config import ReportSinkConfig
from sinks.report.intake import Batch
from sinks.report.rollups import STORE_FILE, RollupStore
from sinks.report.service import ReportSink
from tests.conftest import wait_until
from tests.test_report_render import SECTIONS
from tests.test_report_synthetic import T0, ReportEvent, synthetic_day


def subject_of(bus: Bus, event: ReportEvent) -> str:
    if isinstance(event, MetricBatch):
        return bus.subjects.metrics(event.host, event.agent)
    if isinstance(event, Alert):
        return bus.subjects.alerts(event.severity, event.labels.get("host", ""), event.rule)
    return bus.subjects.health(event.host, event.agent, event.target)


async def publish(bus: Bus, events: Sequence[ReportEvent]) -> None:
    js = bus.nc.jetstream()
    for chunk in range(0, len(events), 500):
        acks = [js.publish(subject_of(bus, e), encode(e)) for e in events[chunk : chunk + 500]]
        await asyncio.gather(*acks)


@pytest.fixture
async def streams(bus: Bus) -> Bus:
    await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
    return bus


class Running:
    """A sink running in a task, stopped and awaited on exit."""

    def __init__(self, bus: Bus, data_dir: Path) -> None:
        config = ReportSinkConfig(batch_size=400, commit_every=Duration(0.2))
        self.sink = ReportSink(config, bus, data_dir, clock=lambda: T0 + 3600)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ReportSink:
        self.task = asyncio.create_task(self.sink.run())
        await wait_until(lambda: self.sink.store is not None)
        return self.sink

    async def __aexit__(self, *exc: object) -> None:
        self.sink.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)


def ingested(sink: ReportSink) -> tuple[int, int, int]:
    stats = sink.store.stats if sink.store else None
    return (stats.metric_batches, stats.health_events, stats.alerts) if stats else (0, 0, 0)


def expected(events: Sequence[ReportEvent]) -> tuple[int, int, int]:
    batches = sum(isinstance(e, MetricBatch) for e in events)
    alerts = sum(isinstance(e, Alert) for e in events)
    return batches, len(events) - batches - alerts, alerts


def write_report(data_dir: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    report_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", *argv])
    code: int = args.handler(args, Config(data_dir=str(data_dir)))
    return code


async def test_published_events_reach_the_rollups_and_the_report_has_every_section(
    streams: Bus, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bus = streams
    events = synthetic_day()
    await publish(bus, events)
    await bus.nc.publish(bus.subjects.metrics("web01", "host"), b"{not json")
    heartbeat = Heartbeat(host="web01", agent="host", version="1", interval=10, ts=T0)
    await bus.nc.publish(bus.subjects.metrics("web01", "host"), encode(heartbeat))
    async with Running(bus, data_dir) as sink:
        await wait_until(lambda: ingested(sink) == expected(events) and sink.stats.malformed == 2, timeout=60)
    assert write_report(data_dir, "--date", "2026-11-25") == 0
    folder = data_dir / "reports" / "post-golive"
    assert {"2026-11-25.html", "2026-11-25.json", "2026-11-25.md"} <= {p.name for p in folder.iterdir()}
    report = json.loads((folder / "2026-11-25.json").read_text())
    assert report["hosts"][0]["cpu"]["avg"] == pytest.approx(29.5)
    assert report["containers"][0]["restarts"] == 2
    assert report["alerts"]["incidents"] == 16
    page = (folder / "2026-11-25.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert "<svg" in page
    assert "status critical, availability 99.954%, 16 incidents, 1 SLA breaches" in capsys.readouterr().out


async def test_a_restarted_sink_continues_where_it_stopped_without_counting_twice(
    streams: Bus, data_dir: Path
) -> None:
    bus = streams
    events = synthetic_day()
    half = len(events) // 2
    await publish(bus, events[:half])
    async with Running(bus, data_dir) as sink:
        await wait_until(lambda: ingested(sink) == expected(events[:half]), timeout=60)
    await publish(bus, events[half:])
    async with Running(bus, data_dir) as sink:
        await wait_until(lambda: ingested(sink) == expected(events[half:]), timeout=60)
        store = sink.store
        assert store is not None
        rows = store.metric_hours(T0, T0 + 86400, ["cpu.percent"])
        assert sum(r.count for r in rows) == 1440


async def test_a_report_caught_up_after_an_outage_waits_for_the_backlog_of_its_day(
    streams: Bus, data_dir: Path
) -> None:
    """The sink was down for the second half of the day: the report it writes at its next start
    counts what the stream kept meanwhile, not only what the store held (it would stand so)."""
    bus = streams
    events = synthetic_day()
    half = len(events) // 2
    await publish(bus, events[:half])
    async with Running(bus, data_dir) as sink:
        await wait_until(lambda: ingested(sink) == expected(events[:half]), timeout=60)
    await publish(bus, events[half:])
    config = ReportSinkConfig(batch_size=400, commit_every=Duration(60))  # the window held too
    sink = ReportSink(config, bus, data_dir, clock=lambda: T0 + 86400 + 3600)
    task = asyncio.create_task(sink.run())
    report = data_dir / "reports" / "post-golive" / "2026-11-25.json"
    try:
        await wait_until(report.exists, timeout=60)
    finally:
        sink.stop()
        await asyncio.wait_for(task, 10)
    written = json.loads(report.read_text())
    assert written["hosts"][0]["cpu"]["avg"] == pytest.approx(29.5)  # the whole day's, as above
    assert written["alerts"]["incidents"] == 16


async def test_a_lost_consumer_is_made_again_where_the_store_stands(streams: Bus, data_dir: Path) -> None:
    """The store, not the consumer, knows what was taken in: with the consumer deleted while the
    sink was down, what it had is not counted again and what came since is not missed."""
    bus = streams
    events = [e for e in synthetic_day() if isinstance(e, MetricBatch) and e.agent == "host"][:350]
    await publish(bus, events[:300])
    async with Running(bus, data_dir) as sink:
        await wait_until(lambda: ingested(sink)[0] == 300, timeout=30)
    await bus.nc.jetstream().delete_consumer(stream_name(bus.subjects.prefix, "metrics"), "report")
    await publish(bus, events[300:])
    async with Running(bus, data_dir) as sink:
        await wait_until(lambda: ingested(sink)[0] == 50, timeout=30)
        assert sink.store is not None
        rows = sink.store.metric_hours(T0, T0 + 86400, ["cpu.percent"])
        assert sum(r.count for r in rows) == 350


async def test_the_sink_waits_for_streams_that_do_not_exist_yet(
    bus: Bus, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = [e for e in synthetic_day() if isinstance(e, MetricBatch)][:10]
    async with Running(bus, data_dir) as sink:
        # the consumers have found no stream and retry (not merely not yet looked)
        await wait_until(lambda: "cannot consume" in caplog.text, timeout=10)
        await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
        await publish(bus, events)
        await wait_until(lambda: ingested(sink)[0] == 10, timeout=30)


def test_report_without_a_store_writes_an_empty_report(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        write_report(data_dir, "--period", "week", "--date", "2026-11-25", "--out", str(data_dir / "o")) == 0
    )
    assert (data_dir / "o" / "reports" / "post-golive" / "2026-11-25-week.html").exists()
    assert "no rollups at" in capsys.readouterr().err


def test_report_refuses_a_bad_date(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    report_cli.register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["report", "--date", "25.11.2026"])
    assert "invalid date '25.11.2026': write it as YYYY-MM-DD" in capsys.readouterr().err


def stored_batches(data_dir: Path) -> int:
    path = data_dir / STORE_FILE
    if not path.exists():
        return 0
    store = RollupStore(path, readonly=True)
    try:
        return sum(r.count for r in store.metric_hours(T0, T0 + 86400, ["cpu.percent"]))
    except sqlite3.OperationalError:  # created but the schema not yet committed
        return 0
    finally:
        store.close()


async def test_sink_report_command_consumes_until_sigterm_and_report_writes_the_files(
    nats_server: EmbeddedServer, bus: Bus, prefix: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "jarvis.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\n[bus]\nprefix = "{prefix}"\n[sinks.report]\ncommit_every = "200ms"\n'
    )
    env = {**os.environ, "JARVIS_NATS_URL": nats_server.url}
    command = [sys.executable, "-m", "jarvis_monitor", "-c", str(config)]
    process = await asyncio.create_subprocess_exec(
        *command, "sink", "report", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        events = [e for e in synthetic_day() if isinstance(e, MetricBatch) and e.agent == "host"][:120]
        await wait_until(lambda: (data_dir / STORE_FILE).exists(), timeout=30)
        await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())  # as the sink did
        await publish(bus, events)
        await wait_until(lambda: stored_batches(data_dir) == 120, timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    report = await asyncio.create_subprocess_exec(
        *command, "report", "--date", "2026-11-25", env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(report.communicate(), 60)
    assert report.returncode == 0
    assert str(data_dir / "reports" / "post-golive" / "2026-11-25.html") in out.decode()
    written = json.loads((data_dir / "reports" / "post-golive" / "2026-11-25.json").read_text())
    assert written["hosts"][0]["cpu"]["avg"] == pytest.approx(29.5)


async def test_a_killed_sink_restarted_has_every_message_once(
    nats_server: EmbeddedServer, bus: Bus, prefix: str, tmp_path: Path
) -> None:
    """SIGKILL between (or during) writes: what was written stays, what was not comes again, and
    the restarted sink ends with every message in the store exactly once."""
    data_dir = tmp_path / "data"
    config = tmp_path / "jarvis.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\n[bus]\nprefix = "{prefix}"\n[sinks.report]\ncommit_every = "100ms"\n'
    )
    env = {**os.environ, "JARVIS_NATS_URL": nats_server.url}
    command = [sys.executable, "-m", "jarvis_monitor", "-c", str(config), "sink", "report"]
    await provision(bus.nc.jetstream(), bus.subjects, StreamsConfig())
    events = [e for e in synthetic_day() if isinstance(e, MetricBatch) and e.agent == "host"][:600]
    await publish(bus, events[:300])
    first = await asyncio.create_subprocess_exec(*command, env=env, stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_until(lambda: stored_batches(data_dir) >= 100, timeout=30)
        sending = asyncio.create_task(publish(bus, events[300:]))
        first.kill()  # while taking in the first half and the second arrives
        await first.wait()
        await sending
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    written = stored_batches(data_dir)
    assert 100 <= written <= 600
    second = await asyncio.create_subprocess_exec(*command, env=env, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_until(lambda: stored_batches(data_dir) >= 600, timeout=30)
    finally:
        second.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(second.communicate(), 30)
    assert second.returncode == 0, stderr.decode()
    assert stored_batches(data_dir) == 600


@pytest.mark.parametrize(
    ("method", "error"), [("write", "database or disk is full"), ("positions", "database is locked")]
)
async def test_a_failing_store_keeps_the_batch_and_retries_until_it_is_written(
    streams: Bus, data_dir: Path, monkeypatch: pytest.MonkeyPatch, method: str, error: str
) -> None:
    """Whether writing or reading where the streams stand fails, the consumer retries; it never dies."""
    bus = streams
    events = [e for e in synthetic_day() if isinstance(e, MetricBatch) and e.agent == "host"][:50]
    running = Running(bus, data_dir)
    store = running.sink.open()
    real = getattr(store, method)
    failures = [2]

    def failing(*args: Any, **kwargs: Any) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise sqlite3.OperationalError(error)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, method, failing)
    await publish(bus, events)
    async with running as sink:
        await wait_until(lambda: store.stats.metric_batches == 50, timeout=30)
        assert sink.stats.store_errors == 2
        rows = store.metric_hours(T0, T0 + 86400, ["cpu.percent"])
        assert sum(r.count for r in rows) == 50


@pytest.mark.parametrize("disk_fails_next", [False, True], ids=["alone", "then-disk-full"])
async def test_an_event_the_store_cannot_take_is_rejected_and_the_rest_kept_once(
    streams: Bus, data_dir: Path, monkeypatch: pytest.MonkeyPatch, disk_fails_next: bool
) -> None:
    """One event the store refuses is counted and left out; should the write of the rest fail
    then, it is tried again and nothing is counted twice."""
    bus = streams
    events = [e for e in synthetic_day() if isinstance(e, MetricBatch) and e.agent == "host"][:20]
    running = Running(bus, data_dir)
    store = running.sink.open()
    real_add, real_write = store.add, store.write
    disk_full = [disk_fails_next]

    def choke_on_minute_7(event: ReportEvent) -> None:
        if isinstance(event, Batch) and event.ts == T0 + 7 * 60:
            raise ValueError("a bug")
        real_add(event)

    def write(window: Any, positions: Any = None) -> None:
        if disk_full[0]:
            disk_full[0] = False
            raise sqlite3.OperationalError("database or disk is full")
        real_write(window, positions)

    monkeypatch.setattr(store, "add", choke_on_minute_7)
    monkeypatch.setattr(store, "write", write)
    await publish(bus, events)
    metrics = stream_name(bus.subjects.prefix, "metrics")
    async with running as sink:
        await wait_until(lambda: store.positions().get(metrics) == 20, timeout=30)
        assert sink.stats.rejected == 1
        assert sink.stats.store_errors == (1 if disk_fails_next else 0)
        rows = store.metric_hours(T0, T0 + 86400, ["cpu.percent"])
        assert sum(r.count for r in rows) == 19
        assert store.stats.metric_batches == 19
