"""The probe collector against real aiohttp servers and sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import trustme

from agents.probe import METRICS, ProbeAgentConfig, ProbeCollector
from agents.probe_checks import PromQLError, display_url, failure_reason, parse_promql_response
from agents.runner import Check, Collection
from bus import vocabulary as vocab
from bus.events import Sample
from bus.units import dec_hook
from tests.conftest import wait_until
from tests.probe_targets import Targets, closed_port, running_targets


class ManualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def targets() -> AsyncIterator[Targets]:
    async with running_targets() as running:
        yield running


def config(**table: Any) -> ProbeAgentConfig:
    return msgspec.convert(table, ProbeAgentConfig, dec_hook=dec_hook)


def checks_by_target(collection: Collection) -> dict[str, Check]:
    return {check.target: check for check in collection.checks}


def samples_named(collection: Collection, name: str) -> list[Sample]:
    return [sample for sample in collection.samples if sample.name == name]


async def collect(probe: ProbeAgentConfig, **kwargs: Any) -> Collection:
    collector = ProbeCollector(probe, **kwargs)
    try:
        return await collector.collect()
    finally:
        await collector.close()


# HTTP ------------------------------------------------------------------------------------------


async def test_healthy_500_slow_and_refused_urls_give_ok_critical_critical_critical(targets: Targets) -> None:
    port = closed_port()
    collection = await collect(
        config(
            http=[
                {"name": "healthy", "url": targets.url("/health")},
                {"name": "broken", "url": targets.url("/fail")},
                {"name": "slow", "url": targets.url("/slow?seconds=5"), "timeout": "200ms"},
                {"name": "refused", "url": f"http://127.0.0.1:{port}/health"},
            ]
        )
    )
    checks = checks_by_target(collection)

    assert checks["healthy"].status == "ok"
    assert checks["healthy"].detail.startswith("status 200 in ")
    assert (checks["broken"].status, checks["broken"].detail) == (
        "critical",
        "status 500, expected 2xx or 3xx",
    )
    assert (checks["slow"].status, checks["slow"].detail) == ("critical", "timed out after 0.2s")
    assert (checks["refused"].status, checks["refused"].detail) == ("critical", "connection refused")
    assert all(check.latency is not None for check in checks.values())
    # a latency sample for each response that came, labelled with check and URL
    latencies = {s.labels["check"]: s for s in samples_named(collection, "http.latency_seconds")}
    assert set(latencies) == {"healthy", "broken"}
    assert latencies["healthy"].labels["url"] == targets.url("/health")


async def test_a_slow_response_is_a_warning_that_says_how_slow(targets: Targets) -> None:
    collection = await collect(
        config(http=[{"name": "slowish", "url": targets.url("/slow?seconds=0.3"), "warn_latency": "100ms"}])
    )
    check = checks_by_target(collection)["slowish"]

    assert check.status == "warning"
    assert re.fullmatch(r"status 200 but slow: \d\.\d{3}s \(warning above 100ms\)", check.detail)
    assert check.latency is not None
    assert check.latency >= 0.3


async def test_body_substring_and_regex_and_expected_status_are_judged(targets: Targets) -> None:
    collection = await collect(
        config(
            http=[
                {"name": "contains", "url": targets.url("/health"), "body_contains": '"status": "ok"'},
                {"name": "missing", "url": targets.url("/health"), "body_contains": "healthy"},
                {"name": "regex", "url": targets.url("/health"), "body_regex": r"\"status\":\s*\"ok\""},
                {"name": "no-match", "url": targets.url("/health"), "body_regex": "^degraded"},
                {"name": "500-expected", "url": targets.url("/fail"), "expected_status": [500]},
                {"name": "only-204", "url": targets.url("/health"), "expected_status": [204]},
            ]
        )
    )
    checks = checks_by_target(collection)

    assert checks["contains"].status == "ok"
    assert (checks["missing"].status, checks["missing"].detail) == (
        "critical",
        "status 200 but the body does not contain 'healthy'",
    )
    assert checks["regex"].status == "ok"
    assert checks["no-match"].detail == "status 200 but the body does not match '^degraded'"
    assert checks["500-expected"].status == "ok"
    assert (checks["only-204"].status, checks["only-204"].detail) == ("critical", "status 200, expected 204")


async def test_header_values_from_the_environment_are_sent_and_never_reported(targets: Targets) -> None:
    secret = "Bearer s3cr3t-t0ken"
    probe = config(
        http=[
            {
                "name": "authed",
                "url": targets.url("/echo-headers"),
                "headers": {"X-Plain": "visible"},
                "headers_from_env": {"Authorization": "JARVIS_TEST_TOKEN"},
            },
            {
                "name": "unset",
                "url": targets.url("/echo-headers"),
                "headers_from_env": {"X-Key": "NOT_SET_VAR"},
            },
        ]
    )
    collection = await collect(probe, environ={"JARVIS_TEST_TOKEN": secret})
    checks = checks_by_target(collection)

    (sent,) = targets.seen_headers  # the check with the missing variable sent nothing
    assert (sent["Authorization"], sent["X-Plain"]) == (secret, "visible")
    assert checks["authed"].status == "ok"
    assert (checks["unset"].status, checks["unset"].detail) == (
        "unknown",
        "environment variable NOT_SET_VAR (for header X-Key) is not set",
    )
    assert secret not in repr(collection)


async def test_credentials_and_query_strings_never_reach_labels_or_details(targets: Targets) -> None:
    url = targets.url("/fail?api_key=hunter2").replace("http://", "http://admin:hunter2@")
    collection = await collect(config(http=[{"name": "creds", "url": url}]))

    assert "hunter2" not in repr(collection)
    (sample,) = samples_named(collection, "http.latency_seconds")
    assert sample.labels["url"] == targets.url("/fail").replace("http://", "http://***@")
    assert display_url("https://u:p@h:1/a/b?token=x#frag") == "https://***@h:1/a/b"
    error = RuntimeError("redirect to https://u:p@h/x?token=s3cret failed")
    assert failure_reason(error, 1.0) == "request failed: redirect to https://***@h/x failed"


async def test_an_untrusted_certificate_is_critical_unless_tls_verification_is_off() -> None:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server_tls)  # signed by a CA nobody trusts
    async with running_targets(tls=server_tls) as https:
        collection = await collect(
            config(
                http=[
                    {"name": "verified", "url": https.url("/health")},
                    {"name": "unverified", "url": https.url("/health"), "verify_tls": False},
                ]
            )
        )
    checks = checks_by_target(collection)

    assert checks["verified"].status == "critical"
    assert checks["verified"].detail.startswith("TLS certificate not accepted: ")
    assert "certificate verify failed" in checks["verified"].detail
    assert checks["unverified"].status == "ok"


# TCP -------------------------------------------------------------------------------------------


async def test_tcp_check_is_ok_when_the_port_accepts_and_critical_when_refused(targets: Targets) -> None:
    port = int(targets.base.rsplit(":", 1)[1])
    closed = closed_port()
    collection = await collect(
        config(
            tcp=[
                {"name": "database", "host": "127.0.0.1", "port": port},
                {"name": "database-down", "host": "127.0.0.1", "port": closed},
            ]
        )
    )
    checks = checks_by_target(collection)

    assert checks["database"].status == "ok"
    assert checks["database"].labels == {"address": f"127.0.0.1:{port}"}
    assert (checks["database-down"].status, checks["database-down"].detail) == (
        "critical",
        "connection refused",
    )
    (sample,) = samples_named(collection, "tcp.connect_seconds")
    assert sample.labels == {"check": "database", "address": f"127.0.0.1:{port}"}


# concurrency and deadlines ---------------------------------------------------------------------


async def test_hung_targets_do_not_delay_the_others(targets: Targets) -> None:
    """Three targets that never answer, each with 1s, inside a 1.8s cycle: only concurrency fits them.

    Run one after the other they would need 3s and be cut off by the deadline; instead each
    times out on its own clock, and the healthy check's latency holds none of their waiting.
    """
    hung = [{"name": f"hung-{i}", "url": targets.url("/hang"), "timeout": "1s"} for i in range(3)]
    collection = await collect(
        config(interval="2s", http=[*hung, {"name": "healthy", "url": targets.url("/health")}])
    )
    checks = checks_by_target(collection)

    assert targets.hung_requests == 3
    for i in range(3):
        assert (checks[f"hung-{i}"].status, checks[f"hung-{i}"].detail) == ("critical", "timed out after 1s")
    assert checks["healthy"].status == "ok"
    healthy_latency = checks["healthy"].latency
    assert healthy_latency is not None
    assert healthy_latency < 1.0


async def test_checks_the_deadline_cuts_off_say_so_whether_started_or_still_waiting(targets: Targets) -> None:
    """One slot: the first hung check times out at 0.6s, the second gets the slot then and is cut
    at the 0.9s deadline, the third never starts. Each says what happened, none is lost."""
    probe = config(
        interval="1s",
        concurrency=1,
        http=[
            {"name": "hung", "url": targets.url("/hang"), "timeout": "600ms"},
            {"name": "hung-late", "url": targets.url("/hang"), "timeout": "600ms"},
            {"name": "waiting", "url": targets.url("/health")},
        ],
    )
    checks = checks_by_target(await collect(probe))

    assert (checks["hung"].status, checks["hung"].detail) == ("critical", "timed out after 0.6s")
    assert (checks["hung-late"].status, checks["hung-late"].detail) == (
        "critical",
        "timed out: the cycle's 0.9s deadline passed",
    )
    assert (checks["waiting"].status, checks["waiting"].detail) == (
        "unknown",
        "not checked: all 1 slots stayed busy until the cycle's 0.9s deadline; raise concurrency",
    )


async def test_an_abandoned_collection_leaves_no_request_behind(targets: Targets) -> None:
    """The run loop cancels a collection on stop or overrun: its requests are dropped with it."""
    collector = ProbeCollector(config(http=[{"name": "hung", "url": targets.url("/hang")}]))
    try:
        collecting = asyncio.create_task(collector.collect())
        await wait_until(lambda: targets.hung_requests == 1)
        collecting.cancel()
        await wait_until(lambda: targets.hung_abandoned == 1)
        assert collecting.cancelled()
    finally:
        await collector.close()


async def test_the_session_is_reused_across_cycles_and_reopened_after_close(targets: Targets) -> None:
    collector = ProbeCollector(config(http=[{"name": "healthy", "url": targets.url("/health")}]))
    try:
        await collector.collect()
        session = collector._session
        await collector.collect()
        assert collector._session is session
        await collector.close()
        assert session is not None
        assert session.closed
        assert checks_by_target(await collector.collect())["healthy"].status == "ok"
    finally:
        await collector.close()


async def test_no_checks_configured_collects_nothing() -> None:
    collection = await collect(ProbeAgentConfig())
    assert (collection.checks, collection.samples) == ([], [])


# Prometheus scrape -----------------------------------------------------------------------------


async def test_scrape_publishes_rate_errors_and_quantiles_from_the_second_scrape_on(targets: Targets) -> None:
    clock = ManualClock()
    collector = ProbeCollector(
        config(scrape=[{"name": "backend", "url": targets.url("/metrics")}]), clock=clock
    )
    try:
        targets.metrics.serve(50, "200", 2.0)  # history before the agent started: never counted
        first = await collector.collect()
        targets.metrics.serve(18, "200", 0.07)
        targets.metrics.serve(2, "500", 0.3)
        clock.now += 10
        second = await collector.collect()
    finally:
        await collector.close()

    assert checks_by_target(first)["backend"].detail == "first scrape: rates from the next one"
    assert first.samples == []
    values = {s.name: s.value for s in second.samples}
    assert all(s.labels == {"check": "backend"} for s in second.samples)
    assert values["http.requests_per_second"] == pytest.approx(2.0)
    assert values["http.error_ratio"] == pytest.approx(0.1)
    # 18 in (0.05, 0.1], 2 in (0.25, 0.5]: p50 rank 10 -> 0.05 + 0.05 * 10/18
    assert values["http.latency_p50_seconds"] == pytest.approx(0.05 + 0.05 * 10 / 18, abs=1e-6)
    # p95 rank 19 -> 0.25 + 0.25 * 1/2
    assert values["http.latency_p95_seconds"] == pytest.approx(0.375)
    assert checks_by_target(second)["backend"].status == "ok"


async def test_a_scrape_names_the_http_check_of_its_service_in_its_metrics(targets: Targets) -> None:
    # equal `check` labels let "backend-api down" mute this target's latency and error-rate alerts
    clock = ManualClock()
    scrape = {"name": "backend-metrics", "url": targets.url("/metrics"), "check": "backend-api"}
    http = {"name": "backend-api", "url": targets.url("/health")}
    collector = ProbeCollector(config(http=[http], scrape=[scrape]), clock=clock)
    try:
        await collector.collect()
        targets.metrics.serve(10, "200", 0.07)
        clock.now += 10
        second = await collector.collect()
    finally:
        await collector.close()
    assert second.samples
    assert {s.labels["check"] for s in second.samples} == {"backend-api"}
    assert sorted(checks_by_target(second)) == ["backend-api", "backend-metrics"]


async def test_a_broken_metrics_page_is_critical_and_one_without_the_metrics_a_warning(
    targets: Targets,
) -> None:
    collection = await collect(
        config(
            scrape=[
                {"name": "not-metrics", "url": targets.url("/fail")},
                {"name": "not-text-format", "url": targets.url("/health")},
                {"name": "other-metrics", "url": targets.url("/metrics"), "requests_metric": "nope_total",
                 "duration_metric": "nope_seconds"},
            ]
        )
    )  # fmt: skip
    checks = checks_by_target(collection)

    assert (checks["not-metrics"].status, checks["not-metrics"].detail) == (
        "critical",
        "status 500 from the metrics page",
    )
    assert checks["not-text-format"].status == "critical"
    assert checks["not-text-format"].detail.startswith("the metrics page is not in Prometheus text format")
    assert (checks["other-metrics"].status, checks["other-metrics"].detail) == (
        "warning",
        "neither nope_total nor nope_seconds is on the metrics page",
    )


async def test_a_metrics_page_over_a_mebibyte_is_read_whole_not_cut_inside_a_number(
    targets: Targets,
) -> None:
    """Cut at 1 MiB, the counter 123456 would read as 123 and its increase as nothing."""
    clock = ManualClock()
    collector = ProbeCollector(
        config(scrape=[{"name": "padded", "url": targets.url("/padded-metrics")}]), clock=clock
    )
    try:
        await collector.collect()
        targets.padded_total += 10
        clock.now += 10
        second = await collector.collect()
    finally:
        await collector.close()
    assert checks_by_target(second)["padded"].status == "ok"
    assert {s.name: s.value for s in second.samples}["http.requests_per_second"] == pytest.approx(1.0)


async def test_a_metrics_page_over_the_limit_is_critical_and_publishes_nothing(
    targets: Targets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agents.probe_scrape.MAX_PAGE", 100_000)
    collection = await collect(config(scrape=[{"name": "padded", "url": targets.url("/padded-metrics")}]))
    check = checks_by_target(collection)["padded"]
    assert (check.status, check.detail) == (
        "critical",
        "the metrics page is larger than 100,000 bytes; not read",
    )
    assert collection.samples == []


async def test_a_charset_python_does_not_know_is_read_as_utf8_not_a_failure(targets: Targets) -> None:
    collection = await collect(
        config(http=[{"name": "odd", "url": targets.url("/odd-charset"), "body_contains": '"ok"'}])
    )
    check = checks_by_target(collection)["odd"]
    assert check.status == "ok", check.detail


# declarations ----------------------------------------------------------------------------------


async def test_every_emitted_sample_is_declared_with_exactly_its_labels(targets: Targets) -> None:
    clock = ManualClock()
    collector = ProbeCollector(
        config(
            http=[{"name": "h", "url": targets.url("/health")}],
            tcp=[{"name": "t", "host": "127.0.0.1", "port": int(targets.base.rsplit(":", 1)[1])}],
            scrape=[{"name": "s", "url": targets.url("/metrics")}],
        ),
        clock=clock,
    )
    try:
        await collector.collect()
        targets.metrics.serve(10, "200", 0.1)
        targets.metrics.serve(1, "500", 0.1)
        clock.now += 5
        collection = await collector.collect()
    finally:
        await collector.close()

    names = {sample.name for sample in collection.samples}
    # an https check's certificate expiry: tests/test_probe_tls.py checks its labels
    assert names == set(METRICS) - {"promql.<name>", vocab.TLS_CERT_EXPIRY}
    for sample in collection.samples:
        assert set(sample.labels) == set(METRICS[sample.name].labels), sample


# PromQL API responses --------------------------------------------------------------------------


def test_a_vector_result_gives_one_sample_per_series_without_the_metric_name() -> None:
    body = (
        b'{"status":"success","data":{"resultType":"vector","result":['
        b'{"metric":{"__name__":"up","job":"api"},"value":[1700000000.1,"1"]},'
        b'{"metric":{"job":"db"},"value":[1700000000.1,"NaN"]},'
        b'{"metric":{"job":"web"},"value":[1700000000.1,"0.25"]}]}}'
    )
    assert parse_promql_response(200, body) == [({"job": "api"}, 1.0), ({"job": "web"}, 0.25)]


def test_a_scalar_result_gives_one_sample_without_labels() -> None:
    body = b'{"status":"success","data":{"resultType":"scalar","result":[1700000000,"42.5"]}}'
    assert parse_promql_response(200, body) == [({}, 42.5)]


def test_an_api_error_is_reported_with_prometheus_own_text() -> None:
    body = (
        b'{"status":"error","errorType":"bad_data",'
        b'"error":"1:6: parse error: unexpected right parenthesis \')\'"}'
    )
    with pytest.raises(PromQLError) as caught:
        parse_promql_response(400, body)
    assert str(caught.value) == (
        "Prometheus refused the query (HTTP 400): "
        "bad_data: 1:6: parse error: unexpected right parenthesis ')'"
    )
    assert caught.value.status == "critical"


def test_a_matrix_result_is_unknown_and_garbage_is_critical() -> None:
    matrix = b'{"status":"success","data":{"resultType":"matrix","result":[]}}'
    with pytest.raises(PromQLError) as caught:
        parse_promql_response(200, matrix)
    assert caught.value.status == "unknown"
    assert "returns a matrix" in str(caught.value)
    with pytest.raises(PromQLError, match=r"HTTP 502, not a Prometheus API response: '<html>bad gateway'"):
        parse_promql_response(502, b"<html>bad gateway")
