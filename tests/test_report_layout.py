"""The rollup store's layout: a store written by an earlier version is brought to this one, whole."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bus.events import HealthEvent, MetricBatch, Sample
from sinks.report.layout import LAYOUT, LayoutError
from sinks.report.rollups import HOUR, RollupStore
from sinks.report.sketch import Sketch, encode_sketch

T0 = 1_800_000_000 // HOUR * HOUR

# layout 0, as versions before the hour-clustered tables wrote it (user_version 0)
LAYOUT_0 = """
CREATE TABLE series (
    id INTEGER PRIMARY KEY, host TEXT NOT NULL, agent TEXT NOT NULL, metric TEXT NOT NULL,
    labels TEXT NOT NULL, UNIQUE (host, agent, metric, labels));
CREATE INDEX series_metric ON series (metric);
CREATE TABLE metric_hour (
    series INTEGER NOT NULL, hour INTEGER NOT NULL, count INTEGER NOT NULL, sum REAL NOT NULL,
    min REAL NOT NULL, max REAL NOT NULL, sketch BLOB NOT NULL, PRIMARY KEY (series, hour))
    WITHOUT ROWID;
CREATE INDEX metric_hour_hour ON metric_hour (hour);
CREATE TABLE health_hour (
    host TEXT NOT NULL, agent TEXT NOT NULL, target TEXT NOT NULL, hour INTEGER NOT NULL,
    up INTEGER NOT NULL, down INTEGER NOT NULL, unknown INTEGER NOT NULL,
    healthy_seconds REAL NOT NULL, unhealthy_seconds REAL NOT NULL, restarts INTEGER NOT NULL,
    latency_sketch BLOB NOT NULL, PRIMARY KEY (host, agent, target, hour)) WITHOUT ROWID;
CREATE INDEX health_hour_hour ON health_hour (hour);
CREATE TABLE health_last (
    host TEXT NOT NULL, agent TEXT NOT NULL, target TEXT NOT NULL, status TEXT NOT NULL,
    ts REAL NOT NULL, PRIMARY KEY (host, agent, target)) WITHOUT ROWID;
CREATE TABLE incidents (
    fingerprint TEXT NOT NULL, starts_at REAL NOT NULL, rule TEXT NOT NULL, severity TEXT NOT NULL,
    host TEXT NOT NULL, summary TEXT NOT NULL, ends_at REAL, PRIMARY KEY (fingerprint, starts_at))
    WITHOUT ROWID;
CREATE TABLE consumed (stream TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""


def _sketch(*values: float) -> bytes:
    sketch = Sketch()
    sketch.add_all(values)
    return encode_sketch(sketch)


def _layout_0_store(path: Path) -> None:
    """Two series over two hours (one of them heard of in the first hour only), a target, positions."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(LAYOUT_0)
    db.executemany(
        "INSERT INTO series VALUES (?, ?, ?, ?, ?)",
        [(1, "web01", "host", "cpu.percent", "{}"), (2, "web01", "host", "disk.percent", '{"mount":"/"}')],
    )
    db.executemany(
        "INSERT INTO metric_hour VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (1, T0, 2, 30.0, 10.0, 20.0, _sketch(10, 20)),
            (1, T0 + HOUR, 1, 40.0, 40.0, 40.0, _sketch(40)),
            (2, T0, 1, 81.0, 81.0, 81.0, _sketch(81)),
        ],
    )
    db.execute(
        "INSERT INTO health_hour VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ("web01", "probe", "api", T0, 5, 1, 0, 3000.0, 600.0, 0, _sketch(0.1, 0.2)),
    )
    db.execute("INSERT INTO health_last VALUES ('web01', 'probe', 'api', 'ok', ?)", (T0 + 3590,))
    db.execute("INSERT INTO consumed VALUES ('JARVIS_METRICS', 41)")
    db.close()


def _pk(db_path: Path, table: str) -> list[str]:
    db = sqlite3.connect(db_path)
    columns = sorted((pk, name) for _, name, _, _, _, pk in db.execute(f"PRAGMA table_info({table})") if pk)
    db.close()
    return [name for _, name in columns]


def test_a_store_of_layout_0_is_laid_out_by_hour_with_everything_it_held(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    _layout_0_store(path)
    store = RollupStore(path)
    assert [
        (r.metric, r.labels, r.hour, r.count, r.total)
        for r in store.metric_hours(T0, T0 + 2 * HOUR, ["cpu.percent", "disk.percent"])
    ] == [
        ("cpu.percent", {}, T0, 2, 30.0),
        ("disk.percent", {"mount": "/"}, T0, 1, 81.0),
        ("cpu.percent", {}, T0 + HOUR, 1, 40.0),
    ]
    (health,) = store.health_hours(T0, T0 + HOUR)
    assert (health.target, health.up, health.down, health.unhealthy_seconds) == ("api", 5, 1, 600.0)
    assert store.positions() == {"JARVIS_METRICS": 41}
    assert _pk(path, "metric_hour") == ["hour", "series"]
    assert _pk(path, "health_hour") == ["hour", "host", "agent", "target"]
    store.close()

    # what it held goes on: the series' hour takes the new value in, the target's status lasts
    again = RollupStore(path)
    again.ingest(
        [
            MetricBatch(
                host="web01",
                agent="host",
                ts=T0 + HOUR + 60,
                interval=60,
                samples=[Sample("cpu.percent", 50.0)],
            ),
            HealthEvent(host="web01", agent="probe", target="api", status="ok", ts=T0 + HOUR + 10),
        ],
        {"JARVIS_METRICS": 42},
    )
    (cpu,) = again.metric_hours(T0 + HOUR, T0 + 2 * HOUR, ["cpu.percent"])
    assert (cpu.count, cpu.total, cpu.high) == (2, 90.0, 50.0)
    (later,) = again.health_hours(T0 + HOUR, T0 + 2 * HOUR)
    assert later.healthy_seconds == 10.0  # from the status stored at T0 + 3590 to the event
    # a prune up to the second hour empties the disk series (heard of in the first hour only)
    again.prune(T0 + HOUR)
    assert [r.metric for r in again.metric_hours(0, T0 + 2 * HOUR, ["cpu.percent", "disk.percent"])] == [
        "cpu.percent"
    ]
    series = sqlite3.connect(path).execute("SELECT metric, last_hour FROM series").fetchall()
    assert series == [("cpu.percent", T0 + HOUR)]


def test_a_store_of_a_newer_layout_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {LAYOUT + 1}")
    db.close()
    with pytest.raises(
        LayoutError, match=r"newer jarvis-monitor \(layout 2.*upgrade, or point data_dir elsewhere"
    ):
        RollupStore(path)


def test_a_new_store_is_of_this_layout_and_opens_again_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    RollupStore(path).close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (LAYOUT,)
    store = RollupStore(path)
    store.ingest(
        [MetricBatch(host="h", agent="host", ts=T0, interval=60, samples=[Sample("cpu.percent", 1.0)])]
    )
    assert len(store.metric_hours(T0, T0 + HOUR, ["cpu.percent"])) == 1


def test_a_series_back_after_its_rows_were_pruned_is_stored_again(tmp_path: Path) -> None:
    """Its values since the last write came in while the prune emptied it: the next write makes it anew."""
    store = RollupStore(tmp_path / "r.sqlite3")
    disk = [Sample("disk.percent", 81.0, {"mount": "/"})]
    store.ingest([MetricBatch(host="web01", agent="host", ts=T0, interval=60, samples=disk)])
    store.add(MetricBatch(host="web01", agent="host", ts=T0 + 31 * 86400, interval=60, samples=disk))
    store.prune(T0 + 30 * 86400)  # its only stored hour is older than the cutoff
    store.write(store.take())
    (back,) = store.metric_hours(T0 + 30 * 86400, T0 + 32 * 86400, ["disk.percent"])
    assert (back.host, back.labels, back.count) == ("web01", {"mount": "/"}, 1)
