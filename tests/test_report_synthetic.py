"""The rollup store: a synthetic day of events with known values, and what the store keeps of it.

`synthetic_day()` is also the input of the report's known-answer tests (test_report_model.py)
and of the end-to-end test through nats-server.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import sqlite3
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus.events import Alert, HealthEvent, MetricBatch, Sample, Status
from sinks.report.rollups import HealthHour, MetricHour, RollupStore
from sinks.report.sketch import RELATIVE_ERROR, Sketch, decode_sketch, encode_sketch

DAY = dt.date(2026, 11, 25)
T0 = dt.datetime(2026, 11, 25, tzinfo=dt.UTC).timestamp()
MINUTES = 1440
BACKEND_DOWN_MINUTES = (100, 200)

ReportEvent = MetricBatch | HealthEvent | Alert


def _host_batches() -> list[ReportEvent]:
    """web01: cpu cycles 0..59 every minute, memory 90% for 4 hours then 50%, disk / grows 1 point/day."""
    events: list[ReportEvent] = []
    for minute in range(MINUTES):
        ts = T0 + 60 * minute
        samples = [
            Sample("cpu.percent", float(minute % 60)),
            Sample("mem.percent", 90.0 if minute < 240 else 50.0),
            Sample("disk.percent", 80.0 + minute / MINUTES, {"mount": "/", "device": "sda1"}),
            Sample("container.cpu.percent", 5.0, {"container": "api"}),
        ]
        events.append(MetricBatch(host="web01", agent="host", ts=ts, interval=60, samples=samples))
    return events


def _probe_events() -> list[ReportEvent]:
    """Probe checks every minute: backend fails twice, frontend and postgres never; http metrics."""
    events: list[ReportEvent] = []
    for minute in range(MINUTES):
        ts = T0 + 60 * minute + 1
        backend: Status = "critical" if minute in BACKEND_DOWN_MINUTES else "ok"
        checks: tuple[tuple[str, Status, float], ...] = (
            ("backend", backend, 0.05 + (minute % 20) * 0.005),
            ("frontend", "ok", 0.2),
            ("postgres", "ok", 0.01),
        )
        for target, status, latency in checks:
            events.append(
                HealthEvent(
                    host="probe01", agent="probe", target=target, status=status, latency=latency, ts=ts
                )
            )
        samples = [
            Sample("http.requests_per_second", 10.0, {"check": "backend"}),
            Sample("http.error_ratio", 0.02, {"check": "backend"}),
            Sample("http.latency_p50_seconds", 0.1, {"check": "backend"}),
            Sample("http.latency_p95_seconds", 0.4, {"check": "backend"}),
            Sample("http.requests_per_second", 4.0, {"check": "frontend"}),
            Sample("http.error_ratio", 0.06, {"check": "frontend"}),
            Sample("http.latency_p50_seconds", 0.8, {"check": "frontend"}),
            Sample("http.latency_p95_seconds", 2.5, {"check": "frontend"}),
            Sample(
                "http.latency_seconds", 0.5 + (minute % 20) * 0.05, {"check": "ollama", "url": "http://x/"}
            ),
        ]
        events.append(MetricBatch(host="probe01", agent="probe", ts=ts, interval=60, samples=samples))
    return events


def _container_events() -> list[ReportEvent]:
    """Container api: unhealthy 10:00-10:30, and restarted (die, start) at 15:00 and 16:00."""
    events: list[ReportEvent] = []
    for minute in range(MINUTES):
        ts = T0 + 60 * minute + 2
        status: Status = "critical" if 600 <= minute < 630 else "ok"
        events.append(HealthEvent(host="web01", agent="container", target="api", status=status, ts=ts))
        if minute in (900, 960):
            spells: tuple[tuple[int, str, Status], ...] = ((10, "die", "critical"), (40, "start", "ok"))
            for offset, event, state in spells:
                events.append(
                    HealthEvent(
                        host="web01",
                        agent="container",
                        target="api",
                        status=state,
                        ts=ts + offset,
                        event=event,
                    )
                )
    return events


def _alert(fp: str, rule: str, severity: str, starts: float, ends: float | None) -> list[ReportEvent]:
    firing = Alert(
        fingerprint=fp,
        rule=rule,
        severity=severity,  # type: ignore[arg-type]
        status="firing",
        labels={"host": "web01"},
        summary=f"{rule} on web01",
        starts_at=starts,
    )
    if ends is None:
        return [firing]
    resolved = Alert(
        fingerprint=fp,
        rule=rule,
        severity=severity,  # type: ignore[arg-type]
        status="resolved",
        labels={"host": "web01"},
        summary=f"{rule} on web01",
        starts_at=starts,
        ends_at=ends,
    )
    return [firing, resolved]


def _alerts() -> list[ReportEvent]:
    events = _alert("old", "HighCPU", "warning", T0 - 7200, T0 - 3600)  # the day before: not counted
    events += [
        Alert(
            fingerprint="p1",
            rule="Pending",
            severity="warning",
            status="pending",
            labels={},
            summary="",
            starts_at=T0 + 10,
        )
    ]
    events += _alert("a1", "HighCPU", "warning", T0 + 3600, T0 + 3600 + 600)
    events += _alert("a2", "HighCPU", "warning", T0 + 7200, T0 + 7200 + 1200)
    events += _alert("a3", "ContainerDown", "critical", T0 + 36000, T0 + 36000 + 1800)
    events += _alert("a4", "DiskFull", "critical", T0 + 80000, None)
    for n in range(12):
        events += _alert(f"f{n}", "Flappy", "info", T0 + 40000 + 1000 * n, T0 + 40000 + 1000 * n + 60)
    events += _alert("a1", "HighCPU", "warning", T0 + 3600, T0 + 3600 + 600)[1:]  # a repeated resolve
    return events


def synthetic_day() -> list[ReportEvent]:
    """A day (2026-11-25 UTC) of host, probe, container and alert events with known answers."""
    events = _host_batches() + _probe_events() + _container_events() + _alerts()

    def ts(event: ReportEvent) -> float:
        return event.starts_at if isinstance(event, Alert) else event.ts

    return sorted(events, key=ts)


def fill(store: RollupStore, events: list[ReportEvent], batch: int = 500) -> None:
    for start in range(0, len(events), batch):
        store.ingest(events[start : start + batch])


# -- the sketch ----------------------------------------------------------------------------------


@given(st.lists(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False), min_size=1, max_size=300))
def test_sketch_quantiles_are_within_the_stated_relative_error(values: list[float]) -> None:
    sketch = Sketch()
    for value in values:
        sketch.add(value)
    ordered = sorted(values)
    for q in (0.0, 0.5, 0.95, 1.0):
        exact = ordered[math.floor(q * (len(values) - 1))]
        estimate = sketch.quantile(q)
        assert estimate is not None
        tolerance = RELATIVE_ERROR * abs(exact) + 1e-12 + 1e-9 * abs(exact)
        assert abs(estimate - exact) <= tolerance, (q, exact, estimate)


def test_sketches_of_two_hours_merge_into_the_sketch_of_both() -> None:
    first, second, both = Sketch(), Sketch(), Sketch()
    for value in range(1, 101):
        (first if value <= 50 else second).add(value)
        both.add(value)
    merged = decode_sketch(encode_sketch(first))
    merged.merge(decode_sketch(encode_sketch(second)))
    assert merged == both
    assert merged.quantile(0.95) == pytest.approx(95, rel=RELATIVE_ERROR)


# -- the store -----------------------------------------------------------------------------------


def test_a_day_of_cpu_samples_rolls_up_into_24_hours_with_exact_count_sum_min_max(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3")
    fill(store, synthetic_day())
    rows = store.metric_hours(T0, T0 + 86400, ["cpu.percent"])
    assert len(rows) == 24
    assert all((r.count, r.total, r.low, r.high) == (60, sum(range(60)), 0, 59) for r in rows)
    assert store.stats.samples == 4 * MINUTES + 9 * MINUTES


def _rounded(rows: list[MetricHour]) -> list[tuple[object, ...]]:
    """Rows with sums rounded and sketches decoded: the order of additions differs between batchings."""
    return [
        (dataclasses.replace(row, total=round(row.total, 6), sketch=b""), decode_sketch(row.sketch))
        for row in rows
    ]


def _decoded(rows: list[HealthHour]) -> list[tuple[object, ...]]:
    return [(dataclasses.replace(row, latency=b""), decode_sketch(row.latency)) for row in rows]


def test_batches_that_split_an_hour_give_the_same_rollups_as_one_batch(tmp_path: Path) -> None:
    events = synthetic_day()
    one, many = RollupStore(tmp_path / "one.sqlite3"), RollupStore(tmp_path / "many.sqlite3")
    fill(one, events, batch=len(events))
    fill(many, events, batch=7)
    for metrics in (["cpu.percent", "disk.percent"], ["http.latency_seconds"]):
        assert _rounded(one.metric_hours(T0, T0 + 86400, metrics)) == _rounded(
            many.metric_hours(T0, T0 + 86400, metrics)
        )
    assert _decoded(one.health_hours(T0, T0 + 86400)) == _decoded(many.health_hours(T0, T0 + 86400))
    assert one.incidents(0, T0 + 86400) == many.incidents(0, T0 + 86400)


def test_the_store_survives_a_restart_and_continues_the_same_hour(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    events = _host_batches()[:60]
    first = RollupStore(path)
    first.ingest(events[:30], {"S": 30})
    first.close()
    second = RollupStore(path)
    assert second.positions() == {"S": 30}
    second.ingest(events[30:], {"S": 60})
    (row,) = second.metric_hours(T0, T0 + 3600, ["cpu.percent"])
    assert (row.count, row.total) == (60, sum(range(60)))


def test_container_unhealthy_time_and_restarts_are_counted_from_checks_and_events(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3")
    fill(store, synthetic_day())
    api = [h for h in store.health_hours(T0, T0 + 86400) if h.target == "api"]
    assert sum(h.unhealthy_seconds for h in api) == pytest.approx(31 * 60)
    assert sum(h.restarts for h in api) == 2
    assert sum(h.down for h in api) == 30  # the die events are not periodic checks


def test_a_quiet_agent_counts_no_longer_than_the_health_gap(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3", health_gap=300)
    store.ingest(
        [
            HealthEvent(host="h", agent="container", target="c", status="critical", ts=T0),
            HealthEvent(host="h", agent="container", target="c", status="ok", ts=T0 + 7200),
        ]
    )
    assert sum(h.unhealthy_seconds for h in store.health_hours(T0, T0 + 86400)) == 300


def test_an_unhealthy_spell_across_midnight_is_split_between_the_hours(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3")
    store.ingest(
        [
            HealthEvent(host="h", agent="container", target="c", status="critical", ts=T0 - 60),
            HealthEvent(host="h", agent="container", target="c", status="ok", ts=T0 + 120),
        ]
    )
    assert [h.unhealthy_seconds for h in store.health_hours(T0, T0 + 86400)] == [120]
    assert [h.unhealthy_seconds for h in store.health_hours(T0 - 3600, T0)] == [60]


def test_alerts_become_incidents_with_their_resolve_time(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3")
    fill(store, synthetic_day())
    incidents = {i.fingerprint: i for i in store.incidents(T0, T0 + 86400)}
    assert len(incidents) == 16  # pending and the day before left out
    assert incidents["a1"].ends_at == T0 + 4200
    assert incidents["a4"].ends_at is None
    assert incidents["a3"].severity == "critical"


def test_a_failed_transaction_keeps_nothing_of_its_batch(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3")
    store.ingest(_host_batches()[:10], {"S": 10})
    bad = Sample("cpu.percent", 1.0)
    msgspec.structs.force_setattr(bad, "value", "not a number")  # a bug somewhere upstream
    poisoned = MetricBatch(host="new", agent="host", ts=T0, interval=1, samples=[Sample("x", 1), bad])
    with pytest.raises(TypeError):
        store.ingest([*_host_batches()[10:20], poisoned])
    assert store.positions() == {"S": 10}
    (row,) = store.metric_hours(T0, T0 + 3600, ["cpu.percent"])
    assert row.count == 10
    store.ingest(
        [
            *_host_batches()[10:20],
            MetricBatch(host="new", agent="host", ts=T0, interval=1, samples=[Sample("x", 1)]),
        ],
        {"S": 20},
    )
    (row,) = store.metric_hours(T0, T0 + 3600, ["cpu.percent"])
    assert row.count == 20
    assert [r.host for r in store.metric_hours(T0, T0 + 3600, ["x"])] == ["new"]


def _write_after_a_failure(
    store: RollupStore, monkeypatch: pytest.MonkeyPatch, positions: dict[str, int]
) -> None:
    """Write what the store took in as the sink does when the disk fails once: the write fails after
    the metrics (nothing kept), then the same window is tried again and commits."""
    window = store.take()
    write_health = store._write_health

    def fails(*args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_write_health", fails)
    with pytest.raises(sqlite3.OperationalError):
        store.write(window, positions)
    assert store.positions() == {}
    monkeypatch.setattr(store, "_write_health", write_health)
    store.write(window, positions)
    assert store.positions() == positions


def test_a_write_that_fails_after_making_series_ids_makes_them_again_when_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New series get their ids inside the write's transaction: rolled back, they are new again."""
    store = RollupStore(tmp_path / "r.sqlite3")
    for event in _host_batches()[:10]:
        store.add(event)
    _write_after_a_failure(store, monkeypatch, {"S": 10})
    rows = store.metric_hours(T0, T0 + 3600, ["cpu.percent", "disk.percent", "container.cpu.percent"])
    assert sorted((row.metric, row.labels, row.count) for row in rows) == [
        ("container.cpu.percent", {"container": "api"}, 10),
        ("cpu.percent", {}, 10),
        ("disk.percent", {"device": "sda1", "mount": "/"}, 10),
    ]


def test_late_events_of_an_earlier_hour_count_each_once_also_when_the_write_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two late samples of a series and two late checks of a target, all of the hour before the one
    they are in: each counted once in that hour, also when the write failed and is tried again."""
    store = RollupStore(tmp_path / "r.sqlite3")
    later = T0 + 3600
    events: list[tuple[float, float, Status]] = [
        (later, 5.0, "ok"),
        (T0 + 10, 1.0, "critical"),
        (T0 + 20, 2.0, "critical"),
    ]
    for ts, value, status in events:
        store.add(
            MetricBatch(host="h", agent="host", ts=ts, interval=10, samples=[Sample("cpu.percent", value)])
        )
        store.add(HealthEvent(host="h", agent="probe", target="api", status=status, ts=ts))
    _write_after_a_failure(store, monkeypatch, {"S": 6})
    metrics = {
        row.hour: (row.count, row.low, row.high)
        for row in store.metric_hours(T0, later + 3600, ["cpu.percent"])
    }
    assert metrics == {int(T0): (2, 1.0, 2.0), int(later): (1, 5.0, 5.0)}
    health = {row.hour: (row.up, row.down) for row in store.health_hours(T0, later + 3600)}
    assert health == {int(T0): (0, 2), int(later): (1, 0)}


def test_prune_deletes_rollups_and_incidents_older_than_the_cutoff(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3")
    fill(store, synthetic_day())
    store.prune(T0 + 12 * 3600)
    assert len(store.metric_hours(T0, T0 + 86400, ["cpu.percent"])) == 12
    assert all(h.hour >= T0 + 12 * 3600 for h in store.health_hours(0, T0 + 86400))
    kept = {i.fingerprint for i in store.incidents(0, T0 + 86400)}
    assert "a1" not in kept
    assert "a4" in kept  # still open: kept whatever its age
    store.ingest(_host_batches()[-1:])  # series ids are re-created after a prune
    assert store.metric_hours(T0 + 23 * 3600, T0 + 86400, ["cpu.percent"])[-1].count == 61
