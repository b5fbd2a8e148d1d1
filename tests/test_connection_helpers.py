"""Connection helpers that need no server: URLs, credentials, backoff and TLS settings."""

from __future__ import annotations

import random
import ssl
from pathlib import Path

import msgspec
import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from bus.config import DEFAULT_URL, BusConfig, TLSConfig
from bus.connection import (
    BusConfigError,
    Credentials,
    configured_urls,
    reconnect_delay,
    resolve_credentials,
    server_urls,
    tls_context,
)
from bus.redact import redact_text, redact_url
from bus.units import dec_hook

# ---------------------------------------------------------------- redact_url


@pytest.mark.parametrize(
    ("url", "secret", "shown"),
    [
        ("nats://jarvis:s3cret@10.0.0.5:4222", "s3cret", "nats://***@10.0.0.5:4222"),
        ("tls://agent:pa%40ss@nats.example:4443", "pa%40ss", "tls://***@nats.example:4443"),
        ("nats://tok3n@127.0.0.1:4222", "tok3n", "nats://***@127.0.0.1:4222"),
        ("nats://jarvis:p@ss:w0rd@host:4222", "p@ss:w0rd", "nats://***@host:4222"),
        ("jarvis:s3cret@host:4222", "s3cret", "***@host:4222"),
        ("nats://jarvis:s3c#ret@127.0.0.1:4222", "s3c#ret", "nats://***@127.0.0.1:4222"),
        ("nats://jarvis:a/b?c@[::1]:4222", "a/b?c", "nats://***@[::1]:4222"),
        ("ws://u:s3cret@host", "s3cret", "ws://***@host"),
    ],
)
def test_redact_url_hides_user_info(url: str, secret: str, shown: str) -> None:
    redacted = redact_url(url)
    assert secret not in redacted
    assert "jarvis" not in redacted
    assert redacted == shown


@pytest.mark.parametrize(
    "url", ["nats://127.0.0.1:4222", "tls://nats.example:4443", "localhost:4222", "nats://h"]
)
def test_redact_url_leaves_urls_without_credentials_alone(url: str) -> None:
    assert redact_url(url) == url


# ---------------------------------------------------------------- server_urls


def test_server_urls_prefers_the_environment_comma_list() -> None:
    config = BusConfig(servers=["nats://config:4222"])
    environ = {"JARVIS_NATS_URL": " nats://a:4222, nats://b:4222 ,,"}
    assert server_urls(config, environ) == ["nats://a:4222", "nats://b:4222"]


def test_server_urls_uses_config_when_environment_is_blank() -> None:
    config = BusConfig(servers=["nats://10.0.0.5:4222", "nats://10.0.0.6:4222"])
    assert server_urls(config, {"JARVIS_NATS_URL": "  "}) == config.servers
    assert server_urls(config, {}) == config.servers


def test_server_urls_falls_back_to_the_local_default() -> None:
    assert server_urls(BusConfig(), {}) == [DEFAULT_URL]
    assert DEFAULT_URL == "nats://127.0.0.1:4222"


def test_server_urls_returns_a_copy_of_the_config_list() -> None:
    config = BusConfig(servers=["nats://a:4222"])
    server_urls(config, {}).append("nats://b:4222")
    assert config.servers == ["nats://a:4222"]


def test_configured_urls_is_empty_when_the_user_named_no_server() -> None:
    """`up` starts its embedded server only when neither env nor config names one."""
    assert configured_urls(BusConfig(), {}) == []
    assert configured_urls(BusConfig(), {"JARVIS_NATS_URL": "nats://a:4222"}) == ["nats://a:4222"]
    assert configured_urls(BusConfig(servers=["nats://b:4222"]), {}) == ["nats://b:4222"]


# ---------------------------------------------------------------- credentials


def secret_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_password_file_is_read_without_its_trailing_newline(tmp_path: Path) -> None:
    config = BusConfig(user="jarvis", password_file=secret_file(tmp_path, "pw", "s3cret\n"))
    assert resolve_credentials(config, {}) == Credentials(user="jarvis", password="s3cret")


def test_token_file_is_read_without_its_trailing_newline(tmp_path: Path) -> None:
    config = BusConfig(token_file=secret_file(tmp_path, "token", "t0ken\r\n"))
    assert resolve_credentials(config, {}).token == "t0ken"


def test_secrets_come_from_the_environment_without_files() -> None:
    environ = {
        "JARVIS_NATS_USER": "agent",
        "JARVIS_NATS_PASSWORD": "from-env",
        "JARVIS_NATS_TOKEN": "env-token",
    }
    creds = resolve_credentials(BusConfig(), environ)
    assert creds == Credentials(user="agent", password="from-env", token="env-token")


def test_files_win_over_environment_variables(tmp_path: Path) -> None:
    config = BusConfig(
        user="jarvis",
        password_file=secret_file(tmp_path, "pw", "from-file\n"),
        token_file=secret_file(tmp_path, "token", "file-token\n"),
    )
    environ = {"JARVIS_NATS_PASSWORD": "from-env", "JARVIS_NATS_TOKEN": "env-token"}
    creds = resolve_credentials(config, environ)
    assert creds.password == "from-file"
    assert creds.token == "file-token"


def test_config_user_wins_over_environment_user() -> None:
    creds = resolve_credentials(BusConfig(user="jarvis"), {"JARVIS_NATS_USER": "other"})
    assert creds.user == "jarvis"


def test_empty_environment_variables_count_as_unset() -> None:
    environ = {"JARVIS_NATS_PASSWORD": "", "JARVIS_NATS_TOKEN": "", "JARVIS_NATS_USER": ""}
    assert resolve_credentials(BusConfig(), environ) == Credentials()


@pytest.mark.parametrize("key", ["password_file", "token_file"])
def test_missing_secret_file_is_a_config_error_naming_the_key(tmp_path: Path, key: str) -> None:
    missing = str(tmp_path / "nope")
    config = msgspec.convert({"user": "jarvis", key: missing}, BusConfig)
    with pytest.raises(BusConfigError, match=f"bus.{key}: cannot read {missing}"):
        resolve_credentials(config, {})


@pytest.mark.parametrize("key", ["nkey_seed_file", "creds_file"])
def test_missing_nkey_or_creds_file_is_a_config_error_naming_the_key(tmp_path: Path, key: str) -> None:
    missing = str(tmp_path / "agent.nk")
    with pytest.raises(BusConfigError, match=f"bus.{key}: no such file {missing}"):
        resolve_credentials(msgspec.convert({key: missing}, BusConfig), {})


def test_password_from_environment_without_any_user_is_a_config_error() -> None:
    with pytest.raises(BusConfigError, match=r"bus\.user"):
        resolve_credentials(BusConfig(), {"JARVIS_NATS_PASSWORD": "s3cret"})


def test_bus_config_error_is_a_value_error() -> None:
    assert issubclass(BusConfigError, ValueError)


def test_credentials_repr_never_shows_the_secrets() -> None:
    creds = Credentials(user="jarvis", password="s3cret-pw", token="s3cret-token")
    for shown in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert "s3cret" not in shown
        assert "jarvis" in shown


# ---------------------------------------------------------------- reconnect_delay


def test_reconnect_delay_grows_with_attempts() -> None:
    rng = random.Random(7)
    delays = [reconnect_delay(attempt, cap=60.0, rng=rng) for attempt in range(8)]
    for attempt, delay in enumerate(delays):
        ceiling = 0.1 * 2**attempt
        assert ceiling / 2 <= delay <= ceiling
    # whatever the jitter, the eighth attempt waits far longer than the first
    assert delays[-1] > delays[0] * 10


def test_reconnect_delay_is_capped() -> None:
    rng = random.Random(42)
    for attempt in (10, 50, 1000, 10**9):
        delay = reconnect_delay(attempt, cap=5.0, rng=rng)
        assert 2.5 <= delay <= 5.0


def test_reconnect_delay_is_reproducible_with_a_seeded_rng() -> None:
    first = [reconnect_delay(a, 5.0, random.Random(3)) for a in range(10)]
    second = [reconnect_delay(a, 5.0, random.Random(3)) for a in range(10)]
    assert first == second


def test_reconnect_delay_with_a_zero_cap_retries_at_once_instead_of_failing() -> None:
    assert reconnect_delay(3, cap=0.0) == 0.0


def test_reconnect_delay_is_jittered() -> None:
    """Many clients restarted together do not all retry at the same instant."""
    rng = random.Random(1)
    assert len({reconnect_delay(20, 5.0, rng) for _ in range(20)}) > 1


@given(
    st.integers(min_value=0, max_value=10**6),
    st.floats(min_value=0.01, max_value=3600),
    st.integers(),
)
def test_reconnect_delay_stays_within_cap_and_exponential_ceiling(
    attempt: int, cap: float, seed: int
) -> None:
    delay = reconnect_delay(attempt, cap, random.Random(seed))
    assert 0 < delay <= cap
    assert delay <= 0.1 * 2 ** min(attempt, 30)


# ---------------------------------------------------------------- tls_context


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_tls_context_is_none_without_tls_config() -> None:
    assert tls_context(BusConfig()) is None


def test_tls_context_trusts_the_configured_ca(tmp_path: Path, ca: trustme.CA) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = tls_context(BusConfig(tls=TLSConfig(ca_file=str(ca_file))))
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    ca_der = ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode())
    assert context.get_ca_certs(binary_form=True) == [ca_der]


def test_tls_context_loads_a_client_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert("jarvis-agent")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "k.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    tls = TLSConfig(ca_file=str(ca_file), cert_file=str(cert_file), key_file=str(key_file))
    assert isinstance(tls_context(BusConfig(tls=tls)), ssl.SSLContext)


def test_tls_context_refuses_a_missing_ca_file(tmp_path: Path) -> None:
    config = BusConfig(tls=TLSConfig(ca_file=str(tmp_path / "missing-ca.pem")))
    with pytest.raises(BusConfigError, match=r"^bus\.tls"):
        tls_context(config)


def test_tls_context_refuses_a_ca_file_that_is_not_a_certificate(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not a certificate\n")
    with pytest.raises(BusConfigError, match=r"^bus\.tls"):
        tls_context(BusConfig(tls=TLSConfig(ca_file=str(ca_file))))


def test_tls_context_refuses_a_key_that_does_not_match_the_certificate(
    tmp_path: Path, ca: trustme.CA
) -> None:
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    ca.issue_cert("one").cert_chain_pems[0].write_to_path(str(cert_file))
    ca.issue_cert("two").private_key_pem.write_to_path(str(key_file))
    tls = TLSConfig(cert_file=str(cert_file), key_file=str(key_file))
    with pytest.raises(BusConfigError, match=r"^bus\.tls"):
        tls_context(BusConfig(tls=tls))


def test_redact_text_masks_every_url_with_user_info_in_an_error_message() -> None:
    text = "ClientConnectorError: https://admin:hunter2@db.local/x and nats://tok@h:4222 failed"
    assert redact_text(text) == "ClientConnectorError: https://***@db.local/x and nats://***@h:4222 failed"


@pytest.mark.parametrize("url", ["not a url", "http://h:4222", "nats://:4222", "nats://h:port", "nats://h 2"])
def test_urls_that_name_no_nats_server_are_refused_by_check_config(url: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="invalid NATS URL"):
        msgspec.convert({"servers": [url]}, BusConfig, dec_hook=dec_hook)


def test_a_bad_jarvis_nats_url_is_a_config_error_not_an_endless_wait() -> None:
    with pytest.raises(BusConfigError, match="JARVIS_NATS_URL: invalid NATS URL"):
        configured_urls(BusConfig(), {"JARVIS_NATS_URL": "nats://ok:4222,foo bar"})
