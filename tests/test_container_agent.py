"""The container agent's pure parts: state and status, stats math, events, log matching, config."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest

from agents.container import (
    METRICS,
    ContainerAgentConfig,
    LogWatchConfig,
)
from agents.container_events import Deployments, event_check
from agents.container_logs import LineSplitter, LogTally, clean_line, is_watched
from agents.container_state import (
    ContainerInfo,
    container_status,
    fleet_counts,
    parse_inspect,
    parse_timestamp,
)
from agents.container_stats import (
    BLKIO_READ,
    BLKIO_WRITE,
    NET_RECV,
    NET_SENT,
    StatsMeter,
    cpu_percent,
    memory_usage,
)
from agents.runner import AgentConfig, AgentRunner, Check, Collection
from bus.events import HealthEvent
from bus.subjects import sanitize_token
from bus.testing import RecordingPublisher
from bus.units import dec_hook

# declarations and config -----------------------------------------------------------------------


def test_declared_metric_names_are_dotted_lower_case_with_unit_and_meaning() -> None:
    for name, spec in METRICS.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+", name), name
        assert spec.unit
        assert spec.description
        assert spec.labels in ((), ("container", "image", "service", "project"))


def test_config_defaults_need_no_file_and_parse_from_toml_values() -> None:
    config = msgspec.convert(
        {"interval": "30s", "retry_max": "1m", "logs": {"containers": ["backend"], "errors": ["FATAL"]}},
        ContainerAgentConfig,
        dec_hook=dec_hook,
    )
    assert config.retry_max.seconds == 60
    assert config.logs.errors == ["FATAL"]
    assert ContainerAgentConfig().logs.warnings == ["WARN", "WARNING"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"logs": {"errors": ["ERROR("]}}, "errors: 'ERROR(' is not a regular expression"),
        ({"concurrency": 0}, "Expected `int` >= 1"),
        ({"retry_max": "100ms"}, "retry_max must be at least"),
        ({"logs": {"pattern": ["x"]}}, "unknown field `pattern`"),
    ],
)
def test_bad_config_is_refused_with_a_message_naming_the_problem(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(raw, ContainerAgentConfig, dec_hook=dec_hook)


# state and status ------------------------------------------------------------------------------


def inspect_json(**state: Any) -> dict[str, Any]:
    return {
        "Id": "0123456789abcdef" * 4,
        "Name": "/backend",
        "RestartCount": 2,
        "State": {
            "Status": "running",
            "ExitCode": 0,
            "OOMKilled": False,
            "StartedAt": "2026-11-26T15:13:29.184663675Z",
            "Health": {"Status": "healthy"},
            **state,
        },
        "Config": {
            "Image": "jarvis/backend:1.4",
            "Labels": {"com.docker.compose.service": "api", "com.docker.compose.project": "jarvis"},
        },
        "HostConfig": {"RestartPolicy": {"Name": "unless-stopped"}},
    }


def test_parse_inspect_reads_state_health_restarts_image_and_compose_labels() -> None:
    info = parse_inspect(inspect_json())

    assert (info.name, info.image, info.state, info.health) == (
        "backend",
        "jarvis/backend:1.4",
        "running",
        "healthy",
    )
    assert info.restart_count == 2
    assert info.restart_policy == "unless-stopped"
    assert info.started_at == pytest.approx(1795706009.184663)
    assert info.sample_labels() == {
        "container": "backend",
        "image": "jarvis/backend:1.4",
        "service": "api",
        "project": "jarvis",
    }
    assert info.check_labels()["id"] == "0123456789ab"


def test_parse_inspect_of_a_sparse_document_gives_defaults_not_an_exception() -> None:
    info = parse_inspect({"Id": "abc", "State": {"Health": None}, "Config": {"Labels": None}})

    assert (info.name, info.state, info.health, info.started_at) == ("", "unknown", "none", None)


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00Z", "yesterday", None, 17])
def test_zero_or_garbage_timestamps_parse_to_none(text: object) -> None:
    assert parse_timestamp(text) is None


def info(state: str = "running", health: str = "none", exit_code: int = 0, **more: Any) -> ContainerInfo:
    return ContainerInfo(
        id="c" * 64, name="app", image="app:1", state=state, health=health, exit_code=exit_code, **more
    )


@pytest.mark.parametrize(
    ("container", "status", "words"),
    [
        (info(), "ok", "running"),
        (info(health="healthy"), "ok", "running, healthy"),
        (info(health="starting"), "warning", "starting"),
        (info(health="unhealthy"), "critical", "unhealthy"),
        (info("restarting", exit_code=3, restart_count=4), "critical", "exit code 3, restarted 4 times"),
        (info("exited", exit_code=137, oom_killed=True), "critical", "lack of memory"),
        (info("exited", exit_code=0, restart_policy="no"), "ok", "completed"),
        (info("exited", exit_code=0, restart_policy="always"), "critical", "exited with code 0"),
        (info("exited", exit_code=137, restart_policy="no"), "critical", "exited with code 137"),
        (info("dead"), "critical", "dead"),
        (info("paused"), "warning", "paused"),
        (info("created"), "warning", "never started"),
    ],
)
def test_container_status_follows_state_health_exit_code_and_restart_policy(
    container: ContainerInfo, status: str, words: str
) -> None:
    got, detail = container_status(container)
    assert got == status
    assert words in detail


def test_fleet_counts_running_paused_restarting_stopped_and_unhealthy() -> None:
    fleet = [
        info(),
        info(health="unhealthy"),
        info("paused"),
        info("restarting"),
        info("exited", health="unhealthy"),  # Docker keeps a stopped one's last verdict: not counted
        info("created"),
    ]

    assert fleet_counts(fleet) == {
        "containers.running": 2,
        "containers.paused": 1,
        "containers.restarting": 1,
        "containers.stopped": 2,
        "containers.unhealthy": 1,
    }


# stats -----------------------------------------------------------------------------------------


def cpu(total: int, system: int, cores: int = 2) -> dict[str, Any]:
    return {"cpu_usage": {"total_usage": total, "percpu_usage": [0] * cores}, "system_cpu_usage": system}


def test_cpu_percent_is_docker_stats_formula_with_100_per_core() -> None:
    # 0.5 s of CPU time over 1 s of wall time on 2 cores: the system counter moved 2 s
    now = {**cpu(1_500_000_000, 12_000_000_000), "online_cpus": 2}
    assert cpu_percent(now, cpu(1_000_000_000, 10_000_000_000)) == 50.0
    # online_cpus missing: the per-cpu list says how many
    assert (
        cpu_percent(cpu(3_000_000_000, 12_000_000_000, cores=4), cpu(1_000_000_000, 10_000_000_000)) == 400.0
    )


def test_cpu_percent_is_none_without_a_usable_previous_reading() -> None:
    assert cpu_percent(cpu(10, 100), {"cpu_usage": {"total_usage": 0}}) is None  # one-shot: no precpu
    assert cpu_percent(cpu(5, 200), cpu(10, 100)) is None  # counter went back: restarted
    assert cpu_percent(cpu(10, 100), cpu(5, 100)) is None  # no system time passed


@pytest.mark.parametrize(
    ("stats", "used"),
    [
        ({"usage": 100, "limit": 400, "stats": {"total_inactive_file": 30}}, 70.0),  # cgroup v1
        ({"usage": 100, "limit": 400, "stats": {"inactive_file": 40}}, 60.0),  # cgroup v2
        ({"usage": 100, "limit": 400, "stats": {"inactive_file": 200}}, 100.0),  # nonsense cache
    ],
)
def test_memory_used_leaves_out_the_inactive_page_cache(stats: dict[str, Any], used: float) -> None:
    assert memory_usage(stats) == (used, 400.0)


def test_memory_of_a_stopped_container_is_none() -> None:
    assert memory_usage({}) is None


def stats_json(
    read: str, total: int, system: int, rx: int, tx: int, disk_read: int, op: str = "Read"
) -> dict[str, Any]:
    return {
        "read": read,
        "cpu_stats": {**cpu(total, system), "online_cpus": 2},
        "precpu_stats": {"cpu_usage": {"total_usage": 0}},
        "memory_stats": {"usage": 1000, "limit": 4000, "stats": {"total_inactive_file": 0}},
        "pids_stats": {"current": 3},
        "networks": {"eth0": {"rx_bytes": rx, "tx_bytes": tx}, "eth1": {"rx_bytes": rx, "tx_bytes": 0}},
        "blkio_stats": {
            "io_service_bytes_recursive": [{"op": op, "value": disk_read}, {"op": "Write", "value": 7}]
        },
    }


def test_stats_meter_gives_cpu_and_io_rates_from_the_second_reading_on() -> None:
    meter = StatsMeter()
    first = meter.update(
        "c1", stats_json("2026-01-01T00:00:00Z", 1_000_000_000, 10_000_000_000, 1000, 500, 0)
    )
    assert "container.cpu.percent" not in first
    assert NET_RECV not in first
    assert first["container.mem.percent"] == 25.0
    assert first["container.pids"] == 3

    second = meter.update(
        "c1",
        stats_json("2026-01-01T00:00:10.5Z", 2_000_000_000, 30_000_000_000, 11500, 1500, 2100, op="read"),
    )
    assert second["container.cpu.percent"] == 10.0
    assert second[NET_RECV] == 2000.0  # both interfaces: 2 x 10500 bytes in 10.5 s
    assert second[NET_SENT] == pytest.approx(1000 / 10.5, abs=0.1)
    assert second[BLKIO_READ] == 200.0  # cgroup v2 spells the op in lower case
    assert second[BLKIO_WRITE] == 0.0


def test_stats_meter_skips_rates_of_counters_that_went_backwards() -> None:
    meter = StatsMeter()
    meter.update("c1", stats_json("2026-01-01T00:00:00Z", 5_000_000_000, 10_000_000_000, 9000, 9000, 9000))
    after_restart = meter.update("c1", stats_json("2026-01-01T00:00:10Z", 10, 20_000_000_000, 10, 10, 10))

    assert not {NET_RECV, NET_SENT, BLKIO_READ, "container.cpu.percent"} & after_restart.keys()


def test_stats_meter_forgets_containers_that_are_gone() -> None:
    meter = StatsMeter()
    meter.update("gone", stats_json("2026-01-01T00:00:00Z", 1, 1, 1, 1, 1))
    meter.retain(["other"])

    later = meter.update("gone", stats_json("2026-01-01T00:00:10Z", 2, 2, 2, 2, 2))
    assert NET_RECV not in later  # no baseline left: a fresh start


# logs ------------------------------------------------------------------------------------------


def tally(keep: int = 3, line_length: int = 200, **more: Any) -> LogTally:
    config = LogWatchConfig(keep_lines=keep, line_length=line_length, **more)
    return LogTally.of(config, now=0.0)


def test_lines_are_counted_as_errors_before_warnings_and_the_last_few_kept() -> None:
    counter = tally(keep=2)
    for line in [
        "INFO ok",
        "WARNING disk",
        "ERROR db down WARN",
        "Traceback (most recent call last):",
        "CRITICAL x",
    ]:
        counter.add(line, now=1.0)

    summary = counter.drain(now=2.0, wall=100.0)
    assert (summary.errors, summary.warnings) == (3, 1)
    assert summary.quoted == ["Traceback (most recent call last):", "CRITICAL x"]
    assert summary.detail().startswith("3 error and 1 warning lines since the last cycle\n")
    assert [(line.level, line.text) for line in summary.lines] == [
        ("warning", "WARNING disk"),
        ("error", "ERROR db down WARN"),
        ("error", "Traceback (most recent call last):"),
        ("error", "CRITICAL x"),
    ]
    again = counter.drain(now=3.0, wall=101.0)  # per interval: drained counts start afresh
    assert (again.errors, again.warnings, again.lines) == (0, 0, [])


def test_quoted_lines_lose_control_characters_and_credentials_and_are_cut() -> None:
    line = "\x1b[31mERROR\x1b[0m cannot reach postgres://jarvis:s3cret@db:5432/app\x07 " + "x" * 300

    cleaned = clean_line(line, 80)
    assert cleaned.startswith("ERROR cannot reach postgres://***@db:5432/app ")
    assert "s3cret" not in cleaned
    assert "\x1b" not in cleaned
    assert "\x07" not in cleaned
    assert len(cleaned) == 80
    assert cleaned.endswith("…")


def test_line_splitter_joins_chunks_and_bounds_a_line_without_newline() -> None:
    splitter = LineSplitter(limit=10)
    assert splitter.feed("ERR") == []
    assert splitter.feed("OR one\r\nWA") == ["ERROR one"]
    assert splitter.feed("RN " + "y" * 20) == ["WARN yyyyy"]  # cut at the limit
    assert splitter.feed("z" * 1000) == []  # the rest of that line is skipped, not held
    assert splitter.feed("zz\nlast") == []
    assert splitter.flush() == ["last"]


def test_containers_are_watched_by_name_pattern_or_label_selector() -> None:
    names, selectors = ["backend", "jarvis-*"], ["jarvis.logs=true", "logging"]
    assert is_watched("backend", {}, names, selectors)
    assert is_watched("jarvis-worker", {}, names, selectors)
    assert is_watched("db", {"jarvis.logs": "true"}, names, selectors)
    assert is_watched("db", {"logging": ""}, names, selectors)
    assert not is_watched("db", {"jarvis.logs": "false"}, names, selectors)
    assert not is_watched("backend-old", {}, names, selectors)


# events ----------------------------------------------------------------------------------------


def event(
    action: str, name: str = "backend", image: str = "app:1", cid: str = "a" * 64, **attrs: str
) -> dict[str, Any]:
    return {
        "Type": "container",
        "Action": action,
        "Actor": {"ID": cid, "Attributes": {"name": name, "image": image, **attrs}},
        "timeNano": 1,
    }


@pytest.mark.parametrize(
    ("docker_event", "status", "detail"),
    [
        (event("die", exitCode="3"), "critical", "died with exit code 3"),
        (event("die", exitCode="0"), "warning", "died with exit code 0"),
        (event("oom"), "critical", "out of memory"),
        (event("health_status: unhealthy"), "critical", "health check: unhealthy"),
        (event("health_status: healthy"), "ok", "health check: healthy"),
        (event("health_status", health_status="starting"), "warning", "health check: starting"),
        (event("start"), "ok", "started"),
        (event("restart"), "warning", "restarted"),
        (event("stop"), "critical", "stopped"),
        (event("destroy"), "ok", "removed"),
    ],
)
def test_each_container_event_becomes_a_health_event_at_once(
    docker_event: dict[str, Any], status: str, detail: str
) -> None:
    check = event_check(docker_event, Deployments())
    assert check is not None
    assert (check.target, check.status) == ("backend", status)
    assert detail in check.detail
    assert check.event == docker_event["Action"].partition(":")[0]
    assert check.labels["image"] == "app:1"
    assert check.labels["id"] == "a" * 12


def test_events_that_are_not_news_are_ignored() -> None:
    deployments = Deployments()
    assert event_check(event("exec_start: sh"), deployments) is None
    assert event_check({**event("start"), "Type": "network"}, deployments) is None
    assert event_check(event("create"), deployments) is None  # first sight of a name: no baseline
    assert event_check({"Action": "die"}, deployments) is None  # malformed: no actor
    assert event_check({"Action": "die", "Actor": "x"}, deployments) is None
    assert event_check({"Action": "die", "Actor": {"Attributes": ["name"]}}, deployments) is None


def test_a_container_recreated_from_another_image_is_deployed_info() -> None:
    deployments = Deployments()
    event_check(event("create", image="app:1", cid="1" * 64), deployments)
    same_image = event_check(event("create", image="app:1", cid="2" * 64), deployments)
    upgraded = event_check(event("create", image="app:2", cid="3" * 64), deployments)

    assert same_image is None
    assert upgraded == Check(
        "backend",
        "ok",
        detail="deployed app:2",
        event="deployed",
        labels={"image": "app:2", "previous_image": "app:1", "id": "3" * 12},
    )


def test_deployments_remember_a_bounded_number_of_names() -> None:
    deployments = Deployments(capacity=2)
    for name in ("a", "b", "c"):
        deployments.observe(name, "1", "img:1")
    assert deployments.observe("a", "2", "img:2") is None  # forgotten: the oldest went first
    assert deployments.observe("c", "2", "img:2") == "img:1"


# hostile names through the publisher -----------------------------------------------------------

HOSTILE = ["my.app.v2", "with space", "star*", "gt>", "<!channel>", "x" * 300]


class Fleet:
    """A collector publishing the periodic check of each hostile-named container."""

    name = "container"

    async def collect(self) -> Collection:
        checks = []
        for name in HOSTILE:
            status, detail = container_status(info(health="unhealthy"))
            checks.append(Check(name, status, detail=detail))
        return Collection(checks=checks)


async def test_hostile_container_names_become_one_safe_token_and_arrive_intact() -> None:
    publisher = RecordingPublisher()
    runner = AgentRunner(Fleet(), publisher, AgentConfig(), "web01")
    await runner.run_cycle()
    for name in HOSTILE:
        check = event_check(event("die", name=name, exitCode="1"), Deployments())
        assert check is not None
        await runner.emit(check)

    for name in HOSTILE:
        subject = f"jarvis.health.web01.container.{sanitize_token(name)}"
        events = [
            e for e in publisher.assert_published(subject, HealthEvent, count=2) if isinstance(e, HealthEvent)
        ]
        assert {e.target for e in events} == {name}
        assert {e.event for e in events} == {None, "die"}
        assert {e.status for e in events} == {"critical"}
    for subject, _ in publisher.published:
        if ".health." not in subject:
            continue
        tokens = subject.split(".")
        assert len(tokens) == 5
        assert not re.search(r"[\s*>]", subject)
        assert all(len(token) <= 128 for token in tokens)
