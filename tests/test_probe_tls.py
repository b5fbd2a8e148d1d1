"""TLS certificate expiry: read from a real HTTPS server on 127.0.0.1, and the built-in rules on it."""

from __future__ import annotations

import datetime as dt
import ssl
import time
from typing import Any

import msgspec
import pytest
import trustme

from agents.probe import METRICS, ProbeAgentConfig, ProbeCollector
from agents.probe_checks import cert_expiry_sample
from agents.probe_tls import cert_not_after
from bus import vocabulary as vocab
from bus.events import Sample
from bus.units import dec_hook
from evaluator.config import EvaluatorConfig
from evaluator.testing import Driver, metrics
from tests.probe_targets import running_targets

CA = trustme.CA()
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def server_context(not_after: dt.datetime) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    CA.issue_cert("127.0.0.1", not_before=NOW - dt.timedelta(days=30), not_after=not_after).configure_cert(
        context
    )
    return context


async def expiry_samples(not_after: dt.datetime, **check: Any) -> list[Sample]:
    async with running_targets(tls=server_context(not_after)) as https:
        table = {"http": [{"name": "frontend", "url": https.url("/health"), **check}]}
        collector = ProbeCollector(msgspec.convert(table, ProbeAgentConfig, dec_hook=dec_hook))
        try:
            collection = await collector.collect()
        finally:
            await collector.close()
    (result,) = collection.checks
    assert result.status == "ok", result.detail
    return [s for s in collection.samples if s.name == vocab.TLS_CERT_EXPIRY]


async def test_an_https_check_publishes_the_seconds_until_its_certificate_expires() -> None:
    """The served certificate's notAfter, with the day it falls on (unverified: a test CA)."""
    not_after = NOW + dt.timedelta(days=10, hours=5)
    (sample,) = await expiry_samples(not_after, verify_tls=False)

    assert sample.labels == {"check": "frontend", "expires": not_after.strftime("%Y-%m-%d")}
    assert set(sample.labels) == set(METRICS[vocab.TLS_CERT_EXPIRY].labels)
    assert abs(sample.value - (not_after.timestamp() - time.time())) < 60


async def test_an_expired_certificate_not_verified_publishes_a_negative_expiry() -> None:
    not_after = NOW - dt.timedelta(days=2)  # NOW is the module's import time: the suite may take minutes
    (sample,) = await expiry_samples(not_after, verify_tls=False)
    assert sample.value < 0
    assert abs(sample.value - (not_after.timestamp() - time.time())) < 60


async def test_a_plain_http_check_publishes_no_certificate_expiry() -> None:
    async with running_targets() as http:
        table = {"http": [{"name": "backend", "url": http.url("/health")}]}
        collector = ProbeCollector(msgspec.convert(table, ProbeAgentConfig, dec_hook=dec_hook))
        try:
            collection = await collector.collect()
        finally:
            await collector.close()
    assert [s.name for s in collection.samples] == [vocab.HTTP_LATENCY]


def test_not_after_is_read_from_the_certificate_der_in_both_time_encodings() -> None:
    """UTCTime before 2050, GeneralizedTime from 2050 on (RFC 5280)."""
    for not_after in (
        dt.datetime(2031, 3, 4, 5, 6, 7, tzinfo=dt.UTC),
        dt.datetime(2051, 1, 2, tzinfo=dt.UTC),
    ):
        leaf = CA.issue_cert("example.org", not_after=not_after)
        der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
        assert cert_not_after(der) == not_after.timestamp()


@pytest.mark.parametrize(
    "garbage", [b"", b"\x30", b"\x30\x82\xff\xff", b"\x02\x01\x00", b"\x30\x03\x30\x01\x00"]
)
def test_bytes_that_are_no_certificate_are_refused_with_value_error(garbage: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the caller treats every ValueError alike
        cert_not_after(garbage)


NOT_AFTER = 40 * 86400.0  # one certificate, observed as its end comes nearer
EXPIRES = time.strftime("%Y-%m-%d", time.gmtime(NOT_AFTER))


def expiry_at(days_left: float) -> tuple[float, object]:
    ts = NOT_AFTER - days_left * 86400
    sample = cert_expiry_sample("frontend", NOT_AFTER, ts)
    # batches days apart stand for the cycles between them: an interval that long keeps them fresh
    batch = [(sample.name, sample.value, sample.labels)]
    return ts, metrics("web01", batch, agent="probe", ts=ts, interval=5 * 86400)


def firing(driver: Driver) -> dict[str, str]:
    alerts, _ = driver.take()
    return {a.rule: a.summary for a in alerts if a.status == "firing"}


def test_a_certificate_warns_at_14_days_and_is_critical_at_3_days_inhibiting_the_warning() -> None:
    driver = Driver(EvaluatorConfig())
    for days_left in (15.0, 14.01):
        driver.at(*expiry_at(days_left))  # type: ignore[arg-type]
    assert firing(driver) == {}

    for days_left in (13.9, 3.01):
        driver.at(*expiry_at(days_left))  # type: ignore[arg-type]
    assert firing(driver) == {"tls_cert_expiring": f"frontend: TLS certificate expires on {EXPIRES}"}

    driver.at(*expiry_at(2.9))  # type: ignore[arg-type]
    assert firing(driver) == {
        "tls_cert_expiry_critical": f"frontend: TLS certificate expires on {EXPIRES}, in less than 3 days"
    }
    active = {a.rule: a for a in driver.engine.active(driver.now)}
    assert active["tls_cert_expiring"].inhibited_by
    assert not active["tls_cert_expiry_critical"].inhibited_by
