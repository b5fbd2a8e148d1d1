"""Alerts people can trust, on the pure engine with an injected clock: no false resolve, flapping
named as people see it, critical first, a notification true when sent, pending never an incident."""

from __future__ import annotations

import math
import random
from pathlib import Path

from bus.events import Alert, Notification, Status
from bus.units import Duration
from evaluator.config import DefaultRoute, EvaluatorConfig, FlappingConfig, Rule, RuleTuning
from evaluator.testing import Driver, health, heartbeat, metrics, only_rules
from sinks.report.rollups import RollupStore

API = {"check": "backend-api"}


def error_ratio(value: float) -> list[tuple[str, float, dict[str, str]]]:
    return [("http.error_ratio", value, API)]


def rule_statuses(alerts: list[Alert], rule: str) -> list[str]:
    return [a.status for a in alerts if a.rule == rule]


def test_one_error_ratio_sample_at_the_threshold_never_resolves_the_incident() -> None:
    """The measured sequence, 0.10 x20, 0.05, 0.10 x10 every 5 s, on a firing built-in rule."""
    driver = Driver(EvaluatorConfig())
    t = 0.0
    for value in [0.10] * 70 + [0.10] * 20 + [0.05] + [0.10] * 10:  # fired after its for of 5 m
        driver.at(t, metrics("probe01", error_ratio(value), agent="probe", interval=5))
        t += 5
    assert rule_statuses(driver.alerts, "http_error_rate_high") == ["pending", "firing"]


def test_the_measured_sequence_never_resolves_with_a_short_for_either() -> None:
    config = EvaluatorConfig(tune={"http_error_rate_high": RuleTuning(for_=Duration(30))})
    driver = Driver(config)
    t = 0.0
    for value in [0.10] * 20 + [0.05] + [0.10] * 10:
        driver.at(t, metrics("probe01", error_ratio(value), agent="probe", interval=5))
        t += 5
    assert rule_statuses(driver.alerts, "http_error_rate_high") == ["pending", "firing"]


def test_the_error_ratio_resolves_once_the_errors_really_stop() -> None:
    driver = Driver(EvaluatorConfig())
    t = 0.0
    for value in [0.10] * 80 + [0.0] * 40:
        driver.at(t, metrics("probe01", error_ratio(value), agent="probe", interval=5))
        t += 5
    statuses = rule_statuses(driver.alerts, "http_error_rate_high")
    assert statuses == ["pending", "firing", "resolved"]
    resolved = next(a for a in driver.alerts if a.status == "resolved")
    assert resolved.ends_at is not None
    assert resolved.ends_at - 400 <= 60, "resolved within keep_firing_for of the last error"


def flapping_check(driver: Driver, outages: int, start: float = 0.0) -> float:
    """A health check down 20 s / up 20 s, probed every 5 s; returns the time after the last."""
    t = start
    for _ in range(outages):
        for status in ["critical"] * 4 + ["ok"] * 4:
            driver.at(t, health("probe01", "probe", "backend-api", status))  # type: ignore[arg-type]
            t += 5
    return t


def test_a_check_down_20s_up_20s_is_flagged_flapping_within_three_outages() -> None:
    """With the built-in service_down (for 1m) no outage lasts long enough to fire on its own."""
    driver = Driver(EvaluatorConfig())
    t = flapping_check(driver, 3)
    flagged = [a for a in driver.alerts if a.rule == "service_down" and a.flapping]
    assert flagged, "flapping by the third outage"
    assert flagged[0].starts_at <= t
    driver.at(t + 60)
    notes = [n for n in driver.notifications if any(a.rule == "service_down" for a in n.alerts)]
    assert len(notes) == 1
    (alert,) = notes[0].alerts
    assert alert.flapping
    assert alert.episodes == 3
    assert alert.downtime == 60.0, "three outages of 20 s"


def test_a_flapping_check_is_one_message_then_quiet_then_one_stable_again() -> None:
    driver = Driver(EvaluatorConfig())
    t = flapping_check(driver, 8)
    mid = [n for n in driver.notifications if any(a.rule == "service_down" for a in n.alerts)]
    assert len(mid) == 1, "quiet while it flaps"
    for _ in range(80):  # healthy, probed every 5 s
        driver.at(t, health("probe01", "probe", "backend-api", "ok"))
        t += 5
    notes = [n for n in driver.notifications if any(a.rule == "service_down" for a in n.alerts)]
    assert [n.status for n in notes] == ["firing", "resolved"]
    stable = notes[1].alerts[0]
    assert not stable.flapping
    assert stable.episodes == 8, "the stable-again message counts every outage of the flap"
    assert stable.downtime == 160.0


def test_a_metric_that_fires_three_times_in_ten_minutes_is_flapping() -> None:
    rule = Rule(name="cpu", metric="cpu.percent", threshold=90)
    driver = Driver(only_rules(rule, flapping=FlappingConfig(high=99, low=98)))  # episodes alone
    t = 0.0
    for cycle in range(6):
        for i in range(10):
            driver.at(t, metrics("web01", {"cpu.percent": 95 if i < 3 else 10}))
            t += 10
        del cycle
    firing = [a for a in driver.alerts if a.status == "firing"]
    assert [a.flapping for a in firing[:3]] == [False, False, True]


def test_flapping_episodes_and_window_are_configurable() -> None:
    rule = Rule(name="cpu", metric="cpu.percent", threshold=90)
    config = only_rules(rule, flapping=FlappingConfig(episodes=5, within=Duration(120), high=99, low=98))
    driver = Driver(config)
    t = 0.0
    for _ in range(6):  # a firing every 100 s: never 5 within 2 minutes
        for i in range(10):
            driver.at(t, metrics("web01", {"cpu.percent": 95 if i == 0 else 10}))
            t += 10
    assert not any(a.flapping for a in driver.alerts)


def test_a_new_critical_reaches_slack_within_for_plus_group_wait_beside_a_notified_warning() -> None:
    """The measured case: a host already notified for a warning, then its database dies."""
    driver = Driver(EvaluatorConfig())
    t = 0.0
    while t <= 400:  # memory high from the start: warning notified after for (5m) + group_wait
        driver.at(t, metrics("web01", {"mem.percent": 95}, interval=10))
        t += 10
    warned = [n for n in driver.notifications if any(a.rule == "memory_usage_high" for a in n.alerts)]
    assert warned, "the warning was notified"
    died = t
    while t <= died + 200:
        driver.at(t, metrics("web01", {"mem.percent": 95}, interval=10))
        driver.at(t, health("web01", "probe", "postgres", "critical"))
        t += 5
    critical = [n for n in driver.notifications if any(a.rule == "database_unreachable" for a in n.alerts)]
    assert critical, "the critical was notified"
    assert critical[0].ts <= died + 60 + 30, "within its for (1m) plus group_wait (30s)"
    assert {a.rule for a in critical[0].alerts} == {"database_unreachable", "memory_usage_high"}, (
        "one message"
    )


def test_a_second_critical_on_a_notified_critical_host_does_not_wait_five_minutes() -> None:
    driver = Driver(EvaluatorConfig())
    t = 0.0
    while t <= 120:
        driver.at(t, health("web01", "probe", "postgres", "critical"))
        t += 5
    died = t
    while t <= died + 150:
        driver.at(t, health("web01", "probe", "postgres", "critical"))
        driver.at(t, health("web01", "probe", "backend-api", "critical"))
        t += 5
    down = [n for n in driver.notifications if any(a.rule == "service_down" for a in n.alerts)]
    assert down
    assert down[0].ts <= died + 60 + 30


def test_user_routes_keep_alertmanager_group_interval() -> None:
    """A user's own routes replace the built-in ones: group_interval batches as Alertmanager does."""
    from evaluator.config import Route

    route = Route(name="ops", receiver="#ops", group_interval=Duration(300))
    driver = Driver(EvaluatorConfig(routes=[route]))
    t = 0.0
    while t <= 120:
        driver.at(t, health("web01", "probe", "postgres", "critical"))
        t += 5
    while t <= 300:
        driver.at(t, health("web01", "probe", "postgres", "critical"))
        driver.at(t, health("web01", "probe", "backend-api", "critical"))
        t += 5
    down = [n for n in driver.notifications if any(a.rule == "service_down" for a in n.alerts)]
    assert down == [], "still batched by the route's group_interval"


def last_note(notifications: list[Notification]) -> Notification:
    assert notifications
    return notifications[-1]


def test_a_notification_tells_the_value_and_summary_at_the_moment_it_is_sent() -> None:
    rule = Rule(name="disk", metric="disk.percent", threshold=85, summary="disk at {value:.0f}%")
    driver = Driver(only_rules(rule))
    driver.at(0, metrics("web01", {"disk.percent": 86}))
    driver.at(10, metrics("web01", {"disk.percent": 91}))
    driver.at(20, metrics("web01", {"disk.percent": 97}))
    driver.at(30)  # group_wait
    (alert,) = last_note(driver.notifications).alerts
    assert (alert.value, alert.summary) == (97, "disk at 97%")
    (active,) = driver.engine.active(30)
    assert (active.value, active.summary) == (97, "disk at 97%")


def test_a_notification_says_resolved_for_an_alert_that_resolved_before_its_group_flushed() -> None:
    rule = Rule(name="disk", metric="disk.percent", threshold=85)
    driver = Driver(only_rules(rule))
    driver.at(0, metrics("web01", {"disk.percent": 90}))
    driver.at(30)
    driver.at(40, metrics("web01", {"disk.percent": 95}))
    driver.at(50, metrics("web01", [("disk.percent", 20, {})]))
    driver.at(1000)
    assert [n.status for n in driver.notifications] == ["firing", "resolved"]
    assert driver.notifications[1].alerts[0].value == 20


def test_a_pending_alert_that_never_fired_is_neither_notified_nor_shown_as_resolved() -> None:
    driver = Driver(EvaluatorConfig())
    driver.at(0, metrics("web01", {"cpu.percent": 95}))
    driver.at(60, metrics("web01", {"cpu.percent": 10}))
    driver.at(2000)
    assert [a.status for a in driver.alerts] == ["pending", "inactive"]
    assert driver.notifications == []
    assert driver.engine.stats.alerts == 2


def test_a_down_service_carries_no_latency_as_its_value() -> None:
    driver = Driver(EvaluatorConfig())
    from bus.events import HealthEvent

    event = HealthEvent(host="p", agent="probe", target="api", status="critical", latency=0.0024, ts=0)
    driver.at(0, event)
    driver.at(60, event)
    (firing,) = [a for a in driver.alerts if a.status == "firing"]
    assert firing.value is None


def test_the_report_counts_only_real_firings_of_an_alert_that_was_mostly_pending(tmp_path: Path) -> None:
    """An unhealthy container pending 30 times and firing twice is 2 incidents, not 32."""
    driver = Driver(EvaluatorConfig())
    t = 0.0
    for cycle in range(32):
        fails = 120 if cycle in (10, 20) else 30  # two failures outlast the 1m `for`
        for _ in range(int(fails // 10)):
            driver.at(t, health("web01", "container", "api", "critical"))
            t += 10
        for _ in range(60):  # a long healthy spell: no flapping
            driver.at(t, health("web01", "container", "api", "ok"))
            t += 10
    store = RollupStore(tmp_path / "r.sqlite3")
    store.ingest([a for a in driver.alerts if a.rule == "container_unhealthy"])
    incidents = store.incidents(0, t)
    assert len(incidents) == 2


def test_after_a_bus_outage_agents_are_judged_from_its_end_not_during_it() -> None:
    driver = Driver(EvaluatorConfig())
    driver.at(0, heartbeat("web01", interval=2), metrics("web01", {"disk.percent": 95}, interval=2))
    driver.engine.bus_restored(10)  # the bus was out of reach from 0 to 10
    driver.at(15)
    assert [a.rule for a in driver.alerts if a.rule == "agent_down"] == []
    driver.at(16)  # still silent 3 intervals after the outage: that silence is the agent's
    assert [a.status for a in driver.alerts if a.rule == "agent_down"] == ["firing"]


def test_a_dead_agent_is_reported_down_while_the_bus_blips_again_and_again() -> None:
    """Each blip of 1 s takes 1 s off the agent's silence, not all of it: judged afresh at each
    blip's end, a dead agent would never be reported while the connection keeps failing."""
    driver = Driver(EvaluatorConfig())
    driver.at(0, heartbeat("web01", interval=2))  # and never again
    for t in range(3, 10, 2):
        driver.engine.bus_restored(t, since=t - 1)
        driver.at(t)
    assert [a.status for a in driver.alerts if a.rule == "agent_down"] == []  # 4 s off: due at 10
    driver.at(10)
    assert [a.status for a in driver.alerts if a.rule == "agent_down"] == ["firing"]


def test_an_agent_already_down_before_an_outage_stays_down() -> None:
    driver = Driver(EvaluatorConfig())
    driver.at(0, heartbeat("web01", interval=2))
    driver.at(10)
    driver.engine.bus_restored(20)
    driver.at(30)
    assert [a.status for a in driver.alerts if a.rule == "agent_down"] == ["firing"]


def test_a_part_the_supervisor_restarts_is_an_alert_and_never_a_service_down() -> None:
    driver = Driver(EvaluatorConfig())
    for t in (0, 5):
        driver.at(t, health("mon01", "probe", "_supervisor", "critical", detail="probe failed: boom"))
    driver.at(70, health("mon01", "probe", "_supervisor", "ok", detail="running again"))
    assert [(a.rule, a.status) for a in driver.alerts] == [
        ("part_failed", "firing"),
        ("part_failed", "resolved"),
    ]
    assert driver.alerts[0].summary == "probe on mon01 failed and is being restarted"


def outage(driver: Driver, start: float, seconds: float, status: str = "critical") -> float:
    t = start
    while t < start + seconds:
        driver.at(t, health("web01", "probe", "backend-api", status))  # type: ignore[arg-type]
        t += 5
    return t


def test_a_service_failing_again_after_a_notified_outage_is_sent_as_it_fires() -> None:
    """The group that told of the first outage is kept, so the next critical waits no group_wait."""
    driver = Driver(EvaluatorConfig(flapping=FlappingConfig(enabled=False)))
    t = outage(driver, 0, 120)
    t = outage(driver, t, 600, "ok")  # notified, resolved, quiet for ten minutes
    driver.take()
    again = t
    outage(driver, t, 120)
    firing = next(a for a in driver.alerts if a.rule == "service_down" and a.status == "firing")
    (note, *_) = [n for n in driver.notifications if n.status == "firing"]
    assert firing.starts_at - again <= 60
    assert note.ts == firing.starts_at, "sent as it fires, no group_wait"


def test_a_warning_after_a_quiet_spell_still_waits_group_wait_for_its_siblings() -> None:
    driver = Driver(EvaluatorConfig())
    t = outage(driver, 0, 120)
    t = outage(driver, t, 600, "ok")
    driver.take()
    start = t
    while t < start + 400:
        driver.at(t, metrics("web01", {"mem.percent": 95}, interval=10))
        t += 10
    warning = next(a for a in driver.alerts if a.rule == "memory_usage_high" and a.status == "firing")
    (note,) = [n for n in driver.notifications if n.status == "firing"]
    assert note.ts == warning.starts_at + 30


def test_a_flapping_alert_is_told_as_an_ongoing_incident_even_while_the_check_is_up() -> None:
    driver = Driver(EvaluatorConfig())
    t = flapping_check(driver, 3)  # ends with the check up
    driver.at(t + 30)
    (note,) = [n for n in driver.notifications if any(a.rule == "service_down" for a in n.alerts)]
    (alert,) = note.alerts
    assert (note.status, alert.status, alert.flapping) == ("firing", "firing", True)
    assert alert.starts_at > 0


def test_a_critical_that_resolves_after_a_while_is_told_at_once_a_blip_waits_group_interval() -> None:
    """The database back after two minutes: resolved at once. Back after 10 s (perhaps the first
    blip of a flap): the resolve waits group_interval, so a flap that follows is told once."""
    config = EvaluatorConfig(
        flapping=FlappingConfig(enabled=False), default_route=DefaultRoute(group_wait=Duration(10))
    )
    driver = Driver(config)
    t = outage(driver, 0, 180)
    t = outage(driver, t, 60, "ok")
    resolved = [n for n in driver.notifications if n.status == "resolved"]
    assert resolved
    assert resolved[0].ts - resolved[0].alerts[0].ends_at <= 10  # type: ignore[operator]
    driver.take()
    t = outage(driver, t + 600, 70)
    t = outage(driver, t, 40, "ok")
    notes = [n.status for n in driver.notifications]
    assert notes[0] == "firing"
    ended = next(a.ends_at for a in driver.alerts if a.status == "resolved")
    late = [n for n in driver.notifications if n.status == "resolved"]
    assert not late or late[0].ts - ended >= 20  # type: ignore[operator]


def test_an_agents_metrics_read_before_its_buffered_heartbeats_are_no_silence() -> None:
    driver = Driver(EvaluatorConfig())
    driver.at(0, heartbeat("web01", interval=2))
    for t in (2, 4, 6, 8, 10):  # after an outage: the metrics batches come first
        driver.at(t, metrics("web01", {"cpu.percent": 10}, interval=2))
    driver.at(10.5, *(heartbeat("web01", interval=2) for _ in range(5)))
    assert [a for a in driver.alerts if a.rule == "agent_down"] == []
    driver.at(17)  # nothing at all for 3 intervals: down
    assert [a.status for a in driver.alerts if a.rule == "agent_down"] == ["firing"]


def test_the_sample_that_ends_a_for_fires_the_alert_though_its_stamp_is_rounded() -> None:
    """Stamps on the wall clock a whole `for` apart may differ from it by a float's last bit."""
    driver = Driver(EvaluatorConfig(tune={"service_down": RuleTuning(for_=Duration(10))}))
    first = 1_764_593_234.7
    end = math.nextafter(first + 10.0, 0.0)  # one ulp short of first + 10
    for t in (first, first + 5.0, end):
        driver.at(t, health("probe01", "probe", "backend-api", "critical"))
    firing = [a for a in driver.alerts if a.rule == "service_down" and a.status == "firing"]
    assert [a.starts_at for a in firing] == [end], "fired by that sample, not by a later timer"


def test_a_flush_due_as_a_check_comes_in_tells_what_that_check_shows() -> None:
    """The versus bench's sequence: a 60 s outage, then a check down 20 s / up 20 s; the first
    flapping outage's firing resolved 10 s later waits group_interval, and that flush falls on the
    check that shows the alert flapping: it must tell it flapping, never resolved. Stamped as an
    agent stamps its ticks (monotonic tick plus the wall clock's offset), whose rounding puts the
    flush a float's last bit before or after the check, so several starts are tried."""
    config = EvaluatorConfig(
        tune={"service_down": RuleTuning(for_=Duration(10))},
        default_route=DefaultRoute(
            group_by=["host"],
            group_wait=Duration(10),
            group_interval=Duration(30),
            repeat_interval=Duration(3600),
        ),
    )
    statuses = ["critical"] * 12 + ["ok"] * 18 + (["critical"] * 4 + ["ok"] * 4) * 5
    jitter = random.Random(9)
    for attempt in range(40):
        monotonic = 10_000.0 + attempt * 0.137
        offset = 1_764_593_234.7 + attempt * 1.3 - monotonic
        # from attempt 20 on, each stamp also lags its tick by the event loop's wake-up, unevenly
        lag = 0.02 if attempt >= 20 else 0.0
        stamps = [monotonic + 5.0 * k + offset + jitter.uniform(0, lag) for k in range(len(statuses))]
        driver = Driver(config, start=stamps[0])
        for at, status in zip(stamps, statuses, strict=True):
            driver.at(at, health("probe01", "probe", "backend-api", status))  # type: ignore[arg-type]
        told = [a for n in driver.notifications for a in n.alerts if a.rule == "service_down"]
        flapping_phase = [a for a in told if a.starts_at >= stamps[30]]
        assert flapping_phase[0].status == "firing", "the first outage is told as it fires"
        assert not [a for a in flapping_phase if a.status == "resolved" and not a.flapping], attempt
        assert any(a.flapping for a in flapping_phase)


def test_stamps_lagging_their_schedule_unevenly_still_end_a_for_and_flush_a_group_on_time() -> None:
    """An agent stamps a cycle when its schedule wakes it, up to 20 ms late here: the sample due at
    the end of `for` ends it, and the flush due at the end of group_wait goes out with the sample
    due then, not a tick later (versus runs 6-11: TICK_LAG after Alertmanager)."""
    config = EvaluatorConfig(
        tune={"http_error_rate_high": RuleTuning(for_=Duration(10))},
        default_route=DefaultRoute(group_by=["host"], group_wait=Duration(10)),
    )
    jitter = random.Random(5)
    for attempt in range(20):
        driver = Driver(config)
        start = 1_764_593_234.7 + attempt
        fired_on, told_on = None, None
        for k in range(6):
            lag = 0.02 if k == 0 else jitter.uniform(0, 0.02)  # the first the latest: the others "early"
            driver.at(start + 5.0 * k + lag, metrics("probe01", error_ratio(0.1), agent="probe", interval=5))
            if fired_on is None and "firing" in rule_statuses(driver.alerts, "http_error_rate_high"):
                fired_on = k
            if told_on is None and any(n.status == "firing" for n in driver.notifications):
                told_on = k
        assert (fired_on, told_on) == (2, 4), attempt


def statuses(notifications: list[Notification]) -> list[str]:
    return [n.status for n in notifications]


def test_a_check_the_agent_could_not_make_does_not_resolve_the_outage() -> None:
    """`unknown` (the probe had no slot free, the check raised) says nothing of the service."""
    driver = Driver(EvaluatorConfig())
    for t in range(0, 600, 10):
        status: Status = "unknown" if t in (200, 210) else "critical"
        driver.at(t, heartbeat("mon01", "probe"), health("mon01", "probe", "api", status))
    driver.at(600)
    _, notes = driver.take()
    assert statuses(notes) == ["firing"]


def test_a_check_that_stays_unknown_resolves_once_its_series_is_stale() -> None:
    driver = Driver(EvaluatorConfig())
    for t in range(0, 100, 10):
        driver.at(t, heartbeat("mon01", "probe"), health("mon01", "probe", "api", "critical"))
    for t in range(100, 800, 10):
        driver.at(t, heartbeat("mon01", "probe"), health("mon01", "probe", "api", "unknown"))
    _, notes = driver.take()
    assert statuses(notes) == ["firing", "resolved"]
    assert 390 <= notes[-1].ts <= 420  # 300 s after the last critical, plus group_interval's turn


def test_a_database_checked_every_five_minutes_stays_down_for_the_whole_outage() -> None:
    """Checks carry no interval; their series must not go stale between two of a slow agent's
    checks (arriving a second or three late), or each cycle resolves and fires again."""
    driver = Driver(EvaluatorConfig())
    for cycle in range(12):  # an hour, the database down throughout
        driver.at(
            cycle * 300 + 1 + cycle % 3,
            heartbeat("db01", "postgres", interval=300),
            health("db01", "postgres", "postgres", "critical", detail="refused"),
        )
    driver.at(3700)
    _, notes = driver.take()
    assert statuses(notes) == ["firing"]
