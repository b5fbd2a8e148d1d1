"""The engine's state machine: for, hysteresis, staleness, health, heartbeats, flapping, templates."""

from __future__ import annotations

import hashlib

from bus.units import Duration
from evaluator.config import EvaluatorConfig, FlappingConfig, Matcher, Rule
from evaluator.engine import Engine
from evaluator.series import fingerprint
from evaluator.testing import Driver, health, heartbeat, metrics, only_rules

CPU = Rule(
    name="cpu_high",
    metric="cpu.percent",
    threshold=90,
    for_=Duration(60),
    severity="warning",
    summary="CPU on {host} at {value:.0f}%",
)


def statuses(driver: Driver) -> list[tuple[str, str, float]]:
    alerts, _ = driver.take()
    return [(a.rule, a.status, a.ends_at if a.ends_at is not None else a.starts_at) for a in alerts]


def test_pending_then_firing_exactly_when_for_elapses_without_a_new_sample() -> None:
    driver = Driver(only_rules(CPU))
    driver.at(0, metrics("web01", {"cpu.percent": 95}))
    assert statuses(driver) == [("cpu_high", "pending", 0)]
    driver.at(59)
    assert statuses(driver) == []
    driver.at(75)  # the timer ran at its deadline, 60
    alerts, _ = driver.take()
    assert [(a.status, a.starts_at, a.summary) for a in alerts] == [("firing", 60, "CPU on web01 at 95%")]


def test_condition_clearing_before_for_never_fires_and_ends_as_inactive_not_resolved() -> None:
    driver = Driver(only_rules(CPU))
    driver.at(0, metrics("web01", {"cpu.percent": 95}))
    driver.at(30, metrics("web01", {"cpu.percent": 50}))
    driver.at(600)
    assert statuses(driver) == [("cpu_high", "pending", 0), ("cpu_high", "inactive", 30)]
    assert driver.notifications == []
    assert driver.engine.active(600) == []


def test_firing_at_once_without_for_and_resolving_when_the_value_returns() -> None:
    rule = Rule(name="disk", metric="disk.percent", threshold=85, severity="critical")
    driver = Driver(only_rules(rule))
    driver.at(
        0, metrics("web01", [("disk.percent", 90, {"mount": "/"}), ("disk.percent", 10, {"mount": "/boot"})])
    )
    driver.at(10, metrics("web01", [("disk.percent", 70, {"mount": "/"})]))
    alerts, _ = driver.take()
    assert [(a.status, a.labels["mount"], a.value) for a in alerts] == [
        ("firing", "/", 90),
        ("resolved", "/", 70),
    ]
    assert alerts[1].starts_at == 0
    assert alerts[1].ends_at == 10


def test_hysteresis_resolves_only_past_the_clear_threshold() -> None:
    rule = Rule(name="mem", metric="mem.percent", threshold=85, clear_threshold=80)
    driver = Driver(only_rules(rule))
    driver.at(0, metrics("web01", {"mem.percent": 90}))
    driver.at(10, metrics("web01", {"mem.percent": 82}))  # below the threshold, above the clear one
    assert statuses(driver) == [("mem", "firing", 0)]
    driver.at(20, metrics("web01", {"mem.percent": 79}))
    assert statuses(driver) == [("mem", "resolved", 20)]
    driver.at(30, metrics("web01", {"mem.percent": 84}))  # below the threshold: stays resolved
    assert statuses(driver) == []


def test_a_firing_series_that_stops_reporting_resolves_after_stale_after() -> None:
    rule = Rule(name="disk", metric="disk.percent", threshold=85)
    driver = Driver(only_rules(rule, stale_after=Duration(300)))
    driver.at(0, metrics("web01", [("disk.percent", 90, {"mount": "/data"})]))
    driver.at(299)
    assert statuses(driver) == [("disk", "firing", 0)]
    driver.at(1000)
    assert statuses(driver) == [("disk", "resolved", 300)]
    assert driver.engine.active(1000) == []


def test_staleness_waits_at_least_three_intervals_of_a_slow_agent() -> None:
    rule = Rule(name="disk", metric="disk.percent", threshold=85)
    driver = Driver(only_rules(rule, stale_after=Duration(300)))
    driver.at(0, metrics("web01", {"disk.percent": 90}, interval=600))
    driver.at(1799)
    assert statuses(driver) == [("disk", "firing", 0)]
    driver.at(1800)
    assert statuses(driver) == [("disk", "resolved", 1800)]


def test_label_matchers_are_anchored_regexes_and_missing_labels_are_empty() -> None:
    rule = Rule(
        name="var",
        metric="disk.percent",
        threshold=50,
        matchers=[Matcher(name="mount", op="=~", value="/var"), Matcher(name="team", op="!=", value="x")],
    )
    driver = Driver(only_rules(rule))
    driver.at(
        0,
        metrics(
            "web01", [("disk.percent", 90, {"mount": "/var/lib"}), ("disk.percent", 90, {"mount": "/var"})]
        ),
    )
    alerts, _ = driver.take()
    assert [a.labels["mount"] for a in alerts] == ["/var"]


def test_heartbeat_missing_for_three_intervals_fires_agent_down_and_a_heartbeat_resolves_it() -> None:
    driver = Driver(EvaluatorConfig())  # the built-in rules
    driver.at(0, heartbeat("web01", interval=10))
    driver.at(29.9)
    assert statuses(driver) == []
    driver.at(45)
    alerts, _ = driver.take()
    assert [(a.rule, a.status, a.starts_at, a.labels["host"], a.labels["agent"]) for a in alerts] == [
        ("agent_down", "firing", 30, "web01", "host")
    ]
    assert alerts[0].summary == "host agent on web01 is silent"
    driver.at(50, heartbeat("web01", interval=10))
    assert statuses(driver) == [("agent_down", "resolved", 50)]


def test_a_heartbeat_older_than_the_agent_down_is_judged_once_and_never_hangs_the_timers() -> None:
    driver = Driver(EvaluatorConfig())
    driver.at(0, heartbeat("web01", interval=10))
    driver.at(45)
    assert statuses(driver) == [("agent_down", "firing", 30)]
    driver.engine.observe(heartbeat("web01", interval=10), 20)  # late: sent before the firing
    driver.at(46)  # alive at 20, so not yet missing at 30: the timer it left due runs once
    assert statuses(driver) == [("agent_down", "resolved", 30)]
    driver.at(55)  # three intervals after that heartbeat
    assert statuses(driver) == [("agent_down", "firing", 50)]
    driver.at(60, heartbeat("web01", interval=10))
    assert statuses(driver) == [("agent_down", "resolved", 60)]


def test_an_agent_never_seen_is_not_reported_down() -> None:
    driver = Driver(EvaluatorConfig())
    driver.at(10_000)
    assert driver.alerts == []
    assert driver.engine.next_deadline() is None


def test_probe_critical_is_service_down_and_a_database_check_is_database_unreachable() -> None:
    driver = Driver(EvaluatorConfig())
    driver.at(
        0,
        health("probe01", "probe", "api", "critical"),
        health("probe01", "probe", "postgres-main", "critical"),
    )
    driver.at(
        30,
        health("probe01", "probe", "api", "critical"),
        health("probe01", "probe", "postgres-main", "critical"),
    )
    driver.at(
        60,
        health("probe01", "probe", "api", "critical"),
        health("probe01", "probe", "postgres-main", "critical"),
    )
    firing = {a.rule: a for a in driver.alerts if a.status == "firing"}
    assert set(firing) == {"service_down", "database_unreachable"}
    assert firing["service_down"].labels["check"] == "api"
    assert firing["service_down"].summary == "api is down"
    assert firing["database_unreachable"].summary == "database unreachable: postgres-main"
    assert firing["database_unreachable"].severity == "critical"


def test_the_agents_own_collector_health_is_not_a_service() -> None:
    driver = Driver(EvaluatorConfig())
    driver.at(0, health("probe01", "probe", "_collector", "critical"))
    driver.at(120, health("probe01", "probe", "_collector", "critical"))
    assert driver.alerts == []


def test_a_deployed_container_is_an_info_alert_that_resolves_by_itself_without_a_resolved_message() -> None:
    driver = Driver(EvaluatorConfig())
    event = health("web01", "container", "api", "ok", event="deployed", labels={"image": "api:2.0"})
    driver.at(0, event)
    driver.at(30)
    alerts, notifications = driver.take()
    assert [(a.rule, a.severity, a.status, a.summary) for a in alerts] == [
        ("container_deployed", "info", "firing", "api on web01 deployed with image api:2.0")
    ]
    assert [n.status for n in notifications] == ["firing"]
    driver.at(4000)
    alerts, notifications = driver.take()
    assert [(a.rule, a.status, a.ends_at) for a in alerts] == [("container_deployed", "resolved", 600)]
    assert notifications == []


def test_an_unhealthy_container_warns_after_a_minute_and_docker_itself_is_critical() -> None:
    driver = Driver(EvaluatorConfig())
    for t in (0, 30, 60):
        driver.at(
            t,
            health(
                "web01",
                "container",
                "api",
                "critical",
                labels={"image": "api:1"},
                detail="running but unhealthy",
            ),
            health("web01", "container", "docker", "critical", detail="Docker engine unreachable: refused"),
        )
    assert [(a.rule, a.severity, a.status, a.summary) for a in driver.alerts if a.status == "firing"] == [
        ("container_unhealthy", "warning", "firing", "container api on web01: running but unhealthy"),
        ("docker_unreachable", "critical", "firing", "Docker engine on web01 unreachable"),
    ]
    driver.take()
    driver.at(70, health("web01", "container", "api", "ok"))
    assert [(a.rule, a.status) for a in driver.alerts] == [("container_unhealthy", "resolved")]


def test_user_rules_override_defaults_by_name_and_defaults_can_be_turned_off() -> None:
    override = Rule(name="cpu_usage_high", metric="cpu.percent", threshold=50, severity="critical")
    driver = Driver(EvaluatorConfig(rules=[override]))
    driver.at(0, metrics("web01", {"cpu.percent": 60, "mem.percent": 95, "disk.percent": 99}))
    assert {(a.rule, a.severity, a.status) for a in driver.alerts} == {
        ("cpu_usage_high", "critical", "firing"),
        ("memory_usage_high", "warning", "pending"),
        ("disk_usage_high", "critical", "pending"),
    }
    quiet = Driver(EvaluatorConfig(default_rules=False))
    quiet.at(0, metrics("web01", {"cpu.percent": 99, "disk.percent": 99}), heartbeat("web01"))
    quiet.at(1000)
    assert quiet.alerts == []


def test_a_template_naming_a_missing_label_falls_back_to_plain_text_and_is_counted() -> None:
    rule = Rule(
        name="disk",
        metric="disk.percent",
        threshold=85,
        summary="{mount} is full",
        labels={"team": "{owner}"},
    )
    driver = Driver(only_rules(rule))
    driver.at(0, metrics("web01", {"disk.percent": 90}))
    (alert,) = driver.alerts
    assert alert.summary == "disk on web01: value 90.0"
    assert alert.labels["team"] == ""
    stats = driver.engine.stats
    assert stats.template_errors == {"disk": 2}
    assert stats.unevaluable["disk"] == {
        "missing label 'owner' in label team": 1,
        "missing label 'mount' in summary": 1,
    }


def test_stats_count_events_and_samples() -> None:
    driver = Driver(only_rules(CPU))
    driver.at(0, metrics("a", {"cpu.percent": 1, "mem.percent": 2}), heartbeat("a"))
    assert (driver.engine.stats.events, driver.engine.stats.samples) == (2, 2)


def flap(driver: Driver, start: float, count: int, step: float = 10) -> float:
    """Alternate breaching and normal samples `count` times; returns the next time."""
    t = start
    for i in range(count):
        driver.at(t, metrics("web01", {"cpu.percent": 95 if i % 2 == 0 else 10}))
        t += step
    return t


def test_a_flapping_series_is_notified_once_as_flapping_then_quiet_until_stable() -> None:
    rule = Rule(name="cpu", metric="cpu.percent", threshold=90)
    driver = Driver(only_rules(rule))
    t = flap(driver, 0, 40)
    alerts, notifications = driver.take()
    flagged = [a for a in alerts if a.flapping]
    assert flagged, "the alerts say the series flaps"
    assert not alerts[0].flapping
    flapping_notes = [n for n in notifications if any(a.flapping for a in n.alerts)]
    assert len(flapping_notes) == 1
    after = notifications.index(flapping_notes[0])
    assert notifications[after + 1 :] == [], "quiet while flapping"
    # stable (normal) for a while: flapping ends, the resolution is told once
    for _ in range(30):
        driver.at(t, metrics("web01", {"cpu.percent": 10}))
        t += 10
    driver.at(t + 600)
    alerts, notifications = driver.take()
    assert [n.status for n in notifications] == ["resolved"]
    assert not notifications[0].alerts[0].flapping
    assert driver.engine.active(t) == []


def test_nagios_flapping_needs_more_than_thirty_percent_changes() -> None:
    rule = Rule(name="cpu", metric="cpu.percent", threshold=90)
    # episodes out of reach: only the Nagios percentage can call it flapping
    driver = Driver(only_rules(rule, flapping=FlappingConfig(episodes=100)))
    t = 0.0
    for cycle in range(10):  # one change in 5 results: about 20%, never flapping
        for i in range(5):
            driver.at(t, metrics("web01", {"cpu.percent": 95 if (cycle % 2 == 0) else 10}))
            t += 10
            del i
    assert driver.alerts
    assert not any(a.flapping for a in driver.alerts)


def test_fingerprints_are_stable_across_engines_and_differ_per_series() -> None:
    rule = Rule(name="disk", metric="disk.percent", threshold=85)
    first, second = Engine(only_rules(rule), 0), Engine(only_rules(rule), 0)
    batch = metrics("web01", [("disk.percent", 90, {"mount": "/", "device": "sda1"})])
    reordered = metrics("web01", [("disk.percent", 90, {"device": "sda1", "mount": "/"})])
    first.observe(batch, 0)
    second.observe(reordered, 0)
    (a,), (b,) = first.drain().alerts, second.drain().alerts
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 16
    first.observe(metrics("web02", [("disk.percent", 90, {"mount": "/", "device": "sda1"})]), 1)
    assert first.drain().alerts[0].fingerprint != a.fingerprint


def test_an_agent_named_to_pose_as_another_series_gets_a_fingerprint_of_its_own() -> None:
    """A NUL or `=` in a name must not let one series take another's place: resolving it would
    tell the real group "resolved" while its disk stays full."""
    real = fingerprint("disk", ("web01", "host", (("mount", "/"),)))
    assert real == hashlib.sha256(b"disk\x00web01\x00host\x00mount=/").hexdigest()[:16], (
        "the ids of ordinary series are what they always were (acks and saved states name them)"
    )
    posing = [
        ("web01", "host\x00mount=/", ()),
        ("web01\x00host", "mount=/", ()),
        ("web01", "host", (("mount=/", ""),)),
    ]
    assert real not in {fingerprint("disk", key) for key in posing}
    driver = Driver(only_rules(Rule(name="disk", metric="disk.percent", threshold=85)))
    for t in range(0, 120, 10):
        driver.at(t, metrics("web01", [("disk.percent", 95, {"mount": "/"})]))
        driver.at(t, metrics("web01", [("disk.percent", 95 if t < 60 else 5, {})], agent="host\x00mount=/"))
    assert [a.labels.get("mount") for a in driver.engine.active(120) if a.state == "firing"] == ["/"]


def test_events_of_unrelated_kinds_and_names_change_nothing() -> None:
    driver = Driver(only_rules(CPU))
    driver.at(
        0, metrics("web01", {"net.recv_bytes_per_second": 1e12}), health("web01", "probe", "api", "critical")
    )
    assert driver.alerts == []
    assert driver.engine.next_deadline() is None


def test_extra_labels_and_the_runbook_url_are_on_the_alert() -> None:
    rule = Rule(
        name="disk",
        metric="disk.percent",
        threshold=85,
        labels={"team": "storage", "where": "{host}:{mount}"},
        runbook_url="https://runbook.example/disk",
    )
    driver = Driver(only_rules(rule))
    driver.at(0, metrics("web01", [("disk.percent", 90, {"mount": "/data"})]))
    (alert,) = driver.alerts
    assert alert.labels == {
        "mount": "/data",
        "host": "web01",
        "agent": "host",
        "team": "storage",
        "where": "web01:/data",
        "runbook_url": "https://runbook.example/disk",
        "rule": "disk",
        "severity": "warning",
    }
