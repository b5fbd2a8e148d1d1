"""The console's /metrics: names, labels, the model of latest values, its bounds, and the page itself."""

from __future__ import annotations

import math
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bus import vocabulary as vocab
from bus.events import Alert, HealthEvent, Heartbeat, MetricBatch, Sample, Status
from bus.records import ActiveAlert, ActiveAlerts
from sinks.console.prom import (
    DECLARED,
    RESERVED_SUFFIXES,
    MetricsExporter,
    label_name,
    undeclared_name,
    unit_suffix,
)
from tests.console_events import cycle

T0 = 1_800_000_000.0
METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def exporter(clock: Clock) -> MetricsExporter:
    return MetricsExporter(clock=clock)


def page(exporter: MetricsExporter) -> Series:
    """Every sample on the page, parsed back by prometheus_client: (name, sorted labels) -> value."""
    series: Series = {}
    for family in text_string_to_metric_families(exporter.render().decode()):
        for sample in family.samples:
            series[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return series


def named(exporter: MetricsExporter, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (metric, labels), value in page(exporter).items() if metric == name}


def batch(
    samples: list[Sample], host: str = "web-1", agent: str = "host", ts: float = T0, interval: float = 10.0
) -> MetricBatch:
    return MetricBatch(host=host, agent=agent, ts=ts, interval=interval, samples=samples)


def health(
    target: str, status: Status, latency: float | None = 0.05, ts: float = T0, **labels: str
) -> HealthEvent:
    return HealthEvent(
        host="web-1", agent="probe", target=target, status=status, latency=latency, ts=ts, labels=labels
    )


def alert(status: str, fingerprint: str = "fp1", **labels: str) -> Alert:
    return Alert(
        fingerprint=fingerprint,
        rule="service_down",
        severity="critical",
        status=status,  # type: ignore[arg-type]
        labels={"host": "web-1", "target": "api", **labels},
        summary="api is down",
        starts_at=T0 - 60,
    )


# -- names ----------------------------------------------------------------------------------------


def test_every_declared_metric_has_a_valid_unique_name_with_its_unit() -> None:
    """Prometheus's conventions: units in the name, `_total` only on counters, no histogram suffixes."""
    specs = [spec for m in vocab.AGENT_METRICS.values() for spec in m.values() if spec.name in DECLARED]
    assert len(specs) == len(vocab.declared_metrics())
    names = [DECLARED[spec.name].exposed for spec in specs]
    assert len(set(names)) == len(names)
    for spec in specs:
        family = DECLARED[spec.name]
        assert METRIC_NAME.fullmatch(family.exposed), family.exposed
        assert family.exposed.startswith("jarvis_")
        if family.kind == "counter":
            assert family.exposed.endswith("_total")
        else:
            assert not family.exposed.endswith(RESERVED_SUFFIXES), family.exposed
            assert family.exposed.removesuffix("_value").endswith(unit_suffix(spec.unit)), family.exposed


def test_the_runbook_names_become_what_prometheus_users_expect() -> None:
    assert DECLARED[vocab.CPU_PERCENT].exposed == "jarvis_cpu_percent"
    assert DECLARED[vocab.MEM_USED_BYTES].exposed == "jarvis_mem_used_bytes"
    assert DECLARED[vocab.DISK_READ_RATE].exposed == "jarvis_disk_read_bytes_per_second"
    assert DECLARED[vocab.HTTP_ERROR_RATIO].exposed == "jarvis_http_error_ratio"
    assert DECLARED[vocab.HTTP_LATENCY_P95].exposed == "jarvis_http_latency_p95_seconds"
    assert DECLARED[vocab.CONTAINER_RESTART_COUNT].exposed == "jarvis_container_restarts_total"
    assert DECLARED[vocab.CPU_COUNT].exposed == "jarvis_cpu_cores"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("promql.request_rate", "jarvis_promql_request_rate"),
        ("jarvis.latency_p95", "jarvis_latency_p95"),
        ("shop.orders-per-minute", "jarvis_shop_orders_per_minute"),
        ("shop.requests_total", "jarvis_shop_requests_total_value"),
        ("db.query_count", "jarvis_db_query_count_value"),
        ("...", None),
        ("", None),
    ],
)
def test_an_undeclared_name_follows_one_rule(name: str, expected: str | None) -> None:
    assert undeclared_name(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mount", "mount"),
        ("com.docker.compose.service", "com_docker_compose_service"),
        ("0day", "label_0day"),
        ("__name__", "label___name__"),
        ("", "label_"),
        ("naïve label", "na_ve_label"),
    ],
)
def test_label_names_from_outside_are_made_valid(name: str, expected: str) -> None:
    assert label_name(name) == expected
    assert METRIC_NAME.fullmatch(label_name(name))


# -- samples --------------------------------------------------------------------------------------


def test_a_sample_is_served_under_its_prometheus_name_with_host_agent_and_its_labels(
    exporter: MetricsExporter,
) -> None:
    exporter.observe(
        batch([Sample("cpu.percent", 42.5), Sample("disk.percent", 61.0, {"mount": "/", "fstype": "ext4"})])
    )

    assert named(exporter, "jarvis_cpu_percent") == {(("agent", "host"), ("host", "web-1")): 42.5}
    assert named(exporter, "jarvis_disk_percent") == {
        (("agent", "host"), ("fstype", "ext4"), ("host", "web-1"), ("mount", "/")): 61.0
    }


def test_the_page_is_what_prometheus_client_writes_for_the_same_families(exporter: MetricsExporter) -> None:
    """Our fast renderer and generate_latest over `collect()` agree byte for byte, on a whole fleet."""
    for host in ("web-1", "db-1"):
        for event in cycle(host, T0, 7, parts=True):
            exporter.observe(event)
    registry = CollectorRegistry()
    registry.register(exporter)

    ours = exporter.render()

    assert ours == generate_latest(registry)
    assert b"jarvis_container_restarts_total{" in ours
    assert b'jarvis_mem_used_bytes{agent="host",host="db-1"} 8e+09' in ours


def test_a_new_batch_replaces_its_agents_previous_one(exporter: MetricsExporter, clock: Clock) -> None:
    """A container removed between two cycles disappears at once, as Prometheus's own staleness does."""
    running = {"container": "web", "image": "nginx"}
    exporter.observe(batch([Sample("container.running", 1, running)], agent="container"))
    exporter.observe(batch([Sample("cpu.percent", 5)]))
    clock.now += 10
    exporter.observe(batch([], agent="container", ts=T0 + 10))

    assert named(exporter, "jarvis_container_running") == {}
    assert named(exporter, "jarvis_cpu_percent")  # the host agent's batch is another agent's


def test_two_samples_with_the_same_labels_in_a_batch_make_one_series(exporter: MetricsExporter) -> None:
    exporter.observe(batch([Sample("cpu.percent", 5), Sample("cpu.percent", 7)]))

    assert named(exporter, "jarvis_cpu_percent") == {(("agent", "host"), ("host", "web-1")): 7.0}


def test_label_values_from_outside_come_back_intact(exporter: MetricsExporter) -> None:
    """Quotes, backslashes, newlines and any Unicode are escaped for the text format, not lost."""
    hostile = 'a"b\\c\nd} e=1,\u202eevil'
    exporter.observe(batch([Sample("container.running", 1, {"container": hostile})], agent="container"))

    ((labels, _),) = named(exporter, "jarvis_container_running").items()

    assert dict(labels)["container"] == hostile


def test_a_label_named_like_ours_is_exported_and_invalid_names_are_made_valid(
    exporter: MetricsExporter,
) -> None:
    labels = {"host": "other", "agent": "host", "com.docker.id": "x", "0": "zero", "empty": ""}
    exporter.observe(batch([Sample("cpu.percent", 1, labels)]))

    ((got, _),) = named(exporter, "jarvis_cpu_percent").items()

    assert dict(got) == {
        "host": "web-1",
        "agent": "host",  # the same value: nothing to keep apart
        "exported_host": "other",
        "com_docker_id": "x",
        "label_0": "zero",
    }  # an empty value is no label, as Prometheus reads it


def test_two_label_names_that_clean_to_one_keep_the_first_and_count_the_other(
    exporter: MetricsExporter,
) -> None:
    exporter.observe(batch([Sample("cpu.percent", 1, {"a.b": "dot", "a_b": "underscore"})]))

    ((got, _),) = named(exporter, "jarvis_cpu_percent").items()

    assert dict(got)["a_b"] == "dot"  # "a.b" sorts first
    assert named(exporter, "jarvis_console_rejected_total") == {(("reason", "label_collision"),): 1.0}


def test_an_undeclared_metric_is_served_and_one_that_takes_a_declared_name_is_refused(
    exporter: MetricsExporter,
) -> None:
    exporter.observe(
        batch(
            [Sample("promql.request_rate", 12, {"status": "200"}), Sample("cpu_percent", 99)],
            agent="probe",
        )
    )

    assert named(exporter, "jarvis_promql_request_rate") == {
        (("agent", "probe"), ("host", "web-1"), ("status", "200")): 12.0
    }
    assert named(exporter, "jarvis_cpu_percent") == {}
    assert named(exporter, "jarvis_console_rejected_total") == {(("reason", "bad_name"),): 1.0}


# -- checks, alerts, heartbeats -------------------------------------------------------------------


@pytest.mark.parametrize(("status", "up"), [("ok", 1), ("warning", 1), ("critical", 0), ("unknown", 0)])
def test_a_check_is_up_while_it_passes_or_warns(exporter: MetricsExporter, status: Status, up: int) -> None:
    exporter.observe(health("api", status))
    check = (("agent", "probe"), ("check", "api"), ("host", "web-1"))

    assert named(exporter, "jarvis_check_up") == {check: up}
    assert named(exporter, "jarvis_check_status") == {
        (*check, ("status", each)): float(each == status) for each in ("ok", "warning", "critical", "unknown")
    }


def test_a_check_has_its_latency_only_when_it_measured_one_and_its_context_as_info(
    exporter: MetricsExporter, clock: Clock
) -> None:
    check = (("agent", "probe"), ("check", "api"), ("host", "web-1"))
    exporter.observe(health("api", "ok", 0.25, url="http://api/health"))
    assert named(exporter, "jarvis_check_latency_seconds") == {check: 0.25}
    assert named(exporter, "jarvis_check_info") == {(*check, ("url", "http://api/health")): 1.0}

    clock.now += 10
    exporter.observe(health("api", "critical", None, ts=T0 + 10, url="http://api/health"))

    assert named(exporter, "jarvis_check_latency_seconds") == {}
    assert named(exporter, "jarvis_check_timestamp_seconds") == {check: T0 + 10}


def test_a_non_finite_latency_is_refused_and_counted(exporter: MetricsExporter) -> None:
    """msgspec refuses it on the wire; an event made in process is still no crash."""
    exporter.observe(health("api", "ok", math.inf))

    assert named(exporter, "jarvis_check_latency_seconds") == {}
    assert named(exporter, "jarvis_check_up")
    assert named(exporter, "jarvis_console_rejected_total") == {(("reason", "non_finite"),): 1.0}


def test_alerts_are_served_as_prometheus_alerts_until_resolved(exporter: MetricsExporter) -> None:
    exporter.observe(alert("pending"))
    labels = (("alertname", "service_down"), ("host", "web-1"), ("severity", "critical"), ("target", "api"))
    assert named(exporter, "ALERTS") == {(*labels[:1], ("alertstate", "pending"), *labels[1:]): 1.0}

    exporter.observe(alert("firing"))
    assert named(exporter, "ALERTS") == {(*labels[:1], ("alertstate", "firing"), *labels[1:]): 1.0}
    assert named(exporter, "ALERTS_FOR_STATE") == {labels: T0 - 60}

    exporter.observe(alert("resolved"))
    assert named(exporter, "ALERTS") == {}
    assert named(exporter, "ALERTS_FOR_STATE") == {}


def test_an_alert_that_never_fired_leaves_when_inactive(exporter: MetricsExporter) -> None:
    exporter.observe(alert("pending"))
    exporter.observe(alert("pending", fingerprint="fp2", target="db"))
    exporter.observe(alert("inactive"))

    assert [dict(labels)["target"] for labels in named(exporter, "ALERTS")] == ["db"]


def test_an_alert_label_named_alertstate_cannot_pass_for_the_state(exporter: MetricsExporter) -> None:
    exporter.observe(alert("firing", alertstate="inactive"))

    ((labels, _),) = named(exporter, "ALERTS").items()

    assert dict(labels)["alertstate"] == "firing"
    assert dict(labels)["exported_alertstate"] == "inactive"


def active(ts: float, *alerts: tuple[str, str]) -> ActiveAlerts:
    """The evaluator's KV snapshot at `ts` with (fingerprint, state) alerts of service_down."""
    return ActiveAlerts(
        ts=ts,
        alerts=[
            ActiveAlert(
                fingerprint=fingerprint,
                rule="service_down",
                severity="critical",
                state=state,
                labels={"host": "web-1", "target": fingerprint},
                summary="down",
                value=None,
                since=T0 - 60,
                silenced_by=[],
                inhibited_by=[],
                acked=False,
                flapping=False,
            )
            for fingerprint, state in alerts
        ],
    )


def targets(exporter: MetricsExporter) -> dict[str, str]:
    return {dict(labels)["target"]: dict(labels)["alertstate"] for labels in named(exporter, "ALERTS")}


def test_alerts_active_before_the_console_started_are_served_from_the_evaluators_snapshot(
    exporter: MetricsExporter,
) -> None:
    exporter.set_active(active(T0, ("api", "firing"), ("db", "pending")))

    assert targets(exporter) == {"api": "firing", "db": "pending"}
    assert (
        named(exporter, "ALERTS_FOR_STATE")[
            (("alertname", "service_down"), ("host", "web-1"), ("severity", "critical"), ("target", "api"))
        ]
        == T0 - 60
    )


def test_a_snapshot_drops_what_it_no_longer_holds_but_never_overrides_a_later_event(
    exporter: MetricsExporter, clock: Clock
) -> None:
    exporter.set_active(active(T0, ("api", "firing"), ("db", "firing")))
    clock.now = T0 + 2
    exporter.observe(alert("resolved", fingerprint="api", target="api"))  # after the next snapshot's time
    exporter.observe(alert("firing", fingerprint="web", target="web"))

    exporter.set_active(active(T0 + 1, ("api", "firing")))  # taken before both events

    assert targets(exporter) == {"web": "firing"}  # db left; api stays resolved; web stays

    exporter.set_active(active(T0 + 3))

    assert targets(exporter) == {}


def test_a_parts_heartbeat_serves_its_age_counters_lag_and_rejections(exporter: MetricsExporter) -> None:
    exporter.observe(
        Heartbeat(
            host="mon",
            agent="evaluator",
            version="0.1.0",
            interval=10,
            ts=T0 - 3,
            publish_errors=2,
            counters={"evaluated": 950, "standing_by": 0, "lag.metrics": 12},
            rejected={"undecodable": 4},
        )
    )
    part = (("agent", "evaluator"), ("host", "mon"))

    assert named(exporter, "jarvis_heartbeat_timestamp_seconds") == {part: T0 - 3}
    assert named(exporter, "jarvis_heartbeat_interval_seconds") == {part: 10.0}
    assert named(exporter, "jarvis_publish_errors_total") == {part: 2.0}
    assert named(exporter, "jarvis_part_events_total") == {(*part, ("name", "evaluated")): 950.0}
    assert named(exporter, "jarvis_part_state") == {(*part, ("name", "standing_by")): 0.0}
    assert named(exporter, "jarvis_part_lag_messages") == {(*part, ("input", "metrics")): 12.0}
    assert named(exporter, "jarvis_part_rejected_total") == {(*part, ("reason", "undecodable")): 4.0}
    assert named(exporter, "jarvis_agent_info") == {(*part, ("version", "0.1.0")): 1.0}


def test_heartbeat_counters_that_go_down_are_gauges_not_counters_that_reset(
    exporter: MetricsExporter,
) -> None:
    """Exposed as counters, a Slack sink's held notifications going 40 -> 0 read as a reset to
    rate() and increase(): a false spike."""
    exporter.observe(
        Heartbeat(
            host="mon",
            agent="slack",
            version="0.1.0",
            interval=10,
            ts=T0 - 3,
            counters={"delivered": 7, "held.notifications": 40, "pages_open": 2, "partitions": 3},
        )
    )
    part = (("agent", "slack"), ("host", "mon"))
    assert named(exporter, "jarvis_part_events_total") == {(*part, ("name", "delivered")): 7.0}
    assert named(exporter, "jarvis_part_state") == {
        (*part, ("name", name)): value
        for name, value in (("held.notifications", 40.0), ("pages_open", 2.0), ("partitions", 3.0))
    }


# -- bounds ---------------------------------------------------------------------------------------


def test_series_not_updated_for_stale_after_are_dropped(clock: Clock) -> None:
    exporter = MetricsExporter(stale_after=300, clock=clock)
    exporter.observe(batch([Sample("cpu.percent", 5)], host="gone"))
    exporter.observe(health("api", "ok"))
    clock.now += 290
    exporter.observe(batch([Sample("cpu.percent", 6)], host="alive", ts=clock.now))
    assert len(named(exporter, "jarvis_cpu_percent")) == 2

    clock.now += 20

    assert [dict(labels)["host"] for labels in named(exporter, "jarvis_cpu_percent")] == ["alive"]
    assert named(exporter, "jarvis_check_up") == {}
    assert named(exporter, "jarvis_console_expired_series_total") == {
        (): 1.0 + 8
    }  # the sample; the check: up, 4 statuses, latency, time, info


def test_an_agent_with_a_long_interval_keeps_its_series_for_three_intervals(
    exporter: MetricsExporter, clock: Clock
) -> None:
    exporter.observe(
        batch([Sample("http.latency_seconds", 0.1, {"check": "api"})], agent="probe", interval=600)
    )
    exporter.observe(health("api", "ok"))  # the probe agent's check: the same interval

    clock.now += 1500
    assert named(exporter, "jarvis_http_latency_seconds")
    assert named(exporter, "jarvis_check_up")

    clock.now += 301
    assert not named(exporter, "jarvis_http_latency_seconds")
    assert not named(exporter, "jarvis_check_up")


def test_a_silent_agents_heartbeat_stays_long_after_its_samples(clock: Clock) -> None:
    """`time() - jarvis_heartbeat_timestamp_seconds` must show a dead agent, not lose it in 5 minutes."""
    exporter = MetricsExporter(stale_after=300, heartbeat_stale_after=3600, clock=clock)
    exporter.observe(Heartbeat(host="web-1", agent="host", version="1", interval=10, ts=T0))
    exporter.observe(batch([Sample("cpu.percent", 5)]))

    clock.now += 1800
    assert named(exporter, "jarvis_heartbeat_timestamp_seconds") == {
        (("agent", "host"), ("host", "web-1")): T0
    }
    assert not named(exporter, "jarvis_cpu_percent")

    clock.now += 1801
    assert not named(exporter, "jarvis_heartbeat_timestamp_seconds")


def test_stale_series_are_dropped_while_nobody_scrapes(clock: Clock) -> None:
    """Memory stays bounded by what is alive, scraped or not."""
    exporter = MetricsExporter(stale_after=60, clock=clock)
    for host in range(50):
        exporter.observe(batch([Sample("cpu.percent", 5)], host=f"h{host}"))
    assert exporter.series == 50

    clock.now += 61
    exporter.observe(batch([Sample("cpu.percent", 5)], host="fresh", ts=clock.now))

    assert exporter.series == 1


def test_an_event_already_stale_on_arrival_or_older_than_the_latest_is_refused(
    exporter: MetricsExporter,
) -> None:
    """A replay of old history or a reordered delivery never overwrites the present."""
    exporter.observe(batch([Sample("cpu.percent", 5)], ts=T0))
    exporter.observe(batch([Sample("cpu.percent", 9)], ts=T0 - 10))
    exporter.observe(batch([Sample("cpu.percent", 1)], host="old", ts=T0 - 3600))

    assert named(exporter, "jarvis_cpu_percent") == {(("agent", "host"), ("host", "web-1")): 5.0}
    assert named(exporter, "jarvis_console_rejected_total") == {
        (("reason", "out_of_order"),): 1.0,
        (("reason", "stale_on_arrival"),): 1.0,
    }


def test_series_beyond_the_cap_are_refused_and_counted(clock: Clock) -> None:
    exporter = MetricsExporter(max_series=3, clock=clock)
    exporter.observe(batch([Sample("cpu.percent", 1), Sample("mem.percent", 2)]))
    exporter.observe(batch([Sample("cpu.percent", 1), Sample("mem.percent", 2)], host="web-2"))
    assert exporter.series == 3
    assert named(exporter, "jarvis_console_rejected_total") == {(("reason", "series_cap"),): 1.0}

    clock.now += 10  # the same two series again: the batch they replace makes room for them
    exporter.observe(batch([Sample("cpu.percent", 3), Sample("mem.percent", 4)], ts=T0 + 10))

    assert named(exporter, "jarvis_cpu_percent")[(("agent", "host"), ("host", "web-1"))] == 3.0
    assert named(exporter, "jarvis_mem_percent")[(("agent", "host"), ("host", "web-1"))] == 4.0
    assert exporter.series == 3


def test_the_endpoint_counts_what_it_observed(exporter: MetricsExporter) -> None:
    exporter.observe(batch([Sample("cpu.percent", 1)]))
    exporter.observe(health("api", "ok"))
    exporter.observe(alert("firing"))

    assert named(exporter, "jarvis_console_events_total") == {
        (("kind", "metrics"),): 1.0,
        (("kind", "health"),): 1.0,
        (("kind", "alert"),): 1.0,
    }
    assert named(exporter, "jarvis_console_series") == {(): 1.0 + 8 + 2}


# -- the handler ----------------------------------------------------------------------------------


async def test_get_metrics_serves_the_text_format(exporter: MetricsExporter) -> None:
    for event in cycle("web-1", T0):
        exporter.observe(event)
    app = web.Application()
    app.router.add_get("/metrics", exporter.handler)

    async with TestClient(TestServer(app)) as client:
        response = await client.get("/metrics")
        body = await response.text()

    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {family.name for family in text_string_to_metric_families(body)}
    assert {
        "jarvis_cpu_percent",
        "jarvis_check_up",
        "ALERTS",
        "jarvis_heartbeat_timestamp_seconds",
    } <= families


def test_undeclared_names_beyond_the_cap_are_refused_and_counted(
    exporter: MetricsExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publisher inventing a new name each cycle cannot grow the name table without bound."""
    monkeypatch.setattr("sinks.console.prom.MAX_NAMES", 2)
    exporter.observe(batch([Sample(f"shop.metric_{i}", i) for i in range(4)], agent="probe"))

    assert {name for name, _ in page(exporter) if name.startswith("jarvis_shop_")} == {
        "jarvis_shop_metric_0",
        "jarvis_shop_metric_1",
    }
    assert named(exporter, "jarvis_console_rejected_total") == {(("reason", "names_cap"),): 2.0}
