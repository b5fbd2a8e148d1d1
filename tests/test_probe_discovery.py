"""Checks discovered from container labels: what the labels make, and what they are refused for."""

from __future__ import annotations

import tomllib
from typing import Any

import msgspec
import pytest

from agents.probe_config import DiscoveryConfig, ProbeAgentConfig
from agents.probe_discovery import Found, Refused, judge, parse_container, sla_check_name
from bus import vocabulary as vocab
from bus.units import dec_hook
from jarvis_monitor.config import parse_config
from jarvis_monitor.discover_cli import render
from sinks.report.config import DEFAULT_SERVICES

PROBE = ProbeAgentConfig()


def entry(labels: dict[str, str], name: str = "jarvis-backend-1", **more: Any) -> dict[str, Any]:
    return {
        "Id": "0123456789abcdef",
        "Names": [f"/{name}"],
        "State": "running",
        "Labels": labels,
        "Ports": [],
        "HostConfig": {"NetworkMode": "jarvis_default"},
        "NetworkSettings": {"Networks": {"jarvis_default": {"IPAddress": "172.18.0.5"}}},
        **more,
    }


def found(labels: dict[str, str], **more: Any) -> Found:
    result = parse_container(entry(labels, **more), PROBE)
    assert isinstance(result, Found), result
    return result


def refused(labels: dict[str, str], **more: Any) -> Refused:
    result = parse_container(entry(labels, **more), PROBE)
    assert isinstance(result, Refused), result
    return result


def test_a_published_port_is_probed_on_the_host_and_an_unpublished_one_on_the_container() -> None:
    published = [{"PrivatePort": 8000, "PublicPort": 18000, "Type": "tcp", "IP": "0.0.0.0"}]
    via_host = found({"jarvis.check.port": "8000", "jarvis.check.path": "/health"}, Ports=published)
    via_container = found({"jarvis.check.port": "8000", "jarvis.check.path": "/health"})
    on_host_network = found({"jarvis.check.port": "8000"}, HostConfig={"NetworkMode": "host"})

    urls = [f.check.url if f.check else None for f in (via_host, via_container, on_host_network)]
    assert urls == [
        "http://127.0.0.1:18000/health",
        "http://172.18.0.5:8000/health",
        "http://127.0.0.1:8000/",
    ]


def test_labels_set_status_timeout_and_name_and_the_name_defaults_to_the_compose_service() -> None:
    labelled = found(
        {
            "jarvis.check.url": "https://api.example.org/health",
            "jarvis.check.status": "200, 204",
            "jarvis.check.timeout": "3s",
            "jarvis.check.warn_latency": "1s",
            "jarvis.check.verify_tls": "false",
        }
    )
    assert labelled.check is not None
    assert labelled.check.expected_status == [200, 204]
    assert str(labelled.check.timeout) == "3s"
    assert labelled.check.verify_tls is False
    assert labelled.name == "jarvis-backend-1"
    compose = found({"jarvis.check.port": "80", "com.docker.compose.service": "frontend-web"})
    assert compose.name == "frontend-web"
    assert found({"jarvis.check.port": "80", "jarvis.check.name": "api"}).name == "api"


@pytest.mark.parametrize(
    ("sla", "name"),
    [("Backend API", "backend"), ("frontend", "frontend"), ("Ollama", "ollama"), ("Database", "database")],
)
def test_the_runbook_slas_name_the_check_the_report_counts_for_them(sla: str, name: str) -> None:
    assert found({"jarvis.check.port": "80", "jarvis.sla": sla}).name == name
    service = next(s for s in DEFAULT_SERVICES if s.name == name)
    assert name in service.checks  # the report's default SLA counts this check


def test_every_runbook_sla_check_name_is_one_the_report_counts() -> None:
    defaults = {s.name: s.checks for s in DEFAULT_SERVICES}
    for check in vocab.RUNBOOK_SLA_CHECKS:
        assert check in defaults[check]
    assert sla_check_name("payments") == "payments"  # a service of the user's own report config


def test_a_stopped_container_is_critical_without_a_request() -> None:
    result = judge([entry({"jarvis.check.port": "80"}, State="exited")], PROBE, DiscoveryConfig())
    assert result.run == []
    (check,) = result.decided
    assert (check.target, check.status) == ("jarvis-backend-1", "critical")
    assert check.detail == "container jarvis-backend-1 is exited: not probed"


def test_a_container_without_jarvis_labels_is_not_guessed_at() -> None:
    published = [{"PrivatePort": 80, "PublicPort": 8080, "Type": "tcp", "IP": "0.0.0.0"}]
    assert parse_container(entry({"com.docker.compose.service": "web"}, Ports=published), PROBE) is None


@pytest.mark.parametrize(
    ("labels", "label", "reason"),
    [
        ({"jarvis.check.port": "http"}, "jarvis.check.port", "is not a port number"),
        ({"jarvis.check.port": "99999"}, "jarvis.check.port", "is not a port number"),
        ({"jarvis.check.url": "ftp://x/"}, "jarvis.check.url", "invalid URL"),
        ({"jarvis.check.url": "http://x/", "jarvis.check.port": "1"}, "jarvis.check.port", "not both"),
        ({"jarvis.check.port": "80", "jarvis.check.status": "ok"}, "jarvis.check.status", "status codes"),
        ({"jarvis.check.port": "80", "jarvis.check.status": "999"}, "jarvis.check.status", "<= 599"),
        ({"jarvis.check.port": "80", "jarvis.check.timeout": "soon"}, "jarvis.check.timeout", "soon"),
        ({"jarvis.check.port": "80", "jarvis.check.timeout": "1h"}, "jarvis.check.timeout", "no time"),
        ({"jarvis.check.port": "80", "jarvis.check.method": "get"}, "jarvis.check.method", "capitals"),
        ({"jarvis.check.port": "80", "jarvis.check.pth": "/"}, "jarvis.check.pth", "not a jarvis label"),
        ({"jarvis.check.port": "80", "jarvis.check.path": "no slash"}, "jarvis.check.path", "not a path"),
        ({"jarvis.check.port": "80", "jarvis.sla": "<script>"}, "jarvis.sla", "not an SLA name"),
        ({"jarvis.check.port": "80", "jarvis.sla.availability": "99"}, "jarvis.sla.availability", "without"),
        ({"jarvis.check.path": "/health"}, "jarvis.check.url", "neither"),
        ({"jarvis.check.port": "80", "jarvis.check.name": "x" * 2000}, "jarvis.check.name", "characters"),
        (
            {"jarvis.check.port": "80", "jarvis.sla": "frontend", "jarvis.check.name": "web"},
            "jarvis.check.name",
            "report counts a check under an SLA by its name",
        ),
    ],
)
def test_a_hostile_or_mistaken_label_is_refused_naming_the_container_and_the_label(
    labels: dict[str, str], label: str, reason: str
) -> None:
    refusal = refused(labels)
    assert refusal.error.label == label
    assert reason in refusal.error.reason
    assert refusal.detail.startswith(f"container jarvis-backend-1: label {label} refused: ")


def test_a_name_taken_by_the_config_or_another_container_is_refused_for_the_later_one() -> None:
    probe = msgspec.convert(
        {"tcp": [{"name": "backend", "host": "127.0.0.1", "port": 1}]}, ProbeAgentConfig, dec_hook=dec_hook
    )
    result = judge(
        [
            entry({"jarvis.check.port": "80", "jarvis.sla": "Backend API"}, name="a"),
            entry({"jarvis.check.port": "80", "jarvis.check.name": "web"}, name="b"),
            entry({"jarvis.check.port": "80", "jarvis.check.name": "web"}, name="c"),
        ],
        probe,
        DiscoveryConfig(),
    )
    assert [c for c, _ in result.run] == ["b"]
    assert {r.container: r.error.reason for r in result.refused} == {
        "a": "check name 'backend' is taken by the config; set jarvis.check.name to another",
        "c": "check name 'web' is taken by container b; set jarvis.check.name to another",
    }


def test_containers_beyond_max_checks_are_refused_not_probed() -> None:
    entries = [entry({"jarvis.check.port": "80"}, name=f"c{i}") for i in range(3)]
    result = judge(entries, PROBE, DiscoveryConfig(max_checks=2))
    assert [c for c, _ in result.run] == ["c0", "c1"]
    assert [r.container for r in result.refused] == ["c2"]


def test_discover_prints_toml_that_the_config_accepts_with_the_sla_targets_as_a_report_service() -> None:
    result = judge(
        [
            entry(
                {
                    "jarvis.check.port": "8000",
                    "jarvis.check.status": "200",
                    "jarvis.check.timeout": "3s",
                    "jarvis.sla": "Backend API",
                    "jarvis.sla.availability": "99.9",
                    "jarvis.sla.latency_p95": "200ms",
                },
                name="api-1",
            ),
            entry({"jarvis.check.port": "x"}, name='evil"\n[x]'),
        ],
        PROBE,
        DiscoveryConfig(),
    )
    text = render(result)
    config = parse_config(tomllib.loads(text))

    (check,) = config.agents.probe.http
    assert (check.name, check.url, check.expected_status) == ("backend", "http://172.18.0.5:8000/", [200])
    (service,) = config.sinks.report.services
    assert (service.name, service.checks, service.availability_percent) == ("Backend API", ["backend"], 99.9)
    assert '# refused: container evil" [x]: label jarvis.check.port refused' in text
