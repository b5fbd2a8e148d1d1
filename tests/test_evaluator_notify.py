"""Consolidation: group_wait, group_interval, repeat_interval, resolved, routes, silences, windows,
inhibition and acknowledgement, on an injected clock."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from bus.events import Notification
from bus.units import Duration
from evaluator.config import (
    DefaultRoute,
    EvaluatorConfig,
    InhibitRule,
    MaintenanceWindow,
    Matcher,
    Route,
    Rule,
)
from evaluator.silences import Silence, parse_matcher
from evaluator.testing import Driver, health, heartbeat, metrics, only_rules

CPU = Rule(name="cpu", metric="cpu.percent", threshold=90, severity="warning")
DISK = Rule(name="disk", metric="disk.percent", threshold=85, severity="critical")
HOUR = 3600.0


def summary(notes: list[Notification]) -> list[tuple[float, str, str, list[tuple[str, str]]]]:
    return [(n.ts, n.group_key, n.status, [(a.rule, a.status) for a in n.alerts]) for n in notes]


def firing(host: str, *names: str) -> object:
    return metrics(host, dict.fromkeys(names, 99.0))


def test_group_wait_batches_the_alerts_of_one_host_into_one_notification() -> None:
    driver = Driver(only_rules(CPU, DISK))
    driver.at(0, metrics("web01", {"cpu.percent": 95}))
    driver.at(20, metrics("web01", {"cpu.percent": 95, "disk.percent": 90}))
    driver.at(29.9)
    assert driver.notifications == []
    driver.at(31)
    assert summary(driver.notifications) == [
        (30, 'default:{host="web01"}', "firing", [("cpu", "firing"), ("disk", "firing")])
    ]


def test_hosts_are_grouped_apart_and_group_by_can_merge_them() -> None:
    driver = Driver(only_rules(CPU))
    driver.at(0, metrics("web01", {"cpu.percent": 95}), metrics("web02", {"cpu.percent": 95}))
    driver.at(100)
    assert sorted(n.group_key for n in driver.notifications) == [
        'default:{host="web01"}',
        'default:{host="web02"}',
    ]
    route = DefaultRoute(receiver="#ops", group_by=["rule"])
    merged = Driver(only_rules(CPU, default_route=route))
    merged.at(0, metrics("web01", {"cpu.percent": 95}), metrics("web02", {"cpu.percent": 95}))
    merged.at(100)
    assert [(n.group_key, len(n.alerts)) for n in merged.notifications] == [('default:{rule="cpu"}', 2)]


def test_changes_to_a_notified_group_wait_for_group_interval() -> None:
    driver = Driver(only_rules(CPU, DISK))
    driver.at(0, metrics("web01", {"cpu.percent": 95}))
    driver.at(40, metrics("web01", {"cpu.percent": 95, "disk.percent": 90}))
    driver.at(329)
    assert [n.ts for n in driver.notifications] == [30]
    driver.at(400)
    assert summary(driver.notifications)[1] == (
        330,
        'default:{host="web01"}',
        "firing",
        [("cpu", "firing"), ("disk", "firing")],
    )


def test_reminders_come_after_repeat_interval_and_not_before() -> None:
    driver = Driver(only_rules(CPU))
    for t in range(0, int(9 * HOUR), 60):
        driver.at(t, metrics("web01", {"cpu.percent": 95}, interval=60))
    assert [(n.ts, n.status) for n in driver.notifications] == [
        (30, "firing"),
        (30 + 4 * HOUR, "reminder"),
        (30 + 8 * HOUR, "reminder"),
    ]


def test_resolved_alerts_are_notified_and_send_resolved_false_keeps_quiet() -> None:
    driver = Driver(only_rules(CPU))
    driver.at(0, metrics("web01", {"cpu.percent": 95}))
    driver.at(100, metrics("web01", {"cpu.percent": 5}))
    driver.at(1000)
    assert summary(driver.notifications) == [
        (30, 'default:{host="web01"}', "firing", [("cpu", "firing")]),
        (330, 'default:{host="web01"}', "resolved", [("cpu", "resolved")]),
    ]
    quiet = Driver(only_rules(CPU, default_route=DefaultRoute(receiver="#x", send_resolved=False)))
    quiet.at(0, metrics("web01", {"cpu.percent": 95}))
    quiet.at(100, metrics("web01", {"cpu.percent": 5}))
    quiet.at(5 * HOUR)
    assert [n.status for n in quiet.notifications] == ["firing"]


def test_an_alert_that_resolves_within_group_wait_is_never_notified() -> None:
    driver = Driver(only_rules(CPU))
    driver.at(0, metrics("web01", {"cpu.percent": 95}))
    driver.at(10, metrics("web01", {"cpu.percent": 5}))
    driver.at(HOUR)
    assert driver.notifications == []


def test_routes_by_severity_and_labels_first_match_wins() -> None:
    routes = [
        Route(name="db", receiver="#db", matchers=[Matcher(name="host", op="=~", value="db.*")]),
        Route(name="oncall", receiver="#oncall", severity=["critical"]),
    ]
    driver = Driver(only_rules(CPU, DISK, routes=routes))
    driver.at(
        0, metrics("db01", {"disk.percent": 95}), metrics("web01", {"disk.percent": 95, "cpu.percent": 95})
    )
    driver.at(100)
    assert sorted((n.route, n.receiver, [a.rule for a in n.alerts]) for n in driver.notifications) == [
        ("db", "#db", ["disk"]),
        ("default", "#alerts", ["cpu"]),
        ("oncall", "#oncall", ["disk"]),
    ]


def test_notification_ids_are_deterministic_and_count_per_group() -> None:
    def run() -> list[str]:
        driver = Driver(only_rules(CPU))
        driver.at(0, metrics("web01", {"cpu.percent": 95}, interval=2 * HOUR))
        driver.at(5 * HOUR, metrics("web01", {"cpu.percent": 5}, interval=2 * HOUR))
        driver.at(6 * HOUR)
        return [n.id for n in driver.notifications]

    ids = run()
    assert ids == run()
    assert len(set(ids)) == 3
    assert [i.rsplit("-", 1)[1] for i in ids] == ["1", "2", "3"]
    assert all(i.startswith("default-") for i in ids)


def silence(matchers: str, start: float, end: float) -> Silence:
    return Silence(
        id=f"s-{matchers}",
        matchers=[parse_matcher(m) for m in matchers.split(",")],
        starts_at=start,
        ends_at=end,
        author="ops",
        comment="maintenance",
    )


def test_a_silence_suppresses_and_its_expiry_releases_a_still_firing_alert() -> None:
    driver = Driver(only_rules(CPU))
    driver.engine.set_silences([silence("host=web01", 0, 1000)], 0)
    web02 = metrics("web02", {"cpu.percent": 95}, interval=1000)
    driver.at(0, metrics("web01", {"cpu.percent": 95}, interval=1000), web02)
    driver.at(500, metrics("web01", {"cpu.percent": 95}, interval=1000))
    assert [n.group_key for n in driver.notifications] == ['default:{host="web02"}']
    (active,) = [a for a in driver.engine.active(500) if a.labels["host"] == "web01"]
    assert active.state == "firing"
    assert active.silenced_by == ["s-host=web01"]
    driver.at(2000)
    assert summary(driver.notifications)[1] == (1000, 'default:{host="web01"}', "firing", [("cpu", "firing")])


def test_an_alert_resolving_under_a_silence_is_not_notified_at_all() -> None:
    driver = Driver(only_rules(CPU))
    driver.engine.set_silences([silence("rule=~cp.*", 0, 1000)], 0)
    driver.at(0, metrics("web01", {"cpu.percent": 95}))
    driver.at(500, metrics("web01", {"cpu.percent": 5}))
    driver.at(5000)
    assert driver.notifications == []
    assert [a.status for a in driver.alerts] == ["firing", "resolved"], "alerts still change state"


def test_silencing_a_notified_alert_keeps_its_resolution_quiet() -> None:
    driver = Driver(only_rules(CPU))
    driver.at(0, metrics("web01", {"cpu.percent": 95}))
    driver.at(100)
    driver.engine.set_silences([silence("host=web01", 100, 10_000)], 100)
    driver.at(200, metrics("web01", {"cpu.percent": 5}))
    driver.at(5 * HOUR)
    assert [n.status for n in driver.notifications] == ["firing"]


BERLIN = ZoneInfo("Europe/Berlin")


def berlin(year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> float:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=BERLIN).timestamp()


def test_maintenance_window_across_midnight_in_its_time_zone_silences_and_is_announced() -> None:
    window = MaintenanceWindow(
        name="backup", days=["sat"], start="23:00", end="01:00", timezone="Europe/Berlin", matchers=[]
    )
    start = berlin(2026, 11, 28, 22, 0)  # Saturday 22:00 in Berlin = 21:00 UTC
    driver = Driver(only_rules(CPU, maintenance_windows=[window]), start)
    assert driver.engine.next_deadline() == berlin(2026, 11, 28, 23, 0)
    driver.at(berlin(2026, 11, 28, 23, 30), metrics("web01", {"cpu.percent": 95}, interval=HOUR))
    driver.at(
        berlin(2026, 11, 29, 0, 30), metrics("web01", {"cpu.percent": 95}, interval=HOUR)
    )  # Sunday, open
    notes = driver.notifications
    assert [(n.ts, [(a.rule, a.status, a.summary) for a in n.alerts]) for n in notes] == [
        (berlin(2026, 11, 28, 23, 0, 30), [("maintenance", "firing", "maintenance window backup started")])
    ]
    (cpu,) = [a for a in driver.engine.active(driver.now) if a.rule == "cpu"]
    assert cpu.silenced_by == ["maintenance:backup"]
    driver.at(berlin(2026, 11, 29, 1, 30), metrics("web01", {"cpu.percent": 95}, interval=HOUR))
    later = sorted(
        (n.ts, n.group_key, [(a.rule, a.status) for a in n.alerts]) for n in driver.notifications[1:]
    )
    assert later == [  # the end is announced, and the alert it silenced is notified
        (berlin(2026, 11, 29, 1, 0), 'default:{host=""}', [("maintenance", "resolved")]),
        (berlin(2026, 11, 29, 1, 0), 'default:{host="web01"}', [("cpu", "firing")]),
    ]
    driver.at(berlin(2026, 11, 29, 23, 30))  # Sunday 23:30: the window opens on Saturdays only
    assert not any(
        a.rule == "maintenance" and a.starts_at > berlin(2026, 11, 29, 2, 0) for a in driver.alerts
    )


def test_back_to_back_maintenance_windows_page_nobody_at_the_instant_one_hands_over_to_the_next() -> None:
    windows = [  # the closing one sorts first: its timer runs first at 01:00
        MaintenanceWindow(name="a-backup", start="00:00", end="01:00", timezone="UTC", announce=False),
        MaintenanceWindow(name="b-upgrade", start="01:00", end="02:00", timezone="UTC", announce=False),
    ]
    midnight = dt.datetime(2026, 12, 2, tzinfo=dt.UTC).timestamp()
    driver = Driver(only_rules(CPU, maintenance_windows=windows), midnight - 60)
    for minute in range(30, 150, 10):
        driver.at(midnight + minute * 60, metrics("web01", {"cpu.percent": 95}, interval=600))
    assert [(n.ts - midnight, [a.rule for a in n.alerts]) for n in driver.notifications] == [
        (2 * HOUR, ["cpu"])
    ], "notified when the second window closed, not at 01:00 between the two"


def test_a_windows_matchers_limit_what_it_silences() -> None:
    window = MaintenanceWindow(
        name="db", start="00:00", end="23:59", matchers=[Matcher(name="host", value="db01")], announce=False
    )
    driver = Driver(only_rules(CPU, maintenance_windows=[window]), 3600)
    driver.at(3600, metrics("db01", {"cpu.percent": 95}), metrics("web01", {"cpu.percent": 95}))
    driver.at(3700)
    assert [n.group_key for n in driver.notifications] == ['default:{host="web01"}']


def test_heartbeat_missing_gives_one_agent_down_and_nothing_else_for_that_host() -> None:
    driver = Driver(EvaluatorConfig())
    for t in range(0, 400, 10):  # disk full, notified at 330 after its 5 m `for`
        driver.at(t, heartbeat("web01"), metrics("web01", [("disk.percent", 95, {"mount": "/"})]))
    assert [(n.status, [a.rule for a in n.alerts]) for n in driver.notifications] == [
        ("firing", ["disk_usage_high"])
    ]
    driver.take()
    driver.at(3 * HOUR)  # the agent is gone: no heartbeat, no metrics
    alerts, notes = driver.take()
    assert [(a.rule, a.status) for a in alerts] == [("agent_down", "firing"), ("disk_usage_high", "resolved")]
    assert [(n.status, [(a.rule, a.status) for a in n.alerts]) for n in notes] == [
        ("firing", [("agent_down", "firing")])
    ]


def test_agent_down_inhibits_new_alerts_of_its_host_but_not_other_hosts() -> None:
    driver = Driver(EvaluatorConfig())
    driver.at(0, heartbeat("web01", "container"), heartbeat("web02", "container"))
    for t in range(10, 200, 10):  # web01's agent stops at once; web02's runs on
        driver.at(t, heartbeat("web02", "container"))
        if t in (50, 110):
            driver.at(
                t,
                health("web01", "container", "api", "critical"),
                health("web02", "container", "api", "critical"),
            )
    driver.at(200)
    assert sorted((n.group_key, tuple(a.rule for a in n.alerts)) for n in driver.notifications) == [
        ('default:{host="web01"}', ("agent_down",)),
        ('default:{host="web02"}', ("container_unhealthy",)),
    ]
    (inhibited,) = [
        a
        for a in driver.engine.active(200)
        if a.rule == "container_unhealthy" and a.labels["host"] == "web01"
    ]
    assert inhibited.inhibited_by
    assert inhibited.state == "firing"


def test_one_agent_down_mutes_none_of_what_the_other_agents_of_its_host_still_report() -> None:
    """The container agent crashes on the one JARVIS host: the disk filling (host agent) and the API
    down (probe) are live readings, and must reach Slack beside "container agent is silent"."""
    driver = Driver(EvaluatorConfig())
    agents = ("host", "container", "probe")
    driver.at(0, *(heartbeat("jarvis", agent) for agent in agents))
    for t in range(10, 400, 10):  # the container agent stops at once
        driver.at(t, heartbeat("jarvis", "host"), heartbeat("jarvis", "probe"))
        if t >= 60:
            driver.at(
                t,
                metrics("jarvis", [("disk.percent", 95.0, {"mount": "/"})]),
                health("jarvis", "probe", "api", "critical"),
            )
    notified = {(a.rule, a.labels["agent"]) for n in driver.notifications for a in n.alerts}
    assert notified == {
        ("agent_down", "container"),
        ("disk_usage_high", "host"),
        ("service_down", "probe"),
    }


def test_a_pipeline_part_down_on_the_monitoring_host_mutes_none_of_the_services_probed_from_it() -> None:
    """In `up` the probe stamps its checks with the monitoring host's name, where the report sink
    beats too: its silence must not hide that the API is down."""
    driver = Driver(EvaluatorConfig())
    driver.at(0, heartbeat("mon01", agent="report"), heartbeat("mon01", agent="probe"))
    for t in range(10, 400, 10):  # the report sink stops; the API goes down a minute later
        driver.at(t, heartbeat("mon01", agent="probe"))
        if t >= 60:
            driver.at(t, health("mon01", "probe", "api", "critical"))
    notified = {(a.rule, a.labels.get("agent")) for n in driver.notifications for a in n.alerts}
    assert notified == {("agent_down", "report"), ("service_down", "probe")}


def test_service_down_inhibits_its_own_latency_alert_only() -> None:
    latency = Rule(
        name="http_latency_p95_high", metric="http.latency_p95_seconds", threshold=2, for_=Duration(60)
    )
    driver = Driver(EvaluatorConfig(rules=[latency]))
    for t in (0, 60):
        driver.at(
            t,
            health("probe", "probe", "api", "critical"),
            metrics(
                "probe",
                [
                    ("http.latency_p95_seconds", 5, {"check": "api"}),
                    ("http.latency_p95_seconds", 5, {"check": "web"}),
                ],
                agent="probe",
            ),
        )
    driver.at(200)
    notified = [(a.rule, a.labels.get("check")) for n in driver.notifications for a in n.alerts]
    assert sorted(notified) == [("http_latency_p95_high", "web"), ("service_down", "api")]


def test_custom_inhibit_rule_with_equal_labels() -> None:
    inhibit = InhibitRule(
        source_matchers=[Matcher(name="rule", value="disk")],
        target_matchers=[Matcher(name="rule", value="cpu")],
        equal=["host"],
    )
    driver = Driver(only_rules(CPU, DISK, inhibit_rules=[inhibit]))
    driver.at(
        0, metrics("web01", {"cpu.percent": 95, "disk.percent": 95}), metrics("web02", {"cpu.percent": 95})
    )
    driver.at(100)
    assert sorted((n.group_key, [a.rule for a in n.alerts]) for n in driver.notifications) == [
        ('default:{host="web01"}', ["disk"]),
        ('default:{host="web02"}', ["cpu"]),
    ]


def test_two_services_down_on_one_host_are_both_notified_under_a_rule_they_match_on_both_sides() -> None:
    inhibit = InhibitRule(  # "a service down mutes the other criticals of its host"
        source_matchers=[Matcher(name="rule", value="service_down")],
        target_matchers=[Matcher(name="severity", value="critical")],
        equal=["host"],
    )
    driver = Driver(EvaluatorConfig(inhibit_rules=[inhibit]))
    for t in range(0, 200, 10):
        driver.at(t, health("probe", "probe", "api", "critical"), health("probe", "probe", "web", "critical"))
    notified = sorted((a.rule, a.labels.get("check")) for n in driver.notifications for a in n.alerts)
    assert notified == [("service_down", "api"), ("service_down", "web")]


def test_inhibition_lifting_notifies_the_alert_that_still_fires() -> None:
    inhibit = InhibitRule(
        source_matchers=[Matcher(name="rule", value="disk")],
        target_matchers=[Matcher(name="rule", value="cpu")],
    )
    driver = Driver(only_rules(CPU, DISK, inhibit_rules=[inhibit]))
    driver.at(0, metrics("web01", {"cpu.percent": 95, "disk.percent": 95}))
    driver.at(100, metrics("web01", {"cpu.percent": 95, "disk.percent": 5}, interval=600))
    driver.at(1000)
    assert [(n.ts, [(a.rule, a.status) for a in n.alerts]) for n in driver.notifications] == [
        (30, [("disk", "firing")]),
        (330, [("cpu", "firing"), ("disk", "resolved")]),
    ]


def test_an_engine_made_afresh_after_its_state_was_lost_never_repeats_a_notification_id() -> None:
    """Notification ids are JetStream's Nats-Msg-Id: one repeated within the duplicate window (1 h)
    is dropped by the server, so the alerts of an evaluator whose state was lost would be lost too."""
    first = Driver(only_rules(CPU), start=1_000_000)
    first.at(1_000_000, metrics("web01", {"cpu.percent": 95}, interval=600))
    first.at(1_000_100)
    again = Driver(only_rules(CPU), start=1_000_200)  # the saved state was unusable
    again.at(1_000_200, metrics("web01", {"cpu.percent": 95}, interval=600))
    again.at(1_000_300)
    again.restart()  # and its own restarts keep its ids apart too
    again.at(1_000_400, metrics("web02", {"cpu.percent": 95}, interval=600))
    again.at(1_000_500)
    first.at(1_000_400, metrics("web02", {"cpu.percent": 95}, interval=600))
    first.at(1_000_500)
    ids = [n.id for driver in (first, again) for n in driver.notifications]
    assert len(ids) == 4
    assert len(set(ids)) == 4


def test_ack_stops_reminders_until_the_alert_resolves() -> None:
    driver = Driver(only_rules(CPU))
    driver.at(0, metrics("web01", {"cpu.percent": 95}, interval=600))
    driver.at(100)
    (alert,) = driver.engine.active(100)
    assert driver.engine.ack(alert.fingerprint, 100)
    assert not driver.engine.ack("0000000000000000", 100)
    for t in range(600, int(10 * HOUR), 600):
        driver.at(t, metrics("web01", {"cpu.percent": 95}, interval=600))
    assert [n.status for n in driver.notifications] == ["firing"]
    assert driver.engine.active(driver.now)[0].acked
    driver.at(10 * HOUR, metrics("web01", {"cpu.percent": 5}))
    for t in range(int(10 * HOUR + 600), int(16 * HOUR), 600):  # fires again: not acked any more
        driver.at(t, metrics("web01", {"cpu.percent": 95}, interval=600))
    assert [n.status for n in driver.notifications] == ["firing", "resolved", "firing", "reminder"]


def test_flapping_between_groups_flushes_never_loses_the_final_state() -> None:
    driver = Driver(only_rules(CPU))
    driver.at(0, metrics("web01", {"cpu.percent": 95}))
    driver.at(100)
    driver.at(200, metrics("web01", {"cpu.percent": 5}))
    driver.at(210, metrics("web01", {"cpu.percent": 95}, interval=600))
    driver.at(1000)
    assert [n.status for n in driver.notifications] == ["firing"], "still firing: nothing new to say"


def test_send_resolved_of_a_route_and_default_route_settings_are_used() -> None:
    route = DefaultRoute(
        receiver="#x",
        group_wait=Duration(5),
        group_interval=Duration(60),
        repeat_interval=Duration(600),
    )
    driver = Driver(only_rules(CPU, default_route=route))
    driver.at(0, metrics("web01", {"cpu.percent": 95}, interval=1000))
    driver.at(1300, metrics("web01", {"cpu.percent": 95}, interval=1000))
    assert [(n.ts, n.status) for n in driver.notifications] == [
        (5, "firing"),
        (605, "reminder"),
        (1205, "reminder"),
    ]


def test_a_missing_group_by_label_is_counted_and_groups_as_empty() -> None:
    driver = Driver(only_rules(CPU, default_route=DefaultRoute(group_by=["host", "team"])))
    driver.at(0, metrics("web01", {"cpu.percent": 95}))
    driver.at(100)
    assert [n.group_key for n in driver.notifications] == ['default:{host="web01",team=""}']
    assert driver.engine.stats.unevaluable == {"cpu": {"missing group_by label 'team'": 1}}
