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
        self.sink = ReportSink(ReportSinkConfig(batch_size=400), bus, data_dir, clock=lambda: T0 + 3600)
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


async def test_redelivered_messages_are_recognised_and_not_counted_again(
    streams: Bus, data_dir: Path
) -> None:
    bus = streams
    events = [e for e in synthetic_day() if isinstance(e, MetricBatch) and e.agent == "host"][:300]
    await publish(bus, events)
    async with Running(bus, data_dir) as sink:
        await wait_until(lambda: ingested(sink)[0] == 300, timeout=30)
    # as if every ack had been lost: a consumer that starts over from the first message
    await bus.nc.jetstream().delete_consumer(stream_name(bus.subjects.prefix, "metrics"), "report")
    async with Running(bus, data_dir) as sink:
        await wait_until(lambda: sink.stats.duplicates == 300, timeout=30)
        assert sink.store is not None
        assert sink.store.stats.metric_batches == 0
        rows = sink.store.metric_hours(T0, T0 + 86400, ["cpu.percent"])
        assert sum(r.count for r in rows) == 300


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
    config.write_text(f'data_dir = "{data_dir}"\n[bus]\nprefix = "{prefix}"\n')
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


@pytest.mark.parametrize(
    ("method", "error"), [("ingest", "database or disk is full"), ("positions", "database is locked")]
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
    """Event by event, each commit carries its stream position: should the store fail meanwhile,
    the redelivered batch resumes there and nothing is counted twice."""
    bus = streams
    events = [e for e in synthetic_day() if isinstance(e, MetricBatch) and e.agent == "host"][:20]
    running = Running(bus, data_dir)
    store = running.sink.open()
    real_ingest = store.ingest
    armed, disk_full = [False], [disk_fails_next]

    def choke_on_minute_7(batch: Sequence[ReportEvent], positions: Any = None) -> None:
        if any(isinstance(e, Batch) and e.ts == T0 + 7 * 60 for e in batch):
            armed[0] = True
            raise ValueError("a bug")
        later = any(isinstance(e, Batch) and e.ts > T0 + 7 * 60 for e in batch)
        if armed[0] and disk_full[0] and later:  # the first event after the bad one, event by event
            disk_full[0] = False
            raise sqlite3.OperationalError("database or disk is full")
        real_ingest(batch, positions)

    monkeypatch.setattr(store, "ingest", choke_on_minute_7)
    monkeypatch.setattr("sinks.report.service.ACK_WAIT", 1.0)  # an unacked batch comes back soon
    await publish(bus, events)
    metrics = stream_name(bus.subjects.prefix, "metrics")
    async with running as sink:
        await wait_until(lambda: store.stats.metric_batches == 19 and not disk_full[0], timeout=30)
        await wait_until(lambda: store.positions().get(metrics) == 20, timeout=30)
        assert sink.stats.rejected >= 1
        rows = store.metric_hours(T0, T0 + 86400, ["cpu.percent"])
        assert sum(r.count for r in rows) == 19
        assert store.stats.metric_batches == 19
