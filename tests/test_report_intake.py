"""The report sink's narrow decoding: only what the rollups read, refused as the full decoder refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.events import HealthEvent, MetricBatch, Sample, any_event, encode
from sinks.report import intake
from sinks.report.rollups import RollupStore

T0 = 1_795_564_800.0


def test_a_metric_the_report_does_not_read_is_not_stored(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3", metrics=["cpu.percent"])
    batch = MetricBatch(
        host="h",
        agent="host",
        ts=T0,
        interval=10,
        samples=[Sample("cpu.percent", 5), Sample("proc.count", 9)],
    )
    store.ingest([intake.decode("metrics", encode(batch))])
    assert [r.metric for r in store.metric_hours(T0, T0 + 3600, ["cpu.percent", "proc.count"])] == [
        "cpu.percent"
    ]


def test_label_sets_in_another_key_order_are_one_series(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3")
    for labels in (b'{"a":"1","b":"2"}', b'{"b":"2","a":"1"}'):
        payload = (
            b'{"kind":"metrics","host":"h","agent":"host","ts":%d,"interval":10,'
            b'"samples":[{"name":"disk.percent","value":1,"labels":%s}]}' % (int(T0), labels)
        )
        store.ingest([intake.decode("metrics", payload)])
    (row,) = store.metric_hours(T0, T0 + 3600, ["disk.percent"])
    assert (row.count, row.labels) == (2, {"a": "1", "b": "2"})


def test_many_series_new_in_one_write_each_keep_their_own_values_across_a_restart(tmp_path: Path) -> None:
    def batch(value_of: int) -> MetricBatch:
        samples = [Sample("disk.percent", float(n + value_of), {"mount": f"/m{n}"}) for n in range(300)]
        return MetricBatch(host="h", agent="host", ts=T0, interval=10, samples=samples)

    path = tmp_path / "r.sqlite3"
    store = RollupStore(path)
    # the same label set in two key orders in one window is still one series
    both = b'"labels":{"a":"1","b":"2"}}]}', b'"labels":{"b":"2","a":"1"}}]}'
    twins = [
        b'{"kind":"metrics","host":"h","agent":"host","ts":%d,"interval":10,'
        b'"samples":[{"name":"load.1m","value":1,%s' % (int(T0), labels)
        for labels in both
    ]
    store.ingest([intake.decode("metrics", encode(batch(0))), *(intake.decode("metrics", t) for t in twins)])
    store.close()
    again = RollupStore(path)  # a restart: every series is new to the process, none to the file
    again.ingest([intake.decode("metrics", encode(batch(1000)))])
    rows = again.metric_hours(T0, T0 + 3600, ["disk.percent", "load.1m"])
    disks = {row.labels["mount"]: row for row in rows if row.metric == "disk.percent"}
    assert len(disks) == 300
    assert all(
        (r.count, r.low, r.high) == (2, n, n + 1000)
        for n, r in enumerate(disks[f"/m{n}"] for n in range(300))
    )
    (load,) = [row for row in rows if row.metric == "load.1m"]
    assert load.count == 2
    (stored,) = again._db.execute("SELECT count(*) FROM series").fetchone()
    assert stored == 301


@pytest.mark.parametrize(
    ("family", "payload"),
    [
        ("metrics", b"not json"),
        ("metrics", encode(HealthEvent(host="h", agent="a", target="t", status="ok", ts=T0))),
        ("health", b'{"kind":"health","host":"h","agent":"a","target":"t","status":"fine","ts":1}'),
        (
            "metrics",
            b'{"kind":"metrics","host":"h","agent":"a","ts":1,"interval":1,'
            b'"samples":[{"name":"x","value":1e999}]}',
        ),
    ],
    ids=["garbage", "wrong-kind", "bad-status", "infinite-value"],
)
def test_what_the_wire_refuses_is_refused_with_a_reason(family: str, payload: bytes) -> None:
    with pytest.raises(intake.Refused) as refused:
        intake.decode(family, payload, "jarvis.x")
    assert refused.value.reason


def test_a_wrong_kind_is_refused_with_the_same_reason_as_before() -> None:
    payload = encode(HealthEvent(host="h", agent="a", target="t", status="ok", ts=T0))
    with pytest.raises(intake.Refused) as refused:
        intake.decode("metrics", payload)
    assert refused.value.reason == "a HealthEvent on this stream, expected MetricBatch"
    assert isinstance(any_event.decode(payload), HealthEvent)


def test_labels_over_their_bound_on_a_stored_metric_are_refused_by_the_store(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3")
    labels = "{" + ",".join(f'"k{i}":"v"' for i in range(100)) + "}"
    payload = (
        b'{"kind":"metrics","host":"h","agent":"a","ts":1,"interval":1,"samples":[{"name":"x","value":1,'
        b'"labels":' + labels.encode() + b"}]}"
    )
    with pytest.raises(ValueError, match="labels"):
        store.ingest([intake.decode("metrics", payload)])
    assert store.metric_hours(0, 3600, ["x"]) == []
