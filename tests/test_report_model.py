"""The report's figures against known answers, from a synthetic day fed through the sink's ingest."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.events import Alert, AlertStatus, HealthEvent, MetricBatch, Sample, Severity
from bus.units import Duration
from sinks.report.config import ReportSinkConfig, ServiceSLA
from sinks.report.model import Report
from sinks.report.render import produce
from sinks.report.rollups import RollupStore
from sinks.report.sketch import RELATIVE_ERROR
from tests.test_report_synthetic import DAY, T0, fill, synthetic_day

NOW = T0 + 86400 + 300


@pytest.fixture(scope="module")
def day_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JSON of the report of the synthetic day, as written to disk."""
    folder = tmp_path_factory.mktemp("report")
    store = RollupStore(folder / "rollups.sqlite3")
    fill(store, synthetic_day())
    _, paths = produce(store, ReportSinkConfig(), "day", DAY, folder, NOW)
    assert [p.name for p in paths] == ["2026-11-25.json", "2026-11-25.md", "2026-11-25.html"]
    data: dict[str, Any] = json.loads(paths[0].read_text())
    return data


def close(value: float) -> Any:
    """Within the percentile estimate's stated error."""
    return pytest.approx(value, rel=RELATIVE_ERROR)


def test_period_is_the_local_day(day_report: dict[str, Any]) -> None:
    period = day_report["period"]
    assert (period["start"], period["end"], period["label"]) == (T0, T0 + 86400, "2026-11-25")
    assert day_report["generated_at"] == NOW


def test_executive_summary(day_report: dict[str, Any]) -> None:
    summary = day_report["summary"]
    assert summary["status"] == "critical"  # the backend missed its SLA
    assert summary["availability_percent"] == pytest.approx(100 * (4320 - 2) / 4320)
    assert (summary["incidents"], summary["critical_incidents"], summary["sla_breaches"]) == (16, 2, 1)
    assert (summary["hosts"], summary["containers"]) == (1, 1)


def test_the_summary_says_why_the_day_is_critical_naming_incidents_and_checks(
    day_report: dict[str, Any],
) -> None:
    reasons = [(r["level"], r["text"], r["subjects"]) for r in day_report["summary"]["reasons"]]
    assert reasons == [
        ("critical", "2 critical incidents", ["ContainerDown", "DiskFull"]),
        ("critical", "SLA breached", ["backend"]),
        ("warning", "disk filling up", ["web01 /"]),
        ("warning", "sustained memory pressure", ["web01"]),
        ("warning", "latency or errors outside the acceptable range", ["frontend"]),
        ("warning", "1 incident still open", ["DiskFull"]),
    ]


def test_host_cpu_memory_and_disk(day_report: dict[str, Any]) -> None:
    (host,) = day_report["hosts"]
    assert host["host"] == "web01"
    assert host["cpu"]["avg"] == pytest.approx(29.5)
    assert host["cpu"]["p95"] == close(56)
    assert host["cpu"]["max"] == 59
    assert host["memory"]["avg"] == pytest.approx((4 * 90 + 20 * 50) / 24)
    assert (host["memory"]["p95"], host["memory"]["max"]) == (close(90), 90)
    assert host["memory_hours_over"] == 4
    (disk,) = host["disks"]
    assert disk["mount"] == "/"
    assert disk["usage"]["avg"] == pytest.approx(80 + 719.5 / 1440)
    assert disk["usage"]["max"] == pytest.approx(80 + 1439 / 1440)
    assert disk["last"] == pytest.approx(80 + 1409.5 / 1440)
    assert disk["growth_per_day"] == pytest.approx(1.0)
    assert disk["days_to_full"] == pytest.approx(100 - 80 - 1409.5 / 1440)


def test_container_unhealthy_minutes_and_restarts(day_report: dict[str, Any]) -> None:
    (container,) = day_report["containers"]
    assert (container["host"], container["container"]) == ("web01", "api")
    assert container["unhealthy_minutes"] == pytest.approx(31)
    assert container["restarts"] == 2
    assert container["availability_percent"] == pytest.approx(100 * 1410 / 1440)
    assert container["cpu"]["avg"] == pytest.approx(5.0)


def test_the_engine_and_log_checks_are_not_containers(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3")
    store.ingest(
        [
            HealthEvent(host="h", agent="container", target=target, status="critical", ts=T0 + n)
            for n, target in enumerate(["docker", "log:api", "_collector", "api", "api"])
        ]
    )
    report, _ = produce(store, ReportSinkConfig(), "day", DAY, tmp_path, NOW)
    assert [c.container for c in report.containers] == ["api"]


def test_a_day_with_every_check_down_is_critical_however_quiet_the_rest(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3")
    store.ingest(
        [
            HealthEvent(host="h", agent="probe", target="api", status="critical", ts=T0 + 60 * n)
            for n in range(10)
        ]
    )
    report, _ = produce(store, ReportSinkConfig(), "day", DAY, tmp_path, NOW)
    assert report.summary.availability_percent == 0
    assert report.summary.status == "critical"
    (reason, *_) = report.summary.reasons
    assert (reason.level, reason.subjects) == ("critical", ["api"])  # the check to look at
    assert "availability 0.000% under the lowest SLA target" in reason.text


def _probe_day(*alerts: Alert) -> list[MetricBatch | HealthEvent | Alert]:
    """A quiet day: one probe check, up every 10 minutes, and the given alerts."""
    checks = [
        HealthEvent(host="p", agent="probe", target="api", status="ok", latency=0.01, ts=T0 + 600 * n)
        for n in range(144)
    ]
    return [*checks, *alerts]


def _critical(status: AlertStatus, starts: float = T0 + 3600, ends: float | None = None) -> Alert:
    return Alert(
        fingerprint="fp",
        rule="ApiDown",
        severity="critical",
        status=status,
        labels={"host": "p"},
        summary="api is down",
        starts_at=starts,
        ends_at=ends,
    )


def _report(tmp_path: Path, events: list[MetricBatch | HealthEvent | Alert]) -> Report:
    store = RollupStore(tmp_path / "r.sqlite3")
    store.ingest(events)
    config = ReportSinkConfig(services=[])
    return produce(store, config, "day", DAY, tmp_path, NOW)[0]


def test_a_critical_incident_makes_the_day_critical_and_is_named(tmp_path: Path) -> None:
    alerts = (_critical("firing"), _critical("resolved", ends=T0 + 3900))
    summary = _report(tmp_path, _probe_day(*alerts)).summary
    assert (summary.status, summary.critical_incidents, summary.availability_percent) == ("critical", 1, 100)
    assert [(r.level, r.text, r.subjects) for r in summary.reasons if r.level != "info"] == [
        ("critical", "1 critical incident", ["ApiDown"])
    ]


def test_pending_inactive_and_never_fired_resolves_are_no_incidents_and_leave_the_day_healthy(
    tmp_path: Path,
) -> None:
    # an evaluator older than `inactive` sent "resolved" for a pending series that never fired
    alerts = (
        _critical("pending"),
        _critical("inactive", ends=T0 + 3700),
        _critical("resolved", ends=T0 + 3700),
    )
    report = _report(tmp_path, _probe_day(*alerts))
    assert (report.alerts.incidents, report.summary.critical_incidents) == (0, 0)
    assert report.summary.status == "healthy"
    assert {r.level for r in report.summary.reasons} == {"info"}
    assert "no critical incident, no SLA breach" in report.summary.reasons[0].text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    down=st.lists(st.booleans(), min_size=0, max_size=30),
    incidents=st.lists(
        st.tuples(st.sampled_from(["critical", "warning", "info"]), st.booleans()), max_size=4
    ),
)
def test_the_status_agrees_with_the_incidents_and_checks_it_shows(
    tmp_path: Path, down: list[bool], incidents: list[tuple[Severity, bool]]
) -> None:
    """Critical only with a critical incident or a named check; healthy only with nothing to show."""
    events: list[MetricBatch | HealthEvent | Alert] = [
        HealthEvent(
            host="p", agent="probe", target=f"c{n % 3}", status="critical" if d else "ok", ts=T0 + 60 * n
        )
        for n, d in enumerate(down)
    ]
    for n, (severity, resolved) in enumerate(incidents):
        firing = Alert(
            fingerprint=f"f{n}",
            rule=f"R{n}",
            severity=severity,
            status="firing",
            labels={},
            summary="",
            starts_at=T0 + 7200 + n,
        )
        events += (
            [firing, msgspec.structs.replace(firing, status="resolved", ends_at=T0 + 8000)]
            if resolved
            else [firing]
        )
    store = RollupStore.empty()
    store.ingest(events)
    config = ReportSinkConfig(
        services=[
            ServiceSLA(
                name="svc", checks=["c0", "c1", "c2"], availability_percent=99.0, latency_p95=Duration(1)
            )
        ]
    )
    report = produce(store, config, "day", DAY, tmp_path, NOW)[0]
    summary, levels = report.summary, {r.level for r in report.summary.reasons}
    assert summary.reasons
    if not events:
        assert summary.status == "no data"
        return
    critical = [r for r in summary.reasons if r.level == "critical"]
    assert (summary.status == "critical") == bool(critical)
    assert all(r.subjects for r in critical)  # something to look at, never a bare verdict
    if summary.status == "critical":
        assert summary.critical_incidents or summary.sla_breaches or any(d for d in down)
    if summary.critical_incidents or summary.sla_breaches:
        assert summary.status == "critical"
    if summary.status == "healthy":
        assert levels == {"info"}
        assert (summary.critical_incidents, report.alerts.open, summary.sla_breaches) == (0, 0, 0)
    assert summary.status != "degraded" or "warning" in levels


def test_a_day_without_data_says_no_data_never_healthy(tmp_path: Path) -> None:
    report, (json_path, markdown_path, html_path) = produce(
        RollupStore.empty(), ReportSinkConfig(), "day", DAY, tmp_path, NOW
    )
    assert report.summary.status == "no data"
    assert [r.text for r in report.summary.reasons] == [
        "nothing recorded in this period: no metrics, no checks, no alerts"
    ]
    assert json.loads(json_path.read_text())["summary"]["status"] == "no data"
    for path in (markdown_path, html_path):
        text = path.read_text().split("</style>")[-1]  # what a reader sees, not the CSS
        assert "NO DATA" in text
        assert "healthy" not in text.lower()
        assert "No action needed" not in text  # no data is no verdict either
        for empty in ("No host metrics in this period", "No container data", "No HTTP metrics"):
            assert empty in text
    assert "Availability: no data" in markdown_path.read_text()


def test_performance_against_baselines(day_report: dict[str, Any]) -> None:
    services = {s["check"]: s for s in day_report["performance"]}
    assert list(services) == ["backend", "frontend", "ollama"]
    backend, frontend, ollama = services["backend"], services["frontend"], services["ollama"]
    assert backend["request_rate"] == pytest.approx(10)
    assert backend["error_rate_percent"] == pytest.approx(2)
    assert (backend["latency_p50_ms"], backend["latency_p95_ms"]) == (pytest.approx(100), pytest.approx(400))
    assert (backend["latency"], backend["errors"]) == ("ok", "above baseline")
    assert (frontend["latency"], frontend["errors"]) == ("out of range", "out of range")
    # no scraped figures for ollama: percentiles of the latency the probe measured
    assert ollama["latency_p50_ms"] == close(950)
    assert ollama["latency_p95_ms"] == close(1400)
    assert (ollama["latency"], ollama["errors"], ollama["request_rate"]) == (
        "above baseline",
        "no data",
        None,
    )


def test_sla_compliance(day_report: dict[str, Any]) -> None:
    sla = {s["service"]: s for s in day_report["sla"]}
    backend = sla["backend"]
    assert backend["availability_percent"] == pytest.approx(100 * 1438 / 1440)
    assert (backend["checks_total"], backend["checks_failed"]) == (1440, 2)
    assert backend["latency_p95_ms"] == close(140)
    assert (backend["availability_met"], backend["latency_met"], backend["compliant"]) == (False, True, False)
    assert sla["frontend"]["compliant"] is True
    assert sla["database"]["compliant"] is True  # through its check named postgres
    assert sla["database"]["latency_p95_ms"] == close(10)
    assert sla["ollama"]["compliant"] is None  # no probe checks: no verdict


def test_alert_summary(day_report: dict[str, Any]) -> None:
    alerts = day_report["alerts"]
    assert alerts["incidents"] == 16
    assert alerts["by_severity"] == {"critical": 2, "warning": 2, "info": 12}
    assert (alerts["resolved"], alerts["open"]) == (15, 1)
    assert alerts["resolve_seconds_mean"] == pytest.approx((600 + 1200 + 1800 + 12 * 60) / 15)
    assert (alerts["resolve_seconds_median"], alerts["resolve_seconds_max"]) == (60, 1800)
    assert alerts["noisiest"][:2] == [
        {"rule": "Flappy", "incidents": 12},
        {"rule": "HighCPU", "incidents": 2},
    ]


def test_recommendations_follow_from_the_data(day_report: dict[str, Any]) -> None:
    found = [(r["level"], r["kind"], r["subject"]) for r in day_report["recommendations"]]
    assert found == [
        ("critical", "sla", "backend"),
        ("warning", "disk", "web01 /"),
        ("warning", "memory", "web01"),
        ("warning", "performance", "frontend"),
        ("info", "noisy-rule", "Flappy"),
    ]
    disk = day_report["recommendations"][1]["text"]
    assert "full in about 19 days" in disk


def test_charts_carry_the_hourly_averages(day_report: dict[str, Any]) -> None:
    (chart,) = day_report["charts"]
    series = {s["name"]: s["points"] for s in chart["series"]}
    assert list(series) == ["cpu", "memory", "disk /"]
    assert [v for _, v in series["cpu"]] == [29.5] * 24
    assert series["memory"][0] == [T0, 90.0]
    assert day_report["growth"] == []  # daily reports have no capacity planning


def test_weekly_report_projects_growth(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3")
    start = T0 - 6 * 86400
    batches = [
        MetricBatch(
            host="db01",
            agent="host",
            ts=start + 3600 * h,
            interval=3600,
            samples=[
                Sample("disk.percent", 40 + 0.5 * h / 24, {"mount": "/data"}),
                Sample("disk.percent", 40 + 2 * h / 24, {"mount": "/logs"}),
                Sample("mem.percent", 60.0),
            ],
        )
        for h in range(7 * 24)
    ]
    store.ingest(batches)
    report, paths = produce(store, ReportSinkConfig(), "week", DAY, tmp_path, NOW)
    assert report.period.label == "2026-11-25-week"
    assert (report.period.start, report.period.end) == (start, T0 + 86400)
    growth = {(g.host, g.metric, g.subject): g for g in report.growth}
    disk = growth[("db01", "disk.percent", "/data")]
    current = 40 + 0.5 * 167 / 24
    assert disk.per_day == pytest.approx(0.5)
    assert disk.first_day_avg == pytest.approx(40 + 0.5 * 11.5 / 24)
    assert disk.last_day_avg == pytest.approx(40 + 0.5 * (144 + 11.5) / 24)
    assert [disk.projected_30d, disk.projected_90d] == pytest.approx([current + 15, current + 45])
    assert disk.days_to_full == pytest.approx((100 - current) / 0.5)
    logs = growth[("db01", "disk.percent", "/logs")]
    assert logs.projected_90d == 100  # capped: a disk cannot be fuller than full
    memory = growth[("db01", "mem.percent", "")]
    assert memory.per_day == pytest.approx(0, abs=1e-9)
    assert memory.days_to_full is None
    assert "Growth and capacity planning" in paths[2].read_text()


def test_an_hour_with_data_only_before_the_period_stays_out(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3")
    fill(store, synthetic_day())
    _, paths = produce(store, ReportSinkConfig(), "day", DAY + dt.timedelta(days=1), tmp_path, NOW)
    report = json.loads(paths[0].read_text())
    assert report["hosts"] == []
    assert report["summary"]["status"] == "no data"  # incidents count on the day they started
    assert report["summary"]["availability_percent"] is None


def test_report_days_follow_the_configured_time_zone(tmp_path: Path) -> None:
    store = RollupStore(tmp_path / "r.sqlite3")
    fill(store, synthetic_day())
    config = ReportSinkConfig(timezone="America/New_York")
    report, _ = produce(store, config, "day", DAY, tmp_path, NOW)
    assert report.period.start == T0 + 5 * 3600  # midnight in New York, EST
    assert report.hosts[0].cpu is not None
    assert len(report.charts[0].series[0].points) == 19  # 05:00 UTC to the end of the data
