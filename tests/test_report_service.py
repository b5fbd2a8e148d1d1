"""The report sink's schedule, catch-up and retention, with an injected clock; its config checks."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest
from nats.aio.msg import Msg

from bus.connection import Bus
from bus.events import MetricBatch, Sample, encode
from bus.subjects import Subjects
from bus.units import dec_hook
from sinks.report import render, service
from sinks.report.config import ReportSinkConfig
from sinks.report.layout import LAYOUT
from sinks.report.rollups import STORE_FILE, RollupStore
from sinks.report.service import ReportSink, next_daily_run, reports_due
from tests.conftest import wait_until
from tests.test_report_synthetic import T0, fill, synthetic_day

UTC = dt.UTC


def ts(year: int, month: int, day: int, hour: int, minute: int, zone: dt.tzinfo = UTC) -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=zone).timestamp()


def test_the_daily_run_is_the_next_local_daily_at() -> None:
    config = ReportSinkConfig()
    assert next_daily_run(ts(2026, 11, 25, 23, 0), config) == ts(2026, 11, 26, 0, 5)
    assert next_daily_run(ts(2026, 11, 26, 0, 5), config) == ts(2026, 11, 27, 0, 5)
    berlin = ReportSinkConfig(timezone="Europe/Berlin", daily_at="06:30")
    zone = berlin.zone
    assert next_daily_run(ts(2026, 3, 28, 12, 0), berlin) == ts(2026, 3, 29, 6, 30, zone=zone)
    # the night clocks go forward: still 06:30 local, 23 hours after the previous run
    assert (
        next_daily_run(ts(2026, 3, 29, 6, 30, zone=zone), berlin) - ts(2026, 3, 29, 6, 30, zone=zone) == 86400
    )


def test_the_run_writes_the_day_that_ended_and_on_monday_its_week() -> None:
    config = ReportSinkConfig()
    assert reports_due(ts(2026, 11, 26, 0, 5), config) == [("day", dt.date(2026, 11, 25))]
    monday = ts(2026, 11, 30, 0, 5)
    assert reports_due(monday, config) == [("day", dt.date(2026, 11, 29)), ("week", dt.date(2026, 11, 29))]
    assert reports_due(monday, ReportSinkConfig(weekly_on="never")) == [("day", dt.date(2026, 11, 29))]


def _sink(tmp_path: Path, now: list[float], **config: object) -> ReportSink:
    settings = msgspec.convert(config, ReportSinkConfig, dec_hook=dec_hook)
    # daily(), catch_up() and retain() work on the store and the files only, _take_in with the
    # subjects: no connection needed
    bus = SimpleNamespace(subjects=Subjects())
    return ReportSink(settings, cast("Bus", bus), tmp_path, clock=lambda: now[0])


async def test_the_daily_run_writes_the_report_and_applies_retention(tmp_path: Path) -> None:
    now = [T0 + 86400 + 300]
    sink = _sink(tmp_path, now)
    store = sink.open()
    fill(store, synthetic_day())
    old = tmp_path / "reports" / "post-golive" / "2026-08-01.html"
    old.parent.mkdir(parents=True)
    old.write_text("old")
    await sink.daily(now[0])
    written = tmp_path / "reports" / "post-golive" / "2026-11-25.json"
    report = json.loads(written.read_text())
    assert report["generated_at"] == now[0]
    assert report["hosts"][0]["cpu"]["avg"] == pytest.approx(29.5)
    assert not old.exists()
    assert store.metric_hours(T0, T0 + 86400, ["cpu.percent"])  # 30 days of rollups kept
    now[0] += 31 * 86400
    await sink.daily(now[0])
    assert store.metric_hours(0, now[0], ["cpu.percent"]) == []
    assert store.incidents(0, now[0])[0].fingerprint == "a4"  # still open, so kept
    assert sink.stats.reports == 2


async def test_a_sink_started_after_the_run_time_writes_the_missing_report(tmp_path: Path) -> None:
    now = [T0 + 86400 + 3600]
    sink = _sink(tmp_path, now, out_dir=str(tmp_path / "out"))
    fill(sink.open(), synthetic_day())
    await sink.catch_up()
    assert (tmp_path / "out" / "reports" / "post-golive" / "2026-11-25.html").exists()
    await sink.catch_up()
    assert sink.stats.reports == 1  # present already: not written again


async def test_a_report_written_with_streams_unread_says_so_and_is_written_again(tmp_path: Path) -> None:
    """Past the wait for its backlog a report is written from what is there: it says which
    streams were behind, and it is written again at the next run, not left so for good."""
    now = [T0 + 86400 + 3600]
    sink = _sink(tmp_path, now, weekly_on="never")
    fill(sink.open(), synthetic_day())
    await sink.catch_up(["metrics"])
    folder = tmp_path / "reports" / "post-golive"
    assert json.loads((folder / "2026-11-25.json").read_text())["unread"] == ["metrics"]
    said = "Written before the sink had read metrics up to the end of the period"
    assert said in (folder / "2026-11-25.md").read_text()
    assert said in (folder / "2026-11-25.html").read_text()
    now[0] += 86400  # the next daily run catches up on the runs before it
    await sink.catch_up(before=now[0] - 3600)
    assert json.loads((folder / "2026-11-25.json").read_text())["unread"] == []
    assert sink.stats.reports == 2
    await sink.catch_up()
    assert sink.stats.reports == 3, "only the 26th, new to this run; the 25th is whole now"


async def test_a_sink_down_for_days_writes_every_day_it_missed_not_only_the_last(tmp_path: Path) -> None:
    now = [T0 + 4 * 86400 + 3600]  # down from the 25th until the 29th, 01:00
    sink = _sink(tmp_path, now, weekly_on="never")
    fill(sink.open(), synthetic_day())
    await sink.catch_up()
    written = sorted(p.name for p in (tmp_path / "reports" / "post-golive").glob("*.json"))
    assert written == [f"2026-11-{day}.json" for day in (25, 26, 27, 28)]
    day = json.loads((tmp_path / "reports" / "post-golive" / "2026-11-25.json").read_text())
    assert day["hosts"], "the day with the data has it"


async def test_a_report_written_before_its_day_ended_is_written_again_after_a_missed_run(
    tmp_path: Path,
) -> None:
    """`jarvis-monitor report` at noon writes the day so far; a sink that then misses the 00:05 run
    must not leave that half day as the day's report for good."""
    now = [T0 + 12 * 3600]
    sink = _sink(tmp_path, now, weekly_on="never")
    fill(sink.open(), synthetic_day())
    await sink.write("day", dt.date(2026, 11, 25))
    path = tmp_path / "reports" / "post-golive" / "2026-11-25.json"
    assert json.loads(path.read_text())["generated_at"] == T0 + 12 * 3600
    now[0] = T0 + 86400 + 3600  # restarted at 01:00 on the 26th: the run at 00:05 was missed
    await sink.catch_up()
    assert json.loads(path.read_text())["generated_at"] == now[0]
    await sink.catch_up()
    assert sink.stats.reports == 2, "whole now: not written again"


def test_the_runs_missed_across_a_23_hour_day_are_each_found() -> None:
    config = ReportSinkConfig(timezone="Europe/Berlin")
    zone = config.zone
    # restarted at 00:30 on 30 March, the day after the clocks went forward: the run of 00:05 that
    # day is the latest, and the one of the 29th before it
    runs = service.runs_since(ts(2026, 3, 28, 12, 0, zone=zone), ts(2026, 3, 30, 0, 30, zone=zone), config)
    assert runs == [ts(2026, 3, 29, 0, 5, zone=zone), ts(2026, 3, 30, 0, 5, zone=zone)]


async def test_a_sink_started_before_the_run_time_leaves_that_day_to_the_schedule(tmp_path: Path) -> None:
    sink = _sink(tmp_path, [T0 + 86400 + 60])  # 00:01, the run is at 00:05
    store = sink.open()
    store.ingest(synthetic_day()[:10])  # data from the 25th only
    await sink.catch_up()
    assert sink.stats.reports == 0  # the last run due wrote the 24th, when there was no data yet
    sink.clock = lambda: T0 + 2 * 86400 + 60  # a day later, the run of the 26th was missed
    await sink.catch_up()
    assert sorted(p.name for p in (tmp_path / "reports" / "post-golive").iterdir()) == [
        "2026-11-25.html",
        "2026-11-25.json",
        "2026-11-25.md",
    ]


async def test_a_fresh_install_writes_no_empty_report(tmp_path: Path) -> None:
    sink = _sink(tmp_path, [T0 + 86400 + 3600])
    sink.open()
    await sink.catch_up()
    assert sink.stats.reports == 0


async def test_an_unwritable_report_dir_is_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    sink = _sink(tmp_path, [T0 + 86400 + 300], out_dir=str(blocker))
    sink.open()
    assert await sink.write("day", dt.date(2026, 11, 25)) == []
    assert sink.stats.report_errors == 1


async def test_a_report_that_fails_on_a_bug_is_logged_and_the_next_one_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected error in one report must not end the schedule (its task would die unseen)."""
    now = [T0 + 86400 + 300]
    sink = _sink(tmp_path, now)
    fill(sink.open(), synthetic_day())
    real_produce = render.produce
    calls = [0]

    def broken_once(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise ZeroDivisionError("a bug in the model")
        return real_produce(*args, **kwargs)

    monkeypatch.setattr(service, "produce", broken_once)
    assert await sink.write("day", dt.date(2026, 11, 25)) == []
    assert sink.stats.report_errors == 1
    assert "a bug in the model" in caplog.text
    assert await sink.write("day", dt.date(2026, 11, 25))
    assert sink.stats.reports == 1


def test_store_lives_in_the_data_dir(tmp_path: Path) -> None:
    sink = _sink(tmp_path, [0.0])
    assert sink.store_path == tmp_path / "report" / "rollups.sqlite3" == tmp_path / STORE_FILE
    assert isinstance(sink.open(), RollupStore)
    assert sink.out_dir == tmp_path


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"daily_at": "24:00"}, "daily_at '24:00' is not a time HH:MM"),
        ({"timezone": "Mars/Olympus"}, "timezone 'Mars/Olympus' is not a known IANA time zone"),
        ({"weekly_on": "someday"}, "Invalid enum value 'someday'"),
        (
            {"services": [{"name": "x", "checks": [], "availability_percent": 99, "latency_p95": "1s"}]},
            "names no checks",
        ),
        (
            {"services": [{"name": "x", "checks": ["a"], "availability_percent": 101, "latency_p95": "1s"}]},
            "<= 100",
        ),
        ({"report_retention": "90"}, "invalid duration"),
    ],
)
def test_a_bad_report_config_is_refused_with_a_clear_message(table: dict[str, object], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message.replace("(", r"\(")):
        msgspec.convert(table, ReportSinkConfig, dec_hook=dec_hook)


def test_default_slas_are_the_runbooks() -> None:
    services = {
        s.name: (s.availability_percent, s.latency_p95.seconds * 1000) for s in ReportSinkConfig().services
    }
    assert services == {
        "backend": (99.9, 200),
        "frontend": (99.9, 500),
        "ollama": (99.5, 3000),
        "database": (99.95, 50),
    }


async def test_a_store_that_cannot_be_opened_idles_the_sink_until_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    sink = ReportSink(ReportSinkConfig(), cast("Bus", None), blocker, clock=lambda: T0)
    task = asyncio.create_task(sink.run())
    await wait_until(lambda: "report sink: cannot open" in caplog.text)
    assert not task.done()  # the rest of `up` keeps running
    sink.stop()
    await asyncio.wait_for(task, 5)


async def test_a_store_of_a_newer_layout_idles_the_sink_with_what_to_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / STORE_FILE
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {LAYOUT + 1}")
    db.close()
    sink = ReportSink(ReportSinkConfig(), cast("Bus", None), tmp_path, clock=lambda: T0)
    task = asyncio.create_task(sink.run())
    await wait_until(lambda: "written by a newer jarvis-monitor" in caplog.text)
    assert "upgrade, or point data_dir elsewhere" in caplog.text
    assert not task.done()  # the rest of `up` keeps running
    sink.stop()
    await asyncio.wait_for(task, 5)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (LAYOUT + 1,)  # left as it was


async def test_a_window_committed_while_the_retention_prunes_keeps_a_series_back_from_silence(
    tmp_path: Path,
) -> None:
    """A series silent past the retention speaks again as the daily prune deletes it: the values it
    sent are in the store afterwards, under a series that exists."""
    now = [T0 + 31 * 86400]
    sink = _sink(tmp_path, now)
    store = sink.open()
    disk = [Sample("disk.percent", 81.0, {"mount": "/"})]
    store.ingest([MetricBatch(host="web01", agent="host", ts=T0, interval=60, samples=disk)])
    back = MetricBatch(host="web01", agent="host", ts=now[0], interval=60, samples=disk)
    sink._take_in(
        "metrics",
        "JARVIS_METRICS",
        Msg(cast("Any", None), "jarvis.metrics.web01.host", data=encode(back)),
        1,
        0,
    )
    retention = asyncio.create_task(sink.retain(now[0]))
    await asyncio.sleep(0)  # its first step: the store's lock taken, the prune in its thread
    assert sink._store_lock.locked()
    assert await sink.commit()  # the window came in as the prune ran
    await retention
    (stored,) = store.metric_hours(now[0] - 3600, now[0] + 3600, ["disk.percent"])
    assert (stored.host, stored.labels, stored.count) == ("web01", {"mount": "/"}, 1)


async def test_work_on_the_store_goes_on_when_its_caller_is_cancelled_and_the_stop_can_wait_for_it(
    tmp_path: Path,
) -> None:
    """A stop cancels the commit or the prune; the store must not be closed under its thread."""
    sink = _sink(tmp_path, [T0])
    started, release = threading.Event(), threading.Event()

    def slow() -> int:
        started.set()
        release.wait(10)
        return 42

    caller = asyncio.create_task(sink._on_store(slow))
    await asyncio.to_thread(started.wait, 10)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    work = sink._store_work
    assert work is not None
    assert not work.done()  # still running in its thread: what run's close waits for
    release.set()
    assert await work == 42
