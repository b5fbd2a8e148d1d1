"""Partitions without a server: which host goes where, the config they allow, how a process's
share of them moves, and what a partition keeps of a state saved before a change of partitions."""

from __future__ import annotations

import msgspec
import pytest

from bus.partitions import host_partition, original_subject, partition_of, partition_stream_config
from evaluator.config import (
    DefaultRoute,
    EvaluatorConfig,
    InhibitRule,
    MaintenanceWindow,
    Matcher,
    Route,
    Rule,
)
from evaluator.engine import Engine
from evaluator.grouping import group_host, group_key
from evaluator.partitions import partition_config
from evaluator.share import Share
from evaluator.testing import Driver, heartbeat, metrics


def test_partition_of_is_fnv1a_of_the_host_token_as_the_server_computes_it() -> None:
    # nats-server's partition(2,1) put these hosts so (tests/integration/test_evaluator_partitions.py
    # checks the server itself); FNV-1a 32 of "a" is 0xe40c292c
    assert partition_of("a", 1 << 32) == 0xE40C292C
    assert [partition_of(f"web-{n}", 2) for n in range(4)] == [0, 1, 0, 1]
    spread = {partition_of(f"host{n:03d}", 4) for n in range(100)}
    assert spread == {0, 1, 2, 3}


def test_each_family_is_mirrored_with_its_subjects_renamed_by_the_host_wildcard() -> None:
    dests = {}
    for family in ("metrics", "health", "heartbeat"):
        config = partition_stream_config("jarvis", family, 3, start=7)
        assert config.mirror is not None
        assert config.name == f"JARVIS_PARTITION_{family.upper()}"
        assert (config.mirror.name, config.mirror.opt_start_seq) == (f"JARVIS_{family.upper()}", 7)
        dests[family] = [t.dest for t in config.mirror.subject_transforms or []]
    assert dests == {
        "metrics": ["jarvis.partition.{{partition(3,1)}}.metrics.{{wildcard(1)}}.{{wildcard(2)}}"],
        "health": [
            "jarvis.partition.{{partition(3,1)}}.health.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}"
        ],
        "heartbeat": ["jarvis.partition.{{partition(3,1)}}.heartbeat.{{wildcard(1)}}.{{wildcard(2)}}"],
    }
    with pytest.raises(ValueError, match="at least 2"):
        partition_stream_config("jarvis", "metrics", 1)


def test_original_subject_gives_back_what_the_agent_published() -> None:
    assert original_subject("a.b", "a.b.partition.3.health.web-1.probe.api") == "a.b.health.web-1.probe.api"
    assert original_subject("jarvis", "jarvis.metrics.web-1.host") == "jarvis.metrics.web-1.host"


def test_partitions_refuse_routes_and_inhibitions_that_span_hosts() -> None:
    assert EvaluatorConfig(partitions=4).partitions == 4  # the defaults group and inhibit by host
    with pytest.raises(ValueError, match="route 'default' must have host in group_by"):
        EvaluatorConfig(partitions=2, default_route=DefaultRoute(group_by=["rule"]))


def test_each_problem_across_hosts_is_named() -> None:
    route = Route(name="db", receiver="#db", group_by=["rule"])
    inhibit = InhibitRule(
        source_matchers=[Matcher(name="rule", value="site_down")], target_matchers=[], equal=["site"]
    )
    relabel = Rule(name="cpu", metric="cpu.percent", threshold=90, labels={"host": "cluster-{agent}"})
    with pytest.raises(ValueError, match="may span hosts") as info:
        EvaluatorConfig(partitions=2, routes=[route], inhibit_rules=[inhibit], rules=[relabel])
    message = str(info.value)
    assert "partitions = 2 evaluates each host on one partition" in message
    assert "route 'db' must have host in group_by" in message
    assert "inhibit_rules[0] must have host in equal" in message
    assert "rule 'cpu' must not set the host label" in message
    EvaluatorConfig(routes=[route], inhibit_rules=[inhibit], rules=[relabel])  # one evaluator may


def test_partitions_are_bounded() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"partitions": 0}, EvaluatorConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"partitions": 65}, EvaluatorConfig)


def test_only_partition_0_announces_maintenance_windows() -> None:
    window = MaintenanceWindow(name="backup", start="01:00", end="02:00")
    config = EvaluatorConfig(partitions=3, maintenance_windows=[window])
    assert partition_config(config, 0).maintenance_windows[0].announce
    assert not partition_config(config, 1).maintenance_windows[0].announce
    assert partition_config(config, 2).maintenance_windows[0].name == "backup"  # it still silences


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_process_takes_a_free_partition_at_once_only_below_its_share() -> None:
    share = Share(4, clock=Clock(), ttl=15.0)
    share.peers = 2
    share.held = {0}
    assert share.fair() == 2
    assert share.may_take(free_for=0.0)
    share.held = {0, 1}
    assert not share.may_take(free_for=14.9)  # the other process should take it
    assert share.may_take(free_for=15.0)  # nobody did: better here than nowhere


def test_a_process_above_its_share_hands_over_its_last_partition() -> None:
    share = Share(3, clock=Clock())
    share.held = {0, 1, 2}
    assert not share.hand_over(2)  # alone: all three are its share
    share.peers = 2  # another evaluator came
    assert share.hand_over(2)
    assert not share.hand_over(0)
    assert not share.hand_over(1)
    share.held = {0, 1}
    assert not share.hand_over(1)  # ceil(3 / 2) = 2: its share now


def memory_alerts(hosts: list[str], config: EvaluatorConfig) -> Driver:
    """An engine that saw `hosts` beat and run out of memory for 15 minutes (firing, notified)."""
    driver = Driver(config, start=0)
    for t in range(0, 900, 10):
        driver.at(t, *[heartbeat(h) for h in hosts], *[metrics(h, {"mem.percent": 99}) for h in hosts])
    return driver


def hosts_of(engine: Engine, now: float) -> set[str]:
    return {a.labels["host"] for a in engine.active(now)}


def test_partitions_made_from_one_evaluator_take_only_their_own_hosts() -> None:
    """Hosts of other partitions are left out: their heartbeats come there now, and their silence
    here must not report them down."""
    config = EvaluatorConfig(partitions=2)
    hosts = [f"web-{n}" for n in range(4)]
    driver = memory_alerts(hosts, config)
    assert hosts_of(driver.engine, driver.now) == set(hosts)

    def ours(host: str) -> bool:
        return host_partition(host, 2) == 1

    taken = Engine.take_over(config, [(driver.engine.snapshot(), [])], driver.now, ours)
    assert hosts_of(taken, driver.now) == {"web-1", "web-3"}
    taken.tick(driver.now + 3600)
    down = [a for a in taken.drain().alerts if a.rule == "agent_down"]
    assert {a.labels["host"] for a in down} <= {"web-1", "web-3"}


def test_one_evaluator_made_from_partitions_takes_every_host_and_group() -> None:
    """Back from two partitions to one: both states merged, nothing notified again."""
    config = EvaluatorConfig()
    first, second = memory_alerts(["web-0", "web-2"], config), memory_alerts(["web-1", "web-3"], config)
    sent = {n.id for d in (first, second) for n in d.notifications}
    assert sent, "the memory alerts were notified before the change"
    saved: list[tuple[bytes, list[bytes]]] = [(d.engine.snapshot(), []) for d in (first, second)]
    merged = Engine.take_over(config, saved, first.now, lambda host: True)
    assert hosts_of(merged, first.now) == {"web-0", "web-1", "web-2", "web-3"}
    driver = first
    driver.take()
    driver.engine = merged
    hosts = ["web-0", "web-1", "web-2", "web-3"]
    for t in range(900, 1500, 10):  # memory back to normal everywhere
        driver.at(t, *[heartbeat(h) for h in hosts], *[metrics(h, {"mem.percent": 10}) for h in hosts])
    _, notifications = driver.take()
    assert all(n.status == "resolved" for n in notifications), "a group notified as new after the merge"
    told = {a.labels["host"] for n in notifications for a in n.alerts}
    assert told == set(hosts), "a group of either partition was lost in the merge"
    assert not sent & {n.id for n in notifications}


def test_partitions_one_to_two_and_back_keep_a_group_notified_meanwhile_and_its_notification_ids() -> None:
    """A group left empty by a resolve belongs to its host's partition only: had every partition
    kept it, the stale copy could win the merge back, and the resolve of the incident notified
    meanwhile would never be sent (or be sent under an id already used, which JetStream drops)."""
    config = EvaluatorConfig()
    hosts = ["web-1"]
    driver = memory_alerts(hosts, config)
    for t in range(900, 1200, 10):  # resolved and notified: its group stays, empty, for a while
        driver.at(t, heartbeat("web-1"), metrics("web-1", {"mem.percent": 10}))
    assert [n.status for n in driver.notifications] == ["firing", "resolved"]
    saved: list[tuple[bytes, list[bytes]]] = [(driver.engine.snapshot(), [])]
    mine = host_partition("web-1", 2)
    own = Driver(config, driver.now)
    own.engine = Engine.take_over(config, saved, driver.now, lambda h: host_partition(h, 2) == mine)
    other = Engine.take_over(config, saved, driver.now, lambda h: host_partition(h, 2) != mine)
    assert not other.dispatcher.groups, "the other partition keeps no copy of web-1's group"
    other.dispatcher.touch_all(driver.now + 5000)  # a silence changed there: a later flush time
    other.tick(driver.now + 6000)
    for t in range(1200, 2100, 10):  # the next incident, in web-1's own partition
        own.at(t, heartbeat("web-1"), metrics("web-1", {"mem.percent": 99}))
    assert [n.status for n in own.notifications] == ["firing"]
    back = Driver(config, own.now)
    back.engine = Engine.take_over(
        config, [(own.engine.snapshot(), []), (other.snapshot(), [])], own.now, lambda h: True
    )
    for t in range(2100, 2400, 10):
        back.at(t, heartbeat("web-1"), metrics("web-1", {"mem.percent": 10}))
    assert [n.status for n in back.notifications] == ["resolved"], "the incident's end was not told"
    used = {n.id for n in (*driver.notifications, *own.notifications)}
    assert not used & {n.id for n in back.notifications}, "an id already used: JetStream drops it"


@pytest.mark.parametrize(
    ("labels", "host"),
    [
        ({"host": "web01"}, "web01"),
        ({"host": 'we"b,host="x'}, 'we"b,host="x'),
        ({"app": 'x,host="evil"', "host": "db01"}, "db01"),
        ({"agent": "a,host=", "host": "db01"}, "db01"),
        ({"agent": "{host=", "host": "db01"}, "db01"),
        ({"host": ""}, ""),
    ],
)
def test_the_host_of_a_group_key_is_read_back_whatever_its_labels_hold(
    labels: dict[str, str], host: str
) -> None:
    route = Route(name="default", receiver="#alerts", group_by=sorted(labels))
    key, _ = group_key(route, labels)
    assert group_host(key) == host


def test_a_group_key_without_a_host_has_none() -> None:
    key, _ = group_key(Route(name="default", receiver="#alerts", group_by=["cluster"]), {"cluster": "eu"})
    assert group_host(key) is None


def test_a_window_open_across_a_split_and_back_is_announced_by_one_partition_and_again_next_day() -> None:
    """Only the partition that announces keeps the announcement: a copy elsewhere would stand
    firing forever, remind under ids already used, and after the merge back hide the next day's."""
    window = MaintenanceWindow(name="backup", start="01:00", end="02:00", timezone="UTC")
    config = EvaluatorConfig(partitions=2, maintenance_windows=[window])
    single = msgspec.structs.replace(config, partitions=1)
    midnight = 1764633600.0  # 2025-12-02 00:00 UTC
    one = Driver(single, midnight)
    for t in range(0, 5400, 60):  # the window opened at 01:00 and is announced
        one.at(midnight + t, heartbeat("web-0", interval=60))
    saved: list[tuple[bytes, list[bytes]]] = [(one.engine.snapshot(), [])]
    parts = []
    for index in range(2):

        def ours(host: str, index: int = index) -> bool:
            return host_partition(host, 2) == index

        part = Driver(partition_config(config, index), one.now)
        part.engine = Engine.take_over(partition_config(config, index), saved, one.now, ours)
        parts.append(part)
    assert not [a for a in parts[1].engine.active(one.now) if a.rule == "maintenance"]
    for t in range(5460, 3 * 3600, 60):
        for index, part in enumerate(parts):
            beats = [heartbeat("web-0", interval=60)] if host_partition("web-0", 2) == index else []
            part.at(midnight + t, *beats)
    told = [(n.status, n.id) for part in parts for n in part.notifications]
    assert [status for status, _ in told] == ["resolved"], "the end announced once, by partition 0"
    back = Driver(single, parts[0].now)
    back.engine = Engine.take_over(
        single, [(p.engine.snapshot(), []) for p in parts], back.now, lambda h: True
    )
    for t in range(3 * 3600, 27 * 3600, 60):
        back.at(midnight + t, heartbeat("web-0", interval=60))
    assert [n.status for n in back.notifications] == ["firing", "resolved"], "the next day's window"
    used = {n.id for n in (*one.notifications, *parts[0].notifications, *parts[1].notifications)}
    assert not used & {n.id for n in back.notifications}


def test_a_merge_missing_a_lost_state_never_repeats_the_notification_ids_that_state_used() -> None:
    config = EvaluatorConfig()
    driver = memory_alerts(["web-1"], config)
    for t in range(900, 1200, 10):
        driver.at(t, heartbeat("web-1"), metrics("web-1", {"mem.percent": 10}))
    saved: list[tuple[bytes, list[bytes]]] = [(driver.engine.snapshot(), [])]
    mine = host_partition("web-1", 2)
    own = Driver(config, driver.now)
    own.engine = Engine.take_over(config, saved, driver.now, lambda h: host_partition(h, 2) == mine)
    other = Engine.take_over(config, saved, driver.now, lambda h: host_partition(h, 2) != mine)
    for t in range(1200, 2100, 10):  # web-1's next incident, told by its partition only
        own.at(t, heartbeat("web-1"), metrics("web-1", {"mem.percent": 99}))
    assert own.notifications
    back = Driver(config, own.now)  # web-1's partition lost its state: only the other one's is left
    back.engine = Engine.take_over(config, [(other.snapshot(), [])], own.now, lambda h: True, complete=False)
    for t in range(2100, 2400, 10):
        back.at(t, heartbeat("web-1"), metrics("web-1", {"mem.percent": 10}))
    for t in range(2400, 3300, 10):
        back.at(t, heartbeat("web-1"), metrics("web-1", {"mem.percent": 99}))
    assert back.notifications
    used = {n.id for n in (*driver.notifications, *own.notifications)}
    assert not used & {n.id for n in back.notifications}
