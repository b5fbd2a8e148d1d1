"""The console's live model: what each event changes, what sorts first, and its bounds."""

from __future__ import annotations

import datetime as dt

from bus import vocabulary as vocab
from bus.events import Alert, HealthEvent, Heartbeat, MetricBatch, Sample
from bus.records import ActiveAlert, ActiveAlerts
from sinks.console.state import ConsoleState, Limits, Ring, row_id

T0 = 1_780_000_000.0  # a fixed instant: the model never reads the clock


def host_batch(host: str, ts: float, cpu: float, disks: dict[str, float] | None = None) -> MetricBatch:
    samples = [Sample(vocab.CPU_PERCENT, cpu), Sample(vocab.MEM_PERCENT, 40.0), Sample(vocab.LOAD_1, 0.5)]
    samples += [Sample(vocab.DISK_PERCENT, v, {"mount": m}) for m, v in (disks or {"/": 50.0}).items()]
    return MetricBatch(host=host, agent="host", ts=ts, interval=10.0, samples=samples)


def container_batch(host: str, name: str, ts: float, healthy: float | None = 1.0) -> MetricBatch:
    labels = {"container": name, "image": "app:1"}
    samples = [
        Sample(vocab.CONTAINER_RUNNING, 1.0, labels),
        Sample(vocab.CONTAINER_RESTART_COUNT, 2.0, labels),
        Sample(vocab.CONTAINER_CPU_PERCENT, 12.5, labels),
        Sample(vocab.CONTAINER_MEM_USED_BYTES, 2**20, labels),
    ]
    if healthy is not None:
        samples.append(Sample(vocab.CONTAINER_HEALTHY, healthy, labels))
    return MetricBatch(host=host, agent="container", ts=ts, interval=10.0, samples=samples)


def health(
    target: str, status: str, ts: float, *, agent: str = "probe", detail: str = "", host: str = "web01"
) -> HealthEvent:
    return HealthEvent(host=host, agent=agent, target=target, status=status, ts=ts, detail=detail)  # type: ignore[arg-type]


def alert(fingerprint: str, status: str, ts: float, severity: str = "critical", host: str = "web01") -> Alert:
    return Alert(
        fingerprint=fingerprint,
        rule="high_cpu",
        severity=severity,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        labels={"host": host},
        summary="cpu high",
        starts_at=ts,
        ends_at=ts if status == "resolved" else None,
    )


def test_a_host_batch_sets_its_latest_values_and_the_fullest_disk() -> None:
    state = ConsoleState()
    state.observe(host_batch("web01", T0, 42.0, {"/": 50.0, "/data": 91.0}))
    view = state.hosts["web01"]
    assert (view.cpu, view.mem, view.disk, view.load1) == (42.0, 40.0, 91.0, 0.5)
    assert view.history["cpu"].since(0) == [(T0 - T0 % state.step, 42.0)]


def test_an_older_batch_does_not_replace_a_newer_one() -> None:
    state = ConsoleState()
    state.observe(host_batch("web01", T0, 42.0))
    state.observe(host_batch("web01", T0 - 60, 99.0))
    assert state.hosts["web01"].cpu == 42.0


def test_a_ring_keeps_the_largest_value_of_each_step_and_a_bounded_count() -> None:
    ring = Ring(step=60.0, size=3)
    for t, v in ((0, 1.0), (30, 5.0), (45, 2.0), (60, 1.0), (120, 1.0), (180, 7.0)):
        ring.add(t, v)
    assert list(ring.points) == [(60, 1.0), (120, 1.0), (180, 7.0)]
    ring.add(10, 100.0)  # older than what is kept
    assert (0, 100.0) not in ring.points


def test_a_container_turned_unhealthy_is_critical_and_sorts_first() -> None:
    state = ConsoleState()
    state.observe(container_batch("web01", "api", T0))
    state.observe(container_batch("web01", "db", T0))
    state.observe(health("api", "critical", T0 + 1, agent="container", detail="health check: unhealthy"))
    ordered = state.sorted_containers(T0 + 2)
    assert [(v.name, status) for v, status in ordered] == [("api", "critical"), ("db", "ok")]
    assert ordered[0][0].health == "unhealthy"
    assert ordered[0][0].restarts == 2


def test_a_container_not_reported_for_three_intervals_is_unknown() -> None:
    state = ConsoleState()
    state.observe(container_batch("web01", "api", T0))
    state.observe(health("api", "ok", T0, agent="container", detail="running, healthy"))
    assert state.sorted_containers(T0 + 29)[0][1] == "ok"
    assert state.sorted_containers(T0 + 31)[0][1] == "unknown"


def test_availability_so_far_today_counts_time_up_against_the_sla() -> None:
    state = ConsoleState(sla={"backend": 99.9})
    day_start = dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp()
    state.observe(health("backend", "ok", day_start + 10))
    state.observe(health("backend", "critical", day_start + 70))  # up for 60 s
    state.observe(health("backend", "ok", day_start + 100))  # down for 30 s
    view = state.checks[("web01", "probe", "backend")]
    assert view.availability is not None
    assert round(view.availability, 3) == round(100 * 60 / 90, 3)
    assert view.meets_sla is False
    state.observe(health("backend", "ok", day_start + 86400 + 5))  # the next day starts afresh
    assert view.availability is None


def test_a_check_with_a_single_result_has_no_availability_yet() -> None:
    state = ConsoleState(sla={"backend": 99.9})
    state.observe(health("backend", "ok", T0))
    assert state.checks[("web01", "probe", "backend")].availability is None
    assert state.checks[("web01", "probe", "backend")].meets_sla is None


def test_failing_checks_come_first() -> None:
    state = ConsoleState()
    state.observe(health("frontend", "ok", T0))
    state.observe(health("backend", "critical", T0))
    state.observe(health("ollama", "warning", T0))
    assert [c.target for c in state.sorted_checks()] == ["backend", "ollama", "frontend"]
    assert [c.target for c in state.failing_checks()] == ["backend", "ollama"]


def test_request_performance_comes_from_the_probes_http_metrics_per_check() -> None:
    state = ConsoleState()
    labels = {"check": "backend"}
    state.observe(
        MetricBatch(
            host="mon",
            agent="probe",
            ts=T0,
            interval=10.0,
            samples=[
                Sample(vocab.HTTP_REQUEST_RATE, 12.0, labels),
                Sample(vocab.HTTP_ERROR_RATIO, 0.02, labels),
                Sample(vocab.HTTP_LATENCY_P99, 0.8, labels),
                Sample("promql.other", 1.0, labels),
            ],
        )
    )
    assert state.perf["backend"].latest == {"rate": 12.0, "error_ratio": 0.02, "p99": 0.8}


def test_log_lines_are_kept_per_container_newest_last_and_bounded() -> None:
    state = ConsoleState(Limits(log_lines=2))
    for n in range(3):
        detail = f"1 error and 0 warning lines since the last cycle\nERROR boom {n}"
        state.observe(health("log:api", "warning", T0 + n, agent="container", detail=detail))
    assert [line for _, line in state.logs[("web01", "api")].lines] == ["ERROR boom 1", "ERROR boom 2"]


def test_alert_events_add_and_resolve_active_alerts_firing_first() -> None:
    state = ConsoleState()
    state.observe(alert("a1", "pending", T0, "warning"))
    state.observe(alert("a2", "firing", T0))
    assert [(a.fingerprint, a.state) for a in state.alerts()] == [("a2", "firing"), ("a1", "pending")]
    state.observe(alert("a2", "resolved", T0 + 5))
    assert [a.fingerprint for a in state.alerts()] == ["a1"]
    assert [a.status for a in state.history] == ["resolved", "firing", "pending"]


def test_the_evaluators_list_brings_silenced_and_acked_and_later_events_update_it() -> None:
    state = ConsoleState()
    listed = ActiveAlert(
        fingerprint="a1",
        rule="disk_full",
        severity="critical",
        state="firing",
        labels={"host": "web01"},
        summary="disk",
        value=95.0,
        since=T0,
        silenced_by=["s1"],
        inhibited_by=[],
        acked=True,
        flapping=False,
    )
    state.set_active(ActiveAlerts(ts=T0 + 1, alerts=[listed]))
    row = state.alerts()[0]
    assert row.flags == ["silenced", "acked"]
    assert state.summary(T0 + 2)["critical"] == 0  # muted alerts do not count as loud
    state.observe(alert("a1", "resolved", T0 + 3))
    assert state.alerts() == []


def test_alerts_on_a_host_make_it_critical_unless_muted() -> None:
    state = ConsoleState()
    state.observe(host_batch("web01", T0, 10.0))
    state.observe(host_batch("web02", T0, 10.0))
    state.observe(alert("a1", "firing", T0, host="web02"))
    hosts = state.sorted_hosts(T0 + 1, state.alerts())
    assert [(v.host, status) for v, status in hosts] == [("web02", "critical"), ("web01", "ok")]


def test_parts_show_silent_first_and_their_supervisors_bad_news() -> None:
    state = ConsoleState()
    state.observe(Heartbeat(host="mon", agent="evaluator", version="x", interval=10.0, ts=T0))
    state.observe(Heartbeat(host="mon", agent="slack", version="x", interval=10.0, ts=T0 - 100))
    state.observe(health("_supervisor", "critical", T0, agent="evaluator", detail="failed: boom", host="mon"))
    parts = state.sorted_parts(T0 + 1)
    assert [(p.agent, p.state(T0 + 1)) for p in parts] == [("slack", "silent"), ("evaluator", "ok")]
    assert parts[1].problem == "failed: boom"


def test_new_series_beyond_the_bound_are_counted_and_dropped() -> None:
    state = ConsoleState(Limits(max_series=2))
    for n in range(4):
        state.observe(host_batch(f"web{n}", T0, 1.0))
    assert sorted(state.hosts) == ["web0", "web1"]
    assert state.counters.dropped_series == 2


def test_dirty_rows_name_each_changed_row_once_by_a_hashed_id() -> None:
    state = ConsoleState()
    state.observe(host_batch("<script>", T0, 1.0))
    state.observe(host_batch("<script>", T0 + 10, 2.0))
    dirty = state.take_dirty()
    assert dirty == {("host", row_id("host", "<script>")): ("<script>",)}
    assert row_id("host", "<script>").startswith("host-")
    assert "<" not in row_id("host", "<script>")
    assert state.take_dirty() == {}


def test_a_part_gone_silent_stays_counted_silent_past_the_history_for_as_long_as_it_is_reported_down() -> (
    None
):
    state = ConsoleState(Limits(history=6 * 3600.0))
    state.observe(Heartbeat(host="mon", agent="report", version="x", interval=10.0, ts=T0))
    state.prune(T0 + 7 * 3600)
    assert state.summary(T0 + 7 * 3600)["parts_silent"] == 1, "still silent, not forgotten"
    state.prune(T0 + 8 * 86400)
    assert state.summary(T0 + 8 * 86400)["parts_silent"] == 0


def test_prune_forgets_rows_silent_for_the_whole_history() -> None:
    state = ConsoleState(Limits(history=3600.0))
    state.observe(host_batch("old", T0, 1.0))
    state.observe(host_batch("new", T0 + 3000, 1.0))
    assert state.prune(T0 + 3700) == 1
    assert list(state.hosts) == ["new"]
