"""Bounds at decode and notifications split to fit max_payload: no message can stop a consumer."""

from __future__ import annotations

import pytest

from bus.events import Alert, EventDecodeError, Notification, encode, health_event, metric_batch, notification
from bus.limits import MAX_LABELS, MAX_NAME
from bus.payload import split_notification


def test_a_host_name_of_400_kb_is_a_reject_that_names_the_field() -> None:
    payload = (
        b'{"kind":"metrics","host":"'
        + b"h" * 400_000
        + b'","agent":"host","ts":1,"interval":10,"samples":[]}'
    )
    with pytest.raises(EventDecodeError, match=rf"length <= {MAX_NAME}.*\$\.host"):
        metric_batch.decode(payload, "jarvis.metrics.x.host")


def test_too_many_labels_or_an_overlong_label_is_refused_and_the_bounds_admit_real_events() -> None:
    labels = ",".join(f'"l{i}":"v"' for i in range(MAX_LABELS + 1))
    event = '{"kind":"health","host":"h","agent":"probe","target":"api","status":"ok","ts":1,"labels":{%s}}'
    with pytest.raises(EventDecodeError, match=r"\$\.labels"):
        health_event.decode((event % labels).encode())
    long_key = '"' + "k" * (MAX_NAME + 1) + '":"v"'
    with pytest.raises(EventDecodeError, match=r"\$\.labels"):
        health_event.decode((event % long_key).encode())
    ok = health_event.decode((event % '"image":"registry.local/jarvis/backend:1.2.3"').encode())
    assert ok.labels == {"image": "registry.local/jarvis/backend:1.2.3"}


def alert(n: int) -> Alert:
    return Alert(
        fingerprint=f"{n:016x}",
        rule="agent_down",
        severity="critical",
        status="firing",
        labels={"host": f"host-{n:05d}", "agent": "host", "rule": "agent_down", "severity": "critical"},
        summary=f"host agent on host-{n:05d} is silent",
        starts_at=1.0,
    )


def big_group(count: int) -> Notification:
    return Notification(
        id="default-abc-7",
        group_key='default:{rule="agent_down"}',
        route="default",
        status="firing",
        alerts=[alert(n) for n in range(count)],
        ts=2.0,
    )


def test_a_2500_host_group_is_split_into_parts_that_each_fit_and_keep_every_alert_in_order() -> None:
    whole = big_group(2500)
    limit = 64 * 1024
    assert len(encode(whole)) > limit
    parts, too_big = split_notification(whole, limit)
    assert too_big == []
    assert len(parts) > 1
    assert all(len(encode(part)) <= limit for part in parts)
    assert [a for part in parts for a in part.alerts] == whole.alerts
    assert [(p.part, p.parts) for p in parts] == [(k, len(parts)) for k in range(1, len(parts) + 1)]
    assert len({p.id for p in parts}) == len(parts)
    assert notification.decode(encode(parts[0])).parts == len(parts)


def test_a_notification_that_fits_is_left_whole() -> None:
    whole = big_group(3)
    assert split_notification(whole, 1_000_000) == ([whole], [])


def test_an_alert_too_big_for_any_part_is_set_aside_not_retried() -> None:
    huge = Alert(**{**{f: getattr(alert(0), f) for f in alert(0).__struct_fields__}, "summary": "x" * 5000})
    whole = Notification(
        id="n", group_key="g", route="default", status="firing", alerts=[alert(1), huge, alert(2)], ts=0
    )
    parts, too_big = split_notification(whole, 2048)
    assert too_big == [huge]
    assert [a for part in parts for a in part.alerts] == [alert(1), alert(2)]
