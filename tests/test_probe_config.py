"""The probe's config: read from TOML, every mistake refused with a line naming where it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents.probe import ProbeAgentConfig
from agents.probe_config import HttpCheck, PromQLQuery
from jarvis_monitor.config import Config, ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "jarvis.example.toml"


def probe(**table: Any) -> ProbeAgentConfig:
    return parse_config({"agents": {"probe": table}}).agents.probe


def problems(**table: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config({"agents": {"probe": table}})
    return caught.value.problems


def http(name: str = "api", url: str = "http://127.0.0.1:8000/health", **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": url, **extra}


def test_no_config_means_no_checks() -> None:
    config = Config().agents.probe
    assert config.all_checks() == []


def test_the_example_config_for_the_jarvis_stack_loads_without_errors() -> None:
    config = load_config(EXAMPLE, environ={})
    checks = dict((check.name, check) for _, check in config.agents.probe.all_checks())

    assert {"backend-api", "frontend", "ollama", "prometheus", "grafana", "loki"} <= set(checks)
    # the database is watched by the database agent's login, not by a TCP connect
    (server,) = config.agents.postgres.servers
    assert (server.name, server.display) == ("postgres", "jarvis@127.0.0.1:5432/jarvis")
    assert checks["prometheus"].url.endswith("/-/healthy")  # type: ignore[union-attr]
    assert checks["grafana"].url.endswith("/api/health")  # type: ignore[union-attr]
    assert checks["loki"].url.endswith("/ready")  # type: ignore[union-attr]
    queries = [check.query for check in checks.values() if isinstance(check, PromQLQuery)]
    assert "rate(jarvis_requests_total[1h])" in queries
    assert (
        "histogram_quantile(0.95, sum(rate(jarvis_request_duration_seconds_bucket[5m])) by (le))" in queries
    )


def test_a_scrape_target_names_an_http_check_that_exists() -> None:
    scrape = {"name": "api-metrics", "url": "http://127.0.0.1:8000/metrics", "check": "apii"}
    (problem,) = problems(http=[http(name="api")], scrape=[scrape])
    assert problem == "agents.probe: scrape[0] (api-metrics): check 'apii' is not the name of an http check"
    assert probe(http=[http(name="api")], scrape=[{**scrape, "check": "api"}]).scrape[0].check == "api"


def test_a_scrape_target_rates_over_one_minute_unless_its_rate_window_says_otherwise() -> None:
    scrape = {"name": "api-metrics", "url": "http://127.0.0.1:8000/metrics"}
    assert probe(scrape=[scrape]).scrape[0].rate_window.seconds == 60
    assert (
        probe(interval="30s", scrape=[{**scrape, "rate_window": "5m"}]).scrape[0].rate_window.seconds == 300
    )
    assert (
        probe(interval="30s", scrape=[{**scrape, "rate_window": "30s"}]).scrape[0].rate_window.seconds == 30
    )


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ("0s", "agents.probe.scrape[0]: rate_window must be longer than 0s"),
        ("-1m", "agents.probe.scrape[0].rate_window: invalid duration '-1m'"),
        (60, "agents.probe.scrape[0].rate_window: invalid duration 60"),
        (
            "20s",
            "agents.probe: scrape[0] (api-metrics): rate_window 20s is shorter than the probe's 30s "
            "interval, so it could never hold two scrapes; use at least 30s",
        ),
    ],
)
def test_a_rate_window_that_cannot_hold_two_scrapes_is_refused_with_its_key_path(
    window: object, expected: str
) -> None:
    scrape = {"name": "api-metrics", "url": "http://127.0.0.1:8000/metrics", "rate_window": window}
    (problem,) = problems(interval="30s", scrape=[scrape])
    assert problem.startswith(expected), problem


def test_an_http_check_reads_every_setting() -> None:
    config = probe(
        interval="30s",
        http=[
            http(
                method="HEAD",
                headers={"Accept": "text/plain"},
                headers_from_env={"Authorization": "API_TOKEN"},
                expected_status=[200, 204],
                body_contains="ok",
                body_regex="o+k",
                timeout="2s",
                verify_tls=False,
                warn_latency="500ms",
                follow_redirects=False,
            )
        ],
    )
    (check,) = config.http
    assert (check.method, check.expected_status, check.verify_tls) == ("HEAD", [200, 204], False)
    assert check.headers_from_env == {"Authorization": "API_TOKEN"}
    assert config.timeout_of(check) == 2.0


def test_expected_status_defaults_to_any_2xx_or_3xx() -> None:
    check = HttpCheck(name="a", url="http://h/")
    assert [check.accepts(s) for s in (200, 204, 302, 399, 400, 500, 101)] == [
        True, True, True, True, False, False, False,
    ]  # fmt: skip
    assert HttpCheck(name="a", url="http://h/", expected_status=[500]).accepts(500)


def test_check_timeout_defaults_to_5s_and_never_past_the_cycle_deadline() -> None:
    check = HttpCheck(name="a", url="http://h/")
    assert ProbeAgentConfig().timeout_of(check) == 5.0
    assert probe(check_timeout="2s").timeout_of(check) == 2.0
    short = probe(interval="2s", http=[http()])
    assert short.deadline == pytest.approx(1.8)
    assert short.timeout_of(short.http[0]) == pytest.approx(1.8)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            {"http": [http(url="ftp://example.org/")]},
            "agents.probe.http[0]: invalid URL 'ftp://example.org/'",
        ),
        ({"http": [http(url="http:///nohost")]}, "agents.probe.http[0]: invalid URL"),
        (
            {"http": [http(url="http://user:secret@example.org:notaport/")]},
            "agents.probe.http[0]: invalid URL 'http://***@example.org:notaport/'",
        ),
        ({"http": [http(method="get")]}, "invalid method 'get'"),
        ({"http": [http(body_regex="(")]}, "body_regex '(' is not a valid regular expression"),
        ({"http": [http(expected_status=[600])]}, "agents.probe.http[0].expected_status[0]"),
        (
            {"http": [http(headers_from_env={"Authorization": "not a var"})]},
            "not an environment variable name",
        ),
        ({"http": [http(headers={"X": "1"}, headers_from_env={"X": "TOKEN"})]}, "header 'X' is set in both"),
        ({"http": [http(headers={"Bad Header": "1"})]}, "invalid header name 'Bad Header'"),
        ({"tcp": [{"name": "db", "host": "127.0.0.1", "port": 70000}]}, "agents.probe.tcp[0].port"),
        ({"tcp": [{"name": "db", "host": "127.0.0.1"}]}, "missing required field `port`"),
        ({"http": [http(name="")]}, "agents.probe.http[0].name"),
        ({"http": [http(bogus=1)]}, "agents.probe.http[0].bogus: unknown key"),
        ({"scrape": [{"name": "m", "url": "localhost:8000/metrics"}]}, "agents.probe.scrape[0]: invalid URL"),
        ({"promql": [{"name": "Bad Name", "query": "up"}]}, "invalid query name 'Bad Name'"),
        ({"promql": [{"name": "q", "query": "up", "metric": "Up"}]}, "invalid metric 'Up'"),
        ({"promql": [{"name": "q", "query": "up", "server": "nowhere"}]}, "invalid URL 'nowhere'"),
        ({"concurrency": 0}, "agents.probe.concurrency"),
    ],
)
def test_a_broken_check_is_refused_with_its_key_path(table: dict[str, Any], expected: str) -> None:
    (problem,) = problems(**table)
    assert expected in problem


def test_check_names_must_be_unique_across_all_kinds() -> None:
    (problem,) = problems(http=[http(name="db")], tcp=[{"name": "db", "host": "h", "port": 5432}])
    assert problem == "agents.probe: check name 'db' is used 2 times; names must be unique"


def test_names_that_would_share_a_subject_token_are_refused() -> None:
    (problem,) = problems(http=[http(name="api.v1"), http(name="api v1")])
    assert "'api.v1' and 'api v1' would share the subject token 'api_v1'" in problem


def test_a_timeout_that_leaves_no_time_to_publish_names_the_check_and_the_limit() -> None:
    (problem,) = problems(interval="5s", http=[http(timeout="5s")])
    assert problem == (
        "agents.probe: http[0] (api): timeout 5s leaves no time to publish within the probe's "
        "5s interval; use at most 4s500ms"
    )
    (problem,) = problems(
        interval="30s", timeout="4s", check_timeout="5s", tcp=[{"name": "db", "host": "h", "port": 1}]
    )
    assert "tcp[0] (db): timeout 5s leaves no time to publish within the probe's 4s timeout" in problem


def test_a_long_interval_allows_a_long_timeout_however_the_keys_are_ordered() -> None:
    """The per-key pass must not judge http's timeout against the default interval."""
    assert probe(http=[http(timeout="30s")], interval="60s").http[0].timeout is not None


def test_warn_latency_must_be_shorter_than_the_timeout() -> None:
    (problem,) = problems(tcp=[{"name": "db", "host": "h", "port": 1, "timeout": "1s", "warn_latency": "1s"}])
    assert "tcp[0] (db): warn_latency 1s must be shorter than its timeout" in problem


def test_hostile_check_names_are_accepted_as_they_are() -> None:
    names = ["a.b c", "*", "> all", "<!channel>", "x" * 300]
    config = probe(http=[http(name=name) for name in names])
    assert [check.name for check in config.http] == names


def test_a_check_name_longer_than_consumers_accept_is_refused_at_config() -> None:
    """Its events would be refused at decode (bus/limits.py), so the config refuses it first."""
    (problem,) = problems(http=[{"name": "x" * 2000, "url": "http://127.0.0.1/"}])
    assert "is longer than 1024 characters" in problem
